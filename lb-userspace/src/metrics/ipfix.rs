//! IPFIX (RFC 7011) messages: flow records (with the NAT fields of RFC 8158) and
//! dropped-packet samples, encoded for a collector over UDP.
//!
//! Four templates, one per record kind and family; a template set goes first and again
//! every [`TEMPLATE_EVERY`] (over UDP a collector that restarts learns them only so).
//! Counters are deltas (packetDeltaCount, octetDeltaCount): the records of one flow add
//! up to its totals, whatever the collector does with them.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// The protocol version of IPFIX.
const VERSION: u16 = 10;
/// The set id of a template set.
const TEMPLATE_SET: u16 = 2;
/// Message header and set header lengths.
#[cfg(test)]
const MESSAGE_HEADER: usize = 16;
const SET_HEADER: usize = 4;
/// A message is kept under a typical path MTU (1500) less IP and UDP headers, so it
/// is never fragmented.
pub const MAX_MESSAGE: usize = 1400;
/// How often the templates are sent again.
pub const TEMPLATE_EVERY: Duration = Duration::from_secs(30);

/// Template ids (256 and up are for templates).
const FLOW4: u16 = 256;
const FLOW6: u16 = 257;
const DROP4: u16 = 258;
const DROP6: u16 = 259;

// Information elements (IANA's registry): (id, length).
const OCTET_DELTA: (u16, u16) = (1, 8);
const PACKET_DELTA: (u16, u16) = (2, 8);
const PROTOCOL: (u16, u16) = (4, 1);
const SRC_PORT: (u16, u16) = (7, 2);
const SRC4: (u16, u16) = (8, 4);
const DST_PORT: (u16, u16) = (11, 2);
const DST4: (u16, u16) = (12, 4);
const SRC6: (u16, u16) = (27, 16);
const DST6: (u16, u16) = (28, 16);
const FORWARDING_STATUS: (u16, u16) = (89, 1);
const END_REASON: (u16, u16) = (136, 1);
const START_MS: (u16, u16) = (152, 8);
const END_MS: (u16, u16) = (153, 8);
const POST_NAT_SRC4: (u16, u16) = (225, 4);
const POST_NAT_DST4: (u16, u16) = (226, 4);
const POST_NAPT_SRC_PORT: (u16, u16) = (227, 2);
const POST_NAPT_DST_PORT: (u16, u16) = (228, 2);
const POST_NAT_SRC6: (u16, u16) = (281, 16);
const POST_NAT_DST6: (u16, u16) = (282, 16);

fn flow_fields(v6: bool) -> [(u16, u16); 14] {
    let (src, dst, psrc, pdst) = if v6 {
        (SRC6, DST6, POST_NAT_SRC6, POST_NAT_DST6)
    } else {
        (SRC4, DST4, POST_NAT_SRC4, POST_NAT_DST4)
    };
    [
        src,
        dst,
        SRC_PORT,
        DST_PORT,
        PROTOCOL,
        PACKET_DELTA,
        OCTET_DELTA,
        START_MS,
        END_MS,
        END_REASON,
        psrc,
        pdst,
        POST_NAPT_SRC_PORT,
        POST_NAPT_DST_PORT,
    ]
}

fn drop_fields(v6: bool) -> [(u16, u16); 10] {
    let (src, dst) = if v6 { (SRC6, DST6) } else { (SRC4, DST4) };
    [
        src,
        dst,
        SRC_PORT,
        DST_PORT,
        PROTOCOL,
        PACKET_DELTA,
        OCTET_DELTA,
        START_MS,
        END_MS,
        FORWARDING_STATUS,
    ]
}

/// flowEndReason values (RFC 7011 / IANA), and 0 for a flow's first record.
pub mod end_reason {
    /// The flow's first record: it goes on (not an IANA value: 0 is unassigned).
    pub const STARTED: u8 = 0;
    pub const IDLE: u8 = 1;
    pub const ACTIVE: u8 = 2;
    pub const END_DETECTED: u8 = 3;
    /// The exporter ended it (xlb stopped, or the flow's backend was removed).
    pub const FORCED: u8 = 4;
    /// Its entry was evicted from the full flow table.
    pub const LACK_OF_RESOURCES: u8 = 5;
}

/// One direction of a flow, as xlb saw it (`src`..`dst`) and as it left
/// (`post_src`..`post_dst`, the NAT fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub post_src: SocketAddr,
    pub post_dst: SocketAddr,
    pub proto: u8,
    pub packets: u64,
    pub bytes: u64,
    /// Milliseconds since the Unix epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    pub end_reason: u8,
}

/// A sampled dropped packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropRecord {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
    pub bytes: u64,
    pub at_ms: u64,
    /// forwardingStatus (RFC 7270): 0b10 in the top bits (dropped) and a reason code.
    pub status: u8,
}

