//! Every line format of the state file, written and read in one place:
//!
//! ```text
//! # xlb state
//! default allow
//! malformed deny
//! rule 1 deny 192.0.2.0/24
//! rule 2 except 22/tcp
//! service 198.51.100.10:80/tcp nat
//! check 198.51.100.10:80/tcp kind=tcp interval=2000ms timeout=1000ms rise=2 fall=3
//! backend 198.51.100.10:80/tcp 203.0.113.11:8080 weight=1
//! backend 198.51.100.10:80/tcp 203.0.113.12:8080 weight=1
//! backup 198.51.100.10:80/tcp 203.0.113.12:8080
//! drained 198.51.100.10:80/tcp 203.0.113.11:8080
//! limit rate=1000/s burst=1000 prefix=192.0.2.0/24 new_flows=on
//! base deny 192.0.2.0/24
//! ```
//!
//! `base` lines are the part of the state the configuration file manages, as the last
//! file applied wrote it (its projection: policies, rules, services, backends): the next
//! `xlb run --config` or reload applies diff(base, new file), written in the same file so
//! the state and its base always change together.

use std::fmt::{self, Write as _};

use anyhow::{Result, bail};

use crate::{
    config::health::check_from_words,
    model::{
        desired::{Desired, DesiredRef, Projection},
        health_check::HealthCheck,
        ratelimit::{Limits, limit_words, parse_limit_words},
        rules::{Action, Match, Rule, RuleError, RuleSet, Target, parse_id, parse_target},
        services::{
            BackendAddr, DEFAULT_TCP_IDLE, DEFAULT_UDP_IDLE, ServiceConf, ServiceError, Services,
            Vip, parse_idle, parse_weight,
        },
        text::shown,
        weights::Flags,
    },
};

/// The format of the state file this xlb writes.
pub const FORMAT: u32 = 1;
/// The first line of every state file xlb writes.
pub const HEADER: &str = "# xlb state v1: written by `xlb run`; change it with the xlb CLI";
/// The first line of format 1 as xlb 0.1 wrote it, before the header had a version.
const OLD_HEADER: &str = "# xlb state: written by `xlb run`; change it with the xlb CLI";

/// A rule as the state file and `xlb fw list` write it (`deny 192.0.2.0/24`,
/// `port allow 80/tcp`, `except 22/tcp`).
pub fn rule_line(matches: &Match, action: Action) -> String {
    let mut s = String::new();
    let _ = write_rule(&mut s, matches, action);
    s
}

/// Writes `rule_line` without allocating.
pub fn write_rule(w: &mut impl fmt::Write, matches: &Match, action: Action) -> fmt::Result {
    match matches {
        Match::Prefix(p) => write!(w, "{action} {p}"),
        Match::Port(p) => write!(w, "port {action} {p}"),
        Match::ExceptPrefix(p) => write!(w, "except {p}"),
        Match::ExceptPort(p) => write!(w, "except {p}"),
    }
}

/// Parses what `rule_line` writes.
pub fn parse_rule(s: &str) -> Result<(Match, Action), RuleError> {
    let words: Vec<&str> = s.split_whitespace().collect();
    match words.as_slice() {
        ["except", t] => Ok(match parse_target(t)? {
            Target::Prefix(p) => (Match::ExceptPrefix(p), Action::Allow),
            Target::Port(p) => (Match::ExceptPort(p), Action::Allow),
        }),
        ["port", a, p] => Ok((Match::Port(p.parse()?), a.parse()?)),
        [a, p] => Ok((Match::Prefix(p.parse()?), a.parse()?)),
        _ => Err(RuleError::BadPrefix {
            input: s.into(),
            why: "expected 'allow|deny PREFIX', 'port allow|deny PORT/PROTO' or 'except PREFIX|PORT/PROTO'".into(),
        }),
    }
}

/// The `key=value` words of a health check (every setting, so a reader needs no
/// defaults): `config::health::check_from_words` reads them back.
pub fn check_words(c: &HealthCheck) -> Vec<String> {
    let mut w = vec![
        format!("kind={}", c.kind.name()),
        format!("interval={}ms", c.interval.as_millis()),
        format!("timeout={}ms", c.timeout.as_millis()),
        format!("rise={}", c.rise),
        format!("fall={}", c.fall),
    ];
    if let Some(p) = c.port {
        w.push(format!("port={p}"));
    }
    if c.kind.is_http() {
        w.push(format!("path={}", c.path));
        w.push(format!("expect_status={}", c.expect_status));
    }
    w
}

