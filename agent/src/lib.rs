//! Portcullis agent library: the binary in `main.rs` is a thin CLI over these modules.
pub mod datapath;
pub mod demo;
pub mod policy;
pub mod reconcile;
pub mod relay;
pub mod status;
