//! Kernel packet tests of the rate limits (BPF_PROG_TEST_RUN on the real program): a
//! bucket that empties and refills (the limits' clock is moved, never waited for),
//! IPv4 and IPv6, per address, per prefix of a length and for a prefix as a whole,
//! new flows only (TCP SYNs, UDP's first packets, by the balancer's flow table), a
//! service's limits, the sketch under a flood of random sources (no bucket per packet),
//! the answers of backends and of health checks never limited.

use std::collections::BTreeSet;

use lb_common::{Reason, Verdict};
use xlb::{api::Request, model::services::Mode};
use xlb_tests::{
    fixture::{Fixture, Lb, XDP_DROP, XDP_PASS, XDP_TX, setup},
    packet::{L4, Pkt},
};

const MINUTE: u64 = 60_000_000_000;

/// A limit's words (the CLI's): `rate`, then `key=value` for the rest.
fn limit(rate: &str, opts: &[(&str, &str)]) -> Request {
    let get = |k: &str| {
        opts.iter()
            .find(|(x, _)| *x == k)
            .map(|(_, v)| v.to_string())
    };
    Request::LimitAdd {
        rate: rate.into(),
        burst: get("burst"),
        per: get("per"),
        prefix: get("prefix"),
        new_flows: get("new_flows").is_some(),
        service: get("service"),
    }
}

fn rate_limited(fx: &Fixture) -> u64 {
    fx.counters()
        .get(&(Reason::RateLimited, Verdict::Drop))
        .map_or(0, |c| c.packets)
}

/// The verdicts of `n` runs of `frame`: (passed, dropped).
fn run_n(fx: &Fixture, frame: &[u8], n: usize) -> (usize, usize) {
    let mut out = (0, 0);
    for _ in 0..n {
        match fx.run(frame).0 {
            XDP_PASS => out.0 += 1,
            XDP_DROP => out.1 += 1,
            v => panic!("verdict {v}"),
        }
    }
    out
}

fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = Pkt::tcp(src, dst, sport, dport);
    p.l4 = L4::Tcp {
        sport,
        dport,
        flags,
    };
    p.build()
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn limits(fx: &mut Fixture) -> serde_json::Value {
    fx.req(Request::LimitList)["limits"].clone()
}

#[test]
fn an_address_bucket_empties_and_refills_with_the_clock() {
    let mut fx = Fixture::new();
    fx.req(limit("1/m", &[("burst", "3")]));
    let a = tcp("192.0.2.10", "198.51.100.1", 40000, 80, ACK);
    let b = tcp("192.0.2.11", "198.51.100.1", 40000, 80, ACK);
    assert_eq!(run_n(&fx, &a, 5), (3, 2), "the burst, then nothing");
    assert_eq!(rate_limited(&fx), 2);
    assert_eq!(run_n(&fx, &b, 4), (3, 1), "another address: its own bucket");
    // One interval later: one more packet each.
    fx.edge.dp.rl.advance_clock(MINUTE).unwrap();
    assert_eq!(run_n(&fx, &a, 3), (1, 2));
    // A long quiet time fills the bucket to its burst, no more.
    fx.edge.dp.rl.advance_clock(60 * MINUTE).unwrap();
    assert_eq!(run_n(&fx, &a, 5), (3, 2));
    let l = &limits(&mut fx)[0];
    assert_eq!(
        (l["passed"].as_u64(), l["dropped"].as_u64()),
        (Some(10), Some(7))
    );
    assert!(
        l["promoted"].as_u64().unwrap() >= 1,
        "a refused source gets a bucket: {l}"
    );
    assert_eq!(rate_limited(&fx), 7);
    // Only the limit's prefix: other sources are not counted.
    fx.req(Request::LimitDel {
        per: None,
        prefix: None,
        new_flows: false,
        service: None,
    });
    fx.req(limit(
        "1/m",
        &[("burst", "1"), ("prefix", "198.51.100.0/24")],
    ));
    assert_eq!(run_n(&fx, &a, 3), (3, 0));
    let c = tcp("198.51.100.7", "192.0.2.1", 40000, 80, ACK);
    assert_eq!(run_n(&fx, &c, 3), (1, 2));
}

