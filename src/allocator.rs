//! The binary's allocator (mimalloc v3) and its settings.
//!
//! Two of mimalloc's defaults kept a large store's memory high long after
//! it was freed: freed pages go back to the system only after
//! `purge_delay` (1 s in v3, ten times that for whole arenas), so
//! start-up's transient buffers were still resident at "ready", and the
//! churn of publishing kept about 20 MiB more than it used (measured at 3
//! million events: 160 -> 83 MiB right after a start, 109 -> 86 MiB after
//! 30 s of publishing at 10,000 events/s with a 4 MiB read cache).
//! So [`tune`] sets the v2 default of 10 ms at the start of `main`, and
//! registers [`release`] (a forced collection) for `app.rs` to call once
//! the store is open (`msgbus::memory`).

use libmimalloc_sys as mi;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay`. The option numbers are not
/// exported by `libmimalloc-sys` ("for stability"); this one is pinned to
/// the v3 header, and the tests check it still names `purge_delay`.
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// Milliseconds before freed pages go back to the system.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Sets the allocator's options and registers [`release`]; call first in
/// `main`. A `MIMALLOC_PURGE_DELAY` in the environment still wins, for
/// operators who tune it.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain setter of a process-wide integer option.
        unsafe { mi::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    msgbus::memory::set_release(release);
}

/// Returns the memory freed so far to the system now.
fn release() {
    // SAFETY: collects the calling thread's heap and purges the arenas.
    unsafe { mi::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linked_mimalloc_is_v3() {
        // SAFETY: reads a constant.
        let version = unsafe { mi::mi_version() };
        assert_eq!(
            version / 10000,
            3,
            "mimalloc {version}: check MI_OPTION_PURGE_DELAY against its header"
        );
    }

    /// Run again in a child process with `MIMALLOC_PURGE_DELAY=4321`:
    /// option 15 must read that variable, i.e. still be `purge_delay`.
    #[test]
    fn option_15_is_purge_delay() {
        if std::env::var_os("MSGBUS_ALLOCATOR_CHILD").is_some() {
            // SAFETY: a plain getter.
            let got = unsafe { mi::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(got, 4321);
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "allocator::tests::option_15_is_purge_delay",
                "--test-threads",
                "1",
            ])
            .env("MSGBUS_ALLOCATOR_CHILD", "1")
            .env("MIMALLOC_PURGE_DELAY", "4321")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
    }
}
