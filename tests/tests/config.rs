//! The configuration file end to end: `xlb check-config`, `xlb run --config`, reloads
//! (`xlb reload` and SIGHUP) under a steady client loop, refused reloads that keep the
//! running state (checked through `xlb status --json`), restarts from the stored state,
//! and the control socket's group.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use xlb_tests::{
    netns::{ClientLoop, Daemon, Netns, TestDir, http_get, in_ns, veth, xlb_bin},
    topology::{Backends, Topology, backend_v4},
};

const SVC: &str = "198.51.100.10:80/tcp";
const CONNECTIONS: usize = 1200;
const REQUESTS: usize = 2000;

/// A configuration for the reference topology: x0, the attacker denied, `rules` more
/// `[firewall]` lines, and the nat service over (backend index, weight).
fn config(rules: &str, backends: &[(usize, u32)]) -> String {
    let mut s = format!(
        "[[interface]]\nname = \"x0\"\n\n[firewall]\ndeny = [\"192.0.2.166\"]\n{rules}\n\
         [[service]]\naddress = \"{SVC}\"\nmode = \"nat\"\n"
    );
    for (i, w) in backends {
        s += &format!(
            "[[service.backend]]\naddress = \"{}:8080\"\nweight = {w}\n",
            backend_v4(*i)
        );
    }
    s
}

/// `xlb status --json` without what changes by itself (uptime, drain countdowns, health
/// check counts and times, https counters) and without the record of the last reload.
fn state(xlb: &Daemon) -> Value {
    let mut v = xlb.json(&["status", "--json"]);
    v.as_object_mut().unwrap().remove("uptime_secs");
    if v["config"].is_object() {
        v["config"]["last_reload"] = Value::Null;
    }
    if v["https"].is_object() {
        v["https"]["stats"] = Value::Null;
    }
    for s in v["services"].as_array_mut().unwrap() {
        for b in s["backends"].as_array_mut().unwrap() {
            b.as_object_mut().unwrap().remove("drain_left_secs");
            b.as_object_mut().unwrap().remove("health");
        }
    }
    v
}

/// (backend, weight, state) of the service, sorted.
fn backends(xlb: &Daemon) -> Vec<(String, u64, String)> {
    let v = xlb.json(&["status", "--json"]);
    let mut out: Vec<(String, u64, String)> = v["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn be(i: usize, w: u64, state: &str) -> (String, u64, String) {
    (format!("{}:8080", backend_v4(i)), w, state.to_string())
}

/// Polls `f` until it holds (a readiness check; the deadline only stops a hang).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rules(xlb: &Daemon) -> Vec<String> {
    let v = xlb.json(&["fw", "list", "--json"]);
    let mut r: Vec<String> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {} {}", r["kind"], r["match"], r["action"]).replace('"', ""))
        .collect();
    r.sort();
    r
}

/// CONNECTIONS connections from the client, one GET each: answers per backend.
fn spread(t: &Topology) -> HashMap<String, usize> {
    let vip: SocketAddr = "198.51.100.10:80".parse().unwrap();
    xlb_tests::netns::spread(&t.client, vip, CONNECTIONS)
}

