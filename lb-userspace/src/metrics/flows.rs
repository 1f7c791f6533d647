//! Flow records from the flow table: the daemon reads the table every scan interval
//! and turns what changed into records, so the fast path only adds to two counters a
//! packet (and only while records are on: `Config::flow_records`).
//!
//! A flow (a forward entry: its tuple and `first_ns`) gets a first record when a scan
//! first finds it, an interim record every active timeout, and an end record when it
//! idles out (no packet for its service's idle timeout), when its tuple starts a new
//! flow, or when its entry is gone (evicted from a full table, or its backend removed).
//! Counters are deltas since the flow's last record, in both directions: the forward
//! record (client -> service, with the backend as the post-NAT destination) and the
//! reply record (backend -> client) when replies come through xlb (nat, fullnat).
//! Packets between a flow's last scan and its entry's removal are not seen.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{
    DropEvent, FLOW_REPLY, Flow, FlowKey, IPPROTO_TCP, MODE_DSR, MODE_FULLNAT, Reason,
};
use tracing::Level;

use super::{
    Metrics, export,
    ipfix::{DropRecord, FlowRecord, Record, Sender, Sent, end_reason},
};
use crate::{
    config::{export::Stream, flows::FlowsConfig},
    kernel::{
        balancer::{addr16, ip_of},
        flows::FlowNames,
    },
    model::fxhash::FxHasher,
};

/// The table's entries are refreshed at most once a second (`seen_ns`): an entry is
/// idle once its idle timeout and this have passed.
const SEEN_SLACK_NS: u64 = 1_000_000_000;

/// Monotonic (the kernel's clock) and wall time of one scan.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub mono_ns: u64,
    pub wall_ms: u64,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            wall_ms: wall.as_millis() as u64,
        }
    }

    /// Wall milliseconds of a kernel timestamp.
    fn wall(&self, t_ns: u64) -> u64 {
        self.wall_ms
            .saturating_sub(self.mono_ns.saturating_sub(t_ns) / 1_000_000)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    packets: u64,
    bytes: u64,
    rev_packets: u64,
    rev_bytes: u64,
}

/// A flow the tracker has reported on.
#[derive(Clone, Debug)]
struct Tracked {
    flow: Flow,
    /// Its records' addresses: forward (src, dst, post_src, post_dst), reply likewise.
    forward: [SocketAddr; 4],
    reply: Option<[SocketAddr; 4]>,
    proto: u8,
    idle_ns: u64,
    reported: Counts,
    last_report_ns: u64,
    /// Its end record went (it idled out): kept, silent, while its entry lasts.
    ended: bool,
}

pub struct Tracker {
    /// One flow in `sample` gets records (by its tuple's hash); 1: all.
    sample: u32,
    active: Duration,
    flows: HashMap<FlowKey, Tracked>,
}

fn sock(a: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(a, port)
}

impl Tracker {
    pub fn new(sample: u32, active: Duration) -> Self {
        Tracker {
            sample: sample.max(1),
            active,
            flows: HashMap::new(),
        }
    }

