//! The data directory's `LOCK` file, held exclusively for the life of the
//! process so two msgbus instances can never write the same files.

use std::fs::{File, OpenOptions};
use std::path::Path;

use super::error::{Result, StoreError};
use super::layout;

/// An exclusive lock on a data directory, released when dropped (or when
/// the process dies, since it is an `flock`).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock without waiting; fails at once with
    /// [`StoreError::Locked`] if another process holds it.
    pub fn acquire(data_dir: &Path) -> Result<DirLock> {
        let path = layout::lock_path(data_dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::file("open", &path, e))?;
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(e)
                if e.kind() == fs2::lock_contended_error().kind()
                    || e.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Err(StoreError::Locked {
                    dir: data_dir.to_path_buf(),
                })
            }
            Err(e) => Err(StoreError::file("lock", &path, e)),
        }
    }
}
