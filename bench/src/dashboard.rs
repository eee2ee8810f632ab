//! The dashboard group (`--only dashboard`): what open dashboards cost the
//! publishers. Single events at the largest connection count, as `repeat`
//! pairs of runs on fresh stores: one without pages, one with
//! [`PAGES`] simulated dashboard pages polling what the page at `/` polls
//! ([`PAGE_POLLS`]: `/stats` once a second, `/consumers` every 2 s,
//! `/health`, `/alerts` and `/admin/backups` every 5 s), each page on its
//! own connection. The pairs alternate which runs first (without, with;
//! then with, without; ...), so neither side always gets the warmer
//! machine. The pair with the median ratio with ÷ without is reported.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{self, Result};
use crate::loadgen::{self, LoadResult};
use crate::scenarios::{every_request_created, say, single_work, AuthCompare, BenchConfig};
use crate::servers::Launcher;

/// Simulated pages.
pub const PAGES: usize = 10;

/// What one page requests, and how often.
pub const PAGE_POLLS: [(&str, Duration); 5] = [
    ("/stats", Duration::from_secs(1)),
    ("/consumers", Duration::from_secs(2)),
    ("/health", Duration::from_secs(5)),
    ("/alerts", Duration::from_secs(5)),
    ("/admin/backups", Duration::from_secs(5)),
];

/// Publishing without and with the pages.
#[derive(Debug, Clone, Serialize)]
pub struct DashboardDoc {
    /// Simulated pages in the runs with pages.
    pub pages: usize,
    /// `POST /events`: `off` without pages, `on` with them; `ratio` = on ÷ off.
    pub single: AuthCompare,
    /// Requests the pages made in the reported run with pages.
    pub page_requests: u64,
    /// Requests the pages made per second, summed over the pages, in that run.
    pub page_requests_per_s: f64,
}

fn side(on: bool) -> &'static str {
    if on {
        "with pages"
    } else {
        "without pages"
    }
}

/// Runs the group.
pub async fn run_dashboard(cfg: &BenchConfig, launcher: &Launcher) -> Result<DashboardDoc> {
    let c = cfg.max_connections();
    let mut pairs = Vec::with_capacity(cfg.repeat);
    let mut polled = Vec::with_capacity(cfg.repeat);
    for i in 0..cfg.repeat {
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let (mut off, mut on, mut page_stats) = (None, None, (0, 0.0));
        for with_pages in order {
            say(
                cfg,
                &format!(
                    "dashboard: single events, {c} connections, run {}: {}",
                    i + 1,
                    side(with_pages)
                ),
            );
            let (r, requests, secs) = dashboard_run(cfg, launcher, i, with_pages, c).await?;
            if with_pages {
                page_stats = (requests, requests as f64 / secs.max(1e-9));
                on = Some(r);
            } else {
                off = Some(r);
            }
        }
        pairs.push((off.expect("ran"), on.expect("ran")));
        polled.push(page_stats);
    }
    let single = AuthCompare::from_pairs("POST /events", c, 1, pairs);
    let (page_requests, page_requests_per_s) = polled[single.median_run];
    Ok(DashboardDoc {
        pages: PAGES,
        single,
        page_requests,
        page_requests_per_s,
    })
}

/// One run on a fresh store (deleted afterwards); with `with_pages`, the
/// pages poll from before the load starts until it ends. Returns the load,
/// the pages' requests and how long they polled (seconds). Fails if a page
/// request failed or none was made.
async fn dashboard_run(
    cfg: &BenchConfig,
    launcher: &Launcher,
    i: usize,
    with_pages: bool,
    connections: usize,
) -> Result<(LoadResult, u64, f64)> {
    let what = format!("dashboard {}, run {}", side(with_pages), i + 1);
    let dir = cfg
        .work_dir
        .join(format!("dashboard-{}-{}", u8::from(with_pages), i + 1));
    let server = launcher.msgbus(&dir).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut pages = Vec::new();
    if with_pages {
        for p in 0..PAGES {
            pages.push(tokio::spawn(page(
                server.addr,
                p,
                stop.clone(),
                requests.clone(),
            )));
        }
    }
    let work = single_work(&format!("dashboard-{}", u8::from(with_pages)));
    let result =
        loadgen::closed_loop_with(server.addr, &work, &cfg.closed(connections), None).await;
    stop.store(true, Ordering::Relaxed);
    let mut page_error = None;
    for p in pages {
        if let Err(e) = p
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            page_error.get_or_insert(e);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    server.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    let r = result?;
    every_request_created(&r, &what)?;
    if let Some(e) = page_error {
        return Err(format!("{what}: a page's request failed: {e}").into());
    }
    let n = requests.load(Ordering::Relaxed);
    if with_pages && n == 0 {
        return Err(format!("{what}: the pages made no request").into());
    }
    Ok((r, n, secs))
}

/// One simulated page: its polls, on one keep-alive connection, started
/// `p` tenths of a second apart so the pages do not poll in lockstep.
async fn page(
    addr: SocketAddr,
    p: usize,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(100 * p as u64)).await;
    let mut conn = client::Conn::connect(addr).await?;
    let start = tokio::time::Instant::now();
    let mut due: Vec<tokio::time::Instant> = PAGE_POLLS.iter().map(|_| start).collect();
    while !stop.load(Ordering::Relaxed) {
        let now = tokio::time::Instant::now();
        for (k, (path, every)) in PAGE_POLLS.iter().enumerate() {
            if due[k] <= now {
                let res = conn
                    .send(hyper::Method::GET, path, None, bytes::Bytes::new())
                    .await?;
                if !res.status.is_success() {
                    return Err(format!("GET {path} answered {}", res.status).into());
                }
                requests.fetch_add(1, Ordering::Relaxed);
                due[k] += *every;
                if due[k] < now {
                    // Behind (a slow answer): skip, as a page's timer does.
                    due[k] = now + *every;
                }
            }
        }
        let next = due.iter().min().copied().unwrap_or(now);
        // Wake at least every 100 ms to notice the end of the run.
        tokio::time::sleep_until(
            next.min(tokio::time::Instant::now() + Duration::from_millis(100)),
        )
        .await;
    }
    Ok(())
}
