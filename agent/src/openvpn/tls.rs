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
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::{NoServerSessionStorage, VerifierBuilderError, WebPkiClientVerifier};
use rustls::{CertificateError, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

/// The label OpenVPN uses for TLS-EKM data-channel keys (protocol doc §6.2).
pub const EKM_LABEL: &[u8] = b"EXPORTER-OpenVPN-datakeys";
/// Bytes of keying material for one key_id: `struct key2` (protocol doc §6.1).
pub const EKM_LEN: usize = 256;

/// The files of a TLS identity, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the CAs that issue client certificates.
    pub ca: PathBuf,
    /// PEM server certificate, optionally followed by its intermediates.
    pub cert: PathBuf,
    /// PEM server key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub key: PathBuf,
    /// CRL files, PEM (one or more `X509 CRL` blocks) or DER.
    pub crls: Vec<PathBuf>,
}

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

/// Bytes of one input and the name errors report it under.
struct Input {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Input {
    fn read(what: &'static str, path: &Path) -> Result<Input, TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Input {
            path: path.to_path_buf(),
            bytes,
        })
    }

    fn mem(label: String, text: &str) -> Input {
        Input {
            path: PathBuf::from(label),
            bytes: text.as_bytes().to_vec(),
        }
    }
}

impl TlsContext {
    /// Reads and checks all files; nothing is half-applied on error.
    pub fn load(files: &TlsFiles, opts: &TlsOptions) -> Result<TlsContext, TlsError> {
        let ca = Input::read("CA bundle", &files.ca)?;
        let cert = Input::read("server certificate", &files.cert)?;
        let key = Input::read("server key", &files.key)?;
        let crls = files
            .crls
            .iter()
            .map(|path| Input::read("CRL", path))
            .collect::<Result<Vec<_>, _>>()?;
        Self::build(ca, cert, key, crls, opts)
    }

    /// Same as [`TlsContext::load`] from PEM text (tests, embedded demo material).
    pub fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        crl_pems: &[String],
        opts: &TlsOptions,
    ) -> Result<TlsContext, TlsError> {
        Self::build(
            Input::mem("<CA PEM>".into(), ca_pem),
            Input::mem("<server certificate PEM>".into(), cert_pem),
            Input::mem("<server key PEM>".into(), key_pem),
            crl_pems
                .iter()
                .enumerate()
                .map(|(i, pem)| Input::mem(format!("<crl #{i}>"), pem))
                .collect(),
            opts,
        )
    }

    fn build(
        ca: Input,
        cert: Input,
        key: Input,
        crl_inputs: Vec<Input>,
        opts: &TlsOptions,
    ) -> Result<TlsContext, TlsError> {
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
        let now = SystemTime::now();
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
        let mut config = ServerConfig::builder_with_provider(provider)
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

/// Holds the current [`TlsContext`]. `reload()` re-reads the files and swaps only on success
/// (a bad reload keeps the old context and returns the error); new connections pick up the new
/// context, live ones keep theirs.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    options: TlsOptions,
    current: RwLock<Arc<TlsContext>>,
    /// Modification times of the files at the last (attempted) load, for
    /// [`ReloadableTls::reload_if_changed`].
    stamps: std::sync::Mutex<Vec<Option<SystemTime>>>,
}

impl ReloadableTls {
    pub fn new(files: TlsFiles, opts: TlsOptions) -> Result<Self, TlsError> {
        let stamps = std::sync::Mutex::new(file_stamps(&files));
        let ctx = TlsContext::load(&files, &opts)?;
        Ok(ReloadableTls {
            files,
            options: opts,
            current: RwLock::new(Arc::new(ctx)),
            stamps,
        })
    }

