//! Log export over OTLP/HTTP end to end: `xlb run` with an `[export]` table sends its
//! own log lines, sampled drop events and the https service's access records to a
//! collector (a small OTLP/HTTP receiver here, decoding what arrives with the
//! protocol's published types); a collector that is down costs dropped, counted
//! records and nothing else; `[export]` changes only at a restart.

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use xlb_tests::{
    netns::{Daemon, in_ns, wait_until},
    otlp::{COLLECTOR, Collector},
    tls::{EDGE4, HttpsNet, Pki, backend_ip, get, http_backend, tls_connect},
};

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// `xlb run`'s file: x0, an https service over two backends whose access log goes
/// only to the exporter, and `export`.
fn config(net: &HttpsNet, export: &str) -> PathBuf {
    let path = net.path("xlb.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[interface]]
name = "x0"

[tls]
listen = ["{EDGE4}:443"]
default_cert = {{ chain = "a.pem", key = "a.key" }}
[[tls.routes]]
pool = "web"
[[tls.pools]]
name = "web"
backends = ["{}:8080", "{}:8080"]
[tls.access_log]
to = "otlp"

[export]
{export}
"#,
            backend_ip(0),
            backend_ip(1)
        ),
    )
    .unwrap();
    path
}

fn metrics(net: &HttpsNet) -> String {
    net.edge
        .run(&[
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:9100/metrics",
        ])
        .unwrap()
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn daemon_lines_drop_events_and_access_records_reach_the_collector() {
    let net = HttpsNet::new("export", 2).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    pki.issue("a", &["a.example"]).unwrap();
    let _backends: Vec<_> = (0..2)
        .map(|i| {
            let addr = format!("{}:8080", backend_ip(i));
            http_backend(&net.backends, &addr, &format!("web{i}")).unwrap()
        })
        .collect();
    let collector = Collector::start(&net.edge);
    let file = config(
        &net,
        &format!("otlp = \"http://{COLLECTOR}/v1/logs\"\ninterval = \"50ms\"\n"),
    );
    let xlb = Daemon::start_with(
        &net.edge,
        &net.dir,
        &["--config", &p(&file), "--drop-sample", "1"],
    )
    .unwrap();

    // The daemon's own lines.
    wait_until("the start's log line", Duration::from_secs(20), || {
        collector
            .of("daemon")
            .iter()
            .any(|g| g.body == "xlb attached and ready")
    })
    .unwrap();
    let ready = collector.of("daemon");
    let ready = ready
        .iter()
        .find(|g| g.body == "xlb attached and ready")
        .unwrap();
    assert_eq!(ready.severity, "INFO");
    assert_eq!(ready.resource["service.name"], "xlb");
    assert!(ready.attributes["interfaces"].contains("x0"), "{ready:?}");

    // Access records: one per request, with what it asked and how it was served.
    const REQUESTS: usize = 5;
    let ca = pki.ca.clone();
    in_ns(&net.client, move || {
        let edge: SocketAddr = format!("{EDGE4}:443").parse().unwrap();
        let mut conn = tls_connect(edge, "a.example", Some(&ca)).unwrap();
        for i in 0..REQUESTS {
            let (code, _) = get(&mut conn, "a.example", &format!("/x/{i}")).unwrap();
            assert_eq!(code, 200);
        }
    })
    .unwrap();
    wait_until("the access records", Duration::from_secs(20), || {
        collector.of("access").len() >= REQUESTS
    })
    .unwrap();
    let access = collector.of("access");
    assert_eq!(access.len(), REQUESTS, "each request once");
    let mut paths: Vec<&str> = access
        .iter()
        .map(|g| g.attributes["url.path"].as_str())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/x/0", "/x/1", "/x/2", "/x/3", "/x/4"]);
    for g in &access {
        assert_eq!(g.attributes["http.response.status_code"], "200");
        assert_eq!(g.attributes["client.address"], "192.0.2.2");
        let record: serde_json::Value = serde_json::from_str(&g.body).unwrap();
        assert_eq!(record["sni"], "a.example", "the body is the whole record");
    }

    // Drop events: a deny rule and a few datagrams it drops, each sampled.
    xlb.ok(&["fw", "deny", "192.0.2.2/32"]);
    const DENIED: usize = 4;
    in_ns(&net.client, || {
        let s = UdpSocket::bind("192.0.2.2:42000").unwrap();
        for _ in 0..DENIED {
            s.send_to(b"x", (EDGE4, 5353)).unwrap();
        }
    })
    .unwrap();
    wait_until("the drop events", Duration::from_secs(20), || {
        collector.of("drops").len() >= DENIED
    })
    .unwrap();
    let drops = collector.of("drops");
    assert!(
        drops.iter().all(|g| g.attributes["src"] == "192.0.2.2"
            && g.attributes["dst_port"] == "5353"
            && g.body == "dropped packet"),
        "{drops:?}"
    );
    let m = metrics(&net);
    for s in ["daemon", "access", "drops"] {
        let n = sample(&m, &format!("xlb_export_records_total{{stream=\"{s}\"}}"));
        assert!(n >= 1.0, "{s}: {n}\n{m}");
    }
    assert!(!m.contains("xlb_export_dropped_total{"), "{m}");
}

#[test]
fn a_collector_that_is_down_costs_counted_records_and_nothing_else() {
    let net = HttpsNet::new("exportdown", 2).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    pki.issue("a", &["a.example"]).unwrap();
    // Nothing listens on the endpoint: every connection is refused.
    let file = config(
        &net,
        &format!(
            "otlp = \"http://{COLLECTOR}/v1/logs\"\ninterval = \"20ms\"\ntries = 2\ntimeout = \"1s\"\n"
        ),
    );
    let xlb = Daemon::start_with(&net.edge, &net.dir, &["--config", &p(&file)]).unwrap();
    let dropped = r#"xlb_export_dropped_total{stream="daemon",reason="collector"}"#;
    wait_until("dropped records counted", Duration::from_secs(20), || {
        sample(&metrics(&net), dropped) >= 1.0
    })
    .unwrap();
    let log = std::fs::read_to_string(&xlb.log).unwrap();
    assert_eq!(
        log.matches("log export failed").count(),
        1,
        "said once while it keeps failing: {log}"
    );
    // The daemon serves as before.
    xlb.ok(&["fw", "deny", "192.0.2.99/32"]);
    assert!(xlb.ok(&["fw", "list"]).contains("192.0.2.99/32"));

    // [export] changes only at a restart; the running state is kept.
    config(&net, "otlp = \"http://127.0.0.1:4319/v1/logs\"\n");
    let out = xlb.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[export] changes only at a restart"), "{err}");
    assert!(xlb.ok(&["fw", "list"]).contains("192.0.2.99/32"));
}
