//! A small PKI for tests, the demo, benchmarks and the `portcullis pki` CLI: one CA that issues
//! OpenVPN server and client certificates and signs CRLs.
//!
//! Keys are ECDSA P-256 because ring, our only crypto backend, cannot generate RSA keys; stock
//! OpenVPN clients (OpenSSL) and rustls both handle ECDSA. All encoding and signing is rcgen's.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;

/// Length of the random serial numbers (RFC 5280 allows up to 20 octets; CAB forum asks ≥ 64 bits).
const SERIAL_LEN: usize = 16;

/// The validity period of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From one hour ago (so that a peer whose clock is slightly behind still accepts the
    /// certificate) until `days` days from now.
    pub fn days_from_now(days: u32) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A certificate issued by [`CertificateAuthority`], with its freshly generated key.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// PKCS#8 PEM (`PRIVATE KEY`), unencrypted.
    pub key_pem: String,
    /// The serial number as encoded in the certificate (big-endian, positive, no sign byte).
    pub serial: Vec<u8>,
    pub common_name: String,
}

impl std::fmt::Debug for IssuedCert {
    // The private key stays out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("common_name", &self.common_name)
            .field("serial", &hex(&self.serial))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("common name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "certificate {common_name:?}: not_after must be later than not_before; \
         use Validity::days_from_now(days) with days > 0"
    )]
    InvalidValidity { common_name: String },
    #[error(
        "CA certificate: {reason}; expected a PEM CERTIFICATE block of a CA \
         (basicConstraints CA:TRUE)"
    )]
    BadCaCert { reason: String },
    #[error(
        "CA key: {reason}; expected an unencrypted PKCS#8 PEM `PRIVATE KEY` block \
         (ECDSA P-256/P-384, Ed25519 or RSA); convert an `EC PRIVATE KEY`/`RSA PRIVATE KEY` \
         or decrypt an `ENCRYPTED PRIVATE KEY` with `openssl pkcs8 -topk8 -nocrypt -in ca.key`"
    )]
    BadCaKey { reason: String },
    #[error("CA key does not belong to the CA certificate; pass the key that the CA certificate was issued for")]
    KeyMismatch,
    #[error("CRL: {reason}")]
    InvalidCrl { reason: String },
    #[error("rcgen could not {what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "the system random number generator failed; check that /dev/urandom or getrandom(2) works"
    )]
    Rng,
    #[error("{path}: {source}; check that the directory exists and is writable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// A certificate authority whose key is in memory.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's subjectKeyIdentifier, repeated as authorityKeyIdentifier in its CRLs so that
    /// verifiers can match CRL and CA even when the CA came from another tool (easy-rsa uses
    /// SHA-1 key ids, rcgen SHA-256).
    key_id: KeyIdMethod,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// What an end-entity certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

