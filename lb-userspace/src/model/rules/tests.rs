//! Unit tests of model::rules.

use super::*;

#[test]
fn prefixes_parse_and_reject_host_bits() {
    let p: Prefix = "192.0.2.0/24".parse().unwrap();
    assert_eq!(p.len, 24);
    assert_eq!("192.0.2.7".parse::<Prefix>().unwrap().len, 32);
    assert_eq!("2001:db8::/32".parse::<Prefix>().unwrap().len, 32);
    assert_eq!("2001:db8::1".parse::<Prefix>().unwrap().len, 128);
    assert_eq!("0.0.0.0/0".parse::<Prefix>().unwrap().len, 0);
    let e = "192.0.2.1/24".parse::<Prefix>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "'192.0.2.1/24' has host bits set: did you mean 192.0.2.0/24?"
    );
    assert!(matches!(
        "192.0.2.0/33".parse::<Prefix>(),
        Err(RuleError::BadPrefix { .. })
    ));
    assert!(matches!(
        "2001:db8::1/64".parse::<Prefix>(),
        Err(RuleError::HostBits { .. })
    ));
    assert!(matches!(
        "300.1.1.1".parse::<Prefix>(),
        Err(RuleError::BadPrefix { .. })
    ));
    assert!(matches!(
        "192.0.2.0/x".parse::<Prefix>(),
        Err(RuleError::BadPrefix { .. })
    ));
}

#[test]
fn port_specs_parse_and_reject_nonsense() {
    assert_eq!(
        "80/tcp".parse::<PortSpec>().unwrap(),
        PortSpec {
            proto: Proto::Tcp,
            lo: 80,
            hi: 80
        }
    );
    assert_eq!(
        "1000-2000/udp".parse::<PortSpec>().unwrap(),
        PortSpec {
            proto: Proto::Udp,
            lo: 1000,
            hi: 2000
        }
    );
    for bad in [
        "80",
        "80/icmp",
        "0/tcp",
        "65536/tcp",
        "2000-1000/udp",
        "a/tcp",
        "-5/tcp",
    ] {
        assert!(bad.parse::<PortSpec>().is_err(), "{bad} should fail");
    }
}

#[test]
fn upsert_updates_in_place_and_ids_are_reused() {
    let mut set = RuleSet::default();
    let p = Match::Prefix("192.0.2.0/24".parse().unwrap());
    let Some(Change::Added(r)) = set.upsert(p, Action::Deny).unwrap() else {
        panic!()
    };
    assert_eq!(set.upsert(p, Action::Deny).unwrap(), None);
    let Some(Change::Updated(u, _)) = set.upsert(p, Action::Allow).unwrap() else {
        panic!()
    };
    assert_eq!(r.id, u.id);
    set.remove(&p).unwrap();
    assert!(set.remove(&p).is_err());
    let q = Match::Prefix("198.51.100.0/24".parse().unwrap());
    let Some(Change::Added(r2)) = set.upsert(q, Action::Deny).unwrap() else {
        panic!()
    };
    assert_eq!(r2.id, r.id);
}

#[test]
fn port_table_narrowest_range_wins() {
    let mut set = RuleSet::default();
    set.upsert(Match::Port("1-1000/tcp".parse().unwrap()), Action::Deny)
        .unwrap();
    set.upsert(Match::Port("80/tcp".parse().unwrap()), Action::Allow)
        .unwrap();
    set.upsert(Match::ExceptPort("22/tcp".parse().unwrap()), Action::Allow)
        .unwrap();
    let t = set.port_table();
    let at = |p| t[lb_common::port_index(0, p) as usize];
    assert_eq!(at(79).rule, lb_common::rule_ref(1, true));
    assert_eq!(at(80).rule, lb_common::rule_ref(2, false));
    assert_eq!(at(22).except, 3);
    assert_eq!(at(1001).rule, 0);
    assert_eq!(t[lb_common::port_index(1, 80) as usize].rule, 0);
}

#[test]
fn bulk_files_name_the_bad_line() {
    let ok = parse_bulk(
        "# blocklist\n192.0.2.0/24\n\nallow 198.51.100.7 # friend\n",
        Action::Deny,
    )
    .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].1, Action::Allow);
    let (line, e) = parse_bulk("192.0.2.0/24\n192.0.2.1/24\n", Action::Deny).unwrap_err();
    assert_eq!(line, 2);
    assert!(matches!(e, RuleError::HostBits { .. }));
}

fn prefix_err(s: &str) -> String {
    s.parse::<Prefix>().unwrap_err().to_string()
}

