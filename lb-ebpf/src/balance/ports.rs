//! fullnat source ports: a new flow claims one in a slot of XLB_NAT_PORTS (the block its
//! reply tuple hashes to, slot = port) by compare-and-swap; its replies find the flow
//! through that slot, and a known flow checks now and then that the slot is still its.

use core::{
    intrinsics::{AtomicOrdering, atomic_and, atomic_cxchg, atomic_or},
    sync::atomic::{Ordering, compiler_fence},
};

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::*;

use super::{hash_addr, idle_secs, is_forward_of, reply_key};
use crate::maps::{
    Scratch, Victim, XLB_BACKENDS, XLB_FLOWS, XLB_NAT_PORTS, XLB_SERVICE_KEYS, XLB_SNAT, scratch,
};

/// The XLB_NAT_PORTS slot of a fullnat reply tuple: slot `port` of the block of 65536
/// that the rest of the tuple (backend end, xlb's address, protocol) hashes to. Ports
/// come from a per-CPU cursor, one after another (claim_port): in a block, one flow's
/// slot follows the last one's, in cache lines and pages the claims before it just
/// touched, where a hash of the whole tuple would touch a cold line of a 32 MiB array
/// for every flow. Backends whose tuples share a block share its ports.
#[inline(always)]
pub(super) fn nat_slot(reply: &FlowKey) -> u32 {
    let h = hash_addr(hash_addr(0x5bd1_e995, &reply.src), &reply.dst);
    let block = mix32(h ^ (reply.src_port as u32) << 16 ^ (reply.proto as u32) << 8);
    (block & (NAT_PORT_SLOTS / 65536 - 1)) << 16 | reply.dst_port as u32
}

/// A slot's claim word (NatPort::claim), read before the rest of the slot by a reader
/// that only checks a slot: an ordinary load (BPF has atomic loads only from cpu v4),
/// kept before the reads of the slot's fields by a compiler fence. A claimer reads it
/// with a full barrier instead (probe).
#[inline(always)]
pub(super) fn load_claim(slot: *mut NatPort) -> u64 {
    let c = unsafe { core::ptr::read_volatile(&raw const (*slot).claim) };
    compiler_fence(Ordering::Acquire);
    c
}

/// Compare-and-swap of a slot's claim word (BPF_CMPXCHG, kernel 5.12+). Through the
/// intrinsic: core's AtomicU64 has no read-modify-write methods on the bpf target (its
/// spec declares no compare-and-swap), though LLVM emits the instruction.
#[inline(always)]
fn swap_claim(slot: *mut NatPort, old: u64, new: u64) -> bool {
    let p = unsafe { &raw mut (*slot).claim };
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new)
    }
    .1
}

/// A fullnat flow keeps its port only while its slot still holds it (a slot whose flow
/// was evicted may have gone to another flow); if it does, the slot's time is
/// refreshed with the flow's.
#[inline(always)]
pub(super) fn reply_intact(f: &Flow, b: &Backend, key: &FlowKey, now: u64) -> bool {
    let Some(scratch) = scratch() else {
        return false;
    };
    let Some(snat) = XLB_SNAT.get(f.service) else {
        return false;
    };
    scratch.reply = reply_key(b, key, snat, f.nat_port);
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(nat_slot(&scratch.reply)) else {
        return false;
    };
    let claim = load_claim(slot);
    let held = unsafe { &*slot };
    let intact = claim & NAT_PORT_BUSY == 0
        && claim as u32 == f.backend
        && held.nat_port == f.nat_port
        && held.client == key.src
        && held.client_port == key.src_port
        && held.vport == key.dst_port;
    if intact {
        unsafe { (*slot).seen = ticks(now) };
    }
    intact
}

/// The flow holding a claimed slot (`id`: the backend in its claim word): the forward
/// entry with the slot's client end and service port, if it is a fullnat flow of that
/// backend, of its generation, with the slot's port. Its key is left in scratch.reply.
#[inline(always)]
pub(super) fn slot_flow(slot: &NatPort, id: u32) -> Option<(&'static mut Flow, &'static Backend)> {
    let b = XLB_BACKENDS.get(id)?;
    let vip = XLB_SERVICE_KEYS.get(b.service)?;
    let scratch = scratch()?;
    scratch.reply = FlowKey {
        src: slot.client,
        dst: vip.addr,
        src_port: slot.client_port,
        dst_port: slot.vport,
        proto: vip.proto,
        family: vip.family,
        _pad: [0; 2],
    };
    let f = unsafe { &mut *XLB_FLOWS.get_ptr_mut(&scratch.reply)? };
    if !is_forward_of(f, MODE_FULLNAT, id, b) || f.nat_port != slot.nat_port {
        return None;
    }
    Some((f, b))
}

