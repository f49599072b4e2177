//! One key state of a session (doc §2.7, §4.1): its reliability layer, its own TLS session,
//! the key-method-2 exchange and the control messages it carries. The session drives it.
use std::io::Write as _;
use std::time::Instant;

use rustls::ServerConnection;

use super::{AuthRequest, CloseReason, FailureCode, Refusal, SessionConfig};
use crate::openvpn::crypto::{Cipher, DataFormat};
use crate::openvpn::env::Random;
use crate::openvpn::keys::{ClientKeyMethod2, KeyMethodError, ServerKeyMethod2};
use crate::openvpn::options::{
    choose_key_derivation, control_messages, encode_control_message, negotiate_cipher,
    server_options_string, ControlMessage, KeyDerivation, PeerInfo, Transport,
};
use crate::openvpn::packet::KeyId;
use crate::openvpn::reliable::Reliable;
use crate::openvpn::tls::{client_identity, describe_handshake_error, ClientIdentity};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Resets and TLS handshake, until the client's key-method-2 message is parsed.
    Handshake,
    /// Our key-method-2 reply is written; waiting for all of it to be acked (SENT_KEY).
    SentKey,
    Active,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Auth {
    Pending,
    Accepted,
    Refused,
}

pub(super) struct KeyState {
    pub(super) id: KeyId,
    pub(super) reliable: Reliable,
    pub(super) tls: ServerConnection,
    pub(super) started: Instant,
    pub(super) phase: Phase,
    pub(super) auth: Auth,
    /// Decrypted TLS plaintext not yet consumed.
    pub(super) plain: Vec<u8>,
    pub(super) client_km: Option<ClientKeyMethod2>,
    pub(super) server_km: Option<ServerKeyMethod2>,
    /// This key's data keys, derived once the key exchange is through.
    pub(super) data_keys: Option<(crate::openvpn::keys::DataKeys, DataFormat)>,
    pub(super) rx_installed: bool,
    pub(super) tx_installed: bool,
}

/// Negotiated once, at key 0, fixed for the session (doc §6.2, §9.2).
#[derive(Clone, Debug)]
pub(super) struct Negotiated {
    pub(super) cipher: Cipher,
    pub(super) derivation: KeyDerivation,
    pub(super) peer_info: PeerInfo,
    pub(super) common_name: String,
    pub(super) identity: ClientIdentity,
    /// The key-method-2 user name of key 0 (empty without auth-user-pass).
    pub(super) username: String,
    /// The name pushed with the session's token (`auth-token-user`): a renegotiation may
    /// send it instead of key 0's.
    pub(super) token_user: Option<String>,
}

/// Largest TLS plaintext buffered from the client before it is parsed (a key-method-2 message
/// is at most about 9 KB with maximal user/pass and peer info).
pub(super) const MAX_PLAINTEXT: usize = 16 * 1024;

impl KeyState {
    pub(super) fn new(id: KeyId, reliable: Reliable, tls: ServerConnection, now: Instant) -> Self {
        Self {
            id,
            reliable,
            tls,
            started: now,
            phase: Phase::Handshake,
            auth: Auth::Pending,
            plain: Vec::new(),
            client_km: None,
            server_km: None,
            data_keys: None,
            rx_installed: false,
            tx_installed: false,
        }
    }
}

pub(super) fn km_err(e: KeyMethodError) -> CloseReason {
    CloseReason::ProtocolError(format!("key-method 2: {e}"))
}

pub(super) fn server_key_method(
    km: &ClientKeyMethod2,
    transport: Transport,
    rng: &dyn Random,
) -> ServerKeyMethod2 {
    let mut r1 = [0u8; 32];
    let mut r2 = [0u8; 32];
    // ring's sources only fail when the OS has no entropy source at all.
    rng.fill(&mut r1).expect("randomness");
    rng.fill(&mut r2).expect("randomness");
    ServerKeyMethod2 {
        random1: r1,
        random2: r2,
        options: server_options_string(&km.options, transport),
    }
}

/// Completes the key exchange and sends AUTH_FAILED: a client that is not active never reads
/// it (doc §5.2 step 4, pitfall 26).
pub(super) fn refuse_after_key(
    ks: &mut KeyState,
    km: &ClientKeyMethod2,
    transport: Transport,
    rng: &dyn Random,
    message: &str,
) -> Result<(), CloseReason> {
    let reply = server_key_method(km, transport, rng);
    write_raw(&mut ks.tls, &reply.to_bytes().map_err(km_err)?)?;
    write_message(&mut ks.tls, message)?;
    ks.server_km = Some(reply);
    ks.phase = Phase::SentKey;
    ks.auth = Auth::Refused;
    pump_tls(ks)
}