fn port_err(s: &str) -> String {
    s.parse::<PortSpec>().unwrap_err().to_string()
}

#[test]
fn numbers_are_digits_only() {
    assert_eq!(
        port_err("+80/tcp"),
        "'+80/tcp' is not a port spec: '+80' is not a port: write 1-65535 in digits (expected PORT/PROTO or LOW-HIGH/PROTO, e.g. 80/tcp, 1000-2000/udp)"
    );
    assert!(port_err("1000-+2000/udp").contains("'+2000' is not a port"));
    assert!(port_err(" 80/tcp").contains("' 80' is not a port"));
    assert_eq!(
        prefix_err("192.0.2.0/+24"),
        "'192.0.2.0/+24' is not a prefix: the length '+24' is not a number: write 0 to 32 in digits"
    );
    assert!(prefix_err("192.0.2.0/ 24").contains("the length ' 24' is not a number"));
    assert_eq!(parse_id("7"), Ok(7));
    assert_eq!(
        parse_id("+7").unwrap_err(),
        "'+7' is not a rule id: write 1 to 2097151 in digits"
    );
    assert!(parse_id("0").unwrap_err().contains("out of range"));
}

#[test]
fn out_of_range_numbers_say_so() {
    assert!(port_err("70000/tcp").contains("port 70000 is outside 1-65535"));
    assert!(
        port_err("99999999999999999999999/tcp")
            .contains("port 99999999999999999999999 is outside 1-65535"),
        "too large for any integer is still out of range"
    );
    assert_eq!(
        prefix_err("192.0.2.0/99999999999"),
        "'192.0.2.0/99999999999' is not a prefix: the length is over 32: use 0 to 32"
    );
    assert!(prefix_err("2001:db8::/129").contains("the length is over 128: use 0 to 128"));
}

#[test]
fn a_prefix_is_not_a_port_spec_and_the_other_way_round() {
    for p in [
        "192.0.2.0/24",
        "192.0.2.1",
        "2001:db8::/32",
        "192.0.2.300/24",
    ] {
        assert_eq!(
            p.parse::<PortSpec>(),
            Err(RuleError::PrefixNotPort { input: p.into() }),
            "{p}"
        );
    }
    assert_eq!(
        port_err("192.0.2.0/24"),
        "'192.0.2.0/24' is a prefix, not a port spec: prefixes go to `xlb fw deny|allow` (a port spec is PORT/PROTO, e.g. 80/tcp)"
    );
    for p in ["80/tcp", "1000-2000/udp", "80/sctp"] {
        assert_eq!(
            p.parse::<Prefix>(),
            Err(RuleError::PortNotPrefix { input: p.into() }),
            "{p}"
        );
    }
    assert!(prefix_err("80/sctp").contains("port rules go to `xlb fw port deny|allow`"));
    // Still what they were: a bad length, an unknown protocol.
    assert!(prefix_err("192.0.2.0/x").contains("the length 'x' is not a number"));
    assert!(port_err("80/sctp").contains("the protocol is not tcp or udp"));
}

#[test]
fn ipv4_mapped_prefixes_are_refused_with_their_ipv4_form() {
    assert_eq!(
        prefix_err("::ffff:192.0.2.0/120"),
        "'::ffff:192.0.2.0/120' is not a prefix: an IPv4-mapped IPv6 prefix never matches an IPv4 packet (the firewall sees those as IPv4): use 192.0.2.0/24"
    );
    assert!(prefix_err("::ffff:192.0.2.7").ends_with("use 192.0.2.7/32"));
    assert!(prefix_err("::ffff:0:0/96").ends_with("use 0.0.0.0/0"));
    assert!(
        prefix_err("::ffff:192.0.2.7/120").ends_with("use 192.0.2.0/24"),
        "with host bits too: the IPv4 form without them"
    );
    assert!("::/0".parse::<Prefix>().is_ok());
    assert!("::fffe:0:0/96".parse::<Prefix>().is_ok());
}

#[test]
fn zones_are_refused_in_prefixes() {
    assert!(prefix_err("fe80::%eth0/64").contains("a zone (%IFACE) is not part of a prefix"));
    assert!(prefix_err("fe80::1%2").contains("zone"));
    assert!("fe80::/64".parse::<Prefix>().is_ok());
}

#[test]
fn errors_show_control_and_invisible_characters() {
    let e = prefix_err("\u{feff}192.0.2.0/24");
    assert_eq!(
        e,
        "'\\u{feff}192.0.2.0/24' is not a prefix: not an IPv4 or IPv6 address"
    );
    let e = port_err("80\n/tcp");
    assert!(e.contains("'80\\n/tcp'") && !e.contains('\n'), "{e}");
    let e = "de\u{200b}ny".parse::<Action>().unwrap_err().to_string();
    assert!(e.starts_with("'de\\u{200b}ny' is not a policy"), "{e}");
}

