//! The bulk lane: CPU-heavy request work on threads of lower priority.
//!
//! Publishing and liveness answers are short and latency-bound; parsing a
//! multi-megabyte body or loading and verifying a page
//! of large events from the segment files is long and throughput-bound. On
//! the async workers the long work delays every short request queued behind
//! it (a 10 MiB batch is ~20 ms of parsing), and on ordinary blocking threads
//! it still takes an equal share of the CPU from the workers and the writer.
//! Here it runs on a pool of its own whose threads have a nice value
//! [`NICE`] above the process's, so the kernel runs the workers and the
//! writer first whenever both want a core: under heavy reads a publish waits
//! for the CPU as if the readers were not there, and the readers get every
//! cycle the short requests leave.
//!
//! Nothing that holds a lock the writer or the workers need may run here:
//! a low-priority thread preempted while holding it would make them wait
//! for it (priority inversion). The store's filtered scans, which hold the
//! index lock a chunk at a time, stay on tokio's blocking pool for that
//! reason; loading events, which takes the lock only to look up a file,
//! runs here.
//!
//! Work is still bounded by the callers' own limits (body and page sizes,
//! scan chunks); the pool adds no queue of its own beyond tokio's blocking
//! pool, capped at [`MAX_THREADS`] threads.

use std::sync::OnceLock;

/// How much lower the bulk threads' priority is (nice +10: about a tenth of
/// a nice-0 thread's CPU share when both are runnable).
pub const NICE: i32 = 10;

/// Threads in the bulk pool at most; more work waits for one to be free.
pub const MAX_THREADS: usize = 64;

/// Bodies at least this large are parsed in the bulk lane; smaller ones on
/// the async worker, where the hop to another thread would cost more than
/// the parse (a typical event is well under 4 KiB).
pub const PARSE_INLINE_MAX: usize = 64 * 1024;

/// Runs `f` on a bulk thread and waits for it without blocking the async
/// worker. A panic in `f` is resumed here, as if `f` had run inline.
pub async fn run<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match pool().spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The pool's runtime lives in a static and is never shut down, so
        // its tasks are never cancelled.
        Err(e) => unreachable!("bulk task cancelled: {e}"),
    }
}

/// The pool: the blocking threads of a runtime that runs no async tasks of
/// its own, kept for the life of the process (a runtime cannot be dropped
/// from inside another one, and the threads are idle when there is no bulk
/// work: tokio retires them after 10 s).
fn pool() -> &'static tokio::runtime::Handle {
    static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .thread_name("msgbus-bulk")
            .max_blocking_threads(MAX_THREADS)
            .on_thread_start(lower_priority)
            .build()
            .expect("the bulk pool's runtime starts (it needs no I/O driver)")
    })
    .handle()
}

/// Lowers the calling thread's priority by [`NICE`]. Linux keeps a nice
/// value per thread (`setpriority` on a thread id), so this touches no other
/// thread. Failing is harmless (the work then runs at normal priority) and
/// not expected: raising one's own nice value needs no privilege.
fn lower_priority() {
    if let Err(e) = nice_this_thread(NICE) {
        tracing::debug!(error = %e, "cannot lower the bulk thread's priority");
    }
}

/// Adds `by` to the calling thread's nice value.
fn nice_this_thread(by: i32) -> std::io::Result<()> {
    let me = Some(rustix::thread::gettid());
    let current = rustix::process::getpriority_process(me)?;
    rustix::process::setpriority_process(me, current + by)?;
    Ok(())
}

/// The calling thread's nice value.
#[cfg(test)]
fn this_thread_nice() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("getpriority")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_on_a_lower_priority_thread() {
        let (name, nice) = run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            (name, this_thread_nice())
        })
        .await;
        let ours = this_thread_nice();
        assert_eq!(name.as_deref(), Some("msgbus-bulk"));
        assert_eq!(
            nice,
            (ours + NICE).min(19),
            "the bulk thread runs at a higher nice value"
        );
    }

    #[tokio::test]
    async fn a_panic_in_bulk_work_reaches_the_caller() {
        let caught = tokio::spawn(run(|| -> u8 { panic!("boom") })).await;
        assert!(caught.unwrap_err().is_panic());
    }
}
