//! Requests: routing by host and path prefix, forwarding to a pool's backend with the
//! forwarding headers, body limits, retries when safe, and the short error responses
//! (400, 404, 413, 502, 503, 504).

use std::{
    borrow::Cow,
    collections::HashMap,
    error::Error as StdError,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Result;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header, uri::Authority,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tracing::{debug, warn};

use super::{
    BoxError, ProxyBody, Stats,
    upstream::{InFlight, Pool},
};
use crate::config::https::{HttpsConfig, Limits, MAX_RETRIES, secs};

enum HostMatch {
    Any,
    Exact(String),
    /// `*.a.example` stored as `a.example`: one more label in front.
    Wildcard(String),
}

struct CompiledRoute {
    host: HostMatch,
    /// The prefix without its trailing '/' ("" for "/").
    path: String,
    pool: Arc<Pool>,
}

/// The routes and pools of one configuration.
pub struct Router {
    routes: Vec<CompiledRoute>,
    pub pools: HashMap<String, Arc<Pool>>,
}

fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Router {
    /// Builds the pools (reading their CA files) and routes. Backends of `old` pools
    /// with the same name and address are kept (health, idle connections).
    pub fn new(
        cfg: &HttpsConfig,
        provider: Arc<rustls::crypto::CryptoProvider>,
        old: Option<&Router>,
    ) -> Result<Self> {
        let mut pools = HashMap::new();
        for p in &cfg.pools {
            let prev = old.and_then(|o| o.pools.get(&p.name)).map(|p| p.as_ref());
            let pool = Pool::new(p, &cfg.limits, provider.clone(), prev)
                .map_err(|e| e.context(format!("pool '{}'", p.name)))?;
            pools.insert(p.name.clone(), Arc::new(pool));
        }
        let routes = cfg
            .routes
            .iter()
            .map(|r| CompiledRoute {
                host: match r.host.as_deref() {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix("*.") {
                        Some(s) => HostMatch::Wildcard(s.to_string()),
                        None => HostMatch::Exact(h.to_string()),
                    },
                },
                path: r.path.trim_end_matches('/').to_string(),
                pool: pools[&r.pool].clone(),
            })
            .collect();
        Ok(Router { routes, pools })
    }

    /// The most specific route: exact host, then wildcard, then any host; then the
    /// longest path prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Pool>> {
        self.routes
            .iter()
            .filter_map(|r| {
                let rank = match &r.host {
                    HostMatch::Exact(h) if h == host => 2,
                    HostMatch::Wildcard(s)
                        if host.split_once('.').is_some_and(|(_, rest)| rest == s) =>
                    {
                        1
                    }
                    HostMatch::Any => 0,
                    _ => return None,
                };
                path_matches(&r.path, path).then_some(((rank, r.path.len()), &r.pool))
            })
            .max_by_key(|(k, _)| *k)
            .map(|(_, p)| p)
    }
}

/// What a request is served with: the routes, limits and headers of one configuration.
pub struct Site {
    pub router: Router,
    pub limits: Limits,
    pub hsts: Option<HeaderValue>,
}

impl Site {
    pub fn new(
        cfg: &HttpsConfig,
        provider: Arc<rustls::crypto::CryptoProvider>,
        old: Option<&Site>,
    ) -> Result<Self> {
        Ok(Site {
            router: Router::new(cfg, provider, old.map(|s| &s.router))?,
            limits: cfg.limits.clone(),
            hsts: cfg
                .hsts
                .as_ref()
                .map(|h| HeaderValue::from_str(&h.header_value()))
                .transpose()?,
        })
    }
}

/// A short plain-text response.
pub fn reply(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = format!("{} {}\n", status.as_u16(), text);
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of them (and a name listed in Connection only matters
    // with a Connection header): one pass over the few names present is cheaper than
    // a removal (a hash lookup) of each.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    for n in &named {
        h.remove(n);
    }
}

