//! The configuration file's tests: whole files accepted and refused, reload plans.

use std::time::Duration;

use super::{
    health::check_from_words,
    plan::{Plan, RuleOp, plan},
    raw::RawConfig,
    *,
};
use crate::model::{
    health_check::{CheckKind, DEFAULT_FALL},
    ratelimit::Limits,
    rules::{Action, Match, RuleSet},
    services::Services,
    weights::Flags,
};

fn parse(src: &str) -> Result<Config, ConfigErrors> {
    Config::parse(src, Path::new("/etc/xlb/test.toml"))
}

fn err(src: &str) -> ConfigError {
    let e = parse(src).expect_err("must be refused");
    e.0[0].clone()
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/xlb.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.interfaces.is_empty());
    assert!(!c.projection.rules.is_empty());
    assert!(!c.projection.services.by_vip.is_empty());
    assert!(!c.health.is_empty());
}

#[test]
fn a_full_file_parses() {
    let c = parse(
        r#"
[[interface]]
name = "eth0"
mode = "generic"

[firewall]
default = "deny"
deny = ["203.0.113.0/25", "2001:db8:bad::/48"]
allow = ["203.0.113.7", "203.0.113.8/29"]
except = ["22/tcp", "198.51.100.0/24"]
[firewall.ports]
deny = ["23/tcp", "6000-6063/tcp"]
allow = ["443/tcp"]

[[service]]
address = "198.51.100.10:80/tcp"
mode = "nat"
affinity = "source"
tcp_idle = "1h"
[service.health]
kind = "http"
interval = "500ms"
timeout = "200ms"
path = "/healthz"
expect_status = 204
[[service.backend]]
address = "203.0.113.11:8080"
weight = 3
[[service.backend]]
address = "203.0.113.12:8080"

[[service]]
address = "198.51.100.10:*/udp"
mode = "dsr"
echo = false
[[service.backend]]
address = "203.0.113.11"

[metrics]
listen = "127.0.0.1:9100"
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.interfaces[0].mode, AttachMode::Generic);
    assert_eq!(c.projection.default_policy, Action::Deny);
    assert_eq!(c.projection.malformed_policy, Action::Deny);
    assert_eq!(c.projection.rules.len(), 9);
    let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
    let s = &c.projection.services.by_vip[&vip];
    assert!(s.affinity_source);
    assert_eq!(s.tcp_idle, 3600);
    assert_eq!(s.backends.values().copied().collect::<Vec<_>>(), vec![3, 1]);
    let h = &c.health[&vip];
    assert_eq!(h.kind, CheckKind::Http);
    assert_eq!(h.interval, Duration::from_millis(500));
    assert_eq!((h.rise, h.fall, h.expect_status), (2, 3, 204));
    assert_eq!(
        c.metrics,
        Some(MetricsListen::At("127.0.0.1:9100".parse().unwrap()))
    );
    let off = parse("[metrics]\nlisten = \"off\"\n").unwrap();
    assert_eq!(off.metrics, Some(MetricsListen::Off));
    assert_eq!(parse("").unwrap().projection, Projection::default());
}