/// The lines of one service: `service`, its `check` if set with the CLI, its backends.
pub fn service_lines(svc: &ServiceConf) -> Vec<String> {
    let mut head = format!("service {} {}", svc.vip, svc.mode);
    if svc.affinity_source {
        head.push_str(" affinity=source");
    }
    if !svc.echo {
        head.push_str(" echo=off");
    }
    if svc.tcp_idle != DEFAULT_TCP_IDLE {
        head.push_str(&format!(" tcp_idle={}", svc.tcp_idle));
    }
    if svc.udp_idle != DEFAULT_UDP_IDLE {
        head.push_str(&format!(" udp_idle={}", svc.udp_idle));
    }
    if let Some(a) = svc.snat {
        head.push_str(&format!(" snat={a}"));
    }
    crate::store::synflood::write_options(&mut head, svc);
    if svc.all_down == crate::model::weights::AllDown::Strict {
        head.push_str(" all_down=strict");
    }
    let mut out = vec![head];
    if let Some(c) = &svc.check {
        out.push(format!("check {} {}", svc.vip, check_words(c).join(" ")));
    }
    for (b, w) in &svc.backends {
        out.push(format!("backend {} {b} weight={w}", svc.vip));
    }
    out
}

/// Reads one `service`, `check` or `backend` line into `services`.
pub fn parse_service_line(services: &mut Services, line: &str) -> Result<(), ServiceError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let bad = || ServiceError::Invalid(format!("cannot read '{}'", shown(line)));
    match words.as_slice() {
        ["service", vip, mode, opts @ ..] => {
            let (mut affinity, mut echo, mut tcp, mut udp) = (false, true, None, None);
            let mut snat = None;
            let mut syn = crate::store::synflood::Options::default();
            let mut all_down = crate::model::weights::AllDown::Panic;
            for o in opts {
                match o.split_once('=') {
                    Some((k, v)) if syn.read(k, v)? => {}
                    Some(("all_down", v)) => {
                        all_down = v.parse().map_err(ServiceError::Invalid)?;
                    }
                    Some(("affinity", "source")) => affinity = true,
                    Some(("snat", a)) => snat = Some(a.parse().map_err(|_| bad())?),
                    Some(("echo", "off")) => echo = false,
                    Some(("tcp_idle", n)) => {
                        tcp = Some(parse_idle(n).map_err(ServiceError::Invalid)?)
                    }
                    Some(("udp_idle", n)) => {
                        udp = Some(parse_idle(n).map_err(ServiceError::Invalid)?)
                    }
                    _ => return Err(bad()),
                }
            }
            let vip: Vip = vip.parse()?;
            services.add_service(vip, mode.parse()?, affinity, echo)?;
            services.set_snat(&vip, snat)?;
            services.set_idle(&vip, tcp, udp)?;
            if let Some(s) = services.by_vip.get_mut(&vip) {
                s.all_down = all_down;
            }
            syn.apply(services, &vip)
        }
        ["check", vip, words @ ..] => {
            let words = words
                .iter()
                .map(|w| w.split_once('=').ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            let check = check_from_words(words, "check").map_err(ServiceError::Invalid)?;
            services.set_check(&vip.parse()?, Some(check))
        }
        ["backend", vip, b, w] => {
            let w: u32 = w
                .strip_prefix("weight=")
                .and_then(|w| parse_weight(w).ok())
                .ok_or_else(bad)?;
            services
                .add_backend(&vip.parse()?, b.parse()?, w)
                .map(|_| ())
        }
        _ => Err(bad()),
    }
}

/// The whole state file.
pub fn render(st: &DesiredRef) -> String {
    let (rules, services, base) = (st.rules, st.services, st.base);
    let mut s = render_rules(rules);
    for svc in services.by_vip.values() {
        for line in service_lines(svc) {
            s.push_str(&line);
            s.push('\n');
        }
    }
    for (word, flags) in [("backup", st.backups), ("drained", st.drained)] {
        for (vip, b) in flags {
            let _ = writeln!(s, "{word} {vip} {b}");
        }
    }
    for l in st.limits.by_match.values() {
        let _ = writeln!(s, "limit {}", limit_words(l).join(" "));
    }
    if *base != Projection::default() {
        let _ = writeln!(s, "base default {}", base.default_policy);
        let _ = writeln!(s, "base malformed {}", base.malformed_policy);
        for (m, a) in &base.rules {
            let _ = writeln!(s, "base {}", rule_line(m, *a));
        }
        for svc in base.services.by_vip.values() {
            for line in service_lines(svc) {
                let _ = writeln!(s, "base {line}");
            }
        }
        for (vip, b) in &base.backups {
            let _ = writeln!(s, "base backup {vip} {b}");
        }
        for l in base.limits.by_match.values() {
            let _ = writeln!(s, "base limit {}", limit_words(l).join(" "));
        }
    }
    s
}

