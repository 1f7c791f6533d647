//! Layer-4 services: what an operator writes (service address, mode, backends with
//! weights), parsed and validated, and the desired state the balancer projects onto the
//! kernel's maps.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use super::{
    health_check::HealthCheck,
    rules::{MAX_PORT, MIN_PORT, Proto, ipv4_mapped},
    syn_mode::SynProtection,
    text::{self, NumberError, shown},
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    #[error(
        "'{}' is not a service: {} (expected ADDR:PORT/PROTO or ADDR:*/PROTO, e.g. 192.0.2.10:80/tcp, [2001:db8::10]:443/tcp)",
        shown(.input),
        text::message(.why)
    )]
    BadService { input: String, why: String },
    #[error(
        "'{}' is not a backend: {} (expected ADDR:PORT or ADDR, e.g. 203.0.113.11:8080)",
        shown(.input),
        text::message(.why)
    )]
    BadBackend { input: String, why: String },
    #[error("no service {0}: add it with `xlb vip add`")]
    UnknownService(String),
    #[error("service {0} already exists")]
    DuplicateService(String),
    #[error("backend {backend} is already in service {service}")]
    DuplicateBackend { service: String, backend: String },
    #[error("backend {backend} is not in service {service}")]
    UnknownBackend { service: String, backend: String },
    #[error("weight {0} is out of range: use {MIN_WEIGHT} to {MAX_WEIGHT}")]
    BadWeight(u32),
    #[error("backend {backend} is {bf} but service {service} is {sf}: the families must match")]
    FamilyMismatch {
        service: String,
        backend: String,
        sf: &'static str,
        bf: &'static str,
    },
    /// An address that cannot work where it is given (a service address, a backend, an
    /// snat address): what it is, and what would work.
    #[error("{}", text::message(.0))]
    Unusable(String),
    /// An idle timeout of the other protocol: `given` is the one given (`--tcp-idle`).
    #[error(
        "--{given}-idle is for {given} services; {vip} is a {proto} service: give it --{proto}-idle"
    )]
    IdleProto {
        given: Proto,
        vip: String,
        proto: Proto,
    },
    #[error("{}", text::message(.0))]
    Invalid(String),
}

/// The weights a backend can have.
pub const MIN_WEIGHT: u32 = 1;
pub const MAX_WEIGHT: u32 = 100;
/// Default idle timeouts: an idle SSH session survives an hour; UDP flows are short.
pub const DEFAULT_TCP_IDLE: u32 = 2 * 3600;
pub const DEFAULT_UDP_IDLE: u32 = 30;
/// The idle timeouts accepted, in seconds (at most a week).
pub const MIN_IDLE: u32 = 1;
pub const MAX_IDLE: u32 = 7 * 24 * 3600;

/// A weight as written (the CLI's `--weight`, the state file): digits,
/// `MIN_WEIGHT` to `MAX_WEIGHT`.
pub fn parse_weight(s: &str) -> Result<u32, String> {
    text::number_in(s, "weight", MIN_WEIGHT as u64..=MAX_WEIGHT as u64).map(|n| n as u32)
}

/// An idle timeout in seconds as written (the CLI's `--tcp-idle`/`--udp-idle`, the
/// state file): digits, `MIN_IDLE` to `MAX_IDLE`.
pub fn parse_idle(s: &str) -> Result<u32, String> {
    text::number_in(s, "idle timeout", MIN_IDLE as u64..=MAX_IDLE as u64).map(|n| n as u32)
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Layer-2 direct server return: only the destination MAC changes; the backend holds
    /// the service address on a loopback device and answers the client directly.
    Dsr,
    /// Destination rewritten to the backend; replies come back through xlb.
    Nat,
    /// Source rewritten too, to the service's `snat` address of this host and a port
    /// xlb allocates: backends may sit anywhere and need no route through xlb.
    Fullnat,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
            Mode::Fullnat => "fullnat",
        })
    }
}

