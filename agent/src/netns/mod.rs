//! Network namespaces and the one topology every lab is built from: the demo, the privileged
//! tests and the benchmarks (see `docs/topology.md` for the picture and the reasons).
//!
//! - [`Netns`]: a named namespace (`/run/netns/<name>`), deleted on drop when this handle
//!   created it; run a closure inside it ([`Netns::run`]) or move the calling thread in until
//!   a guard drops ([`Netns::enter`]).
//! - [`Veth`]: a veth pair between two namespaces with its [`Offloads`], removed on drop.
//! - [`Topology`]: gateway namespace, private network namespace behind it and client
//!   namespaces on a point-to-point underlay, with addresses, routes and static neighbours.
//! - [`inet_checksum`], [`IcmpSocket`] and [`ping`]: the RFC 1071 checksum and ICMP echo.
//!
//! Links are configured with the `ip` and `ethtool` commands (iproute2, ethtool: `cargo xtask
//! setup` installs them): offloads have no rtnetlink interface, and one tool for everything
//! keeps a failing step easy to reproduce by hand.
mod icmp;
mod link;
mod ns;
mod topology;

pub use icmp::{inet_checksum, ping, IcmpSocket};
pub use link::{fmt_mac, Offloads, Veth, VethEnd};
pub use ns::{Netns, NsGuard};
pub use topology::{
    attach_client, PrivateNetwork, Topology, TopologyBuilder, UnderlayClient, UNDERLAY_GW,
};

use std::process::Command;

/// What went wrong while building or using a namespace topology.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("running {program} (install it: cargo xtask setup): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    #[error("network namespace {name}: {source}")]
    Namespace {
        name: String,
        source: std::io::Error,
    },
    #[error("{what} in namespace {ns}: {source}")]
    Io {
        what: String,
        ns: String,
        source: std::io::Error,
    },
    #[error("{what} in namespace {ns}: unexpected {text:?}")]
    Parse {
        what: String,
        ns: String,
        text: String,
    },
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Run `program args`, failing with its output when it does not succeed; its stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let spawn_err = |source| NetnsError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = if let Some(text) = stdin {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut w) = child.stdin.take() {
            w.write_all(text.as_bytes()).map_err(spawn_err)?;
        }
        child.wait_with_output().map_err(spawn_err)?
    } else {
        cmd.output().map_err(spawn_err)?
    };
    if !out.status.success() {
        return Err(NetnsError::Command {
            command: format!("{program} {}", args.join(" ")),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
