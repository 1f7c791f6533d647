//! The configuration file (TOML): read, validated whole (every error names the file, the
//! line, the field and what is expected), and split into what it asks of the daemon
//! (interfaces, control socket, health checks, the https service, metrics) and the part
//! of the desired state it manages (`Projection`: policies, rules, services, backends).
//!
//! One module per section: `firewall` (its `[[firewall.limit]]` in `ratelimit`),
//! `services` (with `[service.health]` read by `health`), `https` (`[tls]`, its files loaded by `tls_files`); `raw` is the file as
//! written, `values` the value kinds, `report` the errors; `plan` is what a reload
//! applies.

pub mod access_log;
pub mod export;
pub mod files;
pub mod firewall;
pub mod flows;
pub mod health;
pub mod https;
pub mod plan;
pub mod ratelimit;
pub mod raw;
pub mod report;
pub mod services;
pub mod synflood;
pub mod tls_files;
pub mod values;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

pub use https::HttpsConfig;
pub use report::{ConfigError, ConfigErrors};
pub use values::{group_id, parse_duration};

use raw::{RawBalancer, RawConfig, RawControl, RawInterface, RawMetrics};
use report::{Report, line_col, toml_error};
use values::duration;

use crate::model::{
    desired::Projection,
    drain::{DEFAULT_DRAIN, MAX_DRAIN},
    health_check::HealthCheck,
    interface::{AttachMode, Interface, valid_ifname},
    rules::Match,
    services::Vip,
    synflood::SynProtection,
};

/// Where the Prometheus endpoint listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    At(SocketAddr),
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsListen::Off => f.write_str("off"),
            MetricsListen::At(a) => a.fmt(f),
        }
    }
}

/// Where `/metrics` listens when neither the file nor `--metrics` says.
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9100);

/// The `mode` of a service the daemon's https listener serves (TLS termination and the
/// HTTP proxy of `[tls]`) instead of the kernel's balancer.
pub const HTTPS_MODE: &str = "https";

/// A validated configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    /// The control socket's group (mode 0660 instead of 0600).
    pub group: Option<String>,
    pub interfaces: Vec<Interface>,
    pub projection: Projection,
    pub health: BTreeMap<Vip, HealthCheck>,
    /// The https service (`[tls]`: TLS termination and the HTTP proxy), its paths
    /// resolved against this file's directory.
    pub https: Option<HttpsConfig>,
    /// `[metrics] listen` (None: not in the file).
    pub metrics: Option<MetricsListen>,
    /// How long a backend removed from a service keeps its established flows.
    pub drain_timeout: Duration,
    /// `[export]`: logs sent over OTLP/HTTP (None: not in the file).
    pub export: Option<export::ExportConfig>,
    /// `[flows]`: layer-4 flow records (None: not in the file).
    pub flows: Option<flows::FlowsConfig>,
    /// The https services' SYN-flood protection (a layer-4 service's is in
    /// `projection`).
    pub https_syn: BTreeMap<SocketAddr, SynProtection>,
}

impl Config {
    /// Reads and validates a file. Every error found is reported, in file order.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = files::read_text(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message: e.why(),
            }])
        })?;
        Config::parse(&src, path)
    }

    /// Validates `src`, read from `path` (relative paths inside are relative to its
    /// directory). Checks what a file names on this machine too (group, TLS files).
    pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| toml_error(path, src, &e))?;
        let mut r = Report::new(src, path);
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let group = control(&mut r, raw.control);
        let interfaces = interfaces(&mut r, &raw.interface);
        let mut projection = Projection::default();
        if let Some(fw) = &raw.firewall {
            firewall::section(&mut r, fw, &mut projection);
        }
        let drain_timeout = balancer(&mut r, raw.balancer.as_ref());
        let services = services::section(&mut r, &raw.service, &mut projection);
        if let Some(fw) = &raw.firewall {
            ratelimit::section(&mut r, &fw.limit, &mut projection);
        }
        let https = match raw.tls {
            None => {
                https::missing(&mut r, &services.https);
                None
            }
            Some(t) => https::section(&mut r, t, dir, &services.https),
        };
        let metrics = raw.metrics.and_then(|m| metrics(&mut r, m));
        let export = raw.export.as_ref().and_then(|e| export::section(&mut r, e));
        let flows = raw.flows.as_ref().and_then(|f| flows::section(&mut r, f));
        let to_exporter = https
            .as_ref()
            .and_then(|h| h.access_log.as_ref())
            .is_some_and(|a| a.to == https::AccessLogTarget::Otlp);
        let exports_access = export
            .as_ref()
            .is_some_and(|e| e.streams.contains(&export::Stream::Access));
        if to_exporter && !exports_access && (raw.export.is_none() || export.is_some()) {
            r.at(
                report::locate(src, 0, "'otlp'"),
                "tls.access_log.to",
                "to = \"otlp\" needs an [export] whose streams include \"access\"",
            );
        }
        firewall_fits(&mut r, src, &projection);
        r.finish()?;
        Ok(Config {
            path: path.to_path_buf(),
            group,
            interfaces,
            projection,
            health: services.health,
            https,
            metrics,
            export,
            flows,
            drain_timeout,
            https_syn: services.https_syn,
        })
    }

    pub fn summary(&self) -> String {
        let backends: usize = self
            .projection
            .services
            .by_vip
            .values()
            .map(|s| s.backends.len())
            .sum();
        let n = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let limits = match self.projection.limits.len() {
            0 => String::new(),
            k => format!(", {}", n(k, "rate limit")),
        };
        // `xlb run` refuses a file with no interface unless --iface names one.
        let interfaces = match self.interfaces.len() {
            0 => "0 interfaces (xlb run needs --iface IF with this file)".to_string(),
            k => n(k, "interface"),
        };
        format!(
            "{interfaces}, {}, {}, {}, {}{limits}, tls {}, metrics {}",
            n(self.projection.rules.len(), "rule"),
            n(self.projection.services.by_vip.len(), "service"),
            n(backends, "backend"),
            n(self.health.len(), "health check"),
            if self.https.is_some() { "on" } else { "off" },
            match self.metrics_listen() {
                Some(a) if self.metrics.is_none() => format!("{a} (the default)"),
                Some(a) => a.to_string(),
                None => "off".to_string(),
            }
        )
    }

    /// Where `/metrics` listens for this file (without `--metrics`).
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        match self.metrics {
            Some(MetricsListen::At(a)) => Some(a),
            Some(MetricsListen::Off) => None,
            None => Some(DEFAULT_METRICS),
        }
    }
}