fn render_rules(rules: &RuleSet) -> String {
    let mut s = String::with_capacity(32 * rules.len() + 64);
    s.push_str(HEADER);
    s.push('\n');
    let _ = writeln!(s, "default {}", rules.default_policy);
    let _ = writeln!(s, "malformed {}", rules.malformed_policy);
    for r in rules.rules() {
        let _ = write!(s, "rule {} ", r.id);
        let _ = write_rule(&mut s, &r.matches, r.action);
        s.push('\n');
    }
    s
}

/// Reads a whole state file, checked whole: its header, every line, no line twice, the
/// last line ended. Any damage refuses the file with its line (it is never repaired:
/// the next write would make a loss permanent).
pub fn parse(text: &str) -> Result<Desired> {
    check_header(text)?;
    if !text.ends_with('\n') {
        let n = text.lines().count();
        bail!(
            "line {n}: the last line has no end of line: the file was cut short (xlb writes whole lines)"
        );
    }
    let mut p = Parser::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        p.line(line)
            .map_err(|e| anyhow::anyhow!("line {}: {e:#}", n + 1))?;
    }
    // A limit's service is a service of the same state (limits are written after the
    // services, and read against all of them).
    p.st.limits.check_services(&p.st.services)?;
    p.st.base.limits.check_services(&p.st.base.services)?;
    p.st.rules.compact_free();
    Ok(p.st)
}

/// The first line must be xlb's header, of a format this xlb reads.
fn check_header(text: &str) -> Result<()> {
    if text.trim().is_empty() {
        bail!(
            "the file is empty, which xlb never writes (it replaces the file whole): it was truncated or made by hand; move it away to start with no rules and no services"
        );
    }
    let first = text.lines().next().unwrap_or("");
    if first == HEADER || first == OLD_HEADER {
        return Ok(());
    }
    if let Some(v) = first.strip_prefix("# xlb state v") {
        let v = v.split_whitespace().next().unwrap_or("");
        bail!(
            "line 1: format v{v} was written by another version of xlb; this one reads v{FORMAT}"
        );
    }
    bail!(
        "line 1: the file does not start with xlb's header ({HEADER:?}): it is not a state file xlb wrote"
    )
}

/// What a state file's lines have built so far, and what they named (each once).
#[derive(Default)]
struct Parser {
    st: Desired,
    policies: std::collections::HashSet<String>,
}

impl Parser {
    /// One line into the state.
    fn line(&mut self, line: &str) -> Result<()> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        if matches!(word, "default" | "malformed") && !self.policies.insert(word.to_string()) {
            bail!("a second '{}' line", shown(word));
        }
        let st = &mut self.st;
        match word {
            "default" => st.rules.default_policy = rest.parse()?,
            "malformed" => st.rules.malformed_policy = rest.parse()?,
            "rule" => parse_rule_with_id(&mut st.rules, rest)?,
            "service" | "backend" => parse_service_line(&mut st.services, line).map_err(damaged)?,
            "check" => {
                check_once(&st.services, rest)?;
                parse_service_line(&mut st.services, line).map_err(damaged)?
            }
            "backup" => flag_once(&mut st.backups, parse_flag(&st.services, rest)?, "backup")?,
            "drained" => flag_once(&mut st.drained, parse_flag(&st.services, rest)?, "drained")?,
            "limit" => limit_line(&mut st.limits, rest)?,
            "base" => parse_base(&mut st.base, rest)?,
            _ => bail!("unknown keyword '{}'", shown(word)),
        }
        Ok(())
    }
}

/// A service's second `check` line.
fn check_once(services: &Services, rest: &str) -> Result<()> {
    let vip = rest.split_whitespace().next().unwrap_or("");
    if let Ok(vip) = vip.parse::<Vip>()
        && services.by_vip.get(&vip).is_some_and(|s| s.check.is_some())
    {
        bail!("a second check of service {vip}");
    }
    Ok(())
}

