//! The command line: clap types, and each command's work and output. `main.rs` only parses
//! and calls [`run`].
pub mod certificates;
pub use certificates::CertificatesCmd;
pub mod check;
pub mod connections;
pub mod fleet;
pub mod logs;
pub mod pki;
pub mod status;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::admin::{AdminClient, ClientError, Reply, VERSION};
use crate::endpoint::{BuildOptions, Endpoint};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Self-hosted client VPN gateway with an XDP data path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run an endpoint from its configuration file until SIGTERM (root).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Leave the pinned maps at shutdown, so a new agent re-adopts the live flows.
        #[arg(long)]
        keep_maps: bool,
        /// bpffs directory under which the endpoint's pins live (<pin-root>/<name>).
        #[arg(long, default_value = crate::datapath::DEFAULT_PIN_ROOT)]
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
    /// The running agent's built-in PKI (`[tls] pki_dir`): list, revoke (audited).
    Certificates {
        #[command(subcommand)]
        action: CertificatesCmd,
    },
    /// Search the running agent's connection log or flow log (JSON lines, newest first).
    Logs {
        #[command(subcommand)]
        action: LogsCmd,
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
    /// Web console helpers.
    Console {
        #[command(subcommand)]
        action: ConsoleCmd,
    },
    /// A small CA for endpoints without a PKI: init, issue-server, issue-client, revoke, crl, tls-crypt-v2 keys.
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
        /// Two gateways of one endpoint and a one-member etcd (needs etcd-server): the
        /// fleet-wide registry, one publish, and a failover when a gateway is killed.
        #[arg(long, conflicts_with = "keep")]
        fleet: bool,
    },
    /// Fleet mode: several gateways serving one endpoint, coordinated through etcd.
    Fleet {
        #[command(subcommand)]
        action: FleetCmd,
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
        #[arg(long, default_value = crate::datapath::DEFAULT_PIN_ROOT)]
        pin_root: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// How the CLI finds the running agent.
#[derive(clap::Args)]
pub struct Admin {
    /// The endpoint's configuration file (its admin socket is read from it).
    #[arg(long, conflicts_with = "admin_socket")]
    config: Option<PathBuf>,
    /// The admin socket (default: /run/portcullis/<name>.sock from --config).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
}

impl Admin {
    pub fn socket(&self) -> Result<PathBuf> {
        match (&self.admin_socket, &self.config) {
            (Some(s), _) => Ok(s.clone()),
            // Parsed only: the socket must be found while the file is being edited (a
            // reload of a broken file reaches the agent, which reports and keeps its policy).
            (None, Some(c)) => Ok(crate::config::EndpointConfig::load_unvalidated(c)
                .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", c.display()))?
                .admin_socket()),
            (None, None) => anyhow::bail!("give --config FILE or --admin-socket PATH"),
        }
    }
}

#[derive(Subcommand)]
pub enum ConnectionsCmd {
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
        /// Session id (from `connections list`); in a fleet `GATEWAY/ID` for a session of
        /// another gateway.
        #[arg(required_unless_present = "user", value_parser = connections::parse_id)]
        id: Option<connections::SessionRef>,
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum LogsCmd {
    /// Connection attempts, updates and ends, by user, time and failure code.
    Connections(logs::LogsArgs),
    /// Denied (and logged allowed) flows, by user, time, destination and rule.
    Flows(logs::LogsArgs),
}

#[derive(Subcommand)]
pub enum ClientConfigCmd {
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
pub enum PolicyCmd {
    /// Dry run: would USER reach IP[:PORT/PROTO]? Names the deciding authorization rule,
    /// route and security-group rule (local groups from the file).
    Explain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        user: String,
        /// `10.0.0.5` (ICMP), `10.0.0.5:443/tcp`, `10.0.0.5:53/udp`.
        #[arg(long)]
        to: crate::explain::Destination,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ConsoleCmd {
    /// Read a password (one line) on stdin and print its argon2 hash for
    /// `[[console.admin]] password_hash`.
    HashPassword,
}

#[derive(Subcommand)]
pub enum FleetCmd {
    /// Check FILE exactly as `check` does and publish its shared part (groups, rules, routes,
    /// security groups, pushed options) to etcd; every gateway of the endpoint applies it
    /// through its live reload. Prints the etcd revision (what `status` shows per gateway).
    Publish {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum PkiCmd {
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

impl Command {
    /// The demo prints its own story; the agent's log would interleave with it.
    pub fn default_log_level(&self) -> &'static str {
        if matches!(self, Command::Demo { .. }) {
            "warn"
        } else {
            "info"
        }
    }
}

fn client(admin: &Admin) -> Result<AdminClient> {
    Ok(AdminClient::connect(&admin.socket()?)?)
}

/// An agent's refusal, for operators.
fn refused(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused(m) => anyhow::anyhow!("the agent refused: {m}"),
        e => e.into(),
    }
}

/// A reply as JSON, as the agent sent it.
fn print_reply<T: Serialize>(body: T) -> Result<()> {
    let reply = Reply {
        v: VERSION,
        ok: true,
        body,
    };
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(())
}

/// `portcullis run`: one endpoint from one configuration file until SIGTERM/SIGINT; reloads
/// on SIGHUP, `portcullis reload` or a change of the file.
pub fn run_endpoint(config: &std::path::Path, keep_maps: bool, pin_root: PathBuf) -> Result<()> {
    // The file's and the policy compiler's errors together, before anything is set up.
    let (cfg, _) =
        crate::endpoint::live::load_and_compile(config, &|n| crate::datapath::ifindex(n), None)?;
    Endpoint::build(
        &cfg,
        &BuildOptions {
            config_path: Some(config.to_path_buf()),
            pin_root,
            keep_maps,
            ..BuildOptions::default()
        },
    )?
    .run()
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            keep_maps,
            pin_root,
        } => run_endpoint(&config, keep_maps, pin_root),
        Command::Check { config, json } => check::check(&config, json),
        Command::Reload { admin } => {
            let r = client(&admin)?.reload().map_err(refused)?;
            println!("reloaded: policy generation {}", r.generation);
            if !r.pending_restart.is_empty() {
                println!(
                    "changed, applied at the next restart of the agent: {}",
                    r.pending_restart.join(", ")
                );
            }
            Ok(())
        }
        Command::Connections {
            action: ConnectionsCmd::List { admin, json },
        } => {
            let r = client(&admin)?.connections().map_err(refused)?;
            if json {
                print_reply(r)
            } else {
                print!("{}", connections::table(&r.connections));
                if let Some(e) = &r.fleet_error {
                    eprintln!("fleet: {e}");
                }
                Ok(())
            }
        }
        Command::Connections {
            action: ConnectionsCmd::Terminate { admin, id, user },
        } => match client(&admin)?.terminate(
            id.as_ref().map(|i| i.id),
            user,
            id.and_then(|i| i.gateway),
        ) {
            Ok(r) => {
                println!("terminated: {}", serde_json::to_string(&r.terminated)?);
                if !r.remote.is_empty() {
                    println!("on other gateways: {}", r.remote.join(", "));
                }
                Ok(())
            }
            Err(ClientError::Refused(e)) => anyhow::bail!("{e}"),
            Err(e) => Err(e.into()),
        },
        Command::Certificates {
            action: CertificatesCmd::List { admin, json },
        } => {
            let r = client(&admin)?.certificates().map_err(refused)?;
            if json {
                print_reply(r)
            } else {
                print!("{}", certificates::table(&r));
                Ok(())
            }
        }
        Command::Certificates {
            action:
                CertificatesCmd::Revoke {
                    admin,
                    name,
                    serial,
                },
        } => {
            let r = client(&admin)?.revoke(name, serial).map_err(refused)?;
            println!(
                "revoked {} (CRL #{}); their sessions end within a second",
                r.revoked.join(", "),
                r.crl_number
            );
            Ok(())
        }
        Command::Logs { action } => match action {
            LogsCmd::Connections(a) => logs::run(crate::admin::LogKind::Connections, a),
            LogsCmd::Flows(a) => logs::run(crate::admin::LogKind::Flows, a),
        },
        Command::ClientConfig {
            action: ClientConfigCmd::Export { config, cert, key },
        } => {
            let cfg = crate::config::EndpointConfig::load(&config)
                .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", config.display()))?;
            print!(
                "{}",
                crate::profile::render(&cfg, cert.as_deref(), key.as_deref())?
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
            let cfg = crate::config::EndpointConfig::load_unvalidated(&config)
                .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", config.display()))?;
            let e = crate::explain::explain(&cfg.policy(), &user, to)?;
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
        Command::Console {
            action: ConsoleCmd::HashPassword,
        } => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "no password on stdin");
            let hash =
                crate::console::accounts::hash_password(password).map_err(anyhow::Error::msg)?;
            println!("{hash}");
            Ok(())
        }
        Command::Pki { action } => match action {
            PkiCmd::Init { dir, name, days } => pki::init(&dir, &name, days),
            PkiCmd::IssueServer { dir, cn, days } => pki::issue(&dir, &cn, true, days),
            PkiCmd::IssueClient { dir, cn, days } => pki::issue(&dir, &cn, false, days),
            PkiCmd::Revoke { dir, cn } => pki::revoke(&dir, &cn),
            PkiCmd::Crl { dir } => pki::crl(&dir),
            PkiCmd::TlsCryptV2Server { out } => pki::tls_crypt_v2_server(&out),
            PkiCmd::TlsCryptV2Client { server_key, out } => {
                pki::tls_crypt_v2_client(&server_key, &out)
            }
        },
        Command::Fleet {
            action: FleetCmd::Publish { config },
        } => {
            let revision = fleet::publish(&config)?;
            println!("published: revision {revision}");
            Ok(())
        }
        Command::Demo { keep, fleet } => crate::demo::run(crate::demo::DemoOptions { keep, fleet }),
        Command::Status {
            admin: _,
            endpoint: Some(endpoint),
            pin_root,
            json,
        } => status::print(&pin_root.join(&endpoint), json),
        Command::Status {
            admin,
            endpoint: None,
            json,
            ..
        } => {
            let r = client(&admin)?.status().map_err(refused)?;
            if json {
                print_reply(r)
            } else {
                status::print_agent(&r);
                Ok(())
            }
        }
    }
}
