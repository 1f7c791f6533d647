//! The https service's configuration (`[tls]`): a plain serde struct
//! (`deny_unknown_fields` everywhere), so a larger TOML file can embed it, and its full
//! validation, the files it names included (loaded by [`tls_files`](super::tls_files)).
//!
//! Paths in it are relative to the file they were read from ([`HttpsConfig::resolve_paths`]).
//! Durations are seconds (fractions allowed).

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use super::access_log::{AccessLogConfig, AccessLogTarget};
use super::{
    access_log::writable,
    health::{HealthTable, health_check},
    report::{Report, locate, toml_error},
    tls_files,
    values::{count, seconds, socket_addrs, spanned_table_opt, table, table_opt, tables},
};
use crate::model::{health_check::HealthCheck, text::shown};

/// One https service: where it listens, its certificates, routes, pools and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [tls] table: listen, default_cert, certs, routes, pools, limits, ..."
)]
pub struct HttpsConfig {
    /// Addresses the TLS listener binds (e.g. `"192.0.2.1:443"`, `"[2001:db8::1]:443"`);
    /// under `xlb run`, each `[[service]]` with `mode = "https"` adds its own.
    #[serde(default, deserialize_with = "socket_addrs")]
    pub listen: Vec<SocketAddr>,
    /// Plain-HTTP listeners that answer every request with a redirect to https.
    #[serde(default, deserialize_with = "socket_addrs")]
    pub redirect_listen: Vec<SocketAddr>,
    /// Adds `Strict-Transport-Security` to every response when set.
    #[serde(default, deserialize_with = "table_opt")]
    pub hsts: Option<Hsts>,
    /// The certificate for clients that send no SNI name or one no other certificate has.
    #[serde(deserialize_with = "table")]
    pub default_cert: CertFiles,
    /// Certificates chosen by SNI name.
    #[serde(default, deserialize_with = "tables")]
    pub certs: Vec<NamedCert>,
    /// Seconds between checks of the certificate files for changes (0: never).
    #[serde(default = "default_cert_check", deserialize_with = "seconds")]
    pub cert_check_interval: f64,
    /// Host and path-prefix routes to pools: the most specific host wins (exact, then
    /// wildcard, then none), then the longest path prefix.
    #[serde(deserialize_with = "tables")]
    pub routes: Vec<Route>,
    #[serde(deserialize_with = "tables")]
    pub pools: Vec<PoolConfig>,
    #[serde(default, deserialize_with = "table")]
    pub limits: Limits,
    /// One record per request, to a file, stdout, syslog or only the exporter (none: no
    /// access log).
    #[serde(default, deserialize_with = "table_opt")]
    pub access_log: Option<AccessLogConfig>,
}

/// The most `limits.retries` can be (a request tries at most this many backends more).
pub const MAX_RETRIES: u32 = 10;

fn default_cert_check() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an hsts table: max_age, include_subdomains, preload"
)]
pub struct Hsts {
    #[serde(deserialize_with = "count")]
    pub max_age: u64,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

impl Hsts {
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// A PEM certificate chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a certificate table: chain and key (PEM files)"
)]
pub struct CertFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[tls.certs]] table: names, chain, key"
)]
pub struct NamedCert {
    /// SNI names served with this certificate: `a.example` or `*.a.example` (one label).
    pub names: Vec<String>,
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl NamedCert {
    pub fn files(&self) -> CertFiles {
        CertFiles {
            chain: self.chain.clone(),
            key: self.key.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[tls.routes]] table: host, path, pool"
)]
pub struct Route {
    /// `a.example`, `*.a.example`, or absent for any host.
    #[serde(default)]
    pub host: Option<String>,
    /// A path prefix, matched on segment boundaries (`/api` matches `/api` and
    /// `/api/x`, not `/apix`).
    #[serde(default = "default_path")]
    pub path: String,
    pub pool: String,
}

fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(
    rename_all = "snake_case",
    expecting = "a balance: \"least_outstanding\" or \"client_address\""
)]
pub enum Balance {
    /// The healthy backend with the fewest requests in flight.
    #[default]
    LeastOutstanding,
    /// Rendezvous hashing of the client's address: a client stays on its backend
    /// while that backend is healthy.
    ClientAddress,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[tls.pools]] table: name, backends, and its settings"
)]
pub struct PoolConfig {
    pub name: String,
    #[serde(deserialize_with = "socket_addrs")]
    pub backends: Vec<SocketAddr>,
    #[serde(default)]
    pub balance: Balance,
    /// Connect to the backends over TLS (verified against `ca` for `server_name`).
    #[serde(default)]
    pub upstream_tls: bool,
    /// PEM file of the CA certificates backends' certificates must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name the backends' certificates must hold (DNS name or IP address).
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate presented to the backends (mutual TLS).
    #[serde(default, deserialize_with = "table_opt")]
    pub client_cert: Option<CertFiles>,
    /// Consecutive connect failures after which a backend is taken out passively.
    #[serde(default = "default_max_fails", deserialize_with = "count")]
    pub max_fails: u32,
    /// Seconds a passively failed backend stays out.
    #[serde(default = "default_fail_timeout", deserialize_with = "seconds")]
    pub fail_timeout: f64,
    /// Active health checks of the backends: the keys of a layer-4 service's
    /// `[service.health]`, with the same validation and rise/fall semantics.
    #[serde(default, deserialize_with = "spanned_table_opt")]
    pub health: Option<Spanned<HealthTable>>,
}