/// `[control]`: the socket's group, if it exists on this machine.
fn control(r: &mut Report, c: Option<RawControl>) -> Option<String> {
    let g = c?.group?;
    match group_id(g.get_ref()) {
        Ok(_) => Some(g.get_ref().clone()),
        Err(e) => {
            r.at(g.span(), "control.group", e);
            None
        }
    }
}

/// `[[interface]]`: names and XDP modes, each interface once.
fn interfaces(r: &mut Report, list: &[Spanned<RawInterface>]) -> Vec<Interface> {
    let mut out: Vec<Interface> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in list {
        let name = &i.get_ref().name;
        if let Err(e) = valid_ifname(name.get_ref()) {
            r.at(name.span(), "interface.name", e);
            continue;
        }
        if let Some(&prev) = seen.get(name.get_ref()) {
            r.at(
                name.span(),
                "interface.name",
                format!(
                    "interface '{}' is listed twice (also at line {}): list each once",
                    name.get_ref(),
                    line_col(r.src, prev).0
                ),
            );
            continue;
        }
        seen.insert(name.get_ref().clone(), name.span().start);
        let mode = match &i.get_ref().mode {
            None => AttachMode::Native,
            Some(m) => match AttachMode::from_str_opt(m.get_ref()) {
                Some(mode) => mode,
                None => {
                    r.at(
                        m.span(),
                        "interface.mode",
                        format!(
                            "'{}' is not an XDP mode: expected \"native\" or \"generic\"",
                            m.get_ref()
                        ),
                    );
                    continue;
                }
            },
        };
        out.push(Interface {
            name: name.get_ref().clone(),
            mode,
        });
    }
    out
}

/// `[balancer]`: the drain timeout.
fn balancer(r: &mut Report, b: Option<&RawBalancer>) -> Duration {
    let Some(v) = b.and_then(|b| b.drain_timeout.as_ref()) else {
        return DEFAULT_DRAIN;
    };
    let Some(d) = duration(r, v, "balancer.drain_timeout") else {
        return DEFAULT_DRAIN;
    };
    if d > MAX_DRAIN {
        r.at(
            v.span(),
            "balancer.drain_timeout",
            format!(
                "drain timeout '{}' is out of range: expected 0s to 1d",
                v.get_ref().0
            ),
        );
    }
    d
}

/// `[metrics] listen`: an address with a port, or "off".
/// What the file's firewall and services ask of each other and of the kernel's tables:
/// no backend the firewall denies, no more always-allow prefixes than a list holds.
fn firewall_fits(r: &mut Report, src: &str, p: &Projection) {
    let at = report::locate(src, 0, "'[firewall]'");
    for (b, why) in p.denied_backends() {
        r.at(
            report::locate(src, 0, &format!("'{b}'")),
            "service.backend",
            why,
        );
    }
    for v4 in [true, false] {
        let n = p
            .rules
            .keys()
            .filter(|m| matches!(m, Match::ExceptPrefix(x) if x.is_v4() == v4))
            .count();
        if n > lb_common::MAX_EXCEPT as usize {
            r.at(
                at.clone(),
                "firewall.except",
                format!(
                    "{n} {} always-allow prefixes: the kernel's list holds {}",
                    if v4 { "IPv4" } else { "IPv6" },
                    lb_common::MAX_EXCEPT
                ),
            );
        }
    }
}

fn metrics(r: &mut Report, m: RawMetrics) -> Option<MetricsListen> {
    let text = m.listen.get_ref();
    match text.parse::<SocketAddr>() {
        _ if text == "off" => Some(MetricsListen::Off),
        Ok(a) if a.port() != 0 => match https::check_listen(a) {
            Ok(()) => Some(MetricsListen::At(a)),
            Err(e) => {
                r.at(m.listen.span(), "metrics.listen", format!("{e:#}"));
                None
            }
        },
        _ => {
            r.at(
                m.listen.span(),
                "metrics.listen",
                format!(
                    "'{text}' is not a listen address: expected ADDR:PORT, e.g. \"127.0.0.1:9100\" or \"[::1]:9100\", or \"off\""
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