    fn sampled(&self, k: &FlowKey) -> bool {
        use std::hash::Hasher;
        if self.sample <= 1 {
            return true;
        }
        let mut h = FxHasher::default();
        h.write(bytemuck::bytes_of(k));
        h.finish() % self.sample as u64 == 0
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// One scan of the table's `entries`: the records it makes.
    pub fn scan(
        &mut self,
        entries: &[(FlowKey, Flow)],
        names: &FlowNames,
        clock: Clock,
    ) -> Vec<FlowRecord> {
        let replies: HashMap<&FlowKey, &Flow> = entries
            .iter()
            .filter(|(_, f)| f.direction == FLOW_REPLY)
            .map(|(k, f)| (k, f))
            .collect();
        let mut out = Vec::new();
        let mut present = HashSet::new();
        for (k, f) in entries.iter().filter(|(_, f)| f.direction != FLOW_REPLY) {
            if !self.sampled(k) {
                continue;
            }
            let Some(mut t) = self.describe(k, f, names) else {
                continue;
            };
            let mut counts = Counts {
                packets: f.packets,
                bytes: f.bytes,
                rev_packets: f.rev_packets,
                rev_bytes: f.rev_bytes,
            };
            if let Some(r) = replies.get(&reply_key(&t, k)) {
                counts.rev_packets += r.packets;
                counts.rev_bytes += r.bytes;
            }
            let idle = clock.mono_ns.saturating_sub(f.seen_ns) > t.idle_ns + SEEN_SLACK_NS;
            match self.flows.remove(k) {
                Some(mut old) if same_flow(&old.flow, f) => {
                    old.flow = *f;
                    let active = clock.mono_ns.saturating_sub(old.last_report_ns)
                        >= self.active.as_nanos() as u64;
                    if !old.ended && idle {
                        emit(&mut out, &mut old, counts, clock, end_reason::IDLE);
                        old.ended = true;
                    } else if !old.ended && active {
                        emit(&mut out, &mut old, counts, clock, end_reason::ACTIVE);
                    }
                    present.insert(*k);
                    self.flows.insert(*k, old);
                    continue;
                }
                Some(mut old) if !old.ended => {
                    // Its tuple began a new flow: the old one ended with its last scan.
                    let was = old.reported;
                    emit(&mut out, &mut old, was, clock, end_reason::IDLE);
                }
                _ => {}
            }
            if idle {
                // Began and idled out between two scans.
                emit(&mut out, &mut t, counts, clock, end_reason::IDLE);
                t.ended = true;
            } else {
                emit(&mut out, &mut t, counts, clock, end_reason::STARTED);
            }
            present.insert(*k);
            self.flows.insert(*k, t);
        }
        let gone: Vec<FlowKey> = self
            .flows
            .keys()
            .filter(|k| !present.contains(*k))
            .copied()
            .collect();
        for k in gone {
            let mut t = self.flows.remove(&k).expect("listed");
            if t.ended {
                continue;
            }
            let reason = if clock.mono_ns.saturating_sub(t.flow.seen_ns) > t.idle_ns {
                end_reason::IDLE
            } else if names
                .backends
                .get(&t.flow.backend)
                .is_some_and(|b| b.generation == t.flow.generation)
            {
                end_reason::LACK_OF_RESOURCES
            } else {
                end_reason::FORCED
            };
            let was = t.reported;
            emit(&mut out, &mut t, was, clock, reason);
        }
        out
    }

    /// Every tracked flow ends (the exporter stops): their last records.
    pub fn finish(&mut self, clock: Clock) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        for (_, mut t) in self.flows.drain().filter(|(_, t)| !t.ended) {
            let was = t.reported;
            emit(&mut out, &mut t, was, clock, end_reason::FORCED);
        }
        out
    }

    /// A forward entry's addresses and timeouts, from its service and backend; None
    /// for an entry whose backend slot holds another backend now (it is stale).
    fn describe(&self, k: &FlowKey, f: &Flow, names: &FlowNames) -> Option<Tracked> {
        let svc = names.services.get(&f.service)?;
        let b = names.backends.get(&f.backend)?;
        if b.generation != f.generation {
            return None;
        }
        let client = sock(ip_of(&k.src, k.family), k.src_port);
        let vip = sock(ip_of(&k.dst, k.family), k.dst_port);
        let backend = sock(b.addr, if b.port != 0 { b.port } else { k.dst_port });
        let (forward, reply) = if f.mode == MODE_DSR {
            ([client, vip, client, vip], None)
        } else {
            let near = match (f.mode == MODE_FULLNAT, svc.snat) {
                (true, Some(snat)) => sock(snat, f.nat_port),
                _ => client,
            };
            (
                [client, vip, near, backend],
                Some([backend, near, vip, client]),
            )
        };
        let idle = if k.proto == IPPROTO_TCP {
            svc.tcp_idle_secs
        } else {
            svc.udp_idle_secs
        };
        Some(Tracked {
            flow: *f,
            forward,
            reply,
            proto: k.proto,
            idle_ns: idle as u64 * 1_000_000_000,
            reported: Counts::default(),
            last_report_ns: 0,
            ended: false,
        })
    }
}

/// Whether entry `f` is still the flow `old` was (a tuple rescheduled after idling out,
/// or to another backend, is a new flow).
fn same_flow(old: &Flow, f: &Flow) -> bool {
    old.first_ns == f.first_ns && old.backend == f.backend && old.generation == f.generation
}

/// The reply entry of a nat flow to an endpoint its backend shares (backend -> client).
fn reply_key(t: &Tracked, k: &FlowKey) -> FlowKey {
    let b = t.forward[3];
    FlowKey {
        src: addr16(&b.ip()).0,
        dst: k.src,
        src_port: b.port(),
        dst_port: k.src_port,
        proto: k.proto,
        family: k.family,
        _pad: [0; 2],
    }
}

