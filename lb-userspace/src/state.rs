//! The stored desired state: a small text file, one rule a line, written atomically
//! (temporary file, fsync, rename, fsync of the directory) so a crash leaves the old or
//! the new file, never half of one.
//!
//! ```text
//! # xlb state
//! default allow
//! malformed deny
//! rule 1 deny 192.0.2.0/24
//! rule 2 except 22/tcp
//! service 198.51.100.10:80/tcp nat
//! backend 198.51.100.10:80/tcp 203.0.113.11:8080 weight=1
//! backend 198.51.100.10:80/tcp 203.0.113.12:8080 weight=1
//! backup 198.51.100.10:80/tcp 203.0.113.12:8080
//! drained 198.51.100.10:80/tcp 203.0.113.11:8080
//! base deny 192.0.2.0/24
//! ```
//!
//! `base` lines are the part of the state the configuration file manages, as the last
//! file applied wrote it (its projection: policies, rules, services, backends): the next
//! `xlb run --config` or reload applies diff(base, new file), written in the same file so
//! the state and its base always change together.

use std::{fmt::Write as _, io::Write, path::Path};

use anyhow::{Context, Result, bail};

use crate::{
    config::Projection,
    rules::{Rule, RuleSet},
    services::{BackendAddr, Services, Vip},
    weights::Flags,
};

/// Everything the daemon stores: firewall rules and services, and the configuration
/// file's projection they were last built from.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub rules: RuleSet,
    pub services: Services,
    /// Backends that serve only while their service's primaries are out.
    pub backups: Flags,
    /// Backends the operator drained (`xlb backend drain`).
    pub drained: Flags,
    pub base: Projection,
}

/// The stored state, borrowed.
pub struct State<'a> {
    pub rules: &'a RuleSet,
    pub services: &'a Services,
    pub backups: &'a Flags,
    pub drained: &'a Flags,
    pub base: &'a Projection,
}

impl Stored {
    pub fn as_state(&self) -> State<'_> {
        State {
            rules: &self.rules,
            services: &self.services,
            backups: &self.backups,
            drained: &self.drained,
            base: &self.base,
        }
    }
}

pub fn render(st: &State) -> String {
    let (rules, services, base) = (st.rules, st.services, st.base);
    let mut s = render_rules(rules);
    for svc in services.by_vip.values() {
        for line in svc.lines() {
            s.push_str(&line);
            s.push('\n');
        }
    }
    for (word, flags) in [("backup", st.backups), ("drained", st.drained)] {
        for (vip, b) in flags {
            let _ = writeln!(s, "{word} {vip} {b}");
        }
    }
    if *base != Projection::default() {
        let _ = writeln!(s, "base default {}", base.default_policy);
        let _ = writeln!(s, "base malformed {}", base.malformed_policy);
        for (m, a) in &base.rules {
            let rule = Rule {
                id: 0,
                matches: *m,
                action: *a,
            };
            let _ = writeln!(s, "base {}", rule.line());
        }
        for svc in base.services.by_vip.values() {
            for line in svc.lines() {
                let _ = writeln!(s, "base {line}");
            }
        }
        for (vip, b) in &base.backups {
            let _ = writeln!(s, "base backup {vip} {b}");
        }
    }
    s
}

fn render_rules(rules: &RuleSet) -> String {
    let mut s = String::with_capacity(32 * rules.len() + 64);
    s.push_str("# xlb state: written by `xlb run`; change it with the xlb CLI\n");
    let _ = writeln!(s, "default {}", rules.default_policy);
    let _ = writeln!(s, "malformed {}", rules.malformed_policy);
    for r in rules.rules() {
        let _ = write!(s, "rule {} ", r.id);
        let _ = r.write_line(&mut s);
        s.push('\n');
    }
    s
}

