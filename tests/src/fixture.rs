//! The loaded program with a firewall on top, without attaching anywhere: kernel packet
//! tests and the benchmark drive it through BPF_PROG_TEST_RUN.

use std::collections::HashMap;

use std::net::IpAddr;

use crate::packet::Pkt;

use lb_common::{Counter, Reason, Verdict};
use xlb::{
    api::Request,
    daemon::Edge,
    kernel::Datapath,
    model::{rules::Action, services::Mode, synflood::SynMode},
    store::lines::parse_rule,
};

pub struct Fixture {
    pub edge: Edge,
}

pub type Counters = HashMap<(Reason, Verdict), Counter>;

impl Fixture {
    /// Loads a fresh copy of the program (its own maps).
    pub fn new() -> Self {
        let dp = Datapath::load(None)
            .unwrap_or_else(|e| panic!("loading the XDP program (are you root?): {e:?}"));
        Fixture {
            edge: Edge::new(dp, Default::default(), None, std::time::Duration::ZERO)
                .expect("empty state"),
        }
    }

    /// Sends a control request as the CLI would; panics on an error reply.
    pub fn req(&mut self, r: Request) -> serde_json::Value {
        let resp = self.edge.handle(r);
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
                    let (m, action) = parse_rule(line).unwrap_or_else(|e| panic!("{line}: {e}"));
                    let target = vec![m.to_string()];
                    match m {
                        xlb::model::rules::Match::Prefix(_) => Request::Prefix {
                            action,
                            targets: target,
                        },
                        xlb::model::rules::Match::Port(_) => Request::Port {
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
        self.edge.dp.test_run(frame).expect("BPF_PROG_TEST_RUN")
    }

    pub fn counters(&self) -> Counters {
        self.edge
            .dp
            .counters()
            .expect("reading counters")
            .into_iter()
            .map(|(r, v, c)| ((r, v), c))
            .collect()
    }

    /// Sum of every rule's hit counter.
    pub fn total_hits(&self) -> u64 {
        self.edge
            .rules
            .rules()
            .map(|r| self.edge.dp.fw.rule_hits(r.id).unwrap())
            .sum()
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// The client's MAC in `LbNet`, and the backends' (203.0.113.11.. / 2001:db8:b::11..).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc2];
pub const BACKEND_MACS: [[u8; 6]; 4] = [
    [0x02, 0, 0, 0, 0, 0x11],
    [0x02, 0, 0, 0, 0, 0x12],
    [0x02, 0, 0, 0, 0, 0x13],
    [0x02, 0, 0, 0, 0, 0x14],
];

/// A private namespace for balancer packet tests and benchmarks: one veth (v0) on the
/// client (192.0.2.0/24, 2001:db8:c::/64) and backend (203.0.113.0/24, 2001:db8:b::/64)
/// networks, static neighbours for the client and four backends, forwarding on. The
/// program's FIB lookups during BPF_PROG_TEST_RUN see this namespace.
pub struct LbNet {
    pub ns: crate::netns::Netns,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

unsafe extern "C" {
    #[link_name = "if_nametoindex"]
    fn c_if_nametoindex(name: *const std::ffi::c_char) -> u32;
}

impl LbNet {
    /// Builds the namespace and moves the calling thread into it.
    pub fn enter() -> anyhow::Result<Self> {
        use anyhow::Context;
        let ns = crate::netns::Netns::new("lbnet")?;
        ns.run(&[
            "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
        ])?;
        for dev in ["v0", "v1"] {
            ns.run(&["ip", "link", "set", dev, "up"])?;
        }
        for a in ["192.0.2.1/24", "203.0.113.1/24"] {
            ns.run(&["ip", "addr", "add", a, "dev", "v0"])?;
        }
        for a in ["2001:db8:c::1/64", "2001:db8:b::1/64"] {
            ns.run(&["ip", "addr", "add", a, "dev", "v0", "nodad"])?;
        }
        let mac_str = |m: &[u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let mut neighbours = vec![
            ("192.0.2.2".to_string(), CLIENT_MAC),
            ("2001:db8:c::2".to_string(), CLIENT_MAC),
        ];
        for (i, mac) in BACKEND_MACS.iter().enumerate() {
            neighbours.push((format!("203.0.113.{}", 11 + i), *mac));
            neighbours.push((format!("2001:db8:b::{}", 11 + i), *mac));
        }
        for (ip, mac) in &neighbours {
            ns.run(&[
                "ip",
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac_str(mac),
                "dev",
                "v0",
                "nud",
                "permanent",
            ])?;
        }
        for k in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.conf.v0.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            ns.run(&["sysctl", "-qw", k])?;
        }
        let text = ns.run(&["cat", "/sys/class/net/v0/address"])?;
        let mut mac = [0u8; 6];
        for (i, p) in text.trim().split(':').enumerate().take(6) {
            mac[i] = u8::from_str_radix(p, 16).context("v0's MAC")?;
        }
        crate::netns::enter(&ns.path())?;
        // This thread's /sys still shows the old namespace: ask the kernel by name.
        let name = std::ffi::CString::new("v0")?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { c_if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "v0 not found after entering {}", ns.name);
        Ok(LbNet { ns, ifindex, mac })
    }
}

pub const XDP_TX: u32 = 3;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A loaded balancer in a private test network (`LbNet`), with helpers that add
/// services the way the CLI does and run frames as if received on v0.
pub struct Lb {
    pub fx: Fixture,
    pub ifindex: u32,
    pub mac: [u8; 6],
    _ns: crate::netns::Netns,
}

/// Loads xlb inside a fresh test network (see `fixture::LbNet`), this thread in it.
pub fn setup() -> Lb {
    let net = LbNet::enter().unwrap();
    Lb {
        fx: Fixture::new(),
        ifindex: net.ifindex,
        mac: net.mac,
        _ns: net.ns,
    }
}

impl Lb {
    pub fn vip(&mut self, vip: &str, mode: Mode, affinity: bool) {
        self.fx.req(Request::VipAdd {
            vip: vip.into(),
            mode,
            affinity_source: affinity,
            echo: true,
            tcp_idle: None,
            udp_idle: None,
            snat: None,
        });
        // These tests make flows faster than SYN-flood protection's default threshold:
        // off unless a test sets it (`syn`).
        self.syn(vip, SynMode::Off, None);
    }
    /// Sets a service's SYN-flood protection as `xlb vip set --syn-protection` does.
    pub fn syn(&mut self, vip: &str, mode: SynMode, threshold: Option<u32>) {
        if vip.ends_with("/udp") {
            return;
        }
        self.fx.req(Request::VipSet {
            vip: vip.into(),
            mode: None,
            affinity_source: None,
            echo: None,
            tcp_idle: None,
            udp_idle: None,
            snat: None,
            syn_protection: Some(mode),
            syn_threshold: threshold,
            all_down: None,
        });
    }
    /// A fullnat service whose backends see `snat` as the source.
    pub fn fullnat(&mut self, vip: &str, snat: &str) {
        self.fx.req(Request::VipAdd {
            vip: vip.into(),
            mode: Mode::Fullnat,
            affinity_source: false,
            echo: true,
            tcp_idle: None,
            udp_idle: None,
            snat: Some(snat.into()),
        });
        self.syn(vip, SynMode::Off, None);
    }
    pub fn backend(&mut self, vip: &str, b: &str, weight: u32) {
        self.fx.req(Request::BackendAdd {
            vip: vip.into(),
            backend: b.into(),
            weight,
            backup: false,
        });
    }
    pub fn del_backend(&mut self, vip: &str, b: &str) {
        self.fx.req(Request::BackendDel {
            vip: vip.into(),
            backend: b.into(),
        });
    }
    /// A client frame addressed to our MAC.
    pub fn frame(&self, p: Pkt) -> Vec<u8> {
        let mut f = p.build();
        f[0..6].copy_from_slice(&self.mac);
        f[6..12].copy_from_slice(&CLIENT_MAC);
        f
    }
    pub fn run(&self, f: &[u8]) -> (u32, Vec<u8>) {
        self.fx.edge.dp.test_run_on(f, self.ifindex).unwrap()
    }
}

pub fn dst_ip(f: &[u8]) -> IpAddr {
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => IpAddr::from(<[u8; 4]>::try_from(&f[30..34]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
    }
}

pub fn src_ip(f: &[u8]) -> IpAddr {
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => IpAddr::from(<[u8; 4]>::try_from(&f[26..30]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&f[22..38]).unwrap()),
    }
}

pub fn l4(f: &[u8]) -> usize {
    if u16::from_be_bytes([f[12], f[13]]) == 0x0800 {
        14 + (f[14] & 0xf) as usize * 4
    } else {
        54
    }
}

pub fn ports(f: &[u8]) -> (u16, u16) {
    let o = l4(f);
    (
        u16::from_be_bytes([f[o], f[o + 1]]),
        u16::from_be_bytes([f[o + 2], f[o + 3]]),
    )
}

pub fn backend_index(f: &[u8]) -> usize {
    BACKEND_MACS
        .iter()
        .position(|m| f[0..6] == *m)
        .expect("a backend's MAC")
}