pub(super) fn write_raw(tls: &mut ServerConnection, bytes: &[u8]) -> Result<(), CloseReason> {
    tls.writer()
        .write_all(bytes)
        .map_err(|e| CloseReason::TlsError(e.to_string()))
}

/// A failed handshake: certificate refusals carry their code (for logs and metrics), taken
/// from rustls's error rather than from the message.
pub(super) fn handshake_close_reason(e: &rustls::Error) -> CloseReason {
    use rustls::CertificateError as C;
    let detail = describe_handshake_error(e);
    let code = match e {
        rustls::Error::InvalidCertificate(C::Revoked) => FailureCode::CertificateRevoked,
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            FailureCode::CertificateExpired
        }
        rustls::Error::InvalidCertificate(_) => FailureCode::Certificate,
        rustls::Error::NoCertificatesPresented => FailureCode::CertificateRequired,
        _ => return CloseReason::TlsError(detail),
    };
    CloseReason::CertificateRefused { code, detail }
}

/// One control message, one TLS write, one record (doc §8.1).
pub(super) fn write_message(tls: &mut ServerConnection, msg: &str) -> Result<(), CloseReason> {
    let bytes = encode_control_message(msg)
        .map_err(|e| CloseReason::ProtocolError(format!("control message: {e}")))?;
    write_raw(tls, &bytes)
}