fn port(s: &str) -> Match {
    Match::Port(s.parse().unwrap())
}

#[test]
fn equal_width_overlapping_port_ranges_are_refused() {
    let mut set = RuleSet::default();
    set.upsert(port("1000-2000/tcp"), Action::Deny).unwrap();
    let e = set
        .upsert(port("1500-2500/tcp"), Action::Allow)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "port 1500-2500/tcp overlaps rule 1 (port deny 1000-2000/tcp) and is as wide (1001 ports): the narrowest range decides a port, so equal widths leave no winner; make one of them narrower, or move it off the other"
    );
    assert_eq!(set.len(), 1, "nothing added");
    assert!(set.upsert(port("0999-1999/tcp"), Action::Deny).is_err());
    // Narrower, wider, apart, the other protocol, the other kind: a winner each.
    for ok in [
        "1500-2499/tcp",
        "500-2500/tcp",
        "2501-3501/tcp",
        "1500-2500/udp",
    ] {
        set.upsert(port(ok), Action::Allow).unwrap();
    }
    set.upsert(
        Match::ExceptPort("1500-2500/tcp".parse().unwrap()),
        Action::Allow,
    )
    .unwrap();
    let e = set
        .upsert(
            Match::ExceptPort("1400-2400/tcp".parse().unwrap()),
            Action::Allow,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("except 1400-2400/tcp overlaps rule 6 (except 1500-2500/tcp)"),
        "{e}"
    );
    // The same range again is an update, not an overlap.
    assert!(matches!(
        set.upsert(port("1000-2000/tcp"), Action::Allow),
        Ok(Some(Change::Updated(..)))
    ));
    // Once the first is gone, the second has no tie.
    set.remove(&port("1000-2000/tcp")).unwrap();
    set.upsert(port("1500-2500/tcp"), Action::Deny).unwrap();
    // A restored rule is refused the same way.
    let e = set
        .insert_with_id(Rule {
            id: 99,
            matches: port("1000-2000/tcp"),
            action: Action::Deny,
        })
        .unwrap_err();
    assert!(matches!(e, RuleError::SameWidth { .. }), "{e}");
    // Undo puts back what was removed.
    let c = set.remove(&port("1500-2500/tcp")).unwrap();
    set.undo(&[c]);
    assert!(set.get(&port("1500-2500/tcp")).is_some());
    assert!(set.upsert(port("1000-2000/tcp"), Action::Deny).is_err());
}

#[test]
fn restored_rules_are_checked() {
    let mut set = RuleSet::default();
    let rule = |id, p: &str| Rule {
        id,
        matches: Match::Prefix(p.parse().unwrap()),
        action: Action::Deny,
    };
    set.insert_with_id(rule(3, "192.0.2.0/24")).unwrap();
    let e = set.insert_with_id(rule(3, "198.51.100.0/24")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rule 3: the id is already prefix 192.0.2.0/24: each rule has its own"
    );
    let e = set.insert_with_id(rule(4, "192.0.2.0/24")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rule 4: prefix 192.0.2.0/24 is already rule 3"
    );
    assert!(set.insert_with_id(rule(0, "203.0.113.0/24")).is_err());
    assert!(
        set.insert_with_id(rule(MAX_RULES, "203.0.113.0/24"))
            .is_err()
    );
    assert_eq!(set.len(), 1);
}

#[test]
fn a_bulk_file_may_not_allow_and_deny_one_prefix() {
    let (line, e) = parse_bulk(
        "192.0.2.0/24\n198.51.100.0/24\n\nallow 192.0.2.0/24\n",
        Action::Deny,
    )
    .unwrap_err();
    assert_eq!(line, 4);
    assert_eq!(
        e.to_string(),
        "192.0.2.0/24 is allowed here but denied at line 1: keep one of them"
    );
    // Twice with one action is fine.
    let ok = parse_bulk("deny 192.0.2.0/24\n192.0.2.0/24\n", Action::Deny).unwrap();
    assert_eq!(ok.len(), 2);
    // A space inside a prefix is not a policy.
    let (_, e) = parse_bulk("192.0.2.0 /24\n", Action::Deny).unwrap_err();
    assert_eq!(
        e.to_string(),
        "'192.0.2.0 /24' is not a prefix: expected one prefix, optionally after allow or deny (a prefix has no spaces)"
    );
}
