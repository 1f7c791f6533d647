//! The https service's access log: one JSON record per request (time, client, TLS
//! version and SNI, method, host, path, status, bytes both ways, duration, the
//! upstream backend and its time, retries), written to a file, stdout or syslog
//! (RFC 5424) by a thread of its own.
//!
//! The proxy never waits for it: records go through a bounded queue, and what does not
//! fit (or cannot be written: a full disk, a closed syslog socket) is dropped and
//! counted (`xlb_access_log_dropped_total`). A file is rotated by size (`max_size`:
//! renamed to `.1`, `.1` to `.2`, ... up to `keep`) or reopened on request (SIGUSR1,
//! after an external logrotate moved it): no line is lost or split either way.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    net::UdpSocket,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use serde::Serialize;
use tracing::{Level, warn};

use super::{BoxError, ProxyBody, proxy::Trace};
use crate::{
    config::{
        export::Stream,
        https::{AccessLogConfig, AccessLogTarget},
    },
    metrics::{export, global},
};

/// Records waiting for the writer at most; more are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// One request, as the access log writes it.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub client: String,
    pub client_port: u16,
    /// `TLSv1.3`, `TLSv1.2`.
    pub tls_version: &'static str,
    pub sni: Option<String>,
    pub method: String,
    pub host: String,
    pub path: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    /// The pool the route chose, and the backend that answered (None: none did).
    pub pool: Option<String>,
    pub upstream: Option<String>,
    /// From sending the request to the backend's response head.
    pub upstream_ms: Option<f64>,
    /// Other backends tried before the one that answered.
    pub retries: u32,
}

impl Record {
    /// The fields a log service indexes, as the exporter's attributes (the body is the
    /// whole record).
    fn attributes(&self) -> Vec<(String, String)> {
        let mut a = vec![
            ("client.address".into(), self.client.clone()),
            ("http.request.method".into(), self.method.clone()),
            ("http.response.status_code".into(), self.status.to_string()),
            ("url.path".into(), self.path.clone()),
            ("server.address".into(), self.host.clone()),
        ];
        if let Some(u) = &self.upstream {
            a.push(("xlb.upstream".into(), u.clone()));
        }
        a
    }
}