impl CertificateAuthority {
    /// A new self-signed CA with a fresh P-256 key.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, PkiError> {
        check_name(common_name)?;
        check_validity(common_name, &validity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("generate the CA key"))?;
        let mut params = base_params(common_name, &validity)?;
        // This PKI never issues intermediate CAs, so forbid them.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign the CA certificate"))?;
        // One code path for generated and loaded CAs.
        Self::load(&cert.pem(), &key.serialize_pem())
    }

    /// Reuses an existing CA (for example an easy-rsa one) from its PEM certificate (the first
    /// CERTIFICATE block is the CA) and PKCS#8 PEM key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadCaKey {
            reason: e.to_string(),
        })?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(
            |e| PkiError::BadCaCert {
                reason: format!("no readable PEM certificate ({e})"),
            },
        )?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::BadCaCert {
                reason: format!("cannot parse the certificate ({e})"),
            })?;
        if !x509.is_ca() {
            return Err(PkiError::BadCaCert {
                reason: format!("{} is not a CA certificate", x509.subject()),
            });
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(PkiError::KeyMismatch);
        }
        let key_id = match subject_key_id(&x509) {
            Some(ski) => KeyIdMethod::PreSpecified(ski.to_vec()),
            None => KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::BadCaCert {
            reason: format!("rcgen cannot use it as an issuer ({e})"),
        })?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
            key_id,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn key_pem(&self) -> String {
        self.key_pem.clone()
    }

    /// keyUsage digitalSignature+keyEncipherment (critical) and EKU serverAuth: what
    /// `remote-cert-tls server` in stock OpenVPN clients demands. A common name that looks like
    /// a host name or IP address is also put in subjectAltName, so hostname-checking clients
    /// (`verify-x509-name`, rustls, `openssl s_client -verify_hostname`) accept it.
    pub fn issue_server(
        &self,
        common_name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        self.issue(common_name, validity, Role::Server)
    }

    /// keyUsage digitalSignature, EKU clientAuth.
    pub fn issue_client(
        &self,
        common_name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        self.issue(common_name, validity, Role::Client)
    }

    /// Issues a certificate with exactly the given key usages and EKUs, for tests of peers that
    /// must refuse wrong ones (for example a client certificate without clientAuth).
    pub fn issue_custom(
        &self,
        common_name: &str,
        validity: Validity,
        key_usages: &[KeyUsagePurpose],
        extended_key_usages: &[ExtendedKeyUsagePurpose],
    ) -> Result<IssuedCert, PkiError> {
        check_name(common_name)?;
        check_validity(common_name, &validity)?;
        let mut params = base_params(common_name, &validity)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = key_usages.to_vec();
        params.extended_key_usages = extended_key_usages.to_vec();
        self.sign(params, common_name)
    }

    fn issue(
        &self,
        common_name: &str,
        validity: Validity,
        role: Role,
    ) -> Result<IssuedCert, PkiError> {
        check_name(common_name)?;
        check_validity(common_name, &validity)?;
        let mut params = base_params(common_name, &validity)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        match role {
            Role::Server => {
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                if let Some(san) = host_san(common_name) {
                    params.subject_alt_names.push(san);
                }
            }
            Role::Client => {
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        self.sign(params, common_name)
    }

    fn sign(&self, params: CertificateParams, common_name: &str) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("generate a certificate key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("sign the certificate"))?;
        let serial = params
            .serial_number
            .as_ref()
            .map(SerialNumber::to_bytes)
            .unwrap_or_default();
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            common_name: common_name.to_string(),
        })
    }

    /// A PEM CRL signed by this CA listing `revoked` serials (as in [`IssuedCert::serial`]).
    pub fn crl(
        &self,
        revoked: &[Vec<u8>],
        this_update: SystemTime,
        next_update: SystemTime,
        crl_number: u64,
    ) -> Result<String, PkiError> {
        if next_update <= this_update {
            return Err(PkiError::InvalidCrl {
                reason: "next_update must be later than this_update".into(),
            });
        }
        if revoked.iter().any(|s| s.iter().all(|&b| b == 0)) {
            return Err(PkiError::InvalidCrl {
                reason: "a revoked serial is empty or zero; pass IssuedCert::serial".into(),
            });
        }
        let params = CertificateRevocationListParams {
            this_update: this_update.into(),
            next_update: next_update.into(),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    // The actual revocation time is not tracked; the CRL's date is a safe bound.
                    revocation_time: this_update.into(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: self.key_id.clone(),
        };
        let crl = params.signed_by(&self.issuer).map_err(|e| match e {
            rcgen::Error::IssuerNotCrlSigner => PkiError::BadCaCert {
                reason: "its keyUsage lacks cRLSign, so it cannot sign CRLs".into(),
            },
            e => PkiError::Rcgen {
                what: "sign the CRL",
                source: e,
            },
        })?;
        crl.pem().map_err(rcgen_err("encode the CRL"))
    }
}

/// Parameters shared by all certificates: subject CN, validity and a random serial.
fn base_params(common_name: &str, validity: &Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(SerialNumber::from(random_serial()?));
    Ok(params)
}

/// 16 random bytes with the top bit clear (a positive INTEGER without a sign byte) and a
/// non-zero first byte (DER would strip it), so the bytes are exactly what the certificate says.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = vec![0u8; SERIAL_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Rng)?;
    serial[0] = (serial[0] & 0x7f).max(1);
    Ok(serial)
}

fn subject_key_id<'a>(cert: &'a x509_parser::certificate::X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
            _ => None,
        })
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let reason = if name.trim().is_empty() {
        "it is empty (OpenVPN uses the common name as the user name)"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else if name.len() > 64 {
        "it is longer than 64 bytes (RFC 5280 ub-common-name)"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

fn check_validity(common_name: &str, validity: &Validity) -> Result<(), PkiError> {
    if validity.not_after <= validity.not_before {
        return Err(PkiError::InvalidValidity {
            common_name: common_name.to_string(),
        });
    }
    Ok(())
}

/// A subjectAltName for a CN that is an IP address or a DNS-style host name, else None.
fn host_san(common_name: &str) -> Option<SanType> {
    if let Ok(ip) = common_name.parse() {
        return Some(SanType::IpAddress(ip));
    }
    let hostname = common_name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !hostname {
        return None;
    }
    common_name.try_into().ok().map(SanType::DnsName)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

mod files;
pub mod store;

pub use files::{write_demo_pki, write_file};

#[cfg(test)]
pub(crate) mod tests;
