//! SYN-flood protection's gate: whether a service's protection is on (always, or in
//! `auto` while its new-flow rate is above its threshold), and what a packet without a
//! flow gets while it is: a SYN a cookie, a proven ACK a connection (SYN proxy or the
//! local listener), a dsr client's reset a place on the allow-list, anything else a
//! drop. No flow-table entry is made before a handshake is proven. The maps of the
//! protection live here (names in lb_common::syn).

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple, xdp_action},
    helpers::{bpf_ktime_get_coarse_ns, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::*;

use crate::{
    bounds::frame_len,
    parse::Packet,
    syncookie::{
        self, SynOpts, TH_ACK, TH_FIN, TH_RST, TH_SYN, Tcp, check_cookie, gen_cookie,
        gen_dsr_cookie, mss_index, syn_options, synack,
    },
};

#[map]
pub static XLB_SYN_CONF: Array<SynConf> = Array::with_max_entries(SYN_SLOTS, 0);

#[map]
pub static XLB_SYN_STATE: Array<SynState> = Array::with_max_entries(SYN_SLOTS, 0);

#[map]
pub static XLB_SYN_RATE: PerCpuArray<SynRate> = PerCpuArray::with_max_entries(SYN_SLOTS, 0);

#[map]
pub static XLB_SYN_STATS: PerCpuArray<SynStats> = PerCpuArray::with_max_entries(SYN_SLOTS, 0);

#[map]
pub static XLB_SYN_LOCAL: HashMap<ServiceKey, u32> = HashMap::with_max_entries(MAX_SYN_LOCAL, 0);

#[map]
pub static XLB_SYN_ALLOW: LruHashMap<SynAllowKey, u64> =
    LruHashMap::with_max_entries(MAX_SYN_ALLOW, 0);

/// Per-CPU room for the protection's larger values (the BPF stack is small), and what
/// the balancer and this program hand each other.
#[repr(C)]
pub struct SynScratch {
    /// GO_*: what the balancer asks of this program (0: nothing).
    pub go: u32,
    /// The protection slot of the service (GO_KNOWN, GO_MISS).
    pub slot: u32,
    /// RESUME_*: this program sent the packet back to the balancer (0: it did not).
    pub resume: u32,
    pub _pad: u32,
    /// GO_REPLY: the flow the balancer found for a backend's segment.
    pub reply_flow: Flow,
    /// A TCP header for the cookie helpers (copied, or made up).
    pub tcp: [u32; 15],
    /// The TCP header being written (syncookie::write_header).
    pub out: [u32; 10],
    /// A socket lookup's tuple (bpf_sock_tuple, IPv6's size).
    pub tuple: [u32; 10],
    /// A forward flow key (the SYN proxy's reply path).
    pub key: FlowKey,
    /// A proven connection's state, for the flow `schedule` makes of it.
    pub flow: SynFlow,
    /// A TCP option walk's position and findings.
    pub walk: crate::syncookie::Walk,
}

#[map]
static XLB_SYN_SCRATCH: PerCpuArray<SynScratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch space (see maps::scratch for why this is sound).
#[inline(always)]
pub fn scratch() -> Option<&'static mut SynScratch> {
    // SAFETY: this CPU's entry of a per-CPU array; an XDP program runs to completion
    // on one CPU (its tail calls too), and no reference into the entry outlives the
    // function using it.
    XLB_SYN_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Slot 0 belongs to no service: its mode is not SYN_OFF while some local (https)
/// service is protected, which makes the balancer look at MAP_SYN_LOCAL.
pub const SLOT_LOCAL: u32 = 0;

/// What the balancer hands this program: a packet of a flow the SYN proxy made
/// (client -> backend), a protected service's packet without a flow, a backend's
/// segment of a proxied flow, a packet for no layer-4 service (an https service's?).
pub const GO_KNOWN: u32 = 1;
pub const GO_MISS: u32 = 2;
pub const GO_REPLY: u32 = 3;
pub const GO_LOCAL: u32 = 4;

/// What this program hands back: schedule the flow as usual; schedule it as the
/// proven connection in scratch.flow (the packet is now the SYN to the backend); send
/// the packet on as it is now (translated), without coming here again.
pub const RESUME_SCHEDULE: u32 = 1;
pub const RESUME_PROXIED: u32 = 2;
pub const RESUME_DONE: u32 = 3;

/// Whether (and how) this program sent the packet back to the balancer.
#[inline(always)]
pub fn resumed() -> u32 {
    scratch().map_or(0, |s| s.resume)
}

/// The end of the balancer's run: nothing is handed on to the next packet.
#[inline(always)]
pub fn clear_resume() {
    if let Some(s) = scratch() {
        s.resume = 0;
        s.go = 0;
    }
}

/// Whether the balancer asked for this program.
#[inline(always)]
pub fn take_go() -> bool {
    scratch().is_some_and(|s| s.go != 0)
}

/// The balancer hands the packet to this program (`kind`, service `slot`); what it
/// returns meanwhile is never used.
#[inline(always)]
pub fn go(kind: u32, slot: u32) -> (Verdict, Reason) {
    if let Some(s) = scratch() {
        s.go = kind;
        s.slot = slot;
    }
    (Verdict::Pass, Reason::Default)
}

/// A backend's segment of flow `f` (a proxied one) to this program.
#[inline(always)]
pub fn go_reply(f: &Flow) -> (Verdict, Reason) {
    if let Some(s) = scratch() {
        s.go = GO_REPLY;
        s.reply_flow = *f;
    }
    (Verdict::Pass, Reason::Default)
}

/// A TCP packet for no layer-4 service goes to this program while an https service is
/// protected.
#[inline(always)]
pub fn go_local(pkt: &Packet) -> Option<(Verdict, Reason)> {
    if pkt.proto != IPPROTO_TCP || !local_protected() {
        return None;
    }
    Some(go(GO_LOCAL, 0))
}

#[inline(never)]
fn local_protected() -> bool {
    XLB_SYN_CONF
        .get(SLOT_LOCAL)
        .is_some_and(|c| c.mode != SYN_OFF)
}

/// Whether service `id` has protection (a TCP packet of it without a flow comes here).
#[inline(always)]
pub fn protected(id: u32, pkt: &Packet) -> bool {
    pkt.proto == IPPROTO_TCP && XLB_SYN_CONF.get(id).is_some_and(|c| c.mode != SYN_OFF)
}

/// The connection the gate proved (RESUME_PROXIED).
#[inline(always)]
pub fn proven() -> SynFlow {
    scratch().map_or(SynFlow::NONE, |s| s.flow)
}

/// on_miss: schedule the flow as usual.
pub const SCHEDULE: u32 = u32::MAX;
/// on_miss: schedule it as a proven connection of the SYN proxy (scratch.flow).
pub const PROXIED: u32 = u32::MAX - 2;

const RESUME_BIT: u32 = 1 << 30;

/// SYN-flood protection's program, entered from the balancer (`go`).
#[xdp]
pub fn xlb_syn(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let cfg = crate::maps::XLB_CONFIG.get(0).copied().unwrap_or_default();
    let passed = crate::maps::XLB_HANDOFF
        .get(0)
        .and_then(|r| Reason::ALL.get(*r as usize).copied())
        .unwrap_or(Reason::Default);
    let out = run(&ctx);
    // SCHEDULE here (a local packet that is not protection's, no scratch space) is a
    // pass with the firewall's reason; only RESUME_* goes back to the balancer.
    if out != SCHEDULE && out & RESUME_BIT != 0 {
        if let Some(s) = scratch() {
            s.resume = out & !RESUME_BIT;
        }
        unsafe { crate::maps::XLB_JUMP.tail_call(&ctx, JUMP_BALANCE) };
        clear_resume();
    }
    let (v, r) = unpack(out).unwrap_or((Verdict::Pass, passed));
    crate::count::packet(r, v, len, 0);
    if v == Verdict::Drop {
        crate::events::dropped(&ctx, r, len, &cfg);
    }
    match v {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx => xdp_action::XDP_TX,
        Verdict::Redirect => xdp_action::XDP_REDIRECT,
    }
}

#[inline(always)]
fn unpack(x: u32) -> Option<(Verdict, Reason)> {
    if x & RESUME_BIT != 0 || x == SCHEDULE {
        return None;
    }
    let v = *Verdict::ALL.get((x >> 16) as usize)?;
    let r = *Reason::ALL.get((x & 0xffff) as usize)?;
    Some((v, r))
}

#[inline(always)]
fn run(ctx: &XdpContext) -> u32 {
    let Some(s) = scratch() else {
        return SCHEDULE;
    };
    let (go, slot) = (s.go, s.slot);
    s.go = 0;
    let Some(b) = crate::maps::scratch() else {
        return SCHEDULE;
    };
    let pkt = &b.pkt;
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match go {
        GO_KNOWN => known(ctx, pkt, slot, now),
        GO_MISS => miss(ctx, pkt, slot, now),
        GO_REPLY => match crate::synproxy::from_backend(ctx, pkt, &s.reply_flow) {
            crate::synproxy::CONTINUE => RESUME_BIT | RESUME_DONE,
            out => out,
        },
        GO_LOCAL => local(ctx, pkt, now),
        _ => SCHEDULE,
    }
}

/// A client's packet of a flow the SYN proxy made: a SYN starts over (a new
/// connection on the tuple), anything else is the proxy's.
#[inline(never)]
fn known(ctx: &XdpContext, pkt: &Packet, slot: u32, now: u64) -> u32 {
    let Some(b) = crate::maps::scratch() else {
        return SCHEDULE;
    };
    let key = &b.key;
    let Some(f) = (unsafe { crate::maps::XLB_FLOWS.get(key) }) else {
        return miss(ctx, pkt, slot, now);
    };
    if is_syn(ctx, pkt) {
        let _ = crate::maps::XLB_FLOWS.remove(key);
        return miss(ctx, pkt, slot, now);
    }
    match crate::synproxy::from_client(ctx, pkt, f) {
        crate::synproxy::CONTINUE => RESUME_BIT | RESUME_DONE,
        out => out,
    }
}

/// A protected service's packet without a flow.
#[inline(never)]
fn miss(ctx: &XdpContext, pkt: &Packet, slot: u32, now: u64) -> u32 {
    match on_miss(ctx, pkt, slot, now) {
        SCHEDULE => RESUME_BIT | RESUME_SCHEDULE,
        PROXIED => {
            let Some(s) = scratch() else {
                return SCHEDULE;
            };
            match crate::synproxy::syn_to_backend(ctx, pkt, &s.flow) {
                crate::synproxy::CONTINUE => RESUME_BIT | RESUME_PROXIED,
                out => out,
            }
        }
        out => out,
    }
}

const NS: u64 = 1_000_000_000;
/// How long after protection went off an ACK may still carry a cookie (the kernel
/// takes cookies of the last two minutes).
const GRACE_NS: u64 = 180 * NS;

#[inline(always)]
fn pack(v: Verdict, r: Reason) -> u32 {
    (v as u32) << 16 | r as u32
}

#[inline(always)]
fn stats(slot: u32) -> Option<&'static mut SynStats> {
    XLB_SYN_STATS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

macro_rules! bump {
    ($slot:expr, $field:ident) => {
        if let Some(s) = stats($slot) {
            s.$field += 1;
        }
    };
}

/// Whether the packet is a TCP SYN (no ACK, RST or FIN).
#[inline(always)]
pub fn is_syn(ctx: &XdpContext, pkt: &Packet) -> bool {
    pkt.proto == IPPROTO_TCP
        && pkt.has_l4
        && crate::bounds::load::<[u8; 2]>(ctx, pkt.l4_off + 12)
            .is_some_and(|[_, f]| f & (TH_SYN | TH_ACK | TH_RST | TH_FIN) == TH_SYN)
}

/// The handshake flags of a segment: SYN, ACK, RST, FIN (PSH, URG, ECE, CWR aside).
#[inline(always)]
fn hs(t: &Tcp) -> u8 {
    t.flags & (TH_SYN | TH_ACK | TH_RST | TH_FIN)
}

/// Whether protection is on for `slot` (counting this packet as a would-be new flow
/// when `count`): SYN_ALWAYS, or SYN_AUTO while a CPU's flow-table misses in the
/// current second passed `per_cpu` less than `hold_secs` ago.
#[inline(always)]
fn active(slot: u32, conf: &SynConf, now: u64, count: bool) -> bool {
    if count && let Some(r) = XLB_SYN_RATE.get_ptr_mut(slot) {
        let r = unsafe { &mut *r };
        if now.wrapping_sub(r.window_ns) >= NS {
            r.last = r.count;
            r.count = 0;
            r.window_ns = now;
        }
        r.count += 1;
        if conf.mode == SYN_AUTO
            && r.count == conf.per_cpu.wrapping_add(1)
            && let Some(st) = XLB_SYN_STATE.get_ptr_mut(slot)
        {
            // Once a window per CPU: a shared line written rarely.
            let st = unsafe { &mut *st };
            if now >= st.until_ns {
                st.since_ns = now;
            }
            st.until_ns = now + conf.hold_secs as u64 * NS;
            st.peak = r.count as u64;
        }
    }
    if conf.mode == SYN_ALWAYS {
        return true;
    }
    XLB_SYN_STATE.get(slot).is_some_and(|st| now < st.until_ns)
}

#[inline(always)]
fn in_grace(slot: u32, now: u64) -> bool {
    XLB_SYN_STATE
        .get(slot)
        .is_some_and(|st| st.until_ns != 0 && now < st.until_ns + GRACE_NS)
}

/// A packet to layer-4 service `slot` (its id) that has no flow: SCHEDULE, PROXIED
/// (scratch.flow holds the proven connection), or a packed verdict.
#[inline(never)]
pub fn on_miss(ctx: &XdpContext, pkt: &Packet, slot: u32, now: u64) -> u32 {
    if pkt.proto != IPPROTO_TCP || !pkt.has_l4 {
        return SCHEDULE;
    }
    let Some(conf) = XLB_SYN_CONF.get(slot) else {
        return SCHEDULE;
    };
    if conf.mode == SYN_OFF {
        return SCHEDULE;
    }
    let Some(t) = syncookie::tcp(ctx, pkt) else {
        return SCHEDULE;
    };
    let on = active(slot, conf, now, true);
    if conf.kind == SYN_KIND_DSR {
        return dsr(ctx, pkt, slot, conf, &t, on, now);
    }
    let flags = hs(&t);
    if !on {
        // Cookies sent just before protection went off are still honoured.
        if flags == TH_ACK && in_grace(slot, now) && prove(ctx, pkt, &t) {
            bump!(slot, cookies_valid);
            return PROXIED;
        }
        return SCHEDULE;
    }
    match flags {
        TH_SYN => match cookie_synack(ctx, pkt, conf, &t, 0) {
            Some(()) => {
                bump!(slot, cookies_sent);
                pack(Verdict::Tx, Reason::SynCookie)
            }
            None => pack(Verdict::Drop, Reason::SynCookieBad),
        },
        TH_ACK => {
            if prove(ctx, pkt, &t) {
                bump!(slot, cookies_valid);
                PROXIED
            } else {
                bump!(slot, cookies_refused);
                pack(Verdict::Drop, Reason::SynCookieBad)
            }
        }
        _ => {
            bump!(slot, no_flow);
            pack(Verdict::Drop, Reason::SynNoFlow)
        }
    }
}

/// Answers a SYN with a cookie SYN-ACK of window `window`.
#[inline(always)]
fn cookie_synack(
    ctx: &XdpContext,
    pkt: &Packet,
    conf: &SynConf,
    t: &Tcp,
    window: u16,
) -> Option<()> {
    let g = gen_cookie(ctx, pkt, t.doff);
    if g == 0 {
        return None;
    }
    let cookie = g as u32;
    let idx = mss_index(pkt.is_v6(), (g >> 32) as u16);
    let o: SynOpts = syn_options(ctx, pkt, t.doff);
    synack(
        ctx,
        pkt,
        cookie,
        t.seq.wrapping_add(1),
        window,
        Some((&o, conf, idx)),
    )
}

/// Whether an ACK without a flow proves a cookie: the third ACK of a handshake, or a
/// zero-window probe after it (its sequence number one less: the SYN proxy's cookies
/// announce a zero window); on success scratch.flow holds the connection for the SYN
/// proxy, the client's options decoded from the timestamp it echoes.
#[inline(never)]
fn prove(ctx: &XdpContext, pkt: &Packet, t: &Tcp) -> bool {
    let isn = if check_cookie(ctx, pkt, 0, 0, false) {
        t.seq.wrapping_sub(1)
    } else if check_cookie(ctx, pkt, t.seq.wrapping_add(1), t.ack, true) {
        t.seq
    } else {
        return false;
    };
    let Some(s) = scratch() else {
        return false;
    };
    let (ts_off, _, _) = unpack_scan(syncookie::scan_options(ctx, pkt.l4_off, t.doff));
    let mut opts = SYN_WS_NONE;
    let mut echoed = 0;
    if ts_off != 0
        && let Some(b) = crate::bounds::load::<[u8; 4]>(ctx, ts_off + 4)
    {
        echoed = u32::from_be_bytes(b);
        opts = (echoed as u8 & (SYN_OPT_WS_MASK | SYN_OPT_SACK | 0xc0)) | SYN_OPT_TS;
    } else {
        // No timestamp: no window scaling or SACK; the MSS is the one whose cookie
        // this is (made this minute), else the smallest.
        opts |= guess_mss(ctx, pkt, isn, t.ack.wrapping_sub(1)) << SYN_OPT_MSS_SHIFT;
    }
    s.flow = SynFlow {
        state: SYN_FLOW_SYN_SENT,
        opts,
        c2b_shl: 0,
        b2c: 0,
        seq: t.ack.wrapping_sub(1),
        ts: echoed,
        isn: isn.wrapping_add(1),
    };
    true
}

/// The MSS index a cookie without timestamp carries: the one whose cookie for a SYN
/// with that MSS is `cookie` (the kernel's counter is per minute, so a cookie of an
/// earlier minute is not found: index 0).
#[inline(always)]
fn guess_mss(ctx: &XdpContext, pkt: &Packet, isn: u32, cookie: u32) -> u8 {
    let v6 = pkt.is_v6();
    let mut i = 3u8;
    loop {
        if gen_for_mss(ctx, pkt, isn, syncookie::mss_of(v6, i)) == cookie as u64 | 1 << 63 {
            return i;
        }
        if i == 0 {
            return 0;
        }
        i -= 1;
    }
}

/// The cookie of a made-up SYN (sequence number `isn`, MSS `mss`) of this packet's
/// ends, without the MSS part (low 32 bits | bit 63).
#[inline(never)]
fn gen_for_mss(ctx: &XdpContext, pkt: &Packet, isn: u32, mss: u16) -> u64 {
    let Some(s) = scratch() else {
        return 0;
    };
    let Some(w0) = crate::bounds::load_w32(ctx, pkt.l4_off) else {
        return 0;
    };
    s.tcp[0] = w0;
    s.tcp[1] = isn.to_be();
    s.tcp[2] = 0;
    s.tcp[3] = u16::from_ne_bytes([6 << 4, TH_SYN]) as u32;
    s.tcp[4] = 0;
    s.tcp[5] = (2u32 << 24 | 4 << 16 | mss as u32).to_be();
    let th = s.tcp.as_mut_ptr() as *mut aya_ebpf::bindings::tcphdr;
    let r = if pkt.is_v6() {
        let Some(ip) = crate::bounds::ptr_at::<[u8; IPV6_HLEN]>(ctx, pkt.l3_off) else {
            return 0;
        };
        unsafe { aya_ebpf::helpers::bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut _, th, 24) }
    } else {
        let Some(ip) = crate::bounds::ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, pkt.l3_off) else {
            return 0;
        };
        unsafe { aya_ebpf::helpers::bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut _, th, 24) }
    };
    if r < 0 {
        return 0;
    }
    (r as u64 & 0xffff_ffff) | 1 << 63
}

