//! `[firewall]`: the policies, the prefix lists, `[firewall.ports]` and `except`.

use std::{collections::HashMap, ops::Range};

use super::{
    raw::RawFirewall,
    report::{Report, line_col},
    values::action,
};
use crate::model::{
    desired::Projection,
    rules::{self, Action, Match, PortSpec, Prefix, RuleError, TIE_WHY, Target},
};

/// Validates `[firewall]` into the projection's policies and rules.
pub(crate) fn section(r: &mut Report, fw: &RawFirewall, projection: &mut Projection) {
    projection.default_policy = action(r, &fw.default, "firewall.default", Action::Allow);
    projection.malformed_policy = action(r, &fw.malformed, "firewall.malformed", Action::Deny);
    let mut rules = Rules {
        seen: HashMap::new(),
        ports: Vec::new(),
        projection,
    };
    for (list, a, field) in [
        (&fw.deny, Action::Deny, "firewall.deny"),
        (&fw.allow, Action::Allow, "firewall.allow"),
    ] {
        for v in list {
            match v.get_ref().parse::<Prefix>() {
                Ok(p) => rules.add(r, Match::Prefix(p), a, v.span(), field),
                Err(RuleError::PortNotPrefix { input }) => r.at(
                    v.span(),
                    field,
                    format!("'{input}' is a port spec: put port rules in [firewall.ports]"),
                ),
                Err(e) => r.at(v.span(), field, e.to_string()),
            }
        }
    }
    if let Some(ports) = &fw.ports {
        for (list, a, field) in [
            (&ports.deny, Action::Deny, "firewall.ports.deny"),
            (&ports.allow, Action::Allow, "firewall.ports.allow"),
        ] {
            for v in list {
                match v.get_ref().parse::<PortSpec>() {
                    Ok(p) => rules.add(r, Match::Port(p), a, v.span(), field),
                    Err(RuleError::PrefixNotPort { input }) => r.at(
                        v.span(),
                        field,
                        format!(
                            "'{input}' is a prefix: put prefix rules in [firewall] deny or allow"
                        ),
                    ),
                    Err(e) => r.at(v.span(), field, e.to_string()),
                }
            }
        }
    }
    for v in &fw.except {
        let field = "firewall.except";
        match rules::parse_target(v.get_ref()) {
            Ok(Target::Prefix(p)) => {
                rules.add(r, Match::ExceptPrefix(p), Action::Allow, v.span(), field)
            }
            Ok(Target::Port(p)) => {
                rules.add(r, Match::ExceptPort(p), Action::Allow, v.span(), field)
            }
            Err(e) => r.at(v.span(), field, e.to_string()),
        }
    }
}

/// The rules of the section so far, each listed once, no two port ranges of one kind
/// tied (as the rule set refuses them).
struct Rules<'a> {
    /// Where each match was first written.
    seen: HashMap<Match, usize>,
    /// The port ranges (except or not) with where they were written.
    ports: Vec<(bool, PortSpec, usize)>,
    projection: &'a mut Projection,
}

impl Rules<'_> {
    fn add(&mut self, r: &mut Report, m: Match, a: Action, span: Range<usize>, field: &str) {
        if let Some(&prev) = self.seen.get(&m) {
            r.at(
                span,
                field,
                format!(
                    "{} {m} is listed twice (also at line {}): list each once",
                    m.kind(),
                    line_col(r.src, prev).0
                ),
            );
            return;
        }
        let port = match m {
            Match::Port(p) => Some((false, p)),
            Match::ExceptPort(p) => Some((true, p)),
            _ => None,
        };
        if let Some((except, spec)) = port {
            if let Some(&(_, other, at)) = self
                .ports
                .iter()
                .find(|(e, o, _)| *e == except && spec.ties_with(o))
            {
                r.at(
                    span,
                    field,
                    format!(
                        "{} {spec} overlaps {other} (line {}) and is as wide ({} ports): {TIE_WHY}",
                        m.kind(),
                        line_col(r.src, at).0,
                        spec.width()
                    ),
                );
                return;
            }
            self.ports.push((except, spec, span.start));
        }
        self.seen.insert(m, span.start);
        self.projection.rules.insert(m, a);
    }
}
