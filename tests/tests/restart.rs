//! The datapath outlives the daemon: a restart, an upgrade to another build of the
//! program and a crashed daemon lose no request of a steady client loop, keep the flow
//! table, the counters and a draining backend's flows; `xlb down` and `run --detach`
//! remove everything; pins of a build with another map layout are replaced cleanly.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use xlb_tests::{
    netns::{ClientLoop, Daemon, http_get, in_ns, wait_until},
    topology::{Backends, Topology, backend_v4},
};

const VIP: &str = "198.51.100.10:80";
const REQUESTS: usize = 3000;
/// Requests the loop must finish while no daemon runs (the datapath alone).
const WITHOUT_DAEMON: usize = 100;
/// Pings the attacker sends (each dropped and counted on its rule).
const ATTACKER_PINGS: u64 = 5;

/// x0, the attacker denied, a nat service over web1..web`n`.
fn config(n: usize) -> String {
    let mut s = format!(
        "[[interface]]\nname = \"x0\"\n\n[firewall]\ndeny = [\"192.0.2.166\"]\n\n\
         [[service]]\naddress = \"{VIP}/tcp\"\nmode = \"nat\"\n"
    );
    for i in 0..n {
        s += &format!(
            "[[service.backend]]\naddress = \"{}:8080\"\n",
            backend_v4(i)
        );
    }
    s
}

fn pins(t: &Topology) -> PathBuf {
    t.dir.path.join("bpffs/xlb")
}

