//! What services need of this host: forwarding on the interfaces xlb runs on, fullnat
//! source addresses and listen addresses that are the host's own, and backends that
//! are not (nor a broadcast address of one of its subnets).

use std::net::IpAddr;

use anyhow::{Context, Result, bail};

use crate::model::services::{ServiceError, Services, Vip};

/// Services forward packets: the kernel's FIB lookup from XDP needs forwarding on, on
/// every interface xlb runs on.
pub(super) fn check_forwarding(ifaces: &[String], vip: &Vip) -> Result<()> {
    for iface in ifaces {
        let path = if vip.addr.is_ipv4() {
            format!("/proc/sys/net/ipv4/conf/{iface}/forwarding")
        } else {
            "/proc/sys/net/ipv6/conf/all/forwarding".to_string()
        };
        let on = std::fs::read_to_string(&path)
            .map(|v| v.trim() == "1")
            .unwrap_or(false);
        if !on {
            let key = path.trim_start_matches("/proc/sys/").replace('/', ".");
            bail!(
                "forwarding is off ({path}): xlb forwards service traffic, enable it with `sysctl -w {key}=1`"
            );
        }
    }
    Ok(())
}

/// What a plan's services need of this host: forwarding for new services, and each
/// fullnat source address that is new or changed must be this host's.
pub(super) fn check_new_services(
    current: &Services,
    next: &Services,
    ifaces: &[String],
) -> Result<()> {
    for (vip, conf) in &next.by_vip {
        let cur = current.by_vip.get(vip);
        if cur.is_none() {
            check_forwarding(ifaces, vip)?;
        }
        if let Some(a) = conf.snat
            && cur.and_then(|c| c.snat) != Some(a)
        {
            ensure_local(a).with_context(|| format!("service {vip}"))?;
        }
        for b in conf.backends.keys() {
            if cur.is_none_or(|c| !c.backends.contains_key(b)) {
                ensure_backend_remote(vip, b.addr)?;
            }
        }
    }
    Ok(())
}

/// A fullnat source address must be this host's: the backends' replies are sent to it,
/// and the kernel answers ARP / neighbour solicitations for it.
pub(super) fn ensure_local(a: IpAddr) -> Result<(), ServiceError> {
    let local = local_addresses().map_err(|e| ServiceError::Invalid(format!("{e:#}")))?;
    if !local.contains(&a) {
        return Err(ServiceError::Invalid(format!(
            "{a} is not an address of this host: add it to the interface towards the backends (ip addr add {a}/PREFIX dev IFACE) before using it as --snat"
        )));
    }
    Ok(())
}

/// A backend must be another host: one of this host's addresses, or the broadcast
/// address of one of its IPv4 subnets, would have xlb send the service's packets to
/// itself (or to every host of the segment).
pub(super) fn ensure_backend_remote(vip: &Vip, b: IpAddr) -> Result<(), ServiceError> {
    let (local, broadcast) =
        host_addresses().map_err(|e| ServiceError::Invalid(format!("{e:#}")))?;
    if local.contains(&b) {
        return Err(ServiceError::Unusable(format!(
            "backend {b} of service {vip} cannot work: it is an address of this host, so xlb would send the service's packets to itself; use the address of a server behind xlb"
        )));
    }
    if broadcast.contains(&b) {
        return Err(ServiceError::Unusable(format!(
            "backend {b} of service {vip} cannot work: it is the broadcast address of one of this host's subnets"
        )));
    }
    Ok(())
}

/// A listen address (`[tls] listen`, `[metrics] listen`) must be this host's, or the
/// unspecified address (every address): binding anything else fails at start.
fn ensure_listen_local(what: &str, a: std::net::SocketAddr) -> Result<(), String> {
    if a.ip().is_unspecified() {
        return Ok(());
    }
    let (local, _) = host_addresses().map_err(|e| format!("{e:#}"))?;
    if local.contains(&a.ip()) {
        return Ok(());
    }
    Err(format!(
        "{what} {a}: {} is not an address of this host, so xlb could not listen there",
        a.ip()
    ))
}

/// Every address configured on this host's interfaces (getifaddrs).
fn local_addresses() -> Result<Vec<IpAddr>> {
    Ok(host_addresses()?.0)
}

/// This host's addresses, and the broadcast addresses of its IPv4 subnets (/30 and
/// wider: a /31 or /32 has none).
fn host_addresses() -> Result<(Vec<IpAddr>, Vec<IpAddr>)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listing this host's addresses");
    }
    let (mut out, mut broadcast) = (Vec::new(), Vec::new());
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    let addr = u32::from_be(sin.sin_addr.s_addr);
                    out.push(IpAddr::from(addr.to_be_bytes()));
                    if !ifa.ifa_netmask.is_null() {
                        let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                        let mask = u32::from_be(m.sin_addr.s_addr);
                        if mask.count_ones() <= 30 {
                            broadcast.push(IpAddr::from((addr | !mask).to_be_bytes()));
                        }
                    }
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    unsafe { libc::freeifaddrs(head) };
    Ok((out, broadcast))
}

/// What `xlb run` would refuse on this host for `cfg` (`xlb check-config` reports it
/// too): interfaces that do not exist, forwarding off for its services, fullnat source
/// addresses that are not the host's.
pub fn problems(cfg: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    for i in &cfg.interfaces {
        let Ok(c) = std::ffi::CString::new(i.name.as_str()) else {
            continue;
        };
        // SAFETY: c is a valid C string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            out.push(format!(
                "interface '{}' does not exist on this host",
                i.name
            ));
        }
    }
    let names: Vec<String> = cfg.interfaces.iter().map(|i| i.name.clone()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for (vip, conf) in &cfg.projection.services.by_vip {
        if let Err(e) = check_forwarding(&names, vip) {
            seen.insert(format!("{e:#}"));
        }
        if let Some(a) = conf.snat
            && let Err(e) = ensure_local(a)
        {
            seen.insert(format!("service {vip}: {e}"));
        }
        for b in conf.backends.keys() {
            if let Err(e) = ensure_backend_remote(vip, b.addr) {
                seen.insert(e.to_string());
            }
        }
    }
    out.extend(seen);
    if let Some(h) = &cfg.https {
        for a in h.listen.iter().chain(&h.redirect_listen) {
            out.extend(ensure_listen_local("tls.listen", *a).err());
        }
    }
    if let Some(crate::config::MetricsListen::At(a)) = cfg.metrics {
        out.extend(ensure_listen_local("metrics.listen", a).err());
    }
    out
}
