//! The endpoint configuration file: one TOML file describes an endpoint (listeners, TLS,
//! authentication, the client pool, what is pushed to clients, logging) and its policy
//! (target networks, routes, authorization rules, security groups, local groups).
//!
//! [`EndpointConfig::load`] parses and validates everything at once: every problem is
//! reported with its field path and the fix, so an operator fixes a file in one round. The
//! policy part is validated by the policy compiler (`policy::compile`); this module checks the
//! rest (listeners, files, ciphers, names, overlaps) and builds the settings the tunnel and the
//! data path take.
//!
//! Layout: [`model`] (the sections and their defaults), [`load`] (reading, paths),
//! [`validate`] (checks with paths and fixes), [`listeners`], [`settings`] (what the file
//! means for the tunnel, the data path and the policy compiler), [`directory`] (the
//! `[directory]` section), [`fleet`] (the `[fleet]` section), [`shared`] (the part a fleet publishes) and [`shared_login`] (its `[auth]`, `[directory]`, `[oidc]` split), [`incremental`] (reparsing only changed rule sections on reload), [`errors`] (how problems are reported).
pub mod directory;
pub mod errors;
pub mod fleet;
pub mod incremental;
pub mod listeners;
pub mod load;
pub mod model;
pub mod oidc;
pub mod settings;
pub mod shared;
pub mod shared_login;
pub mod tokens;
pub mod validate;

pub use directory::{DirectoryConfig, GroupId, GroupSource, Nested};
pub use errors::{endpoint_paths, merge_reports, ConfigError, ConfigErrors};
pub use fleet::FleetSection;
pub use listeners::Listener;
pub use model::{
    AuthSection, CrlExpired, EndpointConfig, LoggingSection, MetricsSection, TargetNetworkEntry,
    TlsSection,
};
pub use oidc::OidcConfig;
pub use settings::{interface_ipv4, restart_only_changes, target_attachments};
pub use shared::{SharedConfig, SharedRefused};
pub use shared_login::{SharedAuth, SharedOidc};

#[cfg(test)]
mod tests;
