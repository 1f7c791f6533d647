//! The one place that turns a packet offset into a pointer.

use aya_ebpf::programs::XdpContext;

/// Headers are parsed only within the first MAX_HEADER_BYTES of a frame. The bound also
/// tells the verifier the largest offset a pointer can have.
pub const MAX_HEADER_BYTES: usize = 1024;

/// A pointer to a `T` at `off` bytes into the frame, or `None` if any byte of it lies
/// past `data_end` (or past MAX_HEADER_BYTES).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    if off > MAX_HEADER_BYTES {
        return None;
    }
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
