//! Flow records end to end: `xlb run` with `[flows]` sends IPFIX to a real collector,
//! nfdump's `nfcapd` in the edge namespace, and `nfdump` reads back exactly the flows
//! the test made: both directions of each nat flow, IPv4 and IPv6, with their packets
//! and bytes, the backend as the post-NAT destination, and a sampled drop. The same
//! records go over OTLP (`[export]`'s `flows` stream) to the harness's receiver.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use xlb_tests::{
    netns::{Daemon, Netns, NsServer, in_ns, wait_until},
    otlp::{COLLECTOR, Collector},
    topology::{Backends, Topology, backend_v4, backend_v6},
};

const VIP: &str = "198.51.100.10:53";
const VIP6: &str = "[2001:db8:f::10]:53";
const COLLECTOR_PORT: &str = "4739";
const FLOWS: u16 = 3;
const PER_FLOW: u64 = 4;
const PAYLOAD: usize = 100;
/// The backends answer each datagram with "webN".
const ANSWER: usize = 4;
/// IPv4 and UDP headers; IPv6 and UDP.
const HEADERS: u64 = 28;
const HEADERS6: u64 = 48;

/// nfcapd in the edge namespace, writing into `dir`; stopped (which writes its file)
/// on `stop` or drop.
struct Nfcapd(Option<Child>);

