//! Kernel packet tests of the load balancer: crafted frames through BPF_PROG_TEST_RUN as
//! if received on a veth of a private namespace, whose FIB (routes, static neighbours)
//! the program's lookups use. Output bytes are asserted: MACs, addresses, ports,
//! TTL / hop limit, checksums.

use std::net::IpAddr;

use xlb::api::Request;
use xlb::model::services::Mode;
use xlb_tests::{
    fixture::{
        BACKEND_MACS, CLIENT_MAC, XDP_DROP, XDP_PASS, XDP_TX, backend_index, dst_ip, ports, setup,
        src_ip,
    },
    packet::{Pkt, assert_checksums},
};

#[test]
fn nat_forward_and_reply_ipv4_and_ipv6() {
    let mut lb = setup();
    for (vip, backends, client) in [
        (
            "198.51.100.10:80/tcp",
            [
                "203.0.113.11:8080",
                "203.0.113.12:8080",
                "203.0.113.13:8080",
            ],
            "192.0.2.2",
        ),
        (
            "[2001:db8:f::10]:80/tcp",
            [
                "[2001:db8:b::11]:8080",
                "[2001:db8:b::12]:8080",
                "[2001:db8:b::13]:8080",
            ],
            "2001:db8:c::2",
        ),
    ] {
        lb.vip(vip, Mode::Nat, false);
        for b in backends {
            lb.backend(vip, b, 1);
        }
        let vip_ip = vip
            .rsplit_once(':')
            .unwrap()
            .0
            .trim_matches(['[', ']'])
            .to_string();
        let input = lb.frame(Pkt::tcp(client, &vip_ip, 40000, 80));
        let (action, out) = lb.run(&input);
        assert_eq!(action, XDP_TX, "{vip}: forwarded back out of v0");
        let i = backend_index(&out);
        assert_eq!(out[6..12], lb.mac, "source MAC is ours");
        let want: IpAddr = backends[i]
            .rsplit_once(':')
            .unwrap()
            .0
            .trim_matches(['[', ']'])
            .parse()
            .unwrap();
        assert_eq!(dst_ip(&out), want, "{vip}: destination is the backend");
        assert_eq!(ports(&out), (40000, 8080));
        assert_eq!(src_ip(&out), client.parse::<IpAddr>().unwrap());
        let ttl = if vip_ip.contains(':') {
            out[21]
        } else {
            out[22]
        };
        assert_eq!(ttl, 63, "TTL / hop limit decremented");
        assert_checksums(&out);
        // The same flow again: the same backend.
        assert_eq!(backend_index(&lb.run(&input).1), i);
        // The backend's reply comes back as the service.
        let mut reply = Pkt::tcp(&want.to_string(), client, 8080, 40000).build();
        reply[0..6].copy_from_slice(&lb.mac);
        reply[6..12].copy_from_slice(&BACKEND_MACS[i]);
        let (action, back) = lb.run(&reply);
        assert_eq!(action, XDP_TX, "{vip}: reply");
        assert_eq!(src_ip(&back), vip_ip.parse::<IpAddr>().unwrap());
        assert_eq!(ports(&back), (80, 40000));
        assert_eq!(back[0..6], CLIENT_MAC);
        assert_checksums(&back);
    }
}

/// The flow table's entries by direction, from `xlb stats`.
fn flow_entries(lb: &mut xlb_tests::fixture::Lb) -> (u64, u64) {
    let s = lb.fx.req(Request::Stats);
    (
        s["flows"]["forward"].as_u64().unwrap(),
        s["flows"]["reply"].as_u64().unwrap(),
    )
}

