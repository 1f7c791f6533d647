//! The stored desired state: a small text file (its line formats in [`lines`]), written
//! atomically (temporary file, fsync, rename, fsync of the directory) so a crash leaves
//! the old or the new file, never half of one.

pub mod lines;
pub mod synflood;

use std::{io::Write, path::Path};

use anyhow::{Context, Result, bail};

use crate::{
    config::files::{self, Existing},
    model::desired::{Desired, DesiredRef},
};

pub use lines::{parse, render};

/// Reads the state file; a missing file is an empty state.
pub fn load(path: &Path) -> Result<Desired> {
    match files::read_text(path) {
        Ok(text) => parse(&text).with_context(|| format!("state file {}", path.display())),
        Err(e) if e.is_missing() => Ok(Desired::default()),
        Err(e) => Err(e).context("reading the state file"),
    }
}

/// Replaces the state file with `st`, atomically.
/// Checks that `path` is somewhere xlb may keep its state: nothing yet, or a regular
/// file (xlb never replaces a device, a symbolic link, a directory or a socket with its
/// state).
pub fn check_path(path: &Path) -> Result<()> {
    let what = files::existing(path).with_context(|| format!("looking at {}", path.display()))?;
    match what {
        Existing::Nothing | Existing::Regular => Ok(()),
        Existing::Socket => refuse(path, "a socket"),
        Existing::Other(kind) => refuse(path, kind),
    }
}

fn refuse(path: &Path, kind: &str) -> Result<()> {
    bail!(
        "the state path {} is {kind}, not a regular file: xlb writes its state only to a regular file of its own (give another --state)",
        path.display()
    )
}

pub fn save(path: &Path, st: &DesiredRef) -> Result<()> {
    check_path(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let Some(name) = path.file_name() else {
        bail!("state path {} has no file name", path.display());
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // A temporary file left by a crash is ours; anything else there is not.
    match files::existing(&tmp)? {
        Existing::Nothing => {}
        Existing::Regular => std::fs::remove_file(&tmp)
            .with_context(|| format!("removing the stale {}", tmp.display()))?,
        Existing::Socket => refuse(&tmp, "a socket")?,
        Existing::Other(kind) => refuse(&tmp, kind)?,
    }
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(render(st).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing state file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::RuleSet;

    #[test]
    fn save_is_atomic_and_loadable() {
        let dir = std::env::temp_dir().join(format!("xlb-state-test-{}", std::process::id()));
        let path = dir.join("state");
        let mut rules = RuleSet::default();
        let (m, a) = lines::parse_rule("deny 2001:db8::/32").unwrap();
        rules.upsert(m, a).unwrap();
        let stored = Desired {
            rules,
            ..Default::default()
        };
        save(&path, &stored.borrowed()).unwrap();
        assert_eq!(load(&path).unwrap().rules.len(), 1);
        assert!(!dir.join(".state.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
