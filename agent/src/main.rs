//! `portcullis`: the Portcullis agent and its command line.
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Self-hosted client VPN gateway with an XDP data path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up a gateway, two clients and a private network in network namespaces, send
    /// allowed and denied traffic through the XDP data path with the embedded default
    /// policy, and show the verdicts, counters and flows. Needs root.
    Demo {
        /// Keep everything up until Ctrl-C, to inspect the pinned maps with bpftool.
        #[arg(long)]
        keep: bool,
    },
    /// Print the data-path counters and flows of a running endpoint from its pinned maps.
    Status {
        /// Endpoint name (pins live in <pin-root>/<endpoint>).
        #[arg(long)]
        endpoint: String,
        #[arg(long, default_value = portcullis::datapath::DEFAULT_PIN_ROOT)]
        pin_root: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo { keep } => portcullis::demo::run(portcullis::demo::DemoOptions { keep }),
        Command::Status {
            endpoint,
            pin_root,
            json,
        } => portcullis::status::print(&pin_root.join(&endpoint), json),
    }
}