/// A nat backend that owns its endpoint gets no reply entry: its reply is matched to
/// the flow through the forward entry. When a second nat service adds the same backend
/// endpoint, the first keeps the endpoint and the second's flows write reply entries;
/// replies of both services come back as their own service. When the owner leaves,
/// the endpoint passes to the other service's backend.
#[test]
fn nat_replies_through_the_forward_entry_and_shared_endpoints() {
    let mut lb = setup();
    let (a, b) = ("198.51.100.40:80/tcp", "198.51.100.41:80/tcp");
    let backend = "203.0.113.11:8080";
    let client = "192.0.2.2";
    // A flow of service `vip` from client port `cport`, forwarded and answered.
    let exchange = |lb: &mut xlb_tests::fixture::Lb, vip: &str, cport: u16| {
        let vip_ip = vip.split(':').next().unwrap();
        let (action, out) = lb.run(&lb.frame(Pkt::tcp(client, vip_ip, cport, 80)));
        assert_eq!(action, XDP_TX, "{vip}: forwarded");
        assert_eq!(dst_ip(&out).to_string(), "203.0.113.11");
        assert_eq!(ports(&out), (cport, 8080));
        let mut reply = Pkt::tcp("203.0.113.11", client, 8080, cport).build();
        reply[0..6].copy_from_slice(&lb.mac);
        reply[6..12].copy_from_slice(&BACKEND_MACS[0]);
        let (action, back) = lb.run(&reply);
        assert_eq!(action, XDP_TX, "{vip}: reply");
        assert_eq!(
            src_ip(&back).to_string(),
            vip_ip,
            "{vip}: reply from the service"
        );
        assert_eq!(ports(&back), (80, cport));
        assert_eq!(back[0..6], CLIENT_MAC);
        assert_checksums(&back);
    };
    lb.vip(a, Mode::Nat, false);
    lb.backend(a, backend, 1);
    exchange(&mut lb, a, 41000);
    assert_eq!(
        flow_entries(&mut lb),
        (1, 0),
        "an owned endpoint: no reply entry"
    );

    lb.vip(b, Mode::Nat, false);
    lb.backend(b, backend, 1);
    exchange(&mut lb, b, 42000);
    assert_eq!(
        flow_entries(&mut lb),
        (2, 1),
        "the second service's backend shares the endpoint: a reply entry"
    );
    // A reply no flow explains, from the shared endpoint: which service's flow it was
    // cannot be told, so it is dropped (never passed on untranslated; see eviction.rs).
    let mut stray = Pkt::tcp("203.0.113.11", client, 8080, 41999).build();
    stray[0..6].copy_from_slice(&lb.mac);
    assert_eq!(lb.run(&stray).0, XDP_DROP);
    assert_eq!(flow_entries(&mut lb), (2, 1), "no entry guessed");
    exchange(&mut lb, a, 41000);
    exchange(&mut lb, a, 41001);
    assert_eq!(flow_entries(&mut lb).1, 1);

    // The owner leaves: the other service's backend owns the endpoint now, and its
    // flow (with its reply entry) and new flows (without) are answered.
    lb.del_backend(a, backend);
    exchange(&mut lb, b, 42000);
    exchange(&mut lb, b, 42001);
    assert_eq!(
        flow_entries(&mut lb).1,
        1,
        "no reply entry for the new flow"
    );
}

#[test]
fn dsr_rewrites_only_the_mac_and_udp_works() {
    let mut lb = setup();
    lb.vip("198.51.100.20:53/udp", Mode::Dsr, false);
    for b in ["203.0.113.11:53", "203.0.113.12:53"] {
        lb.backend("198.51.100.20:53/udp", b, 1);
    }
    let input = lb.frame(Pkt::udp("192.0.2.2", "198.51.100.20", 5353, 53));
    let (action, out) = lb.run(&input);
    assert_eq!(action, XDP_TX);
    backend_index(&out);
    assert_eq!(out[6..12], lb.mac);
    assert_eq!(
        out[12..],
        input[12..],
        "nothing but the MACs changes in dsr"
    );
    lb.vip("[2001:db8:f::20]:443/tcp", Mode::Dsr, false);
    lb.backend("[2001:db8:f::20]:443/tcp", "[2001:db8:b::12]:443", 1);
    let input = lb.frame(Pkt::tcp("2001:db8:c::2", "2001:db8:f::20", 40000, 443));
    let (action, out) = lb.run(&input);
    assert_eq!((action, backend_index(&out)), (XDP_TX, 1));
    assert_eq!(out[12..], input[12..]);
}