#[test]
fn errors_name_file_line_field_and_expectation() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[[interface]]\nname = \"eth0\"\nmoed = \"native\"\n",
            3,
            "interface.moed",
            "unknown field `moed`",
        ),
        ("bogus = 1\n", 1, "bogus", "unknown field `bogus`"),
        (
            "[firewall]\ndeny = [\"192.0.2.0/24\",\n  \"192.0.2.1/24\"]\n",
            3,
            "firewall.deny",
            "did you mean 192.0.2.0/24",
        ),
        (
            "[firewall]\ndefault = \"maybe\"\n",
            2,
            "firewall.default",
            "expected \"allow\" or \"deny\"",
        ),
        (
            "[firewall.ports]\ndeny = [\"70000/tcp\"]\n",
            2,
            "firewall.ports.deny",
            "outside 1-65535",
        ),
        (
            "[firewall]\ndeny = [\"80/tcp\"]\n",
            2,
            "firewall.deny",
            "[firewall.ports]",
        ),
        (
            "[firewall]\ndeny = [\"192.0.2.0/24\"]\nallow = [\"192.0.2.0/24\"]\n",
            3,
            "firewall.allow",
            "listed twice (also at line 2)",
        ),
        (
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"tunnel\"\n",
            3,
            "service.mode",
            "'tunnel' is not a mode",
        ),
        (
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\n",
            1,
            "service",
            "missing field `mode`",
        ),
        (
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[[service.backend]]\naddress = \"203.0.113.11:8080\"\nweight = 0\n",
            6,
            "service.backend.weight",
            "expected 1 to 100",
        ),
        (
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[[service.backend]]\naddress = \"203.0.113.11:8080\"\nweight = \"2\"\n",
            6,
            "service.backend.weight",
            "invalid type",
        ),
        (
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\ntcp_idle = 30\n",
            4,
            "service.tcp_idle",
            "has no unit",
        ),
        (
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[service.health]\nkind = \"tcp\"\npath = \"/\"\n",
            6,
            "service.health.path",
            "only http and https",
        ),
        (
            "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n[service.health]\nkind = \"http\"\ninterval = \"1s\"\ntimeout = \"2s\"\n",
            7,
            "service.health.timeout",
            "at most the interval",
        ),
        (
            "[[service]]\naddress = \"198.51.100.30:443/tcp\"\nmode = \"https\"\n",
            3,
            "service.mode",
            "needs a [tls] section",
        ),
        (
            "[[service]]\naddress = \"198.51.100.30:443/udp\"\nmode = \"https\"\n",
            2,
            "service.address",
            "one TCP port",
        ),
        (
            "[[service]]\naddress = \"198.51.100.30:443/tcp\"\nmode = \"https\"\nsnat = \"203.0.113.1\"\n",
            4,
            "service.snat",
            "an https service has no snat",
        ),
        (
            "[metrics]\nlisten = \"localhost\"\n",
            2,
            "metrics.listen",
            "expected ADDR:PORT",
        ),
        // A TLS pool's health table: the same keys, checks and locations.
        (
            &pool_health("kind = \"http\"\nfall = 0\n"),
            11,
            "tls.pools.health.fall",
            "fall 0 is out of range: expected 1 to 100",
        ),
        (
            &pool_health("kind = \"tcp\"\nexpect_status = 204\n"),
            11,
            "tls.pools.health.expect_status",
            "only http and https",
        ),
        (
            &pool_health("kind = \"http\"\nintervall = \"1s\"\n"),
            11,
            "tls.pools.health.intervall",
            "unknown field `intervall`",
        ),
        ("[firewall\n", 1, "firewall", ""),
    ];
    for (src, line, field, msg) in cases {
        let e = err(src);
        assert_eq!(e.line, *line, "{src}: {e}");
        assert_eq!(e.field, *field, "{src}: {e}");
        assert!(e.message.contains(msg), "{src}: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("/etc/xlb/test.toml:{line}:")),
            "{e}"
        );
    }
}

/// A [tls] section whose one pool has the health table `table` (from line 10).
fn pool_health(table: &str) -> String {
    format!(
        "[tls]\nlisten = [\"192.0.2.1:443\"]\ndefault_cert = {{ chain = \"a.pem\", key = \"a.key\" }}\n\
         [[tls.routes]]\npool = \"web\"\n[[tls.pools]]\nname = \"web\"\nbackends = [\"203.0.113.11:8080\"]\n\
         [tls.pools.health]\n{table}"
    )
}

#[test]
fn a_pool_health_table_gives_the_services_check() {
    let mut tls: HttpsConfig = toml::from_str::<RawConfig>(&pool_health(
        "kind = \"http\"\ninterval = \"200ms\"\nrise = 3\npath = \"/health\"\n",
    ))
    .unwrap()
    .tls
    .unwrap()
    .into_inner();
    let check = tls.pools[0].health_check().unwrap().unwrap();
    assert_eq!(
        (check.kind, check.interval, check.rise, check.fall),
        (CheckKind::Http, Duration::from_millis(200), 3, DEFAULT_FALL)
    );
    assert_eq!(
        (check.path.as_str(), check.timeout),
        ("/health", Duration::from_millis(200))
    );
    // Without the file's text the first problem is named by its field.
    tls.pools[0].health = toml::from_str::<RawConfig>(&pool_health("kind = \"udp\"\n"))
        .unwrap()
        .tls
        .unwrap()
        .into_inner()
        .pools[0]
        .health
        .clone();
    let e = tls.validate().unwrap_err();
    assert!(
        format!("{e:#}").contains("health.kind: 'udp' is not a check kind"),
        "{e:#}"
    );
}

