//! The reference topology in namespaces: a client and backends on one switch with the
//! xlb edge (one-armed: every frame crosses the edge's one interface).
//!
//! ```text
//!   client 192.0.2.2, 2001:db8:c::2 ──┐
//!   attacker 192.0.2.166 ─────────────┤
//!                                     ├── switch (bridge) ── edge: xlb on x0
//!   web1..webN 203.0.113.11.., 2001:db8:b::11.. ┘   192.0.2.1, 203.0.113.1,
//!                                                    2001:db8:c::1, 2001:db8:b::1
//! ```
//! Service addresses live in 198.51.100.0/24 and 2001:db8:f::/48, routed via the edge.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, NsServer, TestDir, in_ns, veth};

pub struct Topology {
    // Drop order: servers, the peer program, namespaces, then the directory.
    pub servers: Vec<NsServer>,
    peer_xdp: Option<aya::Ebpf>,
    pub client: Netns,
    /// A host on the client side that the firewall is meant to stop.
    pub attacker: Netns,
    pub edge: Netns,
    pub backends: Vec<Netns>,
    pub switch: Netns,
    pub dir: TestDir,
}

/// How the backends reach clients, per forwarding mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backends<'a> {
    /// nat: the default route points at the edge, which rewrites the replies.
    ViaEdge,
    /// dsr: the backends hold these service addresses on their loopback and answer
    /// clients directly.
    Direct(&'a [&'a str]),
    /// fullnat: no route beyond their own subnet (they only ever talk to the edge).
    LocalOnly,
}

/// Backend i (0-based) addresses.
pub fn backend_v4(i: usize) -> String {
    format!("203.0.113.{}", 11 + i)
}
pub fn backend_v6(i: usize) -> String {
    format!("2001:db8:b::{}", 11 + i)
}

