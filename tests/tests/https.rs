//! The https service end to end, in namespaces: `xlb proxy` ends TLS for a client
//! (curl, rustls) and proxies HTTP to backends that answer with their names.
//! Certificates come from private CAs made at test time (rcgen).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::{Daemon, in_ns, wait_until, xlb_bin},
    tls::{
        CLIENT4, EDGE4, EDGE6, HttpsNet, Pki, Proxy, TlsStream, backend_ip, checked_http_backend,
        curl, get, http_backend, https_backend, served_cert, tls_connect,
    },
};

fn edge443() -> SocketAddr {
    format!("{EDGE4}:443").parse().unwrap()
}

fn write(path: PathBuf, text: &str) -> PathBuf {
    std::fs::write(&path, text).unwrap();
    path
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn sni_certificates_routes_h2_and_http1_forwarding_headers_redirect_hsts() {
    let net = HttpsNet::new("sni", 4).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    let def = pki.issue("default", &["default.example"]).unwrap();
    let a = pki.issue("a", &["a.example"]).unwrap();
    let b = pki.issue("b", &["b.example", "*.w.example"]).unwrap();
    let _servers: Vec<_> = (0..4)
        .map(|i| {
            http_backend(
                &net.backends,
                &format!("{}:8080", backend_ip(i)),
                &format!("web{}", i + 1),
            )
            .unwrap()
        })
        .collect();
    let cfg = write(
        net.path("https.toml"),
        &format!(
            r#"
listen = ["{EDGE4}:443", "[{EDGE6}]:443"]
redirect_listen = ["{EDGE4}:80"]
hsts = {{ max_age = 600 }}
default_cert = {{ chain = "default.pem", key = "default.key" }}

[[certs]]
names = ["a.example"]
chain = "a.pem"
key = "a.key"

[[certs]]
names = ["b.example", "*.w.example"]
chain = "b.pem"
key = "b.key"

[[routes]]
host = "a.example"
pool = "a"

[[routes]]
host = "b.example"
path = "/api"
pool = "api"

[[routes]]
pool = "rest"

[[pools]]
name = "a"
backends = ["{b1}:8080", "{b2}:8080"]

[[pools]]
name = "api"
backends = ["{b3}:8080"]

[[pools]]
name = "rest"
backends = ["{b4}:8080"]
"#,
            b1 = backend_ip(0),
            b2 = backend_ip(1),
            b3 = backend_ip(2),
            b4 = backend_ip(3),
        ),
    );
    let _proxy = Proxy::start(
        &net.edge,
        &cfg,
        &net.path("proxy.log"),
        &[
            edge443(),
            format!("[{EDGE6}]:443").parse().unwrap(),
            format!("{EDGE4}:80").parse().unwrap(),
        ],
    )
    .unwrap();

    // The certificate per SNI name: exact, wildcard, and the default for the rest.
    for (sni, want) in [
        ("a.example", &a),
        ("b.example", &b),
        ("x.w.example", &b),
        ("other.example", &def),
    ] {
        assert_eq!(
            served_cert(&net.client, edge443(), sni).unwrap(),
            want.der,
            "certificate for {sni}"
        );
    }

    // curl verifies each against the CA and the name, over h2 and HTTP/1.1, IPv4 and
    // IPv6; host and path routes reach their pools.
    let c = |name: &str, addr: &str, path: &str, h2: bool| {
        curl(&net.client, &pki.ca, name, addr, path, h2, &[]).unwrap()
    };
    let v6 = format!("[{EDGE6}]");
    for (h2, version) in [(true, "2"), (false, "1.1")] {
        for addr in [EDGE4, v6.as_str()] {
            let (code, body, v) = c("a.example", addr, "/", h2);
            assert_eq!((code, v.as_str()), (200, version), "a.example via {addr}");
            assert!(body == "web1" || body == "web2", "{body}");
            assert_eq!(c("b.example", addr, "/api/v1", h2).1, "web3");
            assert_eq!(c("b.example", addr, "/apis", h2).1, "web4");
            assert_eq!(c("x.w.example", addr, "/api", h2).1, "web4");
        }
    }
    let seen: BTreeSet<String> = (0..12)
        .map(|_| c("a.example", EDGE4, "/", true).1)
        .collect();
    assert_eq!(seen, BTreeSet::from(["web1".into(), "web2".into()]));

    // Forwarding headers; Host kept; HSTS on the response.
    for h2 in [true, false] {
        let (code, body, _) = curl(
            &net.client,
            &pki.ca,
            "b.example",
            EDGE4,
            "/echo?q=1",
            h2,
            &["-D", "-", "-H", "X-Forwarded-For: 198.51.100.7"],
        )
        .unwrap();
        assert_eq!(code, 200);
        let body = body.to_ascii_lowercase();
        for want in [
            "strict-transport-security: max-age=600",
            "get /echo?q=1 http/1.1",
            "host: b.example",
            &format!("x-forwarded-for: 198.51.100.7, {CLIENT4}"),
            "x-forwarded-proto: https",
            &format!("forwarded: for={CLIENT4};proto=https;host=\"b.example\""),
        ] {
            assert!(body.contains(want), "h2={h2}: {want:?} missing in {body}");
        }
    }

    // The plain-HTTP listener redirects to https.
    let out = net
        .client
        .run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: a.example",
            &format!("http://{EDGE4}/x?y=1"),
        ])
        .unwrap();
    assert_eq!(out, "308 https://a.example/x?y=1");
}

