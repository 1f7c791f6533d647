//! The https service's test kit: a private CA (rcgen) issuing certificates at test
//! time, a client / edge / backends network in namespaces, `xlb proxy` in the edge,
//! plain and TLS backends that answer with their names, and rustls clients.
//!
//! ```text
//!   client 192.0.2.2, 2001:db8:c::2 ── c0|x0 ── edge 192.0.2.1, 2001:db8:c::1 (xlb proxy)
//!                                               edge 203.0.113.1 ── x1|b0 ── backends
//!                                                                   203.0.113.11, .12, ...
//! ```

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

use crate::netns::{Netns, NsServer, TestDir, append_log, die_with_parent, in_ns, veth, xlb_bin};

pub const EDGE4: &str = "192.0.2.1";
pub const EDGE6: &str = "2001:db8:c::1";
pub const CLIENT4: &str = "192.0.2.2";

/// Backend address i (0-based) in the backends namespace.
pub fn backend_ip(i: usize) -> String {
    format!("203.0.113.{}", 11 + i)
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// (year, month, day).
pub type Date = (i32, u8, u8);

/// The civil date (year, month, day) `days` days after 1970-01-01.
pub fn civil_date(days: i64) -> (i32, u8, u8) {
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Today's date offset by `days` (UTC).
pub fn date_in(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    civil_date(now / 86_400 + days)
}

/// A certificate and key written to files, and the leaf's DER.
#[derive(Clone)]
pub struct Issued {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A private certificate authority writing into a directory.
pub struct Pki {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
}

/// Writes a file whole: a temporary file renamed over the target (a watcher never sees
/// half of it).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("xlb test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, issuer.pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            issuer,
            ca,
        })
    }

    /// A leaf for `names` (DNS names or IP addresses), valid now, written to
    /// `<stem>.pem` and `<stem>.key`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> Result<Issued> {
        self.issue_valid(stem, names, None)
    }

    /// Like `issue`, valid from the start of year `.0` to the start of year `.1`.
    pub fn issue_valid(
        &self,
        stem: &str,
        names: &[&str],
        years: Option<(i32, i32)>,
    ) -> Result<Issued> {
        self.issue_dates(stem, names, years.map(|(a, b)| ((a, 1, 1), (b, 1, 1))))
    }

    /// Like `issue`, valid between two dates (year, month, day).
    pub fn issue_dates(
        &self,
        stem: &str,
        names: &[&str],
        window: Option<(Date, Date)>,
    ) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("xlb"));
        // Where a real CA would publish revocations (testssl.sh asks for one).
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
            uris: vec!["http://ca.example/xlb-test.crl".into()],
        }];
        if let Some((from, to)) = window {
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            chain: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            der: cert.der().to_vec(),
            cert_pem: cert.pem() + &self.issuer.pem(),
            key_pem: key.serialize_pem(),
        };
        issued.write_to(&issued.chain, &issued.key)?;
        Ok(issued)
    }
}

impl Issued {
    /// Writes this chain and key over the given files.
    pub fn write_to(&self, chain: &Path, key: &Path) -> Result<()> {
        write_atomic(chain, self.cert_pem.as_bytes())?;
        write_atomic(key, self.key_pem.as_bytes())
    }

    pub fn server_config(&self, client_ca: Option<&Path>) -> Result<ServerConfig> {
        let chain = CertificateDer::pem_file_iter(&self.chain)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&self.key)?;
        let b = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let b = match client_ca {
            Some(ca) => b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider(),
                )
                .build()?,
            ),
            None => b.with_no_client_auth(),
        };
        Ok(b.with_single_cert(chain, key)?)
    }
}

pub fn roots(ca: &Path) -> Result<rustls::RootCertStore> {
    let mut r = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        r.add(c?)?;
    }
    Ok(r)
}

/// The client, edge and backends namespaces, linked (see the module docs).
pub struct HttpsNet {
    pub client: Netns,
    pub edge: Netns,
    pub backends: Netns,
    pub dir: TestDir,
}

