//! The configuration file (TOML): read, validated whole (every error names the file, the
//! line, the field and what is expected), and split into what it asks of the daemon
//! (interfaces, control socket, health checks, TLS, metrics) and the part of the desired
//! state it manages (`Projection`: policies, rules, services and backends).
//!
//! Reloads apply diff(old file, new file) to the running desired state (`plan`), so
//! changes made with the CLI that the diff does not touch stay.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    datapath::AttachMode,
    rules::{self, Action, Match, PortSpec, Prefix, Proto, RuleSet, Target},
    services::{
        BackendAddr, DEFAULT_TCP_IDLE, DEFAULT_UDP_IDLE, MAX_IDLE, MAX_WEIGHT, Services, Vip,
    },
    tls::HttpsConfig,
    weights::{self, Flags},
};

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The TOML key path (`service.backend.weight`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )
    }
}

/// Every problem found in a file, in file order; one a line when displayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// An interface xlb attaches to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub mode: AttachMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection opens.
    Tcp,
    /// An HTTP GET answers with the expected status.
    Http,
    /// The same over TLS.
    Https,
    /// A TLS handshake completes.
    Tls,
}

impl CheckKind {
    const ALL: [CheckKind; 4] = [
        CheckKind::Tcp,
        CheckKind::Http,
        CheckKind::Https,
        CheckKind::Tls,
    ];

    /// The name a `[service.health]` table, the CLI and the state file give it (and
    /// its JSON, through serde's lowercase names).
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Tls => "tls",
        }
    }

    fn is_http(self) -> bool {
        matches!(self, CheckKind::Http | CheckKind::Https)
    }
}

/// A service's health check (HAProxy semantics: a backend is up after `rise`
/// consecutive successes, down after `fall` consecutive failures).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub kind: CheckKind,
    #[serde(serialize_with = "ser_ms")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_ms")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The port checked (None: the backend's own).
    pub port: Option<u16>,
    /// HTTP(S) only.
    pub path: String,
    pub expect_status: u16,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const MAX_RISE_FALL: i64 = 100;
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
pub const MAX_DRAIN: Duration = Duration::from_secs(86_400);

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

/// The part of the desired state a configuration file manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Projection {
    pub default_policy: Action,
    pub malformed_policy: Action,
    pub rules: BTreeMap<Match, Action>,
    pub services: Services,
    /// Backends that take flows only while every primary of their service is out.
    pub backups: Flags,
}

impl Default for Projection {
    fn default() -> Self {
        let r = RuleSet::default();
        Projection {
            default_policy: r.default_policy,
            malformed_policy: r.malformed_policy,
            rules: BTreeMap::new(),
            services: Services::default(),
            backups: Flags::new(),
        }
    }
}

/// A validated configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    /// The control socket's group (mode 0660 instead of 0600).
    pub group: Option<String>,
    pub interfaces: Vec<Interface>,
    pub projection: Projection,
    pub health: BTreeMap<Vip, HealthCheck>,
    /// The https service (TLS termination and the HTTP proxy): `crate::tls`'s own
    /// configuration, embedded; its paths resolved against this file's directory.
    pub tls: Option<HttpsConfig>,
    /// `[metrics] listen` (None: not in the file).
    pub metrics: Option<MetricsListen>,
    /// How long a backend removed from a service keeps its established flows.
    pub drain_timeout: Duration,
}

// ---------------------------------------------------------------------------------------
// The file as written (serde), before validation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    control: Option<RawControl>,
    #[serde(default)]
    interface: Vec<Spanned<RawInterface>>,
    firewall: Option<RawFirewall>,
    balancer: Option<RawBalancer>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    tls: Option<Spanned<HttpsConfig>>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Spanned<String>,
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirewall {
    default: Option<Spanned<String>>,
    malformed: Option<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    except: Vec<Spanned<String>>,
    ports: Option<RawPorts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalancer {
    drain_timeout: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    address: Spanned<String>,
    mode: Spanned<String>,
    affinity: Option<Spanned<String>>,
    echo: Option<bool>,
    tcp_idle: Option<Spanned<DurationText>>,
    udp_idle: Option<Spanned<DurationText>>,
    snat: Option<Spanned<String>>,
    health: Option<Spanned<HealthTable>>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    backup: Option<bool>,
}

/// The `mode` of a service the daemon's https listener serves (TLS termination and the
/// HTTP proxy of `[tls]`) instead of the kernel's balancer.
pub const HTTPS_MODE: &str = "https";

fn t_span(start: usize) -> Range<usize> {
    start..start + 1
}

/// An https service's listen address; its packets are only filtered by the program
/// (the local stack and the daemon's listener take them), so the keys of a layer-4
/// service are refused, and its backends are [tls]'s pools.
fn https_service(r: &mut Report, s: &RawService, vip: &Vip) -> Option<SocketAddr> {
    let mut ok = true;
    let mut refuse = |span: Range<usize>, field: &str, what: &str| {
        r.at(
            span,
            field,
            format!("an https service has no {what}: its backends, balancing and checks are in [tls] (pools, routes, pools.health)"),
        );
        ok = false;
    };
    if let Some(b) = s.backend.first() {
        refuse(b.span(), "service.backend", "[[service.backend]]");
    }
    if let Some(h) = &s.health {
        refuse(h.span(), "service.health", "[service.health]");
    }
    for (key, span) in [
        ("affinity", s.affinity.as_ref().map(|v| v.span())),
        ("snat", s.snat.as_ref().map(|v| v.span())),
        ("tcp_idle", s.tcp_idle.as_ref().map(|v| v.span())),
        ("udp_idle", s.udp_idle.as_ref().map(|v| v.span())),
    ] {
        if let Some(span) = span {
            refuse(span, &format!("service.{key}"), key);
        }
    }
    match (vip.port, vip.proto) {
        (Some(port), Proto::Tcp) if ok => Some(SocketAddr::new(vip.addr, port)),
        (Some(_), Proto::Tcp) => None,
        _ => {
            r.at(
                s.address.span(),
                "service.address",
                format!(
                    "an https service is one TCP port: e.g. \"{}\"",
                    SocketAddr::new(vip.addr, 443).to_string() + "/tcp"
                ),
            );
            None
        }
    }
}

/// A `health` table as written: a service's `[service.health]` and a TLS pool's
/// `health` share it (and its validation, [`HealthTable::check`]). The spans locate
/// errors in the file it was read from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthTable {
    kind: Spanned<String>,
    interval: Option<Spanned<DurationText>>,
    timeout: Option<Spanned<DurationText>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    port: Option<Spanned<i64>>,
    path: Option<Spanned<String>>,
    expect_status: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

/// A duration as written: a string with a unit (`"2s"`); numbers are refused with a
/// message that says so.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"2s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DurationText, E> {
                Ok(DurationText(s.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    "{n} has no unit: write a duration with a unit, e.g. \"{n}s\" or \"{n}ms\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `500ms`, `2s`, `5m`, `2h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "'{s}' is not a duration: expected a whole number with a unit (ms, s, m, h, d), e.g. \"2s\" or \"500ms\""
        )
    };
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(bad)
}

