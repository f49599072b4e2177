//! A session's settings and where its TLS configuration comes from.
use std::sync::Arc;
use std::time::Duration;

use crate::openvpn::crypto::Cipher;
use crate::openvpn::options::Transport;
use crate::openvpn::reliable;
use crate::openvpn::tls::ClientIdentity;

/// Where new key states get their TLS configuration: the current one, so a CRL reload applies
/// to renegotiations of live sessions too.
pub trait TlsProvider: Send + Sync {
    fn server_config(&self) -> Arc<rustls::ServerConfig>;
    /// Called every few seconds by the tunnel's control thread: pick up changed files.
    /// True when the configuration changed (live sessions are then re-checked).
    fn maintain(&self) -> bool {
        false
    }
    /// True when the configuration was replaced from outside (a fleet's published CRLs)
    /// since the last [`TlsProvider::maintain`]: the control thread then runs it at once
    /// instead of at the next tick, so a revocation is enforced within its wake-up (200 ms).
    fn changed_outside(&self) -> bool {
        false
    }
    /// Whether the current CRLs revoke this client.
    fn is_revoked(&self, _id: &ClientIdentity) -> bool {
        false
    }
}

impl TlsProvider for Arc<rustls::ServerConfig> {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.clone()
    }
}

/// When the server starts a renegotiation itself (doc §9.1); the client's own `reneg-sec`
/// (3600 s) is served whatever this says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renegotiation {
    pub interval: Option<Duration>,
    pub bytes: Option<u64>,
    pub packets: Option<u64>,
}

impl Default for Renegotiation {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(3600)),
            bytes: None,
            packets: None,
        }
    }
}

/// Per-listener session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Data ciphers in preference order (NCP picks the first the client offers, §5.5).
    pub ciphers: Vec<Cipher>,
    /// Serve clients without TLS-EKM with the legacy PRF (older clients, §6.3).
    pub allow_legacy_prf: bool,
    pub transport: Transport,
    /// Per key state: reset to active (doc §2.7).
    pub hand_window: Duration,
    pub reneg: Renegotiation,
    /// Pushed `ping` / `ping-restart`; the server drops a client after twice `ping_restart`
    /// without anything authenticated from it, as a 2.6 server with `keepalive` does (§9.4).
    pub ping: Duration,
    pub ping_restart: Duration,
    /// How long the previous key still decrypts after a renegotiation (§9.3).
    pub transition_window: Duration,
    /// How long a refused client is kept so it receives AUTH_FAILED (§8.4).
    pub auth_failed_linger: Duration,
    /// Longest session (AWS: 8–24 h); pushed as `session-timeout` and enforced here too.
    pub max_session: Option<Duration>,
    /// At `max_session`: tell the client to stop (`HALT`, AWS's
    /// `disconnect_on_session_timeout = true`: the user reconnects by hand) or to reconnect
    /// at once (`RESTART`).
    pub halt_on_session_timeout: bool,
    /// Client-initiated renegotiations are rate-limited, as each costs a TLS handshake and,
    /// with a directory, a bind: a burst of [`CLIENT_RENEG_BURST`], then one per this
    /// interval (stock clients renegotiate every `reneg-sec`, 3600 s). Zero: no limit.
    pub client_reneg_interval: Duration,
    pub reliable: reliable::Config,
}

/// Client-initiated renegotiations a session may start back to back.
pub const CLIENT_RENEG_BURST: u32 = 3;

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ciphers: Cipher::ALL.to_vec(),
            allow_legacy_prf: true,
            transport: Transport::Udp,
            hand_window: Duration::from_secs(60),
            reneg: Renegotiation::default(),
            ping: Duration::from_secs(10),
            ping_restart: Duration::from_secs(60),
            transition_window: Duration::from_secs(300),
            auth_failed_linger: Duration::from_secs(5),
            max_session: None,
            halt_on_session_timeout: false,
            client_reneg_interval: Duration::from_secs(20),
            reliable: reliable::Config::default(),
        }
    }
}