#[test]
fn run_with_a_config_balances_per_the_file_and_reloads_without_a_failed_request() {
    let t = Topology::build("cfg", 4, 8080, Backends::ViaEdge).unwrap();
    let file = t.dir.path.join("xlb.toml");
    std::fs::write(&file, config("", &[(0, 1), (1, 1), (2, 2)])).unwrap();
    let xlb = Daemon::start_with(&t.edge, &t.dir, &["--config", file.to_str().unwrap()]).unwrap();
    let addrs: Vec<String> = (0..4).map(backend_v4).collect();
    // web4 is not in the file yet: resolve it too, so the reload that adds it finds
    // its neighbour entry.
    t.edge.run(&["ping", "-c1", "-W2", &backend_v4(3)]).unwrap();
    t.wait_neighbours(&addrs).unwrap();

    let status = xlb.json(&["status", "--json"]);
    assert_eq!(status["config"]["file"], file.to_str().unwrap());
    assert_eq!(status["config"]["generation"], 1);
    assert_eq!(status["interfaces"][0]["name"], "x0");
    assert_eq!(status["interfaces"][0]["mode"], "native");
    assert!(status["program_id"].as_u64().unwrap() > 0);
    assert_eq!(
        backends(&xlb),
        vec![
            be(0, 1, "unchecked"),
            be(1, 1, "unchecked"),
            be(2, 2, "unchecked")
        ]
    );
    let human = xlb.ok(&["status"]);
    assert!(human.contains("generation 1"), "{human}");

    // The file's firewall: the attacker is dropped, the client passes.
    assert!(
        t.client
            .curl("http://198.51.100.10/")
            .unwrap()
            .starts_with("web")
    );
    assert!(t.attacker.curl("http://198.51.100.10/").is_err());
    // The file's weights: 1:1:2 (within 20% of each share: over 4 standard deviations).
    let count = spread(&t);
    for (i, w) in [(1, 1.0), (2, 1.0), (3, 2.0), (4, 0.0)] {
        let want = CONNECTIONS as f64 * w / 4.0;
        let got = *count.get(&format!("web{i}")).unwrap_or(&0) as f64;
        assert!(
            (got - want).abs() <= want * 0.2,
            "web{i}: {got} of {CONNECTIONS}, want {want}: {count:?}"
        );
    }

    // A change made with the CLI that no reload touches.
    xlb.ok(&["fw", "port", "deny", "23/tcp"]);
    // A keep-alive connection on web1, which reload 1 removes.
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

    // A steady client loop: REQUESTS requests, a connection each, in the client's
    // namespace; every answer is recorded in order.
    let client = ClientLoop::start(&t.client, vip, REQUESTS);

    // Reload 1 (`xlb reload`): web1 leaves, web4 joins, web3's weight changes, a rule
    // is added and the attacker's is kept.
    client.wait(500);
    std::fs::write(
        &file,
        config("allow = [\"192.0.2.0/25\"]", &[(1, 1), (2, 1), (3, 1)]),
    )
    .unwrap();
    let out = xlb.ok(&["reload"]);
    let after_reload = client.done();
    assert!(out.starts_with("reloaded: generation 2"), "{out}");
    assert!(out.contains("backends +1 ~1 -1"), "{out}");
    // web1 left the pool, but drains: its established connection still works.
    assert_eq!(http_get(&mut on_web1).unwrap(), "web1");

    // Reload 2 (SIGHUP): web1 is back, web2 leaves.
    client.wait(1000);
    std::fs::write(
        &file,
        config("allow = [\"192.0.2.0/25\"]", &[(0, 1), (2, 1), (3, 1)]),
    )
    .unwrap();
    // Requests below this index ended before the signal.
    let before_hup = client.done();
    xlb.signal(libc::SIGHUP);
    wait_for("the SIGHUP reload", || {
        xlb.json(&["status", "--json"])["config"]["generation"] == 3
    });
    let after_hup = client.done();

    let answers = client.finish();
    let failed: Vec<&String> = answers.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        after_hup < REQUESTS,
        "the loop ended before the SIGHUP reload was applied"
    );
    let answers: Vec<String> = answers.into_iter().map(Result::unwrap).collect();
    // Requests that started after a reload returned follow the new pool.
    for (i, a) in answers.iter().enumerate() {
        if i > after_reload && i < before_hup {
            assert_ne!(a, "web1", "request {i} after reload 1 reached web1");
        }
        if i > after_hup {
            assert_ne!(a, "web2", "request {i} after reload 2 reached web2");
        }
    }
    assert!(answers[after_reload + 1..].contains(&"web4".to_string()));

    let status = xlb.json(&["status", "--json"]);
    let last = &status["config"]["last_reload"];
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["trigger"], "sighup");
    // web2 drains: weight 0, keeps its established flows, takes no new ones.
    assert_eq!(
        backends(&xlb),
        vec![
            be(0, 1, "unchecked"),
            be(1, 0, "draining"),
            be(2, 1, "unchecked"),
            be(3, 1, "unchecked")
        ]
    );
    // The desired state has the file's rules and the CLI's rule.
    assert_eq!(
        rules(&xlb),
        vec![
            "port 23/tcp deny",
            "prefix 192.0.2.0/25 allow",
            "prefix 192.0.2.166/32 deny"
        ]
    );
}

/// An edge namespace with x0 (forwarding on) for daemons that need no traffic.
struct Edge {
    edge: Netns,
    _peer: Netns,
    dir: TestDir,
}