impl FromStr for Mode {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        match s {
            "dsr" => Ok(Mode::Dsr),
            "nat" => Ok(Mode::Nat),
            "fullnat" => Ok(Mode::Fullnat),
            _ => Err(ServiceError::Invalid(format!(
                "'{}' is not a mode: use dsr, nat or fullnat",
                shown(s)
            ))),
        }
    }
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Why an address with a zone (`fe80::1%eth0`) is refused wherever xlb forwards to it.
const ZONE: &str = "it names a zone (%IFACE), which xlb would lose: the kernel's FIB lookup that xlb forwards by takes no interface; use a global or unique-local address";

/// An address as a service, a backend or an snat address is written: no zone.
fn host_ip(host: &str) -> Result<IpAddr, &'static str> {
    if host.contains('%') {
        return Err(ZONE);
    }
    host.parse().map_err(|_| "not an IPv4 or IPv6 address")
}

/// An address as `--snat` and `snat` give it (`203.0.113.1`, `2001:db8::1`).
pub fn parse_addr(s: &str) -> Result<IpAddr, ServiceError> {
    host_ip(s).map_err(|why| {
        ServiceError::Invalid(if why == ZONE {
            format!("'{}' cannot work: {why}", shown(s))
        } else {
            format!(
                "'{}' is not an address (expected e.g. 203.0.113.1 or 2001:db8::1)",
                shown(s)
            )
        })
    })
}

/// Where an address is given: what it must be, for the messages.
#[derive(Clone, Copy)]
enum Role {
    Service,
    Backend,
    Snat,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Service => "service address",
            Role::Backend => "backend",
            Role::Snat => "snat address",
        }
    }

    fn instead(self) -> &'static str {
        match self {
            Role::Service => "use a unicast address that clients reach this host on",
            Role::Backend => "use the backend's own unicast address",
            Role::Snat => "use a unicast address of this host that the backends reach",
        }
    }
}

/// What `a` is when no single host can be forwarded to or from at it; None when one can.
/// Only 255.255.255.255 is known as a broadcast address (a subnet's depends on the
/// interface); a link-local IPv6 address needs an interface, which the kernel's FIB
/// lookup (xlb's next hop for backends and replies) is not given.
fn unusable(a: IpAddr) -> Option<&'static str> {
    let link_local_v6 = matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    Some(if a.is_unspecified() {
        "the unspecified address, which names no host"
    } else if a.is_loopback() {
        "a loopback address, which never leaves its host"
    } else if a == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        "the broadcast address, which is every host of a link, not one"
    } else if a.is_multicast() {
        "a multicast address, which is a group of hosts, not one"
    } else if ipv4_mapped(a).is_some() {
        "an IPv4-mapped IPv6 address, which never matches an IPv4 packet (those carry IPv4 addresses)"
    } else if link_local_v6 {
        "a link-local IPv6 address, which means nothing without an interface, and the kernel's FIB lookup that xlb forwards by is given none"
    } else {
        return None;
    })
}

/// What `a` is when nothing can be sent to it as one host (a flow collector, an
/// exporter's endpoint); None when it can. A loopback address can be: a collector on
/// this host.
pub fn not_a_destination(a: IpAddr) -> Option<&'static str> {
    if a.is_loopback() { None } else { unusable(a) }
}

/// Refuses `addr` in `role` if it cannot work there; `written` shows the whole value
/// with a given address (to suggest an IPv4-mapped address's IPv4 form).
fn check_addr(
    role: Role,
    addr: IpAddr,
    written: impl Fn(IpAddr) -> String,
) -> Result<(), ServiceError> {
    let Some(what) = unusable(addr) else {
        return Ok(());
    };
    let instead = match ipv4_mapped(addr) {
        Some(v4) => format!("use its IPv4 form, {}", written(IpAddr::V4(v4))),
        None => role.instead().to_string(),
    };
    Err(ServiceError::Unusable(format!(
        "{} {} cannot work: {addr} is {what}; {instead}",
        role.name(),
        written(addr)
    )))
}

/// A service address: address, port (None = every port) and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub proto: Proto,
}

