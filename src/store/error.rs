//! Errors at the store boundary, and the I/O error every store module
//! builds them from.
//!
//! [`FileError`] is an I/O failure on one file: what was being done, the
//! path, and the operating system's error, kept (not turned into text) so
//! callers decide by its kind (descriptor exhaustion, a full disk, a
//! permission) and the source chain reaches the log. [`StoreError`] is
//! cloneable, because one poisoning or one failed commit is reported to
//! every caller in the batch; it holds its `io::Error` behind an `Arc`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// True when `e` means the process (EMFILE) or the system (ENFILE) has no
/// file descriptor left: a transient condition that passes once
/// descriptors are closed, never a sign of damage.
pub fn is_descriptor_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == nix::errno::Errno::EMFILE as i32 || code == nix::errno::Errno::ENFILE as i32
    )
}

/// An I/O operation on one file failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done (`read`, `write`, `fsync`, ...).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: Arc<io::Error>,
}

impl FileError {
    /// `op` on `path` failed with `source`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FileError {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// For `map_err`: `op` on `path` failed.
    pub fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |e| FileError::new(op, path, e)
    }

    /// The kind of the operating system's error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// True when the process or the system has no file descriptor left
    /// (see [`is_descriptor_exhaustion`]).
    pub fn is_descriptor_exhaustion(&self) -> bool {
        is_descriptor_exhaustion(&self.source)
    }
}

impl From<FileError> for StoreError {
    fn from(e: FileError) -> Self {
        let context = format!("{} {}", e.op, e.path.display());
        if e.is_descriptor_exhaustion() {
            StoreError::TooManyOpenFiles {
                context,
                source: e.source,
            }
        } else {
            StoreError::Io {
                context,
                source: e.source,
            }
        }
    }
}

/// Everything the store can refuse or fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory's `LOCK`.
    #[error("data directory {} is held by another msgbus instance (lock file {})", dir.display(), super::layout::lock_path(dir).display())]
    Locked {
        /// The contested data directory.
        dir: PathBuf,
    },
    /// An I/O operation failed; `context` names the file and the operation.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, and to which path.
        context: String,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The process or the system has no file descriptor left (EMFILE,
    /// ENFILE). Transient: nothing is damaged, retry once descriptors are
    /// free.
    #[error("too many open files: {context}: {source}; nothing is damaged: retry later, or raise the open-file limit (ulimit -n)")]
    TooManyOpenFiles {
        /// What was being done, and to which path.
        context: String,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The files are damaged in a way that cannot be repaired safely.
    #[error("store damaged: {0}")]
    Corrupt(String),
    /// Writes are refused, and why.
    #[error(transparent)]
    Refused(WriteRefusal),
    /// The writer's queue is full; retry shortly.
    #[error("the writer's queue is full")]
    QueueFull,
    /// The writer has shut down.
    #[error("the store is shutting down")]
    Stopped,
    /// The requested position lies before the oldest retained event:
    /// retention deleted it. Never answered with a silent jump forward.
    #[error("events before seq {oldest} were deleted by retention")]
    Gone {
        /// The oldest event still stored (the next one to be written when
        /// the store holds none).
        oldest: u64,
    },
    /// A backend that serves over the network (the NATS JetStream one)
    /// cannot reach its servers, or they did not answer in time; the
    /// detail says what happened to the request (503, retry).
    #[error("the backend is unavailable: {0}")]
    Unavailable(String),
    /// The backend does not implement this operation; the detail says
    /// which and what to use instead (501).
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    /// Descriptor exhaustion becomes [`StoreError::TooManyOpenFiles`].
    pub fn io(context: impl Into<String>, e: io::Error) -> Self {
        if is_descriptor_exhaustion(&e) {
            return StoreError::TooManyOpenFiles {
                context: context.into(),
                source: Arc::new(e),
            };
        }
        StoreError::Io {
            context: context.into(),
            source: Arc::new(e),
        }
    }

    /// `op` on `path` failed with `e` (see [`FileError`]).
    pub fn file(op: &'static str, path: &Path, e: io::Error) -> Self {
        FileError::new(op, path, e).into()
    }
}

/// Why the store refuses writes. One enum for every reason, so callers
/// (the HTTP layer maps each to a status in `http/error.rs`) match on the
/// reason, not on message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefusal {
    /// A write or fsync failed earlier; the writer refuses all writes until
    /// the process restarts.
    #[error("store is read-only after a failed write: {0}")]
    Poisoned(String),
    /// Damage that could not be repaired yet; writes wait for a repair.
    #[error("store is read-only until a repair succeeds: {0}")]
    ReadOnly(String),
    /// Free disk space is below the configured minimum.
    #[error("not enough free disk space: {0}")]
    LowDisk(String),
    /// The writer has stopped (the server is shutting down).
    #[error("the store is shutting down")]
    ShuttingDown,
}

impl From<WriteRefusal> for StoreError {
    fn from(r: WriteRefusal) -> Self {
        StoreError::Refused(r)
    }
}

/// Shorthand for store results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