fn edge() -> Edge {
    let dir = TestDir::new("cfgbad").unwrap();
    let peer = Netns::new("peer").unwrap();
    let edge = Netns::new("edge").unwrap();
    veth(
        &peer,
        "p0",
        &["203.0.113.2/24", "2001:db8:b::2/64"],
        &edge,
        "x0",
        &["203.0.113.1/24", "2001:db8:b::1/64"],
    )
    .unwrap();
    for k in [
        "net.ipv4.conf.x0.forwarding=1",
        "net.ipv6.conf.all.forwarding=1",
    ] {
        edge.run(&["sysctl", "-qw", k]).unwrap();
    }
    Edge {
        edge,
        _peer: peer,
        dir,
    }
}

const GOOD: &str = r#"
[[interface]]
name = "x0"

[firewall]
default = "allow"
deny = ["192.0.2.0/24"]
except = ["22/tcp"]
[firewall.ports]
deny = ["23/tcp"]

[[service]]
address = "198.51.100.10:80/tcp"
mode = "nat"
[service.health]
kind = "http"
[[service.backend]]
address = "203.0.113.11:8080"
[[service.backend]]
address = "203.0.113.12:8080"
weight = 2
"#;

/// A bad variant of GOOD: (what, file text, line, field, what the message says).
#[rustfmt::skip]
fn bad_files(dir: &Path) -> Vec<(&'static str, String, usize, &'static str, &'static str)> {
    let with = |from: &str, to: &str| {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replacen(from, to, 1)
    };
    let missing = dir.join("missing.pem");
    let tls = "[tls]\nlisten = [\"192.0.2.1:443\"]\n";
    let pools = "[[tls.routes]]\npool = \"web\"\n[[tls.pools]]\nname = \"web\"\nbackends = [\"203.0.113.11:8080\"]\n";
    vec![
        ("TOML syntax", with("[firewall]", "[firewall"), 5, "firewall", "expected"),
        ("unknown key", with("[firewall]", "[firewall]\ndefualt = \"deny\""), 6, "firewall.defualt", "unknown field `defualt`"),
        ("unknown section", format!("{GOOD}[logging]\nlevel = \"debug\"\n"), 22, "logging", "unknown field `logging`"),
        ("wrong type", with("weight = 2", "weight = \"2\""), 21, "service.backend.weight", "invalid type: string \"2\", expected a whole number"),
        ("missing field", with("mode = \"nat\"\n", ""), 12, "service", "missing field `mode`"),
        ("interface name", with("name = \"x0\"", "name = \"an-interface-name-too-long\""), 3, "interface.name", "expected 1 to 15 characters"),
        ("XDP mode", with("name = \"x0\"", "name = \"x0\"\nmode = \"turbo\""), 4, "interface.mode", "expected \"native\" or \"generic\""),
        ("duplicate interface", format!("{GOOD}[[interface]]\nname = \"x0\"\n"), 23, "interface.name", "listed twice (also at line 3)"),
        ("policy", with("default = \"allow\"", "default = \"drop\""), 6, "firewall.default", "expected \"allow\" or \"deny\""),
        ("host bits", with("\"192.0.2.0/24\"", "\"192.0.2.1/24\""), 7, "firewall.deny", "did you mean 192.0.2.0/24"),
        ("port in a prefix list", with("\"192.0.2.0/24\"", "\"80/tcp\""), 7, "firewall.deny", "put port rules in [firewall.ports]"),
        ("port range", with("\"23/tcp\"", "\"70000/tcp\""), 10, "firewall.ports.deny", "outside 1-65535"),
        ("backwards range", with("\"23/tcp\"", "\"200-100/tcp\""), 10, "firewall.ports.deny", "backwards"),
        ("listed twice", with("\"23/tcp\"", "\"23/tcp\", \"23/tcp\""), 10, "firewall.ports.deny", "listed twice"),
        ("except", with("\"22/tcp\"", "\"22/sctp\""), 8, "firewall.except", "not tcp or udp"),
        ("service address", with("198.51.100.10:80/tcp", "198.51.100.10:0/tcp"), 13, "service.address", "port 0"),
        ("duplicate service", format!("{GOOD}[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"dsr\"\n"), 23, "service.address", "defined twice (also at line 13)"),
        ("service mode", with("mode = \"nat\"", "mode = \"tunnel\""), 14, "service.mode", "'tunnel' is not a mode"),
        ("fullnat without snat", with("mode = \"nat\"", "mode = \"fullnat\""), 14, "service.mode", "needs snat ADDR"),
        ("snat for nat", with("mode = \"nat\"", "mode = \"nat\"\nsnat = \"203.0.113.1\""), 15, "service.snat", "snat is for fullnat services"),
        ("snat family", with("mode = \"nat\"", "mode = \"fullnat\"\nsnat = \"2001:db8:b::1\""), 15, "service.snat", "the families must match"),
        ("affinity", with("mode = \"nat\"", "mode = \"nat\"\naffinity = \"cookie\""), 15, "service.affinity", "expected \"none\" or \"source\""),
        ("idle without unit", with("mode = \"nat\"", "mode = \"nat\"\ntcp_idle = 600"), 15, "service.tcp_idle", "has no unit"),
        ("syn protection", with("mode = \"nat\"", "mode = \"nat\"\nsyn_protection = \"sometimes\""), 15, "service.syn_protection", "'sometimes' is not a SYN protection mode: expected \"auto\", \"always\" or \"off\""),
        ("syn threshold 0", with("mode = \"nat\"", "mode = \"nat\"\nsyn_threshold = 0"), 15, "service.syn_threshold", "a SYN threshold of 0 new flows per second cannot work"),
        ("syn threshold range", with("mode = \"nat\"", "mode = \"nat\"\nsyn_threshold = 100000001"), 15, "service.syn_threshold", "out of range: expected 1 to 100000000"),
        ("all down", with("mode = \"nat\"", "mode = \"nat\"\nall_down = \"maybe\""), 15, "service.all_down", "'maybe' is not what to do with every backend down: expected \"panic\" or \"strict\""),
        ("idle out of range", with("mode = \"nat\"", "mode = \"nat\"\nudp_idle = \"30d\""), 15, "service.udp_idle", "expected whole seconds from 1s to"),
        ("backend family", with("203.0.113.11:8080", "[2001:db8:b::11]:8080"), 18, "service.backend.address", "the families must match"),
        ("duplicate backend", with("203.0.113.12:8080", "203.0.113.11:8080"), 20, "service.backend.address", "already in service"),
        ("weight", with("weight = 2", "weight = 101"), 21, "service.backend.weight", "expected 1 to 100"),
        ("dsr port", with("mode = \"nat\"", "mode = \"dsr\""), 18, "service.backend.address", "dsr cannot change ports"),
        ("check kind", with("kind = \"http\"", "kind = \"icmp\""), 16, "service.health.kind", "expected \"tcp\", \"http\", \"https\" or \"tls\""),
        ("check timeout", with("kind = \"http\"", "kind = \"http\"\ninterval = \"1s\"\ntimeout = \"3s\""), 18, "service.health.timeout", "at most the interval"),
        ("check rise", with("kind = \"http\"", "kind = \"http\"\nrise = 0"), 17, "service.health.rise", "expected 1 to 100"),
        ("check path on tcp", with("kind = \"http\"", "kind = \"tcp\"\npath = \"/health\""), 17, "service.health.path", "only http and https"),
        ("check status", with("kind = \"http\"", "kind = \"http\"\nexpect_status = 700"), 17, "service.health.expect_status", "expected 100 to 599"),
        ("drain timeout", format!("{GOOD}[balancer]\ndrain_timeout = \"2d\"\n"), 23, "balancer.drain_timeout", "expected 0s to 1d"),
        ("metrics", format!("{GOOD}[metrics]\nlisten = \"localhost\"\n"), 23, "metrics.listen", "expected ADDR:PORT"),
        ("group", format!("{GOOD}[control]\ngroup = \"no-such-group-xlb\"\n"), 23, "control.group", "there is no group"),
        ("TLS unknown key", format!("{GOOD}{tls}default_cert = {{ chain = \"good.pem\", key = \"good.pem\" }}\nlisten_backlog = 5\n{pools}"), 25, "tls.listen_backlog", "unknown field `listen_backlog`"),
        ("TLS file", format!("{GOOD}{tls}default_cert = {{ chain = \"{}\", key = \"{}\" }}\n{pools}", missing.display(), missing.display()), 24, "tls", "missing.pem"),
        ("TLS name", format!("{GOOD}{tls}default_cert = {{ chain = \"good.pem\", key = \"good.pem\" }}\n[[tls.certs]]\nnames = [\"bad..name\"]\nchain = \"good.pem\"\nkey = \"good.pem\"\n{pools}"), 26, "tls", "bad..name"),
        ("TLS pool check fall", format!("{GOOD}{tls}default_cert = {{ chain = \"good.pem\", key = \"good.pem\" }}\n{pools}[tls.pools.health]\nkind = \"http\"\nfall = 0\n"), 32, "tls.pools.health.fall", "expected 1 to 100"),
        ("TLS pool check key", format!("{GOOD}{tls}default_cert = {{ chain = \"good.pem\", key = \"good.pem\" }}\n{pools}[tls.pools.health]\nkind = \"http\"\nrise_count = 2\n"), 32, "tls.pools.health.rise_count", "unknown field `rise_count`"),
        ("TLS route", format!("{GOOD}{tls}default_cert = {{ chain = \"good.pem\", key = \"good.pem\" }}\n[[tls.routes]]\npool = \"api\"\n[[tls.pools]]\nname = \"web\"\nbackends = [\"203.0.113.11:8080\"]\n"), 26, "tls", "names pool 'api', which is not defined"),
    ]
}

