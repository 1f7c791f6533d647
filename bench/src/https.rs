//! The https service's benchmark, beside nginx configured the same way: one ECDSA
//! P-256 certificate, the same two backends, the same CPU (both pinned with taskset to
//! one CPU, which the backends share; the load generators run on the other), in a
//! private network namespace over its loopback.
//!
//! - new TLS handshakes per second, no resumption: a Rust client (rustls, X25519, TLS
//!   1.3, certificate not verified so the client is cheap) opens, completes a handshake
//!   and closes, from many concurrent tasks;
//! - requests per second over keep-alive connections, HTTP/1.1 and h2 (h2load), and
//!   their p99 latency (from h2load's per-request log);
//! - testssl.sh against xlb's listener: findings of severity MEDIUM or higher.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use xlb_tests::{
    netns::{Netns, TestDir, enter, in_ns},
    tls::{Pki, date_in},
};

pub struct Options {
    pub quick: bool,
    pub testssl: bool,
}

const XLB_PORT: u16 = 8443;
const NGINX_PORT: u16 = 9443;
const BACKENDS: [u16; 2] = [18081, 18082];

fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("target dir").join("xlb")
}

fn pin_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPU seconds used so far by a process and its children (nginx's workers).
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = |pid: u32| crate::machine::process_cpu_ticks(pid).unwrap_or(0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let total: u64 = ticks(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(ticks)
            .sum::<u64>();
    total as f64 / crate::machine::ticks_per_sec() as f64
}

/// A server process (xlb proxy or nginx) pinned to a CPU, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(
        name: &'static str,
        ns: &Netns,
        cpu: usize,
        args: &[&str],
        port: u16,
        log: &Path,
    ) -> Result<Self> {
        let logf = std::fs::File::create(log)?;
        let cpu = cpu.to_string();
        let mut full = vec!["taskset", "-c", cpu.as_str()];
        full.extend_from_slice(args);
        let child = ns
            .cmd(&full)
            .env("XLB_LOG", "warn,xlb::tls=info")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut s = Server { child, port };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = in_ns(ns, move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(s);
            }
            if let Some(st) = s.child.try_wait()? {
                bail!(
                    "{name} exited with {st}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child (taskset execs the server).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two backends: a small hyper server per port, on one thread pinned to `cpu`.
struct Backends {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backends {
    fn start(ns: &Netns, cpu: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = ns.path();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let ready = tx.clone();
            let run = move || -> Result<()> {
                enter(&path)?;
                pin_thread(cpu);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let mut listeners = Vec::new();
                    for port in BACKENDS {
                        listeners.push((
                            tokio::net::TcpListener::bind(("127.0.0.1", port)).await?,
                            format!("web{}", port - BACKENDS[0] + 1),
                        ));
                    }
                    let _ = ready.send(Ok(()));
                    for (l, name) in listeners {
                        tokio::spawn(serve_backend(l, name));
                    }
                    while !flag.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok::<_, anyhow::Error>(())
                })
            };
            if let Err(e) = run() {
                let _ = tx.send(Err(e));
            }
        });
        rx.recv().context("backend thread")??;
        Ok(Backends {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_backend(l: tokio::net::TcpListener, name: String) {
    use http_body_util::Full;
    use hyper::{Response, body::Bytes, service::service_fn};
    let body = Bytes::from(name);
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let body = body.clone();
                async move {
                    // What an application behind a proxy answers with (testssl.sh looks
                    // for security headers).
                    let r = Response::builder()
                        .header("x-content-type-options", "nosniff")
                        .header("x-frame-options", "DENY")
                        .header("referrer-policy", "no-referrer")
                        .body(Full::new(body))
                        .expect("a valid response");
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
}

/// Accepts every certificate and signature: a load generator's client must spend its
/// CPU on the handshake itself, not on checking the server.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Full handshakes per second against `port` over `secs` (after a one-second warm-up):
/// (handshakes, failures, seconds).
fn handshakes(
    ns: &Netns,
    cpu: usize,
    port: u16,
    secs: f64,
    tasks: usize,
) -> Result<(u64, u64, f64)> {
    let path = ns.path();
    std::thread::spawn(move || -> Result<(u64, u64, f64)> {
        enter(&path)?;
        pin_thread(cpu);
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        let provider = Arc::new(provider);
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ok = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let counting = Arc::new(AtomicBool::new(false));
            let start = Instant::now();
            let warm = Duration::from_secs(1);
            let end = start + warm + Duration::from_secs_f64(secs);
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..tasks {
                let (ok, failed, counting, connector) = (
                    ok.clone(),
                    failed.clone(),
                    counting.clone(),
                    connector.clone(),
                );
                set.spawn(async move {
                    let name = rustls::pki_types::ServerName::try_from("bench.example").unwrap();
                    while Instant::now() < end {
                        let r = async {
                            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                            let _ = tcp.set_nodelay(true);
                            let mut tls = connector.connect(name.clone(), tcp).await?;
                            // close_notify, then wait for the server to close first:
                            // TIME_WAIT stays on the server's side, and the client's
                            // port search does not grow with the run.
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            tls.get_mut().1.send_close_notify();
                            tls.flush().await?;
                            let mut buf = [0u8; 512];
                            // The handshake is done; how the server closes (with its own
                            // close_notify or without) does not matter.
                            while let Ok(n) = tls.read(&mut buf).await {
                                if n == 0 {
                                    break;
                                }
                            }
                            Ok::<_, std::io::Error>(())
                        }
                        .await;
                        if counting.load(Ordering::Relaxed) {
                            match r {
                                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    }
                });
            }
            tokio::time::sleep(warm).await;
            counting.store(true, Ordering::Relaxed);
            let t0 = Instant::now();
            let before = ok.load(Ordering::Relaxed);
            tokio::time::sleep_until((end).into()).await;
            let n = ok.load(Ordering::Relaxed) - before;
            let took = t0.elapsed().as_secs_f64();
            while set.join_next().await.is_some() {}
            Ok((n, failed.load(Ordering::Relaxed), took))
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("handshake client panicked"))?
}

/// h2load over keep-alive connections: (requests per second, p99 ms, failed).
fn h2load(
    ns: &Netns,
    cpu: usize,
    port: u16,
    h2: bool,
    secs: u64,
    dir: &Path,
) -> Result<(f64, f64, u64)> {
    let log = dir.join(format!(
        "h2load-{port}-{}.log",
        if h2 { "h2" } else { "h1" }
    ));
    let cpu = cpu.to_string();
    let dur = secs.to_string();
    let url = format!("https://127.0.0.1:{port}/");
    let mut args = vec![
        "taskset",
        "-c",
        &cpu,
        "h2load",
        "-t",
        "1",
        "-D",
        &dur,
        "--warm-up-time",
        "1",
    ];
    if h2 {
        args.extend(["-c", "32", "-m", "8"]);
    } else {
        args.extend(["--h1", "-c", "32", "-m", "1"]);
    }
    let logs = log.to_string_lossy().to_string();
    args.extend(["--log-file", &logs, &url]);
    let out = ns.run(&args)?;
    let rps: f64 = out
        .lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("finished in ")?;
            l.split(',')
                .nth(1)?
                .trim()
                .strip_suffix(" req/s")?
                .parse()
                .ok()
        })
        .with_context(|| format!("h2load output: {out}"))?;
    let failed: u64 = out
        .lines()
        .find_map(|l| {
            let l = l.trim().strip_prefix("requests: ")?;
            l.split(',')
                .find_map(|p| p.trim().strip_suffix(" failed"))?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut lat: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    lat.sort_unstable();
    let p99 = if lat.is_empty() {
        f64::NAN
    } else {
        lat[(lat.len() * 99 / 100).min(lat.len() - 1)] as f64 / 1000.0
    };
    Ok((rps, p99, failed))
}

fn nginx_conf(dir: &Path, cert: &Path, key: &Path) -> String {
    let upstream: String = BACKENDS
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p};\n"))
        .collect();
    format!(
        r#"daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    upstream web {{
        least_conn;
{upstream}        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{NGINX_PORT} ssl http2;
        server_name bench.example;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        add_header Strict-Transport-Security "max-age=31536000" always;
        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Forwarded "for=$remote_addr;proto=https;host=\"$host\"";
        }}
    }}
}}
"#,
        dir = dir.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

fn xlb_conf(cert: &Path, key: &Path) -> String {
    let backends: Vec<String> = BACKENDS
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        r#"listen = ["127.0.0.1:{XLB_PORT}"]
hsts = {{ max_age = 31536000 }}
default_cert = {{ chain = "{}", key = "{}" }}
[[routes]]
pool = "web"
[[pools]]
name = "web"
backends = [{}]
"#,
        cert.display(),
        key.display(),
        backends.join(", ")
    )
}

/// testssl.sh against xlb's listener: (findings, those of severity LOW or higher).
fn testssl(ns: &Netns, dir: &Path, ca: &Path) -> Result<(usize, Vec<String>)> {
    let json = dir.join("testssl.json");
    let _ = std::fs::remove_file(&json);
    let out = ns
        .cmd(&[
            "testssl",
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--add-ca",
            &ca.to_string_lossy(),
            "--ip",
            "127.0.0.1",
            "--jsonfile",
            &json.to_string_lossy(),
            &format!("https://bench.example:{XLB_PORT}/"),
        ])
        .output()
        .context("running testssl")?;
    std::fs::write(dir.join("testssl.txt"), &out.stdout)?;
    let text = std::fs::read_to_string(&json).with_context(|| {
        format!(
            "testssl wrote no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let findings: Vec<Value> = serde_json::from_str(&text).context("testssl JSON")?;
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| {
            matches!(
                f["severity"].as_str(),
                Some("LOW" | "MEDIUM" | "HIGH" | "CRITICAL")
            )
        })
        .map(|f| {
            format!(
                "{} {}: {}",
                f["severity"].as_str().unwrap_or(""),
                f["id"].as_str().unwrap_or(""),
                f["finding"].as_str().unwrap_or("")
            )
        })
        .collect();
    Ok((findings.len(), bad))
}

/// One compared case: (xlb, nginx) for the rate and for the server's CPU-seconds.
struct Row {
    what: &'static str,
    unit: &'static str,
    rate: (f64, f64),
    /// The same per CPU-second of the server process (its rate if it had the CPU to
    /// itself); None for latencies.
    per_cpu: Option<(f64, f64)>,
    /// The ratio xlb / nginx the target asks for, if any.
    target: Option<f64>,
}

fn verdict(ratio: f64, target: Option<f64>) -> &'static str {
    match target {
        Some(t) if ratio >= t => "met",
        Some(_) => "NOT met",
        None => "",
    }
}

/// Runs the whole comparison; prints the table and returns the results.
pub fn run(opts: &Options) -> Result<Value> {
    let secs: u64 = if opts.quick { 3 } else { 10 };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (server_cpu, client_cpu) = if cpus >= 2 { (1, 0) } else { (0, 0) };
    let dir = TestDir::new("hbench")?;
    let ns = Netns::new("hbench")?;
    // Many short connections: let TIME_WAIT ports be reused, widen the port range.
    ns.run(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"])?;
    ns.run(&["sysctl", "-qw", "net.core.somaxconn=4096"])?;

    let pki = Pki::new(&dir.path, "bench")?;
    let cert = pki.issue_dates(
        "bench",
        &["bench.example"],
        Some((date_in(-1), date_in(90))),
    )?;
    let nginx_dir = dir.path.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let nginx_cfg = nginx_dir.join("nginx.conf");
    std::fs::write(&nginx_cfg, nginx_conf(&nginx_dir, &cert.chain, &cert.key))?;
    let xlb_cfg = dir.path.join("xlb-https.toml");
    std::fs::write(&xlb_cfg, xlb_conf(&cert.chain, &cert.key))?;

    // The backends share the servers' CPU: the load generators get the other CPU to
    // themselves, so the servers (not the clients) are what runs out of CPU.
    let _backends = Backends::start(&ns, server_cpu)?;
    let bin = xlb_bin();
    let xlb = Server::start(
        "xlb",
        &ns,
        server_cpu,
        &[
            bin.to_str().unwrap(),
            "proxy",
            "--config",
            xlb_cfg.to_str().unwrap(),
        ],
        XLB_PORT,
        &dir.path.join("xlb.log"),
    )?;
    let nginx = Server::start(
        "nginx",
        &ns,
        server_cpu,
        &[
            "nginx",
            "-p",
            nginx_dir.to_str().unwrap(),
            "-c",
            nginx_cfg.to_str().unwrap(),
        ],
        NGINX_PORT,
        &dir.path.join("nginx.log"),
    )?;
    // Both answer through the backends before anything is measured.
    for port in [XLB_PORT, NGINX_PORT] {
        let out = ns.run(&[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            pki.ca.to_str().unwrap(),
            "--resolve",
            &format!("bench.example:{port}:127.0.0.1"),
            &format!("https://bench.example:{port}/"),
        ])?;
        if !out.starts_with("web") {
            bail!("port {port} answered {out:?}");
        }
    }

    println!(
        "\nhttps: xlb proxy vs nginx {} (server and backends on CPU {server_cpu}, load generators on CPU {client_cpu}; {secs} s per case)",
        nginx_version()
    );
    let mut results = serde_json::Map::new();
    // One case on one server: (rate per second, server CPU share, p99 ms, failures).
    let case = |s: &Server, which: &str| -> Result<(f64, f64, f64, u64)> {
        let c0 = s.cpu();
        let t = Instant::now();
        let r = match which {
            "handshakes" => {
                let (n, failed, took) = handshakes(&ns, client_cpu, s.port, secs as f64, 64)?;
                (n as f64 / took, f64::NAN, failed)
            }
            h => {
                let (rps, p99, failed) =
                    h2load(&ns, client_cpu, s.port, h == "h2", secs, &dir.path)?;
                (rps, p99, failed)
            }
        };
        // CPU share over the measured part (both clients warm up for one second).
        let wall = t.elapsed().as_secs_f64();
        let cpu = (s.cpu() - c0) / wall;
        Ok((r.0, cpu, r.1, r.2))
    };
    // Each case runs xlb, nginx, nginx, xlb and averages each server's two runs, so a
    // change in the shared machine's load during the case weighs on both alike.
    let mut x = serde_json::Map::new();
    let mut g = serde_json::Map::new();
    for which in ["handshakes", "h1", "h2"] {
        let mut runs: [Vec<(f64, f64, f64, u64)>; 2] = [Vec::new(), Vec::new()];
        for (i, s) in [(0, &xlb), (1, &nginx), (1, &nginx), (0, &xlb)] {
            runs[i].push(case(s, which)?);
        }
        for (i, v) in [(0, &mut x), (1, &mut g)] {
            let r = &runs[i];
            let mean =
                |f: fn(&(f64, f64, f64, u64)) -> f64| r.iter().map(f).sum::<f64>() / r.len() as f64;
            let (rate, cpu, p99) = (mean(|r| r.0), mean(|r| r.1), mean(|r| r.2));
            let failed: u64 = r.iter().map(|r| r.3).sum();
            let runs_json = json!(r.iter().map(|r| r.0).collect::<Vec<_>>());
            if which == "handshakes" {
                v.insert("handshakes_per_s".into(), json!(rate));
                v.insert("handshakes_runs".into(), runs_json);
                v.insert("handshake_failures".into(), json!(failed));
                v.insert("handshake_server_cpu".into(), json!(cpu));
            } else {
                v.insert(format!("{which}_requests_per_s"), json!(rate));
                v.insert(format!("{which}_runs"), runs_json);
                v.insert(format!("{which}_p99_ms"), json!(p99));
                v.insert(format!("{which}_failed"), json!(failed));
                v.insert(format!("{which}_server_cpu"), json!(cpu));
            }
        }
    }
    let (x, g) = (Value::Object(x), Value::Object(g));
    println!("  xlb: {x}\n  nginx: {g}");
    results.insert("xlb".into(), x.clone());
    results.insert("nginx".into(), g.clone());

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let both = |k: &str| (f(&x, k), f(&g, k));
    let per_cpu = |rate: &str, cpu: &str| (f(&x, rate) / f(&x, cpu), f(&g, rate) / f(&g, cpu));
    let rows = [
        Row {
            what: "new TLS handshakes (no resumption)",
            unit: "/s",
            rate: both("handshakes_per_s"),
            per_cpu: Some(per_cpu("handshakes_per_s", "handshake_server_cpu")),
            target: Some(1.5),
        },
        Row {
            what: "keep-alive HTTP/1.1 requests",
            unit: "/s",
            rate: both("h1_requests_per_s"),
            per_cpu: Some(per_cpu("h1_requests_per_s", "h1_server_cpu")),
            target: Some(1.0),
        },
        Row {
            what: "keep-alive h2 requests",
            unit: "/s",
            rate: both("h2_requests_per_s"),
            per_cpu: Some(per_cpu("h2_requests_per_s", "h2_server_cpu")),
            target: Some(1.0),
        },
        Row {
            what: "p99 latency HTTP/1.1, 32 conns",
            unit: "ms",
            rate: both("h1_p99_ms"),
            per_cpu: None,
            target: None,
        },
        Row {
            what: "p99 latency h2, 32 conns x 8",
            unit: "ms",
            rate: both("h2_p99_ms"),
            per_cpu: None,
            target: None,
        },
    ];
    println!();
    println!(
        "| {:<34} | {:>10} | {:>10} | {:>6} | {:>7} | {:>10} | {:>10} | {:>6} | {:>7} |",
        "case", "xlb", "nginx", "ratio", "target", "xlb/CPU-s", "nginx/CPU-s", "ratio", "target"
    );
    println!(
        "|{:-<36}|{:->12}|{:->12}|{:->8}|{:->9}|{:->12}|{:->12}|{:->8}|{:->9}|",
        "", "", "", "", "", "", "", "", ""
    );
    let mut table = Vec::new();
    for r in &rows {
        let ratio = r.rate.0 / r.rate.1;
        let (cpu_cols, cpu_ratio) = match r.per_cpu {
            Some((a, b)) => (
                format!(
                    "{:>10.0} | {:>10.0} | {:>5.2}x | {:>7}",
                    a,
                    b,
                    a / b,
                    verdict(a / b, r.target)
                ),
                Some(a / b),
            ),
            None => (
                format!("{:>10} | {:>10} | {:>6} | {:>7}", "", "", "", ""),
                None,
            ),
        };
        let target = match r.target {
            Some(_) => verdict(ratio, r.target).to_string(),
            None => "-".to_string(),
        };
        println!(
            "| {:<34} | {:>7.1} {:<2} | {:>7.1} {:<2} | {:>5.2}x | {:>7} | {} |",
            r.what, r.rate.0, r.unit, r.rate.1, r.unit, ratio, target, cpu_cols
        );
        table.push(json!({
            "case": r.what, "xlb": r.rate.0, "nginx": r.rate.1, "ratio": ratio,
            "target": r.target, "per_cpu_s": r.per_cpu.map(|(a, b)| [a, b]),
            "per_cpu_ratio": cpu_ratio,
        }));
    }
    println!(
        "(target: xlb/nginx >= 1.5 for handshakes, >= 1.0 for requests. Server CPU used: \
         handshakes xlb {:.2} nginx {:.2}, HTTP/1.1 {:.2} / {:.2}, h2 {:.2} / {:.2} of one CPU; \
         below 1 the load generators' CPU, not the server, limited the rate)",
        f(&x, "handshake_server_cpu"),
        f(&g, "handshake_server_cpu"),
        f(&x, "h1_server_cpu"),
        f(&g, "h1_server_cpu"),
        f(&x, "h2_server_cpu"),
        f(&g, "h2_server_cpu"),
    );
    results.insert("table".into(), json!(table));
    drop(nginx);

    if opts.testssl {
        println!("\ntestssl.sh against xlb's listener (takes a few minutes) ...");
        let t = Instant::now();
        let (n, flagged) = testssl(&ns, &dir.path, &pki.ca)?;
        let (low, bad): (Vec<String>, Vec<String>) =
            flagged.into_iter().partition(|f| f.starts_with("LOW "));
        println!(
            "testssl.sh: {n} findings, {} of severity MEDIUM or higher ({:.0} s){}",
            bad.len(),
            t.elapsed().as_secs_f64(),
            if bad.is_empty() { ": none" } else { ":" }
        );
        for b in bad.iter().chain(&low) {
            println!("  {b}");
        }
        results.insert("testssl_low".into(), json!(low));
        results.insert("testssl_findings".into(), json!(n));
        results.insert("testssl_medium_or_higher".into(), json!(bad));
    }
    drop(xlb);
    let log = std::fs::read_to_string(dir.path.join("xlb.log")).unwrap_or_default();
    if let Some(l) = log.lines().find(|l| l.contains("stopped")) {
        println!(
            "xlb's counters: {}",
            l.split_once("stats=").map(|x| x.1).unwrap_or(l)
        );
    }
    Ok(Value::Object(results))
}

fn nginx_version() -> String {
    Command::new("nginx")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: nginx/", "")
        })
        .unwrap_or_default()
}