#[test]
fn ipv6_sources_share_a_bucket_per_prefix_of_a_length() {
    let mut fx = Fixture::new();
    fx.req(limit(
        "1/m",
        &[("burst", "2"), ("per", "/64"), ("prefix", "2001:db8::/32")],
    ));
    let from = |s: &str| tcp(s, "2001:db8:ffff::1", 40000, 443, ACK);
    let (s1, s2) = (from("2001:db8:1::1"), from("2001:db8:1::2"));
    assert_eq!(fx.run(&s1).0, XDP_PASS);
    assert_eq!(fx.run(&s2).0, XDP_PASS);
    assert_eq!(run_n(&fx, &s1, 2), (0, 2), "one /64, one bucket");
    assert_eq!(run_n(&fx, &s2, 1), (0, 1));
    assert_eq!(run_n(&fx, &from("2001:db8:2::1"), 3), (2, 1), "another /64");
    // IPv4 is not in the limit's prefix.
    let v4 = tcp("192.0.2.10", "198.51.100.1", 40000, 80, ACK);
    assert_eq!(run_n(&fx, &v4, 5), (5, 0));
    fx.edge.dp.rl.advance_clock(MINUTE).unwrap();
    assert_eq!(run_n(&fx, &s2, 2), (1, 1));
}

#[test]
fn a_prefix_as_a_whole_has_one_bucket() {
    let mut fx = Fixture::new();
    fx.req(limit(
        "1/m",
        &[
            ("burst", "2"),
            ("per", "prefix"),
            ("prefix", "198.51.100.0/24"),
        ],
    ));
    let from = |s: &str| tcp(s, "192.0.2.1", 40000, 80, ACK);
    assert_eq!(fx.run(&from("198.51.100.1")).0, XDP_PASS);
    assert_eq!(fx.run(&from("198.51.100.2")).0, XDP_PASS);
    assert_eq!(fx.run(&from("198.51.100.3")).0, XDP_DROP);
    assert_eq!(run_n(&fx, &from("203.0.113.1"), 3), (3, 0));
    // An IPv4 /24 per /24 limit of every IPv4 source: one bucket per /24.
    fx.req(limit(
        "1/m",
        &[("burst", "1"), ("per", "/24"), ("prefix", "0.0.0.0/0")],
    ));
    assert_eq!(fx.run(&from("203.0.113.1")).0, XDP_PASS);
    assert_eq!(fx.run(&from("203.0.113.200")).0, XDP_DROP);
    assert_eq!(fx.run(&from("192.0.2.5")).0, XDP_PASS);
}

#[test]
fn new_flow_limits_count_syns_and_udp_but_not_established_tcp() {
    let mut fx = Fixture::new();
    fx.req(limit("1/m", &[("burst", "1"), ("new_flows", "on")]));
    let syn = tcp("192.0.2.10", "198.51.100.1", 40000, 80, SYN);
    let ack = tcp("192.0.2.10", "198.51.100.1", 40000, 80, ACK);
    let synack = tcp("192.0.2.10", "198.51.100.1", 40000, 80, SYN | ACK);
    assert_eq!(run_n(&fx, &syn, 3), (1, 2));
    assert_eq!(run_n(&fx, &ack, 5), (5, 0), "an established flow's packets");
    assert_eq!(run_n(&fx, &synack, 2), (2, 0), "SYN-ACK opens nothing here");
    // No service: every UDP packet opens a flow; ICMP too.
    let udp = Pkt::udp("192.0.2.11", "198.51.100.1", 40000, 53).build();
    assert_eq!(run_n(&fx, &udp, 3), (1, 2));
    let ping = Pkt::ping("2001:db8:1::10", "2001:db8:2::1").build();
    assert_eq!(run_n(&fx, &ping, 3), (1, 2));
    // A per-packet limit counts every packet.
    fx.req(limit("1/m", &[("burst", "2"), ("prefix", "192.0.2.12/32")]));
    let ack2 = tcp("192.0.2.12", "198.51.100.1", 40001, 80, ACK);
    assert_eq!(run_n(&fx, &ack2, 4), (2, 2));
}

