//! Reading what an operator names: configuration, state, rule and certificate files.
//!
//! Only regular files are read, and at most [`limit`] bytes of them: a FIFO, a device
//! (`/dev/zero`), a socket or a directory is refused before a byte is read, and so is
//! a file larger than the limit (`--max-file-size` raises it). The file is opened
//! without blocking (a FIFO with no writer would block the open) and checked on the
//! open descriptor, so what was checked is what is read.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

/// The largest file read unless told otherwise: a million IPv6 prefixes in a bulk
/// file take about 25 MiB.
pub const DEFAULT_LIMIT: u64 = 64 << 20;

static LIMIT: AtomicU64 = AtomicU64::new(DEFAULT_LIMIT);

/// Sets the size limit for the rest of the process (`--max-file-size`).
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The size limit in force.
pub fn limit() -> u64 {
    LIMIT.load(Ordering::Relaxed)
}

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error(
        "{path} is {kind}, not a regular file: xlb reads configuration, state, rule and certificate files only from regular files"
    )]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path} is larger than the limit of {limit} bytes: raise it with --max-file-size (or XLB_MAX_FILE_SIZE)"
    )]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: line {line} is not UTF-8 text")]
    NotText { path: String, line: usize },
}

impl FileError {
    /// What is wrong, without the path (for messages that name the file already).
    pub fn why(&self) -> String {
        let full = self.to_string();
        let path = match self {
            FileError::Io { err, .. } => return format!("cannot read the file: {err}"),
            FileError::NotRegular { path, .. }
            | FileError::TooLarge { path, .. }
            | FileError::NotText { path, .. } => path,
        };
        let rest = full.strip_prefix(path.as_str()).unwrap_or(&full);
        let rest = rest.trim_start_matches(':').trim_start();
        if rest.starts_with("is ") {
            format!("it {rest}")
        } else {
            rest.to_string()
        }
    }

    /// Whether the file does not exist (callers for which that is not an error).
    pub fn is_missing(&self) -> bool {
        matches!(self, FileError::Io { err, .. } if err.kind() == std::io::ErrorKind::NotFound)
    }
}

/// What a file that is not regular is, in words.
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// What is at a path xlb is about to write (not following a symbolic link there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    Nothing,
    Regular,
    Socket,
    /// Anything else, in words ("a symbolic link", "a character device", ...).
    Other(&'static str),
}

/// What `path` is, without following a symbolic link.
pub fn existing(path: &Path) -> std::io::Result<Existing> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            Ok(if t.is_file() {
                Existing::Regular
            } else if t.is_socket() {
                Existing::Socket
            } else if t.is_symlink() {
                Existing::Other("a symbolic link")
            } else {
                Existing::Other(kind_of(t))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Existing::Nothing),
        Err(e) => Err(e),
    }
}

/// Whether opening `path` for reading is refused for want of permission (opened
/// without blocking, as [`read_bytes`] opens it: a FIFO does not hang the question).
pub fn permission_denied(path: &Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// The bytes of a regular file of at most [`limit`] bytes.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, FileError> {
    read_limited(path, limit())
}

/// The bytes of a regular file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let shown = path.display().to_string();
    let io = |err| FileError::Io {
        path: shown.clone(),
        err,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: shown,
            kind: kind_of(meta.file_type()),
        });
    }
    let too_large = || FileError::TooLarge {
        path: shown.clone(),
        limit,
    };
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read stops at the limit too.
    File::take(f, limit + 1).read_to_end(&mut out).map_err(io)?;
    if out.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(out)
}

/// The text of a regular file of at most [`limit`] bytes; invalid UTF-8 is refused with
/// the number of its line.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    text(path, read_bytes(path)?)
}

/// Standard input (`-` for a file the CLI sends): at most [`limit`] bytes of text, as
/// [`read_text`] reads a file.
pub fn read_stdin() -> Result<String, FileError> {
    let path = Path::new("standard input");
    let io = |err| FileError::Io {
        path: path.display().to_string(),
        err,
    };
    let mut out = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit() + 1)
        .read_to_end(&mut out)
        .map_err(io)?;
    if out.len() as u64 > limit() {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
            limit: limit(),
        });
    }
    text(path, out)
}

fn text(path: &Path, bytes: Vec<u8>) -> Result<String, FileError> {
    String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..bad].iter().filter(|b| **b == b'\n').count();
        FileError::NotText {
            path: path.display().to_string(),
            line,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("xlb-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn only_regular_files_are_read() {
        let d = dir("kinds");
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A FIFO with no writer: refused at once (the open does not block).
        let e = read_text(&fifo).unwrap_err().to_string();
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        let e = read_text(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("is a character device"), "{e}");
        let e = read_text(&d).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        assert!(read_text(&d.join("missing")).unwrap_err().is_missing());
        std::fs::write(d.join("ok"), "a\nb\n").unwrap();
        assert_eq!(read_text(&d.join("ok")).unwrap(), "a\nb\n");
        std::fs::write(d.join("bad"), b"one\ntwo\nth\xffree\n").unwrap();
        let e = read_text(&d.join("bad")).unwrap_err().to_string();
        assert!(e.ends_with("line 3 is not UTF-8 text"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_over_the_limit_are_refused() {
        let d = dir("limit");
        std::fs::write(d.join("big"), vec![b'x'; 100]).unwrap();
        let e = read_limited(&d.join("big"), 99).unwrap_err().to_string();
        assert!(e.contains("larger than the limit of 99 bytes"), "{e}");
        assert_eq!(read_bytes(&d.join("big")).unwrap().len(), 100);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
