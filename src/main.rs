//! The `msgbus` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use msgbus::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    msgbus::telemetry::init(cli.log_format);
    let result = match cli.command {
        Some(Command::Openapi) => {
            print!("{}", msgbus::http::docs::openapi_json());
            Ok(())
        }
        Some(Command::Serve(config)) => msgbus::app::serve(config).await,
        None => msgbus::app::serve(cli.serve).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msgbus: {e}");
            ExitCode::FAILURE
        }
    }
}
