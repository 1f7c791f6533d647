//! Values that parse but cannot work, and messages that misled: each class refused with
//! a one-line error that names the input and says what would work, a non-zero exit, and
//! nothing changed. Through the CLI against a running daemon, through `xlb check-config`
//! for a configuration file, and through `xlb run` for a state file.

use std::{path::Path, process::Command};

use xlb::store::lines::HEADER;
use xlb_tests::netns::{Daemon, Netns, TestDir, veth, xlb_bin};

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

/// `xlb ARGS` fails with one line (`xlb: ...`) that says `expect`, without a raw
/// control or invisible character, and changes nothing.
fn refused(xlb: &Daemon, args: &[&str], expect: &str) {
    let before = state(xlb);
    let out = xlb.cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xlb {args:?} must fail");
    assert!(
        err.contains(expect),
        "xlb {args:?}: {err:?} should say {expect:?}"
    );
    assert!(err.starts_with("xlb: "), "xlb {args:?}: {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(
        !err.trim_end().chars().any(hidden),
        "xlb {args:?}: {err:?} shows a hidden character raw"
    );
    assert_eq!(
        state(xlb),
        before,
        "xlb {args:?} changed the rules or services"
    );
}

/// Characters an error must escape rather than print.
fn hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{feff}' | '\u{200b}'..='\u{200f}' | '\u{2060}')
}

