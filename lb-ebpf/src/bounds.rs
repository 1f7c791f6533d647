//! The one place that turns a packet offset into a pointer.

use aya_ebpf::programs::XdpContext;
use lb_common::Addr16;

/// Headers are parsed only within the first MAX_HEADER_BYTES of a frame. The bound also
/// tells the verifier the largest offset a pointer can have.
pub const MAX_HEADER_BYTES: usize = 1024;
const OFFSET_MASK: usize = 2047;

/// A pointer to a `T` at `off` bytes into the frame (use it for types of 2 bytes or
/// more: LLVM turns a 1-byte check into `ptr >= end`, which the verifier cannot use), or `None` if any byte of it lies
/// past `data_end` (or past MAX_HEADER_BYTES).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    if off > MAX_HEADER_BYTES {
        return None;
    }
    // Hide the offset's provenance from LLVM: otherwise it folds several accesses into
    // one base pointer with constant displacements, whose range the verifier cannot
    // follow (a "negative minimum" of the shared base). The mask, a no-op for offsets
    // that passed the check, gives the verifier the range back.
    let mut off = off;
    unsafe { core::arch::asm!("/* {0} */", inout(reg) off) };
    let off = off & OFFSET_MASK;
    let start = ctx.data() + off;
    if start + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(start as *const T)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// A writable pointer to a `T` at `off`, under the same checks as `ptr_at`.
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}

/// Reads a `T` at `off` (unaligned).
#[inline(always)]
pub fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    ptr_at::<T>(ctx, off).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Reads the 16-bit word at `off` in one load. Header fields xlb rewrites sit at even
/// offsets (Ethernet, VLAN tags, IP options and extension headers all come in even
/// sizes) of a frame that starts aligned, so the read is aligned.
#[inline(always)]
pub fn load_u16(ctx: &XdpContext, off: usize) -> Option<u16> {
    ptr_at::<u16>(ctx, off).map(|p| unsafe { core::ptr::read(p) })
}

#[inline(always)]
pub fn store_u16(ctx: &XdpContext, off: usize, v: u16) -> Option<()> {
    ptr_at_mut::<u16>(ctx, off).map(|p| unsafe { core::ptr::write(p, v) })
}

/// Reads 4 bytes at an even `off` as the native view of their network-order bytes
/// (two 16-bit loads: the offset may not be 4-aligned).
#[inline(always)]
pub fn load_w32(ctx: &XdpContext, off: usize) -> Option<u32> {
    let w = ptr_at::<[u16; 2]>(ctx, off).map(|p| unsafe { core::ptr::read(p) })?;
    Some(unsafe { core::mem::transmute::<[u16; 2], u32>(w) })
}

#[inline(always)]
pub fn store_w32(ctx: &XdpContext, off: usize, v: u32) -> Option<()> {
    let w = unsafe { core::mem::transmute::<u32, [u16; 2]>(v) };
    ptr_at_mut::<[u16; 2]>(ctx, off).map(|p| unsafe { core::ptr::write(p, w) })
}

/// Reads a 16-byte address at an even `off` (eight 16-bit loads).
#[inline(always)]
pub fn load_addr16(ctx: &XdpContext, off: usize) -> Option<Addr16> {
    let w = ptr_at::<[u16; 8]>(ctx, off).map(|p| unsafe { core::ptr::read(p) })?;
    Some(Addr16(unsafe {
        core::mem::transmute::<[u16; 8], [u32; 4]>(w)
    }))
}

/// Writes a `T` at `off` (unaligned).
#[inline(always)]
pub fn store<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Option<()> {
    ptr_at_mut::<T>(ctx, off).map(|p| unsafe { core::ptr::write_unaligned(p, v) })
}
