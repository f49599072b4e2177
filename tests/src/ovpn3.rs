//! The OpenVPN 3 core client (`ovpncli`), the protocol core of OpenVPN Connect, as a second
//! stock client. Debian does not package it: `cargo xtask setup` builds it from the source
//! snapshot in `../shared/tools/openvpn3` into [`OVPNCLI`] when that directory exists. Tests
//! that need it call [`require_ovpn3!`], which skips them by name, saying why, when it is
//! absent.
//!
//! `ovpncli` runs in the foreground as root in a client namespace (it makes a tun device
//! named `tun`); its exit code says nothing: success is the stdout line `EVENT: CONNECTED`.
//! Certificates and keys must be inline (as `client-config export` writes them).
use std::path::Path;
use std::time::Duration;

use crate::openvpn::{Proc, TempDir};
use crate::NetNs;

/// Where `cargo xtask setup` installs the client.
pub const OVPNCLI: &str = "/var/cache/openvpn3/ovpncli";
/// The line `ovpncli` prints once the tunnel is up.
pub const CONNECTED: &str = "EVENT: CONNECTED";

/// `Ok` when the client is installed; otherwise why not and how to get it.
pub fn available() -> Result<(), String> {
    if Path::new(OVPNCLI).is_file() {
        Ok(())
    } else {
        Err(format!(
            "{OVPNCLI} is missing: `cargo xtask setup` builds it when ../shared/tools/openvpn3 \
             exists beside the checkout (the OpenVPN 3 core is not packaged by Debian)"
        ))
    }
}

/// Skips the calling test, by name and with the reason, when `ovpncli` is not installed.
#[macro_export]
macro_rules! require_ovpn3 {
    ($test:expr) => {
        if let Err(why) = $crate::ovpn3::available() {
            eprintln!("SKIPPED {}: {why}", $test);
            return;
        }
    };
}

/// A running `ovpncli`; stopped (SIGTERM, then SIGKILL) on drop, its log printed if the test
/// panics.
pub struct Ovpn3 {
    pub proc: Proc,
    _dir: TempDir,
}

impl Ovpn3 {
    /// `ovpncli [args] profile` in `ns`, stdout line-buffered into the log.
    pub fn start(ns: &NetNs, profile: &str, args: &[&str]) -> Ovpn3 {
        let dir = TempDir::new("ovpn3");
        let path = dir.path().join("client.ovpn");
        std::fs::write(&path, profile).expect("write the profile");
        let path = path.to_string_lossy().into_owned();
        let mut argv = vec!["stdbuf", "-oL", "-eL", OVPNCLI];
        argv.extend(args);
        argv.push(&path);
        let proc = Proc::spawn(ns, &argv, &dir.path().join("ovpncli.log"), "ovpncli");
        Ovpn3 { proc, _dir: dir }
    }

    /// Waits for `EVENT: CONNECTED`; the error has the log's tail.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        self.proc.wait_log_or_exit(CONNECTED, timeout)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}
