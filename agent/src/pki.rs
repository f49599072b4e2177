//! A small PKI for tests, the demo, benchmarks and the `portcullis pki` CLI: one CA that issues
//! OpenVPN server and client certificates and signs CRLs.
//!
//! Keys are ECDSA P-256 because ring, our only crypto backend, cannot generate RSA keys; stock
//! OpenVPN clients (OpenSSL) and rustls both handle ECDSA. All encoding and signing is rcgen's.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
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

/// Writes ca.crt, server.crt/.key, and for each name in `clients` <name>.crt/.key into `dir`
/// (mode 0600 for keys); returns the CA. For tests and the demo. Certificates are valid for
/// 365 days, the CA for 10 years.
pub fn write_demo_pki(
    dir: &Path,
    server_cn: &str,
    clients: &[&str],
) -> Result<CertificateAuthority, PkiError> {
    for name in clients {
        let reason = if name.is_empty() || name.starts_with('.') {
            "it is empty or starts with '.'"
        } else if name.contains('/') || name.contains('\0') {
            "it contains '/' or NUL, but is used as a file name"
        } else if *name == "ca" || *name == "server" {
            "it would overwrite ca.crt or server.crt"
        } else {
            continue;
        };
        return Err(PkiError::InvalidName {
            name: name.to_string(),
            reason,
        });
    }
    let ca = CertificateAuthority::generate(
        &format!("Portcullis CA {server_cn}"),
        Validity::days_from_now(3650),
    )?;
    write_file(&dir.join("ca.crt"), &ca.cert_pem, 0o644)?;
    let server = ca.issue_server(server_cn, Validity::days_from_now(365))?;
    write_file(&dir.join("server.crt"), &server.cert_pem, 0o644)?;
    write_file(&dir.join("server.key"), &server.key_pem, 0o600)?;
    for name in clients {
        let client = ca.issue_client(name, Validity::days_from_now(365))?;
        write_file(&dir.join(format!("{name}.crt")), &client.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{name}.key")), &client.key_pem, 0o600)?;
    }
    Ok(ca)
}

/// Creates or truncates `path` with `mode`; the mode is also set on an existing file, whose
/// permissions `open` would otherwise keep.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};
    use x509_parser::prelude::{
        parse_x509_certificate, parse_x509_crl, GeneralName, ParsedExtension,
    };

    /// A directory under the system temp dir, removed on drop (also when a test panics).
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "portcullis-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("create temp dir");
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn der(pem: &str) -> Vec<u8> {
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("PEM certificate")
            .to_vec()
    }

    fn secs(t: SystemTime) -> i64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("Test CA", Validity::days_from_now(30)).unwrap()
    }

    #[test]
    fn ca_is_a_crl_signing_ca() {
        let ca = ca();
        let der = der(&ca.cert_pem());
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert!(x.is_ca());
        assert_eq!(
            x.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "Test CA"
        );
        let ku = x.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(subject_key_id(&x).is_some());
        x.verify_signature(None).expect("self-signed");
    }

    #[test]
    fn server_cert_satisfies_remote_cert_tls_server() {
        let ca = ca();
        let validity = Validity::days_from_now(10);
        let server = ca.issue_server("vpn.example.test", validity).unwrap();
        assert_eq!(server.common_name, "vpn.example.test");
        let der = der(&server.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        let cn = x.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "vpn.example.test");
        let ku = x.key_usage().unwrap().expect("keyUsage present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        assert!(!ku.value.key_cert_sign());
        let eku = x.extended_key_usage().unwrap().expect("EKU present").value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!x.is_ca());
        assert_eq!(x.raw_serial(), server.serial.as_slice());
        assert_eq!(server.serial.len(), SERIAL_LEN);
        assert_eq!(
            x.validity().not_before.timestamp(),
            secs(validity.not_before)
        );
        assert_eq!(x.validity().not_after.timestamp(), secs(validity.not_after));
        let san = x.subject_alternative_name().unwrap().expect("SAN present");
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::DNSName("vpn.example.test")]
        );
        let ca_der = der_of(&ca);
        let (_, ca_x) = parse_x509_certificate(&ca_der).unwrap();
        x.verify_signature(Some(ca_x.public_key()))
            .expect("signed by the CA");
        assert_eq!(x.issuer(), ca_x.subject());
    }

    fn der_of(ca: &CertificateAuthority) -> Vec<u8> {
        der(&ca.cert_pem())
    }

    #[test]
    fn client_cert_is_for_client_auth_only() {
        let ca = ca();
        let validity = Validity::days_from_now(1);
        let client = ca.issue_client("alice", validity).unwrap();
        let der = der(&client.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert_eq!(
            x.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "alice"
        );
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(x.subject_alternative_name().unwrap().is_none());
        assert_eq!(x.validity().not_after.timestamp(), secs(validity.not_after));
        // The key is PKCS#8 and belongs to the certificate.
        let key = KeyPair::from_pem(&client.key_pem).unwrap();
        assert_eq!(x.public_key().raw, key.subject_public_key_info().as_slice());
    }

    #[test]
    fn serials_are_random_and_positive() {
        let ca = ca();
        let a = ca.issue_client("a", Validity::days_from_now(1)).unwrap();
        let b = ca.issue_client("a", Validity::days_from_now(1)).unwrap();
        assert_ne!(a.serial, b.serial);
        for s in [&a.serial, &b.serial] {
            assert!(s[0] != 0 && s[0] < 0x80, "{s:?}");
        }
    }

    #[test]
    fn loaded_ca_issues_certificates_that_chain_to_it() {
        let original = ca();
        let ca = CertificateAuthority::load(&original.cert_pem(), &original.key_pem()).unwrap();
        assert_eq!(ca.cert_pem(), original.cert_pem());
        let client = ca.issue_client("bob", Validity::days_from_now(1)).unwrap();
        let der = der(&client.cert_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();
        let ca_der = der_of(&original);
        let (_, ca_x) = parse_x509_certificate(&ca_der).unwrap();
        x.verify_signature(Some(ca_x.public_key())).unwrap();
        // The AKI of the leaf is the SKI of the CA, so OpenSSL finds the issuer by key id.
        let aki = x
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
                _ => None,
            })
            .expect("AKI");
        assert_eq!(Some(aki.0), subject_key_id(&ca_x));
    }

    #[test]
    fn load_rejects_wrong_inputs_with_a_fix() {
        let a = ca();
        let b = ca();
        assert!(matches!(
            CertificateAuthority::load(&a.cert_pem(), &b.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        let err = CertificateAuthority::load(&a.cert_pem(), "not a key").unwrap_err();
        assert!(matches!(err, PkiError::BadCaKey { .. }));
        assert!(
            err.to_string().contains("openssl pkcs8 -topk8 -nocrypt"),
            "{err}"
        );
        let err = CertificateAuthority::load("junk", &a.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::BadCaCert { .. }), "{err}");
        // A leaf certificate with its own key is not a CA.
        let leaf = a.issue_client("leaf", Validity::days_from_now(1)).unwrap();
        let err = CertificateAuthority::load(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA certificate"), "{err}");
    }

    #[test]
    fn invalid_names_and_validity_are_refused() {
        let ca = ca();
        for name in ["", "  ", "a\nb"] {
            assert!(matches!(
                ca.issue_client(name, Validity::days_from_now(1)),
                Err(PkiError::InvalidName { .. })
            ));
        }
        let now = SystemTime::now();
        let backwards = Validity {
            not_before: now,
            not_after: now - Duration::from_secs(1),
        };
        assert!(matches!(
            ca.issue_server("s", backwards),
            Err(PkiError::InvalidValidity { .. })
        ));
        assert!(matches!(
            ca.crl(&[], now, now, 1),
            Err(PkiError::InvalidCrl { .. })
        ));
    }

    #[test]
    fn crl_lists_revoked_serials_and_is_signed_by_the_ca() {
        let ca = ca();
        let revoked = ca
            .issue_client("mallory", Validity::days_from_now(1))
            .unwrap();
        let kept = ca
            .issue_client("alice", Validity::days_from_now(1))
            .unwrap();
        let this_update = SystemTime::now() - Duration::from_secs(60);
        let next_update = this_update + Duration::from_secs(7 * 86_400);
        let pem = ca
            .crl(
                std::slice::from_ref(&revoked.serial),
                this_update,
                next_update,
                42,
            )
            .unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"));
        let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .unwrap();
        let (_, crl) = parse_x509_crl(&der).unwrap();
        let serials: Vec<&[u8]> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial())
            .collect();
        assert_eq!(serials, vec![revoked.serial.as_slice()]);
        assert!(!serials.contains(&kept.serial.as_slice()));
        assert_eq!(crl.crl_number().unwrap().to_string(), "42");
        assert_eq!(crl.last_update().timestamp(), secs(this_update));
        assert_eq!(crl.next_update().unwrap().timestamp(), secs(next_update));
        let ca_der = der_of(&ca);
        let (_, ca_x) = parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(crl.issuer(), ca_x.subject());
        crl.verify_signature(ca_x.public_key()).unwrap();
    }

    #[test]
    fn demo_pki_files_and_modes() {
        let dir = TempDir::new("pki-demo");
        write_demo_pki(&dir.0, "vpn.example.test", &["alice", "bob"]).unwrap();
        for (file, mode) in [
            ("ca.crt", 0o644),
            ("server.crt", 0o644),
            ("server.key", 0o600),
            ("alice.crt", 0o644),
            ("alice.key", 0o600),
            ("bob.key", 0o600),
        ] {
            let meta = std::fs::metadata(dir.0.join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        assert!(!dir.0.join("ca.key").exists());
        assert!(matches!(
            write_demo_pki(&dir.0, "s", &["../x"]),
            Err(PkiError::InvalidName { .. })
        ));
        let err = write_demo_pki(&dir.0.join("missing"), "s", &[]).unwrap_err();
        assert!(err.to_string().contains("missing/ca.crt"), "{err}");
    }

    /// `portcullis pki issue-client` over an existing, world-readable `.key` (a re-issue, or
    /// a file someone made beforehand): the new key must not inherit the loose mode.
    #[test]
    fn pki_cli_tightens_an_existing_key_file() {
        let dir = TempDir::new("pki-cli-mode");
        crate::pki_cli::init(&dir.0, "Test CA", 30).unwrap();
        let key = dir.0.join("alice.key");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        crate::pki_cli::issue(&dir.0, "alice", false, 30).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "alice.key is {mode:o}");
        assert!(std::fs::read_to_string(&key)
            .unwrap()
            .contains("PRIVATE KEY"));
    }

    fn openssl(args: &[&str]) -> Option<(bool, String)> {
        let out = Command::new("openssl").args(args).output().ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some((out.status.success(), text))
    }

    /// OpenSSL is what stock OpenVPN clients verify with: its purpose checks are the ones
    /// `remote-cert-tls` builds on.
    #[test]
    fn openssl_accepts_the_certificates_for_their_purpose() {
        if openssl(&["version"]).is_none() {
            eprintln!("openssl not installed; skipping");
            return;
        }
        let dir = TempDir::new("pki-openssl");
        let ca = write_demo_pki(&dir.0, "vpn.example.test", &["alice", "mallory"]).unwrap();
        let p = |f: &str| dir.0.join(f).to_str().unwrap().to_string();
        let verify = |purpose: &str, cert: &str, extra: &[&str]| {
            let ca = p("ca.crt");
            let cert = p(cert);
            let mut args = vec!["verify", "-CAfile", &ca, "-purpose", purpose];
            args.extend_from_slice(extra);
            args.push(&cert);
            openssl(&args).unwrap()
        };
        let (ok, out) = verify("sslserver", "server.crt", &[]);
        assert!(ok, "{out}");
        let (ok, out) = verify("sslclient", "alice.crt", &[]);
        assert!(ok, "{out}");
        let (ok, out) = verify("sslserver", "alice.crt", &[]);
        assert!(!ok, "a client certificate must not pass as a server: {out}");
        let (ok, out) = verify("sslclient", "server.crt", &[]);
        assert!(!ok, "a server certificate must not pass as a client: {out}");

        // Revoke mallory and check OpenSSL reads the CRL and refuses only her.
        let mallory_der = der(&std::fs::read_to_string(p("mallory.crt")).unwrap());
        let (_, mallory) = parse_x509_certificate(&mallory_der).unwrap();
        let now = SystemTime::now();
        let crl = ca
            .crl(
                &[mallory.raw_serial().to_vec()],
                now - Duration::from_secs(60),
                now + Duration::from_secs(86_400),
                1,
            )
            .unwrap();
        write_file(&dir.0.join("crl.pem"), &crl, 0o644).unwrap();
        let crl_path = p("crl.pem");
        let (ok, out) = verify(
            "sslclient",
            "alice.crt",
            &["-crl_check", "-CRLfile", &crl_path],
        );
        assert!(ok, "{out}");
        let (ok, out) = verify(
            "sslclient",
            "mallory.crt",
            &["-crl_check", "-CRLfile", &crl_path],
        );
        assert!(!ok && out.contains("revoked"), "{out}");
        let (ok, out) =
            openssl(&["crl", "-in", &crl_path, "-CAfile", &p("ca.crt"), "-noout"]).unwrap();
        assert!(ok && out.contains("verify OK"), "{out}");
    }
}
