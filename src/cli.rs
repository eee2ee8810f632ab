//! The command line: `msgbus serve` (the default), the offline tools, and
//! the client commands (`pub`, `sub`, `import`, `export`).

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::ServeConfig;

/// A durable HTTP message bus for software agents.
#[derive(Debug, Parser)]
#[command(
    name = "msgbus",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Server settings, used when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeConfig,

    /// Log format: `pretty` for people, `json` for log collectors. The
    /// level comes from `RUST_LOG` (default `info`).
    #[arg(long, global = true, env = "MSGBUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

/// Exit status of every command when the data directory is held by
/// another msgbus (its `LOCK`): nothing was done; stop that one first.
pub const EXIT_LOCKED: u8 = 3;

/// Subcommands.
// Parsed once at start; boxing the server settings would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeConfig),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Check every file of a stopped store without changing it. Exit 0:
    /// healthy; 2: only a torn last record (the next start cuts it); 1: damage;
    /// 3: the store is not stopped (another msgbus holds its lock).
    Verify(OfflineArgs),
    /// Take a verified backup of a stopped store.
    Backup(OfflineArgs),
    /// Manage access tokens (works while the server runs).
    Token {
        /// What to do.
        #[command(subcommand)]
        command: crate::auth::command::TokenCommand,
    },
    /// Alert channels.
    Alert {
        /// What to do.
        #[command(subcommand)]
        command: AlertCommand,
    },
    /// Replace a stopped store's manifest and segments with a verified
    /// backup (the replaced files are moved to quarantine/, not deleted).
    Restore {
        /// The store.
        #[command(flatten)]
        store: OfflineArgs,
        /// Backup directory, or the name of one under DATA_DIR/backups.
        #[arg(long)]
        from: std::path::PathBuf,
    },
    /// Publish an event (or NDJSON batches) to a running server.
    Pub(crate::client::publish::PubArgs),
    /// Follow a running server's events (the live stream, or a durable
    /// consumer) and print one per line.
    Sub(crate::client::subscribe::SubArgs),
    /// Import events from files (NDJSON, a JSON array, the predecessor's
    /// message-bus file) into a running server or a stopped store.
    /// Exit 0: all imported; 1: some rejected; 2: could not run; 3: the
    /// data directory is held by a running server.
    Import(crate::commands::ImportArgs),
    /// Export stored events as NDJSON (one event per line, as stored).
    Export(crate::commands::ExportArgs),
    /// Move a stopped store into the NATS JetStream stream that
    /// `serve --backend nats` serves, keeping every event's seq and bytes;
    /// resumable and idempotent. Exit 0: done (or --limit reached); 1:
    /// stopped partway (run again); 2: could not run; 3: the data
    /// directory is held by a running server.
    Migrate(crate::commands::MigrateArgs),
}

/// `msgbus alert ...`.
// Parsed once at start; boxing the server settings would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Send a test alert through every configured channel (webhook, email),
    /// read from the same flags and `MSGBUS_*` variables as `serve`; print
    /// one line per channel; exit 1 if any failed (or none is configured).
    Test(ServeConfig),
}

/// The data directory an offline tool works on.
#[derive(Debug, clap::Args)]
pub struct OfflineArgs {
    /// The data directory of a stopped msgbus.
    #[arg(long, env = "MSGBUS_DATA_DIR", default_value = "./data")]
    pub data_dir: std::path::PathBuf,
    /// No progress output (`verify`, `backup`, `restore`).
    #[arg(long, short)]
    pub quiet: bool,
    /// Between progress summary lines when standard error is no terminal.
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    pub progress_every: std::time::Duration,
}

impl OfflineArgs {
    /// The progress of `what`, as these arguments ask.
    pub fn progress(&self, what: &'static str) -> crate::progress::Progress {
        crate::progress::Progress::new(what, "files", None, self.quiet).every(self.progress_every)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}