#[test]
fn reencryption_verifies_backends_and_never_falls_back_to_plaintext() {
    let net = HttpsNet::new("reenc", 2).unwrap();
    let pki = Pki::new(&net.dir.path, "front").unwrap();
    pki.issue(
        "front",
        &["secure.example", "rogue.example", "nocert.example"],
    )
    .unwrap();
    let inner = Pki::new(&net.dir.path, "inner").unwrap();
    let rogue_ca = Pki::new(&net.dir.path, "rogue").unwrap();
    let good = inner.issue("backend", &["web.internal"]).unwrap();
    inner
        .issue("proxy-client", &["xlb-proxy.internal"])
        .unwrap();
    let bad = rogue_ca.issue("rogue-backend", &["web.internal"]).unwrap();
    let (served_good, served_bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The good backend also wants a client certificate from the inner CA (mTLS).
    let _good = https_backend(
        &net.backends,
        &format!("{}:8443", backend_ip(0)),
        "tls1",
        good.server_config(Some(&inner.ca)).unwrap(),
        served_good.clone(),
    )
    .unwrap();
    let _bad = https_backend(
        &net.backends,
        &format!("{}:8443", backend_ip(1)),
        "rogue",
        bad.server_config(None).unwrap(),
        served_bad.clone(),
    )
    .unwrap();
    let pool = |name: &str, backend: usize, client_cert: bool| {
        format!(
            r#"
[[pools]]
name = "{name}"
backends = ["{}:8443"]
upstream_tls = true
ca = "inner-ca.pem"
server_name = "web.internal"
{}
"#,
            backend_ip(backend),
            if client_cert {
                "client_cert = { chain = \"proxy-client.pem\", key = \"proxy-client.key\" }"
            } else {
                ""
            }
        )
    };
    let cfg = write(
        net.path("https.toml"),
        &format!(
            r#"
listen = ["{EDGE4}:443"]
default_cert = {{ chain = "front.pem", key = "front.key" }}
[[routes]]
host = "secure.example"
pool = "secure"
[[routes]]
host = "rogue.example"
pool = "rogue"
[[routes]]
host = "nocert.example"
pool = "nocert"
{}{}{}"#,
            pool("secure", 0, true),
            pool("rogue", 1, true),
            pool("nocert", 0, false)
        ),
    );
    let proxy = Proxy::start(&net.edge, &cfg, &net.path("proxy.log"), &[edge443()]).unwrap();
    let c = |name: &str| curl(&net.client, &pki.ca, name, EDGE4, "/", true, &[]).unwrap();

    let (code, body, _) = c("secure.example");
    assert_eq!((code, body.as_str()), (200, "tls1"));
    assert_eq!(served_good.load(Ordering::Relaxed), 1);
    // The backend speaks only TLS: plaintext HTTP to it gets no answer.
    assert!(
        !net.edge.ok(&[
            "curl",
            "-sS",
            "--max-time",
            "3",
            &format!("http://{}:8443/", backend_ip(0))
        ]),
        "the TLS backend must refuse plaintext"
    );
    assert_eq!(served_good.load(Ordering::Relaxed), 1);

    // A backend whose certificate does not chain to the configured CA is refused:
    // 502, counted and logged, and nothing reached it in plaintext; the failure also
    // takes the backend out for a while (then 503: no healthy backend).
    let (code, body, _) = c("rogue.example");
    assert_eq!(code, 502, "{body}");
    let (code, body, _) = c("rogue.example");
    assert!(code == 502 || code == 503, "{code} {body}");
    assert_eq!(served_bad.load(Ordering::Relaxed), 0);
    proxy.wait_log("upstream TLS handshake failed", 1).unwrap();
    assert!(
        proxy.log_text().contains("UnknownIssuer"),
        "{}",
        proxy.log_text()
    );
    // Without the client certificate the mTLS backend refuses the proxy (502; 503 once
    // an earlier refusal, or a check, has taken it out: either way nothing is served).
    let (code, body, _) = c("nocert.example");
    assert!(code == 502 || code == 503, "{code} {body}");
    assert_eq!(served_good.load(Ordering::Relaxed), 1);
    // And the good path still works.
    assert_eq!(c("secure.example").1, "tls1");
}

#[test]
fn a_backend_down_sends_requests_to_the_others_then_503() {
    let net = HttpsNet::new("down", 3).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    pki.issue("a", &["a.example"]).unwrap();
    let mut servers: Vec<_> = (0..3)
        .map(|i| {
            Some(
                http_backend(
                    &net.backends,
                    &format!("{}:8080", backend_ip(i)),
                    &format!("web{}", i + 1),
                )
                .unwrap(),
            )
        })
        .collect();
    let cfg = write(
        net.path("https.toml"),
        &format!(
            r#"
listen = ["{EDGE4}:443"]
default_cert = {{ chain = "a.pem", key = "a.key" }}
[[routes]]
pool = "web"
[[pools]]
name = "web"
backends = ["{}:8080", "{}:8080", "{}:8080"]
fail_timeout = "600s"
"#,
            backend_ip(0),
            backend_ip(1),
            backend_ip(2)
        ),
    );
    let _proxy = Proxy::start(&net.edge, &cfg, &net.path("proxy.log"), &[edge443()]).unwrap();
    let ca = pki.ca.clone();
    let mut conn = in_ns(&net.client, move || {
        tls_connect(edge443(), "a.example", Some(&ca))
    })
    .unwrap()
    .unwrap();
    let mut round = |n: usize| -> (BTreeSet<u16>, BTreeSet<String>) {
        let mut codes = BTreeSet::new();
        let mut names = BTreeSet::new();
        for _ in 0..n {
            let (code, body) = get(&mut conn, "a.example", "/").unwrap();
            codes.insert(code);
            if code == 200 {
                names.insert(body);
            }
        }
        (codes, names)
    };
    let all: BTreeSet<String> = ["web1", "web2", "web3"].map(String::from).into();
    assert_eq!(round(30), (BTreeSet::from([200]), all));

    servers[1] = None; // web2 stops: its connections are refused
    let (codes, names) = round(30);
    assert_eq!(codes, BTreeSet::from([200]), "every request answered");
    assert_eq!(names, ["web1", "web3"].map(String::from).into());

    servers.clear(); // all gone: 502 while they fail, then 503 (none healthy)
    let (codes, _) = round(5);
    assert!(codes.contains(&503), "{codes:?}");
    assert!(codes.iter().all(|c| [502, 503].contains(c)), "{codes:?}");
}

/// The https service of `xlb run` (TOML tables under `tls.`, `tls`) or of `xlb proxy`
/// (``): one pool over web1 and web2 checked on `/health` every 200 ms, fall 2, rise 2;
/// passive detection practically off (max_fails 1000), so only the check can take a
/// backend out.
fn checked_pool(tls: &str) -> String {
    format!(
        r#"
listen = ["{EDGE4}:443"]
default_cert = {{ chain = "a.pem", key = "a.key" }}
[[TLSroutes]]
pool = "web"
[[TLSpools]]
name = "web"
backends = ["{}:8080", "{}:8080"]
max_fails = 1000
[TLSpools.health]
kind = "http"
path = "/health"
interval = "200ms"
rise = 2
fall = 2
"#,
        backend_ip(0),
        backend_ip(1)
    )
    .replace("TLS", tls)
}

/// `n` requests on one kept-alive connection, every one answered 200 (none fails): how
/// many each backend answered.
fn requests(conn: &mut TlsStream, n: usize) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for i in 0..n {
        let (code, body) = get(conn, "a.example", "/").unwrap();
        assert_eq!(code, 200, "request {i} of {n}: {body}");
        *names.entry(body).or_default() += 1;
    }
    names
}

