//! Fleet mode: several gateways serve one endpoint, coordinated through etcd.
//!
//! A gateway without a `[fleet]` section never touches this module (standalone: the file is
//! the whole truth). With one, the gateway reaches etcd with [`connect`] and names every key
//! it reads or writes through [`Keys`], so the layout lives in one place ([`keys`]) and is
//! documented there and in `docs/fleet.md`. One task per gateway ([`Member`]) holds its
//! lease, its address blocks, its registry entries, its terminate watch and the fleet's
//! revoked session tokens.
pub mod admin;
pub mod blocks;
pub mod client;
pub mod gate;
pub mod keys;
pub mod lease;
pub mod limits;
pub mod member;
pub mod policy;
pub mod presence;
pub mod registry;
pub mod revocations;
pub mod terminate;

pub use client::{connect, FleetError};
pub use gate::UserGate;
pub use keys::Keys;
pub use member::Member;
pub use policy::{follow, publish, PolicyUpdate, Published};
pub use registry::SessionRecord;
