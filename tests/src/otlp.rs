//! An OTLP/HTTP logs receiver for the tests: it accepts `POST /v1/logs` in a
//! namespace and decodes each `ExportLogsServiceRequest` with the protocol's published
//! types, keeping every record it got.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
};
use prost::Message;

use crate::netns::{Netns, NsServer};

/// Where the collector listens, inside the edge namespace.
pub const COLLECTOR: &str = "127.0.0.1:4318";

/// One record as the collector received it.
#[derive(Clone, Debug)]
pub struct Got {
    pub stream: String,
    pub severity: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    /// The resource's attributes (`service.name`, `host.name`).
    pub resource: BTreeMap<String, String>,
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
pub struct Collector {
    got: Arc<Mutex<Vec<Got>>>,
    _server: NsServer,
}

impl Collector {
    pub fn start(edge: &Netns) -> Collector {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let bind = || -> Result<TcpListener> {
            let l = TcpListener::bind(COLLECTOR)?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let server = NsServer::start(edge, bind, move |l: &TcpListener| {
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

    pub fn of(&self, stream: &str) -> Vec<Got> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|g| g.stream == stream).cloned().collect()
    }
}
