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
    /// Run an endpoint from its configuration file until SIGTERM (root).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Leave the pinned maps at shutdown, so a new agent re-adopts the live flows.
        #[arg(long)]
        keep_maps: bool,
        /// bpffs directory under which the endpoint's pins live (<pin-root>/<name>).
        #[arg(long, default_value = portcullis::datapath::DEFAULT_PIN_ROOT)]
        pin_root: PathBuf,
    },
    /// Validate a configuration file and print a summary of the compiled policy.
    Check {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running agent to reload its configuration (same as SIGHUP).
    Reload {
        #[command(flatten)]
        admin: Admin,
    },
    /// Sessions of the running agent.
    Connections {
        #[command(subcommand)]
        action: ConnectionsCmd,
    },
    /// Client profiles.
    ClientConfig {
        #[command(subcommand)]
        action: ClientConfigCmd,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        action: PolicyCmd,
    },
    /// A small CA for endpoints without a PKI: init, issue-server, issue-client, revoke, crl.
    Pki {
        #[command(subcommand)]
        action: PkiCmd,
    },
    /// Bring up a gateway, two clients and a private network in network namespaces, send
    /// allowed and denied traffic through the XDP data path with the embedded default
    /// policy, and show the verdicts, counters and flows. Needs root.
    Demo {
        /// Keep everything up until Ctrl-C, to inspect the pinned maps with bpftool.
        #[arg(long)]
        keep: bool,
    },
    /// A running endpoint: policy generation, reloads, sessions, drops and map fill levels
    /// (from the agent, via --config/--admin-socket), or the data path alone from its pinned
    /// maps (--endpoint: works while the agent is down, e.g. between restarts with kept maps).
    Status {
        #[command(flatten)]
        admin: Admin,
        /// Read the pinned maps of this endpoint instead of asking the agent.
        #[arg(long, conflicts_with_all = ["config", "admin_socket"])]
        endpoint: Option<String>,
        #[arg(long, default_value = portcullis::datapath::DEFAULT_PIN_ROOT)]
        pin_root: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// How the CLI finds the running agent.
#[derive(clap::Args)]
struct Admin {
    /// The endpoint's configuration file (its admin socket is read from it).
    #[arg(long, conflicts_with = "admin_socket")]
    config: Option<PathBuf>,
    /// The admin socket (default: /run/portcullis/<name>.sock from --config).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
}

impl Admin {
    fn socket(&self) -> Result<PathBuf> {
        match (&self.admin_socket, &self.config) {
            (Some(s), _) => Ok(s.clone()),
            // Parsed only: the socket must be found while the file is being edited (a
            // reload of a broken file reaches the agent, which reports and keeps its policy).
            (None, Some(c)) => Ok(portcullis::config::EndpointConfig::load_unvalidated(c)
                .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", c.display()))?
                .admin_socket()),
            (None, None) => anyhow::bail!("give --config FILE or --admin-socket PATH"),
        }
    }
}

#[derive(Subcommand)]
enum ConnectionsCmd {
    /// Id, user, addresses, transport, age and traffic of every session.
    List {
        #[command(flatten)]
        admin: Admin,
        #[arg(long)]
        json: bool,
    },
    /// Disconnect a session by id, or every session of a user.
    Terminate {
        #[command(flatten)]
        admin: Admin,
        /// Session id (from `connections list`).
        #[arg(required_unless_present = "user")]
        id: Option<u32>,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum ClientConfigCmd {
    /// Print an .ovpn profile for the endpoint (AWS-style, inline CA and tls-crypt key).
    Export {
        #[arg(long)]
        config: PathBuf,
        /// Inline this client certificate (PEM) and --key.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Dry run: would USER reach IP[:PORT/PROTO]? Names the deciding authorization rule,
    /// route and security-group rule (local groups from the file).
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        user: String,
        /// `10.0.0.5` (ICMP), `10.0.0.5:443/tcp`, `10.0.0.5:53/udp`.
        #[arg(long)]
        to: portcullis::explain::Destination,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a CA in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "Portcullis CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a server certificate (EKU serverAuth, SAN from the name).
    IssueServer {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cn: String,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a client certificate (EKU clientAuth; the CN is the user name).
    IssueClient {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cn: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Revoke every certificate issued to CN and regenerate crl.pem.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cn: String,
    },
    /// Regenerate crl.pem (valid 30 days).
    Crl {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Create a tls-crypt-v2 server key (`[tls] tls_crypt_v2_server_key`).
    TlsCryptV2Server {
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a tls-crypt-v2 client key wrapped under SERVER_KEY (`client-config export`
    /// makes one per profile by itself).
    TlsCryptV2Client {
        #[arg(long)]
        server_key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn print_json_or(
    v: &serde_json::Value,
    json: bool,
    table: impl FnOnce(&serde_json::Value),
) -> Result<()> {
    if v.get("ok") == Some(&serde_json::Value::Bool(false)) {
        anyhow::bail!(
            "the agent refused: {}",
            v.get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no reason given")
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        table(v);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Errors are for operators: the message chain, no backtrace (even with RUST_BACKTRACE set).
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; the agent's log would interleave with it.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    use portcullis::agent::{admin_request, AdminRequest};
    match cli.command {
        Command::Run {
            config,
            keep_maps,
            pin_root,
        } => portcullis::agent::run(&config, keep_maps, &pin_root),
        Command::Check { config, json } => portcullis::agent::check(&config, json),
        Command::Reload { admin } => {
            let v = admin_request(&admin.socket()?, &AdminRequest::Reload)?;
            print_json_or(&v, false, |v| {
                println!("reloaded: policy generation {}", v["generation"]);
                let pending = portcullis::status::pending_restart(v);
                if !pending.is_empty() {
                    println!(
                        "changed, applied at the next restart of the agent: {}",
                        pending.join(", ")
                    );
                }
            })
        }
        Command::Connections {
            action: ConnectionsCmd::List { admin, json },
        } => {
            let v = admin_request(&admin.socket()?, &AdminRequest::Connections)?;
            print_json_or(&v, json, |v| {
                print!("{}", portcullis::agent::connections_table(v));
            })
        }
        Command::Connections {
            action: ConnectionsCmd::Terminate { admin, id, user },
        } => {
            let v = admin_request(&admin.socket()?, &AdminRequest::Terminate { id, user })?;
            if v["ok"] != serde_json::Value::Bool(true) {
                anyhow::bail!("no such session");
            }
            println!("terminated: {}", v["terminated"]);
            Ok(())
        }
        Command::ClientConfig {
            action: ClientConfigCmd::Export { config, cert, key },
        } => {
            let cfg = portcullis::config::EndpointConfig::load(&config)
                .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", config.display()))?;
            print!(
                "{}",
                portcullis::profile::render(&cfg, cert.as_deref(), key.as_deref())?
            );
            Ok(())
        }
        Command::Policy {
            action:
                PolicyCmd::Explain {
                    config,
                    user,
                    to,
                    json,
                },
        } => {
            let cfg = portcullis::config::EndpointConfig::load_unvalidated(&config)
                .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", config.display()))?;
            let e = portcullis::explain::explain(&cfg.policy(), &user, to)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!("{} (groups {:?}) -> {}", e.user, e.groups, e.destination);
                for s in &e.steps {
                    println!("  {s}");
                }
                println!("{}", e.verdict);
            }
            Ok(())
        }
        Command::Pki { action } => match action {
            PkiCmd::Init { dir, name, days } => portcullis::pki_cli::init(&dir, &name, days),
            PkiCmd::IssueServer { dir, cn, days } => {
                portcullis::pki_cli::issue(&dir, &cn, true, days)
            }
            PkiCmd::IssueClient { dir, cn, days } => {
                portcullis::pki_cli::issue(&dir, &cn, false, days)
            }
            PkiCmd::Revoke { dir, cn } => portcullis::pki_cli::revoke(&dir, &cn),
            PkiCmd::Crl { dir } => portcullis::pki_cli::crl(&dir),
            PkiCmd::TlsCryptV2Server { out } => portcullis::pki_cli::tls_crypt_v2_server(&out),
            PkiCmd::TlsCryptV2Client { server_key, out } => {
                portcullis::pki_cli::tls_crypt_v2_client(&server_key, &out)
            }
        },
        Command::Demo { keep } => portcullis::demo::run(portcullis::demo::DemoOptions { keep }),
        Command::Status {
            admin,
            endpoint: Some(endpoint),
            pin_root,
            json,
        } => {
            let _ = admin;
            portcullis::status::print(&pin_root.join(&endpoint), json)
        }
        Command::Status {
            admin,
            endpoint: None,
            json,
            ..
        } => {
            let v = admin_request(&admin.socket()?, &AdminRequest::Status)?;
            print_json_or(&v, json, portcullis::status::print_agent)
        }
    }
}