#[test]
fn pool_backends_follow_the_active_health_check_in_status_metrics_and_picking() {
    let net = HttpsNet::new("poolhc", 2).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    pki.issue("a", &["a.example"]).unwrap();
    let healthy: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::new(AtomicBool::new(true))).collect();
    let _servers: Vec<_> = (0..2)
        .map(|i| {
            checked_http_backend(
                &net.backends,
                &format!("{}:8080", backend_ip(i)),
                &format!("web{}", i + 1),
                healthy[i].clone(),
            )
            .unwrap()
        })
        .collect();
    let file = write(
        net.path("xlb.toml"),
        &format!(
            "[[interface]]\nname = \"x0\"\n\n[tls]{}\n",
            checked_pool("tls.")
        ),
    );
    let xlb = Daemon::start_with(&net.edge, &net.dir, &["--config", &p(&file)]).unwrap();
    let web2 = format!("{}:8080", backend_ip(1));
    // web2's entry in `xlb status --json`.
    let status = || {
        let v = xlb.json(&["status", "--json"]);
        let pool = v["https"]["pools"][0].clone();
        assert_eq!(pool["pool"], "web");
        pool["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == web2.as_str())
            .cloned()
            .unwrap()
    };
    let metrics = || {
        net.edge
            .run(&["curl", "-sf", "http://127.0.0.1:9100/metrics"])
            .unwrap()
    };
    let series = |what: &str| format!("{what}{{service=\"https\",pool=\"web\",backend=\"{web2}\"");
    wait_until("web2's first good check", Duration::from_secs(30), || {
        status()["health"]["last_ok"] == true
    })
    .unwrap();
    let check = &xlb.json(&["status", "--json"])["https"]["pools"][0]["health_check"];
    assert_eq!(
        (check["kind"].as_str(), check["interval_ms"].as_u64()),
        (Some("http"), Some(200))
    );
    // A kept-alive connection from the client.
    let connect = || {
        let ca = pki.ca.clone();
        in_ns(&net.client, move || {
            tls_connect(edge443(), "a.example", Some(&ca))
        })
        .unwrap()
        .unwrap()
    };
    let mut conn = connect();
    let names = requests(&mut conn, 20);
    assert_eq!(names.len(), 2, "both backends take requests: {names:?}");

    // Waits until web2's check says `state`, then finds that in the metrics too, with
    // `n` transitions into it.
    let web2_becomes = |state: &str, n: usize| {
        wait_until(&format!("web2 {state}"), Duration::from_secs(30), || {
            status()["state"] == state
        })
        .unwrap();
        let m = metrics();
        for line in [
            format!(
                "{},state=\"{state}\"}} 1",
                series("xlb_backend_health_state")
            ),
            format!(
                "{},to=\"{state}\"}} {n}",
                series("xlb_backend_health_transitions_total")
            ),
            series("xlb_backend_health_check_latency_seconds"),
        ] {
            assert!(m.contains(&line), "{line} in:\n{m}");
        }
    };

    // web2's health path fails while it keeps serving: the check takes it out.
    healthy[1].store(false, Ordering::Relaxed);
    web2_becomes("down", 1);
    let s = status();
    assert_eq!(s["takes_requests"], false);
    assert_eq!(s["health"]["last"], "HTTP 500, expected 200");
    let out = xlb.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains(&web2)
            && l.contains("down")
            && l.ends_with("(no requests) last check: HTTP 500, expected 200")),
        "{text}"
    );
    let names = requests(&mut conn, 40);
    assert_eq!(
        names.keys().collect::<Vec<_>>(),
        ["web1"],
        "every request goes to web1: {names:?}"
    );

    // Healthy again: back up after rise good checks (the first check counted one
    // transition to up), and taking requests.
    healthy[1].store(true, Ordering::Relaxed);
    web2_becomes("up", 2);
    assert_eq!(status()["takes_requests"], true);
    let names = requests(&mut conn, 20);
    assert_eq!(names.len(), 2, "web2 takes requests again: {names:?}");

    // A reload that removes the check: web2 is unchecked, even while its health path
    // fails, and the metrics say so.
    healthy[1].store(false, Ordering::Relaxed);
    web2_becomes("down", 2);
    let unchecked = std::fs::read_to_string(&file)
        .unwrap()
        .split("[tls.pools.health]")
        .next()
        .unwrap()
        .to_string();
    write(file.clone(), &unchecked);
    assert_eq!(xlb.json(&["reload", "--json"])["https"], "reloaded");
    let s = status();
    assert_eq!(
        (s["state"].as_str(), s["takes_requests"].as_bool()),
        (Some("unchecked"), Some(true))
    );
    assert!(metrics().contains(&format!(
        "{},state=\"unchecked\"}} 1",
        series("xlb_backend_health_state")
    )));
    let names = requests(&mut conn, 20);
    assert_eq!(names.len(), 2, "{names:?}");
    drop(conn);
    drop(xlb);

    // `xlb proxy` runs the same checks.
    let cfg = write(net.path("https.toml"), &checked_pool(""));
    let proxy = Proxy::start(&net.edge, &cfg, &net.path("proxy.log"), &[edge443()]).unwrap();
    proxy.wait_log("pool backend down", 1).unwrap();
    let names = requests(&mut connect(), 20);
    assert_eq!(names.keys().collect::<Vec<_>>(), ["web1"], "{names:?}");
}

