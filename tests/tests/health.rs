//! Health checks end to end: real backends in namespaces that stop and start answering,
//! traffic that follows their health, backups that serve only while every primary is
//! down, and the operator's drain and enable.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use xlb_tests::{
    netns::{ClientLoop, Daemon, NsServer, http_get, in_ns},
    topology::{Backends, Topology, backend_v4},
};

const SVC: &str = "198.51.100.10:80/tcp";
const CONNECTIONS: usize = 300;

/// The reference topology's x0 and a nat service over web(i) (backup when flagged),
/// checked with `check` (the `[service.health]` lines; none if empty).
fn config(check: &str, backends: &[(usize, bool)]) -> String {
    let mut s = format!(
        "[[interface]]\nname = \"x0\"\n\n[[service]]\naddress = \"{SVC}\"\nmode = \"nat\"\n"
    );
    if !check.is_empty() {
        s += &format!("[service.health]\n{check}\n");
    }
    for (i, backup) in backends {
        s += &format!(
            "[[service.backend]]\naddress = \"{}:8080\"\nbackup = {backup}\n",
            backend_v4(*i)
        );
    }
    s
}

fn start(t: &Topology, text: &str) -> Daemon {
    let file = t.dir.path.join("xlb.toml");
    std::fs::write(&file, text).unwrap();
    let xlb = Daemon::start_with(&t.edge, &t.dir, &["--config", file.to_str().unwrap()]).unwrap();
    let addrs: Vec<String> = (0..t.backends.len()).map(backend_v4).collect();
    t.wait_neighbours(&addrs).unwrap();
    xlb
}

/// The service's backends as `xlb status --json` shows them, by backend index.
fn backends(xlb: &Daemon) -> Vec<Value> {
    let v = xlb.json(&["status", "--json"]);
    v["services"][0]["backends"].as_array().unwrap().clone()
}

fn state(xlb: &Daemon, i: usize) -> String {
    let want = format!("{}:8080", backend_v4(i));
    backends(xlb)
        .iter()
        .find(|b| b["backend"] == want.as_str())
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no backend {want}"))
}

/// Polls `f` until it holds (a readiness check; the deadline only stops a hang).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every backend has been checked at least `n` times.
fn wait_checked(xlb: &Daemon, n: u64) {
    wait_for("checks of every backend", || {
        backends(xlb)
            .iter()
            .all(|b| b["health"]["checks"].as_u64().unwrap_or(0) >= n)
    });
}

/// CONNECTIONS connections from the client, one GET each: answers per backend.
fn spread(t: &Topology) -> HashMap<String, usize> {
    let vip: SocketAddr = "198.51.100.10:80".parse().unwrap();
    xlb_tests::netns::spread(&t.client, vip, CONNECTIONS)
}

fn web(t: &Topology, i: usize) -> NsServer {
    NsServer::http(&t.backends[i], "[::]:8080", &format!("web{}", i + 1)).unwrap()
}

