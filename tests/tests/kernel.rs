//! Kernel packet tests: crafted frames through BPF_PROG_TEST_RUN on the real loaded
//! program. Each case is a description, the rules in force, a frame from the packet
//! builder, the expected verdict and reason; the counters must move by exactly that one
//! packet (and its bytes), and a rule-decided packet must add one rule hit.

use lb_common::{Reason, Verdict};
use xlb_tests::{
    fixture::Fixture,
    packet::{ETH_P_8021AD, ETH_P_8021Q, Pkt},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Case {
    what: &'static str,
    rules: &'static [&'static str],
    frame: Vec<u8>,
    verdict: Verdict,
    reason: Reason,
}

fn case(
    what: &'static str,
    rules: &'static [&'static str],
    pkt: Pkt,
    verdict: Verdict,
    reason: Reason,
) -> Case {
    Case {
        what,
        rules,
        frame: pkt.build(),
        verdict,
        reason,
    }
}

fn check_all(cases: Vec<Case>) {
    let mut fx = Fixture::new();
    for c in cases {
        fx.reset();
        fx.rules(c.rules);
        let before = fx.counters();
        let hits_before = fx.total_hits();
        let (action, out) = fx.run(&c.frame);
        let want = match c.verdict {
            Verdict::Pass => XDP_PASS,
            Verdict::Drop => XDP_DROP,
            v => panic!("{}: firewall cases pass or drop, not {v:?}", c.what),
        };
        assert_eq!(action, want, "{}: verdict", c.what);
        if action == XDP_PASS {
            assert_eq!(out, c.frame, "{}: a passed frame is not rewritten", c.what);
        }
        let after = fx.counters();
        for (key, a) in &after {
            let b = before[key];
            let (dp, db) = (a.packets - b.packets, a.bytes - b.bytes);
            if *key == (c.reason, c.verdict) {
                assert_eq!(
                    (dp, db),
                    (1, c.frame.len() as u64),
                    "{}: counter {key:?}",
                    c.what
                );
            } else {
                assert_eq!(dp, 0, "{}: counter {key:?} moved", c.what);
            }
        }
        let by_rule = matches!(
            c.reason,
            Reason::PrefixAllow
                | Reason::PrefixDeny
                | Reason::PortAllow
                | Reason::PortDeny
                | Reason::Except
        );
        assert_eq!(
            fx.total_hits() - hits_before,
            by_rule as u64,
            "{}: rule hits",
            c.what
        );
    }
}

use Reason::*;
use Verdict::{Drop, Pass};

const C4: &str = "192.0.2.10";
const S4: &str = "198.51.100.1";
const C6: &str = "2001:db8:1::10";
const S6: &str = "2001:db8:2::1";

#[test]
fn parse_paths_pass_with_no_rules() {
    check_all(vec![
        case(
            "tcp over ipv4",
            &[],
            Pkt::tcp(C4, S4, 40000, 80),
            Pass,
            Default,
        ),
        case(
            "udp over ipv4",
            &[],
            Pkt::udp(C4, S4, 40000, 53),
            Pass,
            Default,
        ),
        case("icmp echo", &[], Pkt::ping(C4, S4), Pass, Default),
        case("gre (no ports)", &[], Pkt::raw(C4, S4, 47), Pass, Default),
        case(
            "tcp over ipv6",
            &[],
            Pkt::tcp(C6, S6, 40000, 443),
            Pass,
            Default,
        ),
        case(
            "udp over ipv6",
            &[],
            Pkt::udp(C6, S6, 40000, 53),
            Pass,
            Default,
        ),
        case("icmpv6 echo", &[], Pkt::ping(C6, S6), Pass, Default),
        case("arp is not ip", &["default deny"], Pkt::arp(), Pass, NonIp),
        case(
            "802.1q tag",
            &[],
            Pkt::tcp(C4, S4, 1, 80).vlan(ETH_P_8021Q, 10),
            Pass,
            Default,
        ),
        case(
            "qinq (802.1ad + 802.1q)",
            &[],
            Pkt::udp(C6, S6, 1, 53)
                .vlan(ETH_P_8021AD, 100)
                .vlan(ETH_P_8021Q, 10),
            Pass,
            Default,
        ),
        case(
            "ipv4 options (record route, 40 bytes)",
            &[],
            Pkt::tcp(C4, S4, 1, 80).options(&[7; 40]),
            Pass,
            Default,
        ),
        case(
            "ipv6 hop-by-hop, routing, dest options",
            &[],
            Pkt::tcp(C6, S6, 1, 80).ext(0, 0).ext(43, 1).ext(60, 2),
            Pass,
            Default,
        ),
        case(
            "ipv6 ah",
            &[],
            Pkt::tcp(C6, S6, 1, 80).ext(51, 1),
            Pass,
            Default,
        ),
    ]);
}

