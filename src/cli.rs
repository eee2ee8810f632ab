//! The command line: `msgbus serve` (the default) and the offline tools.

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

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeConfig),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}