/// Ciphertext from the reliability layer into TLS, plaintext out of TLS into the key state's
/// buffer, TLS output into the reliability layer.
pub(super) fn pump_tls(ks: &mut KeyState) -> Result<(), CloseReason> {
    // Bounded: each round consumes reliable bytes or stops.
    for _ in 0..64 {
        if ks.reliable.readable() == 0 {
            break;
        }
        match ks.tls.read_tls(&mut ks.reliable) {
            Ok(0) => break,
            Ok(_) => {
                if let Err(e) = ks.tls.process_new_packets() {
                    // Let the alert out before giving up.
                    let _ = ks.tls.write_tls(&mut ks.reliable);
                    return Err(handshake_close_reason(&e));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(CloseReason::TlsError(e.to_string())),
        }
    }
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut ks.tls.reader(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if ks.plain.len() + n > MAX_PLAINTEXT {
                    return Err(CloseReason::ProtocolError(
                        "too much unparsed control-channel plaintext".into(),
                    ));
                }
                ks.plain.extend_from_slice(&buf[..n]);
            }
            Err(_) => break,
        }
    }
    while ks.tls.wants_write() {
        match ks.tls.write_tls(&mut ks.reliable) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// What one step of a key state produced, applied by the session.
#[derive(Default)]
pub(super) struct KeyStep {
    pub(super) negotiated: Option<Negotiated>,
    pub(super) authenticate: Option<Box<AuthRequest>>,
    /// Refused during the exchange (no shared cipher, no EKM, bad credentials): AUTH_FAILED is
    /// already written.
    pub(super) refused: Option<Refusal>,
    pub(super) messages: Vec<String>,
}

/// TLS, the client's key-method-2 message, our reply, activation and control messages for one
/// key state. `prior` is the session's negotiation from key 0, if any.
pub(super) fn step_key(
    ks: &mut KeyState,
    cfg: &SessionConfig,
    prior: Option<&Negotiated>,
    rng: &dyn Random,
) -> Result<KeyStep, CloseReason> {
    let mut step = KeyStep::default();
    pump_tls(ks)?;
    if ks.phase == Phase::Handshake && !ks.tls.is_handshaking() && ks.client_km.is_none() {
        let (km, used) = match ClientKeyMethod2::parse(&ks.plain) {
            Ok(x) => x,
            Err(KeyMethodError::Truncated(_)) if ks.plain.len() < MAX_PLAINTEXT => return Ok(step),
            Err(e) => return Err(km_err(e)),
        };
        ks.plain.drain(..used);
        let identity = match client_identity(&ks.tls) {
            Ok(id) => id,
            // Only a TLS configuration for directory-only authentication lets a client through
            // the handshake without a certificate; its user name is then its name.
            Err(crate::openvpn::tls::TlsError::NoClientCertificate) => match prior {
                // A renegotiation sending the name pushed with the session's token
                // (`auth-token-user`) is the same client: it keeps the session's name.
                Some(n) if n.token_user.as_deref() == Some(km.username.as_str()) => {
                    n.identity.clone()
                }
                _ => ClientIdentity::without_certificate(&km.username)
                    .map_err(|e| CloseReason::TlsError(e.to_string()))?,
            },
            Err(e) => return Err(CloseReason::TlsError(e.to_string())),
        };
        let peer_info = PeerInfo::parse(&km.peer_info);
        // Negotiate once, at key 0; renegotiations keep cipher and derivation but must present
        // the same certificate name (doc §9.2).
        let negotiated = match prior {
            Some(n) if n.common_name != identity.common_name => {
                return Err(CloseReason::ProtocolError(format!(
                    "certificate name changed on renegotiation from {:?} to {:?}",
                    n.common_name, identity.common_name
                )));
            }
            // Groups were granted to the user of key 0: another user name on a renegotiation
            // is refused, as the 2.6 server does (doc §9.2).
            Some(n)
                if n.username != km.username
                    && n.token_user.as_deref() != Some(km.username.as_str()) =>
            {
                return Err(CloseReason::ProtocolError(format!(
                    "user name changed on renegotiation from {:?} to {:?}",
                    n.username, km.username
                )));
            }
            Some(n) => n.clone(),
            None => {
                let cipher = negotiate_cipher(&cfg.ciphers, &peer_info, &km.options);
                let derivation = choose_key_derivation(peer_info.proto, cfg.allow_legacy_prf);
                match (cipher, derivation) {
                    (Ok(cipher), Ok(derivation)) => Negotiated {
                        cipher,
                        derivation,
                        peer_info: peer_info.clone(),
                        common_name: identity.common_name.clone(),
                        identity: identity.clone(),
                        username: km.username.clone(),
                        token_user: None,
                    },
                    (Err(e), _) => {
                        refuse_after_key(ks, &km, cfg.transport, rng, &e.auth_failed_message())?;
                        step.refused = Some(Refusal::new(FailureCode::Negotiation, e.to_string()));
                        ks.client_km = Some(km);
                        return Ok(step);
                    }
                    (_, Err(e)) => {
                        refuse_after_key(ks, &km, cfg.transport, rng, &e.auth_failed_message())?;
                        step.refused = Some(Refusal::new(FailureCode::Negotiation, e.to_string()));
                        ks.client_km = Some(km);
                        return Ok(step);
                    }
                }
            }
        };
        if km.credentials_invalid {
            // Oversized or non-UTF-8 credentials (doc §5.1): refuse after the reply.
            let msg = crate::openvpn::options::auth_failed(Some("invalid credentials"));
            refuse_after_key(ks, &km, cfg.transport, rng, &msg)?;
            step.refused = Some(Refusal::new(
                FailureCode::InvalidCredentials,
                "invalid credentials",
            ));
            ks.client_km = Some(km);
            return Ok(step);
        }
        let reply = server_key_method(&km, cfg.transport, rng);
        // Alone in its TLS record (doc §5.6).
        write_raw(&mut ks.tls, &reply.to_bytes().map_err(km_err)?)?;
        ks.server_km = Some(reply);
        ks.phase = Phase::SentKey;
        step.authenticate = Some(Box::new(AuthRequest {
            session: 0,
            key_id: ks.id,
            initial: ks.id == KeyId::ZERO,
            identity,
            username: km.username.clone(),
            password: km.password.clone(),
            peer_info,
            cipher: negotiated.cipher,
        }));
        ks.client_km = Some(km);
        if prior.is_none() {
            step.negotiated = Some(negotiated);
        }
        pump_tls(ks)?;
    }
    if ks.phase == Phase::SentKey && ks.reliable.all_acked() && !ks.tls.wants_write() {
        ks.phase = Phase::Active;
    }
    if ks.phase != Phase::Handshake {
        // Control messages: whole NUL-terminated messages only; a tail waits for more.
        if let Some(end) = ks.plain.iter().rposition(|&b| b == 0) {
            let chunk: Vec<u8> = ks.plain.drain(..=end).collect();
            for m in control_messages(&chunk).flatten() {
                step.messages.push(match m {
                    ControlMessage::PushRequest => "PUSH_REQUEST".to_owned(),
                    ControlMessage::Exit => "EXIT".to_owned(),
                    ControlMessage::CrResponse(_) => "CR_RESPONSE".to_owned(),
                    ControlMessage::Other(s) => s.to_owned(),
                });
            }
        } else if ks.plain.len() > crate::openvpn::options::CONTROL_MESSAGE_MAX {
            // No NUL within the maximum message size: the 2.6 receiver drops it too.
            ks.plain.clear();
        }
    }
    Ok(step)
}
