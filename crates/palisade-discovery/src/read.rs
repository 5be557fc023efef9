//! Reading config files safely: one capped read into memory, a consistency
//! check against concurrent writers, and typed errors for every bad case.
//!
//! Everything downstream parses the in-memory snapshot this module returns,
//! never the live file. This module must never read more than the cap and
//! never follow a symlink cycle forever (the OS reports ELOOP; we map it).

use crate::model::FindingKind;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::Path;
use std::time::SystemTime;

/// Default read cap for one config file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 5 * 1024 * 1024;

/// Why a file could not be read into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No such file: not a finding, the client is simply not configured.
    #[error("not found")]
    NotFound,
    #[error("too large: {len} bytes, the cap is {cap}")]
    TooLarge { len: u64, cap: u64 },
    #[error("symlink loop")]
    SymlinkLoop,
    #[error("changed while being read (twice)")]
    Changing,
    #[error("not a regular file")]
    NotAFile,
    #[error("unreadable: {0}")]
    Io(#[source] io::Error),
}

impl ReadError {
    pub fn finding_kind(&self) -> FindingKind {
        match self {
            ReadError::TooLarge { .. } => FindingKind::TooLarge,
            ReadError::SymlinkLoop => FindingKind::SymlinkLoop,
            ReadError::Changing => FindingKind::ChangedWhileReading,
            ReadError::NotFound | ReadError::NotAFile | ReadError::Io(_) => FindingKind::Unreadable,
        }
    }
}

pub(crate) fn map_io(e: io::Error) -> ReadError {
    // ELOOP is 40 on Linux, 62 on macOS/BSD.
    let eloop = if cfg!(target_os = "linux") { 40 } else { 62 };
    match e.kind() {
        io::ErrorKind::NotFound => ReadError::NotFound,
        _ if e.raw_os_error() == Some(eloop) => ReadError::SymlinkLoop,
        _ => ReadError::Io(e),
    }
}

fn stamp(m: &Metadata) -> (u64, Option<SystemTime>) {
    (m.len(), m.modified().ok())
}

/// Read `path` once into memory, capped at `cap` bytes. If its length or
/// mtime changed while we read, retry once; if it changes again, give up
/// with [`ReadError::Changing`].
pub fn read_snapshot(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    read_snapshot_with(path, cap, |_| {})
}

/// [`read_snapshot`] with a hook run after each read and before the
/// consistency check (`attempt` is 0, then 1): tests use it to simulate a
/// concurrent writer.
pub(crate) fn read_snapshot_with(path: &Path, cap: u64, mut after_read: impl FnMut(u32)) -> Result<Vec<u8>, ReadError> {
    for attempt in 0..2 {
        let mut f = File::open(path).map_err(map_io)?;
        let before = f.metadata().map_err(map_io)?;
        if !before.is_file() {
            return Err(ReadError::NotAFile);
        }
        if before.len() > cap {
            return Err(ReadError::TooLarge { len: before.len(), cap });
        }
        let mut buf = Vec::with_capacity(before.len() as usize);
        (&mut f).take(cap + 1).read_to_end(&mut buf).map_err(map_io)?;
        if buf.len() as u64 > cap {
            return Err(ReadError::TooLarge { len: buf.len() as u64, cap });
        }
        after_read(attempt);
        // Compare the path's current metadata: a writer that replaced the
        // file by rename is caught too.
        let after = std::fs::metadata(path).map_err(map_io)?;
        if stamp(&before) == stamp(&after) && buf.len() as u64 == after.len() {
            return Ok(buf);
        }
    }
    Err(ReadError::Changing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_small_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        std::fs::write(&p, b"{}").unwrap();
        assert_eq!(read_snapshot(&p, 100).unwrap(), b"{}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(read_snapshot(&d.path().join("nope"), 100), Err(ReadError::NotFound)));
    }

    #[test]
    fn huge_file_is_refused_without_reading() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.json");
        let f = File::create(&p).unwrap();
        f.set_len(6 * 1024 * 1024).unwrap();
        let e = read_snapshot(&p, DEFAULT_MAX_FILE_BYTES).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { len, .. } if len == 6 * 1024 * 1024), "{e}");
        assert_eq!(e.finding_kind(), FindingKind::TooLarge);
    }

    #[test]
    fn symlink_loop_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = read_snapshot(&a, 100).unwrap_err();
        assert!(matches!(e, ReadError::SymlinkLoop), "{e:?}");
    }

    #[test]
    fn directory_is_not_a_file() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(read_snapshot(d.path(), 100), Err(ReadError::NotAFile)));
    }

    #[test]
    fn change_during_first_read_is_retried() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.json");
        std::fs::write(&p, b"{\"a\":1}").unwrap();
        let got = read_snapshot_with(&p, 100, |attempt| {
            if attempt == 0 {
                let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
                f.write_all(b"  ").unwrap();
            }
        })
        .unwrap();
        assert_eq!(got, b"{\"a\":1}  ");
    }

    #[test]
    fn file_that_keeps_changing_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.json");
        std::fs::write(&p, b"{}").unwrap();
        let e = read_snapshot_with(&p, 1000, |_| {
            let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(b" ").unwrap();
        })
        .unwrap_err();
        assert!(matches!(e, ReadError::Changing));
        assert_eq!(e.finding_kind(), FindingKind::ChangedWhileReading);
    }
}
