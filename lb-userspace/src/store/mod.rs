//! The stored desired state: a small text file (its line formats in [`lines`]), written
//! atomically (temporary file, fsync, rename, fsync of the directory) so a crash leaves
//! the old or the new file, never half of one.

pub mod lines;

use std::{io::Write, path::Path};

use anyhow::{Context, Result, bail};

use crate::model::desired::{Desired, DesiredRef};

pub use lines::{parse, render};

/// Reads the state file; a missing file is an empty state.
pub fn load(path: &Path) -> Result<Desired> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).with_context(|| format!("state file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Desired::default()),
        Err(e) => Err(e).with_context(|| format!("reading state file {}", path.display())),
    }
}

/// Replaces the state file with `st`, atomically.
pub fn save(path: &Path, st: &DesiredRef) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let Some(name) = path.file_name() else {
        bail!("state path {} has no file name", path.display());
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
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