#[test]
fn cli_refuses_values_that_cannot_work() {
    let dir = TestDir::new("values").unwrap();
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
    edge.run(&["sysctl", "-qw", "net.ipv4.conf.x0.forwarding=1"])
        .unwrap();
    edge.run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    let xlb = Daemon::start(&edge, "x0", &dir, &[]).unwrap();
    for args in [
        &["fw", "deny", "192.0.2.128/25"][..],
        &["fw", "port", "deny", "1000-2000/tcp"],
        &["fw", "except", "3000-3999/udp"],
        &["vip", "add", "198.51.100.10:80/tcp", "--mode", "nat"],
        &["vip", "add", "[2001:db8::10]:80/tcp", "--mode", "nat"],
        &[
            "vip",
            "add",
            "198.51.100.20:80/tcp",
            "--mode",
            "fullnat",
            "--snat",
            "203.0.113.1",
        ],
        &[
            "backend",
            "add",
            "198.51.100.10:80/tcp",
            "203.0.113.11:8080",
        ],
    ] {
        xlb.ok(args);
    }

    // Port ranges the port table could not decide between: named by the rule they tie
    // with. The same range is an update, other widths and kinds have a winner.
    refused(
        &xlb,
        &["fw", "port", "allow", "1500-2500/tcp"],
        "port 1500-2500/tcp overlaps rule 2 (port deny 1000-2000/tcp) and is as wide (1001 ports): the narrowest range decides a port",
    );
    refused(
        &xlb,
        &["fw", "except", "3500-4499/udp"],
        "except 3500-4499/udp overlaps rule 3 (except 3000-3999/udp)",
    );
    refused(
        &xlb,
        &["fw", "port", "deny", "80/tcp", "0999-1999/tcp"],
        "overlaps rule 2",
    );
    xlb.ok(&["fw", "port", "allow", "1000-2000/tcp"]);
    xlb.ok(&["fw", "port", "allow", "1500-2499/tcp"]);
    xlb.ok(&["fw", "except", "3500-4499/tcp"]);

    // A bulk file that both allows and denies a prefix.
    let file = dir.path.join("list.txt");
    std::fs::write(
        &file,
        "# blocklist\n192.0.2.0/24\n198.51.100.0/24\nallow 192.0.2.0/24\n",
    )
    .unwrap();
    refused(
        &xlb,
        &["fw", "load", file.to_str().unwrap()],
        "line 4: 192.0.2.0/24 is allowed here but denied at line 2: keep one of them; nothing was loaded",
    );
    std::fs::write(&file, "192.0.2.0 /24\n").unwrap();
    refused(
        &xlb,
        &["fw", "load", file.to_str().unwrap()],
        "expected one prefix, optionally after allow or deny (a prefix has no spaces)",
    );

    // Prefixes that never match.
    refused(
        &xlb,
        &["fw", "deny", "::ffff:192.0.2.0/120"],
        "an IPv4-mapped IPv6 prefix never matches an IPv4 packet (the firewall sees those as IPv4): use 192.0.2.0/24",
    );
    refused(
        &xlb,
        &["fw", "allow", "fe80::%eth0/64"],
        "a zone (%IFACE) is not part of a prefix",
    );

    // Numbers: digits only, and out of range says so.
    refused(
        &xlb,
        &["fw", "port", "deny", "+80/tcp"],
        "'+80' is not a port: write 1-65535 in digits",
    );
    refused(
        &xlb,
        &["fw", "deny", "192.0.2.0/+24"],
        "the length '+24' is not a number: write 0 to 32 in digits",
    );
    refused(
        &xlb,
        &["fw", "port", "deny", "99999999999/tcp"],
        "port 99999999999 is outside 1-65535",
    );
    refused(
        &xlb,
        &["fw", "deny", "192.0.2.0/99999"],
        "the length is over 32: use 0 to 32",
    );

    // A prefix where a port spec belongs, and the other way round.
    refused(
        &xlb,
        &["fw", "port", "deny", "192.0.2.0/24"],
        "'192.0.2.0/24' is a prefix, not a port spec: prefixes go to `xlb fw deny|allow`",
    );
    refused(
        &xlb,
        &["fw", "deny", "80/sctp"],
        "'80/sctp' is a port spec, not a prefix: port rules go to `xlb fw port deny|allow`",
    );

    // Hidden characters are shown, escaped.
    refused(
        &xlb,
        &["fw", "deny", "\u{feff}192.0.2.0/24"],
        "'\\u{feff}192.0.2.0/24' is not a prefix",
    );
    refused(
        &xlb,
        &["fw", "port", "deny", "80/tcp\u{1b}[2J"],
        "'80/tcp\\u{1b}[2J' is not a port spec",
    );
    refused(
        &xlb,
        &[
            "vip",
            "add",
            "198.51.100.30:80/tcp\u{200b}",
            "--mode",
            "nat",
        ],
        "'198.51.100.30:80/tcp\\u{200b}' is not a service",
    );

    // Service addresses that no packet can be forwarded at.
    let vip_add = |vip: &'static str| ["vip", "add", vip, "--mode", "nat"];
    for (vip, what) in [
        (
            "127.0.0.1:80/tcp",
            "service address 127.0.0.1:80/tcp cannot work: 127.0.0.1 is a loopback address",
        ),
        ("0.0.0.0:80/tcp", "0.0.0.0 is the unspecified address"),
        ("[::]:80/tcp", ":: is the unspecified address"),
        (
            "255.255.255.255:80/udp",
            "255.255.255.255 is the broadcast address",
        ),
        ("224.0.0.1:80/udp", "224.0.0.1 is a multicast address"),
        ("[ff02::1]:80/udp", "ff02::1 is a multicast address"),
        ("[::1]:80/tcp", "::1 is a loopback address"),
        (
            "[fe80::10]:80/tcp",
            "fe80::10 is a link-local IPv6 address, which means nothing without an interface, and the kernel's FIB lookup that xlb forwards by is given none",
        ),
        (
            "[::ffff:198.51.100.40]:80/tcp",
            "use its IPv4 form, 198.51.100.40:80/tcp",
        ),
        (
            "[fe80::10%x0]:80/tcp",
            "it names a zone (%IFACE), which xlb would lose",
        ),
        (
            "198.51.100.40:+80/tcp",
            "'+80' is not a port: write 1-65535 in digits (or * for every port)",
        ),
        (
            "198.51.100.40:70000/tcp",
            "port 70000 is outside 1-65535 (or * for every port)",
        ),
    ] {
        refused(&xlb, &vip_add(vip), what);
    }

    // A timeout that cannot apply.
    refused(
        &xlb,
        &[
            "vip",
            "add",
            "198.51.100.41:53/udp",
            "--mode",
            "nat",
            "--tcp-idle",
            "600s",
        ],
        "--tcp-idle is for tcp services; 198.51.100.41:53/udp is a udp service: give it --udp-idle",
    );
    refused(
        &xlb,
        &[
            "vip",
            "add",
            "198.51.100.41:80/tcp",
            "--mode",
            "nat",
            "--udp-idle",
            "5s",
        ],
        "--udp-idle is for udp services; 198.51.100.41:80/tcp is a tcp service: give it --tcp-idle",
    );

    // fullnat source addresses that cannot be one host's (checked before "of this host").
    for (snat, what) in [
        (
            "127.0.0.1",
            "snat address 127.0.0.1 cannot work: 127.0.0.1 is a loopback address",
        ),
        ("0.0.0.0", "0.0.0.0 is the unspecified address"),
        (
            "255.255.255.255",
            "255.255.255.255 is the broadcast address",
        ),
        ("224.0.0.5", "224.0.0.5 is a multicast address"),
    ] {
        refused(
            &xlb,
            &[
                "vip",
                "add",
                "198.51.100.42:80/tcp",
                "--mode",
                "fullnat",
                "--snat",
                snat,
            ],
            what,
        );
    }

    // Backends that no packet can be forwarded to, the service's own address included.
    let backend_add = |vip: &'static str, b: &'static str| ["backend", "add", vip, b];
    for (vip, b, what) in [
        (
            "198.51.100.10:80/tcp",
            "127.0.0.1:8080",
            "backend 127.0.0.1:8080 cannot work: 127.0.0.1 is a loopback address",
        ),
        (
            "198.51.100.10:80/tcp",
            "0.0.0.0:8080",
            "0.0.0.0 is the unspecified address",
        ),
        (
            "198.51.100.10:80/tcp",
            "255.255.255.255:8080",
            "255.255.255.255 is the broadcast address",
        ),
        (
            "198.51.100.10:80/tcp",
            "239.1.2.3:8080",
            "239.1.2.3 is a multicast address",
        ),
        (
            "198.51.100.10:80/tcp",
            "198.51.100.10:80",
            "backend 198.51.100.10:80 cannot work: it is service 198.51.100.10:80/tcp's own address, so xlb would send its packets back to itself",
        ),
        (
            "198.51.100.10:80/tcp",
            "198.51.100.10:8080",
            "it is service 198.51.100.10:80/tcp's own address",
        ),
        (
            "198.51.100.10:80/tcp",
            "203.0.113.12:+80",
            "'+80' is not a port: write 1-65535 in digits",
        ),
        (
            "198.51.100.10:80/tcp",
            "203.0.113.12:70000",
            "port 70000 is outside 1-65535",
        ),
        (
            "[2001:db8::10]:80/tcp",
            "[::1]:8080",
            "::1 is a loopback address",
        ),
        (
            "[2001:db8::10]:80/tcp",
            "[ff05::2]:8080",
            "ff05::2 is a multicast address",
        ),
        (
            "[2001:db8::10]:80/tcp",
            "[fe80::11]:8080",
            "fe80::11 is a link-local IPv6 address",
        ),
        (
            "[2001:db8::10]:80/tcp",
            "[fe80::11%2]:8080",
            "it names a zone (%IFACE), which xlb would lose",
        ),
        (
            "[2001:db8::10]:80/tcp",
            "[::ffff:203.0.113.11]:8080",
            "use its IPv4 form, 203.0.113.11:8080",
        ),
    ] {
        refused(&xlb, &backend_add(vip, b), what);
    }

    // Health-check numbers: digits only; out of range says so.
    let check = |flag: &'static str, v: &'static str| {
        ["vip", "check", "198.51.100.10:80/tcp", "tcp", flag, v]
    };
    refused(
        &xlb,
        &check("--rise", "+2"),
        "check.rise: '+2' is not a whole number: write 1 to 100 in digits",
    );
    refused(
        &xlb,
        &check("--port", "99999999999999999999"),
        "check.port: port 99999999999999999999 is out of range: expected 1 to 65535",
    );
    refused(
        &xlb,
        &check("--port", "0"),
        "check.port: port 0 is out of range: expected 1 to 65535",
    );
    refused(
        &xlb,
        &check("--interval", "99999999999999999999h"),
        "check.interval: interval '99999999999999999999h' is out of range: expected 100ms to 1h",
    );

    // A firewall change that would drop a live backend's replies and health answers,
    // refused as the configuration file refuses it: each way a rule can come.
    let denied =
        "backend 203.0.113.11:8080 of service 198.51.100.10:80/tcp is denied by the firewall";
    refused(&xlb, &["fw", "deny", "203.0.113.0/24"], denied);
    refused(&xlb, &["fw", "deny", "192.0.2.1", "203.0.113.11"], denied);
    refused(&xlb, &["fw", "default", "deny"], denied);
    let list = dir.path.join("block.txt");
    std::fs::write(&list, "192.0.2.7\n203.0.113.0/28\n").unwrap();
    refused(&xlb, &["fw", "load", list.to_str().unwrap()], denied);
    refused(
        &xlb,
        &["fw", "load", "--replace", list.to_str().unwrap()],
        denied,
    );
    // And a backend added into a denied prefix.
    refused(
        &xlb,
        &["backend", "add", "198.51.100.10:80/tcp", "192.0.2.140:8080"],
        "backend 192.0.2.140:8080 of service 198.51.100.10:80/tcp is denied by the firewall (deny 192.0.2.128/25)",
    );
    // A longer allow (or an except) lets the deny through.
    xlb.ok(&["fw", "allow", "203.0.113.11"]);
    xlb.ok(&["fw", "deny", "203.0.113.0/24"]);
    xlb.ok(&["fw", "del", "203.0.113.0/24", "203.0.113.11"]);

    // What works still does.
    xlb.ok(&[
        "vip",
        "add",
        "198.51.100.41:53/udp",
        "--mode",
        "nat",
        "--udp-idle",
        "5s",
    ]);
    xlb.ok(&[
        "backend",
        "add",
        "[2001:db8::10]:80/tcp",
        "[2001:db8::11]:8080",
    ]);
    xlb.ok(&["vip", "check", "198.51.100.10:80/tcp", "tcp", "--rise", "2"]);
}