#[test]
fn check_config_accepts_the_example_and_refuses_bad_files_without_root() {
    let dir = TestDir::plain("check").unwrap();
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/xlb.toml");
    // As nobody: no root, no daemon; the file alone (the example names eth0, which
    // this test's host need not have).
    let check = |file: &Path| -> Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(xlb_bin())
            .args(["--socket", "/nonexistent/xlb.sock", "check-config"])
            .arg("--no-host-checks")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = check(&example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": ok: 1 interface, 8 rules, 2 services")
    );
    std::fs::write(dir.path.join("good.pem"), "not checked here").unwrap();
    for (what, text, line, field, msg) in bad_files(&dir.path) {
        let file = dir.path.join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let out = check(&file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        let want = format!("xlb: {}:{line}:", file.display());
        assert!(
            err.starts_with(&want),
            "{what}: {err:?} should start with {want:?}"
        );
        assert!(
            err.contains(&format!(": {field}: ")),
            "{what}: {err:?} should name {field}"
        );
        assert!(err.contains(msg), "{what}: {err:?} should say {msg:?}");
        // --json: the same error as data.
        let out = Command::new(xlb_bin())
            .args(["check-config", "--json"])
            .arg(&file)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["errors"][0]["line"], line, "{what}");
        assert_eq!(v["errors"][0]["field"], field, "{what}");
        let n = v["errors"].as_array().unwrap().len();
        let counted = if n == 1 {
            "(1 error)".to_string()
        } else {
            format!("({n} errors)")
        };
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&counted),
            "{what}: {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = check(&dir.path.join("nonexistent.toml"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing file is refused input"
    );
    // A file its reader may not open: exit 4 (permission), as the exit codes say.
    let secret = dir.path.join("secret.toml");
    std::fs::write(&secret, GOOD).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(&secret);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(out.status.code(), Some(4), "{err}");
    // A file with no [[interface]] is valid, and says what `xlb run` needs with it.
    let bare = dir.path.join("bare.toml");
    std::fs::write(&bare, "[firewall]\ndeny = [\"192.0.2.166\"]\n").unwrap();
    let out = check(&bare);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 interfaces (xlb run needs --iface IF"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_refused_reload_keeps_the_running_state_and_restarts_apply_the_file_diff() {
    let e = edge();
    let file = e.dir.path.join("xlb.toml");
    std::fs::write(e.dir.path.join("good.pem"), "x").unwrap();
    std::fs::write(&file, GOOD).unwrap();
    let mut xlb =
        Daemon::start_with(&e.edge, &e.dir, &["--config", file.to_str().unwrap()]).unwrap();
    // A change made with the CLI: kept through everything below.
    xlb.ok(&["fw", "deny", "198.51.100.0/24"]);
    // The backends do not exist: their first check takes them down, for good.
    wait_for("the first checks", || {
        xlb.json(&["status", "--json"])["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["health"]["checks"].as_u64().unwrap_or(0) >= 1)
    });
    let before = state(&xlb);
    assert_eq!(before["config"]["generation"], 1);
    assert_eq!(before["rules"]["total"], 4);
    assert_eq!(
        before["services"][0]["health_check"]["kind"], "http",
        "{before}"
    );

    for (what, text, line, field, msg) in bad_files(&e.dir.path) {
        std::fs::write(&file, &text).unwrap();
        let out = xlb.cli(&["reload"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: reload accepted");
        let want = format!("{}:{line}:", file.display());
        assert!(
            err.starts_with("xlb: reload refused, the running state is unchanged: ")
                && err.contains(&want),
            "{what}: {err:?} should name {want}"
        );
        assert!(err.contains(&format!(": {field}: ")), "{what}: {err:?}");
        assert!(err.contains(msg), "{what}: {err:?} should say {msg:?}");
        assert_eq!(state(&xlb), before, "{what}: the running state changed");
        let last = &xlb.json(&["status", "--json"])["config"]["last_reload"];
        assert_eq!(last["ok"], false);
        assert!(
            last["error"].as_str().unwrap().contains(msg),
            "{what}: {last}"
        );
    }
    // A file that fits, but not with a backend added with the CLI: refused as a whole.
    xlb.ok(&["backend", "add", SVC, "203.0.113.13:9090"]);
    let before = state(&xlb);
    std::fs::write(
        &file,
        GOOD.replace("mode = \"nat\"", "mode = \"dsr\"")
            .replace(":8080", ":80"),
    )
    .unwrap();
    let out = xlb.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("203.0.113.13:9090, added with the CLI, does not fit"),
        "{err}"
    );
    assert_eq!(state(&xlb), before);
    // A fullnat source address that is not this host's: refused by the daemon, and by
    // check-config on this host (the file alone is valid: --no-host-checks).
    let fullnat = GOOD.replace(
        "mode = \"nat\"",
        "mode = \"fullnat\"\nsnat = \"203.0.113.99\"",
    );
    std::fs::write(&file, &fullnat).unwrap();
    let bin = xlb_bin();
    let check = |extra: &[&str]| {
        e.edge
            .cmd(&[bin.to_str().unwrap(), "check-config"])
            .args(extra)
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = check(&["--no-host-checks"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("203.0.113.99 is not an address of this host"),
        "{err}"
    );
    let out = xlb.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("203.0.113.99 is not an address of this host"),
        "{err}"
    );
    assert_eq!(state(&xlb), before);
    // /metrics moves only at a restart.
    std::fs::write(
        &file,
        format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9200\"\n"),
    )
    .unwrap();
    let out = xlb.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.listen changes only at a restart"),
        "{err}"
    );
    assert_eq!(state(&xlb), before);
    // A bad file by SIGHUP: refused, recorded, nothing changed.
    std::fs::write(&file, GOOD.replace("weight = 2", "weight = 0")).unwrap();
    xlb.signal(libc::SIGHUP);
    wait_for("the SIGHUP reload", || {
        xlb.json(&["status", "--json"])["config"]["last_reload"]["trigger"] == "sighup"
    });
    let last = &xlb.json(&["status", "--json"])["config"]["last_reload"];
    assert_eq!(last["ok"], false);
    assert!(last["error"].as_str().unwrap().contains(":21:"), "{last}");
    assert_eq!(state(&xlb), before);
    let human = xlb.ok(&["status"]);
    assert!(human.contains("refused at"), "{human}");

    // A good reload after all that.
    std::fs::write(
        &file,
        GOOD.replace("deny = [\"23/tcp\"]", "deny = [\"24/tcp\"]"),
    )
    .unwrap();
    let v = xlb.json(&["reload", "--json"]);
    assert_eq!(v["generation"], 2);
    assert_eq!(
        (v["rules_added"].as_u64(), v["rules_removed"].as_u64()),
        (Some(1), Some(1))
    );

    // Restart with a file edited meanwhile: the stored state (CLI changes included)
    // with diff(the file last applied, this file) applied.
    xlb.stop().unwrap();
    std::fs::write(
        &file,
        GOOD.replace("deny = [\"23/tcp\"]", "deny = [\"24/tcp\", \"25/tcp\"]")
            .replace("weight = 2", "weight = 3"),
    )
    .unwrap();
    let xlb = Daemon::start_with(&e.edge, &e.dir, &["--config", file.to_str().unwrap()]).unwrap();
    let rules = rules(&xlb);
    assert_eq!(
        rules,
        vec![
            "except-port 22/tcp allow",
            "port 24/tcp deny",
            "port 25/tcp deny",
            "prefix 192.0.2.0/24 deny",
            "prefix 198.51.100.0/24 deny",
        ]
    );
    let b: Vec<(String, u64)> = xlb.json(&["status", "--json"])["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["backend"].as_str().unwrap().into(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        b,
        vec![
            ("203.0.113.11:8080".into(), 1),
            ("203.0.113.12:8080".into(), 3),
            ("203.0.113.13:9090".into(), 1),
        ]
    );
    let mut xlb = xlb;
    xlb.stop().unwrap();

    // A bad file at start: refused before anything changes (the state file too).
    let stored = std::fs::read(e.dir.path.join("state")).unwrap();
    std::fs::write(&file, GOOD.replace("\"23/tcp\"", "\"0/tcp\"")).unwrap();
    let err = Daemon::start_with(&e.edge, &e.dir, &["--config", file.to_str().unwrap()])
        .err()
        .expect("a bad file must not start");
    assert!(
        err.to_string().contains(&format!("{}:10:", file.display())),
        "{err:#}"
    );
    assert_eq!(std::fs::read(e.dir.path.join("state")).unwrap(), stored);
    // No interface anywhere.
    std::fs::write(&file, GOOD.replace("[[interface]]\nname = \"x0\"\n", "")).unwrap();
    let err = Daemon::start_with(&e.edge, &e.dir, &["--config", file.to_str().unwrap()])
        .err()
        .expect("no interface");
    assert!(
        err.to_string().contains("no interface to attach to"),
        "{err:#}"
    );
}

#[test]
fn a_removed_backend_drains_then_leaves() {
    let e = edge();
    let file = e.dir.path.join("xlb.toml");
    // Unchecked backends (no health section): only the drain changes their state.
    let unchecked = GOOD.replace("[service.health]\nkind = \"http\"\n", "");
    std::fs::write(
        &file,
        format!("{unchecked}[balancer]\ndrain_timeout = \"1s\"\n"),
    )
    .unwrap();
    let xlb = Daemon::start_with(&e.edge, &e.dir, &["--config", file.to_str().unwrap()]).unwrap();
    assert_eq!(xlb.json(&["status", "--json"])["drain_timeout_secs"], 1);
    xlb.ok(&["backend", "del", SVC, "203.0.113.12:8080"]);
    let gone = ("203.0.113.12:8080".to_string(), 0, "draining".to_string());
    let kept = ("203.0.113.11:8080".to_string(), 1, "unchecked".to_string());
    assert_eq!(backends(&xlb), vec![kept.clone(), gone]);
    let list = xlb.ok(&["backend", "list", SVC]);
    assert!(!list.contains("203.0.113.12"), "{list}");
    wait_for("the drain to end", || backends(&xlb).len() == 1);
    assert_eq!(backends(&xlb), vec![kept.clone()]);
    // Back during its drain: in the pool again with its weight.
    xlb.ok(&["backend", "del", SVC, "203.0.113.11:8080"]);
    xlb.ok(&["backend", "add", SVC, "203.0.113.11:8080", "--weight", "5"]);
    assert_eq!(
        backends(&xlb),
        vec![("203.0.113.11:8080".to_string(), 5, "unchecked".to_string())]
    );
}

fn socket_access(xlb: &Daemon) -> (u32, u32) {
    let m = std::fs::metadata(&xlb.socket).unwrap();
    (m.mode() & 0o777, m.gid())
}

fn status_as_nobody(socket: &PathBuf) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--init-groups"])
        .arg(xlb_bin())
        .arg("--socket")
        .arg(socket)
        .args(["status", "--json"])
        .output()
        .unwrap()
}

