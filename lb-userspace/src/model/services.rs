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
mod tests {
    use super::*;

    #[test]
    fn service_addresses_parse() {
        let v: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        assert_eq!(v.port, Some(80));
        let v: Vip = "[2001:db8::10]:443/tcp".parse().unwrap();
        assert!(v.addr.is_ipv6());
        assert_eq!("192.0.2.10:*/udp".parse::<Vip>().unwrap().port, None);
        assert_eq!(v.to_string(), "[2001:db8::10]:443/tcp");
        for bad in [
            "192.0.2.10:0/tcp",
            "192.0.2.10/tcp",
            "192.0.2.10:80",
            "192.0.2.10:80/icmp",
            "0.0.0.0:80/tcp",
            "x:80/tcp",
        ] {
            assert!(bad.parse::<Vip>().is_err(), "{bad}");
        }
    }

    #[test]
    fn backends_are_validated_against_their_service() {
        let mut s = Services::default();
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        s.add_service(vip, Mode::Nat, false, true).unwrap();
        assert!(matches!(
            s.add_service(vip, Mode::Nat, false, true),
            Err(ServiceError::DuplicateService(_))
        ));
        s.add_backend(&vip, "203.0.113.11:8080".parse().unwrap(), 1)
            .unwrap();
        assert!(matches!(
            s.add_backend(&vip, "203.0.113.11:8080".parse().unwrap(), 1),
            Err(ServiceError::DuplicateBackend { .. })
        ));
        assert!(matches!(
            s.add_backend(&vip, "203.0.113.12:8080".parse().unwrap(), 0),
            Err(ServiceError::BadWeight(0))
        ));
        assert!(matches!(
            s.add_backend(&vip, "203.0.113.12:8080".parse().unwrap(), 101),
            Err(ServiceError::BadWeight(101))
        ));
        assert!(matches!(
            s.add_backend(&vip, "[2001:db8::11]:8080".parse().unwrap(), 1),
            Err(ServiceError::FamilyMismatch { .. })
        ));
        assert!("203.0.113.12:0".parse::<BackendAddr>().is_err());
        let other: Vip = "192.0.2.11:80/tcp".parse().unwrap();
        assert!(matches!(
            s.add_backend(&other, "203.0.113.12:8080".parse().unwrap(), 1),
            Err(ServiceError::UnknownService(_))
        ));
        // Without a port, the service port is used.
        let b = s
            .add_backend(&vip, "203.0.113.13".parse().unwrap(), 2)
            .unwrap();
        assert_eq!(b.port, Some(80));
        s.del_backend(&vip, "203.0.113.13".parse().unwrap())
            .unwrap();
        assert!(
            s.del_backend(&vip, "203.0.113.13".parse().unwrap())
                .is_err()
        );
    }

    #[test]
    fn dsr_keeps_ports() {
        let mut s = Services::default();
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        s.add_service(vip, Mode::Dsr, false, true).unwrap();
        assert!(
            s.add_backend(&vip, "203.0.113.11:8080".parse().unwrap(), 1)
                .is_err()
        );
        assert!(
            s.add_backend(&vip, "203.0.113.11:80".parse().unwrap(), 1)
                .is_ok()
        );
    }

    fn service(s: &mut Services, vip: &str, mode: Mode) -> Vip {
        let vip: Vip = vip.parse().unwrap();
        s.add_service(vip, mode, false, true).unwrap();
        vip
    }