/// syncookie::scan_options' packed offsets: (timestamp value, first SACK block,
/// blocks).
#[inline(always)]
pub fn unpack_scan(x: u64) -> (usize, usize, usize) {
    (
        (x & 0xffff) as usize,
        ((x >> 16) & 0xffff) as usize,
        ((x >> 32) & 0xff) as usize,
    )
}

/// A dsr service's packet without a flow: an allow-listed source's flows are made as
/// usual; a SYN gets a SYN-ACK whose ACK number is a cookie (the client's stack
/// refuses it with a reset carrying it); a reset with a good cookie allow-lists its
/// source.
#[inline(always)]
fn dsr(
    ctx: &XdpContext,
    pkt: &Packet,
    slot: u32,
    conf: &SynConf,
    t: &Tcp,
    on: bool,
    now: u64,
) -> u32 {
    if !on {
        return SCHEDULE;
    }
    let Some((family, src, _)) = pkt.addrs() else {
        return SCHEDULE;
    };
    let key = SynAllowKey {
        addr: src,
        slot,
        family,
        _pad: [0; 3],
    };
    let flags = hs(t);
    let key = &key;
    if let Some(seen) = XLB_SYN_ALLOW.get_ptr_mut(key) {
        let seen = unsafe { &mut *seen };
        if now.wrapping_sub(*seen) < conf.allow_secs as u64 * NS {
            if flags == TH_SYN {
                bump!(slot, allowed);
                if now.wrapping_sub(*seen) > NS {
                    *seen = now;
                }
            }
            return SCHEDULE;
        }
    }
    if flags == TH_SYN {
        let g = gen_dsr_cookie(ctx, pkt);
        if g == 0 {
            return pack(Verdict::Drop, Reason::SynCookieBad);
        }
        let cookie = g as u32;
        return match synack(ctx, pkt, cookie, cookie, 0, None) {
            Some(()) => {
                bump!(slot, cookies_sent);
                pack(Verdict::Tx, Reason::SynCookie)
            }
            None => pack(Verdict::Drop, Reason::SynCookieBad),
        };
    }
    if flags & TH_RST != 0 {
        if check_cookie(ctx, pkt, 1, t.seq.wrapping_add(1), true) {
            let _ = XLB_SYN_ALLOW.insert(key, now, 0);
            bump!(slot, cookies_valid);
            return pack(Verdict::Drop, Reason::SynCookieOk);
        }
        bump!(slot, cookies_refused);
        return pack(Verdict::Drop, Reason::SynCookieBad);
    }
    if flags == TH_ACK {
        bump!(slot, cookies_refused);
        return pack(Verdict::Drop, Reason::SynCookieBad);
    }
    bump!(slot, no_flow);
    pack(Verdict::Drop, Reason::SynNoFlow)
}

