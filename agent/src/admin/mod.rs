//! The admin API of a running endpoint: a typed, versioned request/reply protocol on a Unix
//! socket, the server that dispatches it to one trait, and the client the CLI uses.
pub mod audit;
pub mod client;
pub mod dispatch;
pub mod protocol;
pub mod server;
mod socket;

pub use client::{AdminClient, ClientError};
pub use dispatch::AdminApi;
pub use protocol::{
    Action, CertificateInfo, CertificatesReply, ConnectionInfo, ConnectionsReply, CrlInfo,
    ErrorReply, ExplainReply, FleetMember, FleetPeer, FleetStatus, LogKind, LogQuery, LogsReply,
    MapFill, PolicyReply, ProfileReply, ReloadReply, ReloadTiming, Reply, Request, RevokeReply,
    StatusReply, TerminateReply, VERSION,
};
pub use server::{AdminHandle, AdminServer, Call, Caller};
