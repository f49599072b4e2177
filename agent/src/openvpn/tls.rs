//! The rustls server side of the OpenVPN control channel: certificate, key, CA bundle and CRLs
//! turned into a [`rustls::ServerConfig`], hot reload, and the client identity of a finished
//! handshake.
//!
//! Verification is rustls/webpki's: the client certificate is required, must chain to the CA
//! bundle, be within its validity, carry EKU clientAuth and not be revoked by a configured CRL.
//! Every key_id of an OpenVPN session runs a new full TLS handshake on its own
//! `ServerConnection` (protocol doc §4), so resumption and tickets are off, and because the
//! verifier is evaluated per handshake, CRLs are checked on every new connection and rekey.
//! Data-channel keys come from `export_keying_material` (§6.2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::{NoServerSessionStorage, VerifierBuilderError, WebPkiClientVerifier};
use rustls::{CertificateError, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

use super::env::WallClock;

/// The label OpenVPN uses for TLS-EKM data-channel keys (protocol doc §6.2).
pub const EKM_LABEL: &[u8] = b"EXPORTER-OpenVPN-datakeys";
/// Bytes of keying material for one key_id: `struct key2` (protocol doc §6.1).
pub const EKM_LEN: usize = 256;

/// What to do when a configured CRL is past its nextUpdate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrlExpiredPolicy {
    /// Refuse every client certificate the expired CRL covers (AWS Client VPN does the same):
    /// a stale CRL may miss revocations.
    #[default]
    Refuse,
    /// Keep using the expired CRL as it is (revoked serials in it are still refused).
    Allow,
}

/// Lowest TLS version accepted; stock OpenVPN clients default to 1.2 and prefer 1.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsOptions {
    pub min_version: TlsVersion,
    pub crl_expired: CrlExpiredPolicy,
    /// Directory-only authentication: a client may finish the handshake without a
    /// certificate (one it does present is still verified). Its key-method-2 user name then
    /// stands in for the certificate name ([`ClientIdentity::without_certificate`]); the
    /// server must then be in `AuthMode::External`.
    pub client_cert_optional: bool,
}

/// One loaded CRL, for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlStatus {
    /// The file it came from (a placeholder such as `<crl #0>` for [`TlsContext::from_pem`]).
    pub path: PathBuf,
    pub this_update: SystemTime,
    /// None if the CRL has no nextUpdate (it then never expires).
    pub next_update: Option<SystemTime>,
    /// Number of revoked certificates listed.
    pub revoked: usize,
    /// The issuer's name, as [`ClientIdentity::issuer`] spells it.
    pub issuer: String,
    /// Revoked serials, as [`serial_hex`] spells them (for cutting live sessions on reload).
    pub revoked_serials: std::collections::BTreeSet<String>,
}

impl CrlStatus {
    pub fn expired(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: cannot read it: {source}; check the path in the configuration and the file permissions")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {reason}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "server key {path}: no private key found; expected a PEM PRIVATE KEY block \
         (or EC PRIVATE KEY / RSA PRIVATE KEY); an ENCRYPTED PRIVATE KEY must be decrypted \
         first (`openssl pkey -in key -out key.plain`)"
    )]
    NoPrivateKey { path: PathBuf },
    #[error("CA bundle {path}: certificate #{index} cannot be a trust anchor: {reason}; the file must hold the PEM certificates of the CAs that issue client certificates")]
    BadCa {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("CRL {path}: {reason}")]
    BadCrl { path: PathBuf, reason: String },
    #[error("server certificate {cert} and key {key} do not belong together; configure the key that was generated with this certificate")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("server certificate {cert} / key {key}: {reason}")]
    BadServerIdentity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("the TLS handshake has not finished; ask for the client identity once is_handshaking() is false")]
    HandshakeNotFinished,
    #[error("the client presented no certificate")]
    NoClientCertificate,
    #[error("the client certificate cannot be parsed: {0}")]
    BadClientCertificate(String),
    #[error("client certificate `{subject}` has no common name; the CN is the user name, so reissue the certificate with a CN")]
    MissingCommonName { subject: String },
    #[error("client certificate `{subject}`: its common name {reason}; reissue the certificate with a plain CN")]
    InvalidCommonName {
        subject: String,
        reason: &'static str,
    },
}