fn check(cfg: &Path) -> (bool, String) {
    let out = Command::new(xlb_bin())
        .args(["proxy", "--check", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_configuration_is_refused_and_the_old_state_kept() {
    let net = HttpsNet::new("badcfg", 2).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    let first = pki.issue("a", &["a.example"]).unwrap();
    let other = pki.issue("other", &["a.example"]).unwrap();
    let expired = pki
        .issue_valid("expired", &["a.example"], Some((2001, 2002)))
        .unwrap();
    let _web1 = http_backend(&net.backends, &format!("{}:8080", backend_ip(0)), "web1").unwrap();
    let _web2 = http_backend(&net.backends, &format!("{}:8080", backend_ip(1)), "web2").unwrap();
    let config = |chain: &str, key: &str, backend: usize| {
        format!(
            r#"
listen = ["{EDGE4}:443"]
cert_check_interval = "100ms"
default_cert = {{ chain = "{chain}", key = "{key}" }}
[[routes]]
pool = "web"
[[pools]]
name = "web"
backends = ["{}:8080"]
"#,
            backend_ip(backend)
        )
    };

    // At start: a clear error, nothing runs.
    for (chain, key, why) in [
        ("missing.pem", "a.key", "No such file"),
        ("a.pem", "other.key", "does not match"),
        ("expired.pem", "expired.key", "expired on"),
    ] {
        let bad = write(net.path("bad.toml"), &config(chain, key, 0));
        let (ok, err) = check(&bad);
        assert!(!ok && err.contains(why), "{chain}/{key}: {err}");
        let out = net
            .edge
            .cmd(&[xlb_bin().to_str().unwrap(), "proxy", "--config", &p(&bad)])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(why));
    }
    let (ok, err) = check(&write(
        net.path("typo.toml"),
        &config("a.pem", "a.key", 0).replace("backends", "backend"),
    ));
    assert!(!ok && err.contains("unknown field"), "{err}");

    let cfg = write(net.path("https.toml"), &config("a.pem", "a.key", 0));
    assert!(check(&cfg).0);
    let proxy = Proxy::start(&net.edge, &cfg, &net.path("proxy.log"), &[edge443()]).unwrap();
    let served = || served_cert(&net.client, edge443(), "a.example").unwrap();
    assert_eq!(served(), first.der);
    let ca = pki.ca.clone();
    let mut open = in_ns(&net.client, move || {
        tls_connect(edge443(), "a.example", Some(&ca))
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        get(&mut open, "a.example", "/").unwrap(),
        (200, "web1".into())
    );

    // Bad files replacing the good ones on disk: refused, the loaded ones stay.
    let (chain, key) = (net.path("a.pem"), net.path("a.key"));
    let refusals = |p: &Proxy| p.log_text().matches("certificates not reloaded").count();
    let mut n = refusals(&proxy);
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let steps: [Step; 3] = [
        (
            "expired on",
            Box::new(|| expired.write_to(&chain, &key).unwrap()),
        ),
        (
            "does not match",
            Box::new(|| xlb_tests::tls::write_atomic(&chain, other.cert_pem.as_bytes()).unwrap()),
        ),
        (
            "No such file",
            Box::new(|| std::fs::remove_file(&key).unwrap()),
        ),
    ];
    for (why, step) in steps {
        step();
        proxy.wait_log("certificates not reloaded", n + 1).unwrap();
        n = refusals(&proxy);
        assert!(
            proxy.log_text().contains(why),
            "{why}: {}",
            proxy.log_text()
        );
        assert_eq!(
            served(),
            first.der,
            "after a bad change ({why}) the old certificate stays"
        );
    }

    // A good pair replaces it; the connection opened before goes on.
    other.write_to(&chain, &key).unwrap();
    proxy.wait_log("certificates reloaded", 1).unwrap();
    assert_eq!(served(), other.der);
    assert_eq!(
        get(&mut open, "a.example", "/").unwrap(),
        (200, "web1".into())
    );

    // SIGHUP with a bad file: refused whole; with a good one (new pool): applied.
    write(net.path("https.toml"), &config("missing.pem", "a.key", 1));
    proxy.hup();
    proxy.wait_log("https configuration refused", 1).unwrap();
    write(
        net.path("https.toml"),
        &config("a.pem", "a.key", 1).replace("[[routes]]", "[[routs]]"),
    );
    proxy.hup();
    proxy.wait_log("https configuration refused", 2).unwrap();
    assert_eq!(
        get(&mut open, "a.example", "/").unwrap(),
        (200, "web1".into())
    );
    assert_eq!(served(), other.der);
    first
        .write_to(&net.path("new.pem"), &net.path("new.key"))
        .unwrap();
    write(net.path("https.toml"), &config("new.pem", "new.key", 1));
    proxy.hup();
    proxy.wait_log("https configuration reloaded", 1).unwrap();
    assert_eq!(served(), first.der);
    assert_eq!(
        get(&mut open, "a.example", "/").unwrap(),
        (200, "web2".into())
    );
}

#[test]
fn slow_clients_are_cut_and_oversized_requests_refused() {
    let net = HttpsNet::new("slow", 1).unwrap();
    let pki = Pki::new(&net.dir.path, "main").unwrap();
    pki.issue("a", &["a.example"]).unwrap();
    let _web1 = http_backend(&net.backends, &format!("{}:8080", backend_ip(0)), "web1").unwrap();
    let cfg = write(
        net.path("https.toml"),
        &format!(
            r#"
listen = ["{EDGE4}:443"]
default_cert = {{ chain = "a.pem", key = "a.key" }}
[[routes]]
pool = "web"
[[pools]]
name = "web"
backends = ["{}:8080"]
[limits]
header_read_timeout = "1s"
max_header_bytes = 4096
max_body_bytes = 1000
"#,
            backend_ip(0)
        ),
    );
    let _proxy = Proxy::start(&net.edge, &cfg, &net.path("proxy.log"), &[edge443()]).unwrap();

    // Headers never finished (slowloris): the server closes the connection. The bound
    // is generous; the limit is 1 s.
    let ca = pki.ca.clone();
    let cut = in_ns(&net.client, move || -> anyhow::Result<Duration> {
        use std::io::{Read, Write};
        let mut s = tls_connect(edge443(), "a.example", Some(&ca))?;
        s.sock.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Slow: 1\r\n")?;
        s.flush()?;
        let t = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(t.elapsed()),
                Ok(_) => continue, // a 408 or similar before the close is fine
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    anyhow::bail!("the server kept the slow connection open for 60 s")
                }
                Err(_) => return Ok(t.elapsed()), // reset or unclean close: cut too
            }
        }
    })
    .unwrap()
    .unwrap();
    assert!(cut < Duration::from_secs(30), "cut after {cut:?}");

    // A TCP connection that never starts TLS is cut as well.
    let cut = in_ns(&net.client, move || {
        use std::io::Read;
        let mut s = TcpStream::connect(edge443()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    })
    .unwrap();
    assert!(cut);

    // Too large: a declared body, a streamed (chunked) body, a header block.
    let body = net.path("big.bin");
    std::fs::write(&body, vec![b'x'; 5000]).unwrap();
    let data = format!("@{}", p(&body));
    for (h2, extra) in [
        (false, vec!["--data-binary", data.as_str()]),
        (
            false,
            vec![
                "--data-binary",
                data.as_str(),
                "-H",
                "Transfer-Encoding: chunked",
            ],
        ),
    ] {
        let (code, _, _) = curl(&net.client, &pki.ca, "a.example", EDGE4, "/", h2, &extra).unwrap();
        assert_eq!(code, 413, "h2={h2} {extra:?}");
    }
    let big = format!("X-Big: {}", "y".repeat(6000));
    let (code, _, _) = curl(
        &net.client,
        &pki.ca,
        "a.example",
        EDGE4,
        "/",
        false,
        &["-H", &big],
    )
    .unwrap();
    assert_eq!(code, 431);
    let (code, body, _) = curl(&net.client, &pki.ca, "a.example", EDGE4, "/", true, &[]).unwrap();
    assert_eq!((code, body.as_str()), (200, "web1"));
}
