//! Log export over OTLP/HTTP (`[export]`): access log records, sampled drop events,
//! and the daemon's own log lines, sent in protobuf batches
//! (`ExportLogsServiceRequest`, the protocol's published types) to a collector or a
//! hosted log service.
//!
//! Nothing waits for it: a record goes into a bounded queue (full: dropped, counted
//! under `xlb_export_dropped_total{reason="queue_full"}`), a task sends batches, tries
//! a failing batch again a few times with a growing pause, then drops it (counted under
//! `reason="collector"`, the first failure logged). A collector that is down costs
//! the daemon a bounded queue and a task, never a stalled request or datapath.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::TlsConnector;
use tracing::{Level, warn};

use super::global;
use crate::config::{
    export::{ExportConfig, Stream},
    tls_files::read_chain,
};

/// Where the system's CA certificates are (Debian's bundle), for https endpoints.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The tracing target of the exporter's own lines (never exported: a failing export
/// must not feed itself).
const TARGET: &str = "xlb::export";

/// One log record waiting to go.
struct Entry {
    stream: Stream,
    at: SystemTime,
    level: Level,
    body: String,
    attributes: Vec<(String, String)>,
}

/// The running exporter.
pub struct Exporter {
    tx: mpsc::Sender<Entry>,
    streams: Vec<Stream>,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Starts exporting as `cfg` says, on `rt` (once per process: `[export]` changes at a
/// restart). An https endpoint's CAs are the system's.
pub fn start(cfg: &ExportConfig, rt: &tokio::runtime::Handle) -> Result<()> {
    if EXPORTER.get().is_some() {
        bail!("the exporter runs already");
    }
    let tls = match cfg.endpoint.scheme_str() {
        Some("https") => Some(connector()?),
        _ => None,
    };
    let (tx, rx) = mpsc::channel(cfg.queue);
    let sender = Sender {
        cfg: cfg.clone(),
        tls,
        failing: false,
    };
    rt.spawn(sender.run(rx));
    let _ = EXPORTER.set(Exporter {
        tx,
        streams: cfg.streams.clone(),
    });
    Ok(())
}

/// Whether `stream` is exported.
pub fn enabled(stream: Stream) -> bool {
    EXPORTER.get().is_some_and(|e| e.streams.contains(&stream))
}

/// Queues a record of `stream` if it is exported; never waits.
pub fn record(stream: Stream, level: Level, body: String, attributes: Vec<(String, String)>) {
    let Some(e) = EXPORTER.get() else { return };
    if !e.streams.contains(&stream) {
        return;
    }
    let entry = Entry {
        stream,
        at: SystemTime::now(),
        level,
        body,
        attributes,
    };
    if e.tx.try_send(entry).is_err() {
        global().export_dropped(stream.name(), "queue_full", 1);
    }
}

fn connector() -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_chain(std::path::Path::new(SYSTEM_CAS)).context("the system's CA certificates")? {
        let _ = roots.add(c);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The task that sends batches.
struct Sender {
    cfg: ExportConfig,
    tls: Option<TlsConnector>,
    /// The collector failed last time (said once, until it answers again).
    failing: bool,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        let mut batch: Vec<Entry> = Vec::with_capacity(self.cfg.batch);
        loop {
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            // Fill the batch for at most `interval`.
            let until = tokio::time::Instant::now() + self.cfg.interval;
            while batch.len() < self.cfg.batch {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    Ok(None) | Err(_) => break,
                }
            }
            self.send(std::mem::take(&mut batch)).await;
        }
    }

    /// Sends one batch, trying again with a growing pause; drops it (counted) at last.
    async fn send(&mut self, batch: Vec<Entry>) {
        let body = encode(&batch);
        let mut pause = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=self.cfg.tries {
            match self.post(body.clone()).await {
                Ok(status) if status.is_success() => {
                    for e in &batch {
                        global().exported(e.stream.name());
                    }
                    self.failing = false;
                    return;
                }
                // The collector refuses the batch itself: trying again will not help.
                Ok(status)
                    if status.is_client_error()
                        && status != http::StatusCode::TOO_MANY_REQUESTS =>
                {
                    last = format!("the collector refused the batch: HTTP {status}");
                    break;
                }
                Ok(status) => last = format!("HTTP {status}"),
                Err(e) => last = format!("{e:#}"),
            }
            if attempt < self.cfg.tries {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        for e in &batch {
            global().export_dropped(e.stream.name(), "collector", 1);
        }
        if !self.failing {
            warn!(target: TARGET, endpoint = %self.cfg.endpoint, records = batch.len(), "log export failed, records are dropped and counted: {last}");
            self.failing = true;
        }
    }

    /// One POST of `body`; the collector's status.
    async fn post(&self, body: Vec<u8>) -> Result<http::StatusCode> {
        let uri = &self.cfg.endpoint;
        let host = uri.host().context("the endpoint has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let limit = self.cfg.timeout;
        let tcp = tokio::time::timeout(limit, TcpStream::connect((host, port)))
            .await
            .context("connecting timed out")?
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let mut req = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                uri.authority().map_or(host, |a| a.as_str()),
            )
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            match &self.tls {
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
                    let stream = tls
                        .connect(name, tcp)
                        .await
                        .context("TLS with the collector")?;
                    send(TokioIo::new(stream), req).await
                }
                None => send(TokioIo::new(tcp), req).await,
            }
        };
        tokio::time::timeout(limit, exchange)
            .await
            .context("the collector did not answer in time")?
    }
}

/// One request on a new HTTP/1.1 connection.
async fn send<T>(io: T, req: http::Request<Full<Bytes>>) -> Result<http::StatusCode>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    Ok(resp.status())
}