// ---------------------------------------------------------------------------------------
// Locations.

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// The TOML key path at `offset`, for errors from the TOML reader: the nearest table
/// header above it and the key assigned on its line (or above, inside a multi-line array).
fn field_at(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
    let mut key: Option<String> = None;
    let mut header: Option<String> = None;
    for line in src[..end].lines().rev() {
        let t = line.trim();
        if t.starts_with('[') {
            header = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            break;
        }
        if key.is_none()
            && let Some((k, _)) = t.split_once('=')
        {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                key = Some(k.to_string());
            }
        }
    }
    match (header, key) {
        (Some(h), Some(k)) => format!("{h}.{k}"),
        (Some(h), None) => h,
        (None, Some(k)) => k,
        (None, None) => "(top level)".into(),
    }
}

/// Collects errors with their byte spans; turned into `ConfigErrors` at the end.
struct Report<'a> {
    src: &'a str,
    file: &'a Path,
    errors: Vec<(usize, String, String)>,
}

impl Report<'_> {
    fn at(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        self.errors
            .push((span.start, field.to_string(), message.into()));
    }

    fn finish(mut self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(());
        }
        self.errors.sort_by_key(|e| e.0);
        Err(ConfigErrors(
            self.errors
                .into_iter()
                .map(|(off, field, message)| {
                    let (line, column) = line_col(self.src, off);
                    ConfigError {
                        file: self.file.to_path_buf(),
                        line,
                        column,
                        field,
                        message,
                    }
                })
                .collect(),
        ))
    }
}

fn one_error(file: &Path, src: &str, offset: usize, field: &str, message: String) -> ConfigErrors {
    let mut r = Report {
        src,
        file,
        errors: Vec::new(),
    };
    r.at(offset..offset, field, message);
    r.finish().unwrap_err()
}

// ---------------------------------------------------------------------------------------
// Validation.

fn action(r: &mut Report, v: &Option<Spanned<String>>, field: &str, default: Action) -> Action {
    let Some(v) = v else { return default };
    match v.get_ref().as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            r.at(
                v.span(),
                field,
                format!("'{other}' is not an action: expected \"allow\" or \"deny\""),
            );
            default
        }
    }
}

fn int_in(
    r: &mut Report,
    v: &Option<Spanned<i64>>,
    field: &str,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Option<i64> {
    let v = v.as_ref()?;
    let n = *v.get_ref();
    if range.contains(&n) {
        Some(n)
    } else {
        r.at(
            v.span(),
            field,
            format!(
                "{what} {n} is out of range: expected {} to {}",
                range.start(),
                range.end()
            ),
        );
        None
    }
}

fn duration(r: &mut Report, v: &Spanned<DurationText>, field: &str) -> Option<Duration> {
    match parse_duration(&v.get_ref().0) {
        Ok(d) => Some(d),
        Err(e) => {
            r.at(v.span(), field, e);
            None
        }
    }
}

fn idle(r: &mut Report, v: &Option<Spanned<DurationText>>, field: &str, default: u32) -> u32 {
    let Some(v) = v else { return default };
    let Some(d) = duration(r, v, field) else {
        return default;
    };
    if d.subsec_millis() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_IDLE as u64 {
        r.at(
            v.span(),
            field,
            format!(
                "idle timeout '{}' is out of range: expected whole seconds from 1s to {}s (7d)",
                v.get_ref().0,
                MAX_IDLE
            ),
        );
        return default;
    }
    d.as_secs() as u32
}

fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "'{name}' is not an interface name: expected 1 to 15 characters"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'{name}' is not an interface name: no '/', ':', spaces, '.' or '..'"
        ));
    }
    Ok(())
}

/// Where in the section starting at `from` an error message points: the first of the
/// values it quotes (or the file names of paths it mentions) found there, else `from`.
fn locate(src: &str, from: usize, msg: &str) -> Range<usize> {
    let mut tokens: Vec<String> = Vec::new();
    for q in ['\'', '"', '`'] {
        tokens.extend(msg.split(q).skip(1).step_by(2).map(str::to_string));
    }
    for word in msg.split_whitespace() {
        let word = word.trim_matches(|c: char| c == ':' || c == ',' || c == '(' || c == ')');
        if word.contains('/')
            && let Some(name) = Path::new(word).file_name()
        {
            tokens.push(name.to_string_lossy().into_owned());
        }
    }
    tokens
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| find_value(src, from, t))
        .find(|r| r.start != from.min(src.len()))
        .unwrap_or(from..from)
}

/// The span of the first occurrence of `needle` (quoted) at or after `from`: where a
/// value of a plain (span-less) section is written.
fn find_value(src: &str, from: usize, needle: &str) -> Range<usize> {
    let quoted = format!("\"{needle}\"");
    let from = from.min(src.len());
    match src[from..]
        .find(&quoted)
        .or_else(|| src[from..].find(needle))
    {
        Some(i) => from + i..from + i + needle.len(),
        None => from..from,
    }
}

/// The numeric id of a group name (or a number), if it exists.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).map_err(|_| format!("'{name}' is not a group name"))?;
    // SAFETY: getgrnam_r writes into the buffers given; a null result means not found.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut out: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out);
        if rc == 0 && !out.is_null() {
            return Ok(grp.gr_gid);
        }
    }
    Err(format!(
        "there is no group '{name}' on this machine: create it (groupadd {name}) or name an existing group"
    ))
}