impl Vip {
    /// Refuses a service address that cannot work for a layer-4 service (an https
    /// service's listener may be on loopback or an IPv4-mapped address).
    fn check(&self) -> Result<(), ServiceError> {
        check_addr(Role::Service, self.addr, |addr| {
            Vip { addr, ..*self }.to_string()
        })
    }
}

fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, rest) = rest.split_once(']')?;
        return Some((host, rest.strip_prefix(':')?));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

/// A port of a service or backend: digits, 1 to 65535; `star` says whether `*` (every
/// port) may be given instead.
fn port(p: &str, star: bool) -> Result<u16, String> {
    let or_star = if star { " (or * for every port)" } else { "" };
    match text::number(p, MIN_PORT as u64..=MAX_PORT as u64) {
        Ok(n) => Ok(n as u16),
        Err(NumberError::NotDigits) => Err(format!(
            "'{}' is not a port: write {MIN_PORT}-{MAX_PORT} in digits{or_star}",
            shown(p)
        )),
        Err(NumberError::OutOfRange) if p.bytes().all(|b| b == b'0') => Err(if star {
            "port 0 is not a port: use * for every port".to_string()
        } else {
            "port 0 is not a port".to_string()
        }),
        Err(NumberError::OutOfRange) => Err(format!(
            "port {p} is outside {MIN_PORT}-{MAX_PORT}{or_star}"
        )),
    }
}

impl FromStr for Vip {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        let bad = |why: &str| ServiceError::BadService {
            input: s.into(),
            why: why.into(),
        };
        let (hp, proto) = s
            .rsplit_once('/')
            .ok_or_else(|| bad("the protocol is missing"))?;
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad("the protocol is not tcp or udp")),
        };
        let (host, p) = split_host_port(hp).ok_or_else(|| bad("the port is missing"))?;
        let addr = host_ip(host).map_err(bad)?;
        let port = match p {
            "*" => None,
            p => Some(port(p, true).map_err(|why| bad(&why))?),
        };
        let vip = Vip { addr, port, proto };
        // No service of any kind can be at these.
        if addr.is_unspecified()
            || addr.is_multicast()
            || addr == IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
        {
            vip.check()?;
        }
        Ok(vip)
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = self.port.map_or("*".to_string(), |p| p.to_string());
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{port}/{}", self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{port}/{}", self.proto),
        }
    }
}

/// A backend address with its port (None: the client's destination port is kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl FromStr for BackendAddr {
    type Err = ServiceError;
    fn from_str(s: &str) -> Result<Self, ServiceError> {
        let bad = |why: &str| ServiceError::BadBackend {
            input: s.into(),
            why: why.into(),
        };
        if let Ok(a) = s.parse::<IpAddr>() {
            return Ok(BackendAddr {
                addr: a,
                port: None,
            });
        }
        if s.contains('%') {
            return Err(bad(ZONE));
        }
        let (host, p) = split_host_port(s).ok_or_else(|| bad("not ADDR or ADDR:PORT"))?;
        let addr = host_ip(host).map_err(bad)?;
        let port = port(p, false).map_err(|why| bad(&why))?;
        Ok(BackendAddr {
            addr,
            port: Some(port),
        })
    }
}

impl From<SocketAddr> for BackendAddr {
    fn from(a: SocketAddr) -> Self {
        BackendAddr {
            addr: a.ip(),
            port: Some(a.port()),
        }
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (a, None) => write!(f, "{a}"),
            (IpAddr::V4(a), Some(p)) => write!(f, "{a}:{p}"),
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
        }
    }
}

/// What a service does when every backend it has (drained ones aside) looks down at
/// once: health checks that all fail together more likely fail themselves (a network
/// or checker problem) than every backend at once.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AllDown {
    /// Panic mode (Envoy's panic threshold at 100%): health is ignored and new flows go
    /// to every backend by its weight, until one is up again.
    #[default]
    Panic,
    /// New flows are dropped (`no_backend`) until a backend is up.
    Strict,
}

impl fmt::Display for AllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AllDown::Panic => "panic",
            AllDown::Strict => "strict",
        })
    }
}