/// The flow's records for what changed since its last one (`now` its counters), ending
/// with `reason`; a direction without new packets has none, but an end always has its
/// forward record.
fn emit(out: &mut Vec<FlowRecord>, t: &mut Tracked, now: Counts, clock: Clock, reason: u8) {
    let start_ms = clock.wall(t.flow.first_ns);
    let end_ms = clock.wall(t.flow.seen_ns).max(start_ms);
    let record = |a: &[SocketAddr; 4], packets: u64, bytes: u64| FlowRecord {
        src: a[0],
        dst: a[1],
        post_src: a[2],
        post_dst: a[3],
        proto: t.proto,
        packets,
        bytes,
        start_ms,
        end_ms,
        end_reason: reason,
    };
    let (p, b) = (
        now.packets.saturating_sub(t.reported.packets),
        now.bytes.saturating_sub(t.reported.bytes),
    );
    let ends = reason != end_reason::STARTED && reason != end_reason::ACTIVE;
    if p > 0 || ends {
        out.push(record(&t.forward, p, b));
    }
    if let Some(reply) = &t.reply {
        let (rp, rb) = (
            now.rev_packets.saturating_sub(t.reported.rev_packets),
            now.rev_bytes.saturating_sub(t.reported.rev_bytes),
        );
        if rp > 0 {
            out.push(record(reply, rp, rb));
        }
    }
    t.reported = now;
    t.last_report_ns = clock.mono_ns;
}

/// The daemon's flow records: the tracker, and where its records go (IPFIX to the
/// collector, OTLP with `[export]`'s `flows` stream), counted.
pub struct Recorder {
    tracker: Tracker,
    ipfix: Option<Sender>,
    drops: bool,
    metrics: &'static Metrics,
}

fn kind(reason: u8) -> &'static str {
    match reason {
        end_reason::STARTED => "start",
        end_reason::ACTIVE => "interim",
        _ => "end",
    }
}

fn reason_name(reason: u8) -> &'static str {
    match reason {
        end_reason::STARTED => "started",
        end_reason::IDLE => "idle",
        end_reason::ACTIVE => "active",
        end_reason::LACK_OF_RESOURCES => "evicted",
        _ => "forced",
    }
}

/// forwardingStatus (RFC 7270) of a drop: dropped (0b10) with the closest reason code.
fn forwarding_status(reason: u32) -> u8 {
    const DROPPED: u8 = 0b1000_0000;
    let code = match Reason::ALL.get(reason as usize) {
        Some(Reason::Default | Reason::PrefixDeny | Reason::PortDeny) => 1, // ACL deny
        Some(Reason::NoRoute) => 3,                                         // unroutable
        Some(Reason::RateLimited) => 10,                                    // policer
        Some(Reason::BadIpv4 | Reason::BadIpv6 | Reason::BadIpv6Ext | Reason::BadL4) => 7, // bad header length
        _ => 0, // unknown
    };
    DROPPED | code
}

impl Recorder {
    pub fn new(cfg: &FlowsConfig, metrics: &'static Metrics) -> anyhow::Result<Self> {
        let ipfix = match cfg.ipfix {
            Some(c) => Some(Sender::new(c, cfg.domain)?),
            None => None,
        };
        Ok(Recorder {
            tracker: Tracker::new(cfg.sample, cfg.active_timeout),
            ipfix,
            drops: cfg.drops,
            metrics,
        })
    }

    /// One scan of the flow table's `entries`.
    pub fn scan(&mut self, entries: &[(FlowKey, Flow)], names: &FlowNames) {
        let clock = Clock::now();
        let records = self.tracker.scan(entries, names, clock);
        self.publish(records, clock);
    }

    /// The last records: every followed flow ends (xlb stops).
    pub fn finish(&mut self) {
        let clock = Clock::now();
        let records = self.tracker.finish(clock);
        self.publish(records, clock);
    }