impl Config {
    /// Reads and validates a file. Every error found is reported, in file order.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        Config::parse(&src, path)
    }

    /// Validates `src`, read from `path` (relative paths inside are relative to its
    /// directory). Checks what a file names on this machine too (group, TLS files).
    pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| {
            let off = e.span().map_or(0, |s| s.start);
            one_error(path, src, off, &field_at(src, off), e.message().to_string())
        })?;
        let mut r = Report {
            src,
            file: path,
            errors: Vec::new(),
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));

        let group = raw
            .control
            .and_then(|c| c.group)
            .and_then(|g| match group_id(g.get_ref()) {
                Ok(_) => Some(g.get_ref().clone()),
                Err(e) => {
                    r.at(g.span(), "control.group", e);
                    None
                }
            });

        let mut interfaces: Vec<Interface> = Vec::new();
        let mut seen_if: HashMap<String, usize> = HashMap::new();
        for i in &raw.interface {
            let name = &i.get_ref().name;
            if let Err(e) = valid_ifname(name.get_ref()) {
                r.at(name.span(), "interface.name", e);
                continue;
            }
            if let Some(&prev) = seen_if.get(name.get_ref()) {
                r.at(
                    name.span(),
                    "interface.name",
                    format!(
                        "interface '{}' is listed twice (also at line {}): list each once",
                        name.get_ref(),
                        line_col(src, prev).0
                    ),
                );
                continue;
            }
            seen_if.insert(name.get_ref().clone(), name.span().start);
            let mode = match &i.get_ref().mode {
                None => AttachMode::Native,
                Some(m) => {
                    match m.get_ref().as_str() {
                        "native" => AttachMode::Native,
                        "generic" => AttachMode::Generic,
                        other => {
                            r.at(
                            m.span(),
                            "interface.mode",
                            format!("'{other}' is not an XDP mode: expected \"native\" or \"generic\""),
                        );
                            continue;
                        }
                    }
                }
            };
            interfaces.push(Interface {
                name: name.get_ref().clone(),
                mode,
            });
        }

        let mut projection = Projection::default();
        if let Some(fw) = &raw.firewall {
            projection.default_policy =
                action(&mut r, &fw.default, "firewall.default", Action::Allow);
            projection.malformed_policy =
                action(&mut r, &fw.malformed, "firewall.malformed", Action::Deny);
            let mut seen: HashMap<Match, usize> = HashMap::new();
            let mut add = |r: &mut Report, m: Match, a: Action, span: Range<usize>, field: &str| {
                if let Some(&prev) = seen.get(&m) {
                    r.at(
                        span,
                        field,
                        format!(
                            "{} {m} is listed twice (also at line {}): list each once",
                            m.kind(),
                            line_col(src, prev).0
                        ),
                    );
                    return;
                }
                seen.insert(m, span.start);
                projection.rules.insert(m, a);
            };
            for (list, a, field) in [
                (&fw.deny, Action::Deny, "firewall.deny"),
                (&fw.allow, Action::Allow, "firewall.allow"),
            ] {
                for v in list {
                    let s = v.get_ref();
                    if s.ends_with("/tcp") || s.ends_with("/udp") {
                        r.at(
                            v.span(),
                            field,
                            format!("'{s}' is a port spec: put port rules in [firewall.ports]"),
                        );
                        continue;
                    }
                    match s.parse::<Prefix>() {
                        Ok(p) => add(&mut r, Match::Prefix(p), a, v.span(), field),
                        Err(e) => r.at(v.span(), field, e.to_string()),
                    }
                }
            }
            if let Some(ports) = &fw.ports {
                for (list, a, field) in [
                    (&ports.deny, Action::Deny, "firewall.ports.deny"),
                    (&ports.allow, Action::Allow, "firewall.ports.allow"),
                ] {
                    for v in list {
                        match v.get_ref().parse::<PortSpec>() {
                            Ok(p) => add(&mut r, Match::Port(p), a, v.span(), field),
                            Err(e) => r.at(v.span(), field, e.to_string()),
                        }
                    }
                }
            }
            for v in &fw.except {
                match rules::parse_target(v.get_ref()) {
                    Ok(Target::Prefix(p)) => add(
                        &mut r,
                        Match::ExceptPrefix(p),
                        Action::Allow,
                        v.span(),
                        "firewall.except",
                    ),
                    Ok(Target::Port(p)) => add(
                        &mut r,
                        Match::ExceptPort(p),
                        Action::Allow,
                        v.span(),
                        "firewall.except",
                    ),
                    Err(e) => r.at(v.span(), "firewall.except", e.to_string()),
                }
            }
        }

        let mut drain_timeout = crate::drain::DEFAULT_DRAIN;
        if let Some(v) = raw.balancer.as_ref().and_then(|b| b.drain_timeout.as_ref())
            && let Some(d) = duration(&mut r, v, "balancer.drain_timeout")
        {
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
            drain_timeout = d;
        }

        let mut health = BTreeMap::new();
        // The https services' addresses (with their `mode` spans): the [tls] listener's.
        let mut https: Vec<(SocketAddr, Range<usize>)> = Vec::new();
        let mut seen_vip: HashMap<Vip, usize> = HashMap::new();
        let mut backends_total = 0usize;
        for svc in &raw.service {
            let s = svc.get_ref();
            let vip: Vip = match s.address.get_ref().parse() {
                Ok(v) => v,
                Err(e) => {
                    r.at(s.address.span(), "service.address", e.to_string());
                    continue;
                }
            };
            if let Some(&prev) = seen_vip.get(&vip) {
                r.at(
                    s.address.span(),
                    "service.address",
                    format!(
                        "service {vip} is defined twice (also at line {}): define each once",
                        line_col(src, prev).0
                    ),
                );
                continue;
            }
            seen_vip.insert(vip, s.address.span().start);
            if s.mode.get_ref() == HTTPS_MODE {
                if let Some(addr) = https_service(&mut r, s, &vip) {
                    https.push((addr, s.mode.span()));
                }
                continue;
            }
            if seen_vip.len() >= lb_common::MAX_SERVICES as usize {
                r.at(
                    s.address.span(),
                    "service",
                    format!("too many services: at most {}", lb_common::MAX_SERVICES - 1),
                );
                continue;
            }
            let mode = match s.mode.get_ref().parse() {
                Ok(m) => m,
                Err(e) => {
                    r.at(s.mode.span(), "service.mode", format!("{e}"));
                    continue;
                }
            };
            let affinity = match &s.affinity {
                None => false,
                Some(a) => match a.get_ref().as_str() {
                    "none" => false,
                    "source" => true,
                    other => {
                        r.at(
                            a.span(),
                            "service.affinity",
                            format!(
                                "'{other}' is not an affinity: expected \"none\" or \"source\""
                            ),
                        );
                        false
                    }
                },
            };
            let tcp = idle(&mut r, &s.tcp_idle, "service.tcp_idle", DEFAULT_TCP_IDLE);
            let udp = idle(&mut r, &s.udp_idle, "service.udp_idle", DEFAULT_UDP_IDLE);
            let snat = match &s.snat {
                None => None,
                Some(a) => match a.get_ref().parse::<std::net::IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        r.at(
                            a.span(),
                            "service.snat",
                            format!(
                                "'{}' is not an address: expected e.g. \"203.0.113.1\" or \"2001:db8::1\"",
                                a.get_ref()
                            ),
                        );
                        continue;
                    }
                },
            };
            let services = &mut projection.services;
            if let Err(e) = services
                .add_service(vip, mode, affinity, s.echo.unwrap_or(true))
                .and_then(|_| services.set_idle(&vip, Some(tcp), Some(udp)))
            {
                r.at(s.address.span(), "service", e.to_string());
                continue;
            }
            if let Err(e) = services.set_snat(&vip, snat) {
                let span = s.snat.as_ref().map_or(s.mode.span(), |a| a.span());
                let field = if s.snat.is_some() {
                    "service.snat"
                } else {
                    "service.mode"
                };
                // The CLI's wording names its flag; the file's key is `snat`.
                r.at(span, field, e.to_string().replace("--snat", "snat"));
                services.by_vip.remove(&vip);
                continue;
            }
            for b in &s.backend {
                let b = b.get_ref();
                let addr: BackendAddr = match b.address.get_ref().parse() {
                    Ok(a) => a,
                    Err(e) => {
                        r.at(b.address.span(), "service.backend.address", e.to_string());
                        continue;
                    }
                };
                let weight = match &b.weight {
                    None => 1,
                    Some(_) => match int_in(
                        &mut r,
                        &b.weight,
                        "service.backend.weight",
                        1..=MAX_WEIGHT as i64,
                        "weight",
                    ) {
                        Some(w) => w as u32,
                        None => continue,
                    },
                };
                let addr = match services.add_backend(&vip, addr, weight) {
                    Ok(a) => a,
                    Err(e) => {
                        r.at(b.address.span(), "service.backend.address", e.to_string());
                        continue;
                    }
                };
                if b.backup == Some(true) {
                    projection.backups.insert((vip, addr));
                }
                backends_total += 1;
                if backends_total >= lb_common::MAX_BACKENDS as usize {
                    r.at(
                        b.address.span(),
                        "service.backend",
                        format!("too many backends: at most {}", lb_common::MAX_BACKENDS - 1),
                    );
                }
            }
            if let Some(h) = &s.health {
                if h.get_ref().port.is_none() && vip.port.is_none() {
                    r.at(
                        h.span(),
                        "service.health.port",
                        format!(
                            "service {vip} balances every port: give the check a port (port = 80)"
                        ),
                    );
                }
                if let Some(check) = health_check(&mut r, h.get_ref(), "service.health") {
                    health.insert(vip, check);
                }
            }
        }

        if raw.tls.is_none()
            && let Some((_, span)) = https.first()
        {
            r.at(
                span.clone(),
                "service.mode",
                "an https service needs a [tls] section: its certificates, routes and pools",
            );
        }
        let tls = raw.tls.and_then(|t| {
            let start = t.span().start;
            let mut tls = t.into_inner();
            tls.resolve_paths(dir);
            // The https services are where the listener binds, beside [tls] listen.
            for (addr, _) in &https {
                if !tls.listen.contains(addr) {
                    tls.listen.push(*addr);
                }
            }
            if tls.listen.is_empty() {
                r.at(
                    t_span(start),
                    "tls.listen",
                    "the https service listens nowhere: add a [[service]] with mode = \"https\", or [tls] listen = [\"ADDR:443\"]",
                );
                return None;
            }
            // The pools' health tables first, located field by field like a service's
            // (the spans inside [tls] are the file's); the section's own validation
            // would only name the first problem.
            let before = r.errors.len();
            for h in tls.pools.iter().filter_map(|p| p.health.as_ref()) {
                health_check(&mut r, h.get_ref(), "tls.pools.health");
            }
            if r.errors.len() != before {
                return None;
            }
            // Everything the https service checks, files included (nothing is bound).
            let checked = tls
                .validate()
                .and_then(|_| crate::tls::HttpsProxy::new(tls.clone()).map(|_| ()));
            match checked {
                Ok(()) => Some(tls),
                Err(e) => {
                    let msg = format!("{e:#}");
                    r.at(locate(src, start, &msg), "tls", msg);
                    None
                }
            }
        });

        let metrics = raw.metrics.and_then(|m| match m.listen.get_ref().parse::<SocketAddr>() {
            _ if m.listen.get_ref() == "off" => Some(MetricsListen::Off),
            Ok(a) if a.port() != 0 => Some(MetricsListen::At(a)),
            _ => {
                r.at(
                    m.listen.span(),
                    "metrics.listen",
                    format!(
                        "'{}' is not a listen address: expected ADDR:PORT, e.g. \"127.0.0.1:9100\" or \"[::1]:9100\", or \"off\"",
                        m.listen.get_ref()
                    ),
                );
                None
            }
        });

        r.finish()?;
        Ok(Config {
            path: path.to_path_buf(),
            group,
            interfaces,
            projection,
            health,
            tls,
            metrics,
            drain_timeout,
        })
    }

    /// One line saying what the file holds.
    pub fn summary(&self) -> String {
        let backends: usize = self
            .projection
            .services
            .by_vip
            .values()
            .map(|s| s.backends.len())
            .sum();
        let n = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}, {}, {}, {}, tls {}, metrics {}",
            n(self.interfaces.len(), "interface"),
            n(self.projection.rules.len(), "rule"),
            n(self.projection.services.by_vip.len(), "service"),
            n(backends, "backend"),
            n(self.health.len(), "health check"),
            if self.tls.is_some() { "on" } else { "off" },
            self.metrics.map_or("off".to_string(), |m| m.to_string())
        )
    }
}

