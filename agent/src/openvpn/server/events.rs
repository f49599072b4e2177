//! What the server reports: connects, authentication requests, rekeys, floats, disconnects,
//! and counters of what it dropped.
use std::net::Ipv4Addr;
use std::time::Duration;

use super::super::crypto::Cipher;
use super::super::options::PeerInfo;
use super::super::packet::KeyId;
use super::super::peer::Link;
use super::super::session::{AuthRequest, CloseReason};

#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// A client finished the handshake, was authorized and got its push.
    Connected {
        link: Link,
        /// The session's serial, as in its `AuthRequest` (see [`Server::authorize_external`]).
        session: u64,
        peer_id: u32,
        common_name: String,
        tunnel_addr: Ipv4Addr,
        cipher: Cipher,
        tls_version: String,
        peer_info: PeerInfo,
        /// From the session's first packet to the push.
        handshake: Duration,
    },
    /// With [`AuthMode::External`]: decide with [`Server::authorize`].
    AuthRequired {
        link: Link,
        request: Box<AuthRequest>,
    },
    Rekeyed {
        link: Link,
        peer_id: u32,
        key_id: KeyId,
    },
    /// A client moved to a new UDP address (after an authenticated packet).
    Floated {
        peer_id: u32,
        /// The session's serial.
        session: u64,
        from: Link,
        to: Link,
    },
    /// A session ended (or never got established: TLS failure, refused, timeout).
    Disconnected {
        link: Link,
        peer_id: u32,
        common_name: Option<String>,
        /// The key-method-2 user name, when the client sent one (also on failed attempts).
        username: Option<String>,
        tunnel_addr: Option<Ipv4Addr>,
        reason: CloseReason,
        rx_bytes: u64,
        tx_bytes: u64,
        duration: Duration,
    },
    /// Informational control message from a client.
    Message { link: Link, text: String },
}

/// Why a control packet from an unknown source was dropped, counted for operators.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerStats {
    pub malformed: u64,
    pub tls_crypt_rejected: u64,
    /// tls-crypt-v2 first packets refused before any state: a wrapped client key that does
    /// not open with our server key, is too old, or a client without early negotiation.
    pub tls_crypt_v2_rejected: u64,
    pub cookie_rejected: u64,
    pub reset_rate_limited: u64,
    pub session_limit: u64,
    /// New sessions refused because their source already has as many half-open sessions
    /// as one source may (see [`super::Server::half_open_limit`]).
    pub half_open_limit: u64,
    pub stateless_replies: u64,
    pub unroutable: u64,
    /// Floats refused because another client's session holds the address.
    pub float_refused: u64,
}