/// The request's authority (a valid, non-empty host) and the authority as sent (for
/// Host).
fn request_host(req: &Request<Incoming>) -> Option<(Authority, HeaderValue)> {
    let (auth, raw) = match req.uri().authority() {
        Some(a) => (a.clone(), HeaderValue::from_str(a.as_str()).ok()?),
        None => {
            let raw = req.headers().get(header::HOST)?.clone();
            (raw.to_str().ok()?.parse().ok()?, raw)
        }
    };
    (!auth.host().trim_end_matches('.').is_empty()).then_some((auth, raw))
}

/// The host a route matches: lowercase, without port or trailing dot (copied only when
/// it has capitals).
fn route_host(auth: &Authority) -> Cow<'_, str> {
    let host = auth.host().trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The client of a connection, with what its requests' forwarding headers say about it
/// (formatted once per connection, not per request).
pub struct Client {
    pub addr: SocketAddr,
    /// Its address as X-Forwarded-For lists it.
    xff: HeaderValue,
    /// Its address as Forwarded's `for=` gives it (RFC 7239: IPv6 quoted, in brackets).
    node: String,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_canonical();
        let node = match ip {
            std::net::IpAddr::V4(a) => a.to_string(),
            std::net::IpAddr::V6(a) => format!("\"[{a}]\""),
        };
        Client {
            addr,
            xff: HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid value"),
            node,
        }
    }
}

/// Sets header `name` to `value`, after the value the request already had (a list).
fn append(h: &mut HeaderMap, name: HeaderName, value: std::fmt::Arguments<'_>) {
    use std::fmt::Write;
    let mut v = String::with_capacity(96);
    if let Some(old) = h.get(&name).and_then(|v| v.to_str().ok())
        && !old.is_empty()
    {
        v.push_str(old);
        v.push_str(", ");
    }
    // Writing into a String cannot fail.
    let _ = v.write_fmt(value);
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(name, v);
    }
}

/// The request a backend gets: origin-form URI, HTTP/1.1, hop-by-hop headers removed,
/// Host kept, X-Forwarded-For / X-Forwarded-Proto / Forwarded added.
fn upstream_head(
    method: Method,
    uri: &Uri,
    mut h: HeaderMap,
    host: &HeaderValue,
    client: &Client,
) -> (Method, Uri, HeaderMap) {
    strip_hop_by_hop(&mut h);
    h.insert(header::HOST, host.clone());
    // Most clients send none: then the connection's value serves as it is.
    if h.contains_key(X_FORWARDED_FOR) {
        let ip = client.xff.to_str().unwrap_or_default();
        append(&mut h, X_FORWARDED_FOR, format_args!("{ip}"));
    } else {
        h.insert(X_FORWARDED_FOR, client.xff.clone());
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    let host = host.to_str().unwrap_or("");
    let node = &client.node;
    // Quotes and backslashes would end or escape the quoted string: left out.
    let host_q: Cow<'_, str> = if host.contains(['"', '\\']) {
        Cow::Owned(host.replace(['"', '\\'], ""))
    } else {
        Cow::Borrowed(host)
    };
    append(
        &mut h,
        header::FORWARDED,
        format_args!("for={node};proto=https;host=\"{host_q}\""),
    );
    let uri = match uri.path_and_query() {
        Some(p) if p.as_str().starts_with('/') => Uri::from(p.clone()),
        _ => Uri::from_static("/"),
    };
    (method, uri, h)
}

