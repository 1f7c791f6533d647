//! Builds the kernel crate (../lb-ebpf) for bpfel-unknown-none with Debian's rustc and
//! bpf-linker (installed by `cargo xtask setup`, see docs/install.md), then hands the
//! objects to `src/kernel/object.rs` through OUT_DIR.
//!
//! aya's own `aya-build` runs `rustup run nightly ... -Z build-std`, which cannot work on
//! machines without rust-src; Debian ships a precompiled `core` for the BPF targets.
use std::{env, path::PathBuf, process::Command};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf = root.join("lb-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    for dir in ["lb-ebpf/src", "lb-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("lb-common/Cargo.toml").display()
    );

    if !PathBuf::from(BPF_RUSTC).exists() {
        panic!(
            "{BPF_RUSTC} is missing: run `cargo xtask setup` (installs rustc-web and the BPF core library)"
        );
    }
    let target_dir = root.join("target").join("bpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        env::var("PATH").unwrap_or_default()
    );

    let build = |target_dir: &PathBuf, extra: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&ebpf)
            .args(["build", "--release", "--target", TARGET, "--target-dir"])
            .arg(target_dir)
            .args(extra)
            .env("RUSTC", BPF_RUSTC)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("PATH", &path);
        // The outer build's settings are for the host; keep them away from the BPF build.
        for (key, _) in env::vars() {
            if key.starts_with("CARGO_") && key != "CARGO_HOME"
                || key.starts_with("RUSTC_WRAPPER")
                || key == "RUSTC_WORKSPACE_WRAPPER"
                || key == "RUSTFLAGS"
                || key == "RUSTDOCFLAGS"
            {
                cmd.env_remove(&key);
            }
        }
        let status = cmd.status().expect("running cargo for lb-ebpf");
        if !status.success() {
            panic!("building lb-ebpf failed (is bpf-linker installed? run `cargo xtask setup`)");
        }
    };
    build(&target_dir, &[]);
    for bin in ["xlb", "xlb-bench"] {
        let src = target_dir.join(TARGET).join("release").join(bin);
        std::fs::copy(&src, out.join(format!("{bin}.o")))
            .unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        without_line_info(&out.join(format!("{bin}.o")));
    }
    // The program without the kernel log calls, for the bench's comparison (its own
    // target directory, so the two builds do not invalidate each other).
    let nolog_dir = root.join("target").join("bpf-nolog");
    build(&nolog_dir, &["--no-default-features", "--bin", "xlb"]);
    let src = nolog_dir.join(TARGET).join("release").join("xlb");
    std::fs::copy(&src, out.join("xlb-nolog.o"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
    without_line_info(&out.join("xlb-nolog.o"));
    let xlb = std::fs::read(out.join("xlb.o")).expect("the XDP object just built");
    println!("cargo:rustc-env=XLB_OBJECT_ID={:016x}", fnv1a(&xlb));
    println!("cargo:rustc-env=XLB_COMMIT={}", commit(&root));
    for f in [".git/HEAD", ".git/index"] {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
}

/// Empties the line information of the object's BTF.ext (its length set to 0): the
/// kernel needs the BTF's functions (a program of several BPF functions may make a
/// tail call only with them), while bpf-linker's line records repeat instruction
/// offsets, which the kernel refuses ("Invalid line_info").
fn without_line_info(path: &std::path::Path) {
    let mut d = std::fs::read(path).expect("reading an object");
    let u16_at = |d: &[u8], o: usize| u16::from_le_bytes([d[o], d[o + 1]]) as usize;
    let u32_at = |d: &[u8], o: usize| u32::from_le_bytes(d[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |d: &[u8], o: usize| u64::from_le_bytes(d[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(
        &d[..4],
        b"\x7fELF",
        "{} is not an ELF object",
        path.display()
    );
    let (shoff, shentsize, shnum) = (u64_at(&d, 0x28), u16_at(&d, 0x3a), u16_at(&d, 0x3c));
    let names = u64_at(&d, shoff + u16_at(&d, 0x3e) * shentsize + 0x18);
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let name = &d[names + u32_at(&d, sh)..];
        if name.starts_with(b".BTF.ext\0") {
            let off = u64_at(&d, sh + 0x18);
            // btf_ext_header: magic, version, flags, hdr_len, func_info_off/len,
            // line_info_off, line_info_len (at 20).
            d[off + 20..off + 24].copy_from_slice(&0u32.to_le_bytes());
        }
    }
    std::fs::write(path, d).expect("writing an object");
}

/// FNV-1a over the object: the kernel program's build id in `xlb --version`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The source's commit (with `-dirty` for uncommitted changes), or `unknown` outside git.
fn commit(root: &std::path::Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}-dirty") } else { c }
        }
        _ => "unknown".into(),
    }
}