/// An immutable snapshot of the TLS configuration; connections keep the one they started with.
#[derive(Debug)]
pub struct TlsContext {
    config: Arc<ServerConfig>,
    crls: Vec<CrlStatus>,
    options: TlsOptions,
}

/// The bytes of one input (PEM or DER) and the name errors report it under (its file).
pub struct Input {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl Input {
    fn mem(label: String, text: &str) -> Input {
        Input {
            path: PathBuf::from(label),
            bytes: text.as_bytes().to_vec(),
        }
    }
}

/// Everything a [`TlsContext`] is built from; reading the files is `io::tls_files`'s job.
pub struct Inputs {
    pub ca: Input,
    pub cert: Input,
    pub key: Input,
    pub crls: Vec<Input>,
}

impl TlsContext {
    /// From PEM text (tests, embedded demo material); see [`TlsContext::build`].
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        crl_pems: &[String],
        opts: &TlsOptions,
        clock: WallClock,
    ) -> Result<TlsContext, TlsError> {
        Self::build(
            Inputs {
                ca: Input::mem("<CA PEM>".into(), ca_pem),
                cert: Input::mem("<server certificate PEM>".into(), cert_pem),
                key: Input::mem("<server key PEM>".into(), key_pem),
                crls: crl_pems
                    .iter()
                    .enumerate()
                    .map(|(i, pem)| Input::mem(format!("<crl #{i}>"), pem))
                    .collect(),
            },
            opts,
            clock,
        )
    }

    /// Checks all inputs; nothing is half-applied on error. `clock` is the wall clock the
    /// verifier judges certificate and CRL validity by.
    pub fn build(
        inputs: Inputs,
        opts: &TlsOptions,
        clock: WallClock,
    ) -> Result<TlsContext, TlsError> {
        let Inputs {
            ca,
            cert,
            key,
            crls: crl_inputs,
        } = inputs;
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let ca_ders = pem_certs("CA bundle", &ca)?;
        let mut roots = RootCertStore::empty();
        for (index, der) in ca_ders.iter().enumerate() {
            roots.add(der.clone()).map_err(|e| TlsError::BadCa {
                path: ca.path.clone(),
                index,
                reason: e.to_string(),
            })?;
        }

        let chain = pem_certs("server certificate", &cert)?;
        warn_unusable_server_cert(&cert.path, &chain[0]);
        let key_der = PrivateKeyDer::from_pem_slice(&key.bytes).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
                path: key.path.clone(),
            },
            e => TlsError::BadPem {
                what: "server key",
                path: key.path.clone(),
                reason: format!("{e}; expected a PEM PRIVATE KEY block"),
            },
        })?;

        let mut crl_ders = Vec::new();
        let mut crls = Vec::new();
        for input in &crl_inputs {
            for der in crl_blocks(input)? {
                crls.push(crl_status(input, &der, &ca_ders, &ca.path)?);
                crl_ders.push((input.path.clone(), der));
            }
        }
        let now = clock.current_time().map_or(UNIX_EPOCH, |t| {
            UNIX_EPOCH + Duration::from_secs(t.as_secs())
        });
        for crl in crls.iter().filter(|c| c.expired(now)) {
            let consequence = match opts.crl_expired {
                CrlExpiredPolicy::Refuse => "clients of its CA are REFUSED",
                CrlExpiredPolicy::Allow => "it is still used because crl_expired = allow",
            };
            tracing::error!(
                crl = %crl.path.display(),
                next_update = %fmt_time(crl.next_update.unwrap_or(now)),
                "CRL expired: {consequence}; publish a fresh CRL and reload"
            );
        }

        let verifier = client_verifier(&roots, &crl_ders, opts, &provider)?;
        let versions: &[&'static rustls::SupportedProtocolVersion] = match opts.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_details(provider, clock)
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key_der)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    TlsError::KeyMismatch {
                        cert: cert.path.clone(),
                        key: key.path.clone(),
                    }
                }
                e => TlsError::BadServerIdentity {
                    cert: cert.path.clone(),
                    key: key.path.clone(),
                    reason: format!(
                        "{e}; the key must be ECDSA P-256/P-384, Ed25519 or RSA ≥ 2048 bits"
                    ),
                },
            })?;
        // A new full handshake per key_id (§4.1): tickets would only cost control packets,
        // and a session cache would only hold secrets no one reuses.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.alpn_protocols.clear();

        Ok(TlsContext {
            config: Arc::new(config),
            crls,
            options: *opts,
        })
    }

    /// The configuration for `rustls::ServerConnection::new`, one connection per key_id.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    pub fn crls(&self) -> &[CrlStatus] {
        &self.crls
    }

    /// Whether a configured CRL lists this (already verified) client certificate: live
    /// sessions are checked against a reloaded CRL with this.
    pub fn is_revoked(&self, id: &ClientIdentity) -> bool {
        self.crls
            .iter()
            .any(|c| c.issuer == id.issuer && c.revoked_serials.contains(&id.serial_hex))
    }

    pub fn any_crl_expired(&self, now: SystemTime) -> bool {
        self.crls.iter().any(|c| c.expired(now))
    }

    pub fn options(&self) -> &TlsOptions {
        &self.options
    }
}