    #[test]
    fn ports_are_digits_only_and_out_of_range_says_so() {
        let e = "192.0.2.10:+80/tcp".parse::<Vip>().unwrap_err().to_string();
        assert!(
            e.starts_with("'192.0.2.10:+80/tcp' is not a service: '+80' is not a port: write 1-65535 in digits (or * for every port)"),
            "{e}"
        );
        let e = "192.0.2.10:70000/tcp"
            .parse::<Vip>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(": port 70000 is outside 1-65535 (or * for every port)"),
            "{e}"
        );
        let e = "192.0.2.10:0/tcp".parse::<Vip>().unwrap_err().to_string();
        assert!(
            e.contains("port 0 is not a port: use * for every port"),
            "{e}"
        );
        let e = "203.0.113.11:70000"
            .parse::<BackendAddr>()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("'203.0.113.11:70000' is not a backend: port 70000 is outside 1-65535"),
            "{e}"
        );
        let e = "203.0.113.11:+80"
            .parse::<BackendAddr>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'+80' is not a port: write 1-65535 in digits"),
            "{e}"
        );
        assert_eq!(
            "[2001:db8::11]:080".parse::<BackendAddr>().unwrap().port,
            Some(80)
        );
        assert_eq!(parse_weight("3"), Ok(3));
        assert_eq!(
            parse_weight("+3").unwrap_err(),
            "'+3' is not a weight: write 1 to 100 in digits"
        );
        assert_eq!(
            parse_weight("101").unwrap_err(),
            "weight 101 is out of range: expected 1 to 100"
        );
        assert_eq!(parse_idle("600"), Ok(600));
        assert!(parse_idle("+600").is_err());
        assert!(
            parse_idle("0")
                .unwrap_err()
                .contains("out of range: expected 1 to 604800")
        );
    }

    #[test]
    fn addresses_that_cannot_work_are_refused_where_they_are_given() {
        let mut s = Services::default();
        // As a service address.
        for (vip, what) in [
            (
                "127.0.0.1:80/tcp",
                "127.0.0.1 is a loopback address, which never leaves its host",
            ),
            ("[::1]:80/tcp", "::1 is a loopback address"),
            (
                "0.0.0.0:80/tcp",
                "0.0.0.0 is the unspecified address, which names no host",
            ),
            ("[::]:80/tcp", ":: is the unspecified address"),
            (
                "255.255.255.255:80/udp",
                "255.255.255.255 is the broadcast address",
            ),
            (
                "224.0.0.1:80/udp",
                "224.0.0.1 is a multicast address, which is a group of hosts",
            ),
            ("[ff02::1]:80/udp", "ff02::1 is a multicast address"),
            (
                "[fe80::10]:80/tcp",
                "fe80::10 is a link-local IPv6 address, which means nothing without an interface",
            ),
        ] {
            let e = vip
                .parse::<Vip>()
                .and_then(|v| s.add_service(v, Mode::Nat, false, true))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("service address {vip} cannot work: {what}")),
                "{vip}: {e}"
            );
            assert!(
                e.contains("use a unicast address that clients reach this host on"),
                "{e}"
            );
        }
        let mapped: Vip = "[::ffff:192.0.2.10]:80/tcp".parse().unwrap();
        assert_eq!(
            s.add_service(mapped, Mode::Nat, false, true)
                .unwrap_err()
                .to_string(),
            "service address [::ffff:192.0.2.10]:80/tcp cannot work: ::ffff:192.0.2.10 is an IPv4-mapped IPv6 address, which never matches an IPv4 packet (those carry IPv4 addresses); use its IPv4 form, 192.0.2.10:80/tcp"
        );
        assert!(s.by_vip.is_empty());
        // As a backend.
        let vip = service(&mut s, "192.0.2.10:80/tcp", Mode::Nat);
        let v6 = service(&mut s, "[2001:db8::10]:80/tcp", Mode::Nat);
        for (vip, b, what) in [
            (vip, "127.0.0.1:8080", "127.0.0.1 is a loopback address"),
            (vip, "0.0.0.0:8080", "0.0.0.0 is the unspecified address"),
            (
                vip,
                "255.255.255.255:8080",
                "255.255.255.255 is the broadcast address",
            ),
            (vip, "239.1.2.3:8080", "239.1.2.3 is a multicast address"),
            (v6, "[::1]:8080", "::1 is a loopback address"),
            (v6, "[ff05::2]:8080", "ff05::2 is a multicast address"),
            (
                v6,
                "[fe80::11]:8080",
                "fe80::11 is a link-local IPv6 address",
            ),
        ] {
            let e = s
                .add_backend(&vip, b.parse().unwrap(), 1)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("backend {b} cannot work: {what}")),
                "{b}: {e}"
            );
            assert!(
                e.ends_with("; use the backend's own unicast address"),
                "{e}"
            );
        }
        let e = s
            .add_backend(&v6, "[::ffff:203.0.113.11]:8080".parse().unwrap(), 1)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("use its IPv4 form, 203.0.113.11:8080"), "{e}");
        // The service's own address.
        for b in ["192.0.2.10:80", "192.0.2.10:8080", "192.0.2.10"] {
            let e = s
                .add_backend(&vip, b.parse().unwrap(), 1)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("it is service 192.0.2.10:80/tcp's own address, so xlb would send its packets back to itself"),
                "{b}: {e}"
            );
        }
        assert!(s.by_vip.values().all(|c| c.backends.is_empty()));
        // As a fullnat source address.
        let full = service(&mut s, "192.0.2.20:80/tcp", Mode::Fullnat);
        for (a, what) in [
            ("127.0.0.1", "a loopback address"),
            ("0.0.0.0", "the unspecified address"),
            ("255.255.255.255", "the broadcast address"),
            ("224.0.0.5", "a multicast address"),
        ] {
            let e = s
                .set_snat(&full, Some(a.parse().unwrap()))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("snat address {a} cannot work: {a} is {what}")),
                "{a}: {e}"
            );
            assert!(e.ends_with("use a unicast address of this host that the backends reach"));
        }
        let full6 = service(&mut s, "[2001:db8::20]:80/tcp", Mode::Fullnat);
        for a in ["::ffff:203.0.113.1", "fe80::1", "::1", "::"] {
            assert!(
                matches!(
                    s.set_snat(&full6, Some(a.parse().unwrap())),
                    Err(ServiceError::Unusable(_))
                ),
                "{a}"
            );
        }
        s.set_snat(&full, Some("203.0.113.1".parse().unwrap()))
            .unwrap();
    }

    #[test]
    fn zones_are_refused_not_dropped() {
        for b in ["[fe80::1%2]:80", "[fe80::1%eth0]:80", "fe80::1%eth0"] {
            let e = b.parse::<BackendAddr>().unwrap_err().to_string();
            assert!(
                e.contains("it names a zone (%IFACE), which xlb would lose: the kernel's FIB lookup that xlb forwards by takes no interface"),
                "{b}: {e}"
            );
        }
        let e = "[fe80::1%eth0]:80/tcp"
            .parse::<Vip>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("it names a zone"), "{e}");
        let e = parse_addr("fe80::1%eth0").unwrap_err().to_string();
        assert!(
            e.starts_with("'fe80::1%eth0' cannot work: it names a zone"),
            "{e}"
        );
        assert_eq!(
            parse_addr("x").unwrap_err().to_string(),
            "'x' is not an address (expected e.g. 203.0.113.1 or 2001:db8::1)"
        );
    }

    #[test]
    fn an_idle_timeout_of_the_other_protocol_is_refused() {
        let mut s = Services::default();
        let udp = service(&mut s, "192.0.2.10:53/udp", Mode::Nat);
        let tcp = service(&mut s, "192.0.2.10:80/tcp", Mode::Nat);
        let e = s.set_idle(&udp, Some(600), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--tcp-idle is for tcp services; 192.0.2.10:53/udp is a udp service: give it --udp-idle"
        );
        let e = s.set_idle(&tcp, Some(600), Some(5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--udp-idle is for udp services; 192.0.2.10:80/tcp is a tcp service: give it --tcp-idle"
        );
        assert_eq!(s.by_vip[&tcp].tcp_idle, DEFAULT_TCP_IDLE, "nothing changed");
        s.set_idle(&udp, None, Some(5)).unwrap();
        s.set_idle(&tcp, Some(600), None).unwrap();
        assert_eq!((s.by_vip[&udp].udp_idle, s.by_vip[&tcp].tcp_idle), (5, 600));
    }

    #[test]
    fn errors_show_control_and_invisible_characters() {
        let e = "\u{feff}192.0.2.10:80/tcp"
            .parse::<Vip>()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("'\\u{feff}192.0.2.10:80/tcp' is not a service"),
            "{e}"
        );
        let e = "203.0.113.11:80\u{0}"
            .parse::<BackendAddr>()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("'203.0.113.11:80\\u{0}' is not a backend"),
            "{e}"
        );
        let e = "n\tat".parse::<Mode>().unwrap_err().to_string();
        assert_eq!(e, "'n\\tat' is not a mode: use dsr, nat or fullnat");
    }
}