/// The running access log.
pub struct AccessLog {
    tx: SyncSender<Record>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the sink (an error if it cannot be opened: an unwritable path, a missing
    /// syslog socket) and starts its writer.
    pub fn start(cfg: &AccessLogConfig) -> Result<Arc<Self>> {
        let sink = Sink::open(cfg)?;
        let (tx, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            cfg: cfg.clone(),
            sink,
            reopen: reopen.clone(),
            dropped: dropped.clone(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("xlb-access-log".into())
            .spawn(move || writer.run(rx))
            .context("starting the access log's writer")?;
        Ok(Arc::new(AccessLog {
            tx,
            reopen,
            dropped,
        }))
    }

    /// Queues a record; drops it (counted) when the writer is behind.
    pub fn log(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                global().access_log_dropped();
            }
        }
    }

    /// Reopens the file at its next record (after an external rotation).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What a connection knows of its client, for each of its requests' records.
#[derive(Debug)]
pub struct Conn {
    pub peer: std::net::SocketAddr,
    pub tls_version: &'static str,
    pub sni: Option<String>,
}

impl Conn {
    /// The client and its handshake's outcome.
    pub fn of(peer: std::net::SocketAddr, tls: &rustls::ServerConnection) -> Conn {
        Conn {
            peer,
            tls_version: match tls.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            sni: tls.server_name().map(str::to_string),
        }
    }
}

/// A request's record while it is served: what the request said, from its start.
pub struct Pending {
    started: Instant,
    at: SystemTime,
    method: String,
    host: String,
    path: String,
}

impl Pending {
    pub fn start<B>(req: &http::Request<B>) -> Pending {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Pending {
            started: Instant::now(),
            at: SystemTime::now(),
            method: req.method().to_string(),
            host,
            path: req.uri().path().to_string(),
        }
    }
}

/// The response with its body counted; the record is logged when the body ends (or
/// is dropped: a client that went away), with everything known by then.
pub fn wrap(
    resp: http::Response<ProxyBody>,
    pending: Pending,
    trace: Trace,
    conn: Arc<Conn>,
    log: Arc<AccessLog>,
) -> http::Response<ProxyBody> {
    let status = resp.status().as_u16();
    let (parts, inner) = resp.into_parts();
    let body = Logged {
        inner,
        bytes_out: 0,
        done: Some(Done {
            pending,
            trace,
            conn,
            status,
            log,
        }),
    };
    http::Response::from_parts(parts, body.boxed_unsync())
}

/// What a record is made of once the response is sent.
struct Done {
    pending: Pending,
    trace: Trace,
    conn: Arc<Conn>,
    status: u16,
    log: Arc<AccessLog>,
}

impl Done {
    fn record(self, bytes_out: u64) {
        let Done {
            pending: p,
            trace: t,
            conn: c,
            status,
            log,
        } = self;
        log.log(Record {
            time: rfc3339(p.at),
            client: c.peer.ip().to_string(),
            client_port: c.peer.port(),
            tls_version: c.tls_version,
            sni: c.sni.clone(),
            method: p.method,
            host: p.host,
            path: p.path,
            status,
            bytes_in: t.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            duration_ms: p.started.elapsed().as_secs_f64() * 1e3,
            pool: t.pool,
            upstream: t.upstream.map(|a| a.to_string()),
            upstream_ms: t.upstream_time.map(|d| d.as_secs_f64() * 1e3),
            retries: t.retries,
        });
    }
}

/// A response body that counts its bytes and logs its request when it ends.
struct Logged {
    inner: ProxyBody,
    bytes_out: u64,
    done: Option<Done>,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
                if this.inner.is_end_stream()
                    && let Some(d) = this.done.take()
                {
                    d.record(this.bytes_out);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(d) = this.done.take() {
                    d.record(this.bytes_out);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            d.record(self.bytes_out);
        }
    }
}

/// Where records go.
enum Sink {
    File {
        out: BufWriter<File>,
        path: PathBuf,
        size: u64,
    },
    Stdout,
    Syslog(Syslog),
    /// Nothing here: the records go only to the exporter.
    Exported,
}

/// A syslog destination: a unix datagram socket (`/dev/log`) or a UDP collector.
enum Syslog {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

impl Sink {
    fn open(cfg: &AccessLogConfig) -> Result<Sink> {
        Ok(match cfg.to {
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::File => {
                let path = cfg
                    .path
                    .clone()
                    .context("an access log file needs a path")?;
                let (out, size) = open_append(&path)?;
                Sink::File { out, path, size }
            }
            AccessLogTarget::Syslog => Sink::Syslog(Syslog::open(&cfg.syslog)?),
            AccessLogTarget::Otlp => Sink::Exported,
        })
    }
}

impl Syslog {
    fn open(addr: &str) -> Result<Syslog> {
        if let Some(udp) = addr.strip_prefix("udp://") {
            let s = UdpSocket::bind(if udp.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .context("a socket for syslog")?;
            s.connect(udp)
                .with_context(|| format!("the syslog collector {udp}"))?;
            return Ok(Syslog::Udp(s));
        }
        let s = UnixDatagram::unbound().context("a socket for syslog")?;
        s.connect(addr)
            .with_context(|| format!("the syslog socket {addr}"))?;
        Ok(Syslog::Unix(s))
    }

    fn send(&self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Syslog::Unix(s) => s.send(line).map(drop),
            Syslog::Udp(s) => s.send(line).map(drop),
        }
    }
}

/// Opens `path` to append, creating it (mode 0640); its size.
fn open_append(path: &Path) -> Result<(BufWriter<File>, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening the access log {}", path.display()))?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        bail!("the access log {} is not a regular file", path.display());
    }
    Ok((BufWriter::new(f), meta.len()))
}

/// The writer thread's state.
struct Writer {
    cfg: AccessLogConfig,
    sink: Sink,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    /// A write failed last time (said once, until one succeeds again).
    failing: bool,
}

impl Writer {
    /// Writes records until every sender is gone, flushing when the queue is empty.
    fn run(mut self, rx: Receiver<Record>) {
        while let Ok(r) = rx.recv() {
            self.write(&r);
            while let Ok(r) = rx.try_recv() {
                self.write(&r);
            }
            if let Sink::File { out, .. } = &mut self.sink
                && let Err(e) = out.flush()
            {
                self.failed(&e.into());
            }
        }
    }

    fn write(&mut self, r: &Record) {
        if self.reopen.swap(false, Ordering::Relaxed) {
            self.reopen_file();
        }
        let json = serde_json::to_string(r).unwrap_or_default();
        if export::enabled(Stream::Access) {
            export::record(Stream::Access, Level::INFO, json.clone(), r.attributes());
        }
        let res = match &mut self.sink {
            Sink::Exported => Ok(()),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{json}").and_then(|_| out.flush())
            }
            Sink::File { out, size, .. } => {
                let res = writeln!(out, "{json}");
                *size += json.len() as u64 + 1;
                res
            }
            Sink::Syslog(s) => s.send(syslog_line(&self.cfg, &json).as_bytes()),
        };
        match res {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.failed(&e.into());
                return;
            }
        }
        if let Sink::File { size, .. } = &self.sink
            && self.cfg.max_size.is_some_and(|m| *size >= m)
        {
            self.rotate();
        }
    }