/// Builds the webpki verifier; if it refuses the CRL set, finds which file it refused.
fn client_verifier(
    roots: &RootCertStore,
    crls: &[(PathBuf, CertificateRevocationListDer<'static>)],
    opts: &TlsOptions,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let build = |crls: &[(PathBuf, CertificateRevocationListDer<'static>)]| {
        let builder = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots.clone()),
            Arc::clone(provider),
        )
        .with_crls(crls.iter().map(|(_, der)| der.clone()));
        let builder = match opts.crl_expired {
            CrlExpiredPolicy::Refuse => builder.enforce_revocation_expiration(),
            CrlExpiredPolicy::Allow => builder,
        };
        if opts.client_cert_optional {
            builder.allow_unauthenticated().build()
        } else {
            builder.build()
        }
    };
    build(crls).map_err(|e| match e {
        VerifierBuilderError::InvalidCrl(reason) => {
            let path = crls
                .iter()
                .find(|crl| build(std::slice::from_ref(crl)).is_err())
                .map(|(path, _)| path.clone())
                .unwrap_or_default();
            TlsError::BadCrl {
                path,
                reason: format!("rejected by webpki: {reason:?}"),
            }
        }
        e => TlsError::Config(format!("client certificate verifier: {e}")),
    })
}

/// All CERTIFICATE blocks of a PEM input; at least one.
fn pem_certs(what: &'static str, input: &Input) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&input.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            path: input.path.clone(),
            reason: format!("{e}; expected PEM CERTIFICATE blocks"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            what,
            path: input.path.clone(),
            reason: "no certificate found; expected PEM CERTIFICATE blocks".into(),
        });
    }
    Ok(certs)
}

/// The CRLs of one input: PEM `X509 CRL` blocks if it looks like PEM, else one DER CRL.
fn crl_blocks(input: &Input) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::BadCrl {
        path: input.path.clone(),
        reason,
    };
    if !input.bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(vec![CertificateRevocationListDer::from(
            input.bytes.clone(),
        )]);
    }
    let ders = CertificateRevocationListDer::pem_slice_iter(&input.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e}; expected PEM `X509 CRL` blocks or a DER CRL")))?;
    if ders.is_empty() {
        return Err(bad(
            "no `X509 CRL` block found; expected a PEM or DER CRL (`openssl ca -gencrl`, \
             `easyrsa gen-crl`)"
                .into(),
        ));
    }
    Ok(ders)
}