pub enum Record {
    Flow(FlowRecord),
    Drop(DropRecord),
}

impl Record {
    fn v6(&self) -> bool {
        match self {
            Record::Flow(f) => f.src.is_ipv6(),
            Record::Drop(d) => d.src.is_ipv6(),
        }
    }

    fn template(&self) -> u16 {
        match (self, self.v6()) {
            (Record::Flow(_), false) => FLOW4,
            (Record::Flow(_), true) => FLOW6,
            (Record::Drop(_), false) => DROP4,
            (Record::Drop(_), true) => DROP6,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Flow(f) => {
                put_ip(out, f.src.ip());
                put_ip(out, f.dst.ip());
                out.extend_from_slice(&f.src.port().to_be_bytes());
                out.extend_from_slice(&f.dst.port().to_be_bytes());
                out.push(f.proto);
                out.extend_from_slice(&f.packets.to_be_bytes());
                out.extend_from_slice(&f.bytes.to_be_bytes());
                out.extend_from_slice(&f.start_ms.to_be_bytes());
                out.extend_from_slice(&f.end_ms.to_be_bytes());
                out.push(f.end_reason);
                put_ip(out, f.post_src.ip());
                put_ip(out, f.post_dst.ip());
                out.extend_from_slice(&f.post_src.port().to_be_bytes());
                out.extend_from_slice(&f.post_dst.port().to_be_bytes());
            }
            Record::Drop(d) => {
                put_ip(out, d.src.ip());
                put_ip(out, d.dst.ip());
                out.extend_from_slice(&d.src.port().to_be_bytes());
                out.extend_from_slice(&d.dst.port().to_be_bytes());
                out.push(d.proto);
                out.extend_from_slice(&1u64.to_be_bytes());
                out.extend_from_slice(&d.bytes.to_be_bytes());
                out.extend_from_slice(&d.at_ms.to_be_bytes());
                out.extend_from_slice(&d.at_ms.to_be_bytes());
                out.push(d.status);
            }
        }
    }
}

/// An address in the record's family (an IPv4 record never holds an IPv6 address:
/// the records of a flow are of one family).
fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

/// Builds messages: the header's sequence number counts the data records sent before.
pub struct Encoder {
    domain: u32,
    sequence: u32,
}

impl Encoder {
    pub fn new(domain: u32) -> Self {
        Encoder {
            domain,
            sequence: 0,
        }
    }

    fn header(&self, out: &mut Vec<u8>, export_secs: u32) {
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes()); // length, set by `finish`
        out.extend_from_slice(&export_secs.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.domain.to_be_bytes());
    }

    /// A message with every template.
    pub fn templates(&self, export_secs: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.header(&mut out, export_secs);
        let set = out.len();
        out.extend_from_slice(&TEMPLATE_SET.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        let mut template = |id: u16, fields: &[(u16, u16)]| {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for (ie, len) in fields {
                out.extend_from_slice(&ie.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
        };
        template(FLOW4, &flow_fields(false));
        template(FLOW6, &flow_fields(true));
        template(DROP4, &drop_fields(false));
        template(DROP6, &drop_fields(true));
        let set_len = (out.len() - set) as u16;
        out[set + 2..set + 4].copy_from_slice(&set_len.to_be_bytes());
        finish(&mut out);
        out
    }

    /// The records as messages of at most MAX_MESSAGE bytes, one data set per run of
    /// records of one template.
    pub fn messages(&mut self, records: &[Record], export_secs: u32) -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        let mut out = Vec::new();
        let mut set: Option<(u16, usize)> = None;
        let mut one = Vec::new();
        for r in records {
            one.clear();
            r.encode(&mut one);
            let id = r.template();
            let same_set = set.is_some_and(|(s, _)| s == id);
            let need = one.len() + if same_set { 0 } else { SET_HEADER };
            if !out.is_empty() && out.len() + need > MAX_MESSAGE {
                close_set(&mut out, set.take());
                finish(&mut out);
                messages.push(std::mem::take(&mut out));
            }
            if out.is_empty() {
                self.header(&mut out, export_secs);
            }
            if set.is_none_or(|(s, _)| s != id) {
                close_set(&mut out, set.take());
                set = Some((id, out.len()));
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&0u16.to_be_bytes());
            }
            out.extend_from_slice(&one);
            self.sequence = self.sequence.wrapping_add(1);
        }
        if !out.is_empty() {
            close_set(&mut out, set);
            finish(&mut out);
            messages.push(out);
        }
        messages
    }
}

