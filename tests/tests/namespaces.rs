//! End to end: a client namespace and an xlb namespace joined by veth, real TCP (HTTP)
//! and ping, rules changed live through the CLI, a daemon restart keeping them.

use xlb_tests::netns::{Daemon, Netns, NsServer, TestDir, veth};

fn stat(v: &serde_json::Value, reason: &str, verdict: &str) -> u64 {
    v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason && r["verdict"] == verdict)
        .map(|r| r["packets"].as_u64().unwrap())
        .unwrap()
}

#[test]
fn deny_is_live_counted_removable_and_survives_restart() {
    let dir = TestDir::new("fw").unwrap();
    let client = Netns::new("client").unwrap();
    let edge = Netns::new("edge").unwrap();
    veth(
        &client,
        "c0",
        &["192.0.2.2/24", "2001:db8::2/64"],
        &edge,
        "x0",
        &["192.0.2.1/24", "2001:db8::1/64"],
    )
    .unwrap();
    let _web4 = NsServer::http(&edge, "192.0.2.1:80", "edge").unwrap();
    let _web6 = NsServer::http(&edge, "[2001:db8::1]:80", "edge6").unwrap();
    let mut xlb = Daemon::start(&edge, "x0", &dir, &[]).unwrap();

    assert_eq!(client.curl("http://192.0.2.1/").unwrap(), "edge");
    assert_eq!(client.curl("http://[2001:db8::1]/").unwrap(), "edge6");
    assert!(client.ok(&["ping", "-c", "1", "-W", "2", "192.0.2.1"]));

    let out = xlb.cli(&["fw", "deny", "192.0.2.2/32", "2001:db8::2/128"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = xlb.json(&["stats", "--json"]);
    assert!(
        client.curl("http://192.0.2.1/").is_err(),
        "IPv4 TCP must be dropped"
    );
    assert!(
        client.curl("http://[2001:db8::1]/").is_err(),
        "IPv6 TCP must be dropped"
    );
    assert!(
        !client.ok(&["ping", "-c", "1", "-W", "1", "192.0.2.1"]),
        "ping must be dropped"
    );
    let after = xlb.json(&["stats", "--json"]);
    assert!(stat(&after, "prefix_deny", "drop") >= stat(&before, "prefix_deny", "drop") + 3);
    let list = xlb.json(&["fw", "list", "--json"]);
    let hits: u64 = list["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hits"].as_u64().unwrap())
        .sum();
    assert!(hits >= 3, "rule hits counted: {list}");

    // A restart keeps the rule.
    assert!(xlb.stop().unwrap().success());
    drop(xlb);
    let xlb = Daemon::start(&edge, "x0", &dir, &[]).unwrap();
    assert_eq!(
        xlb.json(&["fw", "list", "--json"])["rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        client.curl("http://192.0.2.1/").is_err(),
        "the rule survives a restart"
    );

    let out = xlb.cli(&["fw", "del", "192.0.2.2/32", "2001:db8::2/128"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.curl("http://192.0.2.1/").unwrap(), "edge");
    assert_eq!(client.curl("http://[2001:db8::1]/").unwrap(), "edge6");
    assert!(client.ok(&["ping", "-c", "1", "-W", "2", "192.0.2.1"]));
}

#[test]
fn port_rules_and_default_deny_with_ssh_exception() {
    let dir = TestDir::new("ports").unwrap();
    let client = Netns::new("client").unwrap();
    let edge = Netns::new("edge").unwrap();
    veth(
        &client,
        "c0",
        &["198.51.100.2/24"],
        &edge,
        "x0",
        &["198.51.100.1/24"],
    )
    .unwrap();
    let _web = NsServer::http(&edge, "198.51.100.1:80", "web").unwrap();
    let _ssh = NsServer::http(&edge, "198.51.100.1:22", "ssh").unwrap();
    let xlb = Daemon::start(&edge, "x0", &dir, &[]).unwrap();

    assert!(xlb.cli(&["fw", "port", "deny", "80/tcp"]).status.success());
    assert!(client.curl("http://198.51.100.1:80/").is_err());
    assert_eq!(client.curl("http://198.51.100.1:22/").unwrap(), "ssh");
    assert!(xlb.cli(&["fw", "except", "22/tcp"]).status.success());
    assert!(xlb.cli(&["fw", "default", "deny"]).status.success());
    // Default deny drops ARP replies? No: ARP is not IP and always passes.
    assert_eq!(
        client.curl("http://198.51.100.1:22/").unwrap(),
        "ssh",
        "the operator keeps SSH"
    );
    assert!(!client.ok(&["ping", "-c", "1", "-W", "1", "198.51.100.1"]));
    assert!(xlb.cli(&["fw", "default", "allow"]).status.success());
    assert!(xlb.cli(&["fw", "del", "80/tcp"]).status.success());
    assert_eq!(client.curl("http://198.51.100.1:80/").unwrap(), "web");
}
