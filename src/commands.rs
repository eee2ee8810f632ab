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
//!
//! `msgbus migrate` too: a stopped store moved into a NATS JetStream
//! stream; the publishing is [`crate::jetstream::migrate`]'s, this opens the
//! store and shows the progress (exit statuses in [`MigrateArgs`]).

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

/// Arguments of `msgbus migrate`.
///
/// Exit status: 0 every event is in the stream, with the payload schemas
/// and consumers (or `--limit` stopped the run; the summary says whether
/// to run again); 1 stopped partway (what is in the stream stays; run
/// again to continue), or a schema or consumer was refused (the target
/// holds a different one of that name; each is listed); 2 nothing could
/// be done (no store, no server, a stream holding other events); 3 the
/// data directory is held by a running server.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The data directory of a stopped msgbus (file backend).
    #[arg(long)]
    pub from_data_dir: PathBuf,
    /// NATS server URLs, comma-separated (`nats://h1:4222,nats://h2:4222`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub to_nats: Vec<String>,
    /// The stream (created if missing, as `msgbus serve --backend nats`
    /// creates it); its subjects are `<stream>.>`.
    #[arg(long, default_value = "MSGBUS")]
    pub nats_stream: String,
    /// Replicas of the stream if it is created.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// JetStream's duplicate window of the stream if it is created.
    #[arg(long, default_value = "2m", value_parser = crate::config::parse_duration)]
    pub nats_duplicate_window: std::time::Duration,
    /// Credentials, TLS and the connect timeout, as for `serve`.
    #[command(flatten)]
    pub connect: crate::config::NatsConnectArgs,
    /// Most events leased at once per migrated queue consumer, as
    /// `serve --queue-max-leases` (its JetStream consumer's MaxAckPending,
    /// set when it is created): give the servers' value.
    #[arg(long, env = "MSGBUS_QUEUE_MAX_LEASES", default_value_t = 10_000)]
    pub queue_max_leases: usize,
    /// Stop after this many events (a later run continues; schemas and
    /// consumers follow once every event is in the stream).
    #[arg(long)]
    pub limit: Option<u64>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Between progress summary lines when standard error is no terminal.
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub progress_every: std::time::Duration,
}

impl MigrateArgs {
    /// The backend's settings; `max_event_bytes` is the store's own limit
    /// (the backend warns when the servers take less).
    fn settings(&self, max_event_bytes: u64) -> crate::jetstream::Settings {
        crate::jetstream::Settings {
            urls: self.to_nats.clone(),
            stream: self.nats_stream.clone(),
            replicas: self.replicas,
            duplicate_window: self.nats_duplicate_window,
            connect: self.connect.settings(),
            max_messages: None,
            max_age: None,
            max_bytes: None,
            max_event_bytes,
            queue_max_leases: self.queue_max_leases.max(1),
        }
    }
}

/// A stopped store opened by `migrate`: its handle, its writer thread and
/// its `--max-event-bytes`.
type OpenedStore = (
    crate::store::StoreHandle,
    crate::store::handle::WriterThread,
    u64,
);

/// Opens a stopped store as the offline tools do: its lock first, then
/// recovery and the writer thread, with the server's settings.
/// Also answers the store's `--max-event-bytes`.
fn open_store(dir: &std::path::Path) -> Result<OpenedStore, crate::app::AppError> {
    let (config, store, writer) = crate::inprocess::open_store(dir)?;
    Ok((store, writer, config.max_event_bytes))
}

/// Runs `msgbus migrate`; returns the exit status.
pub async fn migrate(args: MigrateArgs) -> u8 {
    use crate::jetstream::migrate::{self as m, Failure};
    let dir = &args.from_data_dir;
    let holds_store = crate::store::layout::manifest_path(dir).exists()
        || crate::store::layout::segments_dir(dir).is_dir();
    if !holds_store {
        eprintln!(
            "msgbus migrate: {} holds no msgbus store (no {} and no {}/)",
            dir.display(),
            crate::store::layout::MANIFEST,
            crate::store::layout::SEGMENTS_DIR
        );
        return EXIT_CANNOT_RUN;
    }
    let (store, writer, max_event_bytes) = match open_store(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("msgbus migrate: {e}");
            return match e.downcast_ref::<crate::store::StoreError>() {
                Some(crate::store::StoreError::Locked { .. }) => EXIT_LOCKED,
                _ => EXIT_CANNOT_RUN,
            };
        }
    };
    let mut progress = crate::progress::Progress::new("migrate", "events", None, args.quiet)
        .every(args.progress_every);
    let mut shown = 0;
    let mut on_progress = |done: u64, total: u64| {
        progress.set_total(total);
        progress.add(done - shown);
        shown = done;
    };
    let result = m::migrate(
        &store,
        &dir.display().to_string(),
        args.settings(max_event_bytes),
        args.limit,
        &mut on_progress,
    )
    .await;
    progress.finish();
    store.close().await;
    drop(store);
    writer.join().await;
    let stream = &args.nats_stream;
    match result {
        Ok(done) if done.events_complete() => {
            if done.first == 0 && done.last > 0 {
                eprintln!(
                    "the store holds no event (retention removed seqs up to {}): no event to \
                     migrate; stream {stream}'s next seq is {}, as the store's would be",
                    done.last,
                    done.stream_last + 1
                );
            } else if done.first == 0 {
                eprintln!("the store holds no event: no event to migrate");
            } else {
                eprintln!(
                    "migrated {} event(s) in this run; stream {stream} holds seqs {}..={} of \
                     the store: every event is migrated",
                    done.published, done.first, done.last
                );
            }
            let Some(c) = done.carried else {
                eprintln!(
                    "the store has no payload schema and no consumer: the migration is complete"
                );
                return 0;
            };
            eprintln!(
                "payload schemas: {} type(s) in the store; {} version(s) registered and {} \
                 type(s)' validation stopped in this run",
                c.schema_types, c.schema_versions, c.schemas_stopped
            );
            eprintln!(
                "consumers: {} in the store; {} created in this run; {} queue ledger(s) written \
                 in this run, with {} dead letter(s); {} kept as the target had them",
                c.consumers, c.consumers_created, c.ledgers, c.dead_letters, c.ledgers_kept
            );
            for note in &c.notes {
                eprintln!("note: {note}");
            }
            for why in &c.refused {
                eprintln!("refused: {why}");
            }
            if c.refused.is_empty() {
                eprintln!("the migration is complete");
                0
            } else {
                eprintln!(
                    "msgbus migrate: {} schema(s) or consumer(s) refused (listed above); the \
                     rest is migrated",
                    c.refused.len()
                );
                EXIT_REFUSED
            }
        }
        Ok(done) => {
            eprintln!(
                "migrated {} event(s) in this run; stream {stream} holds seqs {}..={} of \
                 {}..={}: run again to continue (payload schemas and consumers follow once \
                 every event is in the stream)",
                done.published, done.first, done.stream_last, done.first, done.last
            );
            0
        }
        Err(Failure::CannotRun(why)) => {
            eprintln!("msgbus migrate: {why}");
            EXIT_CANNOT_RUN
        }
        Err(Failure::Failed(why)) => {
            eprintln!("msgbus migrate: {why}");
            EXIT_REFUSED
        }
    }
}
