//! The `msgbus` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use msgbus::cli::{Cli, Command};
use msgbus::offline::Verdict;
use msgbus::store::StoreError;

mod allocator;

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    msgbus::telemetry::init(cli.log_format);
    let serving = matches!(cli.command, None | Some(Command::Serve(_)));
    if serving {
        msgbus::server::raise_descriptor_limit();
    }
    if let Some(limit) = msgbus::server::descriptor_limit_too_low() {
        eprintln!(
            "msgbus: too many open files: the open-file limit (RLIMIT_NOFILE) is {limit}, \
             below the {} msgbus needs to start; nothing is damaged: raise it (ulimit -n)",
            msgbus::server::MIN_OPEN_FILES
        );
        return ExitCode::FAILURE;
    }
    // Built by hand rather than with `#[tokio::main]`, which panics when
    // the runtime cannot start (it needs a few descriptors of its own).
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) if msgbus::store::fsutil::is_descriptor_exhaustion(&e) => {
            eprintln!(
                "msgbus: too many open files: cannot start the async runtime: {e}; \
                 nothing is damaged: raise the open-file limit (ulimit -n)"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("msgbus: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Some(Command::Openapi) => {
            print!("{}", msgbus::http::docs::openapi_json());
            Ok(())
        }
        Some(Command::Serve(config)) => msgbus::app::serve(config).await,
        Some(Command::Verify(args)) => {
            return match msgbus::offline::verify_showing(
                &args.data_dir,
                &mut std::io::stdout(),
                &mut args.progress("verify"),
            ) {
                Ok(Verdict::Healthy) => ExitCode::SUCCESS,
                Ok(Verdict::TornTail) => ExitCode::from(2),
                Ok(Verdict::Damaged) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("msgbus: {e}");
                    exit_code(&e)
                }
            };
        }
        Some(Command::Token { command }) => {
            msgbus::auth::command::run(command, &mut std::io::stdout())
        }
        Some(Command::Alert {
            command: msgbus::cli::AlertCommand::Test(config),
        }) => {
            return match msgbus::alerts::send_test(&config.alert_settings(), &mut std::io::stdout())
                .await
            {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("msgbus: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Backup(args)) => {
            msgbus::offline::backup_showing(&args.data_dir, &mut args.progress("backup"))
                .map(|dir| println!("verified backup {}", dir.display()))
                .map_err(Into::into)
        }
        Some(Command::Restore { store, from }) => {
            msgbus::offline::restore_showing(&store.data_dir, &from, &mut store.progress("restore"))
                .map(|last| {
                    println!(
                        "restored {} from {}; last seq {last}",
                        store.data_dir.display(),
                        from.display()
                    )
                })
                .map_err(Into::into)
        }
        Some(Command::Pub(args)) => {
            return ExitCode::from(msgbus::client::publish::run(args, &mut std::io::stdout()).await)
        }
        Some(Command::Sub(args)) => {
            return ExitCode::from(
                msgbus::client::subscribe::run(args, &mut std::io::stdout()).await,
            )
        }
        Some(Command::Import(args)) => return ExitCode::from(msgbus::commands::import(args).await),
        Some(Command::Export(args)) => return ExitCode::from(msgbus::commands::export(args).await),
        Some(Command::Migrate(args)) => {
            return ExitCode::from(msgbus::commands::migrate(args).await)
        }
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
