//! Memory-mapped BPF arrays: user space writes the big lookup tables (DIR-24-8, the
//! port table, the Maglev pool) in place, with atomic stores, instead of a syscall per
//! entry.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU32, AtomicU64},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData};

/// A shared memory view of an mmapable BPF array, written with atomic 32-bit stores so
/// the program always reads either the old or the new value of an entry.
pub struct MmapTable {
    ptr: *mut AtomicU32,
    words: usize,
}

// SAFETY: the mapping lives as long as the value and is only accessed through atomics.
unsafe impl Send for MmapTable {}
unsafe impl Sync for MmapTable {}

impl MmapTable {
    pub fn new(map: &Map, bytes: usize) -> Result<Self> {
        let data: &MapData = match map {
            Map::Array(d) => d,
            _ => bail!("expected an array map"),
        };
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array of exactly its size, shared.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of a BPF array");
        }
        Ok(MmapTable {
            ptr: ptr.cast(),
            words: bytes / 4,
        })
    }

    pub fn words(&self) -> &[AtomicU32] {
        // SAFETY: ptr maps `words` u32s for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.words) }
    }

    pub fn words64(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page aligned and holds words / 2 u64s.
        unsafe { std::slice::from_raw_parts(self.ptr.cast(), self.words / 2) }
    }
}

impl Drop for MmapTable {
    fn drop(&mut self) {
        // SAFETY: unmapping what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.words * 4) };
    }
}
