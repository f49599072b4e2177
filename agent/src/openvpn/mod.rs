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
//! - [`tls`]: rustls server configuration (client certificates, CRLs) and identities.
//! - [`env`]: the injected randomness and wall clock.
//! - [`verdict`]: authentication requests, refusals, failure codes and close reasons.
//! - [`session`]: one client's session: key states, TLS, key-method 2, push, renegotiation.
//! - [`server`]: demultiplexing, the stateless cookie handshake, peer-ids, addresses, events.
//! - [`peer`]: the data-channel half shared with the packet workers (keys, counters, table).
//! - `testclient`, `fuzzing`, `fuzz_server` (feature `testing`): an in-memory client and the
//!   fuzz target bodies, for tests, fuzzing and benchmarks; not in the product binary.
pub mod cookie;
pub mod crypto;
pub mod env;
pub mod fence;
/// Fuzz target bodies shared by `agent/fuzz` and the corpus replay test (docs/fuzzing.md).
#[cfg(any(test, feature = "testing"))]
pub mod fuzz_server;
#[cfg(any(test, feature = "testing"))]
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
#[cfg(any(test, feature = "testing"))]
pub mod testclient;
pub mod tls;
pub mod tls_crypt;
pub mod tls_crypt_v2;
pub mod verdict;