pub fn parse(text: &str) -> Result<Stored> {
    let mut rules = RuleSet::default();
    let mut services = Services::default();
    let mut base = Projection::default();
    let (mut backups, mut drained) = (Flags::new(), Flags::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("line {}: {e}", n + 1);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "default" => rules.default_policy = rest.trim().parse().map_err(|e| fail(&e))?,
            "malformed" => rules.malformed_policy = rest.trim().parse().map_err(|e| fail(&e))?,
            "rule" => {
                let (id, rule) = rest
                    .split_once(' ')
                    .ok_or_else(|| fail(&"a rule needs an id"))?;
                let id: u32 = id
                    .parse()
                    .map_err(|_| fail(&format!("'{id}' is not a rule id")))?;
                if id == 0 || id >= lb_common::MAX_RULES {
                    return Err(fail(&format!("rule id {id} is out of range")));
                }
                let (matches, action) = Rule::parse_line(rule).map_err(|e| fail(&e))?;
                if rules.get(&matches).is_some() {
                    return Err(fail(&format!("duplicate rule '{rule}'")));
                }
                rules.insert_with_id(Rule {
                    id,
                    matches,
                    action,
                });
            }
            "service" | "check" | "backend" => services.parse_line(line).map_err(|e| fail(&e))?,
            "backup" => {
                backups.insert(parse_flag(&services, rest.trim()).map_err(|e| fail(&e))?);
            }
            "drained" => {
                drained.insert(parse_flag(&services, rest.trim()).map_err(|e| fail(&e))?);
            }
            "base" => parse_base(&mut base, rest.trim()).map_err(|e| fail(&e))?,
            _ => return Err(fail(&format!("unknown keyword '{word}'"))),
        }
    }
    rules.compact_free();
    Ok(Stored {
        rules,
        services,
        backups,
        drained,
        base,
    })
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
        "service" | "check" | "backend" => base.services.parse_line(line)?,
        "backup" => {
            let flag = parse_flag(&base.services, rest.trim())?;
            base.backups.insert(flag);
        }
        _ => {
            let (m, a) = Rule::parse_line(line)?;
            if base.rules.insert(m, a).is_some() {
                bail!("duplicate base rule '{line}'");
            }
        }
    }
    Ok(())
}

/// Reads the state file; a missing file is an empty state.
pub fn load(path: &Path) -> Result<Stored> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).with_context(|| format!("state file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
        Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
    }
}

pub fn save(path: &Path, st: &State) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let Some(name) = path.file_name() else {
        bail!("state path {} has no file name", path.display());
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(render(st).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing state file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, Match};

    #[test]
    fn state_round_trips_with_ids() {
        let mut rules = RuleSet::default();
        rules.default_policy = Action::Deny;
        for line in ["deny 192.0.2.0/24", "except 22/tcp", "port allow 80/tcp"] {
            let (m, a) = Rule::parse_line(line).unwrap();
            rules.upsert(m, a).unwrap();
        }
        rules
            .remove(&Match::ExceptPort("22/tcp".parse().unwrap()))
            .unwrap();
        let mut services = Services::default();
        services
            .parse_line("service 192.0.2.10:80/tcp nat")
            .unwrap();
        services
            .parse_line("backend 192.0.2.10:80/tcp 203.0.113.11:8080 weight=3")
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
        let stored = Stored {
            rules,
            services,
            backups: [flag].into(),
            drained: [flag].into(),
            base,
        };
        let text = render(&stored.as_state());
        assert!(text.contains("\nbase port allow 80/tcp\n"), "{text}");
        assert!(
            text.contains("\nbackup 192.0.2.10:80/tcp 203.0.113.11:8080\n"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(render(&back.as_state()), text);
        assert_eq!(back.base, stored.base);
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
        services
            .parse_line("service 192.0.2.10:80/tcp nat")
            .unwrap();
        services.parse_line("service 192.0.2.11:*/udp nat").unwrap();
        let vip: crate::services::Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let words = [
            ("kind", "http"),
            ("path", "/healthz"),
            ("interval", "500ms"),
            ("fall", "2"),
        ];
        let check = crate::config::HealthCheck::from_words(words, "check").unwrap();
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
        let all: crate::services::Vip = "192.0.2.11:*/udp".parse().unwrap();
        let e = services.set_check(&all, Some(check.clone())).unwrap_err();
        assert!(e.to_string().contains("give the check a port"), "{e}");
        let stored = Stored {
            services,
            ..Default::default()
        };
        let text = render(&stored.as_state());
        assert!(
            text.contains("\ncheck 192.0.2.10:80/tcp kind=http interval=500ms timeout=500ms rise=2 fall=2 path=/healthz expect_status=200\n"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(back.services.by_vip[&vip].check, Some(check));
        assert_eq!(render(&back.as_state()), text);
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

    #[test]
    fn broken_state_names_the_line() {
        let e = parse("default allow\nrule 1 deny 192.0.2.1/24\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
        assert!(parse("bogus\n").is_err());
        assert!(parse("rule 0 deny 192.0.2.0/24\n").is_err());
        let e = parse("backup 192.0.2.10:80/tcp 203.0.113.11:8080\n").unwrap_err();
        assert!(e.to_string().contains("not in the state"), "{e}");
    }

    #[test]
    fn save_is_atomic_and_loadable() {
        let dir = std::env::temp_dir().join(format!("xlb-state-test-{}", std::process::id()));
        let path = dir.join("state");
        let mut rules = RuleSet::default();
        let (m, a) = Rule::parse_line("deny 2001:db8::/32").unwrap();
        rules.upsert(m, a).unwrap();
        let stored = Stored {
            rules,
            ..Default::default()
        };
        save(&path, &stored.as_state()).unwrap();
        assert_eq!(load(&path).unwrap().rules.len(), 1);
        assert!(!dir.join(".state.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