impl HttpsNet {
    /// The network with `n` backend addresses.
    pub fn new(tag: &str, n: usize) -> Result<Self> {
        let dir = TestDir::new(tag)?;
        let client = Netns::new("hc")?;
        let edge = Netns::new("he")?;
        let backends = Netns::new("hb")?;
        veth(
            &client,
            "c0",
            &[&format!("{CLIENT4}/24"), "2001:db8:c::2/64"],
            &edge,
            "x0",
            &[&format!("{EDGE4}/24"), &format!("{EDGE6}/64")],
        )?;
        let addrs: Vec<String> = (0..n).map(|i| format!("{}/24", backend_ip(i))).collect();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        veth(&edge, "x1", &["203.0.113.1/24"], &backends, "b0", &addrs)?;
        Ok(HttpsNet {
            client,
            edge,
            backends,
            dir,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }
}

/// Answers HTTP/1.1 requests on one connection (keep-alive) with `respond(head)`
/// (status, body), reading and discarding request bodies given by Content-Length.
pub fn serve_http<S: Read + Write>(s: &mut S, respond: &dyn Fn(&str) -> (u16, String)) {
    let mut buf = [0u8; 8192];
    let mut got = Vec::new();
    loop {
        let end = loop {
            if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&got[..end]).to_string();
        got.drain(..end);
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while got.len() < len {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got.drain(..len);
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            // Enough for tests: the body ends at the last chunk.
            let end = loop {
                if let Some(p) = got.windows(5).position(|w| w == b"0\r\n\r\n") {
                    break p + 5;
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            };
            got.drain(..end);
        }
        let (status, body) = respond(&head);
        let reason = if status < 400 { "OK" } else { "Error" };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes())
            .and_then(|_| s.flush())
            .is_err()
        {
            return;
        }
    }
}

/// A backend's answer: its name; on `/echo` also the request head it got; on
/// `/health` 200, or 500 while `healthy` is false (a health check's path).
fn answer(name: &str, head: &str, healthy: &AtomicBool) -> (u16, String) {
    if head.starts_with("GET /echo") {
        (200, format!("{name}\n{head}"))
    } else if head.starts_with("GET /health ") && !healthy.load(Ordering::Relaxed) {
        (500, "unhealthy".into())
    } else {
        (200, name.to_string())
    }
}

/// The TLS backends' health switch: always healthy.
static HEALTHY: AtomicBool = AtomicBool::new(true);

fn listener(addr: SocketAddr) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// A backend server: stops listening and closes every connection it has when dropped
/// (like a backend process that dies).
pub struct Backend {
    _server: NsServer,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A backend on `addr` running `serve` on a thread per connection.
fn backend(
    ns: &Netns,
    addr: &str,
    serve: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Result<Backend> {
    let addr: SocketAddr = addr.parse()?;
    let conns = Arc::new(Mutex::new(Vec::new()));
    let tracked = conns.clone();
    let serve = Arc::new(serve);
    let server = NsServer::start(
        ns,
        move || listener(addr),
        move |l: &TcpListener| match l.accept() {
            Ok((s, _)) => {
                if let Ok(c) = s.try_clone() {
                    tracked.lock().unwrap().push(c);
                }
                let serve = serve.clone();
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    serve(s);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        },
    )?;
    Ok(Backend {
        _server: server,
        conns,
    })
}

/// A plain HTTP backend answering with `name` (see `answer`).
pub fn http_backend(ns: &Netns, addr: &str, name: &str) -> Result<Backend> {
    checked_http_backend(ns, addr, name, Arc::new(AtomicBool::new(true)))
}

/// Like `http_backend`, with its `/health` answering 500 while `healthy` is false
/// (every other path keeps answering: only a health check can tell).
pub fn checked_http_backend(
    ns: &Netns,
    addr: &str,
    name: &str,
    healthy: Arc<AtomicBool>,
) -> Result<Backend> {
    let name = name.to_string();
    backend(ns, addr, move |mut s| {
        serve_http(&mut s, &|h| answer(&name, h, &healthy))
    })
}

/// A TLS backend (rejects plaintext: it only speaks TLS), answering with `name`;
/// `served` counts the requests it answered.
pub fn https_backend(
    ns: &Netns,
    addr: &str,
    name: &str,
    config: ServerConfig,
    served: Arc<AtomicUsize>,
) -> Result<Backend> {
    let name = name.to_string();
    let config = Arc::new(config);
    backend(ns, addr, move |s| {
        let Ok(conn) = ServerConnection::new(config.clone()) else {
            return;
        };
        let mut tls = StreamOwned::new(conn, s);
        serve_http(&mut tls, &|h| {
            served.fetch_add(1, Ordering::Relaxed);
            answer(&name, h, &HEALTHY)
        });
    })
}

/// `xlb proxy --config FILE` in a namespace, stopped on drop.
pub struct Proxy {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proxy {
    /// Starts the proxy and waits until every address in `ready` accepts connections.
    pub fn start(ns: &Netns, config: &Path, log: &Path, ready: &[SocketAddr]) -> Result<Self> {
        let logf = append_log(log)?;
        let bin = xlb_bin();
        let mut cmd = ns.cmd(&[bin.to_str().unwrap(), "proxy", "--config"]);
        cmd.arg(config)
            .env("XLB_LOG", "info,xlb=debug")
            .stdout(Stdio::null())
            .stderr(logf);
        die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().context("spawning xlb proxy")?;
        let mut p = Proxy {
            child: Some(child),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in ready {
            let addr = *addr;
            loop {
                let up = in_ns(ns, move || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })?;
                if up {
                    break;
                }
                if let Some(s) = p.child.as_mut().unwrap().try_wait()? {
                    bail!("xlb proxy exited with {s}: {}", p.log_text());
                }
                if Instant::now() > deadline {
                    bail!("xlb proxy did not listen on {addr}: {}", p.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(p)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGHUP: re-read the configuration file.
    pub fn hup(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGHUP) };
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log_text().matches(needle).count() < n {
            if Instant::now() > deadline {
                bail!(
                    "the proxy's log never held {needle:?} {n} times: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGTERM and wait for the exit; whether it exited successfully.
    pub fn stop(&mut self) -> Result<bool> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("xlb proxy did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection from the calling thread's namespace, verified against `ca` for
/// `sni` (or not verified at all when `ca` is None), ALPN http/1.1, handshake done.
pub fn tls_connect(addr: SocketAddr, sni: &str, ca: Option<&Path>) -> Result<TlsStream> {
    let b =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = match ca {
        Some(ca) => b.with_root_certificates(roots(ca)?).with_no_client_auth(),
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(xlb::health::AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from(sni.to_string())?)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .with_context(|| format!("TLS handshake with {addr} for {sni}"))?;
    }
    Ok(s)
}

/// The leaf certificate `addr` presents for `sni`, seen from namespace `ns`.
pub fn served_cert(ns: &Netns, addr: SocketAddr, sni: &str) -> Result<Vec<u8>> {
    let sni = sni.to_string();
    in_ns(ns, move || -> Result<Vec<u8>> {
        let s = tls_connect(addr, &sni, None)?;
        Ok(s.conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no certificate")?
            .to_vec())
    })?
}

/// One GET over an open HTTP/1.1 connection: status and body.
pub fn get(s: &mut impl ReadWrite, host: &str, path: &str) -> Result<(u16, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("status line")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .context("no Content-Length")?;
            if buf.len() >= h + 4 + len {
                return Ok((
                    status,
                    String::from_utf8_lossy(&buf[h + 4..h + 4 + len]).to_string(),
                ));
            }
        }
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// `curl` from `ns` to `https://NAME[:port]PATH`, NAME resolved to `addr`, verified
/// against `ca`: (status, body, HTTP version). `http2` false forces HTTP/1.1.
pub fn curl(
    ns: &Netns,
    ca: &Path,
    name: &str,
    addr: &str,
    path: &str,
    http2: bool,
    extra: &[&str],
) -> Result<(u16, String, String)> {
    let resolve = format!("{name}:443:{addr}");
    let url = format!("https://{name}{path}");
    let mut args = vec![
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_code} %{http_version}",
        if http2 { "--http2" } else { "--http1.1" },
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = ns.run(&args)?;
    let (body, tail) = out.rsplit_once('\n').context("curl output")?;
    let (code, version) = tail.split_once(' ').context("curl -w output")?;
    Ok((code.parse()?, body.to_string(), version.to_string()))
}
