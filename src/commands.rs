//! `msgbus import` and `msgbus export`: their arguments, and the choice of
//! transport: `--url` (online, [`crate::client::HttpClient`], with
//! `--token`) or `--data-dir` (offline, [`crate::inprocess::Local`], a
//! stopped store). The work itself is [`crate::transfer`]'s, the same in
//! both modes.
//!
//! Exit status: 0 every record imported (or already there) / the export
//! written; 1 some records rejected (import) or the server refused;
//! 2 the command could not run (a file that cannot be read, a server that
//! cannot be reached, bad arguments); 3 the data directory is held by a
//! running server (as for every command).

use std::io::Write;
use std::path::PathBuf;

use crate::client::{HttpClient, EXIT_CANNOT_RUN, EXIT_REFUSED};
use crate::inprocess::Local;
use crate::transfer::export::{self, ExportOptions};
use crate::transfer::import::{self, ImportOptions, MAX_BATCH};
use crate::transfer::mapping::{self, Mapping};
use crate::transfer::Transport;

/// Exit status when the data directory is held by a running server: the
/// `EXIT_LOCKED` of every command (`cli` depends on this module, so the
/// value is repeated here; a test holds them equal).
pub const EXIT_LOCKED: u8 = 3;

/// Where the events are: a running server or a stopped data directory.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// A running server's base URL (online), e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "MSGBUS_URL", required_unless_present = "data_dir")]
    pub url: Option<String>,
    /// An access token for `--url`, sent as `Authorization: Bearer`.
    #[arg(long, env = "MSGBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A stopped store's data directory (offline; refused while a server
    /// holds it). Wins over `--url`/`MSGBUS_URL`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `msgbus import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// The store.
    #[command(flatten)]
    pub target: Target,
    /// Files to import, in order (`-`: standard input): NDJSON, a JSON
    /// array, or the predecessor's `{"events": [...]}` file; gzip is read too.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,
    /// Take a CloudEvents attribute from another field of predecessor
    /// records (repeatable): `--map type=kind`, `--map subject=data.story`.
    #[arg(long = "map", value_name = "ATTR=FIELD", value_parser = mapping::parse_override)]
    pub map: Vec<(String, String)>,
    /// `source` of records that name none.
    #[arg(long)]
    pub default_source: Option<String>,
    /// Zone of timestamps without one: `UTC` or a fixed offset (`+02:00`).
    #[arg(long, default_value = "UTC", value_parser = mapping::parse_timezone)]
    pub timezone: i32,
    /// Stop at the first record that cannot be imported (the records
    /// before it are stored).
    #[arg(long)]
    pub strict: bool,
    /// Events per batch (one commit each), 1 to 1000.
    #[arg(long, default_value_t = MAX_BATCH, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u16).range(1..=1000), usize::from))]
    pub batch_size: usize,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Between progress summary lines when standard error is no terminal
    /// (a log): more often is more to read, less often says less.
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub progress_every: std::time::Duration,
}

/// Arguments of `msgbus export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// The store.
    #[command(flatten)]
    pub target: Target,
    /// Output file (`-`: standard output, the default).
    #[arg(long, short = 'o', default_value = "-")]
    pub output: String,
    /// Start after this seq (resume an export with its last seq).
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// Stop at this seq (default: the last seq when the export starts).
    #[arg(long)]
    pub until: Option<u64>,
    /// Only events whose type starts with this.
    #[arg(long)]
    pub type_prefix: Option<String>,
    /// Only events from this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Compress the output with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Lines `{"seq":N,"event":{...}}` instead of a `msgbusseq` attribute.
    #[arg(long)]
    pub with_seq: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Between progress summary lines when standard error is no terminal
    /// (a log): more often is more to read, less often says less.
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub progress_every: std::time::Duration,
}

enum Opened {
    Online(HttpClient),
    Offline(Local),
}

impl Opened {
    fn transport(&self) -> &dyn Transport {
        match self {
            Opened::Online(c) => c,
            Opened::Offline(l) => l,
        }
    }

    async fn close(self) {
        if let Opened::Offline(l) = self {
            l.close().await;
        }
    }
}

