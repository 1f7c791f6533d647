//! The daemon's bpffs directory: what one run leaves for the next, so a restart, an
//! upgrade or a crash never stops the datapath.
//!
//! Layout of the directory (`xlb run --bpffs DIR`):
//! - `XLB_FLOWS`, `XLB_COUNTERS`, ... : every map of [`STATE_MAPS`], pinned by name. The
//!   next run loads its program against these same maps (flows, rules, counters kept).
//! - `jump_<program id>`: the program array of the program with that id. The kernel
//!   empties a program array when its last file descriptor and pin go, so each build
//!   that may still be attached keeps its own pinned until it is replaced everywhere.
//! - `link_<interface>_<mode>`: the XDP link on each interface (bpffs refuses dots in
//!   names, so a dot of an interface name is written `%`, which no interface name has). A pinned link stays
//!   attached with no process holding it; the next run swaps its own program into it
//!   (BPF_LINK_UPDATE: atomic, no packet sees an empty hook).
//!
//! A run holds an exclusive lock on the directory for its lifetime: two daemons never
//! manage one datapath, and `xlb down` only clears a directory nobody runs on.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::maps::MapInfo;
use lb_common::STATE_MAPS;
use tracing::warn;

use crate::model::interface::AttachMode;

/// The magic number of a bpffs mount (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const JUMP_PREFIX: &str = "jump_";
const LINK_PREFIX: &str = "link_";

/// Checks that `dir`'s nearest existing ancestor is on a bpffs.
pub fn check_bpffs(dir: &Path) -> Result<()> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, st a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "bpffs is not mounted at {} (needed for {}): run `mount -t bpf bpf {}` or `cargo xtask setup`",
            probe.display(),
            dir.display(),
            probe.display()
        );
    }
    Ok(())
}

/// A pinned XDP link found in the directory.
pub struct PinnedLink {
    pub iface: String,
    pub mode: AttachMode,
    pub path: PathBuf,
}

/// The locked pin directory of one run.
pub struct PinDir {
    dir: PathBuf,
    /// Holds the flock until the run ends.
    _lock: File,
}

impl PinDir {
    /// Creates (if needed) and locks `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Self> {
        check_bpffs(dir)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another xlb daemon is running on {} (one datapath, one daemon: stop it, or give --bpffs another directory)",
                dir.display()
            );
        }
        Ok(PinDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the state map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Compares the pinned state maps with a build's map definitions (`maps`, parsed
    /// from its object): the number of maps found, or why they cannot be reused (a
    /// build whose map layout differs: another type, key or value size, size or flags).
    pub fn check_maps(&self, maps: &HashMap<String, aya_obj::Map>) -> Result<usize, String> {
        let mut found = 0;
        for name in STATE_MAPS {
            let path = self.map(name);
            if !path.exists() {
                continue;
            }
            let def = maps
                .get(name)
                .ok_or_else(|| format!("this build has no map {name}"))?;
            let info = MapInfo::from_pin(&path)
                .map_err(|e| format!("the pin {} is not a readable map: {e}", path.display()))?;
            let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
            let have = (
                pinned_type,
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                info.map_flags(),
            );
            let want = (
                def.map_type(),
                def.key_size(),
                def.value_size(),
                def.max_entries(),
                def.map_flags(),
            );
            if have != want {
                return Err(format!(
                    "the pinned map {name} has another layout than this build's (type, key, value, entries, flags: {have:?} pinned, {want:?} here)"
                ));
            }
            found += 1;
        }
        Ok(found)
    }

    /// Pins `map` at `path` (a state map's or a program array's), replacing what was
    /// pinned there.
    pub fn replace_pin(&self, path: &Path, map: &aya::maps::Map) -> Result<()> {
        let _ = std::fs::remove_file(path);
        map.pin(path)
            .with_context(|| format!("pinning a map at {}", path.display()))
    }

    /// Removes the state maps' pins (the maps go with the last program using them).
    pub fn remove_maps(&self) {
        for name in STATE_MAPS {
            let _ = std::fs::remove_file(self.map(name));
        }
    }

    /// Where the program array of program `prog_id` is pinned.
    pub fn jump(&self, prog_id: u32) -> PathBuf {
        self.dir.join(format!("{JUMP_PREFIX}{prog_id}"))
    }

    /// The pinned program arrays: (program id, path).
    pub fn jumps(&self) -> Vec<(u32, PathBuf)> {
        self.entries()
            .filter_map(|(name, path)| {
                let id = name.strip_prefix(JUMP_PREFIX)?.parse().ok()?;
                Some((id, path))
            })
            .collect()
    }

    /// Where the link on `iface` in `mode` is pinned.
    pub fn link(&self, iface: &str, mode: AttachMode) -> PathBuf {
        let iface = iface.replace('.', "%");
        self.dir
            .join(format!("{LINK_PREFIX}{iface}_{}", mode.as_str()))
    }

    /// The pinned links.
    pub fn links(&self) -> Vec<PinnedLink> {
        self.entries()
            .filter_map(|(name, path)| {
                let rest = name.strip_prefix(LINK_PREFIX)?;
                let (iface, mode) = rest.rsplit_once('_')?;
                let mode = AttachMode::from_str_opt(mode)?;
                Some(PinnedLink {
                    iface: iface.replace('%', "."),
                    mode,
                    path,
                })
            })
            .collect()
    }

    fn entries(&self) -> impl Iterator<Item = (String, PathBuf)> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
    }

    /// Removes everything: the links first (the program leaves the interfaces), then
    /// the program arrays and maps, then the directory itself.
    pub fn remove_all(&self) -> Result<Vec<String>> {
        let mut detached = Vec::new();
        for l in self.links() {
            std::fs::remove_file(&l.path)
                .with_context(|| format!("removing {}", l.path.display()))?;
            detached.push(l.iface);
        }
        for (_, path) in self.jumps() {
            let _ = std::fs::remove_file(path);
        }
        self.remove_maps();
        let left: Vec<String> = self.entries().map(|(n, _)| n).collect();
        if !left.is_empty() {
            warn!(dir = %self.dir.display(), ?left, "left in place: not xlb's");
        } else if let Err(e) = std::fs::remove_dir(&self.dir) {
            warn!(dir = %self.dir.display(), "removing the pin directory: {e}");
        }
        Ok(detached)
    }
}