/// Parses a CRL for its status and checks, while the file name is still at hand, that a CA of
/// the bundle signed it (webpki would only notice at the first client, refusing everyone).
fn crl_status(
    input: &Input,
    der: &[u8],
    ca_ders: &[CertificateDer<'static>],
    ca_path: &Path,
) -> Result<CrlStatus, TlsError> {
    let bad = |reason: String| TlsError::BadCrl {
        path: input.path.clone(),
        reason,
    };
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| bad(format!("not a valid X.509 CRL ({e})")))?;
    let issuer = ca_ders
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .find(|ca| ca.subject().as_raw() == crl.issuer().as_raw());
    match issuer {
        Some(ca) => crl.verify_signature(ca.public_key()).map_err(|_| {
            bad(format!(
                "its signature does not verify with the key of CA `{}` in {}; the CRL must be \
                 signed by that CA's current key",
                ca.subject(),
                ca_path.display()
            ))
        })?,
        // It may belong to an intermediate CA that clients send; webpki will check it then.
        None => tracing::warn!(
            crl = %input.path.display(),
            issuer = %crl.issuer(),
            ca = %ca_path.display(),
            "CRL issuer is not a CA of the bundle; it only applies to chains through that issuer"
        ),
    }
    Ok(CrlStatus {
        path: input.path.clone(),
        this_update: asn1_to_system(crl.last_update()),
        next_update: crl.next_update().map(asn1_to_system),
        revoked: crl.iter_revoked_certificates().count(),
        issuer: crl.issuer().to_string(),
        revoked_serials: crl
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect(),
    })
}

/// Stock clients use `remote-cert-tls server` (protocol doc §4.1, pitfall 11): without keyUsage
/// and EKU serverAuth they drop the connection after the handshake, which is hard to debug from
/// the server side, so say it at load time.
fn warn_unusable_server_cert(path: &Path, der: &[u8]) {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return; // rustls reports unparseable certificates itself.
    };
    let has_ku = matches!(cert.key_usage(), Ok(Some(_)));
    let has_server_auth = matches!(
        cert.extended_key_usage(),
        Ok(Some(eku)) if eku.value.server_auth
    );
    if !has_ku || !has_server_auth {
        tracing::warn!(
            cert = %path.display(),
            "server certificate lacks keyUsage or EKU serverAuth; clients with `remote-cert-tls \
             server` will refuse it; reissue it as a server certificate"
        );
    }
    if !cert.validity().is_valid() {
        tracing::warn!(
            cert = %path.display(),
            not_after = %cert.validity().not_after,
            "server certificate is outside its validity period; clients will refuse it"
        );
    }
}

fn asn1_to_system(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    fmt_secs(secs)
}

fn fmt_unix(t: &UnixTime) -> String {
    fmt_secs(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
}

fn fmt_secs(secs: i64) -> String {
    ASN1Time::from_timestamp(secs)
        .map_or_else(|_| format!("{secs} s after 1970"), |t| t.to_string())
}

/// Who the client is, from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The user name.
    pub common_name: String,
    /// Colon-separated lowercase hex without leading zero bytes, like OpenVPN's
    /// `tls_serial_hex_0` (see [`serial_hex`]).
    pub serial_hex: String,
    pub not_after: SystemTime,
    /// The issuer's distinguished name, RFC 4514 style (`CN=...`).
    pub issuer: String,
}

impl ClientIdentity {
    /// A client that presented no certificate (directory-only authentication): the user name
    /// from key-method 2 is its name; no serial, no issuer, so no CRL ever matches it.
    pub fn without_certificate(username: &str) -> Result<ClientIdentity, TlsError> {
        if username.trim().is_empty() || username.chars().any(char::is_control) {
            return Err(TlsError::NoClientCertificate);
        }
        Ok(ClientIdentity {
            common_name: username.to_owned(),
            serial_hex: String::new(),
            not_after: SystemTime::UNIX_EPOCH,
            issuer: String::new(),
        })
    }

    /// False for [`ClientIdentity::without_certificate`].
    pub fn has_certificate(&self) -> bool {
        !self.serial_hex.is_empty()
    }
}

