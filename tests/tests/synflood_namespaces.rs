//! SYN-flood protection end to end: real clients (curl, the kernel's TCP) connect
//! through a protected service (nat: the SYN proxy; dsr: the reset cookie and the
//! allow-list) while an attacker namespace sends a bounded spoofed SYN flood and an ACK
//! flood; no flow is made for a spoofed source and real clients keep connecting.

use serde_json::Value;
use xlb_tests::{
    netns::{Daemon, Netns, wait_until},
    tcp::{ACK, SYN, Spoofed, send_spoofed},
    topology::{Backends, Topology, backend_v4},
};

/// Spoofed packets per flood: bounded in count, sent in bursts of BURST (fewer than a
/// veth's XDP ring holds, so none is lost on the way: each burst is waited for by
/// polling xlb's counter, never by a sleep).
const FLOOD: u32 = 2000;
const BURST: u32 = 100;

fn cli(xlb: &Daemon, args: &[&str]) {
    let out = xlb.cli(args);
    assert!(
        out.status.success(),
        "xlb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The service's protection as `xlb status --json` shows it.
fn protection(xlb: &Daemon, svc: &str) -> Value {
    let v = xlb.json(&["status", "--json"]);
    v["syn_protection"]
        .as_array()
        .expect("syn_protection")
        .iter()
        .find(|p| p["service"] == svc)
        .unwrap_or_else(|| panic!("{svc} not in {v}"))
        .clone()
}

fn counter(xlb: &Daemon, svc: &str, name: &str) -> u64 {
    protection(xlb, svc)[name].as_u64().unwrap()
}

fn forward_flows(xlb: &Daemon) -> u64 {
    xlb.json(&["stats", "--json"])["flows"]["forward"]
        .as_u64()
        .unwrap()
}

/// FLOOD spoofed segments (`flags`) in bursts, each one seen by xlb (`counter` of the
/// service grown by it) before the next.
fn flood(xlb: &Daemon, attacker: &Netns, vip: &str, svc: &str, flags: u8, name: &str) {
    let start = counter(xlb, svc, name);
    for b in 0..FLOOD / BURST {
        burst(attacker, vip, flags, b * BURST, BURST);
        let want = start + ((b + 1) * BURST) as u64;
        wait_until(name, std::time::Duration::from_secs(10), || {
            counter(xlb, svc, name) >= want
        })
        .unwrap();
    }
}

/// `n` spoofed TCP segments (`flags`, numbered from `first`) to `vip`:80 from
/// 192.0.2.200-249 through a raw socket in the attacker's namespace.
fn burst(attacker: &Netns, vip: &str, flags: u8, first: u32, n: u32) {
    let from = Spoofed {
        prefix: "192.0.2.",
        base: 200,
        count: 50,
    };
    send_spoofed(attacker, (vip, 80), flags, &from, first, n).unwrap();
}

/// A spoofed SYN flood and an ACK flood against a protected service: every SYN gets a
/// cookie and no flow, every ACK is refused; a real client connects before, during (its
/// handshake proven) and after.
fn flood_and_connect(xlb: &Daemon, t: &Topology, vip: &str, svc: &str, url: &str) {
    let flows0 = forward_flows(xlb);
    flood(xlb, &t.attacker, vip, svc, SYN, "cookies_sent");
    flood(xlb, &t.attacker, vip, svc, ACK, "cookies_refused");
    assert_eq!(
        forward_flows(xlb),
        flows0,
        "{svc}: no flow for a source that did not complete a handshake"
    );
    let body = t.client.curl(url).unwrap();
    assert!(body.starts_with("web"), "{svc} after the flood: {body}");
    let p = protection(xlb, svc);
    assert_eq!(p["active"], true, "{p}");
}

#[test]
fn nat_syn_proxy_with_a_real_client_and_a_spoofed_flood() {
    let t = Topology::build("synnat", 2, 8080, Backends::ViaEdge).unwrap();
    let xlb = Daemon::start(&t.edge, "x0", &t.dir, &[]).unwrap();
    let (vip, svc) = ("198.51.100.10", "198.51.100.10:80/tcp");
    cli(&xlb, &["vip", "add", svc, "--mode", "nat"]);
    let mut addrs = Vec::new();
    for i in 0..2 {
        cli(
            &xlb,
            &["backend", "add", svc, &format!("{}:8080", backend_v4(i))],
        );
        addrs.push(backend_v4(i));
    }
    t.wait_neighbours(&addrs).unwrap();
    // Bad input is refused and changes nothing.
    let out = xlb.cli(&["vip", "set", svc, "--syn-threshold", "0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("threshold of 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(protection(&xlb, svc)["threshold"], 5000);
    assert_eq!(protection(&xlb, svc)["mode"], "auto");
    cli(&xlb, &["vip", "set", svc, "--syn-protection", "always"]);
    let p = protection(&xlb, svc);
    assert_eq!(
        (p["active"].clone(), p["method"].clone()),
        (true.into(), "syn proxy".into())
    );

    // curl through the SYN proxy: a cookie, then the proxy's handshake with a backend.
    let url = format!("http://{vip}/");
    for _ in 0..3 {
        let body = t.client.curl(&url).unwrap();
        assert!(body.starts_with("web"), "{body}");
    }
    assert!(counter(&xlb, svc, "cookies_validated") >= 3);
    assert!(counter(&xlb, svc, "proxied") >= 3);
    flood_and_connect(&xlb, &t, vip, svc, &url);
    let text = xlb.ok(&["status"]);
    assert!(
        text.contains("syn protection:") && text.contains("ACTIVE"),
        "{text}"
    );
}

#[test]
fn dsr_allow_list_with_a_real_client_and_a_spoofed_flood() {
    let vips = ["198.51.100.20"];
    let t = Topology::build("syndsr", 2, 80, Backends::Direct(&vips)).unwrap();
    let xlb = Daemon::start(&t.edge, "x0", &t.dir, &[]).unwrap();
    let (vip, svc) = ("198.51.100.20", "198.51.100.20:80/tcp");
    cli(&xlb, &["vip", "add", svc, "--mode", "dsr"]);
    let mut addrs = Vec::new();
    for i in 0..2 {
        cli(
            &xlb,
            &["backend", "add", svc, &format!("{}:80", backend_v4(i))],
        );
        addrs.push(backend_v4(i));
    }
    t.wait_neighbours(&addrs).unwrap();
    cli(&xlb, &["vip", "set", svc, "--syn-protection", "always"]);
    assert_eq!(protection(&xlb, svc)["method"], "allow-list");
    // The client's stack resets the cookie SYN-ACK, which allow-lists it; its SYN
    // retransmission reaches a backend (curl's timeout covers the retransmission).
    let url = format!("http://{vip}/");
    let body = t
        .client
        .run(&["curl", "-sS", "--max-time", "5", "-g", &url])
        .unwrap();
    assert!(body.starts_with("web"), "{body}");
    assert!(counter(&xlb, svc, "cookies_validated") >= 1);
    assert!(counter(&xlb, svc, "allowed") >= 1);
    // Allow-listed now: the next connection goes straight through.
    let body = t.client.curl(&url).unwrap();
    assert!(body.starts_with("web"), "{body}");
    let flows0 = forward_flows(&xlb);
    flood(&xlb, &t.attacker, vip, svc, SYN, "cookies_sent");
    assert_eq!(forward_flows(&xlb), flows0, "no flow for a spoofed source");
    let body = t.client.curl(&url).unwrap();
    assert!(body.starts_with("web"), "{body}");
}
