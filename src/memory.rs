//! Handing memory that start-up freed back to the system.
//!
//! The `msgbus` binary allocates with mimalloc, which returns freed pages
//! to the system only after a delay: a start-up's transient buffers (the
//! active segment read whole to be judged, up to 64 MiB) were still
//! resident when the store answered "ready" (160 MiB right after a start
//! at 3 million events, against 83 MiB with immediate purging). The
//! binary, which chose the allocator (`src/allocator.rs`), registers how
//! to purge it with [`set_release`]; `app.rs` calls [`release_freed`] once
//! the store is open. This library itself stays free of `unsafe`.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Registers how to return freed memory to the system (once; later calls
/// are ignored).
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Returns the memory freed so far to the system, if the binary said how.
pub fn release_freed() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}