#[test]
fn every_error_is_reported() {
    let e = parse(
        "[firewall]\ndeny = [\"192.0.2.1/24\", \"x\"]\n[[service]]\naddress = \"198.51.100.10:0/tcp\"\nmode = \"nat\"\n",
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
    assert_eq!(e.to_string().lines().count(), 3);
}

fn proj(src: &str) -> Projection {
    parse(src).unwrap_or_else(|e| panic!("{e}")).projection
}

fn apply(rules: &mut RuleSet, services: &mut Services, p: &Plan) {
    for op in &p.rule_ops {
        match op {
            RuleOp::Upsert(m, a) => {
                rules.upsert(*m, *a).unwrap();
            }
            RuleOp::Remove(m) => {
                rules.remove(m).unwrap();
            }
        }
    }
    rules.default_policy = p.default_policy;
    rules.malformed_policy = p.malformed_policy;
    *services = p.services.clone();
}

#[test]
fn reload_applies_the_file_diff_and_keeps_cli_changes() {
    let old = proj(
        r#"
[firewall]
deny = ["192.0.2.0/24", "198.51.100.0/24"]
[[service]]
address = "198.51.100.10:80/tcp"
mode = "nat"
[[service.backend]]
address = "203.0.113.11:8080"
[[service.backend]]
address = "203.0.113.12:8080"
"#,
    );
    let new = proj(
        r#"
[firewall]
default = "deny"
deny = ["192.0.2.0/24", "203.0.113.0/24"]
allow = ["203.0.113.8/29"]
[[service]]
address = "198.51.100.10:80/tcp"
mode = "nat"
[[service.backend]]
address = "203.0.113.11:8080"
weight = 2
[[service.backend]]
address = "203.0.113.13:8080"
"#,
    );
    let (mut rules, mut services) = (RuleSet::default(), Services::default());
    let p = plan(
        &rules,
        &services,
        &Flags::new(),
        &Limits::default(),
        &Projection::default(),
        &old,
    )
    .unwrap();
    apply(&mut rules, &mut services, &p);
    // CLI changes: a rule, a backend of the file's service and a check.
    let cli_rule = Match::Prefix("2001:db8::/32".parse().unwrap());
    rules.upsert(cli_rule, Action::Deny).unwrap();
    let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
    services
        .add_backend(&vip, "203.0.113.14:8080".parse().unwrap(), 1)
        .unwrap();
    let check = check_from_words([("kind", "tcp")], "check").unwrap();
    services.set_check(&vip, Some(check.clone())).unwrap();

    let p = plan(
        &rules,
        &services,
        &Flags::new(),
        &Limits::default(),
        &old,
        &new,
    )
    .unwrap();
    apply(&mut rules, &mut services, &p);
    assert_eq!(
        services.by_vip[&vip].check,
        Some(check),
        "the CLI's check stays"
    );
    let lines: Vec<String> = rules
        .rules()
        .map(|r| format!("{} {}", r.action, r.matches))
        .collect();
    assert!(lines.contains(&"deny 192.0.2.0/24".to_string()));
    assert!(lines.contains(&"deny 203.0.113.0/24".to_string()));
    assert!(!lines.contains(&"deny 198.51.100.0/24".to_string()));
    assert!(rules.get(&cli_rule).is_some(), "the CLI's rule stays");
    assert_eq!(rules.default_policy, Action::Deny);
    let b: Vec<(String, u32)> = services.by_vip[&vip]
        .backends
        .iter()
        .map(|(b, w)| (b.to_string(), *w))
        .collect();
    assert_eq!(
        b,
        vec![
            ("203.0.113.11:8080".into(), 2),
            ("203.0.113.13:8080".into(), 1),
            ("203.0.113.14:8080".into(), 1),
        ]
    );
    // The same file again changes nothing.
    let p = plan(
        &rules,
        &services,
        &Flags::new(),
        &Limits::default(),
        &new,
        &new,
    )
    .unwrap();
    assert!(p.rule_ops.is_empty());
    assert_eq!(p.services, services);
    // Removing the service from the file removes it, CLI backends too.
    let p = plan(
        &rules,
        &services,
        &Flags::new(),
        &Limits::default(),
        &new,
        &Projection::default(),
    )
    .unwrap();
    assert!(p.services.by_vip.is_empty());
    assert_eq!(p.default_policy, Action::Allow);
}

#[test]
fn a_reload_that_does_not_fit_cli_backends_is_refused() {
    let old = proj("[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"nat\"\n");
    let new = proj("[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"dsr\"\n");
    let (mut rules, mut services) = (RuleSet::default(), Services::default());
    let p = plan(
        &rules,
        &services,
        &Flags::new(),
        &Limits::default(),
        &Projection::default(),
        &old,
    )
    .unwrap();
    apply(&mut rules, &mut services, &p);
    let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
    services
        .add_backend(&vip, "203.0.113.14:8080".parse().unwrap(), 1)
        .unwrap();
    let e = plan(
        &rules,
        &services,
        &Flags::new(),
        &Limits::default(),
        &old,
        &new,
    )
    .unwrap_err();
    assert!(e.contains("dsr cannot change ports"), "{e}");
}

#[test]
fn fullnat_services_take_their_snat_address() {
    let c = parse(
        "[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"fullnat\"\nsnat = \"203.0.113.1\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let vip: Vip = "198.51.100.10:80/tcp".parse().unwrap();
    assert_eq!(
        c.projection.services.by_vip[&vip].snat,
        Some("203.0.113.1".parse().unwrap())
    );
    let e =
        err("[[service]]\naddress = \"198.51.100.10:80/tcp\"\nmode = \"fullnat\"\nsnat = \"x\"\n");
    assert_eq!((e.line, e.field.as_str()), (4, "service.snat"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    for bad in ["", "2", "s", "1.5s", "2 s", "-1s", "3w"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

/// A layer-4 service of `mode` at `address`, with `extra` lines in its table.
fn svc(address: &str, mode: &str, extra: &str) -> String {
    format!("[[service]]\naddress = \"{address}\"\nmode = \"{mode}\"\n{extra}")
}

#[test]
fn firewall_values_that_cannot_work_are_refused_where_they_are_written() {
    let cases: Vec<(String, usize, &str, &str)> = vec![
        (
            "[firewall]\ndeny = [\"::ffff:192.0.2.0/120\"]\n".into(),
            2,
            "firewall.deny",
            "never matches an IPv4 packet (the firewall sees those as IPv4): use 192.0.2.0/24",
        ),
        (
            "[firewall.ports]\ndeny = [\"1000-2000/tcp\"]\nallow = [\"1500-2500/tcp\"]\n".into(),
            3,
            "firewall.ports.allow",
            "port 1500-2500/tcp overlaps 1000-2000/tcp (line 2) and is as wide (1001 ports): the narrowest range decides a port",
        ),
        (
            "[firewall]\nexcept = [\"1000-2000/udp\",\n  \"1001-2001/udp\"]\n".into(),
            3,
            "firewall.except",
            "except-port 1001-2001/udp overlaps 1000-2000/udp (line 2)",
        ),
        (
            "[firewall]\nallow = [\"fe80::%eth0/64\"]\n".into(),
            2,
            "firewall.allow",
            "a zone (%IFACE) is not part of a prefix",
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
            "[firewall]\ndeny = [\"192.0.2.0/99999\"]\n".into(),
            2,
            "firewall.deny",
            "the length is over 32: use 0 to 32",
        ),
        (
            "[firewall.ports]\ndeny = [\"+80/tcp\"]\n".into(),
            2,
            "firewall.ports.deny",
            "'+80' is not a port: write 1-65535 in digits",
        ),
        (
            "[firewall]\nallow = [\"2001:db8::/+32\"]\n".into(),
            2,
            "firewall.allow",
            "the length '+32' is not a number",
        ),
    ];
    for (src, line, field, msg) in &cases {
        let e = err(src);
        assert_eq!((e.line, e.field.as_str()), (*line, *field), "{src}: {e}");
        assert!(e.message.contains(msg), "{src}: {e}");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }
    // The same range is one rule; other widths and kinds have a winner.
    let c = parse(
        "[firewall]\nexcept = [\"1500-2500/tcp\"]\n[firewall.ports]\ndeny = [\"1000-2000/tcp\", \"1000-2001/tcp\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.projection.rules.len(), 3);
}

#[test]
fn service_values_that_cannot_work_are_refused_where_they_are_written() {
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
            svc("0.0.0.0:80/tcp", "nat", ""),
            2,
            "service.address",
            "0.0.0.0 is the unspecified address",
        ),
        (
            svc("[ff02::1]:80/udp", "nat", ""),
            2,
            "service.address",
            "ff02::1 is a multicast address",
        ),
        (
            svc("[::ffff:198.51.100.10]:80/tcp", "nat", ""),
            2,
            "service.address",
            "use its IPv4 form, 198.51.100.10:80/tcp",
        ),
        (
            svc("[fe80::10]:80/tcp", "nat", ""),
            2,
            "service.address",
            "link-local IPv6 address",
        ),
        (
            backend("255.255.255.255:8080"),
            5,
            "service.backend.address",
            "backend 255.255.255.255:8080 cannot work: 255.255.255.255 is the broadcast address",
        ),
        (
            backend("127.0.0.1:8080"),
            5,
            "service.backend.address",
            "127.0.0.1 is a loopback address",
        ),
        (
            backend("198.51.100.10:80"),
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
            svc("198.51.100.10:80/tcp", "fullnat", "snat = \"0.0.0.0\"\n"),
            4,
            "service.snat",
            "snat address 0.0.0.0 cannot work: 0.0.0.0 is the unspecified address",
        ),
        (
            svc(
                "198.51.100.10:80/tcp",
                "fullnat",
                "snat = \"fe80::1%eth0\"\n",
            ),
            4,
            "service.snat",
            "it names a zone",
        ),
        (
            svc("198.51.100.10:53/udp", "nat", "tcp_idle = \"1h\"\n"),
            4,
            "service.tcp_idle",
            "tcp_idle is for tcp services; 198.51.100.10:53/udp is a udp service: give it udp_idle",
        ),
        (
            svc("198.51.100.10:80/tcp", "nat", "udp_idle = \"10s\"\n"),
            4,
            "service.udp_idle",
            "udp_idle is for udp services; 198.51.100.10:80/tcp is a tcp service: give it tcp_idle",
        ),
        (
            svc("198.51.100.10:70000/tcp", "nat", ""),
            2,
            "service.address",
            "port 70000 is outside 1-65535 (or * for every port)",
        ),
        (
            svc(
                "198.51.100.10:80/tcp",
                "nat",
                "tcp_idle = \"99999999999999999999s\"\n",
            ),
            4,
            "service.tcp_idle",
            "idle timeout '99999999999999999999s' is out of range",
        ),
        (
            svc("198.51.100.10:0/tcp", "nat", ""),
            2,
            "service.address",
            "port 0 is not a port: use * for every port",
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
            backend("203.0.113.11:0"),
            5,
            "service.backend.address",
            "port 0 is not a port",
        ),
    ];
    for (src, line, field, msg) in &cases {
        let e = err(src);
        assert_eq!((e.line, e.field.as_str()), (*line, *field), "{src}: {e}");
        assert!(e.message.contains(msg), "{src}: {e}");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
    }
    // The timeout of the service's protocol is taken.
    let c = parse(&svc("198.51.100.10:53/udp", "nat", "udp_idle = \"10s\"\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let vip: Vip = "198.51.100.10:53/udp".parse().unwrap();
    assert_eq!(c.projection.services.by_vip[&vip].udp_idle, 10);
}

#[test]
fn errors_speak_of_tables_and_numbers_not_types() {
    let weight = |w: &str| {
        svc(
            "198.51.100.10:80/tcp",
            "nat",
            &format!("[[service.backend]]\naddress = \"203.0.113.11:8080\"\nweight = {w}\n"),
        )
    };
    let tls = |extra: &str| format!("[tls]\nlisten = [\"192.0.2.1:443\"]\n{extra}");
    let cases = [
        ("firewall = 5\n".to_string(), "expected a [firewall] table"),
        ("control = []\n".into(), "expected a [control] table"),
        (
            "interface = [1]\n".into(),
            "expected an [[interface]] table",
        ),
        ("balancer = \"x\"\n".into(), "expected a [balancer] table"),
        // An array where a table belongs is not read by position.
        (
            "balancer = [\"30s\"]\n".into(),
            "invalid type: sequence, expected a [balancer] table",
        ),
        (
            "metrics = [\"127.0.0.1:9100\"]\n".into(),
            "expected a [metrics] table",
        ),
        (
            "interface = [[\"eth0\"]]\n".into(),
            "expected an [[interface]] table",
        ),
        (
            svc(
                "198.51.100.10:80/tcp",
                "nat",
                "backend = [[\"203.0.113.11:80\"]]\n",
            ),
            "expected a [[service.backend]] table",
        ),
        (tls("limits = [\"1s\"]\n"), "expected a [tls.limits] table"),
        ("metrics = 1\n".into(), "expected a [metrics] table"),
        ("service = [1]\n".into(), "expected a [[service]] table"),
        (
            "[firewall]\nports = 1\n".into(),
            "expected a [firewall.ports] table",
        ),
        (
            svc("198.51.100.10:80/tcp", "nat", "backend = [1]\n"),
            "expected a [[service.backend]] table",
        ),
        (
            svc("198.51.100.10:80/tcp", "nat", "health = 1\n"),
            "expected a health table",
        ),
        (weight("1.5"), "expected a whole number, e.g. 3"),
        (weight("\"2\""), "expected a whole number, e.g. 3"),
        ("tls = 1\n".into(), "expected a [tls] table"),
        (tls("hsts = 1\n"), "expected an hsts table"),
        (
            tls("hsts = { max_age = -1 }\n"),
            "expected a whole number of 0 or more",
        ),
        (tls("default_cert = 1\n"), "expected a certificate table"),
        (tls("certs = [1]\n"), "expected a [[tls.certs]] table"),
        (tls("routes = [1]\n"), "expected a [[tls.routes]] table"),
        (tls("pools = [1]\n"), "expected a [[tls.pools]] table"),
        (tls("limits = 1\n"), "expected a [tls.limits] table"),
        (
            tls("cert_check_interval = \"1 s\"\n"),
            "'1 s' is not a duration",
        ),
        (
            tls("[limits]\nmax_header_bytes = \"x\"\n"),
            "expected a whole number, e.g. 3",
        ),
        (
            tls("[limits]\nretries = -1\n"),
            "expected a whole number of 0 or more",
        ),
        (
            tls("[limits]\nidle_timeout = true\n"),
            "expected a duration, e.g. \"10s\"",
        ),
        (
            "[tls]\nlisten = [\"x\"]\n".into(),
            "'x' is not ADDR:PORT, e.g. \"192.0.2.1:443\"",
        ),
        (
            tls("[[pools]]\nname = \"a\"\nbackends = [\"203.0.113.11:80\"]\nmax_fails = 1.5\n"),
            "expected a whole number, e.g. 3",
        ),
        (
            tls(
                "[[pools]]\nname = \"a\"\nbackends = [\"203.0.113.11:80\"]\nfail_timeout = \"1x\"\n",
            ),
            "'1x' is not a duration",
        ),
    ];
    for (src, want) in &cases {
        let src = src
            .replace("[limits]", "[tls.limits]")
            .replace("[[pools]]", "[[tls.pools]]");
        let e = parse(&src).expect_err(&src).to_string();
        assert!(e.contains(want), "{src}: {e}");
        for internal in [
            "Raw",
            "struct ",
            "HttpsConfig",
            "i64",
            "u32",
            "u64",
            "usize",
            "f64",
        ] {
            assert!(!e.contains(internal), "{src}: {e} names {internal}");
        }
    }
}

#[test]
fn errors_show_hidden_characters_on_one_line() {
    let e = err("[firewall]\ndeny = [\"\u{feff}192.0.2.0/24\"]\n");
    assert_eq!(
        e.message,
        "'\\u{feff}192.0.2.0/24' is not a prefix: not an IPv4 or IPv6 address"
    );
    let e = err(&svc("198.51.100.10:80/tcp", "nat\\u0000", ""));
    assert_eq!(
        e.message,
        "'nat\\u{0}' is not a mode: use dsr, nat or fullnat"
    );
    let e = err("[[interface]]\nname = \"eth0\\n\"\n");
    assert!(
        e.message.starts_with("'eth0\\n' is not an interface name"),
        "{e}"
    );
    let e = err("[firewall]\ndefault = \"deny\\u200b\"\n");
    assert!(
        e.message.starts_with("'deny\\u{200b}' is not an action"),
        "{e}"
    );
    // The JSON of check-config carries the same text.
    let json = serde_json::to_string(&e).unwrap();
    assert!(json.contains("deny\\\\u{200b}"), "{json}");
}

#[test]
fn numbers_of_the_cli_and_state_file_words_are_digits_only() {
    let words =
        |k: &'static str, v: &'static str| check_from_words([("kind", "tcp"), (k, v)], "check");
    assert_eq!(
        words("rise", "+2").unwrap_err(),
        "check.rise: '+2' is not a whole number: write 1 to 100 in digits"
    );
    assert!(words("fall", " 2").is_err());
    assert_eq!(
        words("port", "99999999999999999999").unwrap_err(),
        "check.port: port 99999999999999999999 is out of range: expected 1 to 65535"
    );
    assert_eq!(
        words("port", "0").unwrap_err(),
        "check.port: port 0 is out of range: expected 1 to 65535"
    );
    assert_eq!(words("rise", "3").unwrap().rise, 3);
    let e = check_from_words([("kind", "tcp"), ("r\u{0}ise", "3")], "check").unwrap_err();
    assert!(
        e.starts_with("check: 'r\\u{0}ise' is not a health-check setting"),
        "{e}"
    );
    // A group id too.
    assert_eq!(group_id("0"), Ok(0));
    assert!(
        group_id("+0")
            .unwrap_err()
            .contains("there is no group '+0'")
    );
    assert!(
        group_id("99999999999")
            .unwrap_err()
            .contains("out of range")
    );
    // A duration too long for any range is out of range, not "not a duration".
    assert_eq!(parse_duration("99999999999999999999s"), Ok(Duration::MAX));
    assert!(parse_duration("+5s").is_err());
    let e = err(&svc(
        "198.51.100.10:80/tcp",
        "nat",
        "[service.health]\nkind = \"tcp\"\ninterval = \"99999999999999999999h\"\n",
    ));
    assert!(
        e.message.contains("is out of range: expected 100ms to 1h"),
        "{e}"
    );
}

#[test]
fn an_https_file_error_is_one_line_naming_file_line_and_column() {
    let dir = std::env::temp_dir().join(format!("xlb-https-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        "listen = [\"192.0.2.1:443\"]\nroutes = [\n[[pools]]\n",
    )
    .unwrap();
    let e = format!("{:#}", HttpsConfig::load(&path).unwrap_err());
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with(&format!("{}:3:", path.display())), "{e}");
    std::fs::write(&path, "listen = 5\n").unwrap();
    let e = format!("{:#}", HttpsConfig::load(&path).unwrap_err());
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with(&format!("{}:1:10: listen: ", path.display())),
        "{e}"
    );
    // Validation errors too, with what they quote shown.
    std::fs::write(
        &path,
        "listen = [\"192.0.2.1:443\"]\ndefault_cert = { chain = \"a\", key = \"b\" }\n\
         [[routes]]\nhost = \"a\\u200b.example\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\nbackends = [\"203.0.113.11:80\"]\n",
    )
    .unwrap();
    let e = format!("{:#}", HttpsConfig::load(&path).unwrap_err());
    assert!(e.contains("'a\\u{200b}.example' is not a host name"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let e = format!("{:#}", HttpsConfig::from_toml("listen = [\n").unwrap_err());
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("line 1, column "), "{e}");
}

#[test]
fn https_durations_take_the_files_units() {
    let c: HttpsConfig = toml::from_str(
        "listen = [\"192.0.2.1:443\"]\ndefault_cert = { chain = \"a.pem\", key = \"a.key\" }\nroutes = []\npools = []\ncert_check_interval = \"5s\"\n[limits]\nidle_timeout = \"2m\"\nconnect_timeout = \"500ms\"\nresponse_timeout = \"7s\"\n",
    )
    .unwrap();
    assert_eq!(c.cert_check_interval, 5.0);
    assert_eq!(c.limits.idle_timeout, 120.0);
    assert_eq!(c.limits.connect_timeout, 0.5);
    assert_eq!(c.limits.response_timeout, 7.0);
    // One syntax: a bare number (and a tiny one) is refused, with the spelling to use.
    for bare in ["7", "1e-300", "0.5"] {
        let e = toml::from_str::<HttpsConfig>(&format!(
            "listen = [\"192.0.2.1:443\"]\ndefault_cert = {{ chain = \"a.pem\", key = \"a.key\" }}\nroutes = []\npools = []\n[limits]\nresponse_timeout = {bare}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no unit"), "{bare}: {e}");
    }
}

#[test]
fn rate_limits_are_read_and_refused_where_they_are_written() {
    let svc = "[[service]]\naddress = \"192.0.2.10:80/tcp\"\nmode = \"nat\"\n";
    let c = parse(&format!(
        "{svc}[[firewall.limit]]\nrate = \"200/s\"\nburst = 50\nper = \"/24\"\nprefix = \"0.0.0.0/0\"\nnew_flows = true\n\
         [[firewall.limit]]\nrate = \"10/m\"\nservice = \"192.0.2.10:80/tcp\"\n\
         [[firewall.limit]]\nrate = \"5000/s\"\nper = \"prefix\"\nprefix = \"2001:db8::/32\"\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let limits: Vec<String> = c
        .projection
        .limits
        .by_match
        .values()
        .map(|l| l.to_string())
        .collect();
    assert_eq!(
        limits,
        [
            "200/s burst 50 per /24 from 0.0.0.0/0 on new flows",
            "5000/s burst 5000 per prefix from 2001:db8::/32",
            "10/m burst 10 per address from any source to 192.0.2.10:80/tcp",
        ]
    );
    assert!(c.summary().contains("3 rate limits"), "{}", c.summary());
    let limit = |body: &str| format!("{svc}[[firewall.limit]]\n{body}");
    let cases: &[(String, usize, &str, &str)] = &[
        (
            limit("rate = \"0/s\"\n"),
            5,
            "firewall.limit.rate",
            "rate 0/s lets nothing through",
        ),
        (
            limit("rate = \"10/s\"\nburst = 0\n"),
            6,
            "firewall.limit.burst",
            "burst 0 lets nothing through",
        ),
        (
            limit("rate = \"10/s\"\nper = \"/33\"\nprefix = \"192.0.2.0/24\"\n"),
            6,
            "firewall.limit.per",
            "per /33 is longer than an IPv4 address (32 bits)",
        ),
        (
            limit("rate = \"10/s\"\nper = \"/16\"\nprefix = \"192.0.2.0/24\"\n"),
            6,
            "firewall.limit.per",
            "shorter than the prefix 192.0.2.0/24",
        ),
        (
            limit("rate = \"10/s\"\nservice = \"192.0.2.11:80/tcp\"\n"),
            6,
            "firewall.limit.service",
            "no service 192.0.2.11:80/tcp in this file",
        ),
        (
            limit("rate = \"10 per second\"\n"),
            5,
            "firewall.limit.rate",
            "is not a rate: write COUNT/s",
        ),
        (
            limit("rate = \"10/s\"\nprefix = \"192.0.2.1/24\"\n"),
            6,
            "firewall.limit.prefix",
            "did you mean 192.0.2.0/24",
        ),
        (
            limit("rate = \"10/s\"\ncolour = \"red\"\n"),
            6,
            "firewall.limit.colour",
            "unknown field `colour`",
        ),
        (
            format!(
                "{}[[firewall.limit]]\nrate = \"20/s\"\n",
                limit("rate = \"10/s\"\n")
            ),
            6,
            "firewall.limit",
            "is given twice (also at line 4)",
        ),
    ];
    for (src, line, field, msg) in cases {
        let e = err(src);
        assert_eq!((e.line, e.field.as_str()), (*line, *field), "{src}: {e}");
        assert!(e.message.contains(msg), "{src}: {e}");
    }
}

#[test]
fn a_reload_sets_the_files_limits_and_keeps_the_clis() {
    use crate::model::ratelimit::LimitWords;
    fn words<'a>(rate: &'a str, prefix: Option<&'a str>) -> LimitWords<'a> {
        LimitWords {
            rate,
            burst: None,
            per: None,
            prefix,
            new_flows: false,
            service: None,
        }
    }
    let file = |rate: &str| {
        let mut l = Limits::default();
        l.add(words(rate, Some("192.0.2.0/24")).limit().unwrap())
            .unwrap();
        l
    };
    let cli = words("7/s", Some("198.51.100.0/24")).limit().unwrap();
    let mut running = file("10/s");
    running.add(cli).unwrap();
    let services = Services::default();
    let next =
        super::ratelimit::plan_limits(&running, &file("10/s"), &file("20/s"), &services).unwrap();
    let rates: Vec<String> = next.by_match.values().map(|l| l.rate.to_string()).collect();
    assert_eq!(rates, ["20/s", "7/s"], "the file's changed, the CLI's kept");
    let next =
        super::ratelimit::plan_limits(&running, &file("10/s"), &Limits::default(), &services)
            .unwrap();
    assert_eq!(next.by_match.values().copied().collect::<Vec<_>>(), [cli]);
}