/// `xlb check-config FILE` refuses `text` with one line naming the file, `line`,
/// `field` and `msg`, without a raw hidden character.
fn check_refused(dir: &Path, text: &str, line: usize, field: &str, msg: &str) {
    let file = dir.join("bad.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(xlb_bin())
        .args(["--socket", "/nonexistent/xlb.sock", "check-config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}: accepted");
    let want = format!("xlb: {}:{line}:", file.display());
    assert!(
        err.starts_with(&want),
        "{text}: {err:?} should start with {want:?}"
    );
    assert!(
        err.contains(&format!(": {field}: ")),
        "{text}: {err:?} should name {field}"
    );
    assert!(err.contains(msg), "{text}: {err:?} should say {msg:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{text}: one line: {err:?}"
    );
    assert!(!err.trim_end().chars().any(hidden), "{text}: {err:?}");
}

#[test]
fn check_config_refuses_values_that_cannot_work() {
    let dir = TestDir::plain("values-config").unwrap();
    let svc = |address: &str, mode: &str, extra: &str| {
        format!("[[service]]\naddress = \"{address}\"\nmode = \"{mode}\"\n{extra}")
    };
    let backend = |b: &str| {
        svc(
            "198.51.100.10:80/tcp",
            "nat",
            &format!("[[service.backend]]\naddress = \"{b}\"\n"),
        )
    };
    let cases: Vec<(String, usize, &str, &str)> = vec![
        (
            svc("127.0.0.1:80/tcp", "nat", ""),
            2,
            "service.address",
            "service address 127.0.0.1:80/tcp cannot work: 127.0.0.1 is a loopback address",
        ),
        (
            svc("255.255.255.255:80/udp", "nat", ""),
            2,
            "service.address",
            "the broadcast address",
        ),
        (
            svc("[::ffff:198.51.100.10]:80/tcp", "nat", ""),
            2,
            "service.address",
            "use its IPv4 form, 198.51.100.10:80/tcp",
        ),
        (
            svc("[fe80::10]:80/tcp", "dsr", ""),
            2,
            "service.address",
            "a link-local IPv6 address",
        ),
        (
            svc("198.51.100.10:+80/tcp", "nat", ""),
            2,
            "service.address",
            "'+80' is not a port",
        ),
        (
            svc("198.51.100.10:70000/tcp", "nat", ""),
            2,
            "service.address",
            "port 70000 is outside 1-65535",
        ),
        (
            backend("224.0.0.1:8080"),
            5,
            "service.backend.address",
            "224.0.0.1 is a multicast address",
        ),
        (
            backend("198.51.100.10"),
            5,
            "service.backend.address",
            "it is service 198.51.100.10:80/tcp's own address",
        ),
        (
            backend("[fe80::1%2]:80"),
            5,
            "service.backend.address",
            "it names a zone (%IFACE)",
        ),
        (
            svc("198.51.100.10:80/tcp", "fullnat", "snat = \"127.0.0.1\"\n"),
            4,
            "service.snat",
            "snat address 127.0.0.1 cannot work",
        ),
        (
            svc("198.51.100.10:53/udp", "nat", "tcp_idle = \"1h\"\n"),
            4,
            "service.tcp_idle",
            "tcp_idle is for tcp services; 198.51.100.10:53/udp is a udp service: give it udp_idle",
        ),
        (
            svc("198.51.100.10:80/tcp", "nat", "udp_idle = \"5s\"\n"),
            4,
            "service.udp_idle",
            "udp_idle is for udp services",
        ),
        (
            svc(
                "198.51.100.10:80/tcp",
                "nat",
                "[service.health]\nkind = \"tcp\"\nport = 0\n",
            ),
            6,
            "service.health.port",
            "port 0 is out of range: expected 1 to 65535",
        ),
        (
            svc(
                "198.51.100.10:80/tcp",
                "nat",
                "[[service.backend]]\naddress = \"203.0.113.11:8080\"\nweight = 0\n",
            ),
            6,
            "service.backend.weight",
            "weight 0 is out of range: expected 1 to 100",
        ),
        (
            svc(
                "198.51.100.10:80/tcp",
                "nat",
                "[[service.backend]]\naddress = \"203.0.113.11:8080\"\nweight = 1.5\n",
            ),
            6,
            "service.backend.weight",
            "expected a whole number, e.g. 3",
        ),
        (
            "[firewall.ports]\ndeny = [\"1000-2000/tcp\"]\nallow = [\"1500-2500/tcp\"]\n".into(),
            3,
            "firewall.ports.allow",
            "port 1500-2500/tcp overlaps 1000-2000/tcp (line 2) and is as wide",
        ),
        (
            "[firewall]\ndeny = [\"::ffff:192.0.2.0/120\"]\n".into(),
            2,
            "firewall.deny",
            "use 192.0.2.0/24",
        ),
        (
            "[firewall]\ndeny = [\"192.0.2.0/24\"]\nallow = [\"192.0.2.0/24\"]\n".into(),
            3,
            "firewall.allow",
            "listed twice (also at line 2)",
        ),
        (
            "[firewall.ports]\ndeny = [\"192.0.2.0/24\"]\n".into(),
            2,
            "firewall.ports.deny",
            "'192.0.2.0/24' is a prefix: put prefix rules in [firewall] deny or allow",
        ),
        (
            "[firewall]\ndeny = [\"80/sctp\"]\n".into(),
            2,
            "firewall.deny",
            "'80/sctp' is a port spec: put port rules in [firewall.ports]",
        ),
        (
            "[firewall.ports]\ndeny = [\"99999999999/tcp\"]\n".into(),
            2,
            "firewall.ports.deny",
            "port 99999999999 is outside 1-65535",
        ),
        (
            "[firewall]\ndeny = [\"192.0.2.0/+24\"]\n".into(),
            2,
            "firewall.deny",
            "the length '+24' is not a number",
        ),
        (
            "[firewall]\ndeny = [\"\u{feff}192.0.2.0/24\"]\n".into(),
            2,
            "firewall.deny",
            "'\\u{feff}192.0.2.0/24' is not a prefix",
        ),
        (
            "[firewall]\ndefault = \"deny\\u0000\"\n".into(),
            2,
            "firewall.default",
            "'deny\\u{0}' is not an action",
        ),
        (
            format!(
                "[firewall]\ndeny = [\"203.0.113.0/24\"]\n{}",
                backend("203.0.113.11:8080")
            ),
            7,
            "service.backend",
            "backend 203.0.113.11:8080 of service 198.51.100.10:80/tcp is denied by the firewall (deny 203.0.113.0/24): its replies and health-check answers would be dropped",
        ),
        (
            format!(
                "[firewall]\ndefault = \"deny\"\n{}",
                backend("203.0.113.11:8080")
            ),
            7,
            "service.backend",
            "is denied by the firewall (the default policy)",
        ),
        (
            "[metrics]\nlisten = \"224.0.0.1:9100\"\n".into(),
            2,
            "metrics.listen",
            "224.0.0.1 is a multicast or broadcast address",
        ),
        (
            "firewall = 5\n".into(),
            1,
            "firewall",
            "expected a [firewall] table",
        ),
        (
            "[tls]\nlisten = [\"192.0.2.1:443\"]\n[tls.limits]\nretries = \"2\"\n".into(),
            4,
            "tls.limits.retries",
            "expected a whole number, e.g. 3",
        ),
    ];
    for (text, line, field, msg) in &cases {
        check_refused(&dir.path, text, *line, field, msg);
    }
}

#[test]
fn a_state_file_with_values_that_cannot_work_is_refused() {
    let dir = TestDir::new("values-state").unwrap();
    let edge = Netns::new("edge").unwrap();
    let state = dir.path.join("state");
    let socket = dir.path.join("xlb.sock");
    let pins = dir.path.join("bpffs/xlb");
    for (text, want) in [
        (
            "rule 1 port deny 1000-2000/tcp\nrule 2 port allow 1500-2500/tcp\n",
            "line 3: port 1500-2500/tcp overlaps rule 1 (port deny 1000-2000/tcp)",
        ),
        (
            "rule +1 deny 192.0.2.0/24\n",
            "line 2: '+1' is not a rule id",
        ),
        (
            "rule 1 deny 192.0.2.0/24\nrule 1 deny 198.51.100.0/24\n",
            "line 3: rule 1: the id is already prefix 192.0.2.0/24",
        ),
        (
            "rule 1 deny ::ffff:192.0.2.0/120\n",
            "line 2: '::ffff:192.0.2.0/120' is not a prefix",
        ),
        (
            "service 198.51.100.10:53/udp nat tcp_idle=600\n",
            "line 2: --tcp-idle is for tcp services",
        ),
        (
            "service 198.51.100.10:80/tcp nat tcp_idle=+600\n",
            "line 2: '+600' is not an idle timeout",
        ),
        (
            "service 127.0.0.1:80/tcp nat\n",
            "line 2: service address 127.0.0.1:80/tcp cannot work",
        ),
        (
            "service [2001:db8::10]:80/tcp nat\nbackend [2001:db8::10]:80/tcp [::ffff:203.0.113.11]:8080 weight=1\n",
            "line 3: backend [::ffff:203.0.113.11]:8080 cannot work: ::ffff:203.0.113.11 is an IPv4-mapped IPv6 address, which never matches an IPv4 packet (those carry IPv4 addresses); use its IPv4 form, 203.0.113.11:8080",
        ),
        (
            "service 198.51.100.10:80/tcp nat\nbackend 198.51.100.10:80/tcp 198.51.100.10:8080 weight=1\n",
            "line 3: backend 198.51.100.10:8080 cannot work: it is service 198.51.100.10:80/tcp's own address",
        ),
        (
            "service 198.51.100.10:80/tcp nat\ncheck 198.51.100.10:80/tcp kind=tcp rise=+2\n",
            "line 3: check.rise: '+2' is not a whole number",
        ),
    ] {
        // Each after the state file's header, which is line 1.
        std::fs::write(&state, format!("{HEADER}\n{text}")).unwrap();
        let bin = xlb_bin();
        let out = edge
            .cmd(&[
                bin.to_str().unwrap(),
                "--socket",
                socket.to_str().unwrap(),
                "run",
            ])
            .args(["--iface", "lo", "--bpffs"])
            .arg(&pins)
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: accepted");
        assert!(err.contains(want), "{text}: {err:?} should say {want:?}");
        assert!(
            err.contains(&format!("state file {}", state.display())),
            "{text}: {err:?}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{text}: one line: {err:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&state).unwrap(),
            format!("{HEADER}\n{text}"),
            "the state file is left as it was"
        );
    }
}