fn default_max_fails() -> u32 {
    1
}
fn default_fail_timeout() -> f64 {
    10.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [tls.limits] table")]
pub struct Limits {
    /// Bytes of a request's header block (HTTP/1.1) or header list (h2): 431 above.
    #[serde(deserialize_with = "count")]
    pub max_header_bytes: usize,
    /// Bytes of a request body: 413 above.
    #[serde(deserialize_with = "count")]
    pub max_body_bytes: u64,
    /// Seconds for the TLS handshake and for each request's headers (slowloris).
    #[serde(deserialize_with = "seconds")]
    pub header_read_timeout: f64,
    /// Seconds a connection may pass without a byte read or written.
    #[serde(deserialize_with = "seconds")]
    pub idle_timeout: f64,
    /// Client connections open at once; further ones wait in the listen backlog.
    #[serde(deserialize_with = "count")]
    pub max_connections: usize,
    /// Seconds to connect to a backend (TCP and TLS).
    #[serde(deserialize_with = "seconds")]
    pub connect_timeout: f64,
    /// Seconds for a backend to start its response: 504 after.
    #[serde(deserialize_with = "seconds")]
    pub response_timeout: f64,
    /// Other backends tried when a backend fails and a retry is safe.
    #[serde(deserialize_with = "count")]
    pub retries: u32,
    /// Idle keep-alive connections kept per backend.
    #[serde(deserialize_with = "count")]
    pub max_idle_per_backend: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: 10.0,
            idle_timeout: 60.0,
            max_connections: 10_000,
            connect_timeout: 3.0,
            response_timeout: 30.0,
            retries: 2,
            max_idle_per_backend: 256,
        }
    }
}

/// Seconds from the configuration as a Duration (validated finite and positive).
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn check_secs(what: &str, s: f64) -> Result<()> {
    ensure!(
        s.is_finite() && s > 0.0 && s < 1e9,
        "{what} must be a positive number of seconds, not {s}"
    );
    Ok(())
}

/// A DNS name as used in SNI and Host: lowercase letters, digits, '-' and '.'.
pub fn check_dns_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= 253,
        "'{name}' is not a host name"
    );
    for label in name.split('.') {
        ensure!(
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-'),
            "'{name}' is not a host name (lowercase letters, digits, '-' and '.')"
        );
    }
    Ok(())
}

/// `a.example` or `*.a.example`.
pub fn check_host_pattern(name: &str) -> Result<()> {
    match name.strip_prefix("*.") {
        Some(rest) => check_dns_name(rest)
            .with_context(|| format!("'{name}': a wildcard is `*.` then a host name")),
        None => check_dns_name(name),
    }
}