/// A batch as an OTLP `ExportLogsServiceRequest`: one resource (this xlb on this
/// host), one scope, one record per entry (its stream as the `xlb.stream` attribute).
fn encode(batch: &[Entry]) -> Vec<u8> {
    let text = |s: &str| AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    };
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(text(v)),
        ..Default::default()
    };
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let records = batch
        .iter()
        .map(|e| {
            let mut attributes = vec![kv("xlb.stream", e.stream.name())];
            attributes.extend(e.attributes.iter().map(|(k, v)| kv(k, v)));
            let (number, name) = severity(e.level);
            LogRecord {
                time_unix_nano: nanos(e.at),
                observed_time_unix_nano: nanos(e.at),
                severity_number: number,
                severity_text: name.to_string(),
                body: Some(text(&e.body)),
                attributes,
                ..Default::default()
            }
        })
        .collect();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "xlb"), kv("host.name", host.trim())],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "xlb".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// OTLP's severity number and text of a tracing level.
fn severity(l: Level) -> (i32, &'static str) {
    match l {
        Level::ERROR => (17, "ERROR"),
        Level::WARN => (13, "WARN"),
        Level::INFO => (9, "INFO"),
        Level::DEBUG => (5, "DEBUG"),
        Level::TRACE => (1, "TRACE"),
    }
}

/// The daemon's log lines (and its drop events, target `xlb::drop`) to the exporter:
/// a tracing layer beside the one that prints them.
pub struct Layer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if EXPORTER.get().is_none() || meta.target() == TARGET || *meta.level() > Level::INFO {
            return;
        }
        let stream = if meta.target() == "xlb::drop" {
            Stream::Drops
        } else {
            Stream::Daemon
        };
        if !enabled(stream) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields
            .attributes
            .push(("target".into(), meta.target().to_string()));
        record(stream, *meta.level(), fields.message, fields.attributes);
    }
}

/// An event's message and its other fields.
#[derive(Default)]
struct Fields {
    message: String,
    attributes: Vec<(String, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.attributes
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.attributes
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_decodes_as_the_protocol_says() {
        let batch = vec![Entry {
            stream: Stream::Access,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            level: Level::INFO,
            body: "{\"status\":200}".into(),
            attributes: vec![("status".into(), "200".into())],
        }];
        let req = ExportLogsServiceRequest::decode(&encode(&batch)[..]).unwrap();
        let r = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(r.time_unix_nano, 1_000_000_000);
        assert_eq!(r.severity_text, "INFO");
        let body = r.body.as_ref().unwrap().value.as_ref().unwrap();
        assert_eq!(
            *body,
            any_value::Value::StringValue("{\"status\":200}".into())
        );
        assert_eq!(r.attributes[0].key, "xlb.stream");
    }
}
