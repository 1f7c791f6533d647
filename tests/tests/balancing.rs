//! End to end: a client, the xlb edge and backends in namespaces, real HTTP over TCP,
//! for each forwarding mode and both address families.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use xlb_tests::{
    netns::{Daemon, NsServer, http_get, in_ns, udp_ask},
    topology::{Backends, Topology, backend_v4, backend_v6},
};

/// Connections per distribution check: with random source ports, a backend's share
/// stays within 15% of its weight's with a margin of over 3.5 standard deviations.
const CONNECTIONS: usize = 1200;

fn cli(xlb: &Daemon, args: &[&str]) {
    let out = xlb.cli(args);
    assert!(
        out.status.success(),
        "xlb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CONNECTIONS connections from the client, one GET each: responses per backend.
fn spread(t: &Topology, vip: SocketAddr) -> HashMap<String, usize> {
    xlb_tests::netns::spread(&t.client, vip, CONNECTIONS)
}

fn assert_even(count: &HashMap<String, usize>, backends: usize, what: &str) {
    let share = CONNECTIONS as f64 / backends as f64;
    for i in 1..=backends {
        let got = *count.get(&format!("web{i}")).unwrap_or(&0) as f64;
        assert!(
            (got - share).abs() <= share * 0.15,
            "{what}: web{i} got {got} of {CONNECTIONS}: {count:?}"
        );
    }
}

fn run_mode(mode: &str, port: u16, vip4: &str, vip6: &str) {
    let dsr = mode == "dsr";
    let vips = [vip4, vip6];
    let routing = match mode {
        "dsr" => Backends::Direct(&vips),
        "fullnat" => Backends::LocalOnly,
        _ => Backends::ViaEdge,
    };
    let t = Topology::build(mode, 4, port, routing).unwrap();
    let xlb = Daemon::start(&t.edge, "x0", &t.dir, &[]).unwrap();
    let (svc4, svc6) = (format!("{vip4}:80/tcp"), format!("[{vip6}]:80/tcp"));
    // fullnat: the backends see the edge's own address on their subnet.
    let snat = |vip: &str| -> Vec<&str> {
        match (mode, vip.contains('[')) {
            ("fullnat", false) => vec!["--snat", "203.0.113.1"],
            ("fullnat", true) => vec!["--snat", "2001:db8:b::1"],
            _ => vec![],
        }
    };
    let add = |svc: &str| {
        let mut args = vec!["vip", "add", svc, "--mode", mode];
        args.extend(snat(svc));
        cli(&xlb, &args);
    };
    add(&svc4);
    add(&svc6);
    let mut addrs = Vec::new();
    for i in 0..3 {
        cli(
            &xlb,
            &[
                "backend",
                "add",
                &svc4,
                &format!("{}:{port}", backend_v4(i)),
            ],
        );
        cli(
            &xlb,
            &[
                "backend",
                "add",
                &svc6,
                &format!("[{}]:{port}", backend_v6(i)),
            ],
        );
        addrs.push(backend_v4(i));
        addrs.push(backend_v6(i));
    }
    t.wait_neighbours(&addrs).unwrap();

    // curl, the real client, gets an answer from a backend.
    let body = t.client.curl(&format!("http://{vip4}/")).unwrap();
    assert!(body.starts_with("web"), "{mode}: {body}");
    let body = t.client.curl(&format!("http://[{vip6}]/")).unwrap();
    assert!(body.starts_with("web"), "{mode}: {body}");

    let v4: SocketAddr = format!("{vip4}:80").parse().unwrap();
    let v6: SocketAddr = format!("[{vip6}]:80").parse().unwrap();
    assert_even(&spread(&t, v4), 3, &format!("{mode} IPv4"));
    assert_even(&spread(&t, v6), 3, &format!("{mode} IPv6"));

    // A long-lived connection keeps working while a backend is added and another one
    // is removed.
    let mut conn = in_ns(&t.client, move || {
        TcpStream::connect_timeout(&v4, Duration::from_secs(3))
    })
    .unwrap()
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let first = http_get(&mut conn).unwrap();
    cli(
        &xlb,
        &[
            "backend",
            "add",
            &svc4,
            &format!("{}:{port}", backend_v4(3)),
        ],
    );
    assert_eq!(
        http_get(&mut conn).unwrap(),
        first,
        "{mode}: after a backend was added"
    );
    let other = (0..3).find(|i| format!("web{}", i + 1) != first).unwrap();
    cli(
        &xlb,
        &[
            "backend",
            "del",
            &svc4,
            &format!("{}:{port}", backend_v4(other)),
        ],
    );
    assert_eq!(
        http_get(&mut conn).unwrap(),
        first,
        "{mode}: after another backend was removed"
    );

    // UDP: a DNS-like service on port 53 (dsr backends answer from the service address,
    // so they bind it).
    let (udp4, udp6) = (format!("{vip4}:53/udp"), format!("[{vip6}]:53/udp"));
    add(&udp4);
    add(&udp6);
    let mut udp_servers = Vec::new();
    for (i, b) in t.backends.iter().enumerate().take(3) {
        let name = format!("web{}", i + 1);
        if dsr {
            udp_servers.push(NsServer::udp(b, &format!("{vip4}:53"), &name).unwrap());
            udp_servers.push(NsServer::udp(b, &format!("[{vip6}]:53"), &name).unwrap());
        } else {
            udp_servers.push(NsServer::udp(b, "[::]:53", &name).unwrap());
        }
        cli(&xlb, &["backend", "add", &udp4, &backend_v4(i)]);
        cli(&xlb, &["backend", "add", &udp6, &backend_v6(i)]);
    }
    for to in [format!("{vip4}:53"), format!("[{vip6}]:53")] {
        let to: SocketAddr = to.parse().unwrap();
        let answers: std::collections::BTreeSet<String> = in_ns(&t.client, move || {
            (0..60)
                .map(|_| udp_ask(to).expect("a UDP answer"))
                .collect()
        })
        .unwrap();
        assert!(
            answers.len() >= 2,
            "{mode} UDP {to}: answers from {answers:?}"
        );
        assert!(answers.iter().all(|a| a.starts_with("web")), "{answers:?}");
    }

    let stats = xlb.json(&["stats", "--json"]);
    let balanced = stats["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "balanced")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum::<u64>();
    assert!(
        balanced >= 2 * CONNECTIONS as u64,
        "{mode}: balanced packets counted: {balanced}"
    );
}

#[test]
fn nat_balances_real_tcp_and_udp_ipv4_and_ipv6() {
    run_mode("nat", 8080, "198.51.100.10", "2001:db8:f::10");
}

#[test]
fn fullnat_balances_real_tcp_and_udp_ipv4_and_ipv6() {
    run_mode("fullnat", 8080, "198.51.100.30", "2001:db8:f::30");
}

#[test]
fn dsr_balances_real_tcp_and_udp_ipv4_and_ipv6() {
    run_mode("dsr", 80, "198.51.100.20", "2001:db8:f::20");
}
