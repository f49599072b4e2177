//! Portcullis agent library: the binary in `main.rs` is a thin CLI over these modules.
pub mod agent;
pub mod auth;
pub mod config;
pub mod connlog;
pub mod console;
pub mod datapath;
pub mod demo;
pub mod explain;
pub mod flowlog;
pub mod gateway;
pub mod io;
pub mod metrics;
pub mod openvpn;
pub mod pki;
pub mod pki_cli;
pub mod policy;
pub mod profile;
pub mod reconcile;
pub mod status;

/// Parse TOML into any config type (re-exported so tests need no toml dependency).
pub fn toml_from_str<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, toml::de::Error> {
    toml::from_str(s)
}
