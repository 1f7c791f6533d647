//! The Debian package (`cargo xtask package`) and the service's contract with systemd:
//! lintian finds nothing to say, the unit verifies, the package unpacks into a scratch
//! root whose binary runs, and `xlb run` tells `$NOTIFY_SOCKET` it is ready only once
//! its control socket answers, and that it stops.

use std::{os::unix::net::UnixDatagram, path::PathBuf, process::Command, time::Duration};

use xlb_tests::netns::{Daemon, Netns, TestDir, veth, xlb_bin};

/// The xtask binary beside xlb (both are built by `cargo build --workspace --bins`).
fn xtask_bin() -> PathBuf {
    xlb_bin().with_file_name("xtask")
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_package_is_lintian_clean_and_runs_from_a_scratch_root() {
    let dir = TestDir::plain("pkg").unwrap();
    let out = dir.path.join("out");
    let printed = ok(Command::new(xtask_bin())
        .args(["package", "--debug", "--out"])
        .arg(&out));
    let deb = PathBuf::from(printed.lines().last().unwrap().trim());
    assert!(deb.is_file(), "{printed}");
    // lintian: no error or warning (its one tag for a package outside the archive is
    // overridden, with its reason, in the package).
    let report = ok(Command::new("lintian").arg(&deb));
    let tags: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(tags.is_empty(), "lintian: {tags:?}");
    // Unpacked into a scratch root, with the host's systemd targets beside it.
    let root = dir.path.join("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let units = root.join("lib/systemd/system");
    ok(Command::new("sh").arg("-c").arg(format!(
        "cp -a /lib/systemd/system/*.target /lib/systemd/system/*.slice {}",
        units.display()
    )));
    ok(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg("xlb.service"));
    let unit = std::fs::read_to_string(units.join("xlb.service")).unwrap();
    for want in [
        "Type=notify",
        "ExecReload=/usr/bin/xlb reload",
        "Restart=on-failure",
        "StateDirectory=xlb",
        "RuntimeDirectory=xlb",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.contains(want), "the unit lacks {want}");
    }
    // The binary runs from there: its version names the commit and the XDP object.
    let xlb = root.join("usr/bin/xlb");
    let version = ok(Command::new(&xlb).arg("--version"));
    assert!(
        version.contains("commit ") && version.contains("XDP object "),
        "{version}"
    );
    // The packaged configuration is the example, valid as shipped.
    ok(Command::new(&xlb)
        .args(["check-config", "--no-host-checks"])
        .arg(root.join("etc/xlb/xlb.toml")));
    let control = ok(Command::new("dpkg-deb").args(["-f"]).arg(&deb));
    assert!(control.contains("Package: xlb"), "{control}");
    let listed = ok(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --ctrl-tarfile {} | tar -xO ./conffiles",
        deb.display()
    )));
    assert_eq!(listed, "/etc/default/xlb\n/etc/xlb/xlb.toml\n");
    // Man pages render; completions are there for three shells.
    let page = ok(Command::new("man")
        .arg("-l")
        .arg(root.join("usr/share/man/man1/xlb-fw-load.1.gz"))
        .env("MANPAGER", "cat")
        .env("COLUMNS", "100"));
    assert!(page.contains("--replace"), "{page}");
    for f in [
        "usr/share/bash-completion/completions/xlb",
        "usr/share/zsh/vendor-completions/_xlb",
        "usr/share/fish/vendor_completions.d/xlb.fish",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(text.contains("fw") && text.contains("backend"), "{f}");
    }
}

#[test]
fn the_daemon_says_ready_to_systemd_once_it_serves() {
    let dir = TestDir::new("notify").unwrap();
    let ns = Netns::new("notify").unwrap();
    let client = Netns::new("notifyc").unwrap();
    veth(
        &client,
        "c0",
        &["203.0.113.2/24"],
        &ns,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    let path = dir.path.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut xlb = Daemon::start_env(
        &ns,
        &dir,
        &["--iface", "x0"],
        &[("NOTIFY_SOCKET", path.as_os_str())],
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", xlb.pid())), "{msg}");
    // Ready means serving.
    assert!(xlb.cli(&["status"]).status.success());
    xlb.stop().unwrap();
    let n = sock.recv(&mut buf).expect("a stop notification");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
}