    /// A record that could not be written: counted, said once.
    fn failed(&mut self, e: &anyhow::Error) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        global().access_log_dropped();
        if !self.failing {
            warn!("the access log cannot be written, records are dropped and counted: {e:#}");
            self.failing = true;
        }
    }

    fn reopen_file(&mut self) {
        let Sink::File { out, path, .. } = &mut self.sink else {
            return;
        };
        let _ = out.flush();
        match open_append(path) {
            Ok((o, s)) => {
                let path = path.clone();
                self.sink = Sink::File {
                    out: o,
                    path,
                    size: s,
                };
            }
            Err(e) => self.failed(&e),
        }
    }

    /// `path` becomes `path.1`, `path.1` `path.2` ... (the oldest beyond `keep` goes),
    /// and a new `path` is opened: every record is in one file, whole.
    fn rotate(&mut self) {
        let Sink::File { out, path, .. } = &mut self.sink else {
            return;
        };
        let _ = out.flush();
        let path = path.clone();
        let keep = self.cfg.keep.max(1);
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if let Err(e) = std::fs::rename(&path, numbered(1)) {
            self.failed(&anyhow::Error::from(e).context("rotating the access log"));
        }
        self.reopen_file();
    }
}

/// A record as an RFC 5424 syslog message: `<PRI>1 TIME HOST xlb PID access - JSON`.
fn syslog_line(cfg: &AccessLogConfig, json: &str) -> String {
    // Severity 6: informational.
    let pri = cfg.facility_code() * 8 + 6;
    format!(
        "<{pri}>1 {} {} xlb {} access - {json}",
        rfc3339(SystemTime::now()),
        hostname(),
        std::process::id()
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// `2026-12-02T13:04:05.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let rem = secs % 86_400;
    let (year, month, day) = crate::model::text::civil_date(secs);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> Record {
        Record {
            time: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_680_645_123)),
            client: "203.0.113.2".into(),
            client_port: 40000,
            tls_version: "TLSv1.3",
            sni: Some("www.example".into()),
            method: "GET".into(),
            host: "www.example".into(),
            path: format!("/{i}"),
            status: 200,
            bytes_in: 0,
            bytes_out: 5,
            duration_ms: 1.5,
            pool: Some("web".into()),
            upstream: Some("203.0.113.11:8080".into()),
            upstream_ms: Some(1.0),
            retries: 0,
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_680_645_123)),
            "2025-12-02T13:04:05.123Z"
        );
    }

    #[test]
    fn a_rotated_file_loses_no_line() {
        let dir = std::env::temp_dir().join(format!("xlb-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let cfg = AccessLogConfig {
            to: AccessLogTarget::File,
            path: Some(path.clone()),
            max_size: Some(4096),
            keep: 50,
            ..AccessLogConfig::default()
        };
        let log = AccessLog::start(&cfg).unwrap();
        for i in 0..200 {
            log.log(record(i));
            if i == 100 {
                // An external rotation in the middle: moved away, then reopened.
                std::fs::rename(&path, dir.join("moved.log")).unwrap();
                log.reopen();
            }
        }
        drop(log);
        // Every record is in exactly one file, as a whole line.
        let mut paths: Vec<u64> = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while paths.len() < 200 && std::time::Instant::now() < deadline {
            paths.clear();
            for e in std::fs::read_dir(&dir).unwrap() {
                let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    let p = v["path"].as_str().unwrap()[1..].parse().unwrap();
                    paths.push(p);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        paths.sort_unstable();
        assert_eq!(paths, (0..200).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
