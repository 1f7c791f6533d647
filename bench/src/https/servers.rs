//! The servers under test (xlb's https proxy and nginx, pinned to a CPU), their
//! configurations, and the backends behind both.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use xlb_tests::{
    netns::{Netns, enter, in_ns},
    tls::{Pki, date_in},
};

use super::{BACKENDS, NGINX_PORT, XLB_PORT};

fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("target dir").join("xlb")
}

pub fn pin_thread(cpu: usize) {
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
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn start(
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
            .env("XLB_LOG", "warn,xlb::https=info")
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

    pub fn cpu(&self) -> f64 {
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
pub struct Backends {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backends {
    pub fn start(ns: &Netns, cpu: usize) -> Result<Self> {
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

pub fn nginx_version() -> String {
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

/// The servers' configuration files, one certificate for both.
pub struct Configs {
    xlb: PathBuf,
    nginx_dir: PathBuf,
    nginx: PathBuf,
}

/// Issues the certificate and writes both servers' configurations into `dir`.
pub fn write_configs(dir: &Path, pki: &Pki) -> Result<Configs> {
    let cert = pki.issue_dates(
        "bench",
        &["bench.example"],
        Some((date_in(-1), date_in(90))),
    )?;
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let nginx_cfg = nginx_dir.join("nginx.conf");
    std::fs::write(&nginx_cfg, nginx_conf(&nginx_dir, &cert.chain, &cert.key))?;
    let xlb_cfg = dir.join("xlb-https.toml");
    std::fs::write(&xlb_cfg, xlb_conf(&cert.chain, &cert.key))?;
    Ok(Configs {
        xlb: xlb_cfg,
        nginx_dir,
        nginx: nginx_cfg,
    })
}

/// xlb's proxy and nginx on `cpu`, listening, logging into `dir`.
pub fn start_servers(
    ns: &Netns,
    dir: &Path,
    configs: &Configs,
    cpu: usize,
) -> Result<(Server, Server)> {
    let Configs {
        xlb: xlb_cfg,
        nginx_dir,
        nginx: nginx_cfg,
    } = configs;
    let bin = xlb_bin();
    let xlb = Server::start(
        "xlb",
        ns,
        cpu,
        &[
            bin.to_str().unwrap(),
            "proxy",
            "--config",
            xlb_cfg.to_str().unwrap(),
        ],
        XLB_PORT,
        &dir.join("xlb.log"),
    )?;
    let nginx = Server::start(
        "nginx",
        ns,
        cpu,
        &[
            "nginx",
            "-p",
            nginx_dir.to_str().unwrap(),
            "-c",
            nginx_cfg.to_str().unwrap(),
        ],
        NGINX_PORT,
        &dir.join("nginx.log"),
    )?;
    Ok((xlb, nginx))
}
