//! Errors at the store boundary. Cloneable, because one poisoning or one
//! failed commit is reported to every caller in the batch.

use std::path::PathBuf;

/// Everything the store can refuse or fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory's `LOCK`.
    #[error("data directory {} is held by another msgbus instance (lock file {})", dir.display(), dir.join("LOCK").display())]
    Locked {
        /// The contested data directory.
        dir: PathBuf,
    },
    /// An I/O operation failed; `context` names the file and the operation.
    #[error("{context}: {message}")]
    Io {
        /// What was being done, and to which path.
        context: String,
        /// The operating system's message.
        message: String,
    },
    /// The process or the system has no file descriptor left (EMFILE,
    /// ENFILE). Transient: nothing is damaged, retry once descriptors are
    /// free.
    #[error("too many open files: {context}: {message}; nothing is damaged: retry later, or raise the open-file limit (ulimit -n)")]
    TooManyOpenFiles {
        /// What was being done, and to which path.
        context: String,
        /// The operating system's message.
        message: String,
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
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    /// Descriptor exhaustion becomes [`StoreError::TooManyOpenFiles`].
    pub fn io(context: impl Into<String>, e: std::io::Error) -> Self {
        if super::fsutil::is_descriptor_exhaustion(&e) {
            return StoreError::TooManyOpenFiles {
                context: context.into(),
                message: e.to_string(),
            };
        }
        StoreError::Io {
            context: context.into(),
            message: e.to_string(),
        }
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