#[test]
fn malformed_frames_are_counted_by_reason_and_follow_policy() {
    let three_tags = Pkt::tcp(C4, S4, 1, 80)
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021Q, 2)
        .vlan(ETH_P_8021Q, 3);
    let nine_ext = (0..9).fold(Pkt::udp(C6, S6, 1, 53), |p, _| p.ext(60, 0));
    let mut bad_version = Pkt::tcp(C4, S4, 1, 80).build();
    bad_version[14] = 0x55;
    let mut bad_ihl = Pkt::tcp(C4, S4, 1, 80).build();
    bad_ihl[14] = 0x44;
    let mut long_total = Pkt::tcp(C4, S4, 1, 80).build();
    long_total[17] += 1;
    let mut bad_v6 = Pkt::tcp(C6, S6, 1, 80).build();
    bad_v6[14] = 0x40;
    let mut bad_doff = Pkt::tcp(C4, S4, 1, 80).build();
    bad_doff[14 + 20 + 12] = 4 << 4;
    let raw = |what, frame: Vec<u8>, reason| Case {
        what,
        rules: &[],
        frame,
        verdict: Drop,
        reason,
    };
    check_all(vec![
        case("three vlan tags", &[], three_tags.clone(), Drop, BadVlan),
        case(
            "three vlan tags, malformed allow",
            &["malformed allow"],
            three_tags,
            Pass,
            BadVlan,
        ),
        case(
            "nine ipv6 extension headers",
            &[],
            nine_ext,
            Drop,
            BadIpv6Ext,
        ),
        case(
            "tcp header cut to 19 bytes",
            &[],
            Pkt::tcp(C4, S4, 1, 80).l4_cut(19),
            Drop,
            BadL4,
        ),
        case(
            "udp header cut to 7 bytes",
            &[],
            Pkt::udp(C6, S6, 1, 53).l4_cut(7),
            Drop,
            BadL4,
        ),
        case(
            "icmp header cut to 7 bytes",
            &[],
            Pkt::ping(C4, S4).l4_cut(7),
            Drop,
            BadL4,
        ),
        case(
            "icmpv6 header cut to 4 bytes",
            &[],
            Pkt::ping(C6, S6).l4_cut(4),
            Drop,
            BadL4,
        ),
        raw("ipv4 version 5", bad_version, BadIpv4),
        raw("ipv4 ihl 4", bad_ihl, BadIpv4),
        raw("ipv4 total length past the frame", long_total, BadIpv4),
        raw("ipv6 header with version 4", bad_v6, BadIpv6),
        raw("tcp data offset 4", bad_doff, BadL4),
    ]);
}