/// Claims a source port for a new fullnat flow (to backend `id`): the first candidate
/// whose slot no live flow holds, so two flows never share a (backend, port) pair. If
/// every candidate is held (the backends' ports are exhausted), the one whose flow has
/// been quiet longest, if quiet for NAT_PORT_STEAL_TICKS (see NatPort::seen). The flow
/// is scratch.key. Returns the port, 0 if none.
///
/// Ports come from a per-CPU cursor, one after another: a port comes round again only
/// after every other port has been handed out on that CPU, so it goes to the flow that
/// has had the longest to end, and a block's slots are written in order (nat_slot).
/// After a held port the cursor jumps to a random one (another CPU's cursor, or a
/// stretch of long-lived flows, may be just ahead).
#[inline(always)]
pub(super) fn claim_port(svc: &Service, id: u32, now: u64) -> u32 {
    let (Some(snat), Some(b), Some(scratch)) =
        (XLB_SNAT.get(svc.id), XLB_BACKENDS.get(id), scratch())
    else {
        return 0;
    };
    // The flow's key is read while the other fields are written.
    let Scratch {
        key,
        reply,
        nat_cursor,
        victim,
        ..
    } = scratch;
    let key = &*key;
    let idle = idle_secs(svc, key.proto);
    // Seconds as ticks of 1.07 s: a slot older than this has outlived its flow.
    let limit = idle.min(u16::MAX as u32 - 1) as u16;
    let now_t = ticks(now);
    if *nat_cursor == 0 {
        // The first claim on this CPU since the program was loaded: CPUs start apart.
        *nat_cursor = unsafe { bpf_get_prandom_u32() } | 1;
    }
    let span = 65536 - FULLNAT_PORT_MIN as u32;
    // The quietest held candidate (in scratch: the stack is full).
    victim.age = 0;
    // Flow-table lookups left (probe): with the ports exhausted every candidate would
    // cost one, so later candidates recently refreshed count as held without one.
    let mut lookups = FULLNAT_PORT_LOOKUPS;
    let mut i = 0;
    while i < FULLNAT_PORT_TRIES {
        let port = FULLNAT_PORT_MIN + (*nat_cursor % span) as u16;
        *reply = reply_key(b, key, snat, port);
        let slot = nat_slot(reply);
        let (word, held) = probe(slot, svc.id, limit, now_t, &mut lookups);
        match held {
            None => {
                if take(slot, word, id, key, port, now_t) {
                    *nat_cursor = nat_cursor.wrapping_add(1);
                    return port as u32;
                }
            }
            Some(age) if age >= NAT_PORT_STEAL_TICKS && age > victim.age => {
                *victim = Victim {
                    word,
                    slot,
                    port,
                    age,
                };
            }
            Some(_) => {}
        }
        *nat_cursor = unsafe { bpf_get_prandom_u32() };
        i += 1;
    }
    let v = &*victim;
    if v.age != 0 && take(v.slot, v.word, id, key, v.port, now_t) {
        return v.port as u32;
    }
    0
}

/// NatPort::seen's clock: ticks of 2^30 ns (1.07 s), wrapping at 16 bits (19.5 hours).
#[inline(always)]
pub(super) fn ticks(now: u64) -> u16 {
    (now >> 30) as u16
}

/// Reads slot `i` for a claim by a flow of service `svc` (idle timeout `limit` ticks):
/// its claim word, and if a live flow holds it, how many ticks since that flow's last
/// refresh (0 while another CPU is claiming it). Free: never claimed, its flow idle
/// past `limit` (a flow of this service: it is rescheduled on its next packet), or its
/// flow gone (slot_flow, while `lookups` last; after that the slot counts as held).
#[inline(always)]
fn probe(i: u32, svc: u32, limit: u16, now_t: u16, lookups: &mut u32) -> (u64, Option<u16>) {
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(i) else {
        return (0, Some(0));
    };
    // A fetching atomic or of 0 (BPF_FETCH): the read is ordered before the reads of
    // the slot's fields on every architecture, which an ordinary load is not.
    let word =
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).claim, 0) };
    if word == 0 {
        return (word, None);
    }
    if word & NAT_PORT_BUSY != 0 {
        return (word, Some(0));
    }
    let slot = unsafe { &*slot };
    let age = now_t.wrapping_sub(slot.seen);
    let same_service = XLB_BACKENDS
        .get(word as u32)
        .is_some_and(|b| b.service == svc);
    if same_service && age > limit {
        return (word, None);
    }
    if *lookups == 0 {
        return (word, Some(age));
    }
    *lookups -= 1;
    match slot_flow(slot, word as u32) {
        None => (word, None),
        Some(_) => (word, Some(age)),
    }
}

/// Takes slot `i`, read as `old`, for flow `key` (to backend `id`, source port `port`).
/// The claim word goes from `old` to BUSY and back by compare-and-swap: of two CPUs
/// taking one slot only one succeeds, and a third sees BUSY (held) while the winner
/// writes the rest.
#[inline(always)]
fn take(i: u32, old: u64, id: u32, key: &FlowKey, port: u16, now_t: u16) -> bool {
    let Some(slot) = XLB_NAT_PORTS.get_ptr_mut(i) else {
        return false;
    };
    // A new claim count (31 bits, wrapping), so the word differs from every value the
    // slot held lately, even for the same backend.
    let count = ((old >> 32) + 1) & 0x7fff_ffff;
    let busy = count << 32 | NAT_PORT_BUSY | id as u64;
    if !swap_claim(slot, old, busy) {
        return false;
    }
    unsafe {
        (*slot).client = key.src;
        (*slot).client_port = key.src_port;
        (*slot).vport = key.dst_port;
        (*slot).nat_port = port;
        (*slot).seen = now_t;
        atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).claim, !NAT_PORT_BUSY);
    }
    true
}
