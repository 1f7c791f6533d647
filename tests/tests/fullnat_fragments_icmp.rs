//! Kernel packet tests of the balancer's less common paths: fullnat (both ends
//! rewritten, ports allocated without collisions), fragments after the first (they
//! follow their datagram's first fragment) and ICMP errors about a flow (sent to the
//! flow's backend, rewritten as the mode rewrites the flow).

use std::{collections::HashSet, net::IpAddr};

use lb_common::{Reason, Verdict};
use xlb::{api::Request, model::services::Mode};
use xlb_tests::{
    fixture::{
        BACKEND_MACS, CLIENT_MAC, Lb, XDP_PASS, XDP_TX, backend_index, dst_ip, ports, setup, src_ip,
    },
    packet::{Pkt, assert_checksums, checksum},
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn is_v6(f: &[u8]) -> bool {
    u16::from_be_bytes([f[12], f[13]]) == 0x86dd
}

/// TTL or hop limit.
fn ttl(f: &[u8]) -> u8 {
    if is_v6(f) { f[21] } else { f[22] }
}

/// A frame from backend `i` to xlb.
fn from_backend(lb: &Lb, i: usize, p: Pkt) -> Vec<u8> {
    let mut f = p.build();
    f[0..6].copy_from_slice(&lb.mac);
    f[6..12].copy_from_slice(&BACKEND_MACS[i]);
    f
}

struct Family {
    vip: &'static str,
    vip_ip: &'static str,
    snat: &'static str,
    client: &'static str,
    backends: [&'static str; 3],
}

const V4: Family = Family {
    vip: "198.51.100.70:80/tcp",
    vip_ip: "198.51.100.70",
    snat: "203.0.113.1",
    client: "192.0.2.2",
    backends: ["203.0.113.11", "203.0.113.12", "203.0.113.13"],
};

const V6: Family = Family {
    vip: "[2001:db8:f::70]:80/tcp",
    vip_ip: "2001:db8:f::70",
    snat: "2001:db8:b::1",
    client: "2001:db8:c::2",
    backends: ["2001:db8:b::11", "2001:db8:b::12", "2001:db8:b::13"],
};

fn with_port(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn add_service(lb: &mut Lb, fam: &Family, mode: Mode) {
    match mode {
        Mode::Fullnat => lb.fullnat(fam.vip, fam.snat),
        m => lb.vip(fam.vip, m, false),
    }
    // dsr cannot change ports: its backends listen on the service port.
    let port = if mode == Mode::Dsr { 80 } else { 8080 };
    for b in fam.backends {
        lb.backend(fam.vip, &with_port(b, port), 1);
    }
}

#[test]
fn fullnat_rewrites_both_ends_and_replies_come_back() {
    let mut lb = setup();
    for fam in [V4, V6] {
        add_service(&mut lb, &fam, Mode::Fullnat);
        let input = lb.frame(Pkt::tcp(fam.client, fam.vip_ip, 40000, 80));
        let (action, out) = lb.run(&input);
        assert_eq!(action, XDP_TX, "{}: forwarded", fam.vip);
        let i = backend_index(&out);
        assert_eq!(out[6..12], lb.mac);
        assert_eq!(
            dst_ip(&out),
            ip(fam.backends[i]),
            "destination: the backend"
        );
        assert_eq!(src_ip(&out), ip(fam.snat), "source: xlb's snat address");
        let (sport, dport) = ports(&out);
        assert_eq!(dport, 8080);
        assert!(
            sport >= lb_common::FULLNAT_PORT_MIN,
            "allocated port {sport}"
        );
        assert_eq!(ttl(&out), 63);
        assert_checksums(&out);
        // The flow keeps its backend and its port.
        let again = lb.run(&input).1;
        assert_eq!((backend_index(&again), ports(&again)), (i, (sport, dport)));
        // The backend answers xlb's address; the client sees the service.
        let reply = from_backend(&lb, i, Pkt::tcp(fam.backends[i], fam.snat, 8080, sport));
        let (action, back) = lb.run(&reply);
        assert_eq!(action, XDP_TX, "{}: reply", fam.vip);
        assert_eq!(src_ip(&back), ip(fam.vip_ip));
        assert_eq!(dst_ip(&back), ip(fam.client));
        assert_eq!(ports(&back), (80, 40000));
        assert_eq!(back[0..6], CLIENT_MAC);
        assert_eq!(ttl(&back), 63);
        assert_checksums(&back);
        // A packet to the snat address that is no flow's reply is the host's.
        let stray = from_backend(&lb, i, Pkt::tcp(fam.backends[i], fam.snat, 8080, 999));
        assert_eq!(lb.run(&stray).0, XDP_PASS);
    }
    // UDP too.
    let vip = "198.51.100.71:53/udp";
    lb.fullnat(vip, "203.0.113.1");
    lb.backend(vip, "203.0.113.12:5353", 1);
    let (action, out) = lb.run(&lb.frame(Pkt::udp("192.0.2.2", "198.51.100.71", 5000, 53)));
    assert_eq!((action, backend_index(&out)), (XDP_TX, 1));
    assert_eq!(src_ip(&out), ip("203.0.113.1"));
    assert_eq!(ports(&out).1, 5353);
    assert_checksums(&out);
    let sport = ports(&out).0;
    let reply = from_backend(&lb, 1, Pkt::udp("203.0.113.12", "203.0.113.1", 5353, sport));
    let (action, back) = lb.run(&reply);
    assert_eq!(action, XDP_TX);
    assert_eq!(
        (src_ip(&back), dst_ip(&back)),
        (ip("198.51.100.71"), ip("192.0.2.2"))
    );
    assert_eq!(ports(&back), (53, 5000));
    assert_checksums(&back);
}

/// More flows (from two client addresses) than there are source ports: the ports come
/// round again (each CPU hands them out in turn), so later flows find ports a live flow
/// to the same backend holds and the retry path runs. No (backend, port) pair is given
/// twice, every flow gets a port, and each reply finds its own client.
#[test]
fn fullnat_ports_never_collide() {
    let mut lb = setup();
    add_service(&mut lb, &V4, Mode::Fullnat);
    let span = 65536 - u32::from(lb_common::FULLNAT_PORT_MIN);
    let flows = span + 2000;
    let mut taken = HashSet::new();
    let (mut client, mut cport) = (0u32, 1024u16);
    for _ in 0..flows {
        // A new client address every 60000 ports (all in 192.0.2.0/24).
        if cport == 61024 {
            (client, cport) = (client + 1, 1024);
        }
        let addr = format!("192.0.2.{}", 2 + client);
        let (action, out) = lb.run(&lb.frame(Pkt::tcp(&addr, V4.vip_ip, cport, 80)));
        assert_eq!(action, XDP_TX, "flow {addr}:{cport}: forwarded");
        let i = backend_index(&out);
        let sport = ports(&out).0;
        assert!(
            taken.insert((i, sport)),
            "port {sport} of backend {i} given twice"
        );
        let reply = from_backend(&lb, i, Pkt::tcp(V4.backends[i], V4.snat, 8080, sport));
        let back = lb.run(&reply).1;
        assert_eq!(
            (dst_ip(&back), ports(&back)),
            (ip(&addr), (80, cport)),
            "reply of {addr}:{cport}"
        );
        cport += 1;
    }
    // One flow-table entry per fullnat flow: its replies find it through its port's slot.
    let stats = lb.fx.req(Request::Stats);
    assert_eq!(
        (&stats["flows"]["forward"], &stats["flows"]["reply"]),
        (&serde_json::json!(flows), &serde_json::json!(0)),
        "flow-table entries"
    );
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut lb = setup();
    for (mode, vip, vip_ip, client, backend_port) in [
        (
            Mode::Nat,
            "198.51.100.80:53/udp",
            "198.51.100.80",
            "192.0.2.2",
            5353,
        ),
        (
            Mode::Dsr,
            "[2001:db8:f::80]:53/udp",
            "2001:db8:f::80",
            "2001:db8:c::2",
            53,
        ),
        (
            Mode::Fullnat,
            "198.51.100.81:53/udp",
            "198.51.100.81",
            "192.0.2.2",
            5353,
        ),
    ] {
        match mode {
            Mode::Fullnat => lb.fullnat(vip, "203.0.113.1"),
            m => lb.vip(vip, m, false),
        }
        let fam = if client.contains(':') { &V6 } else { &V4 };
        for b in fam.backends {
            lb.backend(vip, &with_port(b, backend_port), 1);
        }
        let v6 = client.contains(':');
        let mut used = HashSet::new();
        for id in 1..=30u32 {
            let udp = Pkt::udp(client, vip_ip, 20000 + id as u16, 53).frag_id(id);
            let (first, later) = if v6 {
                (
                    udp.clone().ipv6_fragment(0, true),
                    udp.ipv6_fragment(100, false),
                )
            } else {
                (udp.clone().fragment(0, true), udp.fragment(100, false))
            };
            let (action, out) = lb.run(&lb.frame(first));
            assert_eq!(action, XDP_TX, "{vip}: first fragment");
            let i = backend_index(&out);
            used.insert(i);
            let input = lb.frame(later);
            let (action, out) = lb.run(&input);
            assert_eq!(action, XDP_TX, "{vip}: later fragment {id}");
            assert_eq!(
                backend_index(&out),
                i,
                "{vip}: fragment {id} follows its datagram"
            );
            let l3 = if v6 { 54 } else { 34 };
            assert_eq!(out[l3..], input[l3..], "no layer-4 header to rewrite");
            if mode != Mode::Dsr {
                assert_eq!(dst_ip(&out), ip(fam.backends[i]));
                assert_eq!(checksum(&out[14..34], 0), 0, "IPv4 header checksum");
            }
            if mode == Mode::Fullnat {
                assert_eq!(src_ip(&out), ip("203.0.113.1"));
            }
        }
        assert!(used.len() > 1, "{vip}: datagrams spread over backends");
        // A later fragment whose first fragment was never seen is left to the kernel.
        let udp = Pkt::udp(client, vip_ip, 999, 53).frag_id(9999);
        let stray = if v6 {
            udp.ipv6_fragment(100, false)
        } else {
            udp.fragment(100, false)
        };
        assert_eq!(lb.run(&lb.frame(stray)).0, XDP_PASS);
    }
}

/// "Fragmentation needed" (IPv4) and "packet too big" (IPv6) about a flow reach the
/// flow's backend, with the quoted packet rewritten to what the backend sent.
#[test]
fn icmp_errors_go_to_the_flows_backend() {
    for mode in [Mode::Nat, Mode::Fullnat, Mode::Dsr] {
        let mut lb = setup();
        for fam in [V4, V6] {
            add_service(&mut lb, &fam, mode);
            let v6 = fam.client.contains(':');
            let out = lb
                .run(&lb.frame(Pkt::tcp(fam.client, fam.vip_ip, 40000, 80)))
                .1;
            let i = backend_index(&out);
            let nat_port = ports(&out).0;
            // What the client's path saw: service -> client.
            let sent = Pkt::tcp(fam.vip_ip, fam.client, 80, 40000).build();
            let (ty, code, router) = if v6 {
                (2, 0, "2001:db8:c::fe")
            } else {
                (3, 4, "192.0.2.254")
            };
            let input = lb.frame(Pkt::icmp(router, fam.vip_ip, ty, code, &sent[14..]));
            let (action, out) = lb.run(&input);
            assert_eq!(action, XDP_TX, "{mode:?} {}: ICMP error forwarded", fam.vip);
            assert_eq!(backend_index(&out), i, "{mode:?}: to the flow's backend");
            assert_checksums(&out);
            let q = if v6 { 54 + 8 } else { 34 + 8 };
            let quoted = &out[q..];
            let (qsrc, qdst, ql4) = if v6 {
                (
                    IpAddr::from(<[u8; 16]>::try_from(&quoted[8..24]).unwrap()),
                    IpAddr::from(<[u8; 16]>::try_from(&quoted[24..40]).unwrap()),
                    40,
                )
            } else {
                assert_eq!(checksum(&quoted[..20], 0), 0, "quoted IPv4 header checksum");
                (
                    IpAddr::from(<[u8; 4]>::try_from(&quoted[12..16]).unwrap()),
                    IpAddr::from(<[u8; 4]>::try_from(&quoted[16..20]).unwrap()),
                    20,
                )
            };
            let qports = (
                u16::from_be_bytes([quoted[ql4], quoted[ql4 + 1]]),
                u16::from_be_bytes([quoted[ql4 + 2], quoted[ql4 + 3]]),
            );
            match mode {
                Mode::Dsr => assert_eq!(out[12..], input[12..], "dsr: only the MACs change"),
                Mode::Nat => {
                    assert_eq!(dst_ip(&out), ip(fam.backends[i]));
                    assert_eq!(src_ip(&out), ip(router));
                    assert_eq!((qsrc, qdst), (ip(fam.backends[i]), ip(fam.client)));
                    assert_eq!(qports, (8080, 40000));
                }
                Mode::Fullnat => {
                    assert_eq!(dst_ip(&out), ip(fam.backends[i]));
                    assert_eq!(src_ip(&out), ip(fam.snat));
                    assert_eq!((qsrc, qdst), (ip(fam.backends[i]), ip(fam.snat)));
                    assert_eq!(qports, (8080, nat_port));
                }
            }
            // About a flow xlb does not know: the kernel's.
            let other = Pkt::tcp(fam.vip_ip, fam.client, 80, 1).build();
            let stray = lb.frame(Pkt::icmp(router, fam.vip_ip, ty, code, &other[14..]));
            assert_eq!(lb.run(&stray).0, XDP_PASS);
        }
        let c = lb.fx.counters();
        assert_eq!(
            c.get(&(Reason::IcmpToBackend, Verdict::Tx))
                .map(|c| c.packets),
            Some(2),
            "{mode:?}: counted"
        );
    }
}