/// A packet that is no layer-4 service's: if it is for a protected local (https)
/// service, what protection does with it (SCHEDULE: on to the kernel).
#[inline(never)]
fn local(ctx: &XdpContext, pkt: &Packet, now: u64) -> u32 {
    match local_inner(ctx, pkt, now) {
        Some((v, r)) => pack(v, r),
        None => SCHEDULE,
    }
}

#[inline(always)]
fn local_inner(ctx: &XdpContext, pkt: &Packet, now: u64) -> Option<(Verdict, Reason)> {
    if pkt.proto != IPPROTO_TCP || !pkt.has_l4 {
        return None;
    }
    if XLB_SYN_CONF.get(SLOT_LOCAL)?.mode == SYN_OFF {
        return None;
    }
    let (family, _, dst) = pkt.addrs()?;
    let key = ServiceKey {
        addr: dst,
        port: pkt.dst_port,
        proto: IPPROTO_TCP,
        family,
    };
    let key = &key;
    let slot = *unsafe { XLB_SYN_LOCAL.get(key) }?;
    let conf = XLB_SYN_CONF.get(slot)?;
    if conf.mode == SYN_OFF {
        return None;
    }
    let t = syncookie::tcp(ctx, pkt)?;
    let flags = hs(&t);
    if flags == TH_SYN {
        if !active(slot, conf, now, true) {
            return None;
        }
        // Now and then a SYN goes to the kernel, whose own cookie for it keeps its
        // cookie check open.
        if let Some(st) = XLB_SYN_STATE.get_ptr_mut(slot) {
            let st = unsafe { &mut *st };
            if now.wrapping_sub(st.kernel_ns) > SYN_KERNEL_EVERY_NS {
                st.kernel_ns = now;
                bump!(slot, kernel_syns);
                return None;
            }
        }
        return match cookie_synack(ctx, pkt, conf, &t, 64240) {
            Some(()) => {
                bump!(slot, cookies_sent);
                Some((Verdict::Tx, Reason::SynCookie))
            }
            None => Some((Verdict::Drop, Reason::SynCookieBad)),
        };
    }
    if !active(slot, conf, now, false) {
        return None;
    }
    if !listener_only(ctx, pkt)? {
        return None;
    }
    if flags == TH_ACK {
        if check_cookie(ctx, pkt, 0, 0, false) {
            bump!(slot, cookies_valid);
            return Some((Verdict::Pass, Reason::SynCookieOk));
        }
        bump!(slot, cookies_refused);
        return Some((Verdict::Drop, Reason::SynCookieBad));
    }
    bump!(slot, no_flow);
    Some((Verdict::Drop, Reason::SynNoFlow))
}