    /// A sampled dropped packet (from `src` to `dst`), as an IPFIX record (with
    /// `drops`).
    pub fn drop_event(&mut self, e: &DropEvent, (src, dst): (IpAddr, IpAddr)) {
        let (Some(sender), true) = (self.ipfix.as_mut(), self.drops) else {
            return;
        };
        let clock = Clock::now();
        let record = Record::Drop(DropRecord {
            src: sock(src, e.src_port),
            dst: sock(dst, e.dst_port),
            proto: e.proto,
            bytes: e.len as u64,
            at_ms: clock.wall_ms,
            status: forwarding_status(e.reason),
        });
        let sent = sender.send(&[record], Instant::now(), (clock.wall_ms / 1000) as u32);
        self.metrics.flow_records("drop", 1);
        self.metrics
            .ipfix_sent(sent.messages, sent.failed, self.tracker.len());
    }

    fn publish(&mut self, records: Vec<FlowRecord>, clock: Clock) {
        for k in ["start", "interim", "end"] {
            let n = records.iter().filter(|r| kind(r.end_reason) == k).count();
            if n > 0 {
                self.metrics.flow_records(k, n as u64);
            }
        }
        if export::enabled(Stream::Flows) {
            for r in &records {
                export::record(
                    Stream::Flows,
                    Level::INFO,
                    format!("flow {} {} -> {}", kind(r.end_reason), r.src, r.dst),
                    otlp_attributes(r),
                );
            }
        }
        let mut sent = Sent::default();
        if let Some(sender) = self.ipfix.as_mut() {
            let records: Vec<Record> = records.into_iter().map(Record::Flow).collect();
            sent = sender.send(&records, Instant::now(), (clock.wall_ms / 1000) as u32);
        }
        self.metrics
            .ipfix_sent(sent.messages, sent.failed, self.tracker.len());
    }
}