impl HttpsConfig {
    /// Parses TOML text (not validated: see [`HttpsConfig::validate`]); an error is one
    /// line with its line, column and key.
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let e = &toml_error(Path::new(""), text, &e).0[0];
            anyhow!(
                "line {}, column {}: {}: {}",
                e.line,
                e.column,
                e.field,
                e.message
            )
        })
    }

    /// Reads, parses, resolves relative paths against the file's directory and
    /// validates (`xlb proxy`). An error is one line that names the file (with the line,
    /// column and key of a TOML error), its quoted input shown as [`shown`] shows it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = super::files::read_text(path)?;
        let mut cfg: HttpsConfig =
            toml::from_str(&text).map_err(|e| anyhow!("{}", toml_error(path, &text, &e)))?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        cfg.validate().and_then(|_| cfg.load_files()).map_err(|e| {
            anyhow!(
                "{}: {}",
                shown(&path.display().to_string()),
                shown(&format!("{e:#}"))
            )
        })?;
        Ok(cfg)
    }

    /// Makes every relative file path relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.default_cert.chain);
        fix(&mut self.default_cert.key);
        for c in &mut self.certs {
            fix(&mut c.chain);
            fix(&mut c.key);
        }
        if let Some(path) = self.access_log.as_mut().and_then(|a| a.path.as_mut()) {
            fix(path);
        }
        for p in &mut self.pools {
            if let Some(ca) = &mut p.ca {
                fix(ca);
            }
            if let Some(c) = &mut p.client_cert {
                fix(&mut c.chain);
                fix(&mut c.key);
            }
        }
    }

    /// Every rule the configuration must follow that can be checked without reading
    /// files (the files are checked when they are loaded, before anything is used).
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.listen.is_empty(), "listen: give at least one address");
        if let Some(a) = &self.access_log {
            a.validate().context("access_log")?;
        }
        let mut seen = HashSet::new();
        for a in self.listen.iter().chain(&self.redirect_listen) {
            ensure!(
                seen.insert(*a),
                "{a} is listed twice (listen, redirect_listen)"
            );
            check_listen(*a)?;
        }
        ensure!(
            self.cert_check_interval.is_finite() && self.cert_check_interval >= 0.0,
            "cert_check_interval must be 0 (off) or a positive number of seconds"
        );
        let mut names = HashSet::new();
        for c in &self.certs {
            ensure!(
                !c.names.is_empty(),
                "certs: {} has no names",
                c.chain.display()
            );
            for n in &c.names {
                check_host_pattern(n).context("certs")?;
                ensure!(names.insert(n.clone()), "certs: name {n} is given twice");
            }
        }
        let mut pools = HashSet::new();
        for p in &self.pools {
            p.validate().with_context(|| format!("pool '{}'", p.name))?;
            ensure!(
                pools.insert(p.name.as_str()),
                "pool '{}' is defined twice",
                p.name
            );
        }
        ensure!(!self.routes.is_empty(), "routes: give at least one route");
        let mut routes = HashSet::new();
        for r in &self.routes {
            if let Some(h) = &r.host {
                check_host_pattern(h).context("route host")?;
            }
            ensure!(
                r.path.starts_with('/') && !r.path.contains(['?', '#', ' ']),
                "route path '{}' must start with '/' (a path prefix, no query)",
                r.path
            );
            ensure!(
                pools.contains(r.pool.as_str()),
                "route {} {} names pool '{}', which is not defined",
                r.host.as_deref().unwrap_or("*"),
                r.path,
                r.pool
            );
            let key = (r.host.clone(), r.path.trim_end_matches('/').to_string());
            ensure!(
                routes.insert(key),
                "route {} {} is given twice",
                r.host.as_deref().unwrap_or("*"),
                r.path
            );
        }
        self.limits.validate().context("limits")?;
        if let Some(h) = &self.hsts {
            ensure!(h.max_age > 0, "hsts.max_age must be positive");
        }
        Ok(())
    }

    /// Loads and checks every file the configuration names (certificates, keys, the
    /// pools' CAs and client certificates) as the https service loads them; binds
    /// nothing.
    pub fn load_files(&self) -> Result<()> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        tls_files::CertStore::load(self, &provider)?;
        for p in self.pools.iter().filter(|p| p.upstream_tls) {
            tls_files::upstream_client(p, provider.clone())
                .map_err(|e| e.context(format!("pool '{}'", p.name)))?;
        }
        if let Some(path) = self.access_log.as_ref().and_then(|a| a.path.as_deref()) {
            writable(path).context("access_log")?;
        }
        Ok(())
    }

    /// Every file the configuration reads (watched for changes).
    pub fn cert_files(&self) -> Vec<PathBuf> {
        let mut v = vec![
            self.default_cert.chain.clone(),
            self.default_cert.key.clone(),
        ];
        for c in &self.certs {
            v.push(c.chain.clone());
            v.push(c.key.clone());
        }
        v
    }
}

/// A listen address a socket can be bound to: a port, and a unicast (or unspecified)
/// address; an IPv4-mapped IPv6 address is written as the IPv4 address it maps.
pub(crate) fn check_listen(a: SocketAddr) -> Result<()> {
    ensure!(a.port() != 0, "listen address {a} has port 0");
    let ip = a.ip();
    ensure!(
        !ip.is_multicast() && ip != Ipv4Addr::BROADCAST,
        "{a} is not a listen address: {ip} is a multicast or broadcast address"
    );
    if let std::net::IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        bail!(
            "{a} is an IPv4-mapped address: write it as {v4}:{}",
            a.port()
        );
    }
    Ok(())
}

