//! The README's second command: `xlb-demo` (what `cargo xtask demo` runs) through its
//! whole tour with a short `--duration`, checked from its narration (every web server
//! answered, the attacker dropped, HTTPS refused without the demo CA, the primary's
//! failover and the https requests among the metrics, xlb adopted by its next daemon),
//! and nothing of it left behind.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use xlb_tests::netns::{PREFIX, wait_until, xlb_bin};

/// The whole tour takes under a minute here; a stuck step fails the test, not CI.
const DEMO_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn demo_tour_runs_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xlb-demo"))
        .args(["--duration", "1"])
        .env("XLB_BIN", xlb_bin())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting xlb-demo");
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let finished = wait_until("xlb-demo to finish", DEMO_LIMIT, || {
        !matches!(child.try_wait(), Ok(None))
    });
    if finished.is_err() {
        // SIGINT: the demo cleans up as on Ctrl-C.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    }
    let status = child.wait().expect("waiting for xlb-demo");
    let out = reader.join().expect("stdout reader");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if let Err(e) = finished {
        panic!("{e:#}:\n{out}\n{err}");
    }
    assert!(status.success(), "xlb-demo failed: {status}\n{out}\n{err}");

    for expected in [
        "requests answered by web1",
        "requests answered by web2",
        "requests answered by web3",
        "refused: the certificate is not trusted",
        "the replica answers",
        "__name__=xlb_l7_requests_total,class=2xx",
        "__name__=xlb_tls_handshakes_total",
        "backend=203.0.113.21:5432,to=down",
        "reason=prefix_deny",
        "client: 10 of 10 fetches answered during the flood",
        ": none for the spoofed sources",
        "xlb started again: \"adopted\"",
        "nothing is left behind",
    ] {
        assert!(
            out.contains(expected),
            "the demo's narration lacks {expected:?}:\n{out}\n{err}"
        );
    }
    let attacker: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("attacker ") && l.contains(" curl "))
        .collect();
    assert!(
        !attacker.is_empty()
            && attacker
                .iter()
                .all(|l| l.ends_with("-> no answer (dropped by xlb)")),
        "the attacker was not dropped: {attacker:?}\n{out}"
    );

    // Its namespaces are named after its pid (PREFIX-<pid>-...).
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{PREFIX}-{pid}-")))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "the demo left namespaces behind: {left:?}");
}
