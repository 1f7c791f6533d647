//! Kernel packet tests of the flow-record counters (`Config::flow_records`): crafted
//! frames through BPF_PROG_TEST_RUN, then the flow table read back. Each entry counts
//! its packets and IP bytes, replies count where they find their flow (the forward
//! entry for fullnat and owned nat endpoints, the reply entry for shared ones), and
//! with records off only a new flow's first packet is there.

use lb_common::{FLOW_FORWARD, FLOW_REPLY, Flow, FlowKey};
use xlb::{api::Request, kernel::flows::read_flows, model::services::Mode};
use xlb_tests::{
    fixture::{BACKEND_MACS, Lb, XDP_TX, backend_index, ports, setup},
    packet::Pkt,
};

fn records(lb: &mut Lb, on: bool) {
    lb.fx.edge.dp.flow_records = on;
    lb.fx.edge.dp.set_config(&lb.fx.edge.rules).unwrap();
}

fn entries(lb: &Lb, direction: u8) -> Vec<(FlowKey, Flow)> {
    let mut e = read_flows(&lb.fx.edge.dp).unwrap();
    e.retain(|(_, f)| f.direction == direction);
    e
}

/// A frame from backend `i`'s MAC to ours.
fn from_backend(lb: &Lb, i: usize, p: Pkt) -> Vec<u8> {
    let mut f = p.build();
    f[0..6].copy_from_slice(&lb.mac);
    f[6..12].copy_from_slice(&BACKEND_MACS[i]);
    f
}

/// The frame's IP bytes (what the counters add).
fn ip_len(f: &[u8]) -> u64 {
    f.len() as u64 - 14
}

#[test]
fn nat_and_fullnat_flows_count_both_directions_ipv4_and_ipv6() {
    let mut lb = setup();
    records(&mut lb, true);
    for (vip, vip_ip, backend, client, mode) in [
        (
            "198.51.100.10:80/tcp",
            "198.51.100.10",
            "203.0.113.11",
            "192.0.2.2",
            Mode::Nat,
        ),
        (
            "[2001:db8:f::10]:80/tcp",
            "2001:db8:f::10",
            "2001:db8:b::11",
            "2001:db8:c::2",
            Mode::Nat,
        ),
        (
            "198.51.100.30:80/tcp",
            "198.51.100.30",
            "203.0.113.11",
            "192.0.2.2",
            Mode::Fullnat,
        ),
    ] {
        let bport = if mode == Mode::Fullnat { 8081 } else { 8080 };
        if mode == Mode::Fullnat {
            lb.fullnat(vip, "203.0.113.1");
        } else {
            lb.vip(vip, mode, false);
        }
        let b = if backend.contains(':') {
            format!("[{backend}]:{bport}")
        } else {
            format!("{backend}:{bport}")
        };
        lb.backend(vip, &b, 1);
        let input = lb.frame(Pkt::tcp(client, vip_ip, 40000, 80).payload(&[7; 60]));
        let mut sport = 40000;
        for _ in 0..3 {
            let (action, out) = lb.run(&input);
            assert_eq!(action, XDP_TX, "{vip}");
            sport = ports(&out).0;
        }
        let to = if mode == Mode::Fullnat {
            "203.0.113.1"
        } else {
            client
        };
        let reply = from_backend(
            &lb,
            0,
            Pkt::tcp(backend, to, bport, sport).payload(&[9; 20]),
        );
        for _ in 0..2 {
            assert_eq!(lb.run(&reply).0, XDP_TX, "{vip}: reply");
        }
        let fwd = entries(&lb, FLOW_FORWARD);
        let (_, f) = fwd
            .iter()
            .find(|(k, _)| {
                k.dst_port == 80
                    && xlb::kernel::balancer::ip_of(&k.dst, k.family).to_string() == vip_ip
            })
            .unwrap_or_else(|| panic!("{vip}: no forward entry"));
        assert_eq!(
            (f.packets, f.bytes, f.rev_packets, f.rev_bytes),
            (3, 3 * ip_len(&input), 2, 2 * ip_len(&reply)),
            "{vip}"
        );
        assert!(f.first_ns > 0 && f.first_ns <= f.seen_ns, "{vip}");
        assert!(entries(&lb, FLOW_REPLY).is_empty(), "{vip}: no reply entry");
        lb.fx.req(Request::VipDel { vip: vip.into() });
    }
}

#[test]
fn a_shared_nat_endpoint_counts_replies_in_the_reply_entry() {
    let mut lb = setup();
    records(&mut lb, true);
    // Two services on one backend endpoint: the first owns it, the second's flows
    // have reply entries.
    for vip in ["198.51.100.40:80/tcp", "198.51.100.41:80/tcp"] {
        lb.vip(vip, Mode::Nat, false);
        lb.backend(vip, "203.0.113.11:8080", 1);
    }
    let input = lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.41", 40001, 80));
    let (action, out) = lb.run(&input);
    assert_eq!((action, backend_index(&out)), (XDP_TX, 0));
    let reply = from_backend(&lb, 0, Pkt::tcp("203.0.113.11", "192.0.2.2", 8080, 40001));
    for _ in 0..3 {
        assert_eq!(lb.run(&reply).0, XDP_TX);
    }
    let back = entries(&lb, FLOW_REPLY);
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].1.packets, back[0].1.bytes),
        (3, 3 * ip_len(&reply))
    );
    let fwd = entries(&lb, FLOW_FORWARD);
    assert_eq!((fwd[0].1.packets, fwd[0].1.rev_packets), (1, 0));
}

#[test]
fn with_records_off_entries_keep_only_their_first_packet() {
    let mut lb = setup();
    records(&mut lb, false);
    lb.vip("198.51.100.10:80/tcp", Mode::Nat, false);
    lb.backend("198.51.100.10:80/tcp", "203.0.113.11:8080", 1);
    let input = lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.10", 40002, 80));
    for _ in 0..4 {
        assert_eq!(lb.run(&input).0, XDP_TX);
    }
    let fwd = entries(&lb, FLOW_FORWARD);
    assert_eq!((fwd[0].1.packets, fwd[0].1.bytes), (1, ip_len(&input)));
    // On again: counted from here.
    records(&mut lb, true);
    lb.run(&input);
    assert_eq!(entries(&lb, FLOW_FORWARD)[0].1.packets, 2);
}