impl HttpsConfig {
    /// The descriptors the service can hold at once: per client connection its own and
    /// one to a backend, the idle keep-alive connections of every pool, the listeners.
    pub fn descriptors(&self) -> usize {
        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        let l = &self.limits;
        l.max_connections.saturating_mul(2)
            + l.max_idle_per_backend.saturating_mul(backends)
            + self.listen.len()
            + self.redirect_listen.len()
    }
}

impl PoolConfig {
    fn validate(&self) -> Result<()> {
        ensure!(
            !self.name.is_empty()
                && self
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "a pool name is letters, digits, '-' and '_'"
        );
        ensure!(!self.backends.is_empty(), "give at least one backend");
        let mut seen = HashSet::new();
        for b in &self.backends {
            ensure!(seen.insert(b), "backend {b} is listed twice");
            ensure!(b.port() != 0, "backend {b} has port 0");
            // Loopback is a fine upstream for a user-space proxy; these never are.
            let ip = b.ip();
            ensure!(
                !ip.is_unspecified() && !ip.is_multicast() && ip != Ipv4Addr::BROADCAST,
                "backend {b} is not a host address (unspecified, multicast or broadcast)"
            );
        }
        if self.upstream_tls {
            ensure!(
                self.ca.is_some(),
                "upstream_tls needs `ca` (the CA the backends' certificates chain to)"
            );
            let name = self.server_name.as_deref().context(
                "upstream_tls needs `server_name` (the name the backends' certificates hold)",
            )?;
            if name.parse::<std::net::IpAddr>().is_err() {
                check_dns_name(name).context("server_name")?;
            }
        } else if self.ca.is_some() || self.server_name.is_some() || self.client_cert.is_some() {
            bail!("ca, server_name and client_cert apply only with upstream_tls = true");
        }
        ensure!(self.max_fails > 0, "max_fails must be at least 1");
        check_secs("fail_timeout", self.fail_timeout)?;
        self.health_check()?;
        Ok(())
    }

    /// The pool's active health check, if it has one.
    pub fn health_check(&self) -> Result<Option<HealthCheck>> {
        self.health
            .as_ref()
            .map(|h| h.get_ref().check("health").map_err(|e| anyhow!(e)))
            .transpose()
    }
}

impl Limits {
    fn validate(&self) -> Result<()> {
        ensure!(
            (1024..=1 << 20).contains(&self.max_header_bytes),
            "max_header_bytes must be within 1024..=1048576"
        );
        ensure!(self.max_body_bytes > 0, "max_body_bytes must be positive");
        ensure!(self.max_connections > 0, "max_connections must be positive");
        ensure!(
            self.max_idle_per_backend <= 100_000,
            "max_idle_per_backend must be at most 100000"
        );
        ensure!(
            self.retries <= MAX_RETRIES,
            "retries must be at most {MAX_RETRIES}"
        );
        check_secs("header_read_timeout", self.header_read_timeout)?;
        check_secs("idle_timeout", self.idle_timeout)?;
        check_secs("connect_timeout", self.connect_timeout)?;
        check_secs("response_timeout", self.response_timeout)
    }
}

/// `[tls]` of a whole configuration file, at `start`: its paths resolved against the
/// file's directory `dir`, the https services' addresses (`https`) added to where it
/// listens, validated with the files it names. None (errors reported) if refused.
pub(crate) fn section(
    r: &mut Report,
    t: toml::Spanned<HttpsConfig>,
    dir: &Path,
    https: &[(SocketAddr, Range<usize>)],
) -> Option<HttpsConfig> {
    let start = t.span().start;
    let mut tls = t.into_inner();
    tls.resolve_paths(dir);
    // The https services are where the listener binds, beside [tls] listen.
    for (addr, _) in https {
        if !tls.listen.contains(addr) {
            tls.listen.push(*addr);
        }
    }
    if tls.listen.is_empty() {
        r.at(
            start..start + 1,
            "tls.listen",
            "the https service listens nowhere: add a [[service]] with mode = \"https\", or [tls] listen = [\"ADDR:443\"]",
        );
        return None;
    }
    // The pools' health tables first, located field by field like a service's (the
    // spans inside [tls] are the file's); the section's own validation would only name
    // the first problem.
    let before = r.errors.len();
    for h in tls.pools.iter().filter_map(|p| p.health.as_ref()) {
        health_check(r, h.get_ref(), "tls.pools.health");
    }
    if r.errors.len() != before {
        return None;
    }
    match tls.validate().and_then(|_| tls.load_files()) {
        Ok(()) => Some(tls),
        Err(e) => {
            let msg = format!("{e:#}");
            r.at(locate(r.src, start, &msg), "tls", msg);
            None
        }
    }
}