/// Opens the target. Offline, `import` creates the store when the
/// directory holds none; `export` refuses such a directory (a mistyped
/// path must not become a new, empty store).
fn open(t: &Target, what: &str) -> Result<Opened, u8> {
    if let Some(dir) = &t.data_dir {
        let layout = crate::store::layout::manifest_path(dir);
        let holds_store = layout.exists() || crate::store::layout::segments_dir(dir).is_dir();
        if what == "export" && !holds_store {
            eprintln!(
                "msgbus export: {} holds no msgbus store (no {} and no {}/)",
                dir.display(),
                crate::store::layout::MANIFEST,
                crate::store::layout::SEGMENTS_DIR
            );
            return Err(EXIT_CANNOT_RUN);
        }
        return match Local::open(dir) {
            Ok(l) => Ok(Opened::Offline(l)),
            Err(e) => {
                eprintln!("msgbus {what}: {e}");
                Err(match e.downcast_ref::<crate::store::StoreError>() {
                    Some(crate::store::StoreError::Locked { .. }) => EXIT_LOCKED,
                    _ => EXIT_CANNOT_RUN,
                })
            }
        };
    }
    let conn = crate::client::Connection {
        url: t.url.clone().unwrap_or_default(),
        token: t.token.clone(),
    };
    HttpClient::new(&conn).map(Opened::Online).map_err(|e| {
        eprintln!("msgbus {what}: {e}");
        EXIT_CANNOT_RUN
    })
}

/// Runs `msgbus import`; returns the exit status.
pub async fn import(args: ImportArgs) -> u8 {
    let opened = match open(&args.target, "import") {
        Ok(o) => o,
        Err(code) => return code,
    };
    let opts = ImportOptions {
        mapping: Mapping {
            overrides: args.map.clone(),
            default_source: args.default_source.clone(),
            utc_offset_secs: args.timezone,
            // The size limit is the server's own (its 413 names the
            // record); every other rule is checked here first.
            limits: crate::event::Limits {
                max_event_bytes: usize::MAX >> 1,
            },
        },
        strict: args.strict,
        batch: args.batch_size,
        quiet: args.quiet,
        progress_every: args.progress_every,
    };
    let mut log = std::io::stderr();
    let result = import::run(opened.transport(), &args.files, &opts, &mut log).await;
    opened.close().await;
    match result {
        Ok(r) => {
            eprintln!(
                "imported {} record(s): {} stored, {} already there, {} rejected{}",
                r.records,
                r.stored,
                r.duplicates,
                r.rejected,
                if r.stopped {
                    " (--strict: stopped at the first rejection)"
                } else {
                    ""
                }
            );
            if r.rejected > 0 {
                EXIT_REFUSED
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("msgbus import: {e}");
            EXIT_CANNOT_RUN
        }
    }
}

/// Runs `msgbus export`; returns the exit status.
pub async fn export(args: ExportArgs) -> u8 {
    let mut sink: Box<dyn Write> = if args.output == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        match std::fs::File::create(&args.output) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("msgbus export: cannot create {}: {e}", args.output);
                return EXIT_CANNOT_RUN;
            }
        }
    };
    let opened = match open(&args.target, "export") {
        Ok(o) => o,
        Err(code) => return code,
    };
    let opts = ExportOptions {
        after: args.after,
        until: args.until,
        type_prefix: args.type_prefix.clone(),
        source: args.source.clone(),
        with_seq: args.with_seq,
        quiet: args.quiet,
        progress_every: args.progress_every,
    };
    let result = if args.gzip {
        let mut gz = flate2::write::GzEncoder::new(sink, flate2::Compression::default());
        let r = export::run(opened.transport(), &opts, &mut gz).await;
        match gz.finish().and_then(|mut w| w.flush()) {
            Ok(()) => r,
            Err(e) => Err(e.into()),
        }
    } else {
        let r = export::run(opened.transport(), &opts, &mut sink).await;
        match sink.flush() {
            Ok(()) => r,
            Err(e) => Err(e.into()),
        }
    };
    opened.close().await;
    match result {
        Ok(r) => {
            if !args.quiet {
                match r.last_seq {
                    Some(last) => eprintln!(
                        "exported {} event(s), last seq {last} (resume with --after {last})",
                        r.events
                    ),
                    None => eprintln!("exported 0 events"),
                }
            }
            0
        }
        Err(export::ExportError::Refused(why)) => {
            eprintln!("msgbus export: {why}");
            EXIT_REFUSED
        }
        Err(e) => {
            eprintln!("msgbus export: {e}");
            EXIT_CANNOT_RUN
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_locked_status_is_every_commands() {
        assert_eq!(super::EXIT_LOCKED, crate::cli::EXIT_LOCKED);
    }
}
