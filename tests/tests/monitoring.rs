//! Monitoring end to end: known numbers of allowed and denied packets through the
//! reference topology, and every counter they touch compared exactly through `/metrics`,
//! `xlb stats --json` and a real Prometheus server's query API; `promtool check metrics`
//! on the exposition; `xlb top` in its fixed-size mode; sampled drop events in the JSON
//! log; kernel debug logging.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use xlb_tests::{
    netns::{Daemon, Netns, TestDir, in_ns, veth},
    topology::{Backends, Topology, backend_v4},
};

const VIP: &str = "198.51.100.10:53/udp";
const PAYLOAD: usize = 64;
/// Ethernet + IPv4 + UDP headers and the payload: the frame length the program counts.
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
const FLOWS: u16 = 10;
const PER_FLOW: usize = 3;
const DENIED: usize = 7;

/// Metric samples of an exposition in the text format: "name{labels}" -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn scrape(edge: &Netns) -> String {
    edge.run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:9100/metrics",
    ])
    .expect("scraping /metrics")
}

/// Polls `f` until it returns Some (a readiness poll, bounded).
fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reason(stats: &Value, reason: &str, verdict: &str) -> (u64, u64) {
    let r = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason && r["verdict"] == verdict)
        .unwrap();
    (r["packets"].as_u64().unwrap(), r["bytes"].as_u64().unwrap())
}

/// Prometheus in the edge's namespace, killed on drop.
struct Prometheus(Child);

