//! The `msgbus` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use msgbus::cli::{Cli, Command};
use msgbus::offline::Verdict;
use msgbus::store::StoreError;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Some(Command::Verify(args)) => {
            return match msgbus::offline::verify(&args.data_dir, &mut std::io::stdout()) {
                Ok(Verdict::Healthy) => ExitCode::SUCCESS,
                Ok(Verdict::TornTail) => ExitCode::from(2),
                Ok(Verdict::Damaged) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("msgbus: {e}");
                    exit_code(&e)
                }
            };
        }
        Some(Command::Backup(args)) => msgbus::offline::backup(&args.data_dir)
            .map(|dir| println!("verified backup {}", dir.display()))
            .map_err(Into::into),
        Some(Command::Restore { store, from }) => msgbus::offline::restore(&store.data_dir, &from)
            .map(|last| {
                println!(
                    "restored {} from {}; last seq {last}",
                    store.data_dir.display(),
                    from.display()
                )
            })
            .map_err(Into::into),
        None => msgbus::app::serve(cli.serve).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msgbus: {e}");
            exit_code(e.as_ref())
        }
    }
}

/// Exit status 3 when the data directory is held by another msgbus (see
/// `msgbus --help`), 1 for any other failure.
fn exit_code(e: &(dyn std::error::Error + 'static)) -> ExitCode {
    match e.downcast_ref::<StoreError>() {
        Some(StoreError::Locked { .. }) => ExitCode::from(msgbus::cli::EXIT_LOCKED),
        _ => ExitCode::FAILURE,
    }
}
