//! Unit tests of model::services.

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