impl Prometheus {
    fn start(edge: &Netns, dir: &std::path::Path) -> Result<Self> {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: xlb\n    static_configs:\n      - targets: ['127.0.0.1:9100']\n",
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = edge
            .cmd(&["prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        Ok(Prometheus(child))
    }

    /// The value of an instant query with one result, if it has one.
    fn query(&self, edge: &Netns, q: &str) -> Option<f64> {
        let out = edge
            .run(&[
                "curl",
                "-sS",
                "--max-time",
                "2",
                "-G",
                "http://127.0.0.1:9090/api/v1/query",
                "--data-urlencode",
                &format!("query={q}"),
            ])
            .ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        let r = v["data"]["result"].as_array()?;
        if r.len() != 1 {
            return None;
        }
        r[0]["value"][1].as_str()?.parse().ok()
    }
}

impl Prometheus {
    /// Whether Prometheus accepts a query (status "success").
    fn valid(&self, edge: &Netns, q: &str) -> bool {
        let out = edge.run(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "-G",
            "http://127.0.0.1:9090/api/v1/query",
            "--data-urlencode",
            &format!("query={q}"),
        ]);
        out.ok()
            .and_then(|o| serde_json::from_str::<Value>(&o).ok())
            .is_some_and(|v| v["status"] == "success")
    }
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn example_scrape_config_is_valid() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo().join("monitoring/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `per_flow` datagrams on each of `flows` sockets (distinct source ports) from
/// the calling namespace; the replies' bodies counted.
fn client_traffic(flows: u16, per_flow: usize) -> Result<HashMap<String, u64>> {
    let vip: SocketAddr = "198.51.100.10:53".parse()?;
    let mut got = HashMap::new();
    for i in 0..flows {
        let s = UdpSocket::bind(("192.0.2.2", 41000 + i))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.connect(vip)?;
        for _ in 0..per_flow {
            s.send(&[b'x'; PAYLOAD])?;
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf).context("no answer from the service")?;
            *got.entry(String::from_utf8_lossy(&buf[..n]).into_owned())
                .or_insert(0) += 1;
        }
    }
    Ok(got)
}

fn attacker_traffic(n: usize) -> Result<()> {
    let s = UdpSocket::bind("192.0.2.166:42000")?;
    for _ in 0..n {
        s.send_to(&[b'x'; PAYLOAD], "198.51.100.10:53")?;
    }
    Ok(())
}

#[test]
fn counters_are_exact_in_metrics_stats_prometheus_and_top() {
    let t = Topology::build("mon", 2, 8080, Backends::ViaEdge).unwrap();
    let _udp: Vec<_> = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            xlb_tests::netns::NsServer::udp(b, "0.0.0.0:5300", &format!("web{}", i + 1)).unwrap()
        })
        .collect();
    let xlb = Daemon::start(
        &t.edge,
        "x0",
        &t.dir,
        &["--drop-sample", "1", "--log-format", "json"],
    )
    .unwrap();
    let ok = |args: &[&str]| {
        let out = xlb.cli(args);
        assert!(
            out.status.success(),
            "xlb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&["fw", "deny", "192.0.2.166/32"]);
    ok(&["fw", "allow", "192.0.2.2/32"]);
    ok(&["vip", "add", VIP, "--mode", "nat"]);
    let backends: Vec<String> = (0..2).map(|i| format!("{}:5300", backend_v4(i))).collect();
    for b in &backends {
        ok(&["backend", "add", VIP, b]);
    }
    t.wait_neighbours(&[backend_v4(0), backend_v4(1)]).unwrap();
    let rules = xlb.json(&["fw", "list", "--json"]);
    let rule_id = |m: &str| {
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["match"] == m)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let (deny_id, allow_id) = (rule_id("192.0.2.166/32"), rule_id("192.0.2.2/32"));

    let before = xlb.json(&["stats", "--json"]);
    let m0 = samples(&scrape(&t.edge));

    let replies = in_ns(&t.client, || client_traffic(FLOWS, PER_FLOW))
        .unwrap()
        .unwrap();
    in_ns(&t.attacker, || attacker_traffic(DENIED))
        .unwrap()
        .unwrap();
    let sent = FLOWS as u64 * PER_FLOW as u64;
    assert_eq!(replies.values().sum::<u64>(), sent);
    let per_backend: Vec<u64> = ["web1", "web2"]
        .iter()
        .map(|w| replies.get(*w).copied().unwrap_or(0))
        .collect();

    // The attacker's datagrams are dropped without an answer: wait until all are counted.
    let after = poll("the denied packets", Duration::from_secs(10), || {
        let s = xlb.json(&["stats", "--json"]);
        (reason(&s, "prefix_deny", "drop").0 - reason(&before, "prefix_deny", "drop").0
            == DENIED as u64)
            .then_some(s)
    });

    // xlb stats --json.
    let delta = |r: &str, v: &str| {
        let (a, b) = (reason(&after, r, v), reason(&before, r, v));
        (a.0 - b.0, a.1 - b.1)
    };
    assert_eq!(
        delta("prefix_deny", "drop"),
        (DENIED as u64, DENIED as u64 * FRAME)
    );
    assert_eq!(delta("balanced", "tx"), (sent, sent * FRAME));
    // Replies: "webN" bodies.
    assert_eq!(delta("nat_reply", "tx"), (sent, sent * (14 + 20 + 8 + 4)));
    let svc = &after["services"][0];
    assert_eq!(svc["service"], VIP);
    assert_eq!(svc["packets"], sent);
    assert_eq!(svc["bytes"], sent * FRAME);
    assert_eq!(svc["new_flows"], FLOWS as u64);
    let stats_backend = |b: &str| {
        svc["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["backend"] == b)
            .unwrap()
            .clone()
    };
    for (i, b) in backends.iter().enumerate() {
        let sb = stats_backend(b);
        assert_eq!(sb["packets"], per_backend[i], "{b}");
        assert_eq!(sb["bytes"], per_backend[i] * FRAME, "{b}");
        assert_eq!(sb["new_flows"], per_backend[i] / PER_FLOW as u64, "{b}");
        assert_eq!(sb["health"], "unchecked");
    }
    assert_eq!(after["flows"]["forward"], FLOWS as u64);
    // The backends own their endpoints: no reply entries (see below).
    assert_eq!(after["flows"]["reply"], 0);

    // /metrics: every affected counter.
    let text = scrape(&t.edge);
    let m1 = samples(&text);
    let d = |k: &str| {
        m1.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing:\n{text}"))
            - m0.get(k).copied().unwrap_or(0.0)
    };
    let f = |v: u64| v as f64;
    assert_eq!(
        d("xlb_packets_total{verdict=\"drop\",reason=\"prefix_deny\"}"),
        f(DENIED as u64)
    );
    assert_eq!(
        d("xlb_bytes_total{verdict=\"drop\",reason=\"prefix_deny\"}"),
        f(DENIED as u64 * FRAME)
    );
    assert_eq!(
        d("xlb_packets_total{verdict=\"tx\",reason=\"balanced\"}"),
        f(sent)
    );
    assert_eq!(
        d("xlb_bytes_total{verdict=\"tx\",reason=\"balanced\"}"),
        f(sent * FRAME)
    );
    assert_eq!(
        d("xlb_packets_total{verdict=\"tx\",reason=\"nat_reply\"}"),
        f(sent)
    );
    assert_eq!(
        d(&format!("xlb_rule_hits_total{{rule=\"{deny_id}\"}}")),
        f(DENIED as u64)
    );
    assert_eq!(
        d(&format!("xlb_rule_hits_total{{rule=\"{allow_id}\"}}")),
        f(sent)
    );
    let sl = format!("{{service=\"{VIP}\"}}");
    assert_eq!(m1[&format!("xlb_service_packets_total{sl}")], f(sent));
    assert_eq!(m1[&format!("xlb_service_bytes_total{sl}")], f(sent * FRAME));
    assert_eq!(
        m1[&format!("xlb_service_new_flows_total{sl}")],
        f(FLOWS as u64)
    );
    for (i, b) in backends.iter().enumerate() {
        let bl = format!("{{service=\"{VIP}\",backend=\"{b}\"}}");
        assert_eq!(
            m1[&format!("xlb_backend_packets_total{bl}")],
            f(per_backend[i])
        );
        assert_eq!(
            m1[&format!("xlb_backend_bytes_total{bl}")],
            f(per_backend[i] * FRAME)
        );
        assert_eq!(
            m1[&format!("xlb_backend_new_flows_total{bl}")],
            f(per_backend[i] / PER_FLOW as u64)
        );
        let hl = format!("{{service=\"{VIP}\",backend=\"{b}\",state=\"unchecked\"}}");
        assert_eq!(m1[&format!("xlb_backend_health_state{hl}")], 1.0);
    }
    assert_eq!(
        m1["xlb_flow_entries{direction=\"forward\"}"],
        f(FLOWS as u64)
    );
    // The backends own their endpoints: nat replies find their flows through the
    // forward entries, none has a reply entry.
    assert_eq!(m1["xlb_flow_entries{direction=\"reply\"}"], 0.0);
    assert_eq!(m1["xlb_flow_capacity"], f(lb_common::DEFAULT_FLOWS as u64));
    assert_eq!(m1["xlb_services"], 1.0);
    assert_eq!(m1["xlb_backends"], 2.0);
    assert_eq!(m1["xlb_rules"], 2.0);
    assert_eq!(m1["xlb_config_generation"], 1.0);
    assert_eq!(m1["xlb_config_last_reload_success"], 1.0);
    assert_eq!(m1["xlb_map_update_errors_total{map=\"rules\"}"], 0.0);

    // Every sampled drop (one in 1) reaches the log, as JSON.
    poll("the drop events", Duration::from_secs(10), || {
        let m = samples(&scrape(&t.edge));
        (m.get("xlb_drop_events_total{outcome=\"logged\"}") == Some(&f(DENIED as u64)))
            .then_some(())
    });
    let log = std::fs::read_to_string(&xlb.log).unwrap();
    let events: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "dropped packet")
        .collect();
    assert_eq!(events.len(), DENIED, "{log}");
    for e in &events {
        let fields = &e["fields"];
        assert_eq!(fields["reason"], "prefix_deny");
        assert_eq!(fields["src"], "192.0.2.166");
        assert_eq!(fields["dst"], "198.51.100.10");
        assert_eq!(fields["src_port"], 42000);
        assert_eq!(fields["dst_port"], 53);
        assert_eq!(fields["proto"], 17);
    }

    // promtool accepts the exposition (the text format; Prometheus itself negotiates
    // OpenMetrics, below).
    let path = t.dir.path.join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("promtool check metrics < {}", path.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes xlb; its query API returns the same numbers.
    let prom = Prometheus::start(&t.edge, &t.dir.path).unwrap();
    for (i, b) in backends.iter().enumerate() {
        let q = format!("xlb_backend_packets_total{{backend=\"{b}\"}}");
        let v = poll(&q, Duration::from_secs(60), || prom.query(&t.edge, &q));
        assert_eq!(v, f(per_backend[i]), "{q}");
    }
    let q = format!("xlb_service_new_flows_total{{service=\"{VIP}\"}}");
    assert_eq!(
        poll(&q, Duration::from_secs(30), || prom.query(&t.edge, &q)),
        f(FLOWS as u64)
    );
    let q = "sum(xlb_packets_total{reason=\"prefix_deny\"})";
    assert_eq!(
        poll(q, Duration::from_secs(30), || prom.query(&t.edge, q)),
        m1["xlb_packets_total{verdict=\"drop\",reason=\"prefix_deny\"}"]
    );
    let q = "up{job=\"xlb\"}";
    assert_eq!(
        poll(q, Duration::from_secs(30), || prom.query(&t.edge, q)),
        1.0
    );
    // Every query of the Grafana dashboard in the repository is valid PromQL.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    for p in dash["panels"].as_array().unwrap() {
        for target in p["targets"].as_array().into_iter().flatten() {
            let e = target["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$service", ".*")
                .replace("$__rate_interval", "1m");
            assert!(prom.valid(&t.edge, &e), "dashboard query refused: {e}");
            exprs += 1;
        }
    }
    assert!(exprs > 20);
    drop(prom);

    // xlb top, fixed size: two frames of exactly 30 lines of at most 100 columns.
    let out = xlb.cli(&[
        "top",
        "--iterations",
        "2",
        "--interval",
        "200ms",
        "--width",
        "100",
        "--height",
        "30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let top = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = top.lines().collect();
    assert_eq!(lines.len(), 60, "{top}");
    assert!(lines.iter().all(|l| l.chars().count() <= 100), "{top}");
    let frame = &lines[30..];
    assert!(frame[0].starts_with("xlb top"), "{top}");
    assert!(frame[0].contains("1 services"), "{top}");
    // One entry per flow: its forward entry (no reply entries, see above).
    assert!(frame[0].contains(&format!("flows {FLOWS}/")), "{top}");
    let row = |start: &str| {
        frame
            .iter()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line for {start}:\n{top}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // Service row: name, rate, bytes/s, flows/s, packets, mode.
    let s = row(VIP);
    assert_eq!(s[4], sent.to_string(), "{top}");
    assert_eq!(s[5], "nat");
    for (i, b) in backends.iter().enumerate() {
        let r = row(b);
        assert_eq!(r[4], per_backend[i].to_string(), "{top}");
        assert_eq!(r[5], "unchecked");
    }
    // The busier backend is listed first.
    let pos = |b: &str| frame.iter().position(|l| l.contains(b)).unwrap();
    if per_backend[0] != per_backend[1] {
        let busier = if per_backend[0] > per_backend[1] {
            0
        } else {
            1
        };
        assert!(pos(&backends[busier]) < pos(&backends[1 - busier]), "{top}");
    }
    let deny = row("prefix_deny");
    assert_eq!(deny[2], DENIED.to_string(), "{top}");
}

#[test]
fn kernel_debug_log_and_metrics_off() {
    let dir = TestDir::new("klog").unwrap();
    let client = Netns::new("client").unwrap();
    let edge = Netns::new("edge").unwrap();
    veth(
        &client,
        "c0",
        &["192.0.2.2/24"],
        &edge,
        "x0",
        &["192.0.2.1/24"],
    )
    .unwrap();
    let xlb = Daemon::start(
        &edge,
        "x0",
        &dir,
        &["--kernel-log", "debug", "--metrics", "off"],
    )
    .unwrap();
    assert!(xlb.cli(&["fw", "deny", "192.0.2.2/32"]).status.success());
    assert!(!client.ok(&["ping", "-c", "1", "-W", "1", "192.0.2.1"]));
    poll("the kernel's log records", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&xlb.log).unwrap();
        (log.contains("decision: stage=firewall reason=prefix_deny verdict=drop")
            && log.contains("packet: 192.0.2.2:0 -> 192.0.2.1:0 proto 1"))
        .then_some(())
    });
    // --metrics off: nothing listens.
    assert!(
        !edge.ok(&[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "http://127.0.0.1:9100/metrics"
        ]),
        "metrics must be off"
    );
}