    /// Reloads when any of the files changed since the last load (a CRL republished by the
    /// CA, a renewed server certificate). Cheap enough to call every few seconds; a failed
    /// reload is logged and retried only after the files change again.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = file_stamps(&self.files);
        {
            let mut s = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *s == now {
                return None;
            }
            *s = now;
        }
        Some(self.reload())
    }

    pub fn current(&self) -> Arc<TlsContext> {
        // A panic while holding the lock cannot leave a half-swapped Arc behind.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn reload(&self) -> Result<(), TlsError> {
        match TlsContext::load(&self.files, &self.options) {
            Ok(ctx) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ctx);
                tracing::info!(ca = %self.files.ca.display(), "TLS configuration reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!("TLS reload failed, keeping the previous configuration: {e}");
                Err(e)
            }
        }
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn file_stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .into_iter()
        .chain(files.crls.iter())
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
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
mod tests {
    use super::*;
    use crate::pki::tests::TempDir;
    use crate::pki::{CertificateAuthority, IssuedCert, Validity};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, ServerConnection, SupportedProtocolVersion};

    const SERVER_NAME: &str = "vpn.example.test";
    const VERSIONS: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS12, &rustls::version::TLS13];

    struct Pki {
        ca: CertificateAuthority,
        server: IssuedCert,
        alice: IssuedCert,
    }

    fn pki() -> Pki {
        let ca = CertificateAuthority::generate("Test CA", Validity::days_from_now(30)).unwrap();
        let server = ca
            .issue_server(SERVER_NAME, Validity::days_from_now(30))
            .unwrap();
        let alice = ca
            .issue_client("alice", Validity::days_from_now(30))
            .unwrap();
        Pki { ca, server, alice }
    }

    fn ctx(pki: &Pki, crls: &[String], opts: TlsOptions) -> TlsContext {
        TlsContext::from_pem(
            &pki.ca.cert_pem(),
            &pki.server.cert_pem,
            &pki.server.key_pem,
            crls,
            &opts,
        )
        .unwrap()
    }

    fn crl(ca: &CertificateAuthority, revoked: &[&IssuedCert], valid: bool) -> String {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (this, next) = if valid {
            (now - day, now + day)
        } else {
            (now - 2 * day, now - day)
        };
        let serials: Vec<Vec<u8>> = revoked.iter().map(|c| c.serial.clone()).collect();
        ca.crl(&serials, this, next, 1).unwrap()
    }

    /// A rustls client that trusts `ca_pem` and authenticates with `client`, speaking only `v`.
    fn client_config(
        ca_pem: &str,
        client: Option<&IssuedCert>,
        v: &'static SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[v])
                .unwrap()
                .with_root_certificates(roots);
        Arc::new(match client {
            Some(c) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        })
    }

    /// Moves everything `from` wants to send into `to`; returns `to`'s processing result.
    fn transfer(
        from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
        to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    ) -> Result<bool, rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets()?;
        }
        Ok(!buf.is_empty())
    }

    /// An in-memory handshake; Err is the server's error (the client's would be a test bug).
    fn handshake(
        ctx: &TlsContext,
        client_cfg: Arc<ClientConfig>,
    ) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let mut client = ClientConnection::new(client_cfg, name).unwrap();
        let mut server = ServerConnection::new(ctx.server_config()).unwrap();
        for _ in 0..10 {
            let sent = transfer(&mut client, &mut server)?;
            let answered = transfer(&mut server, &mut client)
                .unwrap_or_else(|e| panic!("client-side TLS error: {e}"));
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
            assert!(sent || answered, "handshake stalled");
        }
        panic!("handshake did not finish");
    }

    fn opts(crl_expired: CrlExpiredPolicy) -> TlsOptions {
        TlsOptions {
            crl_expired,
            ..TlsOptions::default()
        }
    }

    #[test]
    fn valid_client_is_accepted_and_identified() {
        let pki = pki();
        let ctx = ctx(&pki, &[crl(&pki.ca, &[], true)], TlsOptions::default());
        for v in VERSIONS {
            let cfg = client_config(&pki.ca.cert_pem(), Some(&pki.alice), v);
            let (_, server) = handshake(&ctx, cfg).unwrap();
            assert_eq!(server.protocol_version(), Some(v.version));
            let id = client_identity(&server).unwrap();
            assert_eq!(id.common_name, "alice");
            assert_eq!(id.serial_hex, serial_hex(&pki.alice.serial));
            assert_eq!(id.issuer, "CN=Test CA");
            let expected = SystemTime::now() + Duration::from_secs(30 * 86_400);
            let skew = expected
                .duration_since(id.not_after)
                .unwrap_or_else(|e| e.duration());
            assert!(skew < Duration::from_secs(60), "{:?}", id.not_after);
            assert!(server.alpn_protocol().is_none());
        }
    }

    #[test]
    fn keying_material_export_matches_on_both_sides() {
        let pki = pki();
        let ctx = ctx(&pki, &[], TlsOptions::default());
        for v in VERSIONS {
            let cfg = client_config(&pki.ca.cert_pem(), Some(&pki.alice), v);
            let (client, server) = handshake(&ctx, cfg.clone()).unwrap();
            let c = client
                .export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)
                .unwrap();
            let s = server
                .export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)
                .unwrap();
            assert_eq!(c, s, "{v:?}");
            assert_ne!(s, [0u8; EKM_LEN]);
            // A new key_id runs a new full handshake and so gets new keys.
            let (_, again) = handshake(&ctx, cfg).unwrap();
            let s2 = again
                .export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)
                .unwrap();
            assert_ne!(s, s2, "{v:?}");
        }
    }

    #[test]
    fn no_resumption_tickets_or_alpn() {
        let pki = pki();
        let ctx = ctx(&pki, &[], TlsOptions::default());
        let cfg = ctx.server_config();
        assert_eq!(cfg.send_tls13_tickets, 0);
        assert!(!cfg.session_storage.can_cache());
        assert!(!cfg.ticketer.enabled());
        assert!(cfg.alpn_protocols.is_empty());
        // A second connection from the same client config is a full handshake again.
        for v in VERSIONS {
            let client_cfg = client_config(&pki.ca.cert_pem(), Some(&pki.alice), v);
            handshake(&ctx, client_cfg.clone()).unwrap();
            let (client, server) = handshake(&ctx, client_cfg).unwrap();
            assert_eq!(client.handshake_kind(), Some(rustls::HandshakeKind::Full));
            assert_eq!(server.handshake_kind(), Some(rustls::HandshakeKind::Full));
        }
    }

    fn refused(ctx: &TlsContext, cfg: Arc<ClientConfig>) -> rustls::Error {
        match handshake(ctx, cfg) {
            Ok(_) => panic!("handshake unexpectedly succeeded"),
            Err(e) => e,
        }
    }

    #[test]
    fn revoked_client_is_refused() {
        let pki = pki();
        let bob = pki
            .ca
            .issue_client("bob", Validity::days_from_now(1))
            .unwrap();
        let ctx = ctx(
            &pki,
            &[crl(&pki.ca, &[&pki.alice], true)],
            TlsOptions::default(),
        );
        assert_eq!(ctx.crls()[0].revoked, 1);
        for v in VERSIONS {
            let e = refused(&ctx, client_config(&pki.ca.cert_pem(), Some(&pki.alice), v));
            assert_eq!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::Revoked),
                "{v:?}"
            );
            assert!(describe_handshake_error(&e).contains("revoked"));
            let (_, server) =
                handshake(&ctx, client_config(&pki.ca.cert_pem(), Some(&bob), v)).unwrap();
            // Live sessions are re-checked by identity: bob is not listed, alice would be.
            let id = client_identity(&server).unwrap();
            assert!(!ctx.is_revoked(&id));
            let alice = ClientIdentity {
                common_name: "alice".into(),
                serial_hex: serial_hex(&pki.alice.serial),
                ..id
            };
            assert!(ctx.is_revoked(&alice), "{:?}", ctx.crls());
        }
    }

    #[test]
    fn expired_client_certificate_is_refused() {
        let pki = pki();
        let now = SystemTime::now();
        let past = Validity {
            not_before: now - Duration::from_secs(10 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        };
        let old = pki.ca.issue_client("old", past).unwrap();
        let ctx = ctx(&pki, &[], TlsOptions::default());
        for v in VERSIONS {
            let e = refused(&ctx, client_config(&pki.ca.cert_pem(), Some(&old), v));
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
                ),
                "{v:?}: {e:?}"
            );
            assert!(describe_handshake_error(&e).contains("expired on"), "{e}");
        }
    }

    #[test]
    fn certificate_without_client_auth_eku_is_refused() {
        let pki = pki();
        let server_only = pki
            .ca
            .issue_server("mallory.example.test", Validity::days_from_now(1))
            .unwrap();
        let ctx = ctx(&pki, &[], TlsOptions::default());
        for v in VERSIONS {
            let e = refused(
                &ctx,
                client_config(&pki.ca.cert_pem(), Some(&server_only), v),
            );
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        CertificateError::InvalidPurposeContext { .. }
                            | CertificateError::InvalidPurpose
                    )
                ),
                "{v:?}: {e:?}"
            );
            assert!(describe_handshake_error(&e).contains("clientAuth"));
        }
    }

    #[test]
    fn client_of_another_ca_or_without_certificate_is_refused() {
        let pki = pki();
        let other = CertificateAuthority::generate("Other CA", Validity::days_from_now(1)).unwrap();
        let stranger = other
            .issue_client("alice", Validity::days_from_now(1))
            .unwrap();
        let ctx = ctx(&pki, &[], TlsOptions::default());
        for v in VERSIONS {
            let e = refused(&ctx, client_config(&pki.ca.cert_pem(), Some(&stranger), v));
            assert_eq!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "{v:?}"
            );
            assert!(describe_handshake_error(&e).contains("unknown issuer"));
            let e = refused(&ctx, client_config(&pki.ca.cert_pem(), None, v));
            assert_eq!(e, rustls::Error::NoCertificatesPresented, "{v:?}");
            assert!(describe_handshake_error(&e).contains("no certificate"));
        }
    }

    #[test]
    fn expired_crl_refuses_or_allows_by_policy() {
        let pki = pki();
        let bob = pki
            .ca
            .issue_client("bob", Validity::days_from_now(1))
            .unwrap();
        let stale = crl(&pki.ca, &[&bob], false);
        let now = SystemTime::now();

        let refuse = ctx(
            &pki,
            std::slice::from_ref(&stale),
            opts(CrlExpiredPolicy::Refuse),
        );
        assert!(refuse.any_crl_expired(now));
        assert!(refuse.crls()[0].expired(now));
        assert!(!refuse.crls()[0].expired(now - Duration::from_secs(3 * 86_400)));
        for v in VERSIONS {
            let e = refused(
                &refuse,
                client_config(&pki.ca.cert_pem(), Some(&pki.alice), v),
            );
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(
                        CertificateError::ExpiredRevocationListContext { .. }
                    )
                ),
                "{v:?}: {e:?}"
            );
            assert!(describe_handshake_error(&e).contains("CRL expired"), "{e}");
        }

        let allow = ctx(&pki, &[stale], opts(CrlExpiredPolicy::Allow));
        assert!(allow.any_crl_expired(now));
        for v in VERSIONS {
            handshake(
                &allow,
                client_config(&pki.ca.cert_pem(), Some(&pki.alice), v),
            )
            .unwrap();
            // The stale CRL still revokes what it lists.
            let e = refused(&allow, client_config(&pki.ca.cert_pem(), Some(&bob), v));
            assert_eq!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::Revoked)
            );
        }

        let fresh = ctx(&pki, &[crl(&pki.ca, &[], true)], TlsOptions::default());
        assert!(!fresh.any_crl_expired(now));
    }

    #[test]
    fn minimum_version_1_3_refuses_tls_1_2() {
        let pki = pki();
        let ctx = ctx(
            &pki,
            &[],
            TlsOptions {
                min_version: TlsVersion::V1_3,
                ..TlsOptions::default()
            },
        );
        let e = refused(
            &ctx,
            client_config(
                &pki.ca.cert_pem(),
                Some(&pki.alice),
                &rustls::version::TLS12,
            ),
        );
        assert!(matches!(e, rustls::Error::PeerIncompatible(_)), "{e:?}");
        assert!(describe_handshake_error(&e).contains("tls-version-min"));
        let cfg = client_config(
            &pki.ca.cert_pem(),
            Some(&pki.alice),
            &rustls::version::TLS13,
        );
        handshake(&ctx, cfg).unwrap();
    }

    #[test]
    fn identity_needs_a_finished_handshake_and_a_common_name() {
        let pki = pki();
        let ctx = ctx(&pki, &[], TlsOptions::default());
        let fresh = ServerConnection::new(ctx.server_config()).unwrap();
        assert!(matches!(
            client_identity(&fresh),
            Err(TlsError::HandshakeNotFinished)
        ));

        // A client certificate without a CN, made with rcgen from the same CA.
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &pki.ca.cert_pem(),
            rcgen::KeyPair::from_pem(&pki.ca.key_pem()).unwrap(),
        )
        .unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "No CN Inc");
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let no_cn = IssuedCert {
            cert_pem: params.signed_by(&key, &issuer).unwrap().pem(),
            key_pem: key.serialize_pem(),
            serial: vec![],
            common_name: String::new(),
        };
        let (_, server) = handshake(
            &ctx,
            client_config(&pki.ca.cert_pem(), Some(&no_cn), &rustls::version::TLS13),
        )
        .unwrap();
        let err = client_identity(&server).unwrap_err();
        assert!(matches!(err, TlsError::MissingCommonName { .. }), "{err}");
        assert!(err.to_string().contains("O=No CN Inc"), "{err}");
    }

    #[test]
    fn serial_hex_is_openvpn_style() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8f:01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x12]), "12");
    }

    fn write(path: &Path, text: &[u8]) {
        std::fs::write(path, text).unwrap();
    }

    fn files(dir: &Path, pki: &Pki, crl_text: &str) -> TlsFiles {
        write(&dir.join("ca.crt"), pki.ca.cert_pem().as_bytes());
        write(&dir.join("server.crt"), pki.server.cert_pem.as_bytes());
        write(&dir.join("server.key"), pki.server.key_pem.as_bytes());
        write(&dir.join("crl.pem"), crl_text.as_bytes());
        TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            crls: vec![dir.join("crl.pem")],
        }
    }

    #[test]
    fn reload_applies_new_revocations_and_keeps_old_context_on_error() {
        fn shared_across_threads<T: Send + Sync>() {}
        shared_across_threads::<ReloadableTls>();
        let dir = TempDir::new("tls-reload");
        let pki = pki();
        let files = files(&dir.0, &pki, &crl(&pki.ca, &[], true));
        let tls = ReloadableTls::new(files, TlsOptions::default()).unwrap();
        let alice = |v| client_config(&pki.ca.cert_pem(), Some(&pki.alice), v);
        let before = tls.current();
        for v in VERSIONS {
            handshake(&before, alice(v)).unwrap();
        }

        write(
            &dir.0.join("crl.pem"),
            crl(&pki.ca, &[&pki.alice], true).as_bytes(),
        );
        tls.reload().unwrap();
        let after = tls.current();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(after.crls()[0].revoked, 1);
        for v in VERSIONS {
            let e = refused(&after, alice(v));
            assert_eq!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::Revoked)
            );
            // Whoever still holds the old snapshot (a live connection's rekey) keeps it.
            handshake(&before, alice(v)).unwrap();
        }

        write(
            &dir.0.join("crl.pem"),
            b"-----BEGIN X509 CRL-----\ngarbage\n",
        );
        let err = tls.reload().unwrap_err();
        assert!(matches!(err, TlsError::BadCrl { .. }), "{err}");
        assert!(err.to_string().contains("crl.pem"), "{err}");
        assert!(Arc::ptr_eq(&after, &tls.current()));
        write(&dir.0.join("crl.pem"), b"\x30\x03\x02\x01\x00");
        assert!(matches!(tls.reload(), Err(TlsError::BadCrl { .. })));
        assert!(Arc::ptr_eq(&after, &tls.current()));
    }

    #[test]
    fn der_crl_and_several_crl_files_are_accepted() {
        let dir = TempDir::new("tls-der-crl");
        let pki = pki();
        let other = CertificateAuthority::generate("Other CA", Validity::days_from_now(1)).unwrap();
        let mut files = files(&dir.0, &pki, &crl(&pki.ca, &[&pki.alice], true));
        let pem = crl(&pki.ca, &[&pki.alice], true);
        let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
        write(&dir.0.join("crl.der"), &der);
        files.crls = vec![dir.0.join("crl.der")];
        let ctx = TlsContext::load(&files, &TlsOptions::default()).unwrap();
        assert_eq!(ctx.crls().len(), 1);
        assert_eq!(ctx.crls()[0].path, dir.0.join("crl.der"));
        let e = refused(
            &ctx,
            client_config(
                &pki.ca.cert_pem(),
                Some(&pki.alice),
                &rustls::version::TLS13,
            ),
        );
        assert_eq!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );

        // Two CAs in the bundle, one CRL file each.
        let bundle = format!("{}{}", pki.ca.cert_pem(), other.cert_pem());
        write(&files.ca, bundle.as_bytes());
        write(&dir.0.join("other.pem"), crl(&other, &[], true).as_bytes());
        files.crls.push(dir.0.join("other.pem"));
        let ctx = TlsContext::load(&files, &TlsOptions::default()).unwrap();
        assert_eq!(ctx.crls().len(), 2);
        let stranger = other
            .issue_client("carol", Validity::days_from_now(1))
            .unwrap();
        let (_, server) = handshake(
            &ctx,
            client_config(&bundle, Some(&stranger), &rustls::version::TLS12),
        )
        .unwrap();
        assert_eq!(client_identity(&server).unwrap().issuer, "CN=Other CA");
    }

    #[test]
    fn load_errors_name_the_file_and_the_fix() {
        let dir = TempDir::new("tls-errors");
        let pki = pki();
        let good = files(&dir.0, &pki, &crl(&pki.ca, &[], true));
        let load = |f: &TlsFiles| TlsContext::load(f, &TlsOptions::default()).unwrap_err();

        let mut f = good.clone();
        f.ca = dir.0.join("missing.crt");
        let err = load(&f);
        assert!(matches!(err, TlsError::Read { .. }));
        assert!(err.to_string().contains("missing.crt"), "{err}");

        // A key file without a key.
        let mut f = good.clone();
        f.key = good.cert.clone();
        let err = load(&f);
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("server.crt: no private key found; expected a PEM PRIVATE KEY block"),
            "{err}"
        );

        // A key of another certificate.
        write(&dir.0.join("other.key"), pki.alice.key_pem.as_bytes());
        let mut f = good.clone();
        f.key = dir.0.join("other.key");
        assert!(matches!(load(&f), TlsError::KeyMismatch { .. }));

        // An empty CA bundle.
        write(&dir.0.join("empty.crt"), b"");
        let mut f = good.clone();
        f.ca = dir.0.join("empty.crt");
        let err = load(&f);
        assert!(err.to_string().contains("no certificate found"), "{err}");

        // A CRL whose issuer name matches the CA but whose signature is from another key.
        let impostor =
            CertificateAuthority::generate("Test CA", Validity::days_from_now(1)).unwrap();
        write(&dir.0.join("crl.pem"), crl(&impostor, &[], true).as_bytes());
        let err = load(&good);
        assert!(matches!(err, TlsError::BadCrl { .. }), "{err}");
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );

        // A PEM file without a CRL in it.
        write(&dir.0.join("crl.pem"), pki.ca.cert_pem().as_bytes());
        let err = load(&good);
        assert!(err.to_string().contains("no `X509 CRL` block"), "{err}");
    }

    fn run_openssl(args: &[&str]) -> Option<std::process::Output> {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .ok()
    }

    /// SEC1 and PKCS#1 keys, as older easy-rsa and `openssl ec` write them, load too.
    #[test]
    fn server_key_formats() {
        if run_openssl(&["version"]).is_none() {
            eprintln!("openssl not installed; skipping");
            return;
        }
        let dir = TempDir::new("tls-keys");
        let pki = pki();
        let files = files(&dir.0, &pki, &crl(&pki.ca, &[], true));
        let sec1 = dir.0.join("sec1.key");
        let out = run_openssl(&[
            "ec",
            "-in",
            files.key.to_str().unwrap(),
            "-out",
            sec1.to_str().unwrap(),
        ])
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(std::fs::read_to_string(&sec1)
            .unwrap()
            .contains("BEGIN EC PRIVATE KEY"));
        let ctx =
            TlsContext::load(&TlsFiles { key: sec1, ..files }, &TlsOptions::default()).unwrap();
        handshake(
            &ctx,
            client_config(
                &pki.ca.cert_pem(),
                Some(&pki.alice),
                &rustls::version::TLS13,
            ),
        )
        .unwrap();
    }

    /// Real deployments have easy-rsa/OpenSSL PKIs with RSA keys (pitfall 12): an OpenSSL RSA
    /// CA is usable by `CertificateAuthority::load`, and its RSA client certificates are
    /// accepted, identified and revocable.
    #[test]
    fn openssl_rsa_pki_interop() {
        if run_openssl(&["version"]).is_none() {
            eprintln!("openssl not installed; skipping");
            return;
        }
        let dir = TempDir::new("tls-rsa");
        let p = |f: &str| dir.0.join(f).to_str().unwrap().to_string();
        let ok = |args: &[&str]| {
            let out = run_openssl(args).unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        ok(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
            "-days",
            "30",
            "-subj",
            "/CN=Easy-RSA CA",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        ok(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &p("bob.key"),
            "-out",
            &p("bob.csr"),
            "-subj",
            "/CN=bob",
        ]);
        write(
            &dir.0.join("ext"),
            b"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        ok(&[
            "x509",
            "-req",
            "-in",
            &p("bob.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "10",
            "-extfile",
            &p("ext"),
            "-out",
            &p("bob.crt"),
        ]);
        let read = |f: &str| std::fs::read_to_string(dir.0.join(f)).unwrap();
        let ca = CertificateAuthority::load(&read("ca.crt"), &read("ca.key")).unwrap();
        let server = ca
            .issue_server(SERVER_NAME, Validity::days_from_now(1))
            .unwrap();
        let bob_der = CertificateDer::from_pem_slice(read("bob.crt").as_bytes()).unwrap();
        let (_, bob_x509) = X509Certificate::from_der(&bob_der).unwrap();
        let bob = IssuedCert {
            cert_pem: read("bob.crt"),
            key_pem: read("bob.key"),
            serial: bob_x509.raw_serial().to_vec(),
            common_name: "bob".into(),
        };
        let pki = Pki {
            alice: ca
                .issue_client("alice", Validity::days_from_now(1))
                .unwrap(),
            ca,
            server,
        };
        let fresh = ctx(&pki, &[crl(&pki.ca, &[], true)], TlsOptions::default());
        let revoked = ctx(&pki, &[crl(&pki.ca, &[&bob], true)], TlsOptions::default());
        for v in VERSIONS {
            let (_, server) =
                handshake(&fresh, client_config(&pki.ca.cert_pem(), Some(&bob), v)).unwrap();
            let id = client_identity(&server).unwrap();
            assert_eq!(id.common_name, "bob");
            assert_eq!(id.issuer, "CN=Easy-RSA CA");
            assert_eq!(id.serial_hex, serial_hex(&bob.serial));
            handshake(
                &fresh,
                client_config(&pki.ca.cert_pem(), Some(&pki.alice), v),
            )
            .unwrap();
            let e = refused(&revoked, client_config(&pki.ca.cert_pem(), Some(&bob), v));
            assert_eq!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::Revoked)
            );
        }
    }

    /// The stock client's TLS stack is OpenSSL: `openssl s_client` on loopback checks that it
    /// accepts our server (chain, hostname, purpose), that we accept its client certificate,
    /// and that both export the same OpenVPN data-channel keying material (pitfall 13).
    #[test]
    fn openssl_client_interop_and_keying_material() {
        if run_openssl(&["version"]).is_none() {
            eprintln!("openssl not installed; skipping");
            return;
        }
        let dir = TempDir::new("tls-openssl");
        let pki = pki();
        let files = files(&dir.0, &pki, &crl(&pki.ca, &[], true));
        write(&dir.0.join("alice.crt"), pki.alice.cert_pem.as_bytes());
        write(&dir.0.join("alice.key"), pki.alice.key_pem.as_bytes());
        let ctx = TlsContext::load(&files, &TlsOptions::default()).unwrap();
        for flag in ["-tls1_2", "-tls1_3"] {
            let (id, server_ekm, out) = openssl_session(&dir.0, &ctx, flag);
            assert_eq!(id.common_name, "alice", "{flag}");
            let client_ekm = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("Keying material: "))
                .unwrap_or_else(|| panic!("{flag}: no keying material in s_client output:\n{out}"));
            let ours: String = server_ekm.iter().map(|b| format!("{b:02X}")).collect();
            assert_eq!(client_ekm.to_uppercase(), ours, "{flag}");
            assert!(out.contains("Verify return code: 0 (ok)"), "{flag}: {out}");
        }
    }

    /// One `openssl s_client` session against `ctx` on 127.0.0.1; returns what the server saw
    /// and the client's output.
    fn openssl_session(
        dir: &Path,
        ctx: &TlsContext,
        flag: &str,
    ) -> (ClientIdentity, [u8; EKM_LEN], String) {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
        let child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                flag,
                "-CAfile",
                &p("ca.crt"),
                "-cert",
                &p("alice.crt"),
                "-key",
                &p("alice.key"),
                "-verify_return_error",
                "-verify_hostname",
                SERVER_NAME,
                "-keymatexport",
                "EXPORTER-OpenVPN-datakeys",
                "-keymatexportlen",
                "256",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut sock = loop {
            match listener.accept() {
                Ok((sock, _)) => break sock,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "s_client did not connect"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut server = ServerConnection::new(ctx.server_config()).unwrap();
        while server.is_handshaking() {
            server
                .complete_io(&mut sock)
                .unwrap_or_else(|e| panic!("{flag}: server handshake: {e}"));
        }
        let id = client_identity(&server).unwrap();
        let ekm = server
            .export_keying_material([0u8; EKM_LEN], EKM_LABEL, None)
            .unwrap();
        // s_client closes after its stdin hits EOF; read until then so it prints everything.
        loop {
            match server.read_tls(&mut sock) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if server.process_new_packets().is_err() {
                        break;
                    }
                    let mut sink = Vec::new();
                    let _ = server.reader().read_to_end(&mut sink);
                }
            }
        }
        drop(sock);
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (id, ekm, text)
    }
}
