//! A TLS handshake step that can run away from the thread that owns the session: the key
//! state's rustls connection and the ciphertext it has to read, taken out together, brought
//! back once [`TlsStep::run`] has processed them.
//!
//! This is where a handshake's CPU goes (the server's ECDHE and signature, the client
//! chain's and CertificateVerify's verification: most of a connect's cost), so a server
//! with many handshakes in flight can spread them over cores while one thread keeps the
//! session table. A key state has at most one step out, and takes no other TLS input until
//! it is back: the connection sees its bytes in order, and everything else of the session
//! (acks, retransmissions, timers, limits) goes on meanwhile.
use std::time::Instant;

use rustls::ServerConnection;

use super::key_state::handshake_close_reason;
use super::CloseReason;
use crate::openvpn::packet::KeyId;

/// One step: created by the session ([`super::Session::poll_tls_step`]), run anywhere
/// ([`TlsStep::run`], `Send`), handed back ([`super::Session::finish_tls_step`]).
pub struct TlsStep {
    pub(super) key_id: KeyId,
    /// When its key state started: with the key id, names that key state (key ids wrap).
    pub(super) started: Instant,
    pub(super) conn: Box<ServerConnection>,
    /// Ciphertext in reliable-layer order, not yet read by the connection.
    input: Vec<u8>,
    /// Why the handshake failed here (the alert stays queued in the connection).
    pub(super) error: Option<CloseReason>,
}

impl TlsStep {
    pub(super) fn new(
        key_id: KeyId,
        started: Instant,
        conn: Box<ServerConnection>,
        input: Vec<u8>,
    ) -> TlsStep {
        TlsStep {
            key_id,
            started,
            conn,
            input,
            error: None,
        }
    }

    /// Feeds the ciphertext to the connection and processes it (the handshake's public-key
    /// work). Running it twice does nothing more.
    pub fn run(&mut self) {
        let input = std::mem::take(&mut self.input);
        let mut rest: &[u8] = &input;
        // Bounded: every round consumes input or stops.
        while !rest.is_empty() && self.error.is_none() {
            match self.conn.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        self.error = Some(handshake_close_reason(&e));
                    }
                }
                Err(e) => self.error = Some(CloseReason::TlsError(e.to_string())),
            }
        }
    }

    /// Bytes still to be read (0 once run).
    pub fn input_len(&self) -> usize {
        self.input.len()
    }
}
