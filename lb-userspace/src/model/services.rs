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

use super::{health_check::HealthCheck, rules::Proto};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    #[error(
        "'{input}' is not a service: {why} (expected ADDR:PORT/PROTO or ADDR:*/PROTO, e.g. 192.0.2.10:80/tcp, [2001:db8::10]:443/tcp)"
    )]
    BadService { input: String, why: String },
    #[error(
        "'{input}' is not a backend: {why} (expected ADDR:PORT or ADDR, e.g. 203.0.113.11:8080)"
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
    #[error("weight {0} is out of range: use 1 to {max}", max = MAX_WEIGHT)]
    BadWeight(u32),
    #[error("backend {backend} is {bf} but service {service} is {sf}: the families must match")]
    FamilyMismatch {
        service: String,
        backend: String,
        sf: &'static str,
        bf: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
}

pub const MAX_WEIGHT: u32 = 100;
/// Default idle timeouts: an idle SSH session survives an hour; UDP flows are short.
pub const DEFAULT_TCP_IDLE: u32 = 2 * 3600;
pub const DEFAULT_UDP_IDLE: u32 = 30;
/// The longest idle timeout accepted (a week).
pub const MAX_IDLE: u32 = 7 * 24 * 3600;

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
                "'{s}' is not a mode: use dsr, nat or fullnat"
            ))),
        }
    }
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// A service address: address, port (None = every port) and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub addr: IpAddr,
    pub port: Option<u16>,
    pub proto: Proto,
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
        let (host, port) = split_host_port(hp).ok_or_else(|| bad("the port is missing"))?;
        let addr: IpAddr = host
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let port = match port {
            "*" => None,
            p => match p.parse::<u16>() {
                Ok(0) => return Err(bad("port 0 is not a port: use * for every port")),
                Ok(n) => Some(n),
                Err(_) => return Err(bad(&format!("'{p}' is not a port (1-65535 or *)"))),
            },
        };
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(bad("the address must be a unicast address"));
        }
        Ok(Vip { addr, port, proto })
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
        let sa: SocketAddr = s.parse().map_err(|_| bad("not ADDR or ADDR:PORT"))?;
        if sa.port() == 0 {
            return Err(bad("port 0 is not a port"));
        }
        if sa.ip().is_unspecified() || sa.ip().is_multicast() {
            return Err(bad("the address must be a unicast address"));
        }
        Ok(BackendAddr {
            addr: sa.ip(),
            port: Some(sa.port()),
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

    /// Sets a service's idle timeouts (seconds, 1 to MAX_IDLE); None keeps one.
    pub fn set_idle(
        &mut self,
        vip: &Vip,
        tcp: Option<u32>,
        udp: Option<u32>,
    ) -> Result<(), ServiceError> {
        for t in [tcp, udp].into_iter().flatten() {
            if t == 0 || t > MAX_IDLE {
                return Err(ServiceError::Invalid(format!(
                    "idle timeout {t} s is out of range: use 1 to {MAX_IDLE} seconds"
                )));
            }
        }
        let svc = self
            .by_vip
            .get_mut(vip)
            .ok_or_else(|| ServiceError::UnknownService(vip.to_string()))?;
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
            (Mode::Fullnat, Some(a)) if a.is_unspecified() || a.is_multicast() => {
                return Err(ServiceError::Invalid(format!(
                    "snat address {a} cannot be a source address"
                )));
            }
            (Mode::Fullnat, _) => {}
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
        if weight == 0 || weight > MAX_WEIGHT {
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
}
