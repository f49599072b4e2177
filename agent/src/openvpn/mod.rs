//! The OpenVPN 2.x protocol, server side, sans-IO: bytes and `now` in, datagrams, events and
//! timers out. No sockets, no clocks, no randomness inside (all injected), so every state
//! machine is testable without a network. Facts: ../shared/docs/openvpn-protocol.md.
//!
//! Layout:
//! - [`packet`]: wire codec of control and data packets (opcodes, session ids, ack arrays).
//! - [`reliable`]: the control channel's reliability layer (acks, windows, retransmission).
//! - [`tls_crypt`]: `tls-crypt` v1 wrapping of control packets.
//! - [`cookie`]: the HMAC-cookie stateless handshake of 2.6 servers.
//! - [`crypto`]: data-channel AEAD (AES-128/256-GCM, ChaCha20-Poly1305), packet ids, replay window.
//! - [`keys`]: key-method 2 messages and key derivation (TLS-EKM and the legacy TLS 1.0 PRF).
//! - [`options`]: option strings, `IV_*` peer info, NCP negotiation, push replies.
//! - [`pool`]: the client address pool (tunnel addresses out of the client CIDR).
//! - [`tls`]: rustls server configuration (client certificates, CRLs, reload) and identities.
//! - [`session`]: one client's session: key states, TLS, key-method 2, push, renegotiation.
//! - [`server`]: demultiplexing, the stateless cookie handshake, peer-ids, addresses, events.
//! - [`peer`]: the data-channel half shared with the packet workers (keys, counters, table).
//! - [`testclient`]: an in-memory client for tests, fuzzing and benchmarks.
pub mod cookie;
pub mod crypto;
/// Fuzz target bodies shared by `agent/fuzz` and the corpus replay test (docs/fuzzing.md).
#[doc(hidden)]
pub mod fuzz_server;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod options;
pub mod packet;
pub mod peer;
pub mod pool;
pub mod reliable;
pub mod server;
#[cfg(test)]
mod server_tests;
pub mod session;
#[doc(hidden)]
pub mod testclient;
pub mod tls;
pub mod tls_crypt;