#[test]
fn http_checks_take_a_dead_backend_out_and_bring_it_back() {
    let mut t = Topology::build("hc", 3, 8080, Backends::ViaEdge).unwrap();
    let check = "kind = \"http\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\npath = \"/health\"";
    let xlb = start(&t, &config(check, &[(0, false), (1, false), (2, false)]));
    wait_checked(&xlb, 1);
    assert!((0..3).all(|i| state(&xlb, i) == "up"));
    let count = spread(&t);
    assert_eq!(count.len(), 3, "{count:?}");

    // web2 stops answering: down after `fall` failed checks, no new flows.
    drop(t.servers.remove(1));
    wait_for("web2 down", || state(&xlb, 1) == "down");
    let b = &backends(&xlb)[1];
    assert_eq!(b["effective_weight"], 0);
    assert!(
        b["health"]["last"]
            .as_str()
            .unwrap()
            .contains("connecting to 203.0.113.12:8080"),
        "{b}"
    );
    let count = spread(&t);
    assert!(!count.contains_key("web2"), "{count:?}");
    assert!(
        count.contains_key("web1") && count.contains_key("web3"),
        "{count:?}"
    );
    let human = String::from_utf8_lossy(&xlb.cli(&["backend", "list"]).stdout).to_string();
    assert!(human.contains("down"), "{human}");

    // web2 answers again: up after `rise` good checks, and takes flows.
    t.servers.insert(1, web(&t, 1));
    wait_for("web2 up", || state(&xlb, 1) == "up");
    let count = spread(&t);
    assert_eq!(count.len(), 3, "{count:?}");

    // A reload that expects another status: every backend fails its check.
    let file = t.dir.path.join("xlb.toml");
    let wrong = check.replace("path = \"/health\"", "expect_status = 204");
    std::fs::write(&file, config(&wrong, &[(0, false), (1, false), (2, false)])).unwrap();
    xlb.ok(&["reload"]);
    wait_for("every backend down", || {
        (0..3).all(|i| state(&xlb, i) == "down")
    });
    assert_eq!(
        backends(&xlb)[0]["health"]["last"],
        "HTTP 200, expected 204"
    );
    // Panic mode: every backend looks down at once, so health is not believed: new
    // flows go to all of them (they do answer), and status says so.
    let v = xlb.json(&["status", "--json"]);
    assert_eq!(v["services"][0]["panic"], true, "{v}");
    assert_eq!(v["services"][0]["panic_entered"], 1);
    assert!(backends(&xlb).iter().all(|b| b["effective_weight"] != 0));
    assert_eq!(spread(&t).len(), 3, "panic: every backend takes flows");
    let human = xlb.ok(&["status"]);
    assert!(human.contains("PANIC"), "{human}");
    std::fs::write(&file, config(check, &[(0, false), (1, false), (2, false)])).unwrap();
    xlb.ok(&["reload"]);
    wait_for("every backend up", || {
        (0..3).all(|i| state(&xlb, i) == "up")
    });
    assert_eq!(spread(&t).len(), 3);
    // The file's check is the file's to change.
    let out = xlb.cli(&["vip", "check", SVC, "tcp"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("checked by the configuration file"), "{err}");
}

/// A service added with the CLI, checked with the CLI: a bad check is refused with the
/// file's message and changes nothing; a good one takes a dead backend out; `off` ends
/// the checks (every backend takes flows again).
#[test]
fn a_check_set_with_the_cli_takes_a_dead_backend_out_until_turned_off() {
    let mut t = Topology::build("clichk", 3, 8080, Backends::ViaEdge).unwrap();
    let xlb = Daemon::start(&t.edge, "x0", &t.dir, &[]).unwrap();
    xlb.ok(&["vip", "add", SVC, "--mode", "nat"]);
    let addrs: Vec<String> = (0..3).map(backend_v4).collect();
    for a in &addrs {
        xlb.ok(&["backend", "add", SVC, &format!("{a}:8080")]);
    }
    t.wait_neighbours(&addrs).unwrap();
    let check_kind = |xlb: &Daemon| {
        xlb.json(&["vip", "list", "--json"])["services"][0]["health_check"]["kind"].clone()
    };

    for (args, want) in [
        (vec!["tcpx"], "'tcpx' is not a check kind"),
        (
            vec!["http", "--interval", "5ms"],
            "check.interval: interval '5ms' is out of range",
        ),
        (
            vec!["tcp", "--path", "/"],
            "only http and https checks have path",
        ),
        (
            vec!["off", "--fall", "2"],
            "--fall has no meaning with `off`",
        ),
    ] {
        let mut cmd = vec!["vip", "check", SVC];
        cmd.extend(args);
        let out = xlb.cli(&cmd);
        assert!(!out.status.success(), "{cmd:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{cmd:?}: {err}");
        assert!(check_kind(&xlb).is_null(), "{cmd:?} set a check");
    }

    xlb.ok(&[
        "vip",
        "check",
        SVC,
        "http",
        "--path",
        "/health",
        "--interval",
        "200ms",
        "--timeout",
        "150ms",
        "--rise",
        "1",
        "--fall",
        "2",
    ]);
    assert_eq!(check_kind(&xlb), "http");
    let human = xlb.ok(&["vip", "list"]);
    assert!(human.contains("check http"), "{human}");
    wait_checked(&xlb, 1);
    assert!((0..3).all(|i| state(&xlb, i) == "up"));
    drop(t.servers.remove(1));
    wait_for("web2 down", || state(&xlb, 1) == "down");
    let count = spread(&t);
    assert!(!count.contains_key("web2"), "{count:?}");
    // Strict: with every backend down, none takes new flows (no panic mode).
    let out = xlb.cli(&["vip", "set", SVC, "--all-down", "sometimes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'sometimes' is not"));
    xlb.ok(&["vip", "set", SVC, "--all-down", "strict"]);
    t.servers.clear();
    wait_for("every backend down", || {
        (0..3).all(|i| state(&xlb, i) == "down")
    });
    assert!(backends(&xlb).iter().all(|b| b["effective_weight"] == 0));
    let v = xlb.json(&["status", "--json"]);
    assert_eq!(v["services"][0]["panic"], false, "{v}");
    assert_eq!(v["services"][0]["all_down"], "strict");

    // No check: web2 takes flows again (unchecked backends count as up).
    xlb.ok(&["vip", "check", SVC, "off"]);
    assert!(check_kind(&xlb).is_null());
    assert!((0..3).all(|i| state(&xlb, i) == "unchecked"));
    assert_eq!(backends(&xlb)[1]["effective_weight"], 1);
}

#[test]
fn a_killed_backend_fails_only_requests_before_its_detection() {
    let mut t = Topology::build("killed", 3, 8080, Backends::ViaEdge).unwrap();
    let check = "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2";
    let xlb = start(&t, &config(check, &[(0, false), (1, false), (2, false)]));
    wait_checked(&xlb, 1);
    assert!((0..3).all(|i| state(&xlb, i) == "up"));

    let vip: SocketAddr = "198.51.100.10:80".parse().unwrap();
    let client = ClientLoop::start(&t.client, vip, 2000);
    client.wait(300);
    // Requests from this index on may reach web2 after it died.
    let killed_at = client.done();
    drop(t.servers.remove(1));
    wait_for("web2 down", || state(&xlb, 1) == "down");
    // Requests after this index started once web2 was out of the table.
    let detected_at = client.done();
    client.wait(detected_at + 300);
    // Requests finished before web2 runs again cannot have reached it; from here on
    // they may, as soon as its checks bring it back (polling status lags that).
    let restarted_at = client.done();
    t.servers.insert(1, web(&t, 1));
    wait_for("web2 up", || state(&xlb, 1) == "up");
    let back_at = client.done();
    assert!(back_at < 2000, "the loop ended before web2 came back");

    let answers = client.finish();
    for (i, r) in answers.iter().enumerate() {
        if let Err(e) = r {
            assert!(
                (killed_at..=detected_at).contains(&i),
                "{e}: outside the detection window (requests {killed_at}..={detected_at})"
            );
        }
    }
    assert!(
        answers[detected_at + 1..restarted_at]
            .iter()
            .all(|r| r.as_deref().is_ok_and(|w| w != "web2")),
        "a request reached web2 while it was down"
    );
    // Back in the table: it takes new flows again.
    assert!(spread(&t).contains_key("web2"));
}

#[test]
fn backups_serve_only_while_every_primary_is_down() {
    let mut t = Topology::build("backup", 3, 8080, Backends::ViaEdge).unwrap();
    let check = "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 1";
    // /metrics where the file says.
    let text = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:9200\"\n",
        config(check, &[(0, false), (1, false), (2, true)])
    );
    let xlb = start(&t, &text);
    wait_checked(&xlb, 1);
    assert_eq!(backends(&xlb)[2]["backup"], true);
    assert_eq!(backends(&xlb)[2]["effective_weight"], 0);
    let count = spread(&t);
    assert!(
        !count.contains_key("web3"),
        "the backup stands by: {count:?}"
    );
    assert_eq!(count.len(), 2, "{count:?}");

    // Both primaries down: the backup takes every new flow.
    drop(t.servers.remove(1));
    drop(t.servers.remove(0));
    wait_for("web1 and web2 down", || {
        state(&xlb, 0) == "down" && state(&xlb, 1) == "down"
    });
    let count = spread(&t);
    assert_eq!(count.get("web3"), Some(&CONNECTIONS), "{count:?}");
    let metrics = t
        .edge
        .run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:9200/metrics",
        ])
        .unwrap();
    for i in 0..2 {
        let line = format!(
            "xlb_backend_health_state{{service=\"{SVC}\",backend=\"{}:8080\",state=\"down\"}} 1",
            backend_v4(i)
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    // One primary back: the backup stands by again.
    t.servers.insert(0, web(&t, 0));
    wait_for("web1 up", || state(&xlb, 0) == "up");
    let count = spread(&t);
    assert_eq!(count.get("web1"), Some(&CONNECTIONS), "{count:?}");
}

#[test]
fn the_operator_drains_and_enables_a_backend() {
    let t = Topology::build("drain", 3, 8080, Backends::ViaEdge).unwrap();
    let mut xlb = start(&t, &config("", &[(0, false), (1, false), (2, false)]));
    assert_eq!(state(&xlb, 0), "unchecked");
    // A keep-alive connection on web1.
    let vip: SocketAddr = "198.51.100.10:80".parse().unwrap();
    let mut on_web1 = in_ns(&t.client, move || {
        (0..200)
            .find_map(|_| {
                let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                (http_get(&mut s).ok()? == "web1").then_some(s)
            })
            .expect("a connection on web1")
    })
    .unwrap();

    let web1 = format!("{}:8080", backend_v4(0));
    xlb.ok(&["backend", "drain", SVC, &web1]);
    assert_eq!(state(&xlb, 0), "drained");
    // Its established flow stays; new flows go elsewhere.
    assert_eq!(http_get(&mut on_web1).unwrap(), "web1");
    let count = spread(&t);
    assert!(!count.contains_key("web1"), "{count:?}");
    // Unknown backends are refused and change nothing.
    let before = xlb.json(&["vip", "list", "--json"]);
    let out = xlb.cli(&["backend", "drain", SVC, "203.0.113.99:8080"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not in service"),
        "{out:?}"
    );
    assert_eq!(xlb.json(&["vip", "list", "--json"]), before);

    // Kept across a restart.
    xlb.stop().unwrap();
    let file = t.dir.path.join("xlb.toml");
    let xlb = Daemon::start_with(&t.edge, &t.dir, &["--config", file.to_str().unwrap()]).unwrap();
    assert_eq!(state(&xlb, 0), "drained");
    xlb.ok(&["backend", "enable", SVC, &web1]);
    assert_eq!(state(&xlb, 0), "unchecked");
    assert_eq!(spread(&t).len(), 3);
}