fn otlp_attributes(r: &FlowRecord) -> Vec<(String, String)> {
    [
        ("src", r.src.to_string()),
        ("dst", r.dst.to_string()),
        ("post_nat_src", r.post_src.to_string()),
        ("post_nat_dst", r.post_dst.to_string()),
        ("proto", r.proto.to_string()),
        ("packets", r.packets.to_string()),
        ("bytes", r.bytes.to_string()),
        ("start_ms", r.start_ms.to_string()),
        ("end_ms", r.end_ms.to_string()),
        ("reason", reason_name(r.end_reason).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use lb_common::{FAMILY_V4, FLOW_FORWARD, IPPROTO_UDP, MODE_NAT, addr16_v4};

    use super::*;
    use crate::kernel::flows::{BackendName, ServiceName};

    const SEC: u64 = 1_000_000_000;

    fn names() -> FlowNames {
        let mut n = FlowNames::default();
        n.services.insert(
            1,
            ServiceName {
                snat: Some("203.0.113.1".parse().unwrap()),
                tcp_idle_secs: 300,
                udp_idle_secs: 10,
            },
        );
        n.backends.insert(
            7,
            BackendName {
                addr: "203.0.113.11".parse().unwrap(),
                port: 5300,
                generation: 3,
            },
        );
        n
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            src: addr16_v4([192, 0, 2, 2]),
            dst: addr16_v4([198, 51, 100, 10]),
            src_port: port,
            dst_port: 53,
            proto: IPPROTO_UDP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    fn flow(mode: u8, packets: u64, seen: u64) -> Flow {
        Flow {
            backend: 7,
            generation: 3,
            service: 1,
            direction: FLOW_FORWARD,
            mode,
            seen_ns: seen,
            first_ns: SEC,
            packets,
            bytes: packets * 100,
            nat_port: 61000,
            ..Default::default()
        }
    }

    fn at(secs: u64) -> Clock {
        Clock {
            mono_ns: secs * SEC,
            wall_ms: 1_700_000_000_000 + secs * 1000,
        }
    }

    #[test]
    fn a_flow_starts_goes_on_and_idles_out_with_deltas() {
        let mut t = Tracker::new(1, Duration::from_secs(60));
        let n = names();
        // First seen: a start record with what it has so far, and the reply entry's
        // counters (nat to a shared endpoint) as the reply direction.
        let reply_key = FlowKey {
            src: addr16_v4([203, 0, 113, 11]),
            dst: addr16_v4([192, 0, 2, 2]),
            src_port: 5300,
            dst_port: 40000,
            ..key(40000)
        };
        let reply = Flow {
            direction: FLOW_REPLY,
            packets: 2,
            bytes: 64,
            ..flow(MODE_NAT, 0, 2 * SEC)
        };
        let r = t.scan(
            &[(key(40000), flow(MODE_NAT, 3, 2 * SEC)), (reply_key, reply)],
            &n,
            at(2),
        );
        assert_eq!(r.len(), 2, "{r:#?}");
        assert_eq!(
            (r[0].packets, r[0].bytes, r[0].end_reason),
            (3, 300, end_reason::STARTED)
        );
        assert_eq!(r[0].post_dst, "203.0.113.11:5300".parse().unwrap());
        assert_eq!(r[0].post_src, "192.0.2.2:40000".parse().unwrap());
        assert_eq!((r[1].packets, r[1].bytes), (2, 64));
        assert_eq!(r[1].src, "203.0.113.11:5300".parse().unwrap());
        assert_eq!(r[1].post_src, "198.51.100.10:53".parse().unwrap());
        // Nothing new: no record.
        assert!(
            t.scan(&[(key(40000), flow(MODE_NAT, 3, 2 * SEC))], &n, at(3))
                .is_empty()
        );
        // Idle (10 s + the refresh slack): the end, with the packets since the start.
        let r = t.scan(&[(key(40000), flow(MODE_NAT, 5, 2 * SEC))], &n, at(14));
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!((r[0].packets, r[0].end_reason), (2, end_reason::IDLE));
        assert_eq!(r[0].end_ms, 1_700_000_002_000);
        // The idle entry lingers: silent; when it goes, nothing more.
        assert!(
            t.scan(&[(key(40000), flow(MODE_NAT, 5, 2 * SEC))], &n, at(15))
                .is_empty()
        );
        assert!(t.scan(&[], &n, at(16)).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn gone_entries_end_as_evicted_or_forced_and_fullnat_names_its_source() {
        let mut t = Tracker::new(1, Duration::from_secs(60));
        let mut n = names();
        let f = flow(MODE_FULLNAT, 1, 2 * SEC);
        let r = t.scan(&[(key(1), f), (key(2), f)], &n, at(2));
        assert_eq!(r[0].post_src, "203.0.113.1:61000".parse().unwrap());
        // Entry 1 leaves a full table while its backend is still there: evicted.
        let r = t.scan(&[(key(2), f)], &n, at(3));
        assert_eq!(
            (r.len(), r[0].end_reason),
            (1, end_reason::LACK_OF_RESOURCES)
        );
        assert_eq!(r[0].packets, 0);
        // Entry 2's backend is removed (its slot's generation moves on): forced.
        n.backends.get_mut(&7).unwrap().generation = 4;
        let r = t.scan(&[], &n, at(4));
        assert_eq!((r.len(), r[0].end_reason), (1, end_reason::FORCED));
    }

    #[test]
    fn long_flows_get_interim_records_and_a_new_flow_on_a_tuple_ends_the_old() {
        let mut t = Tracker::new(1, Duration::from_secs(5));
        let n = names();
        t.scan(&[(key(1), flow(MODE_NAT, 1, 2 * SEC))], &n, at(2));
        let r = t.scan(&[(key(1), flow(MODE_NAT, 9, 8 * SEC))], &n, at(8));
        assert_eq!(
            (r.len(), r[0].packets, r[0].end_reason),
            (1, 8, end_reason::ACTIVE)
        );
        let again = Flow {
            first_ns: 9 * SEC,
            ..flow(MODE_NAT, 1, 9 * SEC)
        };
        let r = t.scan(&[(key(1), again)], &n, at(9));
        let reasons: Vec<u8> = r.iter().map(|r| r.end_reason).collect();
        assert_eq!(reasons, vec![end_reason::IDLE, end_reason::STARTED]);
        let r = t.finish(at(10));
        assert_eq!((r.len(), r[0].end_reason), (1, end_reason::FORCED));
    }

    #[test]
    fn sampling_follows_one_flow_in_n_by_its_tuple() {
        let n = names();
        let entries: Vec<(FlowKey, Flow)> = (0..1000)
            .map(|p| (key(p), flow(MODE_NAT, 1, 2 * SEC)))
            .collect();
        let mut t = Tracker::new(10, Duration::from_secs(60));
        t.scan(&entries, &n, at(2));
        assert!((50..=150).contains(&t.len()), "{}", t.len());
        let mut again = Tracker::new(10, Duration::from_secs(60));
        again.scan(&entries, &n, at(2));
        assert_eq!(again.len(), t.len());
    }
}
