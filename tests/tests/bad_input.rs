//! Bad input gets a one-line error naming the input and what is wrong, a non-zero exit,
//! and changes nothing (checked through `xlb fw list --json`, `xlb vip list --json` and
//! `xlb status --json`).

use std::process::Command;

use xlb_tests::netns::{Daemon, Netns, TestDir, sh, veth, xlb_bin};

/// Everything the daemon holds: rules, services, and its status (less the uptime).
fn state(xlb: &Daemon) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    let mut status = xlb.json(&["status", "--json"]);
    status.as_object_mut().unwrap().remove("uptime_secs");
    (
        xlb.json(&["fw", "list", "--json"]),
        xlb.json(&["vip", "list", "--json"]),
        status,
    )
}

fn refused(xlb: &Daemon, args: &[&str], expect: &str) {
    let before = state(xlb);
    let out = xlb.cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xlb {args:?} must fail");
    assert!(
        err.contains(expect),
        "xlb {args:?}: {err:?} should say {expect:?}"
    );
    // Our errors are one line; clap's usage errors add a hint after their first line.
    let first = err.lines().next().unwrap_or("");
    assert!(
        first.contains(expect) || !err.starts_with("xlb:"),
        "first line: {err:?}"
    );
    if err.starts_with("xlb:") {
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
    }
    assert_eq!(
        state(xlb),
        before,
        "xlb {args:?} changed the rules or services"
    );
}