fn flag_once(flags: &mut Flags, flag: (Vip, BackendAddr), word: &str) -> Result<()> {
    if !flags.insert(flag) {
        bail!("{word} {} {} is given twice", flag.0, flag.1);
    }
    Ok(())
}

/// An error of a line as it is: a state file's value is never "meant" as something
/// else (a cut `/24` must not be suggested as a `/2`), so suggestions go.
fn damaged(e: impl std::fmt::Display) -> anyhow::Error {
    let e = e.to_string();
    match e.split_once(": did you mean") {
        Some((what, _)) => anyhow::anyhow!("{what}: the file is damaged (xlb writes none)"),
        None => anyhow::anyhow!(e),
    }
}

/// `ID RULE` of a `rule` line (an id already taken is refused).
fn parse_rule_with_id(rules: &mut RuleSet, rest: &str) -> Result<()> {
    let Some((id, rule)) = rest.split_once(' ') else {
        bail!("a rule needs an id");
    };
    let id = parse_id(id).map_err(anyhow::Error::msg)?;
    let (matches, action) = parse_rule(rule).map_err(damaged)?;
    if rules.get(&matches).is_some() {
        bail!("duplicate rule '{}'", shown(rule));
    }
    rules.insert_with_id(Rule {
        id,
        matches,
        action,
    })?;
    Ok(())
}

/// The words of a `limit` line into `limits` (each match once).
fn limit_line(limits: &mut Limits, rest: &str) -> Result<()> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let l = parse_limit_words(&words).map_err(damaged)?;
    limits.add(l)?;
    Ok(())
}

/// `VIP BACKEND` of an existing backend.
fn parse_flag(services: &Services, line: &str) -> Result<(Vip, BackendAddr)> {
    let Some((vip, b)) = line.split_once(' ') else {
        bail!("expected a service and a backend");
    };
    let (vip, b): (Vip, BackendAddr) = (vip.parse()?, b.trim().parse()?);
    if !services
        .by_vip
        .get(&vip)
        .is_some_and(|s| s.backends.contains_key(&b))
    {
        bail!("backend {b} of service {vip} is not in the state");
    }
    Ok((vip, b))
}

