//! What a session asks the authenticator and what it may hear back, and how a session ends:
//! the vocabulary the session shares with authentication, the connection log and the metrics
//! (so none of them depends on the session's internals, and the core on none of them).
use super::crypto::Cipher;
use super::options::PeerInfo;
use super::packet::KeyId;
use super::tls::ClientIdentity;
/// The backoff a temporary refusal asks the client to wait before it retries.
pub const TEMPORARY_BACKOFF_SECS: u32 = 10;

/// What the server must decide after a key exchange (doc §5.2): the certificate is already
/// verified by TLS; credentials and group membership are the server's business.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// The server's serial of the session (filled in by the server): the verdict names it.
    pub session: u64,
    pub key_id: KeyId,
    /// True for key id 0 (a new connection); false for a renegotiation.
    pub initial: bool,
    pub identity: ClientIdentity,
    pub username: String,
    pub password: super::keys::Password,
    pub peer_info: PeerInfo,
    pub cipher: Cipher,
}

/// Why a connection attempt failed, as a stable code: the connection log's
/// `connection-attempt-failure-reason` and the `reason` label of the authentication-failure
/// metric, so neither depends on the wording of a message. Append-only names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// Wrong password, unknown user, empty field: one code, as the client is told one thing.
    InvalidCredentials,
    AccountDisabled,
    OneTimeCode,
    UsernameMismatch,
    RateLimited,
    DirectoryUnavailable,
    DirectoryBusy,
    /// The directory answered with something unusable.
    DirectoryError,
    /// The client-connect hook answered `allow: false`.
    HookDenied,
    HookTimeout,
    /// The hook could not be run or reached, failed, or gave no valid answer.
    HookError,
    CertificateRequired,
    CertificateRevoked,
    CertificateExpired,
    /// Any other certificate verification failure (unknown issuer, purpose, CRL expired…).
    Certificate,
    Tls,
    /// No cipher or key derivation in common.
    Negotiation,
    AddressPoolExhausted,
    /// In a fleet: no leased block with a free address, or the gateway's lease ran out.
    AddressBlockUnavailable,
    /// In a fleet: the user holds `max_connections_per_user` connections already.
    UserConnectionLimit,
    /// In a fleet: the endpoint holds `[fleet] max_connections` connections already.
    EndpointConnectionLimit,
    /// In a fleet: etcd did not answer an admission that needs it.
    FleetUnavailable,
    HandshakeTimeout,
    Protocol,
    Internal,
    /// The attempt ended otherwise (client exit, server shutdown) before it was established.
    Other,
    /// Single sign-on: the client cannot open a web login (no webauth/openurl in IV_SSO).
    SsoUnsupportedClient,
    /// The web login was not completed within `oidc.pending_timeout_secs`.
    SsoTimeout,
    /// The provider answered the login with an error (the user cancelled, access denied).
    SsoDenied,
    /// A callback whose `state` does not match the session's login.
    SsoState,
    /// The code exchange was refused or the ID token failed verification.
    SsoToken,
    /// The provider could not be reached (discovery, token endpoint).
    SsoUnavailable,
    /// Too many web logins waiting at once.
    SsoBusy,
    /// A session token (`auth-token`) minted with another secret, for another user or
    /// session, or tampered with.
    TokenInvalid,
    /// A session token past its lifetime, or not renewed for two renewal periods.
    TokenExpired,
    /// A session token of a session the operator terminated (`connections terminate`).
    TokenRevoked,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::InvalidCredentials => "invalid_credentials",
            FailureCode::AccountDisabled => "account_disabled",
            FailureCode::OneTimeCode => "one_time_code",
            FailureCode::UsernameMismatch => "username_mismatch",
            FailureCode::RateLimited => "rate_limited",
            FailureCode::DirectoryUnavailable => "directory_unavailable",
            FailureCode::DirectoryBusy => "directory_busy",
            FailureCode::DirectoryError => "directory_error",
            FailureCode::HookDenied => "hook_denied",
            FailureCode::HookTimeout => "hook_timeout",
            FailureCode::HookError => "hook_error",
            FailureCode::CertificateRequired => "certificate_required",
            FailureCode::CertificateRevoked => "certificate_revoked",
            FailureCode::CertificateExpired => "certificate_expired",
            FailureCode::Certificate => "certificate",
            FailureCode::Tls => "tls",
            FailureCode::Negotiation => "negotiation",
            FailureCode::AddressPoolExhausted => "address_pool_exhausted",
            FailureCode::AddressBlockUnavailable => "address_block_unavailable",
            FailureCode::UserConnectionLimit => "user_connection_limit",
            FailureCode::EndpointConnectionLimit => "endpoint_connection_limit",
            FailureCode::FleetUnavailable => "fleet_unavailable",
            FailureCode::HandshakeTimeout => "handshake_timeout",
            FailureCode::Protocol => "protocol",
            FailureCode::Internal => "internal",
            FailureCode::Other => "other",
            FailureCode::SsoUnsupportedClient => "sso_unsupported_client",
            FailureCode::SsoTimeout => "sso_timeout",
            FailureCode::SsoDenied => "sso_denied",
            FailureCode::SsoState => "sso_state",
            FailureCode::SsoToken => "sso_token",
            FailureCode::SsoUnavailable => "sso_unavailable",
            FailureCode::SsoBusy => "sso_busy",
            FailureCode::TokenInvalid => "token_invalid",
            FailureCode::TokenExpired => "token_expired",
            FailureCode::TokenRevoked => "token_revoked",
        }
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused authentication: the code for logs and metrics, the short text for `AUTH_FAILED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: FailureCode,
    pub message: String,
    /// An outage of what decides, not the user's fault: `AUTH_FAILED,TEMP` (doc §8.4), so a
    /// client that knows it retries after the backoff instead of exiting.
    pub temporary: bool,
}

impl Refusal {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            temporary: false,
        }
    }

    pub fn temporary(code: FailureCode, message: impl Into<String>) -> Refusal {
        Refusal {
            temporary: true,
            ..Refusal::new(code, message)
        }
    }
}

/// A session token for the client (`auth-token`), minted by the authenticator: pushed with
/// the PUSH_REPLY of a new session, or alone (`PUSH_REPLY,auth-token …`) after a
/// renegotiation, as OpenVPN's `auth-gen-token` renews it. `user` goes with it as
/// `auth-token-user`: the name the client sends with the token (a client without
/// `auth-user-pass`, or whose typed name was not checked, has no other).
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub user: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A bearer credential: never in a log.
        f.write_str("IssuedToken(..)")
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent EXIT or OCC_EXIT.
    ClientExit,
    /// Nothing authenticated from the client for twice `ping-restart`.
    PingTimeout,
    /// A key state did not become active within the hand-window.
    HandshakeTimeout,
    /// TLS failed (protocol error, I/O): the reason.
    TlsError(String),
    /// The client certificate was refused (revoked, expired, unknown issuer…).
    CertificateRefused { code: FailureCode, detail: String },
    /// The key-method-2 exchange or a negotiation failed.
    ProtocolError(String),
    /// Authentication refused; AUTH_FAILED was sent.
    AuthFailed(Refusal),
    /// The session reached its maximum duration.
    SessionTimeout,
    /// The server closed it (shutdown, revocation, client restart…).
    Server(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientExit => f.write_str("client exit"),
            CloseReason::PingTimeout => f.write_str("ping timeout"),
            CloseReason::HandshakeTimeout => f.write_str("handshake not complete in hand-window"),
            CloseReason::TlsError(e) => write!(f, "TLS error: {e}"),
            CloseReason::ProtocolError(e) => write!(f, "protocol error: {e}"),
            CloseReason::CertificateRefused { detail, .. } => write!(f, "TLS error: {detail}"),
            CloseReason::AuthFailed(r) => write!(f, "authentication failed: {}", r.message),
            CloseReason::SessionTimeout => f.write_str("session timeout"),
            CloseReason::Server(e) => write!(f, "closed by server: {e}"),
        }
    }
}

impl CloseReason {
    /// The code of an attempt that ended for this reason before it was established.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            CloseReason::AuthFailed(r) => r.code,
            CloseReason::CertificateRefused { code, .. } => *code,
            CloseReason::TlsError(_) => FailureCode::Tls,
            CloseReason::HandshakeTimeout => FailureCode::HandshakeTimeout,
            CloseReason::ProtocolError(_) => FailureCode::Protocol,
            CloseReason::ClientExit
            | CloseReason::PingTimeout
            | CloseReason::SessionTimeout
            | CloseReason::Server(_) => FailureCode::Other,
        }
    }
}