impl HealthTable {
    /// The check the table describes, or its first problem as `FIELD: MESSAGE` (fields
    /// under `section`, e.g. "tls.pools.health"), for callers without the file's text.
    pub fn check(&self, section: &str) -> Result<HealthCheck, String> {
        let mut r = Report {
            src: "",
            file: Path::new(""),
            errors: Vec::new(),
        };
        health_check(&mut r, self, section).ok_or_else(|| {
            r.errors.sort_by_key(|e| e.0);
            r.errors
                .first()
                .map_or_else(String::new, |(_, field, msg)| format!("{field}: {msg}"))
        })
    }
}

/// Validates a health table whose fields are named under `section` ("service.health",
/// "tls.pools.health"); None when it has errors (reported into `r`).
fn health_check(r: &mut Report, h: &HealthTable, section: &str) -> Option<HealthCheck> {
    let field = |k: &str| format!("{section}.{k}");
    let written = h.kind.get_ref().as_str();
    let kind = match CheckKind::ALL.into_iter().find(|k| k.name() == written) {
        Some(k) => k,
        None => {
            r.at(
                h.kind.span(),
                &field("kind"),
                format!("'{written}' is not a check kind: expected \"tcp\", \"http\", \"https\" or \"tls\""),
            );
            return None;
        }
    };
    let before = r.errors.len();
    let interval = match &h.interval {
        None => DEFAULT_INTERVAL,
        Some(v) => {
            let d = duration(r, v, &field("interval")).unwrap_or(DEFAULT_INTERVAL);
            if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
                r.at(
                    v.span(),
                    &field("interval"),
                    format!(
                        "interval '{}' is out of range: expected 100ms to 1h",
                        v.get_ref().0
                    ),
                );
            }
            d
        }
    };
    let timeout = match &h.timeout {
        None => DEFAULT_TIMEOUT.min(interval),
        Some(v) => {
            let d = duration(r, v, &field("timeout")).unwrap_or(DEFAULT_TIMEOUT);
            if d.is_zero() || d > interval {
                r.at(
                    v.span(),
                    &field("timeout"),
                    format!(
                        "timeout '{}' is out of range: expected more than 0 and at most the interval ({} ms)",
                        v.get_ref().0,
                        interval.as_millis()
                    ),
                );
            }
            d
        }
    };
    let rise = int_in(r, &h.rise, &field("rise"), 1..=MAX_RISE_FALL, "rise")
        .unwrap_or(DEFAULT_RISE as i64) as u32;
    let fall = int_in(r, &h.fall, &field("fall"), 1..=MAX_RISE_FALL, "fall")
        .unwrap_or(DEFAULT_FALL as i64) as u32;
    let port = int_in(r, &h.port, &field("port"), 1..=65535, "port").map(|p| p as u16);
    for (set, key) in [
        (h.path.as_ref().map(|p| p.span()), "path"),
        (h.expect_status.as_ref().map(|p| p.span()), "expect_status"),
    ] {
        if let Some(s) = set
            && !kind.is_http()
        {
            r.at(
                s,
                &field(key),
                format!("only http and https checks have {key}: remove it or use kind = \"http\""),
            );
        }
    }
    let path = match &h.path {
        None => "/".to_string(),
        Some(p) => {
            let s = p.get_ref();
            if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                r.at(
                    p.span(),
                    &field("path"),
                    format!("'{s}' is not a request path: expected one starting with '/' and without spaces"),
                );
            }
            s.clone()
        }
    };
    let expect_status = int_in(
        r,
        &h.expect_status,
        &field("expect_status"),
        100..=599,
        "status",
    )
    .unwrap_or(200) as u16;
    (r.errors.len() == before).then_some(HealthCheck {
        kind,
        interval,
        timeout,
        rise,
        fall,
        port,
        path,
        expect_status,
    })
}

