//! What an operator (or anyone with access to a socket xlb serves) can hand xlb that is
//! not what it expects: paths that are not regular files, paths xlb must not replace,
//! idle and oversized connections, damaged state files, and the CLI's conventions
//! (exit codes, `--json` everywhere, edit verbs). Each class: a clear error, nothing
//! changed, nothing hung, the daemon still serving.

use std::{
    io::{Read, Write},
    os::unix::{fs::FileTypeExt, net::UnixStream},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use xlb_tests::netns::{Daemon, Netns, TestDir, veth, wait_until, xlb_bin};

/// An edge namespace with one interface, and a daemon on it.
struct Edge {
    _ns: Netns,
    _client: Netns,
    dir: TestDir,
    xlb: Daemon,
}

fn edge(tag: &str, extra: &[&str]) -> Edge {
    let dir = TestDir::new(tag).unwrap();
    let client = Netns::new(&format!("{tag}c")).unwrap();
    let ns = Netns::new(tag).unwrap();
    veth(
        &client,
        "c0",
        &["203.0.113.2/24"],
        &ns,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    ns.run(&["sysctl", "-qw", "net.ipv4.conf.x0.forwarding=1"])
        .unwrap();
    let xlb = Daemon::start(&ns, "x0", &dir, extra).unwrap();
    Edge {
        _ns: ns,
        _client: client,
        dir,
        xlb,
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A character device node like /dev/null (root may make one; nothing opens it here).
fn mknod_null(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: c is a valid path; makedev(1, 3) is /dev/null's device number.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the CLI with a time limit: a hang is a failure, not a stuck test.
fn bounded(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(xlb_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("xlb {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn what_is_not_a_regular_file_is_refused_without_a_hang() {
    let e = edge("hardfile", &[]);
    let d = &e.dir.path;
    let fifo = d.join("fifo.toml");
    mkfifo(&fifo);
    let fifo_s = fifo.to_str().unwrap();
    let sock = e.xlb.socket.to_str().unwrap();
    for (args, want) in [
        (
            vec!["check-config", fifo_s],
            "is a FIFO, not a regular file",
        ),
        (vec!["check-config", "/dev/zero"], "is a character device"),
        (vec!["--socket", sock, "fw", "load", fifo_s], "is a FIFO"),
        (
            vec!["--socket", sock, "fw", "load", "/dev/zero"],
            "is a character device",
        ),
        (
            vec!["--socket", sock, "fw", "restore", "/dev/zero"],
            "is a character device",
        ),
        (vec!["proxy", "--check", "--config", fifo_s], "is a FIFO"),
    ] {
        let out = bounded(&args);
        assert!(!out.status.success(), "xlb {args:?} accepted");
        assert!(
            stderr(&out).contains(want),
            "xlb {args:?}: {}",
            stderr(&out)
        );
    }
    // Over the size limit (lowered here): refused, with how to raise it.
    let big = d.join("big.txt");
    std::fs::write(&big, "192.0.2.0/24\n".repeat(100)).unwrap();
    let out = bounded(&[
        "--socket",
        sock,
        "--max-file-size",
        "100",
        "fw",
        "load",
        big.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("larger than the limit of 100 bytes"),
        "{}",
        stderr(&out)
    );
    // A daemon started on a FIFO or a device as its configuration refuses at once.
    let ns2 = Netns::new("hardfile2").unwrap();
    let dir2 = TestDir::new("hardfile2").unwrap();
    for cfg in [fifo_s, "/dev/zero"] {
        let err = Daemon::start_with(&ns2, &dir2, &["--config", cfg])
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
    }
    // Certificates: a [tls] whose certificate is a FIFO is refused by check-config.
    let tls = d.join("tls.toml");
    std::fs::write(
        &tls,
        format!(
            "[[interface]]\nname = \"x0\"\n[[service]]\naddress = \"203.0.113.1:443/tcp\"\nmode = \"https\"\n[tls]\ndefault_cert = {{ chain = \"{fifo_s}\", key = \"{fifo_s}\" }}\n[[tls.routes]]\npool = \"web\"\n[[tls.pools]]\nname = \"web\"\nbackends = [\"203.0.113.11:8080\"]\n"
        ),
    )
    .unwrap();
    let out = bounded(&["check-config", "--no-host-checks", tls.to_str().unwrap()]);
    assert!(stderr(&out).contains("is a FIFO"), "{}", stderr(&out));
    // The daemon was never held up: it answers.
    assert!(e.xlb.cli(&["status"]).status.success());
}

#[test]
fn a_reload_reads_its_file_without_holding_the_daemon() {
    let dir = TestDir::new("hardreload").unwrap();
    let ns = Netns::new("hardreload").unwrap();
    let client = Netns::new("hardreloadc").unwrap();
    veth(
        &client,
        "c0",
        &["203.0.113.2/24"],
        &ns,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    let file = dir.path.join("xlb.toml");
    std::fs::write(&file, "[[interface]]\nname = \"x0\"\n").unwrap();
    let xlb = Daemon::start_with(&ns, &dir, &["--config", file.to_str().unwrap()]).unwrap();
    // The file becomes a FIFO: the reload is refused at once, and the daemon serves.
    std::fs::remove_file(&file).unwrap();
    mkfifo(&file);
    let out = xlb.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is a FIFO"), "{}", stderr(&out));
    assert!(xlb.cli(&["status"]).status.success());
    xlb.signal(libc::SIGHUP);
    wait_until(
        "the SIGHUP reload's record",
        Duration::from_secs(10),
        || xlb.json(&["status", "--json"])["config"]["last_reload"]["trigger"] == "sighup",
    )
    .unwrap();
}

#[test]
fn paths_xlb_writes_are_never_something_it_did_not_create() {
    let ns = Netns::new("hardpath").unwrap();
    let dir = TestDir::new("hardpath").unwrap();
    let client = Netns::new("hardpathc").unwrap();
    veth(
        &client,
        "c0",
        &["203.0.113.2/24"],
        &ns,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    let bin = xlb_bin();
    let run = |socket: &Path, state: &Path| {
        let out = ns
            .cmd(&[
                bin.to_str().unwrap(),
                "--socket",
                socket.to_str().unwrap(),
                "run",
            ])
            .args(["--iface", "x0", "--bpffs"])
            .arg(dir.path.join("bpffs/xlb"))
            .arg("--state")
            .arg(state)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "xlb run accepted {socket:?} {state:?}"
        );
        stderr(&out)
    };
    // --socket naming a regular file: refused, the file intact.
    let precious = dir.path.join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let err = run(&precious, &dir.path.join("state"));
    assert!(err.contains("is a regular file, not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    // --state naming a device node, a symbolic link, a directory: refused, intact.
    let node = dir.path.join("null");
    mknod_null(&node);
    let link = dir.path.join("link");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let sock = dir.path.join("x.sock");
    for (state, kind) in [
        (&node, "a character device"),
        (&link, "a symbolic link"),
        (&dir.path, "a directory"),
    ] {
        let err = run(&sock, state);
        assert!(
            err.contains(&format!("is {kind}, not a regular file")),
            "{err}"
        );
    }
    assert!(
        std::fs::symlink_metadata(&node)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    // `down --purge` does not delete what is not a state file either.
    let out = Command::new(&bin)
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "down",
            "--purge",
            "--bpffs",
        ])
        .arg(dir.path.join("bpffs/none"))
        .arg("--state")
        .arg(&node)
        .output()
        .unwrap();
    assert!(!out.status.success() && stderr(&out).contains("not a regular file"));
    assert!(node.exists());
}

/// `xlb run` under `wrapper` (e.g. a lower descriptor limit), with the harness's
/// socket, pins and state in `dir`; waits until it answers.
fn run_wrapped(ns: &Netns, dir: &TestDir, wrapper: &[&str], args: &[&str]) -> std::process::Child {
    let bin = xlb_bin();
    let socket = dir.path.join("xlb.sock");
    let mut cmd = ns.cmd(wrapper);
    cmd.args([
        bin.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "run",
    ])
    .arg("--bpffs")
    .arg(dir.path.join("bpffs/xlb"))
    .arg("--state")
    .arg(dir.path.join("state"))
    .args(args)
    .stdout(Stdio::null())
    .stderr(xlb_tests::netns::append_log(&dir.path.join("xlb.log")).unwrap());
    xlb_tests::netns::die_with_parent(&mut cmd, libc::SIGTERM);
    let child = cmd.spawn().unwrap();
    let sock = socket.to_str().unwrap().to_string();
    wait_until("the daemon", Duration::from_secs(60), || {
        bounded(&["--socket", &sock, "stats"]).status.success()
    })
    .unwrap();
    child
}

#[test]
fn idle_and_oversized_connections_never_stop_the_daemon() {
    // Enough descriptors for this test's own connections.
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: setrlimit reads `lim`.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let dir = TestDir::new("hardsock").unwrap();
    let client = Netns::new("hardsockc").unwrap();
    let ns = Netns::new("hardsock").unwrap();
    veth(
        &client,
        "c0",
        &["203.0.113.2/24"],
        &ns,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    ns.run(&["sysctl", "-qw", "net.ipv4.conf.x0.forwarding=1"])
        .unwrap();
    // A backend the daemon health-checks every 200 ms, all through the attack.
    let _backend = xlb_tests::netns::NsServer::http(&client, "203.0.113.2:8080", "ok").unwrap();
    // 512 descriptors, and no way to raise them (CAP_SYS_RESOURCE dropped): clients
    // opening more than that must not take the daemon's.
    let mut daemon = run_wrapped(
        &ns,
        &dir,
        &[
            "prlimit",
            "--nofile=512:512",
            "setpriv",
            "--bounding-set=-sys_resource",
            "--inh-caps=-sys_resource",
        ],
        &["--iface", "x0", "--metrics", "127.0.0.1:9100"],
    );
    let sock = dir.path.join("xlb.sock");
    let s = sock.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut a = vec!["--socket", s];
        a.extend_from_slice(args);
        bounded(&a)
    };
    let svc = "198.51.100.10:80/tcp";
    assert!(cli(&["vip", "add", svc, "--mode", "nat"]).status.success());
    assert!(
        cli(&["backend", "add", svc, "203.0.113.2:8080"])
            .status
            .success()
    );
    assert!(
        cli(&["vip", "check", svc, "tcp", "--interval", "200ms"])
            .status
            .success()
    );
    let checks = || -> u64 {
        let out = cli(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["services"][0]["backends"][0]["health"]["checks"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until("the first checks", Duration::from_secs(10), || {
        checks() >= 2
    })
    .unwrap();
    // 1,100 idle connections to the control socket, 1,100 to /metrics, and a request
    // line of 100 MiB without an end of line.
    let idle: Vec<UnixStream> = (0..1100)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    let scrapers = xlb_tests::netns::in_ns(&ns, || {
        (0..1100)
            .filter_map(|_| std::net::TcpStream::connect("127.0.0.1:9100").ok())
            .collect::<Vec<_>>()
    })
    .unwrap();
    let mut big = UnixStream::connect(&sock).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        if big.write_all(&chunk).is_err() {
            break;
        }
    }
    // Through all of it the daemon lives and its health checks go on (no EMFILE).
    let before = {
        // The control socket may be full of idle connections: poll until it answers.
        let mut n = 0;
        wait_until("a status answer", Duration::from_secs(30), || {
            n = checks();
            n > 0
        })
        .unwrap();
        n
    };
    std::thread::sleep(Duration::from_millis(600));
    wait_until("more checks", Duration::from_secs(30), || checks() > before).unwrap();
    let v: Value = serde_json::from_slice(&cli(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["services"][0]["backends"][0]["state"], "up", "{v}");
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    drop((idle, scrapers, big));
    assert!(cli(&["stats"]).status.success());
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
    let _ = cli(&["down"]);
    let _ = daemon.wait();
}

#[test]
fn a_damaged_state_file_is_refused_with_its_line() {
    let ns = Netns::new("hardstate").unwrap();
    let dir = TestDir::new("hardstate").unwrap();
    let client = Netns::new("hardstatec").unwrap();
    veth(
        &client,
        "c0",
        &["203.0.113.2/24"],
        &ns,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    let state = dir.path.join("state");
    let header = "# xlb state v1: written by `xlb run`; change it with the xlb CLI\n";
    for (text, want) in [
        (String::new(), "the file is empty"),
        (
            "default allow\n".to_string(),
            "does not start with xlb's header",
        ),
        (
            format!("{header}rule 1 deny 192.0.2.0/24\nrule 1 deny 198.51.100.0/24\n"),
            "line 3: rule 1: the id is already",
        ),
        (
            format!("{header}rule 1 deny 192.0.2.0/2"),
            "the last line has no end of line",
        ),
        (
            format!("{header}rule 1 deny 192.0.2.0/2\n"),
            "host bits set: the file is damaged",
        ),
    ] {
        std::fs::write(&state, &text).unwrap();
        let err = Daemon::start(&ns, "x0", &dir, &[])
            .err()
            .expect("a damaged state starts");
        let err = format!("{err:#}");
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(!err.contains("did you mean"), "{err}");
        // Refused, never rewritten.
        assert_eq!(std::fs::read_to_string(&state).unwrap(), text);
    }
}

#[test]
fn check_config_refuses_what_run_would() {
    let dir = TestDir::plain("hardcheck").unwrap();
    let file = dir.path.join("xlb.toml");
    // The metrics default is said as the daemon binds it.
    std::fs::write(&file, "[[interface]]\nname = \"lo\"\n").unwrap();
    let out = bounded(&["check-config", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("metrics 127.0.0.1:9100 (the default)"),
        "{text}"
    );
    // An interface this host lacks, as `xlb run` would find.
    std::fs::write(&file, "[[interface]]\nname = \"xlbnone0\"\n").unwrap();
    let out = bounded(&["check-config", file.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("interface 'xlbnone0' does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(
        bounded(&["check-config", "--no-host-checks", file.to_str().unwrap()])
            .status
            .success()
    );
    // More services than the kernel's Maglev pool holds.
    let mut big = "[[interface]]\nname = \"lo\"\n".to_string();
    for i in 0..130 {
        big += &format!(
            "[[service]]\naddress = \"198.51.100.{}:{}/tcp\"\nmode = \"dsr\"\n",
            i % 200,
            1000 + i
        );
    }
    std::fs::write(&file, &big).unwrap();
    let out = bounded(&["check-config", "--no-host-checks", file.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("Maglev tables need"),
        "{}",
        stderr(&out)
    );
}

/// What only this host can say: a backend that is one of its addresses or the broadcast
/// address of one of its subnets, a listen address it does not have. Checked in a
/// namespace whose one address is known.
#[test]
fn check_config_refuses_backends_and_listen_addresses_this_host_cannot_use() {
    let dir = TestDir::plain("hardhost").unwrap();
    let ns = Netns::new("hhost").unwrap();
    ns.run(&[
        "ip", "link", "add", "h0", "type", "veth", "peer", "name", "h1",
    ])
    .unwrap();
    ns.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "h0"])
        .unwrap();
    ns.run(&["ip", "link", "set", "h0", "up"]).unwrap();
    ns.run(&["sysctl", "-qw", "net.ipv4.conf.h0.forwarding=1"])
        .unwrap();
    let file = dir.path.join("xlb.toml");
    let check = |backends: &[&str], metrics: &str| {
        let mut text = format!(
            "[[interface]]\nname = \"h0\"\n[metrics]\nlisten = \"{metrics}\"\n\
             [[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n"
        );
        for b in backends {
            text += &format!("[[service.backend]]\naddress = \"{b}\"\n");
        }
        std::fs::write(&file, text).unwrap();
        let out = ns
            .cmd(&[
                xlb_bin().to_str().unwrap(),
                "check-config",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        (out.status.success(), stderr(&out))
    };
    let (ok, err) = check(
        &["192.0.2.1:8080", "192.0.2.255:8080", "192.0.2.20:8080"],
        "192.0.2.99:9100",
    );
    assert!(!ok, "{err}");
    for want in [
        "backend 192.0.2.1 of service 198.51.100.10:80/tcp cannot work: it is an address of this host",
        "backend 192.0.2.255 of service 198.51.100.10:80/tcp cannot work: it is the broadcast address",
        "metrics.listen 192.0.2.99:9100: 192.0.2.99 is not an address of this host",
    ] {
        assert!(err.contains(want), "{err:?} should say {want:?}");
    }
    assert!(!err.contains("192.0.2.20"), "{err}");
    let (ok, err) = check(&["192.0.2.20:8080"], "192.0.2.1:9100");
    assert!(ok, "{err}");
}

/// A usage error under `--json` is a JSON error (exit 2), and output that cannot be
/// written (a full disk) is an error said in one line (exit 1), never a panic (101).
#[test]
fn usage_errors_under_json_and_failed_writes_are_plain_errors() {
    for args in [
        &["--json", "fw", "dney"][..],
        &["--json", "backend", "add", "--weight", "200"],
    ] {
        let out = bounded(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let v: Value = serde_json::from_str(stderr(&out).trim())
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)));
        assert_eq!(v["exit"], "usage", "{v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(xlb_bin())
        .args(["completions", "bash"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("xlb: cannot write the output"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn the_cli_keeps_unix_manners_and_its_exit_codes() {
    let e = edge("hardcli", &[]);
    let sock = e.xlb.socket.to_str().unwrap();
    // A broken pipe: the CLI ends quietly, no panic.
    let rules: Vec<String> = (0..2000).map(|i| format!("2001:db8:{i:x}::/48")).collect();
    let list = e.dir.path.join("rules.txt");
    std::fs::write(&list, rules.join("\n")).unwrap();
    e.xlb.ok(&["fw", "load", list.to_str().unwrap()]);
    let mut child = Command::new(xlb_bin())
        .args(["--socket", sock, "fw", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    // Exit codes: refused input 1, usage 2, no daemon 3, permission 4.
    let code = |args: &[&str]| {
        Command::new(xlb_bin())
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(
        code(&["--socket", sock, "fw", "deny", "192.0.2.1/24"]),
        Some(1)
    );
    assert_eq!(code(&["--socket", sock, "fw", "dney"]), Some(2));
    assert_eq!(
        code(&["--socket", "/nonexistent/xlb.sock", "status"]),
        Some(3)
    );
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(xlb_bin())
        .args(["--socket", sock, "status"])
        .output()
        .unwrap();
    assert_eq!(nobody.status.code(), Some(4), "{}", stderr(&nobody));
    // --json: replies of changes too, and errors as JSON on stderr.
    let v: Value =
        serde_json::from_slice(&e.xlb.cli(&["--json", "fw", "deny", "192.0.2.0/24"]).stdout)
            .unwrap();
    assert_eq!(v["added"], 1);
    let out = e.xlb.cli(&["fw", "deny", "192.0.2.1/24", "--json"]);
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["code"], 1);
    assert!(err["error"].as_str().unwrap().contains("host bits"));
    // `xlb down` with nothing there says so.
    let out = Command::new(xlb_bin())
        .args(["--socket", "/nonexistent/x.sock", "down", "--bpffs"])
        .arg(e.dir.path.join("bpffs/none"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no daemon was running") && text.contains("no datapath was pinned"),
        "{text}"
    );
}

#[test]
fn edit_verbs_save_restore_replace_and_reset() {
    let e = edge("hardedit", &[]);
    let svc = "198.51.100.10:80/tcp";
    // Durations with units, `--affinity none`, the `service` noun.
    e.xlb.ok(&[
        "service",
        "add",
        svc,
        "--mode",
        "nat",
        "--tcp-idle",
        "5m",
        "--affinity",
        "none",
    ]);
    e.xlb.ok(&["backend", "add", svc, "203.0.113.11:8080"]);
    let list = e.xlb.json(&["vip", "list", "--json"]);
    assert_eq!(list["services"][0]["tcp_idle_secs"], 300);
    // Edit in place: the weight, then the idle timeout; nothing drains.
    e.xlb
        .ok(&["backend", "set", svc, "203.0.113.11:8080", "--weight", "3"]);
    e.xlb.ok(&[
        "vip",
        "set",
        svc,
        "--tcp-idle",
        "1h",
        "--affinity",
        "source",
    ]);
    let status = e.xlb.json(&["status", "--json"]);
    let s = &status["services"][0];
    assert_eq!(s["backends"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["backends"][0]["weight"], 3);
    assert_eq!(s["affinity"], "source");
    assert_eq!(s["tcp_idle_secs"], 3600);
    // Out of range, refused by clap's range: weight 0.
    let out = e
        .xlb
        .cli(&["backend", "set", svc, "203.0.113.11:8080", "--weight", "0"]);
    assert!(
        stderr(&out).contains("expected a whole number from 1 to 100"),
        "{}",
        stderr(&out)
    );
    // fw save | fw restore round trip; restore replaces. The backends' subnet is
    // excepted first: a default deny that would drop a backend's replies is refused.
    e.xlb.ok(&["fw", "deny", "192.0.2.0/24"]);
    e.xlb.ok(&["fw", "port", "deny", "23/tcp"]);
    e.xlb.ok(&["fw", "except", "203.0.113.0/24"]);
    e.xlb.ok(&["fw", "default", "deny"]);
    let saved = e.xlb.ok(&["fw", "save"]);
    let file = e.dir.path.join("fw.txt");
    std::fs::write(&file, &saved).unwrap();
    e.xlb.ok(&["fw", "default", "allow"]);
    e.xlb.ok(&["fw", "flush"]);
    e.xlb.ok(&["fw", "allow", "203.0.113.7"]);
    e.xlb.ok(&["fw", "restore", file.to_str().unwrap()]);
    // And from standard input (`fw save | xlb fw restore -`), after a flush.
    e.xlb.ok(&["fw", "default", "allow"]);
    e.xlb.ok(&["fw", "flush"]);
    let mut restore = Command::new(xlb_bin())
        .arg("--socket")
        .arg(&e.xlb.socket)
        .args(["fw", "restore", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut restore.stdin.take().unwrap(), saved.as_bytes()).unwrap();
    let out = restore.wait_with_output().unwrap();
    assert!(out.status.success(), "fw restore -: {}", stderr(&out));
    let sorted = |s: &str| {
        let mut l: Vec<String> = s.lines().map(str::to_string).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&e.xlb.ok(&["fw", "save"])), sorted(&saved));
    // load --replace swaps the prefix rules at once; the port rule stays.
    let block = e.dir.path.join("block.txt");
    std::fs::write(&block, "198.51.100.0/24\n192.0.2.0/24\n").unwrap();
    let v: Value = serde_json::from_str(&e.xlb.ok(&[
        "fw",
        "load",
        "--replace",
        block.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        (v["added"].as_u64(), v["removed"].as_u64()),
        (Some(1), Some(0)),
        "{v}"
    );
    let rules = e.xlb.json(&["fw", "list", "--json"]);
    let matches: Vec<&str> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["match"].as_str().unwrap())
        .collect();
    assert_eq!(matches.len(), 4, "{matches:?}");
    assert!(
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["source"] == "cli")
    );
    // Counters reset.
    let v: Value = serde_json::from_str(&e.xlb.ok(&["stats", "reset", "--json"])).unwrap();
    assert_eq!(v["rules"], 4);
    // Every change is logged with its caller, its arguments and its outcome.
    let log = std::fs::read_to_string(&e.xlb.log).unwrap();
    assert!(
        log.contains("control change applied") && log.contains("uid=Some(0)"),
        "{log}"
    );
    assert!(
        log.contains("op=\"backend_set\"") || log.contains("op=backend_set"),
        "{log}"
    );
    assert!(
        log.contains("203.0.113.11:8080"),
        "the arguments are logged: {log}"
    );
}

#[test]
fn reload_reset_drops_the_cli_changes() {
    let dir = TestDir::new("hardreset").unwrap();
    let ns = Netns::new("hardreset").unwrap();
    let client = Netns::new("hardresetc").unwrap();
    veth(
        &client,
        "c0",
        &["203.0.113.2/24"],
        &ns,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    ns.run(&["sysctl", "-qw", "net.ipv4.conf.x0.forwarding=1"])
        .unwrap();
    let file = dir.path.join("xlb.toml");
    std::fs::write(
        &file,
        "[[interface]]\nname = \"x0\"\n[firewall]\ndeny = [\"192.0.2.0/24\"]\n[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[[service.backend]]\naddress = \"203.0.113.11:8080\"\n",
    )
    .unwrap();
    let xlb = Daemon::start_with(&ns, &dir, &["--config", file.to_str().unwrap()]).unwrap();
    xlb.ok(&["fw", "deny", "198.51.100.0/24"]);
    xlb.ok(&[
        "backend",
        "add",
        "198.51.100.10:80/tcp",
        "203.0.113.12:8080",
    ]);
    xlb.ok(&["vip", "add", "198.51.100.20:80/tcp", "--mode", "nat"]);
    let rules = xlb.json(&["fw", "list", "--json"]);
    let sources: Vec<&str> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["file", "cli"]);
    // A plain reload keeps the CLI's changes; --reset drops them.
    xlb.ok(&["reload"]);
    assert_eq!(
        xlb.json(&["fw", "list", "--json"])["rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    xlb.ok(&["reload", "--reset"]);
    let rules = xlb.json(&["fw", "list", "--json"]);
    assert_eq!(rules["rules"].as_array().unwrap().len(), 1, "{rules}");
    let list = xlb.json(&["vip", "list", "--json"]);
    assert_eq!(list["services"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(
        list["services"][0]["backends"].as_array().unwrap().len(),
        1,
        "{list}"
    );
}
