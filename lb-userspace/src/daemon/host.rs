//! What services need of this host: forwarding on the interfaces xlb runs on, and
//! fullnat source addresses that are the host's own.

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

/// Every address configured on this host's interfaces (getifaddrs).
fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listing this host's addresses");
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
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
    Ok(out)
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
    }
    out.extend(seen);
    out
}