fn build(head: (Method, Uri, HeaderMap), body: ProxyBody) -> Request<ProxyBody> {
    let mut r = Request::new(body);
    *r.method_mut() = head.0;
    *r.uri_mut() = head.1;
    *r.headers_mut() = head.2;
    *r.version_mut() = Version::HTTP_11;
    r
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn caused_by_body_limit(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The response body from a backend: keeps the request counted as outstanding until
/// it ends or is dropped, and returns the connection to the pool when it has ended.
struct Tracked {
    inner: Incoming,
    flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.flight.done(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.flight.done(),
            _ => {}
        }
        r.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's request body on its way to the backend, counted.
struct Counted {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
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

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What the access log needs to know of how a request was served.
#[derive(Debug, Default)]
pub struct Trace {
    /// The pool the route chose.
    pub pool: Option<String>,
    /// The backend that answered, and how long from sending to its response head.
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    /// Other backends tried before the one that answered.
    pub retries: u32,
    /// Bytes of the request body read from the client so far.
    pub bytes_in: Arc<AtomicU64>,
}

/// Serves one request: route, forward (retrying on another backend when nothing was
/// sent, or when the request is idempotent and has no body), answer; and how.
pub async fn handle(
    site: Arc<Site>,
    stats: &Stats,
    req: Request<Incoming>,
    client: &Client,
) -> (Response<ProxyBody>, Trace) {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let mut trace = Trace::default();
    // Boxed: the forwarding state is large, and h2 moves each stream's future into a
    // task of its own.
    let mut resp = Box::pin(forward(&site, stats, req, client, &mut trace)).await;
    stats.count_status(resp.status());
    if let Some(h) = &site.hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, h.clone());
    }
    (resp, trace)
}

async fn forward(
    site: &Site,
    stats: &Stats,
    req: Request<Incoming>,
    client: &Client,
    trace: &mut Trace,
) -> Response<ProxyBody> {
    let limits = &site.limits;
    let Some((auth, host_value)) = request_host(&req) else {
        return reply(StatusCode::BAD_REQUEST, "bad request: no valid Host");
    };
    let Some(pool) = site.router.route(&route_host(&auth), req.uri().path()) else {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: no route for this host and path",
        );
    };
    trace.pool = Some(pool.name.clone());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    }
    let (parts, body) = req.into_parts();
    // Replayable: idempotent and without a body (the body streams, it is not kept).
    let replayable = idempotent(&parts.method) && body.is_end_stream();
    let head = upstream_head(parts.method, &parts.uri, parts.headers, &host_value, client);
    let body: ProxyBody = if body.is_end_stream() {
        empty()
    } else {
        let counted = Counted {
            inner: body,
            bytes: trace.bytes_in.clone(),
        };
        Limited::new(counted, limits.max_body_bytes as usize).boxed_unsync()
    };
    // Kept for a replay only when one is allowed.
    let replay = replayable.then(|| head.clone());
    let mut pending = Some(build(head, body));
    // The backends tried so far: at most 1 + MAX_RETRIES (validated), on the stack.
    let mut tried = [0usize; 1 + MAX_RETRIES as usize];
    let mut failure = None;
    for n in 0..=limits.retries.min(MAX_RETRIES) as usize {
        let Some(i) = pool.pick(client.addr.ip(), &tried[..n]) else {
            break;
        };
        if n > 0 {
            stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        trace.retries = n as u32;
        tried[n] = i;
        let (mut flight, mut conn) = match pool.start(i, stats).await {
            Ok(x) => x,
            Err(e) => {
                warn!(pool = %pool.name, error = %e, "backend unusable, trying another");
                failure = Some(if e.is_timeout() {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                });
                continue;
            }
        };
        let Some(req) = pending.take() else { break };
        let sending = Instant::now();
        let sent = tokio::time::timeout(secs(limits.response_timeout), conn.try_send_request(req));
        match sent.await {
            Err(_) => {
                warn!(pool = %pool.name, backend = %flight.backend.addr, "backend response timed out");
                return reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: the backend did not answer in time",
                );
            }
            Ok(Ok(resp)) => {
                trace.upstream = Some(flight.backend.addr);
                trace.upstream_time = Some(sending.elapsed());
                pool.give_back(&mut flight, conn);
                return response(resp, flight);
            }
            Ok(Err(mut e)) => {
                if let Some(m) = e.take_message() {
                    debug!(backend = %flight.backend.addr, "request not sent, trying again");
                    pending = Some(m);
                    continue;
                }
                let err = e.into_error();
                if caused_by_body_limit(&err) {
                    return reply(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
                }
                warn!(pool = %pool.name, backend = %flight.backend.addr, error = %err, "backend failed");
                failure = Some(StatusCode::BAD_GATEWAY);
                if let Some(head) = &replay {
                    pending = Some(build(head.clone(), empty()));
                    continue;
                }
                break;
            }
        }
    }
    match failure {
        None => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable: no healthy backend",
        ),
        Some(StatusCode::GATEWAY_TIMEOUT) => reply(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway timeout: no backend answered in time",
        ),
        Some(_) => reply(StatusCode::BAD_GATEWAY, "bad gateway: the backend failed"),
    }
}