impl FromStr for AllDown {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "panic" => Ok(AllDown::Panic),
            "strict" => Ok(AllDown::Strict),
            _ => Err(format!(
                "'{}' is not what to do with every backend down: use panic (send to all of them) or strict (send to none)",
                shown(s)
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConf {
    pub vip: Vip,
    pub mode: Mode,
    /// Hash the source address only (a client always reaches the same backend).
    pub affinity_source: bool,
    /// Answer echo requests to the service address.
    pub echo: bool,
    /// Idle time after which a flow is rescheduled, in seconds.
    pub tcp_idle: u32,
    pub udp_idle: u32,
    /// fullnat: the source address the backends see (an address of this host).
    pub snat: Option<IpAddr>,
    /// The backends' health check set with the CLI (`xlb vip check`); a configuration
    /// file's `[service.health]` is kept with the file's other checks and wins.
    pub check: Option<HealthCheck>,
    /// SYN-flood protection (see `synflood`).
    pub syn: SynProtection,
    /// Every backend down at once: panic (send to all) or strict (see `weights`).
    pub all_down: AllDown,
    pub backends: BTreeMap<BackendAddr, u32>,
}

/// Every service, by service address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Services {
    pub by_vip: BTreeMap<Vip, ServiceConf>,
}

impl Services {
    pub fn add_service(
        &mut self,
        vip: Vip,
        mode: Mode,
        affinity_source: bool,
        echo: bool,
    ) -> Result<(), ServiceError> {
        vip.check()?;
        if self.by_vip.contains_key(&vip) {
            return Err(ServiceError::DuplicateService(vip.to_string()));
        }
        self.by_vip.insert(
            vip,
            ServiceConf {
                vip,
                mode,
                affinity_source,
                echo,
                tcp_idle: DEFAULT_TCP_IDLE,
                udp_idle: DEFAULT_UDP_IDLE,
                snat: None,
                check: None,
                syn: SynProtection::default_for(vip.proto),
                all_down: AllDown::Panic,
                backends: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Sets (or with None removes) a service's health check. A service that balances
    /// every port has no port of its own to check: its check must name one.
    pub fn set_check(&mut self, vip: &Vip, check: Option<HealthCheck>) -> Result<(), ServiceError> {
        let svc = self
            .by_vip
            .get_mut(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
        if let Some(c) = &check
            && vip.port.is_none()
            && c.port.is_none()
        {
            return Err(ServiceError::Invalid(format!(
                "service {vip} balances every port: give the check a port (port=80)"
            )));
        }
        svc.check = check;
        Ok(())
    }

    /// Sets a service's idle timeouts (seconds, `MIN_IDLE` to `MAX_IDLE`); None keeps
    /// one. A TCP service's flows have no UDP timeout, and the other way round: the
    /// timeout of the other protocol is refused, not kept unused.
    pub fn set_idle(
        &mut self,
        vip: &Vip,
        tcp: Option<u32>,
        udp: Option<u32>,
    ) -> Result<(), ServiceError> {
        for t in [tcp, udp].into_iter().flatten() {
            if !(MIN_IDLE..=MAX_IDLE).contains(&t) {
                return Err(ServiceError::Invalid(format!(
                    "idle timeout {t} s is out of range: use {MIN_IDLE} to {MAX_IDLE} seconds"
                )));
            }
        }
        let svc = self
            .by_vip
            .get_mut(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
        let given = match vip.proto {
            Proto::Tcp => udp.map(|_| Proto::Udp),
            Proto::Udp => tcp.map(|_| Proto::Tcp),
        };
        if let Some(given) = given {
            return Err(ServiceError::IdleProto {
                given,
                vip: vip.to_string(),
                proto: vip.proto,
            });
        }
        svc.tcp_idle = tcp.unwrap_or(svc.tcp_idle);
        svc.udp_idle = udp.unwrap_or(svc.udp_idle);
        Ok(())
    }

    /// Sets a fullnat service's source address (same family as the service). A fullnat
    /// service cannot be without one, and other modes take none.
    pub fn set_snat(&mut self, vip: &Vip, snat: Option<IpAddr>) -> Result<(), ServiceError> {
        let svc = self
            .by_vip
            .get_mut(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
        match (svc.mode, snat) {
            (Mode::Fullnat, None) => {
                return Err(ServiceError::Invalid(format!(
                    "fullnat service {vip} needs --snat ADDR: an address of this host that its backends reach"
                )));
            }
            (Mode::Fullnat, Some(a)) if a.is_ipv4() != vip.addr.is_ipv4() => {
                return Err(ServiceError::Invalid(format!(
                    "snat address {a} is {} but service {vip} is {}: the families must match",
                    family(&a),
                    family(&vip.addr)
                )));
            }
            (Mode::Fullnat, Some(a)) => check_addr(Role::Snat, a, |a| a.to_string())?,
            (m, Some(_)) => {
                return Err(ServiceError::Invalid(format!(
                    "--snat is for fullnat services; {vip} is {m}"
                )));
            }
            (_, None) => {}
        }
        svc.snat = snat;
        Ok(())
    }

    pub fn del_service(&mut self, vip: &Vip) -> Result<ServiceConf, ServiceError> {
        self.by_vip
            .remove(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))
    }

    /// Checks a backend against its service; returns it with the port it will use.
    pub fn check_backend(
        &self,
        vip: &Vip,
        b: BackendAddr,
        weight: u32,
    ) -> Result<BackendAddr, ServiceError> {
        let svc = self
            .by_vip
            .get(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
        if !(MIN_WEIGHT..=MAX_WEIGHT).contains(&weight) {
            return Err(ServiceError::BadWeight(weight));
        }
        if b.addr.is_ipv4() != vip.addr.is_ipv4() {
            return Err(ServiceError::FamilyMismatch {
                service: vip.to_string(),
                backend: b.to_string(),
                sf: family(&vip.addr),
                bf: family(&b.addr),
            });
        }
        check_addr(Role::Backend, b.addr, |addr| {
            BackendAddr { addr, ..b }.to_string()
        })?;
        if b.addr == vip.addr {
            return Err(ServiceError::Unusable(format!(
                "backend {b} cannot work: it is service {vip}'s own address, so xlb would send its packets back to itself; use the address of a server behind xlb"
            )));
        }
        let b = match (svc.mode, vip.port, b.port) {
            (_, None, Some(_)) => {
                return Err(ServiceError::Invalid(format!(
                    "service {vip} balances every port: give backend {} without a port",
                    b.addr
                )));
            }
            (Mode::Dsr, Some(vp), Some(bp)) if vp != bp => {
                return Err(ServiceError::Invalid(format!(
                    "dsr cannot change ports: backend {b} must listen on the service port {vp}"
                )));
            }
            (_, Some(vp), None) => BackendAddr {
                addr: b.addr,
                port: Some(vp),
            },
            _ => b,
        };
        if svc.backends.contains_key(&b) {
            return Err(ServiceError::DuplicateBackend {
                service: vip.to_string(),
                backend: b.to_string(),
            });
        }
        Ok(b)
    }

    pub fn add_backend(
        &mut self,
        vip: &Vip,
        b: BackendAddr,
        weight: u32,
    ) -> Result<BackendAddr, ServiceError> {
        let b = self.check_backend(vip, b, weight)?;
        self.by_vip
            .get_mut(vip)
            .expect("checked")
            .backends
            .insert(b, weight);
        Ok(b)
    }

    /// Removes a backend (given as added, or without its port when the service port was
    /// used).
    pub fn del_backend(&mut self, vip: &Vip, b: BackendAddr) -> Result<(), ServiceError> {
        let svc = self
            .by_vip
            .get_mut(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
        let key = match (b.port, vip.port) {
            (None, Some(vp)) => BackendAddr {
                addr: b.addr,
                port: Some(vp),
            },
            _ => b,
        };
        svc.backends
            .remove(&key)
            .map(|_| ())
            .ok_or_else(|| ServiceError::UnknownBackend {
                service: vip.to_string(),
                backend: b.to_string(),
            })
    }
}

#[cfg(test)]
mod tests;