#[test]
fn the_control_socket_group_comes_from_the_file_or_the_command_line() {
    let e = edge();
    std::fs::set_permissions(&e.dir.path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = e.dir.path.join("xlb.toml");
    std::fs::write(&file, format!("[control]\ngroup = \"nogroup\"\n{GOOD}")).unwrap();
    let mut xlb =
        Daemon::start_with(&e.edge, &e.dir, &["--config", file.to_str().unwrap()]).unwrap();
    assert_eq!(socket_access(&xlb), (0o660, 65534));
    let out = status_as_nobody(&xlb.socket);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["socket_group"], "nogroup");
    // The group removed from the file: root only again.
    std::fs::write(&file, GOOD).unwrap();
    xlb.ok(&["reload"]);
    assert_eq!(socket_access(&xlb), (0o600, 0));
    let out = status_as_nobody(&xlb.socket);
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    xlb.stop().unwrap();
    // --socket-group, and --iface over the file's interfaces.
    let xlb = Daemon::start_with(
        &e.edge,
        &e.dir,
        &[
            "--config",
            file.to_str().unwrap(),
            "--socket-group",
            "nogroup",
            "--iface",
            "x0",
            "--mode",
            "generic",
        ],
    )
    .unwrap();
    assert_eq!(socket_access(&xlb), (0o660, 65534));
    let v = xlb.json(&["status", "--json"]);
    assert_eq!(v["interfaces"][0]["mode"], "generic");
    assert_eq!(v["interfaces"].as_array().unwrap().len(), 1);
}