#[test]
fn a_flood_of_random_sources_makes_no_bucket_per_packet() {
    let mut fx = Fixture::new();
    fx.req(limit("1/m", &[("burst", "10")]));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = 3000;
    let mut passed = 0;
    for _ in 0..n {
        let r = next();
        let src = format!(
            "2001:db8:f:{:x}:{:x}:{:x}:{:x}:{:x}",
            r & 0xffff,
            (r >> 16) & 0xffff,
            (r >> 32) & 0xffff,
            (r >> 48) & 0xffff,
            next() & 0xffff
        );
        let f = tcp(&src, "2001:db8:ffff::1", 40000, 443, SYN);
        passed += (fx.run(&f).0 == XDP_PASS) as usize;
    }
    assert_eq!(
        passed, n,
        "one packet each: every source is within its limit"
    );
    let buckets = fx.edge.dp.rl.exact_buckets().unwrap();
    // Sample-and-hold gives about one in 64 a bucket (47 expected of 3000).
    assert!(
        buckets < 200,
        "{buckets} exact buckets for {n} one-packet sources"
    );
    let promoted = limits(&mut fx)[0]["promoted"].as_u64().unwrap();
    assert_eq!(promoted, buckets as u64);
    // A heavy source among them (after the flood's backlog drained) is held to its
    // burst, and gets a bucket of its own.
    fx.edge.dp.rl.advance_clock(20 * MINUTE).unwrap();
    let heavy = tcp("2001:db8:e::1", "2001:db8:ffff::1", 40000, 443, ACK);
    assert_eq!(run_n(&fx, &heavy, 30), (10, 20));
    assert!(fx.edge.dp.rl.exact_buckets().unwrap() > buckets);
}

/// A nat service on three backends in the test network, and a TCP one.
fn services(lb: &mut Lb) {
    lb.vip("198.51.100.10:53/udp", Mode::Nat, false);
    lb.vip("198.51.100.10:80/tcp", Mode::Nat, false);
    for i in 0..3 {
        lb.backend(
            "198.51.100.10:53/udp",
            &format!("203.0.113.{}:5353", 11 + i),
            1,
        );
        lb.backend(
            "198.51.100.10:80/tcp",
            &format!("203.0.113.{}:8080", 11 + i),
            1,
        );
    }
}

fn lb_n(lb: &Lb, frame: &[u8], n: usize) -> (usize, usize, usize) {
    let mut out = (0, 0, 0);
    for _ in 0..n {
        match lb.run(frame).0 {
            XDP_TX => out.0 += 1,
            XDP_PASS => out.1 += 1,
            XDP_DROP => out.2 += 1,
            v => panic!("verdict {v}"),
        }
    }
    out
}

#[test]
fn a_services_limits_and_udp_new_flows_by_the_flow_table() {
    let mut lb = setup();
    services(&mut lb);
    lb.fx.req(limit(
        "1/m",
        &[
            ("burst", "1"),
            ("new_flows", "on"),
            ("service", "198.51.100.10:53/udp"),
        ],
    ));
    let flow = |sport| lb.frame(Pkt::udp("192.0.2.2", "198.51.100.10", sport, 53));
    let (f1, f2) = (flow(40000), flow(40001));
    // The first packet opens a flow; the flow's next packets are not new.
    assert_eq!(lb_n(&lb, &f1, 4), (4, 0, 0));
    assert_eq!(lb_n(&lb, &f2, 2), (0, 0, 2), "a second new flow: over");
    // Another service and the host are not this limit's.
    let web = lb.frame(Pkt::tcp("192.0.2.2", "198.51.100.10", 40002, 80));
    assert_eq!(lb_n(&lb, &web, 3), (3, 0, 0));
    let host = lb.frame(Pkt::udp("192.0.2.2", "198.51.100.99", 40003, 53));
    assert_eq!(lb_n(&lb, &host, 3), (0, 3, 0));
    assert_eq!(rate_limited(&lb.fx), 2);

    // New UDP flows of all traffic: to a service by its flow table, not to one every
    // packet.
    lb.fx.req(limit(
        "1/m",
        &[
            ("burst", "1"),
            ("new_flows", "on"),
            ("prefix", "192.0.2.3/32"),
        ],
    ));
    let from3 = |dst: &str, sport| lb.frame(Pkt::udp("192.0.2.3", dst, sport, 53));
    assert_eq!(lb_n(&lb, &from3("198.51.100.10", 40000), 3), (3, 0, 0));
    assert_eq!(lb_n(&lb, &from3("198.51.100.10", 40001), 1), (0, 0, 1));
    assert_eq!(lb_n(&lb, &from3("198.51.100.99", 40000), 2), (0, 0, 2));
    // A per-packet limit of a service counts established flows too.
    lb.fx.req(limit(
        "1/m",
        &[("burst", "2"), ("service", "198.51.100.10:80/tcp")],
    ));
    let web4 = lb.frame(Pkt::tcp("192.0.2.4", "198.51.100.10", 40000, 80));
    assert_eq!(lb_n(&lb, &web4, 4), (2, 0, 2));
}

