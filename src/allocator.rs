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
//!
//! It also turns transparent huge pages off for the process. mimalloc
//! commits its arenas eagerly on Linux and asks for huge pages on them, so
//! wherever the kernel gave it a 2 MiB page, touching one small object
//! made all of it resident, and a purge of less than all of it returned
//! nothing. Measured with a release build on the same machine: an empty
//! store at ready 18.0 -> 6.9 MiB anonymous memory; a 55-million-event
//! store after a minute of publishing 243 -> 211-226 MiB resident; single
//! events at 64 connections on an empty store unchanged or faster
//! (24,900 and 25,900 -> 28,000 and 27,100 requests/s in alternating
//! runs). The one large allocation that might gain from huge pages, the
//! key filter, is probed once per event: a TLB miss there is noise beside
//! an HTTP request. (`MIMALLOC_ALLOW_THP=0` does the same, but mimalloc
//! reads it before `main`, so it cannot be set from here.)

use libmimalloc_sys as mi;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3's `mi_option_purge_delay`. The option numbers are not
/// exported by `libmimalloc-sys` ("for stability"); this one is pinned to
/// the v3 header, and the tests check it still names `purge_delay`.
const MI_OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// Milliseconds before freed pages go back to the system.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Turns transparent huge pages off, sets the allocator's options and
/// registers [`release`]; call first in `main`. A `MIMALLOC_PURGE_DELAY`
/// in the environment still wins, for operators who tune it.
pub fn tune() {
    // Not fatal: a kernel without the call has no huge pages to turn off.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("msgbus: cannot turn transparent huge pages off ({e}); memory use may be higher");
    }
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

    #[test]
    fn tune_turns_transparent_huge_pages_off() {
        tune();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
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
