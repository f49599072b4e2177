//! `portcullis`: the Portcullis agent and its command line (see `portcullis::cli`).
use clap::Parser;
use portcullis::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(cli.command.default_log_level())
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // Errors are for operators: the message chain, no backtrace (even with RUST_BACKTRACE set).
    match portcullis::cli::run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
