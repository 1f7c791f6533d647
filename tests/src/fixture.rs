//! The loaded program with a firewall on top, without attaching anywhere: kernel packet
//! tests and the benchmark drive it through BPF_PROG_TEST_RUN.

use std::collections::HashMap;

use lb_common::{Counter, Reason, Verdict};
use xlb::{
    control::Request,
    daemon::Edge,
    datapath::Datapath,
    rules::{Action, Rule},
};

pub struct Fixture {
    pub fw: Edge,
}

pub type Counters = HashMap<(Reason, Verdict), Counter>;

impl Fixture {
    /// Loads a fresh copy of the program (its own maps).
    pub fn new() -> Self {
        let dp = Datapath::load(None).expect("loading the XDP program (are you root?)");
        Fixture {
            fw: Edge::new(dp, Default::default(), None).expect("empty state"),
        }
    }

    /// Sends a control request as the CLI would; panics on an error reply.
    pub fn req(&mut self, r: Request) -> serde_json::Value {
        let resp = self.fw.handle(r);
        assert!(resp.ok, "request refused: {:?}", resp.error);
        resp.data
    }

    /// Applies rule lines as written in the state file ("deny 192.0.2.0/24",
    /// "port deny 80/tcp", "except 22/tcp") and "default deny" / "malformed allow".
    pub fn rules(&mut self, lines: &[&str]) {
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            let req = match words.as_slice() {
                ["default", a] => Request::Default {
                    action: a.parse().unwrap(),
                },
                ["malformed", a] => Request::Malformed {
                    action: a.parse().unwrap(),
                },
                _ => {
                    let (m, action) =
                        Rule::parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
                    let target = vec![m.to_string()];
                    match m {
                        xlb::rules::Match::Prefix(_) => Request::Prefix {
                            action,
                            targets: target,
                        },
                        xlb::rules::Match::Port(_) => Request::Port {
                            action,
                            targets: target,
                        },
                        _ => Request::Except { targets: target },
                    }
                }
            };
            self.req(req);
        }
    }

    /// Back to no rules, default allow, malformed deny.
    pub fn reset(&mut self) {
        self.req(Request::Flush);
        self.req(Request::Default {
            action: Action::Allow,
        });
        self.req(Request::Malformed {
            action: Action::Deny,
        });
    }

    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        self.fw.dp.test_run(frame).expect("BPF_PROG_TEST_RUN")
    }

    pub fn counters(&self) -> Counters {
        self.fw
            .dp
            .counters()
            .expect("reading counters")
            .into_iter()
            .map(|(r, v, c)| ((r, v), c))
            .collect()
    }

    /// Sum of every rule's hit counter.
    pub fn total_hits(&self) -> u64 {
        self.fw
            .rules
            .rules()
            .map(|r| self.fw.dp.rule_hits(r.id).unwrap())
            .sum()
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}
