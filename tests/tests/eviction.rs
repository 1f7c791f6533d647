//! Kernel packet tests of flows whose flow-table entry is gone (the LRU evicted it) while
//! the connection goes on: a nat or fullnat reply is translated from what xlb knows and
//! its entry written again, or dropped and counted (`reply_no_flow`), never passed on
//! untranslated; a TCP packet that opens no connection stays on its draining backend.
//! Eviction is done by deleting the entries from the flow table. IPv4 and IPv6; and
//! end to end, a real TCP connection through a running daemon.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use lb_common::{Flow, FlowKey, MAP_FLOWS, Reason, Verdict};
use xlb::api::Request;
use xlb::model::services::Mode;
use xlb_tests::{
    fixture::{
        BACKEND_MACS, CLIENT_MAC, Lb, XDP_DROP, XDP_PASS, XDP_TX, backend_index, dst_ip, ports,
        setup, src_ip,
    },
    netns::{Daemon, http_get, in_ns},
    packet::{Pkt, assert_checksums},
    topology::{Backends, Topology, backend_v4},
};

const ACK: u8 = 0x10;

/// One family's addresses: the service, three backends (with BACKEND_MACS), the client,
/// and an address of the edge's own (v0's, also the fullnat snat address).
struct Fam {
    vip: &'static str,
    backends: [&'static str; 3],
    client: &'static str,
    local: &'static str,
}

const V4: Fam = Fam {
    vip: "198.51.100.50",
    backends: ["203.0.113.11", "203.0.113.12", "203.0.113.13"],
    client: "192.0.2.2",
    local: "203.0.113.1",
};

const V6: Fam = Fam {
    vip: "2001:db8:f::50",
    backends: ["2001:db8:b::11", "2001:db8:b::12", "2001:db8:b::13"],
    client: "2001:db8:c::2",
    local: "2001:db8:b::1",
};

/// `addr:port` (IPv6 in brackets).
fn ep(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn ip(a: &str) -> IpAddr {
    a.parse().unwrap()
}

fn count(lb: &Lb, r: Reason, v: Verdict) -> u64 {
    lb.fx.counters().get(&(r, v)).map_or(0, |c| c.packets)
}

fn flows(lb: &Lb) -> Vec<(FlowKey, Flow)> {
    xlb::kernel::flows::read_flows(&lb.fx.edge.dp).unwrap()
}

/// Deletes every flow-table entry, as a full table's LRU would; returns how many.
fn evict_all(lb: &mut Lb) -> usize {
    let all = flows(lb);
    let map = lb.fx.edge.dp.ebpf_mut().map_mut(MAP_FLOWS).unwrap();
    let mut m = aya::maps::HashMap::<_, FlowKey, Flow>::try_from(map).unwrap();
    for (k, _) in &all {
        m.remove(k).unwrap();
    }
    all.len()
}

/// A backend's TCP packet (an ACK, mid-connection), from backend `i`'s MAC.
fn from_backend(lb: &Lb, i: usize, src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut f = Pkt::tcp(src, dst, sport, dport).tcp_flags(ACK).build();
    f[0..6].copy_from_slice(&lb.mac);
    f[6..12].copy_from_slice(&BACKEND_MACS[i]);
    f
}

/// The forward entry of the client's flow from `cport`.
fn forward_entry(lb: &Lb, client: &str, cport: u16) -> Option<Flow> {
    let c = xlb::kernel::balancer::addr16(&ip(client)).0;
    flows(lb)
        .into_iter()
        .find(|(k, f)| k.src == c && k.src_port == cport && f.direction == lb_common::FLOW_FORWARD)
        .map(|(_, f)| f)
}

/// Asserts a reply sent to the client as the service: from `vip`:80 to the client's
/// port, to the client's MAC, checksums right.
fn assert_as_service(out: &[u8], fam: &Fam, cport: u16) {
    assert_eq!(src_ip(out), ip(fam.vip), "from the service address");
    assert_eq!(dst_ip(out), ip(fam.client), "to the client");
    assert_eq!(ports(out), (80, cport));
    assert_eq!(out[0..6], CLIENT_MAC);
    assert_checksums(out);
}

/// A nat flow whose entry was evicted: its backend's reply is translated back (from the
/// service) and its forward entry is written again, to the same backend; the client's
/// next packet follows it. A packet from the backend's endpoint to the edge's own
/// address (a health check's answer) is the host's: passed.
#[test]
fn nat_reply_without_its_entry_is_translated_and_restores_it() {
    let mut lb = setup();
    for fam in [V4, V6] {
        let vip = format!("{}/tcp", ep(fam.vip, 80));
        lb.vip(&vip, Mode::Nat, false);
        for b in fam.backends {
            lb.backend(&vip, &ep(b, 8080), 1);
        }
        let cport = 40000;
        let (action, out) = lb.run(&lb.frame(Pkt::tcp(fam.client, fam.vip, cport, 80)));
        assert_eq!(action, XDP_TX, "{vip}: forwarded");
        let i = backend_index(&out);
        let before = forward_entry(&lb, fam.client, cport).expect("the flow's entry");
        assert_eq!(
            evict_all(&mut lb),
            1,
            "{vip}: one entry (an owned endpoint)"
        );

        let restored = count(&lb, Reason::FlowRestored, Verdict::Tx);
        let reply = from_backend(&lb, i, fam.backends[i], 8080, fam.client, cport);
        let (action, back) = lb.run(&reply);
        assert_eq!(action, XDP_TX, "{vip}: the reply is translated, not passed");
        assert_as_service(&back, &fam, cport);
        assert_eq!(back[6..12], lb.mac);
        assert_eq!(count(&lb, Reason::FlowRestored, Verdict::Tx), restored + 1);
        let after = forward_entry(&lb, fam.client, cport).expect("the entry written again");
        assert_eq!(
            (after.backend, after.generation, after.service, after.mode),
            (
                before.backend,
                before.generation,
                before.service,
                before.mode
            ),
            "{vip}: the same backend"
        );
        // The next reply finds the entry (an ordinary nat reply).
        let nat = count(&lb, Reason::NatReply, Verdict::Tx);
        let (action, back) = lb.run(&reply);
        assert_eq!(action, XDP_TX);
        assert_as_service(&back, &fam, cport);
        assert_eq!(count(&lb, Reason::NatReply, Verdict::Tx), nat + 1);
        // The client's next packet goes to the same backend through it.
        let next = lb.frame(Pkt::tcp(fam.client, fam.vip, cport, 80).tcp_flags(ACK));
        let (action, out) = lb.run(&next);
        assert_eq!((action, backend_index(&out)), (XDP_TX, i));
        assert_eq!(dst_ip(&out), ip(fam.backends[i]));
        assert_eq!(ports(&out), (cport, 8080));

        // The backend's answer to the edge itself (a health check) is not a reply.
        let check = from_backend(&lb, i, fam.backends[i], 8080, fam.local, 45000);
        assert_eq!(
            lb.run(&check).0,
            XDP_PASS,
            "{vip}: to the host's own address"
        );
        evict_all(&mut lb);
    }
}

/// An endpoint shared by two nat services: a reply with no entry cannot say which
/// service the client used, so it is dropped and counted (`reply_no_flow`), not passed.
/// Once only one service has the endpoint, such a reply is translated again.
#[test]
fn ambiguous_nat_reply_is_dropped_and_counted() {
    let mut lb = setup();
    for (fam, other) in [(V4, "198.51.100.51"), (V6, "2001:db8:f::51")] {
        let a = format!("{}/tcp", ep(fam.vip, 80));
        let b = format!("{}/tcp", ep(other, 80));
        let backend = ep(fam.backends[0], 8080);
        lb.vip(&a, Mode::Nat, false);
        lb.vip(&b, Mode::Nat, false);
        lb.backend(&a, &backend, 1);
        lb.backend(&b, &backend, 1);
        let cport = 41000;
        let (action, _) = lb.run(&lb.frame(Pkt::tcp(fam.client, fam.vip, cport, 80)));
        assert_eq!(action, XDP_TX);
        assert!(evict_all(&mut lb) >= 1);

        let lost = count(&lb, Reason::ReplyNoFlow, Verdict::Drop);
        let reply = from_backend(&lb, 0, fam.backends[0], 8080, fam.client, cport);
        let (action, _) = lb.run(&reply);
        assert_eq!(action, XDP_DROP, "{a}: dropped, never passed untranslated");
        assert_eq!(count(&lb, Reason::ReplyNoFlow, Verdict::Drop), lost + 1);
        assert!(
            forward_entry(&lb, fam.client, cport).is_none(),
            "no entry guessed"
        );

        // Service b leaves: the endpoint is a's alone, and the reply is a's flow's.
        lb.fx.req(Request::VipDel { vip: b.clone() });
        let (action, back) = lb.run(&reply);
        assert_eq!(action, XDP_TX, "{a}: one service's endpoint again");
        assert_as_service(&back, &fam, cport);
        lb.fx.req(Request::VipDel { vip: a.clone() });
        evict_all(&mut lb);
    }
}

/// A fullnat flow whose entry was evicted: its port's slot still names the client, so
/// the backend's reply (to the snat address and that port) is translated to the client
/// and the entry written again (the client's next packet keeps backend and port). A
/// packet to the snat address on a port no slot holds is the host's own (passed); a
/// reply from a backend that left is dropped and counted.
#[test]
fn fullnat_reply_without_its_entry_is_translated_and_restores_it() {
    let mut lb = setup();
    for fam in [V4, V6] {
        let vip = format!("{}/tcp", ep(fam.vip, 80));
        lb.fullnat(&vip, fam.local);
        for b in fam.backends {
            lb.backend(&vip, &ep(b, 8080), 1);
        }
        let cport = 43000;
        let syn = lb.frame(Pkt::tcp(fam.client, fam.vip, cport, 80));
        let (action, out) = lb.run(&syn);
        assert_eq!(action, XDP_TX, "{vip}: forwarded");
        let i = backend_index(&out);
        assert_eq!(src_ip(&out), ip(fam.local), "from the snat address");
        let (port, bport) = ports(&out);
        assert_eq!(bport, 8080);
        assert_eq!(evict_all(&mut lb), 1);

        let restored = count(&lb, Reason::FlowRestored, Verdict::Tx);
        let reply = from_backend(&lb, i, fam.backends[i], 8080, fam.local, port);
        let (action, back) = lb.run(&reply);
        assert_eq!(action, XDP_TX, "{vip}: the reply is translated");
        assert_as_service(&back, &fam, cport);
        assert_eq!(count(&lb, Reason::FlowRestored, Verdict::Tx), restored + 1);
        let f = forward_entry(&lb, fam.client, cport).expect("the entry written again");
        assert_eq!(f.nat_port, port, "{vip}: with its port");
        let next = lb.frame(Pkt::tcp(fam.client, fam.vip, cport, 80).tcp_flags(ACK));
        let (action, out) = lb.run(&next);
        assert_eq!((action, backend_index(&out)), (XDP_TX, i));
        assert_eq!(ports(&out), (port, 8080), "{vip}: the same source port");
        assert_eq!(src_ip(&out), ip(fam.local));

        // Another port of the snat address: no slot of xlb's, the host's own traffic.
        let other = from_backend(&lb, i, fam.backends[i], 8080, fam.local, port ^ 1);
        assert_eq!(lb.run(&other).0, XDP_PASS, "{vip}: not a port of xlb's");

        // The backend leaves: its late reply is of a flow that is over.
        evict_all(&mut lb);
        lb.del_backend(&vip, &ep(fam.backends[i], 8080));
        let lost = count(&lb, Reason::ReplyNoFlow, Verdict::Drop);
        assert_eq!(lb.run(&reply).0, XDP_DROP, "{vip}: its backend left");
        assert_eq!(count(&lb, Reason::ReplyNoFlow, Verdict::Drop), lost + 1);
        lb.fx.req(Request::VipDel { vip: vip.clone() });
        evict_all(&mut lb);
    }
}

/// A drained backend (weight 0) keeps its connections: when their entries are evicted,
/// a packet that opens no connection (an ACK) still goes to it, through the service's
/// hold table; a SYN on the same tuple is a new connection and goes elsewhere. The other
/// backends' connections keep theirs.
#[test]
fn non_syn_packet_without_its_entry_stays_on_its_draining_backend() {
    let mut lb = setup();
    for fam in [V4, V6] {
        let vip = format!("{}/tcp", ep(fam.vip, 80));
        lb.vip(&vip, Mode::Nat, false);
        for b in fam.backends {
            lb.backend(&vip, &ep(b, 8080), 1);
        }
        let cports: Vec<u16> = (20000..20300).collect();
        let first: Vec<usize> = cports
            .iter()
            .map(|p| {
                let (action, out) = lb.run(&lb.frame(Pkt::tcp(fam.client, fam.vip, *p, 80)));
                assert_eq!(action, XDP_TX);
                backend_index(&out)
            })
            .collect();
        let drained = 0;
        let on_drained = first.iter().filter(|i| **i == drained).count();
        assert!(on_drained > 0, "{vip}: some flows on the backend to drain");
        lb.fx.req(Request::BackendDrain {
            vip: vip.clone(),
            backend: ep(fam.backends[drained], 8080),
        });
        evict_all(&mut lb);
        for (p, i) in cports.iter().zip(&first) {
            let ack = lb.frame(Pkt::tcp(fam.client, fam.vip, *p, 80).tcp_flags(ACK));
            let (action, out) = lb.run(&ack);
            assert_eq!(action, XDP_TX);
            assert_eq!(backend_index(&out), *i, "{vip}: port {p} keeps its backend");
        }
        // New connections (SYNs) on the same tuples: none to the drained backend.
        evict_all(&mut lb);
        for p in &cports {
            let (action, out) = lb.run(&lb.frame(Pkt::tcp(fam.client, fam.vip, *p, 80)));
            assert_eq!(action, XDP_TX);
            assert_ne!(backend_index(&out), drained, "{vip}: a new flow avoids it");
        }
        lb.fx.req(Request::VipDel { vip: vip.clone() });
        evict_all(&mut lb);
    }
}

/// Deletes every entry of a daemon's pinned flow table; returns how many.
fn evict_pinned(t: &Topology) -> usize {
    let path = t.dir.path.join("bpffs/xlb").join(MAP_FLOWS);
    let md = aya::maps::MapData::from_pin(&path).unwrap();
    let mut m =
        aya::maps::HashMap::<_, FlowKey, Flow>::try_from(aya::maps::Map::LruHashMap(md)).unwrap();
    let keys: Vec<FlowKey> = m.keys().map(|k| k.unwrap()).collect();
    for k in &keys {
        m.remove(k).unwrap();
    }
    keys.len()
}

/// End to end: a real TCP connection through a nat service (requests on one
/// keep-alive connection) keeps its backend after its entries are deleted from the
/// running daemon's pinned flow table, and again after its backend is drained.
#[test]
fn a_real_connection_survives_eviction_and_drain() {
    let t = Topology::build("evict", 3, 8080, Backends::ViaEdge).unwrap();
    let xlb = Daemon::start(&t.edge, "x0", &t.dir, &[]).unwrap();
    let svc = "198.51.100.52:80/tcp";
    xlb.ok(&["vip", "add", svc, "--mode", "nat"]);
    let mut addrs = Vec::new();
    for i in 0..3 {
        xlb.ok(&["backend", "add", svc, &format!("{}:8080", backend_v4(i))]);
        addrs.push(backend_v4(i));
    }
    t.wait_neighbours(&addrs).unwrap();
    let vip: SocketAddr = "198.51.100.52:80".parse().unwrap();
    let mut conn = in_ns(&t.client, move || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(3))
    })
    .unwrap()
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let first = http_get(&mut conn).unwrap();
    assert!(evict_pinned(&t) >= 1, "the connection's entry");
    assert_eq!(http_get(&mut conn).unwrap(), first, "after its entry went");

    let i: usize = first.trim_start_matches("web").parse::<usize>().unwrap() - 1;
    xlb.ok(&["backend", "drain", svc, &format!("{}:8080", backend_v4(i))]);
    assert!(evict_pinned(&t) >= 1);
    assert_eq!(
        http_get(&mut conn).unwrap(),
        first,
        "drained, and its entry gone: still its backend"
    );
    // A new connection goes to another backend.
    let mut other = in_ns(&t.client, move || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(3))
    })
    .unwrap()
    .unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert_ne!(http_get(&mut other).unwrap(), first, "no new flows to it");
}