/// Formats a certificate serial (big-endian bytes) the way OpenVPN's `tls_serial_hex` does.
pub fn serial_hex(serial: &[u8]) -> String {
    let start = serial
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(serial.len().saturating_sub(1));
    serial[start..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// From the verified leaf certificate of a finished handshake; an empty/missing CN is an error
/// (the CN is the user name).
pub fn client_identity(conn: &rustls::ServerConnection) -> Result<ClientIdentity, TlsError> {
    if conn.is_handshaking() {
        return Err(TlsError::HandshakeNotFinished);
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(TlsError::NoClientCertificate)?;
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| TlsError::BadClientCertificate(e.to_string()))?;
    let subject = cert.subject().to_string();
    let common_name = match cert.subject().iter_common_name().next() {
        None => return Err(TlsError::MissingCommonName { subject }),
        Some(cn) => cn.as_str().map_err(|_| TlsError::InvalidCommonName {
            subject: subject.clone(),
            reason: "is not a UTF-8, printable or IA5 string",
        })?,
    };
    if common_name.trim().is_empty() {
        return Err(TlsError::MissingCommonName { subject });
    }
    // The CN ends up in logs, status output and scripts as a user name.
    if common_name.chars().any(char::is_control) {
        return Err(TlsError::InvalidCommonName {
            subject,
            reason: "contains control characters",
        });
    }
    Ok(ClientIdentity {
        common_name: common_name.to_string(),
        serial_hex: serial_hex(cert.raw_serial()),
        not_after: asn1_to_system(cert.validity().not_after),
        issuer: cert.issuer().to_string(),
    })
}

/// An operator-readable reason for a failed handshake, mostly for refused client certificates;
/// it is what the log line and the AUTH_FAILED reason say.
pub fn describe_handshake_error(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::Revoked => {
                "client certificate is revoked (its serial is listed in the CRL)".into()
            }
            CertificateError::Expired => "client certificate has expired".into(),
            CertificateError::ExpiredContext { time, not_after } => format!(
                "client certificate expired on {} (server time {}); issue a new one",
                fmt_unix(not_after),
                fmt_unix(time)
            ),
            CertificateError::NotValidYet => {
                "client certificate is not valid yet; check the clocks".into()
            }
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "client certificate is not valid before {} (server time {}); check the clocks",
                fmt_unix(not_before),
                fmt_unix(time)
            ),
            CertificateError::UnknownIssuer => {
                "client certificate is not issued by a trusted CA (unknown issuer); issue it \
                 from a CA in the server's CA bundle"
                    .into()
            }
            CertificateError::BadSignature => {
                "client certificate signature does not verify with its issuer's key".into()
            }
            CertificateError::InvalidPurpose => {
                "client certificate is not for TLS client authentication (its extendedKeyUsage \
                 lacks clientAuth); issue a client certificate"
                    .into()
            }
            CertificateError::InvalidPurposeContext { presented, .. } => format!(
                "client certificate is not for TLS client authentication (its extendedKeyUsage \
                 lacks clientAuth, it has {presented:?}); issue a client certificate"
            ),
            CertificateError::ExpiredRevocationList => {
                "the server's CRL has expired, so clients are refused; publish a fresh CRL".into()
            }
            CertificateError::ExpiredRevocationListContext { time, next_update } => format!(
                "the server's CRL expired on {} (server time {}), so clients are refused; \
                 publish a fresh CRL",
                fmt_unix(next_update),
                fmt_unix(time)
            ),
            CertificateError::UnknownRevocationStatus => {
                "revocation status of the client certificate is unknown: no configured CRL is \
                 from its CA; add that CA's CRL"
                    .into()
            }
            CertificateError::UnhandledCriticalExtension => {
                "client certificate has an unsupported critical extension".into()
            }
            CertificateError::BadEncoding => "client certificate is malformed".into(),
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "client certificate uses a signature algorithm webpki does not accept (for \
                 example SHA-1 or RSA below 2048 bits); reissue it with SHA-256"
                    .into()
            }
            other => format!("client certificate refused: {other:?}"),
        },
        E::InvalidCertRevocationList(crl) => {
            format!("the server's CRL cannot be used ({crl:?}); check that its CA signed it")
        }
        E::NoCertificatesPresented => {
            "the client presented no certificate; its configuration needs `cert` and `key`".into()
        }
        E::PeerIncompatible(why) => format!(
            "the client's TLS settings are incompatible ({why:?}); check tls-version-min and \
             the cipher settings"
        ),
        E::AlertReceived(alert) => format!(
            "the client aborted the handshake with TLS alert {alert:?}; it probably refused the \
             server certificate (check its `ca`, `remote-cert-tls server` and clock)"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
pub(crate) mod tests;