fn start(t: &Topology, extra: &[&str]) -> Daemon {
    let file = t.dir.path.join("xlb.toml");
    let mut args = vec!["--config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start_with(&t.edge, &t.dir, &args).unwrap()
}

/// The id of the XDP program attached to x0, as the kernel reports it (`ip link`).
fn attached_program(t: &Topology) -> Option<u64> {
    let out = t.edge.run(&["ip", "-j", "link", "show", "x0"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// What must carry over from one daemon to the next.
#[derive(Debug)]
struct Carried {
    program: u64,
    attacker_hits: u64,
    /// Per backend, packets sent to it (monotonic while the counters live).
    backend_packets: Vec<u64>,
    forward_flows: u64,
}

fn carried(xlb: &Daemon) -> Carried {
    let status = xlb.json(&["status", "--json"]);
    let rules = xlb.json(&["fw", "list", "--json"]);
    let stats = xlb.json(&["stats", "--json"]);
    Carried {
        program: status["program_id"].as_u64().unwrap(),
        attacker_hits: rules["rules"][0]["hits"].as_u64().unwrap(),
        backend_packets: stats["services"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["packets"].as_u64().unwrap())
            .collect(),
        forward_flows: stats["flows"]["forward"].as_u64().unwrap(),
    }
}

/// Stops the daemon the way `how` says, checks that the datapath keeps forwarding
/// without it, starts the next one with `extra` and checks what it took over.
fn hand_over(
    t: &Topology,
    xlb: &mut Daemon,
    client: &ClientLoop,
    how: &str,
    extra: &[&str],
) -> Daemon {
    let before = carried(xlb);
    match how {
        "restart" => assert!(xlb.stop().unwrap().success()),
        "crash" => {
            xlb.signal(libc::SIGKILL);
            let _ = xlb.stop();
        }
        _ => unreachable!(),
    }
    assert_eq!(
        attached_program(t),
        Some(before.program),
        "{how}: the program stays attached without a daemon"
    );
    let n = client.done();
    client.wait(n + WITHOUT_DAEMON);
    assert!(
        client.done() < REQUESTS,
        "{how}: the loop ended before the next daemon started"
    );

    let next = start(t, extra);
    let status = next.json(&["status", "--json"]);
    assert_eq!(
        status["datapath"]["at_start"]["kind"], "adopted",
        "{how}: {status}"
    );
    let after = carried(&next);
    assert_ne!(after.program, before.program, "{how}: a new program");
    assert_eq!(
        attached_program(t),
        Some(after.program),
        "{how}: the new program is the one attached"
    );
    assert_eq!(
        after.attacker_hits, before.attacker_hits,
        "{how}: rule hits kept"
    );
    for (i, (b, a)) in before
        .backend_packets
        .iter()
        .zip(&after.backend_packets)
        .enumerate()
    {
        assert!(a >= b, "{how}: web{} counted {b} packets, then {a}", i + 1);
    }
    assert!(
        after.forward_flows >= before.forward_flows,
        "{how}: {} flows before, {} after",
        before.forward_flows,
        after.forward_flows
    );
    next
}

#[test]
fn restarts_an_upgrade_and_a_crash_lose_no_request() {
    let t = Topology::build("restart", 3, 8080, Backends::ViaEdge).unwrap();
    std::fs::write(t.dir.path.join("xlb.toml"), config(3)).unwrap();
    let mut xlb = start(&t, &[]);
    let addrs: Vec<String> = (0..3).map(backend_v4).collect();
    t.wait_neighbours(&addrs).unwrap();
    let status = xlb.json(&["status", "--json"]);
    assert_eq!(status["datapath"]["at_start"]["kind"], "fresh");
    assert_eq!(status["datapath"]["on_stop"], "keep");

    // The attacker's pings, dropped and counted on its rule.
    assert!(!t.attacker.ok(&[
        "ping",
        "-c",
        &ATTACKER_PINGS.to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        "198.51.100.10"
    ]));
    assert_eq!(carried(&xlb).attacker_hits, ATTACKER_PINGS);

    // A keep-alive connection held across everything.
    let vip: SocketAddr = VIP.parse().unwrap();
    let (mut held, held_on) = in_ns(&t.client, move || {
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let who = http_get(&mut s).unwrap();
        (s, who)
    })
    .unwrap();

    let client = ClientLoop::start(&t.client, vip, REQUESTS);
    client.wait(300);
    xlb = hand_over(&t, &mut xlb, &client, "restart", &[]);

    // An upgrade: another build of the program (without the kernel log calls).
    let next = t.dir.path.join("xlb-next.o");
    std::fs::write(&next, xlb::kernel::object::XLB_NOLOG).unwrap();
    client.wait(client.done() + 200);
    xlb = hand_over(
        &t,
        &mut xlb,
        &client,
        "restart",
        &["--program", next.to_str().unwrap()],
    );

    // The held connection's backend is removed: it drains (keeps its flows). Then a
    // crash: nothing is cleaned up, the next run takes the datapath over, and the
    // backend the running datapath still serves drains again.
    let index: usize = held_on.trim_start_matches("web").parse().unwrap();
    let removed = format!("{}:8080", backend_v4(index - 1));
    xlb.ok(&["backend", "del", &format!("{VIP}/tcp"), &removed]);
    client.wait(client.done() + 200);
    xlb = hand_over(&t, &mut xlb, &client, "crash", &[]);
    let status = xlb.json(&["status", "--json"]);
    let draining: Vec<&Value> = status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] == "draining")
        .collect();
    assert_eq!(draining.len(), 1, "{status}");
    assert_eq!(draining[0]["backend"], removed.as_str());

    let answers = client.finish();
    let failed: Vec<&String> = answers.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let mut seen: Vec<&str> = answers.iter().map(|r| r.as_deref().unwrap()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["web1", "web2", "web3"]);
    // Served by its draining backend through two handovers and a crash.
    assert_eq!(http_get(&mut held).unwrap(), held_on);
    assert_eq!(xlb.ok(&["fw", "list"]).matches("192.0.2.166").count(), 1);
}

fn xdp_on_x0(t: &Topology) -> bool {
    attached_program(t).is_some()
}

fn down(xlb: &Daemon, pins: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["down", "--bpffs", pins.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    xlb.json(&args)
}

#[test]
fn down_and_detach_remove_the_datapath_and_keep_the_rules() {
    let t = Topology::build("down", 1, 8080, Backends::ViaEdge).unwrap();
    std::fs::write(t.dir.path.join("xlb.toml"), config(1)).unwrap();
    let pins = pins(&t);
    let state = t.dir.path.join("state");

    // Through the daemon: it detaches, removes its pins and socket, and exits.
    let mut xlb = start(&t, &[]);
    xlb.ok(&["fw", "deny", "203.0.113.99"]);
    let v = down(&xlb, &pins, &[]);
    assert_eq!(v["detached"], serde_json::json!(["x0"]), "{v}");
    assert!(v["daemon_stopped"].as_u64().is_some(), "{v}");
    let exit = xlb.child.take().unwrap().wait().unwrap();
    assert!(exit.success(), "{exit}");
    assert!(!xdp_on_x0(&t));
    assert!(!pins.exists());
    assert!(!xlb.socket.exists());
    assert!(state.exists(), "the stored rules stay");

    // A stopped daemon leaves the datapath; `down` without a daemon removes it.
    let mut xlb = start(&t, &[]);
    assert_eq!(
        xlb.json(&["status", "--json"])["datapath"]["at_start"]["kind"],
        "fresh"
    );
    assert!(xlb.ok(&["fw", "list"]).contains("203.0.113.99/32"));
    assert!(xlb.stop().unwrap().success());
    assert!(xdp_on_x0(&t) && pins.exists());
    // A run with a bad build of the program fails and leaves the datapath as it was.
    let junk = t.dir.path.join("junk.o");
    std::fs::write(&junk, "not an ELF object").unwrap();
    let program = attached_program(&t);
    let pinned = std::fs::read_dir(&pins).unwrap().count();
    let err = Daemon::start_with(
        &t.edge,
        &t.dir,
        &[
            "--config",
            t.dir.path.join("xlb.toml").to_str().unwrap(),
            "--program",
            junk.to_str().unwrap(),
        ],
    )
    .err()
    .expect("a junk program is refused")
    .to_string();
    assert!(err.contains("loading the XDP object"), "{err}");
    assert_eq!(attached_program(&t), program);
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), pinned);
    let v = down(&xlb, &pins, &[]);
    assert_eq!(v["daemon_stopped"], Value::Null, "{v}");
    assert_eq!(v["detached"], serde_json::json!(["x0"]), "{v}");
    assert!(!xdp_on_x0(&t) && !pins.exists());

    // Two daemons never share a datapath, even on different sockets.
    let mut xlb = start(&t, &["--detach"]);
    let other = t.dir.path.join("other.sock");
    let out = t
        .edge
        .cmd(&[
            xlb_tests::netns::xlb_bin().to_str().unwrap(),
            "--socket",
            other.to_str().unwrap(),
            "run",
            "--iface",
            "x0",
            "--bpffs",
            pins.to_str().unwrap(),
            "--state",
            t.dir.path.join("other-state").to_str().unwrap(),
            "--metrics",
            "off",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("another xlb daemon is running on"), "{err}");

    // --detach: stopping removes everything.
    assert_eq!(
        xlb.json(&["status", "--json"])["datapath"]["on_stop"],
        "detach"
    );
    assert!(xlb.stop().unwrap().success());
    assert!(!xdp_on_x0(&t) && !pins.exists());

    // --purge also deletes the stored state.
    let xlb = start(&t, &[]);
    down(
        &xlb,
        &pins,
        &["--purge", "--state", state.to_str().unwrap()],
    );
    wait_until("the daemon gone", Duration::from_secs(20), || {
        !xlb.socket.exists()
    })
    .unwrap();
    assert!(!state.exists() && !pins.exists() && !xdp_on_x0(&t));
}

/// BPF_MAP_CREATE of an array (4-byte keys, `value_size`-byte values) pinned at `path`.
fn pin_array(path: &Path, value_size: u32) {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        _rest: [u32; 36],
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        _rest: [u32; 4],
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let create = Create {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: 1,
        _rest: [0; 36],
    };
    // SAFETY: the attribute is a valid bpf_attr prefix of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create as *const Create,
            std::mem::size_of::<Create>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = Pin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
        _rest: [0; 4],
    };
    // SAFETY: as above; the path outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const Pin,
            std::mem::size_of::<Pin>(),
        )
    };
    assert_eq!(r, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: closing the fd we made; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn pins_of_another_map_layout_are_replaced_cleanly() {
    let t = Topology::build("layout", 1, 8080, Backends::ViaEdge).unwrap();
    std::fs::write(t.dir.path.join("xlb.toml"), config(1)).unwrap();
    let pins = pins(&t);
    std::fs::create_dir_all(&pins).unwrap();
    // A config map of another build: 4-byte values where this one has more.
    pin_array(&pins.join("XLB_CONFIG"), 4);

    let xlb = start(&t, &["--detach"]);
    let status = xlb.json(&["status", "--json"]);
    let at_start = &status["datapath"]["at_start"];
    assert_eq!(at_start["kind"], "replaced", "{status}");
    assert!(
        at_start["why"].as_str().unwrap().contains("XLB_CONFIG"),
        "{at_start}"
    );
    t.wait_neighbours(&[backend_v4(0)]).unwrap();
    assert_eq!(t.client.curl("http://198.51.100.10/").unwrap(), "web1");
    assert!(t.attacker.curl("http://198.51.100.10/").is_err());
}