fn parse_base(base: &mut Projection, line: &str) -> Result<()> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "default" => base.default_policy = rest.trim().parse()?,
        "malformed" => base.malformed_policy = rest.trim().parse()?,
        "service" | "check" | "backend" => {
            parse_service_line(&mut base.services, line).map_err(damaged)?
        }
        "backup" => {
            let flag = parse_flag(&base.services, rest.trim())?;
            base.backups.insert(flag);
        }
        "limit" => limit_line(&mut base.limits, rest.trim())?,
        _ => {
            let (m, a) = parse_rule(line).map_err(damaged)?;
            if base.rules.insert(m, a).is_some() {
                bail!("duplicate base rule '{}'", shown(line));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::{Action, Match};

    #[test]
    fn state_round_trips_with_ids() {
        let mut rules = RuleSet::default();
        rules.default_policy = Action::Deny;
        for line in ["deny 192.0.2.0/24", "except 22/tcp", "port allow 80/tcp"] {
            let (m, a) = parse_rule(line).unwrap();
            rules.upsert(m, a).unwrap();
        }
        rules
            .remove(&Match::ExceptPort("22/tcp".parse().unwrap()))
            .unwrap();
        let mut services = Services::default();
        parse_service_line(&mut services, "service 192.0.2.10:80/tcp nat").unwrap();
        parse_service_line(
            &mut services,
            "backend 192.0.2.10:80/tcp 203.0.113.11:8080 weight=3",
        )
        .unwrap();
        let mut base = Projection {
            malformed_policy: Action::Allow,
            ..Default::default()
        };
        base.rules
            .insert(Match::Port("80/tcp".parse().unwrap()), Action::Allow);
        base.services = services.clone();
        let flag = (
            "192.0.2.10:80/tcp".parse().unwrap(),
            "203.0.113.11:8080".parse().unwrap(),
        );
        base.backups.insert(flag);
        let limit = |w: &str| {
            let words: Vec<&str> = w.split_whitespace().collect();
            parse_limit_words(&words).unwrap()
        };
        let mut limits = Limits::default();
        limits
            .add(limit(
                "rate=100/s burst=20 per=/24 prefix=192.0.2.0/23 new_flows=on",
            ))
            .unwrap();
        limits
            .add(limit("rate=5/m burst=5 service=192.0.2.10:80/tcp"))
            .unwrap();
        base.limits.add(limit("rate=1000/s burst=1000")).unwrap();
        let stored = Desired {
            rules,
            services,
            backups: [flag].into(),
            drained: [flag].into(),
            limits,
            base,
        };
        let text = render(&stored.borrowed());
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("\nbase port allow 80/tcp\n"), "{text}");
        assert!(
            text.contains("\nbackup 192.0.2.10:80/tcp 203.0.113.11:8080\n"),
            "{text}"
        );
        assert!(
            text.contains("\nlimit rate=5/m burst=5 service=192.0.2.10:80/tcp\n"),
            "{text}"
        );
        assert!(
            text.contains("\nbase limit rate=1000/s burst=1000\n"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(render(&back.borrowed()), text);
        assert_eq!(back.base, stored.base);
        assert_eq!(back.limits, stored.limits);
        assert_eq!(back.drained, stored.drained);
        let services = stored.services;
        assert_eq!(back.rules.default_policy, Action::Deny);
        assert_eq!(
            back.rules.rules().map(|r| r.id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(back.services, services);
    }

    #[test]
    fn a_cli_check_round_trips_and_a_broken_one_names_its_line() {
        let mut services = Services::default();
        parse_service_line(&mut services, "service 192.0.2.10:80/tcp nat").unwrap();
        parse_service_line(&mut services, "service 192.0.2.11:*/udp nat").unwrap();
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let words = [
            ("kind", "http"),
            ("path", "/healthz"),
            ("interval", "500ms"),
            ("fall", "2"),
        ];
        let check = check_from_words(words, "check").unwrap();
        assert_eq!(
            (
                check.interval.as_millis(),
                check.timeout.as_millis(),
                check.rise,
                check.fall
            ),
            (500, 500, 2, 2),
            "the defaults of a [service.health] table, the timeout at most the interval"
        );
        services.set_check(&vip, Some(check.clone())).unwrap();
        // A service of every port has no port of its own to check.
        let all: Vip = "192.0.2.11:*/udp".parse().unwrap();
        let e = services.set_check(&all, Some(check.clone())).unwrap_err();
        assert!(e.to_string().contains("give the check a port"), "{e}");
        let stored = Desired {
            services,
            ..Default::default()
        };
        let text = render(&stored.borrowed());
        assert!(
            text.contains("\ncheck 192.0.2.10:80/tcp kind=http interval=500ms timeout=500ms rise=2 fall=2 path=/healthz expect_status=200\n"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(back.services.by_vip[&vip].check, Some(check));
        assert_eq!(render(&back.borrowed()), text);
        // A hand-edited check is read with the file's rules and messages.
        let bad = text.replace("interval=500ms", "interval=5ms");
        let e = format!("{:#}", parse(&bad).unwrap_err());
        assert!(
            e.contains("line 5: check.interval: interval '5ms' is out of range"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse(&text.replace("kind=http", "kind=htp")).unwrap_err()
        );
        assert!(e.contains("'htp' is not a check kind"), "{e}");
        let e = format!(
            "{:#}",
            parse(&text.replace("rise=2", "rize=2")).unwrap_err()
        );
        assert!(e.contains("'rize' is not a health-check setting"), "{e}");
        let e = format!(
            "{:#}",
            parse(&text.replace("fall=2", "fall=two")).unwrap_err()
        );
        assert!(e.contains("check.fall: 'two' is not a whole number"), "{e}");
    }

    /// A state file's text: xlb's header, then `body`.
    fn file(body: &str) -> String {
        format!("{HEADER}\n{body}")
    }

    #[test]
    fn broken_state_names_the_line() {
        let e = parse(&file("default allow\nrule 1 deny 192.0.2.1/24\n")).unwrap_err();
        assert!(e.to_string().starts_with("line 3:"), "{e}");
        assert!(parse(&file("bogus\n")).is_err());
        assert!(parse(&file("rule 0 deny 192.0.2.0/24\n")).is_err());
        let e = parse(&file("backup 192.0.2.10:80/tcp 203.0.113.11:8080\n")).unwrap_err();
        assert!(e.to_string().contains("not in the state"), "{e}");
    }

    #[test]
    fn damage_is_refused_never_repaired() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        // Empty, not xlb's, or of another format.
        assert!(err("").contains("the file is empty"), "{}", err(""));
        assert!(err("\n  \n").contains("the file is empty"));
        assert!(err("default allow\n").contains("does not start with xlb's header"));
        assert!(err("# xlb state v9: future\n").contains("format v9"));
        // The first format's header (xlb 0.1) still reads.
        assert!(parse(&format!("{OLD_HEADER}\ndefault deny\n")).is_ok());
        // A cut last line: refused, and a cut prefix is never suggested wider.
        let e = err(&file("rule 1 deny 192.0.2.0/2"));
        assert!(
            e.contains("line 2: the last line has no end of line"),
            "{e}"
        );
        let e = err(&file("rule 1 deny 192.0.2.0/2\n"));
        assert!(
            e.contains("host bits set") && !e.contains("did you mean"),
            "{e}"
        );
        // Everything once: rule ids, policies, checks, flags.
        let e = err(&file(
            "rule 1 deny 192.0.2.0/24\nrule 1 deny 198.51.100.0/24\n",
        ));
        assert!(e.contains("line 3: rule 1: the id is already"), "{e}");
        let e = err(&file("default deny\ndefault allow\n"));
        assert!(e.contains("line 3: a second 'default' line"), "{e}");
        let svc =
            "service 192.0.2.10:80/tcp nat\nbackend 192.0.2.10:80/tcp 203.0.113.11:80 weight=1\n";
        let check = "check 192.0.2.10:80/tcp kind=tcp\n";
        let e = err(&file(&format!("{svc}{check}{check}")));
        assert!(e.contains("a second check of service"), "{e}");
        let flag = "drained 192.0.2.10:80/tcp 203.0.113.11:80\n";
        let e = err(&file(&format!("{svc}{flag}{flag}")));
        assert!(e.contains("is given twice"), "{e}");
        assert!(err(&file("rule +1 deny 192.0.2.0/24\n")).contains("is not a rule id"));
    }

    #[test]
    fn limits_are_checked_whole_like_every_line() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        let limit = "limit rate=10/s burst=10\n";
        let e = err(&file(&format!("{limit}{limit}")));
        assert!(
            e.contains("line 3: a limit per address from any source is set already"),
            "{e}"
        );
        for (line, why) in [
            ("limit rate=0/s burst=1", "rate 0/s lets nothing through"),
            ("limit rate=10/s burst=0", "burst 0 lets nothing through"),
            (
                "limit rate=10/s burst=1 per=/33 prefix=192.0.2.0/24",
                "per /33 is longer than an IPv4 address",
            ),
            (
                "limit rate=10/s burst=1 service=192.0.2.10:80/tcp",
                "names service 192.0.2.10:80/tcp, which does not exist",
            ),
            (
                "limit rate=10/s burst=1 colour=red",
                "'colour' is not a setting of a limit",
            ),
            ("limit burst=1", "a limit needs its rate"),
        ] {
            let e = err(&file(&format!("{line}\n")));
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn rule_lines_round_trip() {
        let mut set = RuleSet::default();
        for line in [
            "deny 192.0.2.0/24",
            "allow 2001:db8::/48",
            "port deny 1000-2000/udp",
            "except 22/tcp",
            "except 198.51.100.0/24",
        ] {
            let (m, a) = parse_rule(line).unwrap();
            set.upsert(m, a).unwrap();
        }
        let lines: Vec<String> = set
            .rules()
            .map(|r| rule_line(&r.matches, r.action))
            .collect();
        assert_eq!(lines[0], "deny 192.0.2.0/24");
        assert_eq!(lines[2], "port deny 1000-2000/udp");
        assert_eq!(lines[3], "except 22/tcp");
    }

    #[test]
    fn state_lines_round_trip() {
        let mut s = Services::default();
        for l in [
            "service [2001:db8::10]:80/tcp nat affinity=source tcp_idle=600",
            "backend [2001:db8::10]:80/tcp [2001:db8::11]:8080 weight=2",
            "service 192.0.2.10:*/udp dsr echo=off udp_idle=5",
            "backend 192.0.2.10:*/udp 203.0.113.11 weight=1",
        ] {
            parse_service_line(&mut s, l).unwrap();
        }
        let mut back = Services::default();
        for svc in s.by_vip.values() {
            for l in service_lines(svc) {
                parse_service_line(&mut back, &l).unwrap();
            }
        }
        assert_eq!(back, s);
    }
}
