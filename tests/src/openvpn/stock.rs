//! The stock `openvpn` binary as a client and as the reference server.
use std::{
    collections::HashMap, fs, net::Ipv4Addr, os::unix::fs::PermissionsExt, path::PathBuf,
    time::Duration,
};

use super::{ClientConfig, Proc, StockServerConfig, TempDir};
use crate::NetNs;

/// What a connected client learned, from its up script's environment.
#[derive(Clone, Debug)]
pub struct Connected {
    /// `ifconfig_local`.
    pub tun_addr: Ipv4Addr,
    pub env: HashMap<String, String>,
}

impl Connected {
    /// Pushed routes `(network, netmask)` from `route_network_N` / `route_netmask_N`.
    pub fn routes(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        (1..)
            .map_while(|i| {
                let net = self.env.get(&format!("route_network_{i}"))?;
                let mask = self.env.get(&format!("route_netmask_{i}"))?;
                Some((net.parse().ok()?, mask.parse().ok()?))
            })
            .collect()
    }

    /// `foreign_option_N` values in order (`dhcp-option DNS 10.0.0.2`, ...).
    pub fn foreign_options(&self) -> Vec<String> {
        (1..)
            .map_while(|i| self.env.get(&format!("foreign_option_{i}")).cloned())
            .collect()
    }
}

/// A stock `openvpn` client in a namespace. Drop stops it (and prints its log if the thread
/// is panicking). One per namespace: the tun device is always [`TUN_DEV`].
pub struct OvpnClient {
    pub proc: Proc,
    env_file: PathBuf,
    // Last: the log must outlive the process guard's panic dump.
    _dir: TempDir,
}

impl OvpnClient {
    pub fn start(ns: &NetNs, cfg: &ClientConfig) -> OvpnClient {
        let dir = TempDir::new("ovpnc");
        let env_file = dir.path().join("up.env");
        let up = dir.path().join("up.sh");
        // Atomic rename: a reader never sees half a file.
        fs::write(
            &up,
            format!(
                "#!/bin/sh\nenv > '{0}.tmp' && mv '{0}.tmp' '{0}'\n",
                env_file.display()
            ),
        )
        .expect("write up script");
        fs::set_permissions(&up, fs::Permissions::from_mode(0o755)).expect("chmod up script");
        let conf = dir.path().join("client.conf");
        fs::write(&conf, cfg.render(&up)).expect("write client config");
        let conf_s = conf.to_string_lossy().into_owned();
        let proc = Proc::spawn(
            ns,
            &["openvpn", "--config", &conf_s],
            &dir.path().join("openvpn.log"),
            "openvpn client",
        );
        OvpnClient {
            proc,
            env_file,
            _dir: dir,
        }
    }

    /// Wait for "Initialization Sequence Completed" and read the up script's environment.
    pub fn wait_connected(&self, timeout: Duration) -> Result<Connected, String> {
        self.proc
            .wait_log_or_exit("Initialization Sequence Completed", timeout)?;
        // The up script runs before that line is logged, so its file exists by now.
        let env = self.env().ok_or_else(|| {
            format!(
                "connected but no up-script environment at {:?}",
                self.env_file
            )
        })?;
        let tun_addr = env
            .get("ifconfig_local")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no ifconfig_local in the up-script environment: {env:?}"))?;
        Ok(Connected { tun_addr, env })
    }

    /// The environment of the last up-script run, if any.
    pub fn env(&self) -> Option<HashMap<String, String>> {
        let text = fs::read_to_string(&self.env_file).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.proc.wait_log(pattern, timeout)
    }

    /// How often `pattern` occurs in the log.
    pub fn log_count(&self, pattern: &str) -> usize {
        self.proc.log_count(pattern)
    }

    /// Wait until `pattern` occurs `n` times (after a reconnect the first connect's lines are
    /// still in the log, so [`OvpnClient::wait_connected`] returns at once).
    pub fn wait_log_count(&self, pattern: &str, n: usize, timeout: Duration) -> bool {
        self.proc.wait_log_count(pattern, n, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }
}

/// The reference `openvpn` server in a namespace (the gateway's, for the baseline).
pub struct StockServer {
    pub proc: Proc,
    _dir: TempDir,
}

impl StockServer {
    pub fn start(ns: &NetNs, cfg: &StockServerConfig) -> StockServer {
        let dir = TempDir::new("ovpns");
        let conf = dir.path().join("server.conf");
        fs::write(&conf, cfg.render()).expect("write server config");
        let conf_s = conf.to_string_lossy().into_owned();
        let proc = Proc::spawn(
            ns,
            &["openvpn", "--config", &conf_s],
            &dir.path().join("openvpn.log"),
            "openvpn server",
        );
        StockServer { proc, _dir: dir }
    }

    /// Wait until the server has its tun device up and listens.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        self.proc
            .wait_log_or_exit("Initialization Sequence Completed", timeout)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.proc.wait_log(pattern, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }
}
