//! Fleet mode: several gateways serve one endpoint, coordinated through etcd.
//!
//! A gateway without a `[fleet]` section never touches this module (standalone: the file is
//! the whole truth). With one, the gateway reaches etcd with [`connect`] and names every key
//! it reads or writes through [`Keys`], so the layout lives in one place ([`keys`]) and is
//! documented there and in `docs/fleet.md`.
pub mod client;
pub mod keys;
pub mod policy;

pub use client::{connect, FleetError};
pub use keys::Keys;
pub use policy::{follow, publish, PolicyUpdate, Published};
