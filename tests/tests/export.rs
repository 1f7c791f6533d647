//! Log export over OTLP/HTTP end to end: `xlb run` with an `[export]` table sends its
//! own log lines, sampled drop events and the https service's access records to a
//! collector (a small OTLP/HTTP receiver here, decoding what arrives with the
//! protocol's published types); a collector that is down costs dropped, counted
//! records and nothing else; `[export]` changes only at a restart.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
};
use prost::Message;
use xlb_tests::{
    netns::{Daemon, NsServer, in_ns, wait_until},
    tls::{EDGE4, HttpsNet, Pki, backend_ip, get, http_backend, tls_connect},
};

/// Where the collector listens, inside the edge namespace.
const COLLECTOR: &str = "127.0.0.1:4318";

/// One record as the collector received it.
#[derive(Clone, Debug)]
struct Got {
    stream: String,
    severity: String,
    body: String,
    attributes: BTreeMap<String, String>,
    /// The resource's attributes (`service.name`, `host.name`).
    resource: BTreeMap<String, String>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

/// Reads one HTTP/1.1 request: its request line and body.
fn read_request(s: &mut TcpStream) -> Result<(String, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "the connection closed inside the head");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no Content-Length")?;
    while got.len() < head_end + len {
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "the connection closed inside the body");
        got.extend_from_slice(&buf[..n]);
    }
    let line = head.lines().next().unwrap_or_default().to_string();
    Ok((line, got[head_end..head_end + len].to_vec()))
}

/// An OTLP/HTTP logs receiver: every record of every request it accepted.
struct Collector {
    got: Arc<Mutex<Vec<Got>>>,
    _server: NsServer,
}

impl Collector {
    fn start(net: &HttpsNet) -> Collector {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let bind = || -> Result<TcpListener> {
            let l = TcpListener::bind(COLLECTOR)?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let server = NsServer::start(&net.edge, bind, move |l: &TcpListener| {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                return;
            };
            let _ = s.set_nonblocking(false);
            let Ok((line, body)) = read_request(&mut s) else {
                return;
            };
            let status = match ExportLogsServiceRequest::decode(&body[..]) {
                Ok(req) if line.contains("POST /v1/logs ") => {
                    let mut out = sink.lock().unwrap();
                    for rl in &req.resource_logs {
                        let resource = map(&rl.resource.as_ref().unwrap().attributes);
                        for sl in &rl.scope_logs {
                            for r in &sl.log_records {
                                let attributes = map(&r.attributes);
                                out.push(Got {
                                    stream: attributes["xlb.stream"].clone(),
                                    severity: r.severity_text.clone(),
                                    body: text(&r.body),
                                    attributes,
                                    resource: resource.clone(),
                                });
                            }
                        }
                    }
                    "200 OK"
                }
                _ => "400 Bad Request",
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        })
        .unwrap();
        Collector {
            got,
            _server: server,
        }
    }

    fn of(&self, stream: &str) -> Vec<Got> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|g| g.stream == stream).cloned().collect()
    }
}

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
    let collector = Collector::start(&net);
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