/// The keys of a health check's word form (`kind=http interval=2s ...`: the CLI's and
/// the state file's), those of a `[service.health]` table; the integer ones are written
/// as numbers in the table, the others as strings.
const CHECK_KEYS: [&str; 8] = [
    "kind",
    "interval",
    "timeout",
    "rise",
    "fall",
    "port",
    "path",
    "expect_status",
];
const CHECK_INT_KEYS: [&str; 4] = ["rise", "fall", "port", "expect_status"];

impl HealthCheck {
    /// A check from `key=value` pairs, with the defaults, limits and messages of a
    /// `[service.health]` table (it is read as one); errors name `section.key`.
    pub fn from_words<'a>(
        words: impl IntoIterator<Item = (&'a str, &'a str)>,
        section: &str,
    ) -> Result<HealthCheck, String> {
        let mut table = toml::Table::new();
        for (k, v) in words {
            if !CHECK_KEYS.contains(&k) {
                return Err(format!(
                    "{section}: '{k}' is not a health-check setting (expected one of {})",
                    CHECK_KEYS.join(", ")
                ));
            }
            let value = if CHECK_INT_KEYS.contains(&k) {
                toml::Value::Integer(
                    v.parse()
                        .map_err(|_| format!("{section}.{k}: '{v}' is not a whole number"))?,
                )
            } else {
                toml::Value::String(v.to_string())
            };
            if table.insert(k.to_string(), value).is_some() {
                return Err(format!("{section}.{k}: given twice"));
            }
        }
        if !table.contains_key("kind") {
            return Err(format!(
                "{section}: no kind: expected tcp, http, https or tls"
            ));
        }
        let text = toml::to_string(&table).map_err(|e| format!("{section}: {e}"))?;
        let raw: HealthTable = toml::from_str(&text).map_err(|e| format!("{section}: {e}"))?;
        raw.check(section)
    }

    /// The `key=value` words of this check (every setting, so a reader needs no
    /// defaults): `from_words` reads them back.
    pub fn words(&self) -> Vec<String> {
        let mut w = vec![
            format!("kind={}", self.kind.name()),
            format!("interval={}ms", self.interval.as_millis()),
            format!("timeout={}ms", self.timeout.as_millis()),
            format!("rise={}", self.rise),
            format!("fall={}", self.fall),
        ];
        if let Some(p) = self.port {
            w.push(format!("port={p}"));
        }
        if self.kind.is_http() {
            w.push(format!("path={}", self.path));
            w.push(format!("expect_status={}", self.expect_status));
        }
        w
    }
}