fn close_set(out: &mut [u8], set: Option<(u16, usize)>) {
    if let Some((_, at)) = set {
        let len = (out.len() - at) as u16;
        out[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn finish(out: &mut [u8]) {
    let len = out.len() as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
}

/// The exporter's socket and encoder: sends what it is given, never waiting (a full
/// socket buffer or an unreachable collector costs the message, counted).
pub struct Sender {
    socket: UdpSocket,
    encoder: Encoder,
    templates_sent: Option<Instant>,
}

/// What one `send` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub records: u64,
    pub messages: u64,
    /// Messages the socket refused (their records are lost).
    pub failed: u64,
}

impl Sender {
    pub fn new(collector: SocketAddr, domain: u32) -> Result<Self> {
        let local: SocketAddr = if collector.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = UdpSocket::bind(local).context("an IPFIX socket")?;
        socket
            .connect(collector)
            .with_context(|| format!("IPFIX collector {collector}"))?;
        socket.set_nonblocking(true)?;
        Ok(Sender {
            socket,
            encoder: Encoder::new(domain),
            templates_sent: None,
        })
    }

    pub fn send(&mut self, records: &[Record], now: Instant, export_secs: u32) -> Sent {
        let mut sent = Sent::default();
        if self
            .templates_sent
            .is_none_or(|t| now.duration_since(t) >= TEMPLATE_EVERY)
        {
            let t = self.encoder.templates(export_secs);
            if self.socket.send(&t).is_ok() {
                self.templates_sent = Some(now);
            }
        }
        if records.is_empty() {
            return sent;
        }
        for m in self.encoder.messages(records, export_secs) {
            if self.socket.send(&m).is_ok() {
                sent.messages += 1;
            } else {
                sent.failed += 1;
            }
        }
        sent.records = records.len() as u64;
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(i: u16) -> Record {
        Record::Flow(FlowRecord {
            src: format!("192.0.2.7:{}", 40000 + i).parse().unwrap(),
            dst: "198.51.100.1:80".parse().unwrap(),
            post_src: format!("192.0.2.7:{}", 40000 + i).parse().unwrap(),
            post_dst: "203.0.113.11:8080".parse().unwrap(),
            proto: 6,
            packets: 10,
            bytes: 1000,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_001_000,
            end_reason: end_reason::IDLE,
        })
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn templates_describe_every_record_kind() {
        let t = Encoder::new(7).templates(100);
        assert_eq!(u16_at(&t, 0), VERSION);
        assert_eq!(u16_at(&t, 2) as usize, t.len());
        assert_eq!(u32::from_be_bytes(t[12..16].try_into().unwrap()), 7);
        assert_eq!(u16_at(&t, 16), TEMPLATE_SET);
        assert_eq!(u16_at(&t, 18) as usize, t.len() - MESSAGE_HEADER);
        // The first template: FLOW4 with its 14 fields, the source address first.
        assert_eq!((u16_at(&t, 20), u16_at(&t, 22)), (FLOW4, 14));
        assert_eq!((u16_at(&t, 24), u16_at(&t, 26)), SRC4);
    }

    #[test]
    fn records_fill_sets_and_split_into_messages() {
        let mut e = Encoder::new(1);
        let mut records: Vec<Record> = (0..100).map(flow).collect();
        records.push(Record::Drop(DropRecord {
            src: "[2001:db8::7]:5000".parse().unwrap(),
            dst: "[2001:db8::1]:80".parse().unwrap(),
            proto: 17,
            bytes: 80,
            at_ms: 1,
            status: 0b1000_0001,
        }));
        let msgs = e.messages(&records, 100);
        let flow_len: usize = flow_fields(false).iter().map(|f| f.1 as usize).sum();
        let drop_len: usize = drop_fields(true).iter().map(|f| f.1 as usize).sum();
        let per = (MAX_MESSAGE - MESSAGE_HEADER - SET_HEADER) / flow_len;
        assert_eq!(msgs.len(), 100usize.div_ceil(per));
        let mut seen = 0;
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() <= MAX_MESSAGE);
            assert_eq!(u16_at(m, 2) as usize, m.len());
            // The sequence number: data records in the messages before.
            assert_eq!(u32::from_be_bytes(m[8..12].try_into().unwrap()), seen);
            let mut at = MESSAGE_HEADER;
            while at < m.len() {
                let (id, len) = (u16_at(m, at), u16_at(m, at + 2) as usize);
                let rec = if id == DROP6 { drop_len } else { flow_len };
                assert_eq!((len - SET_HEADER) % rec, 0, "message {i}, set {id}");
                seen += ((len - SET_HEADER) / rec) as u32;
                at += len;
            }
            assert_eq!(at, m.len());
        }
        assert_eq!(seen, 101);
        assert_eq!(e.messages(&[flow(0)], 100)[0][8..12], 101u32.to_be_bytes());
    }
}
