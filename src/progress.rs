//! Progress of a long command on standard error: on a terminal, a bar
//! redrawn in place with the count, the rate and the time left; otherwise
//! (a log, a pipe) a summary line every few seconds (`--progress-every`,
//! 5 s by default). `--quiet` silences both. Used by `import`, `export`,
//! `verify` and `restore`. Hand-written: a line of text needs no dependency.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Between redraws of the bar.
const DRAW_EVERY: Duration = Duration::from_millis(200);
/// Between summary lines when standard error is no terminal, by default.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// The progress of one command.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    mode: Mode,
    log_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    Bar,
    Lines,
}

impl Progress {
    /// Progress of `what` (e.g. `import`) counted in `unit`s, toward
    /// `total` when known.
    pub fn new(what: &'static str, unit: &'static str, total: Option<u64>, quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        };
        let now = Instant::now();
        Progress {
            what,
            unit,
            total,
            done: 0,
            started: now,
            last: now,
            mode,
            log_every: LOG_EVERY,
        }
    }

    /// Progress that shows nothing.
    pub fn hidden() -> Self {
        Progress::new("", "", None, true)
    }

    /// Between summary lines when standard error is no terminal.
    pub fn every(mut self, every: Duration) -> Self {
        self.log_every = every;
        self
    }

    /// Sets the total once it is known.
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    /// Counts `n` more done.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        let every = match self.mode {
            Mode::Quiet => return,
            Mode::Bar => DRAW_EVERY,
            Mode::Lines => self.log_every,
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.draw();
        }
    }

    /// Clears the bar (the command prints its own summary).
    pub fn finish(&mut self) {
        if self.mode == Mode::Bar {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }

    /// The line shown now.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let mut s = format!("{}: {} {}", self.what, self.done, self.unit);
        if let Some(t) = self.total.filter(|t| *t > 0) {
            let pct = (self.done as f64 / t as f64 * 100.0).min(100.0);
            if self.mode == Mode::Bar {
                let filled = (pct / 5.0) as usize;
                s = format!(
                    "{} [{}{}] {}/{} {}",
                    self.what,
                    "#".repeat(filled),
                    "-".repeat(20 - filled.min(20)),
                    self.done,
                    t,
                    self.unit
                );
            } else {
                s.push_str(&format!(" of {t} ({pct:.0}%)"));
            }
            if rate > 0.0 && t > self.done {
                let eta = ((t - self.done) as f64 / rate).ceil() as u64;
                s.push_str(&format!(", {rate:.0}/s, ETA {}", human(eta)));
                return s;
            }
        }
        s.push_str(&format!(", {rate:.0}/s, {} elapsed", human(secs as u64)));
        s
    }

    fn draw(&self) {
        let line = self.line();
        let mut err = std::io::stderr();
        let _ = match self.mode {
            Mode::Bar => write!(err, "\r\x1b[2K{line}"),
            _ => writeln!(err, "{line}"),
        };
    }
}

fn human(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_and_estimates() {
        let mut p = Progress::new("import", "events", Some(100), true);
        p.add(50);
        let line = p.line();
        assert!(line.starts_with("import: 50 events of 100 (50%)"), "{line}");
        assert!(line.contains("ETA"), "{line}");
        assert_eq!(human(75), "1m15s");
    }
}