const TCP_LISTEN: u32 = 10;

/// Some(true) when the kernel has a listener for the packet but no connection (an
/// ACK for it must be a cookie's); Some(false) when it has a connection (or no
/// socket at all: the kernel answers that itself).
#[inline(never)]
fn listener_only(ctx: &XdpContext, pkt: &Packet) -> Option<bool> {
    let s = scratch()?;
    let (family, src, dst) = pkt.addrs()?;
    let size = if family == FAMILY_V4 {
        s.tuple[0] = src.0[0];
        s.tuple[1] = dst.0[0];
        s.tuple[2] = (pkt.src_port.to_be() as u32) | (pkt.dst_port.to_be() as u32) << 16;
        12
    } else {
        s.tuple[..4].copy_from_slice(&src.0);
        s.tuple[4..8].copy_from_slice(&dst.0);
        s.tuple[8] = (pkt.src_port.to_be() as u32) | (pkt.dst_port.to_be() as u32) << 16;
        36
    };
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut _,
            s.tuple.as_mut_ptr() as *mut bpf_sock_tuple,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return Some(false);
    }
    let state = unsafe { (*(sk as *const bpf_sock)).state };
    unsafe { bpf_sk_release(sk as *mut _) };
    Some(state == TCP_LISTEN)
}
