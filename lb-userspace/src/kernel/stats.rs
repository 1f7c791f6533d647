//! Bulk reads of kernel maps for statistics (metrics, `xlb stats`, `xlb top`):
//! BPF_MAP_LOOKUP_BATCH walks a map in chunks, one syscall per chunk instead of one
//! per entry, so a scrape stays cheap with tens of thousands of backends or flows.

use std::os::fd::RawFd;

use anyhow::{Context, Result};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per syscall.
const CHUNK: usize = 4096;

/// The batch part of union bpf_attr.
#[repr(C)]
struct Batch {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Walks every entry of the map `fd` (keys of `key_size` bytes, values of `value_size`
/// bytes as the syscall lays them out: per-CPU values are `round_up(size, 8) * ncpus`),
/// calling `f(key, value)` for each. Stops early once `limit` entries were seen.
pub fn walk(
    fd: RawFd,
    key_size: usize,
    value_size: usize,
    limit: usize,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<()> {
    let mut keys = vec![0u8; CHUNK * key_size];
    let mut values = vec![0u8; CHUNK * value_size];
    // The batch position: a key for arrays, a bucket number for hash maps; 64 bytes
    // hold either.
    let mut token_in = [0u8; 64];
    let mut token_out = [0u8; 64];
    let mut seen = 0usize;
    let mut first = true;
    while seen < limit {
        let want = CHUNK.min(limit - seen);
        let mut attr = Batch {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: attr points at buffers sized for `want` keys and values, and at
        // 64-byte batch tokens (larger than any key or bucket number of these maps).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut Batch,
                std::mem::size_of::<Batch>(),
            )
        };
        let err = std::io::Error::last_os_error();
        // ENOENT: the walk is over (the last chunk may still hold entries).
        let done = rc != 0 && err.raw_os_error() == Some(libc::ENOENT);
        if rc != 0 && !done {
            return Err(err).context("BPF_MAP_LOOKUP_BATCH");
        }
        let n = attr.count as usize;
        for i in 0..n {
            f(
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * value_size..(i + 1) * value_size],
            );
        }
        seen += n;
        if done || n == 0 {
            break;
        }
        token_in = token_out;
        first = false;
    }
    Ok(())
}

/// Entries `0..end` of a per-CPU array of `T`, each summed over CPUs with `add`.
pub fn per_cpu_array_sums<T: bytemuck::Pod + Default>(
    fd: RawFd,
    end: u32,
    ncpus: usize,
    mut add: impl FnMut(&mut T, &T),
) -> Result<Vec<T>> {
    let stride = std::mem::size_of::<T>().div_ceil(8) * 8;
    let mut out = vec![T::default(); end as usize];
    walk(fd, 4, stride * ncpus, end as usize, |k, v| {
        let key = u32::from_ne_bytes(k.try_into().expect("4-byte key")) as usize;
        if let Some(sum) = out.get_mut(key) {
            for cpu in 0..ncpus {
                let x: T = bytemuck::pod_read_unaligned(
                    &v[cpu * stride..cpu * stride + std::mem::size_of::<T>()],
                );
                add(sum, &x);
            }
        }
    })?;
    Ok(out)
}
