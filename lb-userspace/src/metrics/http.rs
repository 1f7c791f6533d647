//! `/metrics` over HTTP/1.1 (`xlb run --metrics ADDR`): a small server on tokio. Each
//! scrape reads the kernel maps once (the daemon's [`Source`], on a blocking thread)
//! and answers in OpenMetrics when the scraper asks for it (Prometheus does), else in
//! the Prometheus text format 0.0.4.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use super::{Metrics, Snapshot};

/// OpenMetrics, what prometheus-client writes (and Prometheus asks for).
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format (0.0.4), for curl, promtool and older scrapers.
pub const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where a scrape's kernel numbers come from: the daemon reads its datapath (a few
/// batch syscalls under its lock).
pub type Source = Arc<dyn Fn() -> anyhow::Result<Snapshot> + Send + Sync>;

/// The most a request head may take.
const MAX_HEAD: usize = 16 * 1024;
/// How long a scraper may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrape connections served at once at most (fewer with few descriptors); more are
/// closed at once.
pub const MAX_CONNECTIONS: usize = 512;

/// Binds the listener (so a bad address fails `xlb run` at start).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics listener on {addr} (choose another with --metrics ADDR, or --metrics off)")
    })
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, source: Source, metrics: &'static Metrics, cap: usize) {
    let connections = Arc::new(tokio::sync::Semaphore::new(cap));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: pause, never stop serving.
                warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Beyond the cap a connection is closed at once (anyone on the host can open
        // them: they must not use up the daemon's descriptors).
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connection refused: {cap} open");
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, source, metrics).await {
                debug!(%peer, "metrics connection: {e:#}");
            }
            drop(permit);
        });
    }
}

/// Renders one exposition: (content type, body).
pub fn scrape(source: &Source, metrics: &Metrics, openmetrics: bool) -> Result<(String, String)> {
    let snap = source()?;
    let body = metrics.render(&snap);
    Ok(if openmetrics {
        (OPENMETRICS_TYPE.to_string(), body)
    } else {
        (TEXT_TYPE.to_string(), to_text_format(&body))
    })
}

/// How long an answer may take to write (a scraper that stops reading is dropped).
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn handle(mut stream: TcpStream, source: Source, metrics: &'static Metrics) -> Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                anyhow::bail!("closed before the end of the request head");
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_HEAD {
                anyhow::bail!("request head too large");
            }
        }
        Ok(())
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .context("request head timed out")??;
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let request = lines.next().unwrap_or("");
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let accept_om = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let r =
                tokio::task::spawn_blocking(move || scrape(&source, metrics, accept_om)).await?;
            match r {
                Ok((ctype, body)) => ("200 OK", ctype, body),
                Err(e) => {
                    warn!("scrape failed: {e:#}");
                    (
                        "500 Internal Server Error",
                        "text/plain".to_string(),
                        format!("scrape failed: {e:#}\n"),
                    )
                }
            }
        }
        ("GET", "/") => (
            "200 OK",
            "text/plain".to_string(),
            "xlb: metrics at /metrics\n".to_string(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain".to_string(),
            "not found\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain".to_string(),
            "only GET\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A scraper that asks and never reads must not hold its connection slot.
    let write = async {
        stream.write_all(resp.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await.ok();
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| {
            anyhow::anyhow!("the scraper did not read its answer within {WRITE_TIMEOUT:?}")
        })??;
    Ok(())
}

/// OpenMetrics text to the Prometheus text format 0.0.4: counter families take their
/// samples' `_total` name, and the OpenMetrics-only lines (`# UNIT`, `# EOF`) go.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((tag, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(tag);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