fn response(resp: Response<Incoming>, mut flight: InFlight) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    if body.is_end_stream() {
        flight.done();
    }
    Response::from_parts(
        parts,
        Tracked {
            inner: body,
            flight,
        }
        .boxed_unsync(),
    )
}

/// The plain-HTTP listener's answer: a permanent redirect to the same URL over https.
pub fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<http::uri::Authority>().ok())
    else {
        return reply(StatusCode::BAD_REQUEST, "bad request: no valid Host");
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = format!("https://{}{port}{path}", host.host());
    let mut r = reply(StatusCode::PERMANENT_REDIRECT, "moved to https");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => reply(StatusCode::BAD_REQUEST, "bad request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let cfg = HttpsConfig::from_toml(
            r#"
listen = ["127.0.0.1:1"]
default_cert = { chain = "x", key = "y" }
[[routes]]
pool = "any"
[[routes]]
host = "a.example"
pool = "a"
[[routes]]
host = "a.example"
path = "/api/"
pool = "a-api"
[[routes]]
host = "*.a.example"
pool = "wild"
[[routes]]
path = "/static"
pool = "static"
[[pools]]
name = "any"
backends = ["203.0.113.1:80"]
[[pools]]
name = "a"
backends = ["203.0.113.2:80"]
[[pools]]
name = "a-api"
backends = ["203.0.113.3:80"]
[[pools]]
name = "wild"
backends = ["203.0.113.4:80"]
[[pools]]
name = "static"
backends = ["203.0.113.5:80"]
"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        Router::new(
            &cfg,
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            None,
        )
        .unwrap()
    }

    #[test]
    fn routes_by_most_specific_host_then_longest_prefix() {
        let r = router();
        let to = |h: &str, p: &str| r.route(h, p).map(|p| p.name.clone()).unwrap();
        assert_eq!(to("a.example", "/"), "a");
        assert_eq!(to("a.example", "/api"), "a-api");
        assert_eq!(to("a.example", "/api/v1?x"), "a-api");
        assert_eq!(to("a.example", "/apix"), "a");
        assert_eq!(
            to("a.example", "/static/x"),
            "a",
            "a host route beats any-host"
        );
        assert_eq!(to("x.a.example", "/api"), "wild");
        assert_eq!(to("x.y.a.example", "/"), "any");
        assert_eq!(to("b.example", "/static/x.css"), "static");
        assert_eq!(to("b.example", "/"), "any");
    }

    #[test]
    fn forwarding_headers_are_added_and_hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let uri: Uri = "https://a.example:8443/p?q=1".parse().unwrap();
        let host = HeaderValue::from_static("a.example:8443");
        let (_, u, out) = upstream_head(
            Method::GET,
            &uri,
            h,
            &host,
            &Client::new("[2001:db8::2]:5000".parse().unwrap()),
        );
        assert_eq!(u, "/p?q=1");
        assert_eq!(out["host"], "a.example:8443");
        assert_eq!(out["x-forwarded-for"], "198.51.100.7, 2001:db8::2");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(
            out["forwarded"],
            "for=\"[2001:db8::2]\";proto=https;host=\"a.example:8443\""
        );
        assert_eq!(out["accept"], "*/*");
        for gone in ["connection", "x-secret", "keep-alive"] {
            assert!(!out.contains_key(gone), "{gone}");
        }
    }
}
