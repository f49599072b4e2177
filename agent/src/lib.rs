//! Portcullis agent library: the binary in `main.rs` only parses the command line and calls
//! [`cli::run`].
pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connlog;
pub mod console;
pub mod datapath;
pub mod demo;
pub mod endpoint;
pub mod explain;
pub mod fleet;
pub mod flowlog;
/// Fuzz target bodies for `agent/fuzz` and the corpus replay tests (docs/fuzzing.md).
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
pub mod io;
pub mod logsearch;
pub mod metrics;
pub mod netns;
pub mod openvpn;
pub mod pki;
pub mod policy;
pub mod profile;
pub mod reconcile;

/// Parse TOML into any config type (re-exported so tests need no toml dependency).
pub fn toml_from_str<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, toml::de::Error> {
    toml::from_str(s)
}
