//! The https service's access log end to end: `xlb proxy` with a real client and real
//! backends in namespaces writes one JSON record per request, with everything the
//! request said and how it was served; a file rotated by size and by SIGUSR1 loses no
//! line; syslog gets RFC 5424 messages; an unwritable path is refused at the start.

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use xlb_tests::{
    netns::{in_ns, wait_until, xlb_bin},
    tls::{CLIENT4, EDGE4, HttpsNet, Pki, Proxy, backend_ip, get, http_backend, tls_connect},
};

const REQUESTS: usize = 60;

fn edge443() -> SocketAddr {
    format!("{EDGE4}:443").parse().unwrap()
}

/// The https configuration over two backends, with `access_log` as its table.
fn config(net: &HttpsNet, access_log: &str) -> PathBuf {
    let path = net.path("https.toml");
    std::fs::write(
        &path,
        format!(
            r#"
listen = ["{EDGE4}:443"]
default_cert = {{ chain = "a.pem", key = "a.key" }}
[[routes]]
pool = "web"
[[pools]]
name = "web"
backends = ["{}:8080", "{}:8080"]
[access_log]
{access_log}
"#,
            backend_ip(0),
            backend_ip(1)
        ),
    )
    .unwrap();
    path
}

/// Every record in the log files under `dir` named `access.log*`.
fn records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("access.log") && !name.starts_with("moved") {
            continue;
        }
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")));
        }
    }
    out
}

#[test]
fn every_request_is_logged_once_through_rotations() {
    let net = HttpsNet::new("alog", 2).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    pki.issue("a", &["a.example"]).unwrap();
    let _backends: Vec<_> = (0..2)
        .map(|i| {
            http_backend(
                &net.backends,
                &format!("{}:8080", backend_ip(i)),
                &format!("web{i}"),
            )
            .unwrap()
        })
        .collect();
    let logs = net.path("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cfg = config(
        &net,
        &format!(
            "to = \"file\"\npath = \"{}\"\nmax_size = \"4KiB\"\nkeep = 100\n",
            logs.join("access.log").display()
        ),
    );
    let proxy = Proxy::start(&net.edge, &cfg, &net.path("proxy.log"), &[edge443()]).unwrap();
    let ca = pki.ca.clone();
    let logs2 = logs.clone();
    let pid = proxy.pid();
    in_ns(&net.client, move || {
        let mut conn = tls_connect(edge443(), "a.example", Some(&ca)).unwrap();
        for i in 0..REQUESTS {
            let (code, _) = get(&mut conn, "a.example", &format!("/r/{i}")).unwrap();
            assert_eq!(code, 200);
            if i == REQUESTS / 2 {
                // An external rotation: the file moved away, then SIGUSR1.
                std::fs::rename(logs2.join("access.log"), logs2.join("moved.log")).unwrap();
                // SAFETY: signalling the proxy this test started.
                unsafe { libc::kill(pid, libc::SIGUSR1) };
            }
        }
    })
    .unwrap();
    wait_until("every record", Duration::from_secs(20), || {
        records(&logs).len() >= REQUESTS
    })
    .unwrap();
    let all = records(&logs);
    assert_eq!(all.len(), REQUESTS, "each request once");
    let mut paths: Vec<String> = all
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    let mut want: Vec<String> = (0..REQUESTS).map(|i| format!("/r/{i}")).collect();
    want.sort();
    assert_eq!(paths, want);
    let rotated = std::fs::read_dir(&logs).unwrap().count();
    assert!(rotated > 3, "rotated by size: {rotated} files");
    let r = &all[0];
    assert_eq!(r["client"], CLIENT4);
    assert!(r["client_port"].as_u64().unwrap() > 0);
    assert_eq!(r["tls_version"], "TLSv1.3");
    assert_eq!(r["sni"], "a.example");
    assert_eq!(
        (r["method"].as_str(), r["host"].as_str()),
        (Some("GET"), Some("a.example"))
    );
    assert_eq!(r["status"], 200);
    assert_eq!(r["pool"], "web");
    let upstream = r["upstream"].as_str().unwrap();
    assert!(upstream.starts_with("203.0.113."), "{upstream}");
    assert!(r["bytes_out"].as_u64().unwrap() > 0);
    assert!(r["duration_ms"].as_f64().unwrap() >= r["upstream_ms"].as_f64().unwrap());
    assert_eq!(r["retries"], 0);
    assert!(r["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn syslog_gets_rfc5424_and_bad_paths_are_refused() {
    let net = HttpsNet::new("aslog", 2).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    pki.issue("a", &["a.example"]).unwrap();
    let _backend = http_backend(&net.backends, &format!("{}:8080", backend_ip(0)), "web0").unwrap();
    let _backend2 =
        http_backend(&net.backends, &format!("{}:8080", backend_ip(1)), "web1").unwrap();
    // A syslog collector on the edge's loopback.
    let collector = in_ns(&net.edge, || UdpSocket::bind("127.0.0.1:5514").unwrap()).unwrap();
    collector
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = config(
        &net,
        "to = \"syslog\"\nsyslog = \"udp://127.0.0.1:5514\"\nfacility = \"local1\"\n",
    );
    let _proxy = Proxy::start(&net.edge, &cfg, &net.path("proxy.log"), &[edge443()]).unwrap();
    let ca = pki.ca.clone();
    in_ns(&net.client, move || {
        let mut conn = tls_connect(edge443(), "a.example", Some(&ca)).unwrap();
        assert_eq!(get(&mut conn, "a.example", "/syslog").unwrap().0, 200);
    })
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = collector.recv(&mut buf).expect("a syslog message");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // local1 (17) * 8 + informational (6) = 142.
    assert!(msg.starts_with("<142>1 "), "{msg}");
    let json = &msg[msg.find('{').unwrap()..];
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["path"], "/syslog");
    // A file in a directory that does not exist: refused by the check, with the path.
    let bad = config(
        &net,
        "to = \"file\"\npath = \"/nonexistent/xlb/access.log\"\n",
    );
    let out = Command::new(xlb_bin())
        .args(["proxy", "--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("does not exist or is not writable"), "{err}");
    let bad = config(&net, "to = \"file\"\n");
    let out = Command::new(xlb_bin())
        .args(["proxy", "--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a path"));
    // Only `xlb run` has an exporter: `xlb proxy` refuses a log that would go nowhere.
    let bad = config(&net, "to = \"otlp\"\n");
    let out = Command::new(xlb_bin())
        .args(["proxy", "--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("needs xlb run with an [export] table"),
        "{err}"
    );
}
