//! Flow records end to end: `xlb run` with `[flows]` sends IPFIX to a real collector,
//! nfdump's `nfcapd` in the edge namespace, and `nfdump` reads back exactly the flows
//! the test made: both directions of each nat flow with their packets and bytes, the
//! backend as the post-NAT destination, and a sampled drop.

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
    topology::{Backends, Topology, backend_v4},
};

const VIP: &str = "198.51.100.10:53";
const COLLECTOR_PORT: &str = "4739";
const FLOWS: u16 = 3;
const PER_FLOW: u64 = 4;
const PAYLOAD: usize = 100;
/// The backends answer each datagram with "webN".
const ANSWER: usize = 4;
/// IPv4 and UDP headers.
const HEADERS: u64 = 28;

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

/// `PER_FLOW` datagrams on each of `FLOWS` sockets from the client, each answered.
fn client_traffic() -> Result<()> {
    let vip: SocketAddr = VIP.parse()?;
    for i in 0..FLOWS {
        let s = UdpSocket::bind(("192.0.2.2", 43000 + i))?;
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
    let _udp: Vec<NsServer> = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| NsServer::udp(b, "0.0.0.0:5300", &format!("web{}", i + 1)).unwrap())
        .collect();
    let captures = t.dir.path.join("nfcapd");
    std::fs::create_dir_all(&captures).unwrap();
    let mut nfcapd = Nfcapd::start(&t.edge, &captures).unwrap();
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

[flows]
ipfix = "127.0.0.1:{COLLECTOR_PORT}"
scan = "200ms"
"#,
            backend_v4(0),
            backend_v4(1)
        ),
    )
    .unwrap();
    let xlb = Daemon::start_with(
        &t.edge,
        &t.dir,
        &["--config", file.to_str().unwrap(), "--drop-sample", "1"],
    )
    .unwrap();
    t.wait_neighbours(&[backend_v4(0), backend_v4(1)]).unwrap();
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
        sample(&m, "xlb_flow_records_total{kind=\"end\"}") >= FLOWS as f64
            && sample(&m, "xlb_flow_records_total{kind=\"drop\"}") >= 1.0
    })
    .unwrap();
    let m = scrape(&t.edge);
    assert_eq!(sample(&m, "xlb_ipfix_send_failures_total"), 0.0, "{m}");
    drop(xlb);
    nfcapd.stop();

    let records = read_back(&captures).unwrap();
    let sum = |src: &str, dst: &str| -> (u64, u64, Vec<&BTreeMap<String, String>>) {
        let of: Vec<_> = records
            .iter()
            .filter(|r| {
                let s = format!("{}:{}", r["src4_addr"], r["src_port"]);
                let d = format!("{}:{}", r["dst4_addr"], r["dst_port"]);
                s == src && d == dst
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
    for i in 0..FLOWS {
        let client = format!("192.0.2.2:{}", 43000 + i);
        let (p, b, fwd) = sum(&client, VIP);
        assert_eq!(
            (p, b),
            (PER_FLOW, PER_FLOW * (HEADERS + PAYLOAD as u64)),
            "{client} -> {VIP}: {records:#?}"
        );
        // The post-NAT destination: the backend it went to, which answered.
        let backend = fwd
            .iter()
            .find_map(|r| {
                let a = r.get("dst4_xlt_ip")?;
                Some(format!("{a}:{}", r.get("dst_xlt_port")?))
            })
            .unwrap_or_else(|| panic!("no NAT fields in {fwd:#?}"));
        let (rp, rb, _) = sum(&backend, &client);
        assert_eq!(
            (rp, rb),
            (PER_FLOW, PER_FLOW * (HEADERS + ANSWER as u64)),
            "{backend} -> {client}: {records:#?}"
        );
        backends_used.insert(backend);
    }
    // Nothing else but the drop: 2 records a flow at least (start or end, both ways).
    let flows: Vec<_> = records
        .iter()
        .filter(|r| r["src4_addr"] != "192.0.2.166")
        .collect();
    assert!(
        flows.iter().all(|r| {
            let s = &r["src4_addr"];
            s == "192.0.2.2" || s.starts_with("203.0.113.1")
        }),
        "{flows:#?}"
    );
    let drop = records
        .iter()
        .find(|r| r["src4_addr"] == "192.0.2.166")
        .unwrap_or_else(|| panic!("no drop record: {records:#?}"));
    assert_eq!(drop["dst4_addr"], "198.51.100.10", "{drop:#?}");
    // Three flows over two backends by Maglev: the post-NAT destinations are backends.
    assert!(
        backends_used
            .iter()
            .all(|b| b.starts_with("203.0.113.11:") || b.starts_with("203.0.113.12:")),
        "{backends_used:?}"
    );
}