#[test]
fn answers_of_backends_and_health_checks_are_never_limited() {
    let mut lb = setup();
    services(&mut lb);
    lb.fx.req(limit("1/m", &[("burst", "1")]));
    // A backend's answers at its port (a nat reply, a health check's answer).
    let answer = |sport| {
        lb.frame({
            let mut p = Pkt::tcp("203.0.113.11", "203.0.113.1", sport, 45000);
            p.l4 = L4::Tcp {
                sport,
                dport: 45000,
                flags: SYN | ACK,
            };
            p
        })
    };
    let (to_port, other) = (answer(8080), answer(9000));
    assert_eq!(lb_n(&lb, &to_port, 5), (0, 5, 0));
    assert_eq!(lb_n(&lb, &other, 3), (0, 0, 3), "not an endpoint of it");
    // A health check's own port (what the checker reports).
    lb.fx
        .edge
        .set_probe_endpoints(BTreeSet::from([("203.0.113.11".parse().unwrap(), 9000)]));
    assert_eq!(lb_n(&lb, &other, 3), (0, 3, 0));
    // Always allowed (`fw except`) is never limited either.
    lb.fx.req(Request::Except {
        targets: vec!["22/tcp".into()],
    });
    let ssh = lb.frame(Pkt::tcp("192.0.2.9", "203.0.113.1", 40000, 22));
    assert_eq!(lb_n(&lb, &ssh, 4), (0, 4, 0));
    let l = &limits(&mut lb.fx)[0];
    assert_eq!(l["exempted"].as_u64(), Some(4 + 3 + 3));
    assert_eq!(l["dropped"].as_u64(), Some(3));
}