// ---------------------------------------------------------------------------------------
// Reloads: diff(old file, new file) applied to the running desired state.

/// One rule edit of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOp {
    Upsert(Match, Action),
    /// Removes the rule if it is there (the CLI may have removed it already).
    Remove(Match),
}

/// What applying a new file to the running desired state does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub rule_ops: Vec<RuleOp>,
    pub default_policy: Action,
    pub malformed_policy: Action,
    /// The services after the plan, and their backups.
    pub services: Services,
    pub backups: Flags,
}

/// diff(`base`, `new`) applied to the running state (`rules`, `services`): what the new
/// file added or changed is set, what it removed is removed, everything else (CLI
/// changes included) stays. `plan(r, s, x, x)` changes nothing.
pub fn plan(
    rules: &RuleSet,
    services: &Services,
    backups: &Flags,
    base: &Projection,
    new: &Projection,
) -> Result<Plan, String> {
    let mut rule_ops = Vec::new();
    for m in base.rules.keys() {
        if !new.rules.contains_key(m) && rules.get(m).is_some() {
            rule_ops.push(RuleOp::Remove(*m));
        }
    }
    for (m, a) in &new.rules {
        if base.rules.get(m) != Some(a) && rules.get(m).map(|r| r.action) != Some(*a) {
            rule_ops.push(RuleOp::Upsert(*m, *a));
        }
    }
    let pick = |b: Action, n: Action, cur: Action| if b != n { n } else { cur };
    let default_policy = pick(
        base.default_policy,
        new.default_policy,
        rules.default_policy,
    );
    let malformed_policy = pick(
        base.malformed_policy,
        new.malformed_policy,
        rules.malformed_policy,
    );

    let mut next = services.clone();
    for vip in base.services.by_vip.keys() {
        if !new.services.by_vip.contains_key(vip) {
            next.by_vip.remove(vip);
        }
    }
    for (vip, n) in &new.services.by_vip {
        let b = base.services.by_vip.get(vip);
        if b == Some(n) {
            continue;
        }
        // Settings from the file; backends: the running ones with the file's changes.
        let mut backends = match (next.by_vip.get(vip), b) {
            (None, _) => n.backends.clone(),
            (Some(cur), None) => {
                let mut m = cur.backends.clone();
                m.extend(n.backends.iter().map(|(k, v)| (*k, *v)));
                m
            }
            (Some(cur), Some(b)) => {
                let mut m = cur.backends.clone();
                for k in b.backends.keys() {
                    if !n.backends.contains_key(k) {
                        m.remove(k);
                    }
                }
                for (k, w) in &n.backends {
                    if b.backends.get(k) != Some(w) {
                        m.insert(*k, *w);
                    }
                }
                m
            }
        };
        // Every backend must fit the (possibly new) settings: rebuild through the checks.
        let mut check = Services::default();
        let mut conf = n.clone();
        conf.backends.clear();
        // A check set with the CLI stays (the file's own [service.health] wins anyway).
        conf.check = next.by_vip.get(vip).and_then(|c| c.check.clone());
        check.by_vip.insert(*vip, conf);
        for (k, w) in std::mem::take(&mut backends) {
            check.add_backend(vip, k, w).map_err(|e| {
                format!(
                    "service {vip}: backend {k}, added with the CLI, does not fit the new file: {e}"
                )
            })?;
        }
        next.by_vip
            .insert(*vip, check.by_vip.remove(vip).expect("inserted"));
    }
    if next.by_vip.len() >= lb_common::MAX_SERVICES as usize {
        return Err(format!(
            "too many services with the CLI's and the file's together: at most {}",
            lb_common::MAX_SERVICES - 1
        ));
    }
    let mut backups = backups.clone();
    for k in base.backups.difference(&new.backups) {
        backups.remove(k);
    }
    backups.extend(new.backups.difference(&base.backups).copied());
    weights::retain(&mut backups, &next);
    Ok(Plan {
        rule_ops,
        default_policy,
        malformed_policy,
        services: next,
        backups,
    })
}

/// Counts of what changed between two service sets (for reload summaries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServicesDiff {
    pub services_added: usize,
    pub services_removed: usize,
    pub services_updated: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub backends_updated: usize,
}

