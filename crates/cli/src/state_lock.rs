//! The single-writer lock on a state directory.
//!
//! Two processes writing one state directory corrupt each other's view of it:
//! both append to the audit log, both rewrite `admin.url`. So `serve`, and
//! every offline command that writes the directory, holds an exclusive
//! `flock` on `<state-dir>/portcullis.lock` for as long as it runs. The file
//! holds the holder's pid, so the refusal can name it.
//!
//! The lock is advisory and tied to the open file: the kernel releases it
//! when the process exits, however it exits (`kill -9` included), so a stale
//! lock file never blocks a restart. The file itself is never deleted:
//! deleting it would let a third process lock a fresh inode while a second
//! still waits on the old one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "portcullis.lock";

/// An exclusive lock on a state directory, released on drop.
#[derive(Debug)]
pub struct StateLock {
    // Held only for its lock: closing the file releases it.
    _file: File,
    path: PathBuf,
}

/// Why a state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("state directory `{}` is locked by pid {pid}; stop that process first", dir.display())]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it (0 if unreadable).
        pid: u32,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock state directory `{}`: {source}", dir.display())]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl StateLock {
    /// Takes the exclusive lock on `dir` (which must exist) without waiting,
    /// and writes this process's pid into the lock file.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let io = |source| LockError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: until the lock is ours, the pid in the file
        // is the holder's, and the refusal reads it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(StateLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the holder wrote; 0 when the holder has not written it yet (it
/// locks, then writes) or the file is unreadable.
fn read_pid(file: &mut File) -> u32 {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text.trim().parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());

        // flock locks belong to the open file, so a second open in this
        // process conflicts just as another process would.
        match StateLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Held, got {other:?}"),
        }
        let message = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains(&format!("is locked by pid {}", std::process::id())),
            "{message}"
        );

        drop(first);
        let again = StateLock::acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path()).unwrap().trim(),
            std::process::id().to_string()
        );
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent");
        assert!(matches!(
            StateLock::acquire(&missing),
            Err(LockError::Io { .. })
        ));
    }
}