#[test]
fn cli_refuses_bad_input_and_changes_nothing() {
    let dir = TestDir::new("bad").unwrap();
    let a = Netns::new("a").unwrap();
    let edge = Netns::new("edge").unwrap();
    veth(
        &a,
        "a0",
        &["203.0.113.2/24"],
        &edge,
        "x0",
        &["203.0.113.1/24"],
    )
    .unwrap();
    let xlb = Daemon::start(&edge, "x0", &dir, &[]).unwrap();
    assert!(
        xlb.cli(&["fw", "deny", "203.0.113.128/25"])
            .status
            .success()
    );

    refused(
        &xlb,
        &["fw", "deny", "192.0.2.1/24"],
        "host bits set: did you mean 192.0.2.0/24",
    );
    refused(
        &xlb,
        &["fw", "deny", "192.0.2.0/24", "192.0.2.300"],
        "'192.0.2.300' is not a prefix",
    );
    refused(
        &xlb,
        &["fw", "allow", "2001:db8::1/129"],
        "the length is over 128",
    );
    refused(&xlb, &["fw", "deny", "80/tcp"], "port spec");
    refused(
        &xlb,
        &["fw", "port", "deny", "70000/tcp"],
        "outside 1-65535",
    );
    refused(&xlb, &["fw", "port", "deny", "2000-1000/udp"], "backwards");
    refused(&xlb, &["fw", "port", "deny", "80/sctp"], "not tcp or udp");
    refused(&xlb, &["fw", "except", "10.0.0.1/8"], "host bits");
    refused(
        &xlb,
        &["fw", "del", "198.51.100.0/24"],
        "is not in the rule set",
    );
    refused(
        &xlb,
        &["fw", "del", "203.0.113.128/25", "198.51.100.0/24"],
        "is not in the rule set",
    );
    refused(&xlb, &["fw", "default", "maybe"], "invalid value 'maybe'");
    refused(&xlb, &["fw", "frobnicate"], "unrecognized subcommand");
    let file = dir.path.join("list.txt");
    std::fs::write(
        &file,
        "# blocklist\n192.0.2.0/24\n198.51.100.7/24\n203.0.113.9\n",
    )
    .unwrap();
    refused(&xlb, &["fw", "load", file.to_str().unwrap()], "line 3");
    refused(
        &xlb,
        &["fw", "load", "/nonexistent/list"],
        "reading /nonexistent/list",
    );

    // A good file loads whole.
    std::fs::write(
        &file,
        "# blocklist\n192.0.2.0/24\nallow 198.51.100.7\n\n2001:db8:5::/48 # v6\n",
    )
    .unwrap();
    assert!(
        xlb.cli(&["fw", "load", file.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(
        xlb.json(&["fw", "list", "--json"])["rules"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Services: every refusal leaves the services as they were.
    refused(
        &xlb,
        &["vip", "add", "198.51.100.10:80/tcp", "--mode", "nat"],
        "forwarding is off",
    );
    edge.run(&["sysctl", "-qw", "net.ipv4.conf.x0.forwarding=1"])
        .unwrap();
    assert!(
        xlb.cli(&["vip", "add", "198.51.100.10:80/tcp", "--mode", "nat"])
            .status
            .success()
    );
    assert!(
        xlb.cli(&[
            "backend",
            "add",
            "198.51.100.10:80/tcp",
            "203.0.113.11:8080"
        ])
        .status
        .success()
    );
    refused(
        &xlb,
        &["vip", "add", "198.51.100.10:80/tcp", "--mode", "nat"],
        "already exists",
    );
    refused(
        &xlb,
        &["vip", "add", "198.51.100.11:0/tcp", "--mode", "nat"],
        "port 0",
    );
    refused(
        &xlb,
        &["vip", "add", "198.51.100.11:80/sctp", "--mode", "nat"],
        "not tcp or udp",
    );
    refused(
        &xlb,
        &["vip", "add", "198.51.100.11:80/tcp", "--mode", "tunnel"],
        "invalid value 'tunnel'",
    );
    refused(
        &xlb,
        &[
            "vip",
            "add",
            "198.51.100.11:80/tcp",
            "--mode",
            "nat",
            "--udp-idle",
            "0s",
        ],
        "out of range",
    );
    // One duration syntax: a bare number is refused, with the spelling to use.
    refused(
        &xlb,
        &[
            "vip",
            "add",
            "198.51.100.11:80/tcp",
            "--mode",
            "nat",
            "--tcp-idle",
            "300",
        ],
        "'300' has no unit",
    );
    refused(
        &xlb,
        &[
            "backend",
            "add",
            "198.51.100.99:80/tcp",
            "203.0.113.12:8080",
        ],
        "no service 198.51.100.99:80/tcp",
    );
    refused(
        &xlb,
        &[
            "backend",
            "add",
            "198.51.100.10:80/tcp",
            "203.0.113.11:8080",
        ],
        "already in service",
    );
    refused(
        &xlb,
        &[
            "backend",
            "add",
            "198.51.100.10:80/tcp",
            "203.0.113.12:8080",
            "--weight",
            "0",
        ],
        "'0' is not a weight: expected a whole number from 1 to 100",
    );
    refused(
        &xlb,
        &[
            "backend",
            "add",
            "198.51.100.10:80/tcp",
            "203.0.113.12:8080",
            "--weight",
            "101",
        ],
        "'101' is not a weight",
    );
    refused(
        &xlb,
        &[
            "backend",
            "add",
            "198.51.100.10:80/tcp",
            "[2001:db8::12]:8080",
        ],
        "families must match",
    );
    refused(
        &xlb,
        &["backend", "add", "198.51.100.10:80/tcp", "203.0.113.12:0"],
        "port 0",
    );
    refused(
        &xlb,
        &[
            "backend",
            "del",
            "198.51.100.10:80/tcp",
            "203.0.113.13:8080",
        ],
        "is not in service",
    );
    refused(&xlb, &["vip", "del", "198.51.100.77:80/tcp"], "no service");
    // fullnat's source address: required, of the service's family, this host's own,
    // and for fullnat only.
    let fullnat = |snat: &[&'static str]| {
        let mut args = vec!["vip", "add", "198.51.100.60:80/tcp", "--mode", "fullnat"];
        args.extend_from_slice(snat);
        args
    };
    refused(&xlb, &fullnat(&[]), "needs --snat ADDR");
    refused(
        &xlb,
        &fullnat(&["--snat", "2001:db8:b::1"]),
        "families must match",
    );
    refused(
        &xlb,
        &fullnat(&["--snat", "203.0.113.99"]),
        "not an address of this host",
    );
    refused(
        &xlb,
        &fullnat(&["--snat", "frob"]),
        "'frob' is not an address",
    );
    refused(
        &xlb,
        &[
            "vip",
            "add",
            "198.51.100.60:80/tcp",
            "--mode",
            "nat",
            "--snat",
            "203.0.113.1",
        ],
        "--snat is for fullnat services",
    );
    refused(
        &xlb,
        &[
            "backend",
            "drain",
            "198.51.100.10:80/tcp",
            "203.0.113.99:8080",
        ],
        "is not in service",
    );
    refused(
        &xlb,
        &[
            "backend",
            "enable",
            "198.51.100.99:80/tcp",
            "203.0.113.11:8080",
        ],
        "no service 198.51.100.99:80/tcp",
    );
    refused(
        &xlb,
        &["reload"],
        "this daemon runs without a configuration file",
    );
    refused(
        &xlb,
        &["status", "--verbose"],
        "unexpected argument '--verbose'",
    );

    // `xlb run` failures: unknown interface, a second daemon, bpffs missing, XDP refused.
    let run_with = |iface: &str, bpffs: &str, socket: &str, extra: &[&str]| {
        let bin = xlb_bin();
        let out = edge
            .cmd(&[
                bin.to_str().unwrap(),
                "--socket",
                socket,
                "run",
                "--iface",
                iface,
                "--bpffs",
                bpffs,
            ])
            .arg("--state")
            .arg(dir.path.join("state2"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let run = |iface: &str, bpffs: &str, socket: &str| run_with(iface, bpffs, socket, &[]);
    let pins = dir.path.join("bpffs/other");
    let sock2 = dir.path.join("other.sock");
    let (pins, sock2) = (pins.to_str().unwrap(), sock2.to_str().unwrap());
    assert!(run("nosuch0", pins, sock2).contains("unknown interface 'nosuch0'"));
    assert!(run("x0", pins, xlb.socket.to_str().unwrap()).contains("another xlb daemon"));
    let plain = dir.path.join("plain/xlb");
    assert!(run("x0", plain.to_str().unwrap(), sock2).contains("bpffs is not mounted"));
    edge.run(&["ip", "link", "add", "br0", "type", "bridge"])
        .unwrap();
    let err = run("br0", pins, sock2);
    assert!(err.contains("interface 'br0' refused XDP"), "{err}");
    // Another build of the program that is missing, or not one.
    let err = run_with("x0", pins, sock2, &["--program", "/nonexistent/xlb.o"]);
    assert!(
        err.contains("reading the XDP program /nonexistent/xlb.o"),
        "{err}"
    );
    let junk = dir.path.join("junk.o");
    std::fs::write(&junk, "not an ELF object").unwrap();
    let err = run_with("x0", pins, sock2, &["--program", junk.to_str().unwrap()]);
    assert!(
        err.contains("--program") && err.contains("loading the XDP object"),
        "{err}"
    );
    // Not root.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(xlb_bin())
        .args(["--socket", sock2, "run", "--iface", "lo", "--bpffs", pins])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(xlb_bin())
        .args(["--socket", sock2, "down", "--bpffs", pins])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("xlb down needs root"));
    // No daemon.
    let out = Command::new(xlb_bin())
        .args(["--socket", sock2, "stats"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no xlb daemon is running"));
    // The first daemon is untouched by all of this.
    assert_eq!(
        xlb.json(&["fw", "list", "--json"])["rules"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let _ = sh(&mut Command::new("true"));
}
