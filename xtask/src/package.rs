//! `cargo xtask package`: the Debian package, built with `dpkg-deb` (Debian's own tool)
//! from a staging tree: the `xlb` binary (stripped), the systemd unit, the example
//! configuration and `/etc/default/xlb` as conffiles, man pages and bash, zsh and fish
//! completions generated from the CLI's definitions, the documentation, and the
//! maintainer scripts in `packaging/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

/// The package's fixed fields (after `Package`, `Version`, `Architecture` and
/// `Installed-Size`, which are filled in).
const CONTROL: &str = "Section: net
Priority: optional
Maintainer: xlb developers <xlb@users.noreply.github.com>
Depends: libc6 (>= 2.36), libgcc-s1 (>= 4.2)
Suggests: bird2, prometheus
Description: XDP firewall and layer-4 load balancer
 xlb turns one Linux host into the front door of a web service: a kernel XDP
 program filters every packet (source prefixes, ports, protocols) and balances
 the flows of each service over its backends (Maglev hashing, a flow table;
 direct server return, nat or fullnat) before the kernel's network stack sees
 them. A daemon loads the program, keeps the rules and services, health-checks
 the backends, ends HTTPS for https services (and encrypts again to their
 backends) and serves Prometheus metrics; the xlb command manages it.
";

/// `cargo xtask package [--debug] [--out DIR]`: builds (unless `debug`: the existing
/// debug build is packaged, for tests) and writes `xlb_VERSION_ARCH.deb` into `out`.
pub fn package(debug: bool, out: Option<PathBuf>) -> Result<PathBuf> {
    let root = root();
    let profile = if debug { "debug" } else { "release" };
    if !debug {
        run(cargo().args(["build", "--release", "-p", "lb-userspace", "--bin", "xlb"]))?;
    }
    let bin = root.join("target").join(profile).join("xlb");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --bins)",
            bin.display()
        );
    }
    let out = out.unwrap_or_else(|| root.join("target/debian"));
    let stage = out.join("stage");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    stage_files(&root, &bin, &stage)?;
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    control(&stage, &version, &arch)?;
    let deb = out.join(format!("xlb_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(&stage)
        .arg(&deb))?;
    println!("{}", deb.display());
    Ok(deb)
}

/// Everything the package installs, under `stage`.
fn stage_files(root: &Path, bin: &Path, stage: &Path) -> Result<()> {
    let pkg = root.join("packaging");
    let usr_bin = stage.join("usr/bin/xlb");
    copy(bin, &usr_bin, 0o755)?;
    run(Command::new("strip")
        .args([
            "--strip-unneeded",
            "--remove-section=.comment",
            "--remove-section=.note",
        ])
        .arg(&usr_bin))?;
    copy(
        &pkg.join("xlb.service"),
        &stage.join("lib/systemd/system/xlb.service"),
        0o644,
    )?;
    copy(
        &root.join("examples/xlb.toml"),
        &stage.join("etc/xlb/xlb.toml"),
        0o644,
    )?;
    copy(&pkg.join("default"), &stage.join("etc/default/xlb"), 0o644)?;
    copy(
        &pkg.join("lintian-overrides"),
        &stage.join("usr/share/lintian/overrides/xlb"),
        0o644,
    )?;
    // Man pages and completions, from the binary's own definitions.
    let man = stage.join("usr/share/man/man1");
    run(Command::new(bin).arg("manpages").arg(&man))?;
    for page in fs::read_dir(&man)? {
        gzip(&page?.path())?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/xlb"),
        ("zsh", "usr/share/zsh/vendor-completions/_xlb"),
        ("fish", "usr/share/fish/vendor_completions.d/xlb.fish"),
    ] {
        let text = output(Command::new(bin).args(["completions", shell]))?;
        write(&stage.join(path), &(text + "\n"), 0o644)?;
    }
    docs(root, &pkg, &stage.join("usr/share/doc/xlb"))
}

/// The documentation, the copyright file and the changelog; what is over 4 KiB gzipped
/// (Debian policy 12.3).
fn docs(root: &Path, pkg: &Path, doc: &Path) -> Result<()> {
    let mut files = vec![root.join("README.md")];
    for e in fs::read_dir(root.join("docs"))? {
        let p = e?.path();
        if p.extension()
            .is_some_and(|x| x == "md" || x == "svg" || x == "json")
        {
            files.push(p);
        }
    }
    for f in files {
        let to = doc.join(f.file_name().expect("a file"));
        copy(&f, &to, 0o644)?;
        if fs::metadata(&to)?.len() > 4096 {
            gzip(&to)?;
        }
    }
    copy(&pkg.join("copyright"), &doc.join("copyright"), 0o644)?;
    let changelog = doc.join("changelog.Debian");
    copy(&pkg.join("changelog"), &changelog, 0o644)?;
    gzip(&changelog)
}

/// DEBIAN/: control, conffiles, md5sums and the maintainer scripts.
fn control(stage: &Path, version: &str, arch: &str) -> Result<()> {
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let size_kib = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(stage),
    )?
    .split_whitespace()
    .next()
    .unwrap_or("0")
    .to_string();
    let control = format!(
        "Package: xlb\nVersion: {version}\nArchitecture: {arch}\nInstalled-Size: {size_kib}\n{CONTROL}"
    );
    write(&debian.join("control"), &control, 0o644)?;
    write(
        &debian.join("conffiles"),
        "/etc/default/xlb\n/etc/xlb/xlb.toml\n",
        0o644,
    )?;
    let sums = output(
        Command::new("sh")
            .arg("-c")
            .arg("find . -path ./DEBIAN -prune -o -type f -print0 | sort -z | xargs -0 md5sum")
            .current_dir(stage),
    )?;
    let sums: String = sums
        .lines()
        .map(|l| l.replacen("  ./", "  ", 1) + "\n")
        .collect();
    write(&debian.join("md5sums"), &sums, 0o644)?;
    let pkg = root().join("packaging");
    for script in ["postinst", "prerm", "postrm"] {
        copy(&pkg.join(script), &debian.join(script), 0o755)?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `gzip -9n` in place (no name or time stamp: reproducible, as lintian wants).
fn gzip(path: &Path) -> Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