/// GOOD's [tls] section for the reference topology: 192.0.2.1:443 with a certificate for
/// www.example.org, every path to the pool over `backends`.
fn with_tls(listen: &str, backends: &[usize]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|i| format!("\"{}:8080\"", backend_v4(*i)))
        .collect();
    format!(
        "{}\n[[service]]\naddress = \"{listen}/tcp\"\nmode = \"https\"\n\n[tls]\ndefault_cert = {{ chain = \"www.pem\", key = \"www.key\" }}\n\
         [[tls.routes]]\npool = \"web\"\n[[tls.pools]]\nname = \"web\"\nbackends = [{}]\n",
        config("", &[(0, 1)]),
        list.join(", ")
    )
}

#[test]
fn the_tls_section_is_served_by_xlb_run_and_reloaded_whole() {
    let t = Topology::build("cfgtls", 2, 8080, Backends::ViaEdge).unwrap();
    let pki = xlb_tests::tls::Pki::new(&t.dir.path, "cfg").unwrap();
    pki.issue("www", &["www.example.org"]).unwrap();
    let file = t.dir.path.join("xlb.toml");
    std::fs::write(&file, with_tls("192.0.2.1:443", &[0])).unwrap();
    let xlb = Daemon::start_with(&t.edge, &t.dir, &["--config", file.to_str().unwrap()]).unwrap();
    let ca = pki.ca.to_str().unwrap().to_string();
    let get = || {
        t.client.run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &ca,
            "--resolve",
            "www.example.org:443:192.0.2.1",
            "https://www.example.org/",
        ])
    };
    assert_eq!(get().unwrap(), "web1");
    let status = xlb.json(&["status", "--json"]);
    assert_eq!(status["https"]["listen"][0], "192.0.2.1:443");

    // Another pool: applied whole.
    std::fs::write(&file, with_tls("192.0.2.1:443", &[1])).unwrap();
    let v = xlb.json(&["reload", "--json"]);
    assert_eq!(v["https"], "reloaded");
    assert_eq!(get().unwrap(), "web2");
    // Its layer-7 metrics: two requests answered 2xx, two handshakes.
    let metrics = t
        .edge
        .run(&["curl", "-sf", "http://127.0.0.1:9100/metrics"])
        .unwrap();
    for line in [
        "xlb_l7_requests_total{service=\"https\",class=\"2xx\"} 2",
        "xlb_tls_handshakes_total{service=\"https\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }

    // Refused, and the running https service stays as it was.
    let before = state(&xlb);
    for (text, says) in [
        (
            with_tls("192.0.2.1:443", &[1]).replace("pool = \"web\"\n[[", "pool = \"api\"\n[["),
            "names pool 'api', which is not defined",
        ),
        (
            with_tls("192.0.2.1:8443", &[1]),
            "tls.listen and tls.redirect_listen change only at a restart",
        ),
        (
            with_tls("192.0.2.1:443", &[1]).replace("www.key", "nothere.key"),
            "nothere.key",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = xlb.cli(&["reload"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
        assert_eq!(state(&xlb), before);
        assert_eq!(get().unwrap(), "web2");
    }

    // The section removed: the https service stops.
    std::fs::write(&file, config("", &[(0, 1)])).unwrap();
    let v = xlb.json(&["reload", "--json"]);
    assert_eq!(v["https"], "stopped");
    wait_for("the https listener to close", || get().is_err());
    assert!(xlb.json(&["status", "--json"])["https"].is_null());
}