impl Nfcapd {
    fn start(edge: &Netns, dir: &Path) -> Result<Self> {
        let child = edge
            .cmd(&[
                "nfcapd",
                "-w",
                dir.to_str().unwrap(),
                "-b",
                "127.0.0.1",
                "-p",
                COLLECTOR_PORT,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nfcapd")?;
        Ok(Nfcapd(Some(child)))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The client's end of flow `i` (IPv4 flows first, then IPv6).
fn client_end(i: u16) -> SocketAddr {
    if i < FLOWS {
        format!("192.0.2.2:{}", 43000 + i)
    } else {
        format!("[2001:db8:c::2]:{}", 43000 + i)
    }
    .parse()
    .unwrap()
}

/// `PER_FLOW` datagrams on each of `FLOWS` sockets from the client to each service,
/// each answered.
fn client_traffic() -> Result<()> {
    for i in 0..2 * FLOWS {
        let vip: SocketAddr = if i < FLOWS { VIP } else { VIP6 }.parse()?;
        let s = UdpSocket::bind(client_end(i))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.connect(vip)?;
        for _ in 0..PER_FLOW {
            s.send(&[b'x'; PAYLOAD])?;
            let mut buf = [0u8; 64];
            s.recv(&mut buf).context("no answer from the service")?;
        }
    }
    Ok(())
}

fn scrape(edge: &Netns) -> String {
    edge.run(&[
        "curl",
        "-sf",
        "--max-time",
        "5",
        "http://127.0.0.1:9100/metrics",
    ])
    .unwrap_or_default()
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every record in `dir`, as nfdump's JSON has it (field -> value).
fn read_back(dir: &Path) -> Result<Vec<BTreeMap<String, String>>> {
    let out = Command::new("nfdump")
        .args(["-R", dir.to_str().unwrap(), "-o", "json"])
        .output()
        .context("running nfdump")?;
    anyhow::ensure!(
        out.status.success(),
        "nfdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("nfdump's JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
    let records = v.as_array().context("a JSON array")?;
    Ok(records
        .iter()
        .map(|r| {
            r.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        })
        .collect())
}

#[test]
fn ipfix_flow_records_reach_nfcapd_exactly() {
    let t = Topology::build("flw", 2, 8080, Backends::ViaEdge).unwrap();
    // The IPv6 servers on their own port: a dual-stack [::] socket would take 5300's
    // IPv4 side too.
    let _udp: Vec<NsServer> = t
        .backends
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let answer = format!("web{}", i + 1);
            [
                NsServer::udp(b, "0.0.0.0:5300", &answer).unwrap(),
                NsServer::udp(b, "[::]:5301", &answer).unwrap(),
            ]
        })
        .collect();
    let captures = t.dir.path.join("nfcapd");
    std::fs::create_dir_all(&captures).unwrap();
    let mut nfcapd = Nfcapd::start(&t.edge, &captures).unwrap();
    let otlp = Collector::start(&t.edge);
    let file = t.dir.path.join("xlb.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[interface]]
name = "x0"

[metrics]
listen = "127.0.0.1:9100"

[firewall]
deny = ["192.0.2.166/32"]

[[service]]
address = "{VIP}/udp"
mode = "nat"
udp_idle = "1s"
[[service.backend]]
address = "{}:5300"
[[service.backend]]
address = "{}:5300"

[[service]]
address = "{VIP6}/udp"
mode = "nat"
udp_idle = "1s"
[[service.backend]]
address = "[{}]:5301"
[[service.backend]]
address = "[{}]:5301"

[flows]
ipfix = "127.0.0.1:{COLLECTOR_PORT}"
scan = "200ms"

[export]
otlp = "http://{COLLECTOR}/v1/logs"
streams = ["flows"]
interval = "50ms"
"#,
            backend_v4(0),
            backend_v4(1),
            backend_v6(0),
            backend_v6(1)
        ),
    )
    .unwrap();
    let xlb = Daemon::start_with(
        &t.edge,
        &t.dir,
        &["--config", file.to_str().unwrap(), "--drop-sample", "1"],
    )
    .unwrap();
    t.wait_neighbours(&[backend_v4(0), backend_v4(1), backend_v6(0), backend_v6(1)])
        .unwrap();
    in_ns(&t.client, client_traffic).unwrap().unwrap();
    in_ns(&t.attacker, || {
        UdpSocket::bind("192.0.2.166:42000")
            .and_then(|s| s.send_to(b"denied", VIP))
            .map(|_| ())
    })
    .unwrap()
    .unwrap();
    // Each flow idles out (1s) and its end record goes; the drop record too.
    wait_until("the flows' end records", Duration::from_secs(20), || {
        let m = scrape(&t.edge);
        sample(&m, "xlb_flow_records_total{kind=\"end\"}") >= 2.0 * FLOWS as f64
            && sample(&m, "xlb_flow_records_total{kind=\"drop\"}") >= 1.0
    })
    .unwrap();
    let m = scrape(&t.edge);
    assert_eq!(sample(&m, "xlb_ipfix_send_failures_total"), 0.0, "{m}");
    // Over OTLP: every flow's end, with its counters.
    wait_until("the flows over OTLP", Duration::from_secs(20), || {
        otlp.of("flows")
            .iter()
            .filter(|g| g.attributes["reason"] == "idle")
            .count()
            >= 2 * FLOWS as usize
    })
    .unwrap();
    let got = otlp.of("flows");
    for i in 0..2 * FLOWS {
        let client = client_end(i).to_string();
        let sent: u64 = got
            .iter()
            .filter(|g| g.attributes["src"] == client)
            .map(|g| g.attributes["packets"].parse::<u64>().unwrap())
            .sum();
        assert_eq!(sent, PER_FLOW, "{client}: {got:#?}");
    }
    assert!(got.iter().all(|g| g.body.starts_with("flow ")), "{got:#?}");
    drop(xlb);
    nfcapd.stop();

    let records = read_back(&captures).unwrap();
    let sum = |src: &str, dst: &str| -> (u64, u64, Vec<&BTreeMap<String, String>>) {
        let of: Vec<_> = records
            .iter()
            .filter(|r| {
                end(r, "src").as_deref() == Some(src) && end(r, "dst").as_deref() == Some(dst)
            })
            .collect();
        let n = |r: &BTreeMap<String, String>, k: &str| r[k].parse::<u64>().unwrap();
        (
            of.iter().map(|r| n(r, "in_packets")).sum(),
            of.iter().map(|r| n(r, "in_bytes")).sum(),
            of,
        )
    };
    let mut backends_used = std::collections::BTreeSet::new();
    for i in 0..2 * FLOWS {
        let (client, vip, headers) = match i < FLOWS {
            true => (client_end(i).to_string(), VIP, HEADERS),
            false => (client_end(i).to_string(), VIP6, HEADERS6),
        };
        let (p, b, fwd) = sum(&client, vip);
        assert_eq!(
            (p, b),
            (PER_FLOW, PER_FLOW * (headers + PAYLOAD as u64)),
            "{client} -> {vip}: {records:#?}"
        );
        // The post-NAT destination: the backend it went to, which answered. nfdump
        // 1.7 decodes the IPv6 post-NAT addresses (IEs 281, 282) as nothing, only the
        // ports: there the backend is the one whose answers went to the client, on the
        // post-NAT port.
        let post_port = fwd
            .iter()
            .find_map(|r| r.get("dst_xlt_port").cloned())
            .unwrap_or_else(|| panic!("no NAT fields in {fwd:#?}"));
        let backend = fwd
            .iter()
            .find_map(|r| end(r, "dst_xlt"))
            .or_else(|| {
                records
                    .iter()
                    .filter_map(|r| Some((end(r, "src")?, end(r, "dst")?)))
                    .find(|(s, d)| *d == client && s.ends_with(&format!("]:{post_port}")))
                    .map(|(s, _)| s)
            })
            .unwrap_or_else(|| panic!("no backend answered {client}: {records:#?}"));
        assert!(
            backend.ends_with(&format!(":{post_port}")),
            "{backend} {post_port}"
        );
        let (rp, rb, _) = sum(&backend, &client);
        assert_eq!(
            (rp, rb),
            (PER_FLOW, PER_FLOW * (headers + ANSWER as u64)),
            "{backend} -> {client}: {records:#?}"
        );
        backends_used.insert(backend);
    }
    // Nothing else but the drop: the client's flows and the backends' answers.
    let ours = |r: &BTreeMap<String, String>| {
        let s = end(r, "src").unwrap_or_default();
        s.starts_with("192.0.2.2:")
            || s.starts_with("[2001:db8:c::2]:")
            || backends_used.contains(&s)
    };
    let (drops, flows): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| end(r, "src").is_some_and(|s| s.starts_with("192.0.2.166:")));
    assert!(flows.iter().all(|r| ours(r)), "{flows:#?}");
    assert_eq!(drops.len(), 1, "one drop record: {records:#?}");
    assert_eq!(end(drops[0], "dst").as_deref(), Some(VIP), "{drops:#?}");
    // Six flows over two backends a family by Maglev: the post-NAT destinations are
    // the backends.
    let backends: Vec<String> = (0..2)
        .flat_map(|i| {
            [
                format!("{}:5300", backend_v4(i)),
                format!("[{}]:5301", backend_v6(i)),
            ]
        })
        .collect();
    assert!(
        backends_used.iter().all(|b| backends.contains(b)),
        "{backends_used:?}"
    );
}

/// A record's `src`, `dst` or `dst_xlt` end as "ADDR:PORT" (IPv6 in brackets), from
/// nfdump's JSON names (src4_addr / src6_addr and src_port; dst4_xlt_ip and
/// dst_xlt_port).
fn end(r: &BTreeMap<String, String>, which: &str) -> Option<String> {
    let (v4, v6, port) = match which.strip_suffix("_xlt") {
        Some(side) => (
            format!("{side}4_xlt_ip"),
            format!("{side}6_xlt_ip"),
            format!("{side}_xlt_port"),
        ),
        None => (
            format!("{which}4_addr"),
            format!("{which}6_addr"),
            format!("{which}_port"),
        ),
    };
    let port = r.get(&port)?;
    match (r.get(&v4), r.get(&v6)) {
        (Some(a), _) => Some(format!("{a}:{port}")),
        (None, Some(a)) => Some(format!("[{a}]:{port}")),
        _ => None,
    }
}
