//! The listeners: TLS handshakes under a time limit, HTTP/1.1 or h2 (ALPN) served
//! through the proxy, idle connections closed, and plain-HTTP redirects to https.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{HttpsProxy, access, proxy};
use crate::{
    config::https::secs,
    metrics::{HTTPS_SERVICE, global},
};

impl HttpsProxy {
    pub(super) async fn accept_loop(self: Arc<Self>, listener: TcpListener, conns: Arc<Semaphore>) {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        loop {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let me = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                me.connection(acceptor, tcp, peer).await;
                drop(permit);
            });
        }
    }

    async fn connection(self: Arc<Self>, acceptor: TlsAcceptor, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let metrics = &global().https;
        let _active = metrics.connection(HTTPS_SERVICE);
        let limits = self.site().limits.clone();
        let header_timeout = secs(limits.header_read_timeout);
        let activity = Arc::new(AtomicU64::new(now_ms()));
        let io = Active {
            inner: tcp,
            last: activity.clone(),
        };
        let tls = match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                metrics.handshake(HTTPS_SERVICE, Err("error"));
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.stats
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                metrics.handshake(HTTPS_SERVICE, Err("timeout"));
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        metrics.handshake(HTTPS_SERVICE, Ok(()));
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let conn = Arc::new(access::Conn::of(peer, tls.get_ref().1));
        let me = self.clone();
        let client = Arc::new(proxy::Client::new(peer));
        let service = service_fn(move |req| {
            let (me, client, conn) = (me.clone(), client.clone(), conn.clone());
            async move {
                let started = std::time::Instant::now();
                let log = me.access_log();
                let pending = log.as_ref().map(|_| access::Pending::start(&req));
                let (resp, trace) = proxy::handle(me.site(), &me.stats, req, &client).await;
                me.requests
                    .request(resp.status().as_u16(), started.elapsed());
                let resp = match (log, pending) {
                    (Some(log), Some(p)) => access::wrap(resp, p, trace, conn, log),
                    _ => resp,
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let io = TokioIo::new(tls);
        let serve: Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>> = if h2 {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(limits.max_header_bytes as u32);
            Box::pin(b.serve_connection(io, service))
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_header_size(limits.max_header_bytes);
            Box::pin(b.serve_connection(io, service))
        };
        tokio::select! {
            r = serve => if let Err(e) = r {
                debug!(%peer, error = %e, "connection ended with an error");
            },
            _ = idle(activity, secs(limits.idle_timeout)) => {
                self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "idle connection closed");
            }
        }
    }

    pub(super) async fn redirect_loop(
        self: Arc<Self>,
        listener: TcpListener,
        https_port: u16,
        conns: Arc<Semaphore>,
    ) {
        loop {
            let Ok(permit) = conns.clone().acquire_owned().await else {
                return;
            };
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let limits = self.site().limits.clone();
            tokio::spawn(async move {
                let activity = Arc::new(AtomicU64::new(now_ms()));
                let io = TokioIo::new(Active {
                    inner: tcp,
                    last: activity.clone(),
                });
                let service = service_fn(move |req| async move {
                    Ok::<_, Infallible>(proxy::redirect(&req, https_port))
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(secs(limits.header_read_timeout))
                    .max_header_size(limits.max_header_bytes);
                tokio::select! {
                    r = b.serve_connection(io, service) => if let Err(e) = r {
                        debug!(%peer, error = %e, "redirect connection ended with an error");
                    },
                    _ = idle(activity, secs(limits.idle_timeout)) => {}
                }
                drop(permit);
            });
        }
    }
}

/// Milliseconds since the first call (a connection's activity clock).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Completes once `last` is `limit` in the past.
async fn idle(last: Arc<AtomicU64>, limit: Duration) {
    let limit_ms = limit.as_millis() as u64;
    loop {
        let due = last.load(Ordering::Relaxed) + limit_ms;
        let now = now_ms();
        if now >= due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(due - now)).await;
    }
}

/// A TCP stream that notes the time of its last read or write.
struct Active {
    inner: TcpStream,
    last: Arc<AtomicU64>,
}

impl Active {
    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

impl AsyncRead for Active {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Active {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
