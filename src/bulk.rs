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

/// Runs `f` on a thread of its own under the kernel's `SCHED_IDLE`
/// policy and waits for it without blocking the async worker; a panic in
/// `f` is resumed here. For work that may take as long as it needs but
/// must never stand between a publish and its answer: the integrity
/// monitor's first check after a start, which hashes every sealed segment
/// (18 GB at 50 million events, about five minutes at the default read
/// rate).
///
/// Why not the bulk lane's nice +10, or nice 19: a low nice value gives a
/// thread a small share of a busy CPU, but once it is running, a woken
/// writer or worker may wait for its time slice to end (milliseconds,
/// against a commit cycle of a few hundred microseconds). The scheduler
/// preempts a `SCHED_IDLE` thread at once for any other. Measured on a
/// 50-million-event store during its first check, single events at 64
/// connections as a ratio to an empty store (16 alternating pairs of short
/// runs each time): 0.88 and 0.89 with the check in the bulk lane, 0.95
/// and 0.90 with it here, the four runs alternating; at nice 19 instead
/// it took as much CPU under load as at nice 10.
///
/// A thread of its own because an unprivileged thread cannot leave
/// `SCHED_IDLE` again, and the bulk pool's threads go on serving requests.
/// If the thread cannot be started, `f` runs in the bulk lane instead; if
/// the policy cannot be set, at nice 19.
pub async fn run_idle<F, R>(name: &str, f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let job = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let theirs = job.clone();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            idle_this_thread();
            let f = theirs.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(f) = f {
                let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start a thread for background work; running it in the bulk lane");
        let f = job.lock().unwrap_or_else(|e| e.into_inner()).take();
        return run(f.expect("the thread never started, so it did not take the work")).await;
    }
    match rx.await {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The thread sends before it ends, unless `f` never ran, which
        // only a failed spawn (handled above) leaves.
        Err(_) => unreachable!("the background thread ended without an answer"),
    }
}

/// Puts the calling thread under `SCHED_IDLE`, or at nice 19 if that fails.
fn idle_this_thread() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::debug!(error = ?e, "cannot use SCHED_IDLE; using nice 19");
        let me = Some(rustix::thread::gettid());
        let _ = rustix::process::setpriority_process(me, 19);
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
    async fn idle_work_runs_under_sched_idle_on_its_own_thread() {
        let (name, policy) = run_idle("msgbus-test-idle", || {
            let name = std::thread::current().name().map(str::to_owned);
            (name, this_thread_policy())
        })
        .await;
        assert_eq!(name.as_deref(), Some("msgbus-test-idle"));
        assert_eq!(policy, SCHED_IDLE);
        // The caller's thread keeps its own policy.
        assert_ne!(this_thread_policy(), SCHED_IDLE);
    }

    #[tokio::test]
    async fn a_panic_in_idle_work_reaches_the_caller() {
        let caught = tokio::spawn(run_idle("msgbus-test-idle", || -> u8 { panic!("boom") })).await;
        assert!(caught.unwrap_err().is_panic());
    }

    /// `SCHED_IDLE` in `/proc/thread-self/stat`'s policy field.
    const SCHED_IDLE: u32 = 5;

    /// The calling thread's scheduling policy (field 41 of its stat line).
    fn this_thread_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // The command name (field 2) may hold spaces: count from after it.
        let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
        rest.split(' ')
            .nth(41 - 3)
            .expect("field 41")
            .parse()
            .expect("a number")
    }

    #[tokio::test]
    async fn a_panic_in_bulk_work_reaches_the_caller() {
        let caught = tokio::spawn(run(|| -> u8 { panic!("boom") })).await;
        assert!(caught.unwrap_err().is_panic());
    }
}