/// An https service without `[tls]`.
pub(crate) fn missing(r: &mut Report, https: &[(SocketAddr, Range<usize>)]) {
    if let Some((_, span)) = https.first() {
        r.at(
            span.clone(),
            "service.mode",
            "an https service needs a [tls] section: its certificates, routes and pools",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
listen = ["192.0.2.1:443", "[2001:db8::1]:443"]
redirect_listen = ["192.0.2.1:80"]
hsts = { max_age = 31536000, include_subdomains = true }
default_cert = { chain = "default.pem", key = "default.key" }

[[certs]]
names = ["a.example", "*.a.example"]
chain = "a.pem"
key = "a.key"

[[routes]]
host = "a.example"
path = "/api"
pool = "api"

[[routes]]
pool = "web"

[[pools]]
name = "api"
backends = ["203.0.113.11:8080", "203.0.113.12:8080"]
balance = "client_address"

[[pools]]
name = "web"
backends = ["203.0.113.21:8443"]
upstream_tls = true
ca = "backend-ca.pem"
server_name = "web.internal"

[limits]
header_read_timeout = "5s"
"#;

    #[test]
    fn sample_parses_validates_and_resolves_paths() {
        let mut c = HttpsConfig::from_toml(SAMPLE).unwrap();
        c.resolve_paths(Path::new("/etc/xlb"));
        c.validate().unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.certs[0].chain, Path::new("/etc/xlb/a.pem"));
        assert_eq!(c.pools[0].balance, Balance::ClientAddress);
        assert_eq!(c.limits.header_read_timeout, 5.0);
        assert_eq!(c.limits.max_body_bytes, Limits::default().max_body_bytes);
        assert_eq!(
            c.hsts.unwrap().header_value(),
            "max-age=31536000; includeSubDomains"
        );
    }

    fn refused(edit: impl Fn(&str) -> String, want: &str) {
        let text = edit(SAMPLE);
        let err = HttpsConfig::from_toml(&text)
            .and_then(|c| c.validate())
            .expect_err(want);
        let msg = format!("{err:#}");
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        refused(|s| s.replace("balance =", "balanse ="), "unknown field");
        for (from, to, want) in [
            ("192.0.2.1:443", "224.0.0.1:443", "multicast or broadcast"),
            (
                "192.0.2.1:443",
                "255.255.255.255:443",
                "multicast or broadcast",
            ),
            ("192.0.2.1:443", "192.0.2.1:0", "has port 0"),
            (
                "192.0.2.1:443",
                "[::ffff:192.0.2.1]:443",
                "write it as 192.0.2.1:443",
            ),
            ("192.0.2.1:80", "224.0.0.1:80", "multicast or broadcast"),
        ] {
            refused(|s| s.replacen(from, to, 1), want);
        }
        for bad in [
            "0.0.0.0:8080",
            "224.0.0.1:8080",
            "255.255.255.255:8080",
            "[::]:8080",
        ] {
            refused(
                |s| s.replace("203.0.113.21:8443", bad),
                "is not a host address",
            );
        }
        refused(
            |s| s.replace("pool = \"web\"", "pool = \"nope\""),
            "not defined",
        );
        refused(
            |s| s.replace("path = \"/api\"", "path = \"api\""),
            "start with '/'",
        );
        refused(|s| s.replace("ca = \"backend-ca.pem\"\n", ""), "needs `ca`");
        refused(
            |s| {
                s.replace(
                    "server_name = \"web.internal\"",
                    "server_name = \"Bad Name\"",
                )
            },
            "not a host name",
        );
        refused(
            |s| s.replace("\"*.a.example\"", "\"a.*.example\""),
            "not a host name",
        );
        refused(
            |s| {
                s.replace(
                    "header_read_timeout = \"5s\"",
                    "header_read_timeout = \"0s\"",
                )
            },
            "positive number",
        );
        refused(
            |s| s.replace("\"203.0.113.12:8080\"", "\"203.0.113.11:8080\""),
            "listed twice",
        );
        refused(
            |s| s.replace("upstream_tls = true\n", ""),
            "only with upstream_tls",
        );
        refused(
            |s| {
                s.replace(
                    "redirect_listen = [\"192.0.2.1:80\"]",
                    "redirect_listen = [\"192.0.2.1:443\"]",
                )
            },
            "listed twice",
        );
    }
}