/// Attaches `prog` of the bench object (`bench_floor` passes all, `bench_drop` drops
/// all) to `iface` in `ns`, in native mode; detached when the object drops.
pub fn attach_bench_xdp(ns: &Netns, iface: &str, prog: &str) -> Result<aya::Ebpf> {
    let (iface, name) = (iface.to_string(), prog.to_string());
    in_ns(ns, move || -> Result<aya::Ebpf> {
        let mut obj =
            aya::Ebpf::load(xlb::kernel::object::BENCH).context("loading the bench object")?;
        let prog: &mut aya::programs::Xdp = obj
            .program_mut(&name)
            .with_context(|| format!("no program {name} in the bench object"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        prog.attach(&iface, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        Ok(obj)
    })?
}

impl Topology {
    /// `n` backends, each with an HTTP server on `port` answering "web<i+1>", routed as
    /// `routing` says.
    pub fn build(tag: &str, n: usize, port: u16, routing: Backends) -> Result<Self> {
        let dir = TestDir::new(tag)?;
        let switch = Netns::new("sw")?;
        switch.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        switch.run(&["ip", "link", "set", "br0", "up"])?;
        // A switch, not a firewall: with br_netfilter built in, a new namespace's bridge
        // hands every frame to iptables, ip6tables and arptables, which nothing here
        // uses and which was most of a frame's cost across the bridge (perf, bench
        // --peers).
        for family in ["iptables", "ip6tables", "arptables"] {
            let key = format!("net.bridge.bridge-nf-call-{family}=0");
            switch.run(&["sysctl", "-qw", &key])?;
        }
        let client = Netns::new("client")?;
        veth(
            &client,
            "c0",
            &["192.0.2.2/24", "2001:db8:c::2/64"],
            &switch,
            "sw-c",
            &[],
        )?;
        // Veths offload TCP/UDP checksums to nobody: a frame leaves with only the
        // pseudo-header sum, which XDP on the edge cannot tell from a full one. Real
        // NICs fill them in; here the senders must.
        client.run(&["ethtool", "-K", "c0", "tx", "off"])?;
        client.run(&["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"])?;
        client.run(&[
            "ip",
            "-6",
            "route",
            "add",
            "2001:db8:f::/48",
            "via",
            "2001:db8:c::1",
        ])?;
        let attacker = Netns::new("attacker")?;
        veth(&attacker, "a0", &["192.0.2.166/24"], &switch, "sw-a", &[])?;
        attacker.run(&["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"])?;
        let edge = Netns::new("edge")?;
        veth(
            &edge,
            "x0",
            &[
                "192.0.2.1/24",
                "203.0.113.1/24",
                "2001:db8:c::1/64",
                "2001:db8:b::1/64",
            ],
            &switch,
            "sw-x",
            &[],
        )?;
        for k in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.conf.x0.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            edge.run(&["sysctl", "-qw", k])?;
        }
        // Frames xlb sends back out (XDP_TX) reach the veth peer as XDP frames, which it
        // delivers only if it runs an XDP program itself: give it one that passes all.
        let peer_xdp = attach_bench_xdp(&switch, "sw-x", "bench_floor")?;
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for i in 0..n {
            let b = Netns::new(&format!("web{}", i + 1))?;
            let v4 = format!("{}/24", backend_v4(i));
            let v6 = format!("{}/64", backend_v6(i));
            veth(&b, "w0", &[&v4, &v6], &switch, &format!("sw-b{i}"), &[])?;
            b.run(&["ethtool", "-K", "w0", "tx", "off"])?;
            if routing == Backends::ViaEdge {
                b.run(&["ip", "route", "add", "default", "via", "203.0.113.1"])?;
                b.run(&[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    "2001:db8:b::1",
                ])?;
            }
            if let Backends::Direct(vips) = routing {
                for vip in vips {
                    let plen = if vip.contains(':') { "128" } else { "32" };
                    b.run(&["ip", "addr", "add", &format!("{vip}/{plen}"), "dev", "lo"])?;
                }
                // Answer clients directly, and never answer ARP for the service address.
                b.run(&["ip", "route", "add", "192.0.2.0/24", "dev", "w0"])?;
                b.run(&["ip", "-6", "route", "add", "2001:db8:c::/64", "dev", "w0"])?;
                b.run(&["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])?;
                b.run(&["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"])?;
            }
            servers.push(NsServer::http(
                &b,
                &format!("[::]:{port}"),
                &format!("web{}", i + 1),
            )?);
            backends.push(b);
        }
        for port in ["sw-c", "sw-a", "sw-x"]
            .iter()
            .map(|s| s.to_string())
            .chain((0..n).map(|i| format!("sw-b{i}")))
        {
            switch.run(&["ip", "link", "set", &port, "master", "br0"])?;
        }
        Ok(Topology {
            servers,
            peer_xdp: Some(peer_xdp),
            client,
            attacker,
            edge,
            backends,
            switch,
            dir,
        })
    }

    /// One more server host on the backend network (e.g. a database), routed through
    /// the edge like a nat backend: `addr4` in 203.0.113.0/24, `addr6` in
    /// 2001:db8:b::/64. The caller owns it (drop it before the topology).
    pub fn add_host(&self, tag: &str, addr4: &str, addr6: &str) -> Result<Netns> {
        let h = Netns::new(tag)?;
        let port = format!("sw-{tag}");
        veth(
            &h,
            "w0",
            &[&format!("{addr4}/24"), &format!("{addr6}/64")],
            &self.switch,
            &port,
            &[],
        )?;
        h.run(&["ethtool", "-K", "w0", "tx", "off"])?;
        h.run(&["ip", "route", "add", "default", "via", "203.0.113.1"])?;
        h.run(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:b::1",
        ])?;
        self.switch
            .run(&["ip", "link", "set", &port, "master", "br0"])?;
        Ok(h)
    }

    /// Replaces the XDP program on the switch port facing the edge (`sw-x`, which must
    /// run one, see `build`) with `prog` of the bench object; returns the object, whose
    /// maps the caller may read (e.g. `bench_sink`'s counters). It stays attached until
    /// the topology drops.
    pub fn switch_xdp(&mut self, prog: &str) -> Result<&mut aya::Ebpf> {
        // Detach the old one first: a second program on the same port is refused.
        self.peer_xdp = None;
        Ok(self
            .peer_xdp
            .insert(attach_bench_xdp(&self.switch, "sw-x", prog)?))
    }

    /// The program `switch_xdp` attached last (its maps to read), if any.
    pub fn switch_xdp_obj(&self) -> Option<&aya::Ebpf> {
        self.peer_xdp.as_ref()
    }

    /// Waits until the edge has a resolved neighbour entry for every address given
    /// (xlb's FIB lookups need them; adding a backend makes the kernel resolve it).
    pub fn wait_neighbours(&self, addrs: &[String]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table = self.edge.run(&["ip", "neigh", "show", "dev", "x0"])?;
            let ready = addrs.iter().all(|a| {
                table.lines().any(|l| {
                    l.split_whitespace().next() == Some(a.as_str())
                        && l.contains("lladdr")
                        && !l.contains("FAILED")
                        && !l.contains("INCOMPLETE")
                })
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the edge did not resolve {addrs:?}: {table}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