/// End to end: a real client floods UDP from one address while another client of the
/// same network keeps fetching over HTTP; the limit (per address) holds the flooder to
/// its burst and leaves the other client alone; bad input changes nothing; a restart
/// keeps the limit.
#[test]
fn a_flooding_client_is_held_to_its_limit_and_another_is_not() {
    use xlb_tests::netns::{Daemon, Netns, NsServer, TestDir, in_ns, veth};

    let dir = TestDir::new("rl").unwrap();
    let client = Netns::new("rlclient").unwrap();
    let edge = Netns::new("rledge").unwrap();
    veth(
        &client,
        "c0",
        &["192.0.2.2/24", "192.0.2.3/24"],
        &edge,
        "x0",
        &["192.0.2.1/24"],
    )
    .unwrap();
    let _web = NsServer::http(&edge, "192.0.2.1:80", "edge").unwrap();
    let _udp = NsServer::udp(&edge, "192.0.2.1:5353", "pong").unwrap();
    let mut xlb = Daemon::start(&edge, "x0", &dir, &[]).unwrap();
    let get = |from: &str| {
        client.run(&[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "--interface",
            from,
            "http://192.0.2.1/",
        ])
    };
    assert_eq!(get("192.0.2.3").unwrap(), "edge");

    // Bad input: refused with its reason, nothing set.
    for (args, why) in [
        (vec!["0/s"], "rate 0/s lets nothing through"),
        (vec!["10/s", "--burst", "0"], "burst 0 lets nothing through"),
        (
            vec!["10/s", "--per", "/33", "--prefix", "192.0.2.0/24"],
            "longer than an IPv4 address",
        ),
        (
            vec!["10/s", "--service", "192.0.2.1:80/tcp"],
            "which does not exist",
        ),
        (vec!["ten/s"], "the count must be digits"),
    ] {
        let mut a = vec!["fw", "limit", "add"];
        a.extend(args);
        let out = xlb.cli(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{a:?}: {err}");
        assert!(err.contains(why), "{a:?}: {err}");
    }
    assert_eq!(
        xlb.json(&["fw", "limit", "list", "--json"])["limits"],
        serde_json::json!([])
    );

    // Every address of the client network its own bucket of 50 packets, refilled at
    // one an hour: whatever the test's speed, a source gets its burst and no more.
    xlb.ok(&[
        "fw",
        "limit",
        "add",
        "1/h",
        "--burst",
        "50",
        "--prefix",
        "192.0.2.0/24",
    ]);
    const FLOOD: usize = 20_000;
    let flood = {
        let client = client.path();
        std::thread::spawn(move || {
            xlb_tests::netns::enter(&client).unwrap();
            let s = std::net::UdpSocket::bind("192.0.2.2:0").unwrap();
            for i in 0..FLOOD {
                s.send_to(&(i as u32).to_be_bytes(), "192.0.2.1:5353")
                    .unwrap();
            }
        })
    };
    // Meanwhile the other client's requests all succeed (each a few packets, well
    // within its own bucket).
    for _ in 0..3 {
        assert_eq!(get("192.0.2.3").unwrap(), "edge");
    }
    flood.join().unwrap();
    let l = &xlb.json(&["fw", "limit", "list", "--json"])["limits"][0];
    let (passed, dropped) = (
        l["passed"].as_u64().unwrap(),
        l["dropped"].as_u64().unwrap(),
    );
    // What the limit passed: the two sources' bursts at most (the other client's few
    // dozen packets and the flooder's 50), however many of the flood reached it.
    assert!(
        dropped > 0 && passed <= 50 + 50 + 1,
        "the flooder holds to its burst: {l}"
    );
    // The flooder is still over (a fresh UDP question goes unanswered), the other
    // client is not.
    let asked = in_ns(&client, || {
        let s = std::net::UdpSocket::bind("192.0.2.2:0").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        s.send_to(b"?", "192.0.2.1:5353").unwrap();
        s.recv(&mut [0u8; 16]).is_ok()
    })
    .unwrap();
    assert!(!asked, "the flooder's question is dropped");
    assert_eq!(get("192.0.2.3").unwrap(), "edge");
    let stats = xlb.json(&["stats", "--json"]);
    let limited = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "rate_limited" && r["verdict"] == "drop")
        .map(|r| r["packets"].as_u64().unwrap())
        .unwrap();
    // Counted under its own reason too (the flooder's later question among them).
    assert!(limited > dropped, "{stats}");
    let status = xlb.ok(&["status"]);
    assert!(
        status.contains("limits:      1")
            && status.contains("1/h burst 50 per address from 192.0.2.0/24"),
        "{status}"
    );

    // A restart keeps the limit (the state file), and its removal takes its match.
    assert!(xlb.stop().unwrap().success());
    drop(xlb);
    let xlb = Daemon::start(&edge, "x0", &dir, &[]).unwrap();
    let l = &xlb.json(&["fw", "limit", "list", "--json"])["limits"];
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l[0]["rate"], "1/h");
    let out = xlb.cli(&["fw", "limit", "del"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no limit per address from any source"),
        "{out:?}"
    );
    xlb.ok(&["fw", "limit", "del", "--prefix", "192.0.2.0/24"]);
    assert_eq!(get("192.0.2.2").unwrap(), "edge");
}