/// Cuts a frame at every byte boundary inside its headers: each cut is counted under the
/// reason of the layer that is incomplete (lengths in the IP header then disagree with
/// the frame, so the IP layer notices first).
#[test]
fn truncation_at_every_header_boundary() {
    let v4 = Pkt::tcp(C4, S4, 1, 80)
        .vlan(ETH_P_8021Q, 7)
        .options(&[1; 4])
        .build();
    let v6 = Pkt::udp(C6, S6, 1, 53)
        .ext(0, 0)
        .ipv6_fragment(0, true)
        .build();
    let mut cases = Vec::new();
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL), so
    // TruncEth cannot be reached from here; cuts start at 14 bytes.
    for n in 14..(14 + 4 + 24 + 20) {
        let reason = match n {
            14..18 => BadVlan,
            _ => BadIpv4,
        };
        cases.push(Case {
            what: "ipv4 cut",
            rules: &[],
            frame: v4[..n].to_vec(),
            verdict: Drop,
            reason,
        });
    }
    for n in 14..(14 + 40 + 16 + 8) {
        cases.push(Case {
            what: "ipv6 cut",
            rules: &[],
            frame: v6[..n].to_vec(),
            verdict: Drop,
            reason: BadIpv6,
        });
    }
    // Lengths kept consistent: the extension or layer-4 header itself is short.
    for n in 0..20 {
        cases.push(case(
            "tcp cut",
            &[],
            Pkt::tcp(C4, S4, 1, 80).payload(&[]).l4_cut(n),
            Drop,
            BadL4,
        ));
    }
    for n in 0..8 {
        cases.push(case(
            "udp cut",
            &[],
            Pkt::udp(C6, S6, 1, 53).payload(&[]).l4_cut(n),
            Drop,
            BadL4,
        ));
    }
    let mut ext = Pkt::raw(C6, S6, 59).payload(&[]).build();
    ext[14 + 6] = 60; // next header: destination options, but nothing follows
    cases.push(Case {
        what: "ipv6 ext header missing",
        rules: &[],
        frame: ext,
        verdict: Drop,
        reason: BadIpv6Ext,
    });
    check_all(cases);
}

#[test]
fn fragments() {
    check_all(vec![
        case(
            "first ipv4 fragment has ports",
            &["port deny 53/udp"],
            Pkt::udp(C4, S4, 1, 53).fragment(0, true),
            Drop,
            PortDeny,
        ),
        case(
            "later ipv4 fragment: no ports, default",
            &["port deny 53/udp"],
            Pkt::udp(C4, S4, 1, 53).fragment(185, false),
            Pass,
            Default,
        ),
        case(
            "later ipv4 fragment: source prefix still applies",
            &["deny 192.0.2.0/24"],
            Pkt::udp(C4, S4, 1, 53).fragment(185, false),
            Drop,
            PrefixDeny,
        ),
        case(
            "first ipv6 fragment has ports",
            &["port deny 53/udp"],
            Pkt::udp(C6, S6, 1, 53).ipv6_fragment(0, true),
            Drop,
            PortDeny,
        ),
        case(
            "later ipv6 fragment: no ports",
            &["port deny 53/udp"],
            Pkt::udp(C6, S6, 1, 53).ipv6_fragment(100, false),
            Pass,
            Default,
        ),
        case(
            "later ipv6 fragment: source prefix",
            &["deny 2001:db8:1::/48"],
            Pkt::udp(C6, S6, 1, 53).ipv6_fragment(100, false),
            Drop,
            PrefixDeny,
        ),
    ]);
}