pub fn services_diff(old: &Services, new: &Services) -> ServicesDiff {
    let mut d = ServicesDiff::default();
    for (vip, o) in &old.by_vip {
        match new.by_vip.get(vip) {
            None => {
                d.services_removed += 1;
                d.backends_removed += o.backends.len();
            }
            Some(n) => {
                let mut os = o.clone();
                let mut ns = n.clone();
                os.backends.clear();
                ns.backends.clear();
                if os != ns {
                    d.services_updated += 1;
                }
                for (b, w) in &o.backends {
                    match n.backends.get(b) {
                        None => d.backends_removed += 1,
                        Some(nw) if nw != w => d.backends_updated += 1,
                        _ => {}
                    }
                }
                d.backends_added += n
                    .backends
                    .keys()
                    .filter(|b| !o.backends.contains_key(b))
                    .count();
            }
        }
    }
    for (vip, n) in &new.by_vip {
        if !old.by_vip.contains_key(vip) {
            d.services_added += 1;
            d.backends_added += n.backends.len();
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigErrors> {
        Config::parse(src, Path::new("/etc/xlb/test.toml"))
    }

    fn err(src: &str) -> ConfigError {
        let e = parse(src).expect_err("must be refused");
        e.0[0].clone()
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/xlb.toml");
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.interfaces.is_empty());
        assert!(!c.projection.rules.is_empty());
        assert!(!c.projection.services.by_vip.is_empty());
        assert!(!c.health.is_empty());
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
[[interface]]
name = "eth0"
mode = "generic"

[firewall]
default = "deny"
deny = ["203.0.113.0/24", "2001:db8:bad::/48"]
allow = ["203.0.113.7"]
except = ["22/tcp", "198.51.100.0/24"]
[firewall.ports]
deny = ["23/tcp", "6000-6063/tcp"]
allow = ["443/tcp"]

[[service]]
address = "198.51.100.10:80/tcp"
mode = "nat"
affinity = "source"
tcp_idle = "1h"
[service.health]
kind = "http"
interval = "500ms"
timeout = "200ms"
path = "/healthz"
expect_status = 204
[[service.backend]]
address = "203.0.113.11:8080"
weight = 3
[[service.backend]]
address = "203.0.113.12:8080"

[[service]]
address = "198.51.100.10:*/udp"
mode = "dsr"
echo = false
[[service.backend]]
address = "203.0.113.11"

[metrics]
listen = "127.0.0.1:9100"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.interfaces[0].mode, AttachMode::Generic);
        assert_eq!(c.projection.default_policy, Action::Deny);
        assert_eq!(c.projection.malformed_policy, Action::Deny);
        assert_eq!(c.projection.rules.len(), 8);
        let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
        let s = &c.projection.services.by_vip[&vip];
        assert!(s.affinity_source);
        assert_eq!(s.tcp_idle, 3600);
        assert_eq!(s.backends.values().copied().collect::<Vec<_>>(), vec![3, 1]);
        let h = &c.health[&vip];
        assert_eq!(h.kind, CheckKind::Http);
        assert_eq!(h.interval, Duration::from_millis(500));
        assert_eq!((h.rise, h.fall, h.expect_status), (2, 3, 204));
        assert_eq!(
            c.metrics,
            Some(MetricsListen::At("127.0.0.1:9100".parse().unwrap()))
        );
        let off = parse("[metrics]\nlisten = \"off\"\n").unwrap();
        assert_eq!(off.metrics, Some(MetricsListen::Off));
        assert_eq!(parse("").unwrap().projection, Projection::default());
    }

    #[test]
    fn errors_name_file_line_field_and_expectation() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "[[interface]]\nname = \"eth0\"\nmoed = \"native\"\n",
                3,
                "interface.moed",
                "unknown field `moed`",
            ),
            ("bogus = 1\n", 1, "bogus", "unknown field `bogus`"),
            (
                "[firewall]\ndeny = [\"192.0.2.0/24\",\n  \"192.0.2.1/24\"]\n",
                3,
                "firewall.deny",
                "did you mean 192.0.2.0/24",
            ),
            (
                "[firewall]\ndefault = \"maybe\"\n",
                2,
                "firewall.default",
                "expected \"allow\" or \"deny\"",
            ),
            (
                "[firewall.ports]\ndeny = [\"70000/tcp\"]\n",
                2,
                "firewall.ports.deny",
                "outside 1-65535",
            ),
            (
                "[firewall]\ndeny = [\"80/tcp\"]\n",
                2,
                "firewall.deny",
                "[firewall.ports]",
            ),
            (
                "[firewall]\ndeny = [\"192.0.2.0/24\"]\nallow = [\"192.0.2.0/24\"]\n",
                3,
                "firewall.allow",
                "listed twice (also at line 2)",
            ),
            (
                "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"tunnel\"\n",
                3,
                "service.mode",
                "'tunnel' is not a mode",
            ),
            (
                "[[service]]\naddress = \"198.51.100.10:80/tcp\"\n",
                1,
                "service",
                "missing field `mode`",
            ),
            (
                "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[[service.backend]]\naddress = \"203.0.113.11:8080\"\nweight = 0\n",
                6,
                "service.backend.weight",
                "expected 1 to 100",
            ),
            (
                "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[[service.backend]]\naddress = \"203.0.113.11:8080\"\nweight = \"2\"\n",
                6,
                "service.backend.weight",
                "invalid type",
            ),
            (
                "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\ntcp_idle = 30\n",
                4,
                "service.tcp_idle",
                "has no unit",
            ),
            (
                "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[service.health]\nkind = \"tcp\"\npath = \"/\"\n",
                6,
                "service.health.path",
                "only http and https",
            ),
            (
                "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[service.health]\nkind = \"http\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
                7,
                "service.health.timeout",
                "at most the interval",
            ),
            (
                "[[service]]\naddress = \"198.51.100.30:443/tcp\"\nmode = \"https\"\n",
                3,
                "service.mode",
                "needs a [tls] section",
            ),
            (
                "[[service]]\naddress = \"198.51.100.30:443/udp\"\nmode = \"https\"\n",
                2,
                "service.address",
                "one TCP port",
            ),
            (
                "[[service]]\naddress = \"198.51.100.30:443/tcp\"\nmode = \"https\"\nsnat = \"203.0.113.1\"\n",
                4,
                "service.snat",
                "an https service has no snat",
            ),
            (
                "[metrics]\nlisten = \"localhost\"\n",
                2,
                "metrics.listen",
                "expected ADDR:PORT",
            ),
            // A TLS pool's health table: the same keys, checks and locations.
            (
                &pool_health("kind = \"http\"\nfall = 0\n"),
                11,
                "tls.pools.health.fall",
                "fall 0 is out of range: expected 1 to 100",
            ),
            (
                &pool_health("kind = \"tcp\"\nexpect_status = 204\n"),
                11,
                "tls.pools.health.expect_status",
                "only http and https",
            ),
            (
                &pool_health("kind = \"http\"\nintervall = \"1s\"\n"),
                11,
                "tls.pools.health.intervall",
                "unknown field `intervall`",
            ),
            ("[firewall\n", 1, "firewall", ""),
        ];
        for (src, line, field, msg) in cases {
            let e = err(src);
            assert_eq!(e.line, *line, "{src}: {e}");
            assert_eq!(e.field, *field, "{src}: {e}");
            assert!(e.message.contains(msg), "{src}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("/etc/xlb/test.toml:{line}:")),
                "{e}"
            );
        }
    }

    /// A [tls] section whose one pool has the health table `table` (from line 10).
    fn pool_health(table: &str) -> String {
        format!(
            "[tls]\nlisten = [\"192.0.2.1:443\"]\ndefault_cert = {{ chain = \"a.pem\", key = \"a.key\" }}\n\
             [[tls.routes]]\npool = \"web\"\n[[tls.pools]]\nname = \"web\"\nbackends = [\"203.0.113.11:8080\"]\n\
             [tls.pools.health]\n{table}"
        )
    }

    #[test]
    fn a_pool_health_table_gives_the_services_check() {
        let mut tls: HttpsConfig = toml::from_str::<RawConfig>(&pool_health(
            "kind = \"http\"\ninterval = \"200ms\"\nrise = 3\npath = \"/health\"\n",
        ))
        .unwrap()
        .tls
        .unwrap()
        .into_inner();
        let check = tls.pools[0].health_check().unwrap().unwrap();
        assert_eq!(
            (check.kind, check.interval, check.rise, check.fall),
            (CheckKind::Http, Duration::from_millis(200), 3, DEFAULT_FALL)
        );
        assert_eq!(
            (check.path.as_str(), check.timeout),
            ("/health", Duration::from_millis(200))
        );
        // Without the file's text the first problem is named by its field.
        tls.pools[0].health = toml::from_str::<RawConfig>(&pool_health("kind = \"udp\"\n"))
            .unwrap()
            .tls
            .unwrap()
            .into_inner()
            .pools[0]
            .health
            .clone();
        let e = tls.validate().unwrap_err();
        assert!(
            format!("{e:#}").contains("health.kind: 'udp' is not a check kind"),
            "{e:#}"
        );
    }

    #[test]
    fn every_error_is_reported() {
        let e = parse(
            "[firewall]\ndeny = [\"192.0.2.1/24\", \"x\"]\n[[service]]\naddress = \"198.51.100.10:0/tcp\"\nmode = \"nat\"\n",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert_eq!(e.to_string().lines().count(), 3);
    }

    fn proj(src: &str) -> Projection {
        parse(src).unwrap_or_else(|e| panic!("{e}")).projection
    }

    fn apply(rules: &mut RuleSet, services: &mut Services, p: &Plan) {
        for op in &p.rule_ops {
            match op {
                RuleOp::Upsert(m, a) => {
                    rules.upsert(*m, *a).unwrap();
                }
                RuleOp::Remove(m) => {
                    rules.remove(m).unwrap();
                }
            }
        }
        rules.default_policy = p.default_policy;
        rules.malformed_policy = p.malformed_policy;
        *services = p.services.clone();
    }

    #[test]
    fn reload_applies_the_file_diff_and_keeps_cli_changes() {
        let old = proj(
            r#"
[firewall]
deny = ["192.0.2.0/24", "198.51.100.0/24"]
[[service]]
address = "198.51.100.10:80/tcp"
mode = "nat"
[[service.backend]]
address = "203.0.113.11:8080"
[[service.backend]]
address = "203.0.113.12:8080"
"#,
        );
        let new = proj(
            r#"
[firewall]
default = "deny"
deny = ["192.0.2.0/24", "203.0.113.0/24"]
[[service]]
address = "198.51.100.10:80/tcp"
mode = "nat"
[[service.backend]]
address = "203.0.113.11:8080"
weight = 2
[[service.backend]]
address = "203.0.113.13:8080"
"#,
        );
        let (mut rules, mut services) = (RuleSet::default(), Services::default());
        let p = plan(
            &rules,
            &services,
            &Flags::new(),
            &Projection::default(),
            &old,
        )
        .unwrap();
        apply(&mut rules, &mut services, &p);
        // CLI changes: a rule, a backend of the file's service and a check.
        let cli_rule = Match::Prefix("2001:db8::/32".parse().unwrap());
        rules.upsert(cli_rule, Action::Deny).unwrap();
        let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
        services
            .add_backend(&vip, "203.0.113.14:8080".parse().unwrap(), 1)
            .unwrap();
        let check = HealthCheck::from_words([("kind", "tcp")], "check").unwrap();
        services.set_check(&vip, Some(check.clone())).unwrap();

        let p = plan(&rules, &services, &Flags::new(), &old, &new).unwrap();
        apply(&mut rules, &mut services, &p);
        assert_eq!(
            services.by_vip[&vip].check,
            Some(check),
            "the CLI's check stays"
        );
        let lines: Vec<String> = rules.rules().map(|r| r.line()).collect();
        assert!(lines.contains(&"deny 192.0.2.0/24".to_string()));
        assert!(lines.contains(&"deny 203.0.113.0/24".to_string()));
        assert!(!lines.contains(&"deny 198.51.100.0/24".to_string()));
        assert!(rules.get(&cli_rule).is_some(), "the CLI's rule stays");
        assert_eq!(rules.default_policy, Action::Deny);
        let b: Vec<(String, u32)> = services.by_vip[&vip]
            .backends
            .iter()
            .map(|(b, w)| (b.to_string(), *w))
            .collect();
        assert_eq!(
            b,
            vec![
                ("203.0.113.11:8080".into(), 2),
                ("203.0.113.13:8080".into(), 1),
                ("203.0.113.14:8080".into(), 1),
            ]
        );
        // The same file again changes nothing.
        let p = plan(&rules, &services, &Flags::new(), &new, &new).unwrap();
        assert!(p.rule_ops.is_empty());
        assert_eq!(p.services, services);
        // Removing the service from the file removes it, CLI backends too.
        let p = plan(
            &rules,
            &services,
            &Flags::new(),
            &new,
            &Projection::default(),
        )
        .unwrap();
        assert!(p.services.by_vip.is_empty());
        assert_eq!(p.default_policy, Action::Allow);
    }

    #[test]
    fn a_reload_that_does_not_fit_cli_backends_is_refused() {
        let old = proj("[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n");
        let new = proj("[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"dsr\"\n");
        let (mut rules, mut services) = (RuleSet::default(), Services::default());
        let p = plan(
            &rules,
            &services,
            &Flags::new(),
            &Projection::default(),
            &old,
        )
        .unwrap();
        apply(&mut rules, &mut services, &p);
        let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
        services
            .add_backend(&vip, "203.0.113.14:8080".parse().unwrap(), 1)
            .unwrap();
        let e = plan(&rules, &services, &Flags::new(), &old, &new).unwrap_err();
        assert!(e.contains("dsr cannot change ports"), "{e}");
    }

    #[test]
    fn fullnat_services_take_their_snat_address() {
        let c = parse(
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"fullnat\"\nsnat = \"203.0.113.1\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
        assert_eq!(
            c.projection.services.by_vip[&vip].snat,
            Some("203.0.113.1".parse().unwrap())
        );
        let e = err(
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"fullnat\"\nsnat = \"x\"\n",
        );
        assert_eq!((e.line, e.field.as_str()), (4, "service.snat"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "2", "s", "1.5s", "2 s", "-1s", "3w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
