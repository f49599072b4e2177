//! The CA, certificates for their purposes (also as OpenSSL sees them), CRLs and files.
use super::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use x509_parser::prelude::{parse_x509_certificate, parse_x509_crl, GeneralName, ParsedExtension};

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
    let der =
        rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
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
    crate::cli::pki::init(&dir.0, "Test CA", 30).unwrap();
    let key = dir.0.join("alice.key");
    std::fs::write(&key, "old").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    crate::cli::pki::issue(&dir.0, "alice", false, 30).unwrap();
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
    let (ok, out) = openssl(&["crl", "-in", &crl_path, "-CAfile", &p("ca.crt"), "-noout"]).unwrap();
    assert!(ok && out.contains("verify OK"), "{out}");
}