#[test]
fn flows_stay_when_the_pool_changes_and_move_when_their_backend_goes() {
    let mut lb = setup();
    let vip = "198.51.100.30:80/tcp";
    lb.vip(vip, Mode::Nat, false);
    for b in ["203.0.113.11:80", "203.0.113.12:80", "203.0.113.13:80"] {
        lb.backend(vip, b, 1);
    }
    let flows: Vec<Vec<u8>> = (0..200)
        .map(|p| lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.30", 20000 + p, 80)))
        .collect();
    let first: Vec<usize> = flows.iter().map(|f| backend_index(&lb.run(f).1)).collect();
    // Adding a backend changes the table, not the established flows.
    lb.backend(vip, "203.0.113.14:80", 1);
    let after_add: Vec<usize> = flows.iter().map(|f| backend_index(&lb.run(f).1)).collect();
    assert_eq!(first, after_add, "established flows keep their backend");
    // Removing a backend moves only its flows.
    lb.del_backend(vip, "203.0.113.12:80");
    let after_del: Vec<usize> = flows.iter().map(|f| backend_index(&lb.run(f).1)).collect();
    for (a, b) in first.iter().zip(&after_del) {
        if *a == 1 {
            assert_ne!(*b, 1, "a flow of the removed backend is rescheduled");
        } else {
            assert_eq!(a, b, "other flows stay");
        }
    }
}

#[test]
fn new_flows_follow_the_weights() {
    let mut lb = setup();
    let vip = "198.51.100.40:80/tcp";
    lb.vip(vip, Mode::Nat, false);
    lb.backend(vip, "203.0.113.11:80", 1);
    lb.backend(vip, "203.0.113.12:80", 1);
    lb.backend(vip, "203.0.113.13:80", 2);
    let mut count = [0u32; 4];
    for p in 0..4000u16 {
        let f = lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.40", 10000 + p, 80));
        count[backend_index(&lb.run(&f).1)] += 1;
    }
    for (i, share) in [(0, 0.25), (1, 0.25), (2, 0.5)] {
        let got = count[i] as f64 / 4000.0;
        assert!(
            (got - share).abs() <= share * 0.15,
            "backend {i}: {got:.3} of flows, want {share}"
        );
    }
    // Source affinity: every flow of one client lands on one backend.
    let vip = "198.51.100.41:80/tcp";
    lb.vip(vip, Mode::Nat, true);
    for b in ["203.0.113.11:80", "203.0.113.12:80", "203.0.113.13:80"] {
        lb.backend(vip, b, 1);
    }
    let picks: std::collections::HashSet<usize> = (0..50u16)
        .map(|p| {
            backend_index(
                &lb.run(&lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.41", 30000 + p, 80)))
                    .1,
            )
        })
        .collect();
    assert_eq!(picks.len(), 1);
}

#[test]
fn echo_no_backend_and_other_traffic() {
    let mut lb = setup();
    lb.vip("198.51.100.50:80/tcp", Mode::Nat, false);
    // No backend yet: dropped and counted.
    let f = lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.50", 40000, 80));
    assert_eq!(lb.run(&f).0, XDP_DROP);
    // Echo requests to the service address are answered.
    let ping = lb.frame(Pkt::ping("192.0.2.2", "198.51.100.50"));
    let (action, out) = lb.run(&ping);
    assert_eq!(action, XDP_TX);
    assert_eq!(out[0..6], CLIENT_MAC);
    assert_eq!(src_ip(&out), "198.51.100.50".parse::<IpAddr>().unwrap());
    assert_eq!(out[34], 0, "echo reply");
    assert_checksums(&out);
    // Another port of the address, and other addresses: not ours, passed.
    let other = lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.50", 40000, 81));
    assert_eq!(lb.run(&other).0, XDP_PASS);
    let other = lb.frame(Pkt::udp("192.0.2.2", "198.51.100.99", 40000, 80));
    assert_eq!(lb.run(&other).0, XDP_PASS);
    // The firewall still comes first.
    lb.fx.rules(&["deny 192.0.2.0/24"]);
    lb.backend("198.51.100.50:80/tcp", "203.0.113.11:8080", 1);
    assert_eq!(lb.run(&f).0, XDP_DROP);
}

/// An idle flow is rescheduled: after its idle timeout it follows the current Maglev
/// table, not its old backend.
#[test]
fn idle_flows_are_rescheduled() {
    let mut lb = setup();
    let vip = "198.51.100.60:53/udp";
    lb.fx.req(Request::VipAdd {
        vip: vip.into(),
        mode: Mode::Nat,
        affinity_source: false,
        echo: true,
        tcp_idle: None,
        udp_idle: Some(1),
        snat: None,
    });
    lb.backend(vip, "203.0.113.11:53", 1);
    let flows: Vec<Vec<u8>> = (0..40)
        .map(|p| lb.frame(Pkt::udp("192.0.2.2", "198.51.100.60", 30000 + p, 53)))
        .collect();
    for f in &flows {
        assert_eq!(backend_index(&lb.run(f).1), 0);
    }
    // A second backend takes about half of the table; established flows stay on web1...
    lb.backend(vip, "203.0.113.12:53", 1);
    assert!(flows.iter().all(|f| backend_index(&lb.run(f).1) == 0));
    // ...until they have been idle for longer than the timeout (the thing under test is
    // time itself, so the test waits for it).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let moved = flows
        .iter()
        .filter(|f| backend_index(&lb.run(f).1) == 1)
        .count();
    assert!(
        moved > 5,
        "idle flows rescheduled over both backends: {moved} of 40 moved"
    );
}