#[test]
fn every_rule_kind_ipv4_and_ipv6() {
    check_all(vec![
        case(
            "deny /24",
            &["deny 192.0.2.0/24"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "deny /32",
            &["deny 192.0.2.10/32"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "deny /32 misses a neighbour",
            &["deny 192.0.2.11/32"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            Default,
        ),
        case(
            "deny /28 (longer than /24)",
            &["deny 192.0.2.0/28"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "deny /8",
            &["deny 192.0.0.0/8"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "deny /0",
            &["deny 0.0.0.0/0"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "allow under default deny",
            &["default deny", "allow 192.0.2.0/24"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            PrefixAllow,
        ),
        case(
            "default deny",
            &["default deny"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            Default,
        ),
        case(
            "ipv6 deny /48",
            &["deny 2001:db8:1::/48"],
            Pkt::tcp(C6, S6, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "ipv6 deny /128",
            &["deny 2001:db8:1::10/128"],
            Pkt::tcp(C6, S6, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "ipv6 deny /128 misses",
            &["deny 2001:db8:1::11/128"],
            Pkt::tcp(C6, S6, 1, 80),
            Pass,
            Default,
        ),
        case(
            "ipv4 rule ignores ipv6",
            &["deny 0.0.0.0/0"],
            Pkt::tcp(C6, S6, 1, 80),
            Pass,
            Default,
        ),
        case(
            "port deny tcp",
            &["port deny 80/tcp"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PortDeny,
        ),
        case(
            "port deny is per protocol",
            &["port deny 80/tcp"],
            Pkt::udp(C4, S4, 1, 80),
            Pass,
            Default,
        ),
        case(
            "port range udp",
            &["port deny 1000-2000/udp"],
            Pkt::udp(C6, S6, 1, 1500),
            Drop,
            PortDeny,
        ),
        case(
            "port range edge",
            &["port deny 1000-2000/udp"],
            Pkt::udp(C6, S6, 1, 2001),
            Pass,
            Default,
        ),
        case(
            "port allow under default deny",
            &["default deny", "port allow 443/tcp"],
            Pkt::tcp(C6, S6, 1, 443),
            Pass,
            PortAllow,
        ),
        case(
            "narrowest port range wins",
            &["port deny 1-1024/tcp", "port allow 80/tcp"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            PortAllow,
        ),
        case(
            "icmp has no port",
            &["default deny", "port allow 80/tcp"],
            Pkt::ping(C4, S4),
            Drop,
            Default,
        ),
        case(
            "except prefix",
            &["default deny", "except 192.0.2.0/24"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            Except,
        ),
        case(
            "except port",
            &["default deny", "except 22/tcp"],
            Pkt::tcp(C6, S6, 1, 22),
            Pass,
            Except,
        ),
        case(
            "except ipv6 prefix",
            &["deny 2001:db8::/32", "except 2001:db8:1::/64"],
            Pkt::udp(C6, S6, 1, 53),
            Pass,
            Except,
        ),
    ]);
}

/// always-allow > source prefix > port rule > default.
#[test]
fn precedence() {
    check_all(vec![
        case(
            "except prefix beats a longer deny",
            &["deny 192.0.2.10/32", "except 192.0.2.0/24"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            Except,
        ),
        case(
            "except port beats a prefix deny",
            &["deny 192.0.2.0/24", "except 22/tcp"],
            Pkt::tcp(C4, S4, 1, 22),
            Pass,
            Except,
        ),
        case(
            "except port beats a port deny",
            &["port deny 1-1024/tcp", "except 22/tcp"],
            Pkt::tcp(C4, S4, 1, 22),
            Pass,
            Except,
        ),
        case(
            "prefix deny beats port allow",
            &["deny 192.0.2.0/24", "port allow 80/tcp"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "prefix allow beats port deny",
            &["allow 192.0.2.0/24", "port deny 80/tcp"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            PrefixAllow,
        ),
        case(
            "port deny beats default allow",
            &["port deny 80/tcp"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PortDeny,
        ),
        case(
            "port allow beats default deny",
            &["default deny", "port allow 80/tcp"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            PortAllow,
        ),
        case(
            "longest prefix wins: allow /28 inside deny /16",
            &["deny 192.0.0.0/16", "allow 192.0.2.0/28"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            PrefixAllow,
        ),
        case(
            "longest prefix wins: deny /32 inside allow /24",
            &["allow 192.0.2.0/24", "deny 192.0.2.10/32"],
            Pkt::tcp(C4, S4, 1, 80),
            Drop,
            PrefixDeny,
        ),
        case(
            "longest prefix wins (ipv6)",
            &["deny 2001:db8::/32", "allow 2001:db8:1::/48"],
            Pkt::tcp(C6, S6, 1, 80),
            Pass,
            PrefixAllow,
        ),
        case(
            "except does not turn a pass into anything else",
            &["except 192.0.2.0/24"],
            Pkt::tcp(C4, S4, 1, 80),
            Pass,
            Default,
        ),
    ]);
}

/// Adding and removing overlapping prefixes repaints the IPv4 table correctly.
#[test]
fn ipv4_table_repaints_on_removal() {
    use xlb::api::Request;
    let mut fx = Fixture::new();
    let frame = Pkt::tcp(C4, S4, 1, 80).build();
    let verdict = |fx: &Fixture| fx.run(&frame).0;
    fx.rules(&[
        "deny 192.0.0.0/8",
        "allow 192.0.2.0/24",
        "deny 192.0.2.8/29",
        "allow 192.0.2.10/32",
    ]);
    assert_eq!(verdict(&fx), XDP_PASS, "/32 allow");
    let del = |fx: &mut Fixture, p: &str| {
        fx.req(Request::Del {
            except: false,
            targets: vec![p.into()],
        })
    };
    del(&mut fx, "192.0.2.10/32");
    assert_eq!(verdict(&fx), XDP_DROP, "/29 deny after /32 removed");
    del(&mut fx, "192.0.2.8/29");
    assert_eq!(verdict(&fx), XDP_PASS, "/24 allow after /29 removed");
    del(&mut fx, "192.0.2.0/24");
    assert_eq!(verdict(&fx), XDP_DROP, "/8 deny after /24 removed");
    del(&mut fx, "192.0.0.0/8");
    assert_eq!(verdict(&fx), XDP_PASS, "nothing left");
    // A /16 added after a /24 must not overwrite the /24.
    fx.rules(&["allow 192.0.2.0/24", "deny 192.0.0.0/16"]);
    assert_eq!(verdict(&fx), XDP_PASS);
    assert_eq!(
        fx.run(&Pkt::tcp("192.0.3.1", S4, 1, 80).build()).0,
        XDP_DROP
    );
}

/// The long-prefix table (/25../32): many entries, removal leaves the others, a removed
/// slot is reused, and every length is found (longest first).
#[test]
fn long_ipv4_prefixes_add_remove_reuse() {
    use xlb::api::Request;
    let mut fx = Fixture::new();
    // 4096 hosts in 16 /24s, plus one prefix of every length 25..=32 in 192.0.2.0/24.
    let hosts: Vec<String> = (0..4096u32)
        .map(|i| format!("203.0.{}.{}", 100 + i / 256, i % 256))
        .collect();
    fx.req(Request::Load {
        action: lb_common_deny(),
        text: hosts.join("\n"),
        replace: false,
    });
    let probe = |fx: &Fixture, ip: &str| fx.run(&Pkt::tcp(ip, S4, 1, 80).build()).0;
    for ip in hosts.iter().step_by(97) {
        assert_eq!(probe(&fx, ip), XDP_DROP, "{ip}");
    }
    let removed: Vec<String> = hosts.iter().step_by(2).cloned().collect();
    fx.req(Request::Del {
        except: false,
        targets: removed.iter().map(|h| format!("{h}/32")).collect(),
    });
    for (i, ip) in hosts.iter().enumerate().step_by(31) {
        let want = if i % 2 == 0 { XDP_PASS } else { XDP_DROP };
        assert_eq!(probe(&fx, ip), want, "{ip} after removing every other host");
    }
    fx.req(Request::Load {
        action: lb_common_deny(),
        text: removed.join("\n"),
        replace: false,
    });
    for ip in hosts.iter().step_by(13) {
        assert_eq!(probe(&fx, ip), XDP_DROP, "{ip} re-added");
    }
    // Nested lengths: the longest match decides, whatever the order of lengths.
    fx.req(Request::Flush);
    fx.rules(&[
        "deny 192.0.2.0/25",
        "allow 192.0.2.0/26",
        "deny 192.0.2.0/27",
        "allow 192.0.2.0/28",
    ]);
    fx.rules(&[
        "deny 192.0.2.0/29",
        "allow 192.0.2.0/30",
        "deny 192.0.2.0/31",
        "allow 192.0.2.0/32",
    ]);
    for (ip, want) in [
        ("192.0.2.0", XDP_PASS),
        ("192.0.2.1", XDP_DROP),
        ("192.0.2.2", XDP_PASS),
        ("192.0.2.4", XDP_DROP),
        ("192.0.2.8", XDP_PASS),
        ("192.0.2.16", XDP_DROP),
        ("192.0.2.32", XDP_PASS),
        ("192.0.2.64", XDP_DROP),
        ("192.0.2.128", XDP_PASS),
    ] {
        assert_eq!(probe(&fx, ip), want, "{ip}");
    }
}

fn lb_common_deny() -> xlb::model::rules::Action {
    xlb::model::rules::Action::Deny
}

/// Scale: a million IPv4 and a million IPv6 prefixes load, and are looked up.
#[test]
fn a_million_ipv4_and_a_million_ipv6_prefixes_load() {
    use xlb::api::Request;
    let mut fx = Fixture::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v4 = std::collections::HashSet::new();
    while v4.len() < 1_000_000 {
        v4.insert(next() as u32);
    }
    let text: String = v4
        .iter()
        .map(|a| format!("{}\n", std::net::Ipv4Addr::from(*a)))
        .collect();
    let r = fx.req(Request::Load {
        action: lb_common_deny(),
        text,
        replace: false,
    });
    assert_eq!(r["added"], 1_000_000);
    let v6: String = (0..1_000_000u64)
        .map(|i| format!("2001:db8:{:x}:{:x}::/64\n", (i >> 16) & 0xffff, i & 0xffff))
        .collect();
    let r = fx.req(Request::Load {
        action: lb_common_deny(),
        text: v6,
        replace: false,
    });
    assert_eq!(r["added"], 1_000_000);
    assert_eq!(r["rules"], 2_000_000);
    for a in v4.iter().take(50) {
        let ip = std::net::Ipv4Addr::from(*a).to_string();
        assert_eq!(
            fx.run(&Pkt::tcp(&ip, S4, 1, 80).build()).0,
            XDP_DROP,
            "{ip}"
        );
    }
    assert_eq!(
        fx.run(&Pkt::tcp("2001:db8:f:423f::1", S6, 1, 80).build()).0,
        XDP_DROP
    );
    assert_eq!(
        fx.run(&Pkt::tcp("2001:db8:f:4240::1", S6, 1, 80).build()).0,
        XDP_PASS
    );
}

/// Hit counters read in batches (`xlb fw list`) agree with one-by-one reads, beyond the
/// first batch of 65536 ids too.
#[test]
fn batched_hit_counters_match() {
    use xlb::api::Request;
    let mut fx = Fixture::new();
    let text: String = (0..70_000u32)
        .map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x0a00_0000 + i * 256)))
        .collect();
    fx.req(Request::Load {
        action: lb_common_deny(),
        text,
        replace: false,
    });
    fx.rules(&["deny 192.0.2.0/24"]);
    for _ in 0..3 {
        assert_eq!(fx.run(&Pkt::tcp(C4, S4, 1, 80).build()).0, XDP_DROP);
    }
    assert_eq!(fx.run(&Pkt::tcp("10.0.0.0", S4, 1, 80).build()).0, XDP_DROP);
    let last = fx.edge.rules.rules().map(|r| r.id).max().unwrap();
    let all = fx.edge.dp.fw.all_rule_hits(last + 1).unwrap();
    for r in fx.edge.rules.rules() {
        assert_eq!(
            all[r.id as usize],
            fx.edge.dp.fw.rule_hits(r.id).unwrap(),
            "rule {}",
            r.id
        );
    }
    assert_eq!(
        all[last as usize], 3,
        "the /24 rule, beyond the first batch"
    );
    assert_eq!(all.iter().sum::<u64>(), 4);
}
