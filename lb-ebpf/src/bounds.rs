//! The one place that turns a packet offset into a pointer.

use aya_ebpf::programs::XdpContext;

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

/// Writes a `T` at `off` (unaligned).
#[inline(always)]
pub fn store<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Option<()> {
    ptr_at_mut::<T>(ctx, off).map(|p| unsafe { core::ptr::write_unaligned(p, v) })
}
