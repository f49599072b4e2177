//! The PKI directory: issue, list, revoke by name and serial, the CRL, the config checks, and
//! that a revoke reaches the endpoint's TLS reload (which then cuts the sessions).
use std::sync::Arc;

use rustls::CertificateError;

use super::*;
use crate::io::tls_files::{ReloadableTls, TlsFiles};
use crate::openvpn::session::TlsProvider;
use crate::openvpn::tls::tests::{client_config, handshake, refused, SERVER_NAME, VERSIONS};
use crate::openvpn::tls::TlsOptions;
use crate::pki::tests::TempDir;

#[test]
fn issue_list_and_revoke_by_name_and_serial() {
    let dir = TempDir::new("store");
    let pki = PkiDir::new(&dir.0);
    pki.init("Store CA", 30).unwrap();
    let a1 = pki.issue("alice", false, 10, true).unwrap();
    let a2 = pki.issue("alice", false, 20, false).unwrap();
    let b = pki.issue("bob", false, 30, true).unwrap();
    assert!(pki.issue("alice", true, 30, true).is_err(), "kind changed");
    let l = pki.list().unwrap();
    assert_eq!(l.certificates.len(), 3);
    assert_eq!(l.certificates[0].serial, hex(&a1.serial));
    assert_eq!(l.certificates[1].serial, hex(&a2.serial));
    let in_days = |c: &CertificateInfo| (c.not_after.unwrap() - unix(SystemTime::now())) / 86400;
    assert!((19..=20).contains(&in_days(&l.certificates[1])));
    assert_eq!(l.crl.as_ref().unwrap().number, 1);
    assert!(l.crl.unwrap().next_update.is_some());

    // By serial: only that one.
    let r = pki
        .revoke(None, Some(&hex(&b.serial).to_uppercase()))
        .unwrap();
    assert_eq!(r.revoked, vec![hex(&b.serial)]);
    // By name: every one of alice's.
    let r = pki.revoke(Some("alice"), None).unwrap();
    assert_eq!(r.revoked, vec![hex(&a1.serial), hex(&a2.serial)]);
    let l = pki.list().unwrap();
    assert!(l.certificates.iter().all(|c| c.revoked));
    let crl = l.crl.unwrap();
    assert_eq!((crl.number, crl.revoked), (3, 3));
    // Nothing new: the admin API says so; unknown names and serials are named.
    let e = api_revoke(Some(&dir.0), Some("alice"), None).unwrap_err();
    assert!(e.error.contains("already revoked"), "{}", e.error);
    let e = api_revoke(Some(&dir.0), Some("carol"), None).unwrap_err();
    assert!(
        e.error.contains("no certificate named \"carol\""),
        "{}",
        e.error
    );
    let e = api_revoke(Some(&dir.0), None, Some("abcd")).unwrap_err();
    assert!(
        e.error.contains("no certificate with serial abcd"),
        "{}",
        e.error
    );
    let e = api_revoke(Some(&dir.0), Some("a"), Some("b")).unwrap_err();
    assert!(e.error.contains("not both"), "{}", e.error);
    let srv = pki.issue("vpn.example.test", true, 30, true).unwrap();
    let e = api_revoke(Some(&dir.0), None, Some(&hex(&srv.serial))).unwrap_err();
    assert!(e.error.contains("server's certificate"), "{}", e.error);
    let e = api_revoke(Some(&dir.0), Some("vpn.example.test"), None).unwrap_err();
    assert!(e.error.contains("pki issue-server"), "{}", e.error);
    let e = api_list(None).unwrap_err();
    assert!(e.error.contains("[tls] pki_dir"), "{}", e.error);
}

#[test]
fn the_config_check_names_what_is_wrong() {
    let dir = TempDir::new("store-config");
    let pki = PkiDir::new(&dir.0);
    let none = check_config(&dir.0, &[], &dir.0.join("ca.crt"));
    assert!(none[0].contains("pki init"), "{none:?}");
    pki.init("Config CA", 30).unwrap();
    let crl = dir.0.join("crl.pem");
    assert!(check_config(&dir.0, std::slice::from_ref(&crl), &dir.0.join("ca.crt")).is_empty());
    let p = check_config(&dir.0, &[], &dir.0.join("ca.crt"));
    assert!(
        p.len() == 1 && p[0].contains("crl.pem is not in tls.crl"),
        "{p:?}"
    );
    let other = TempDir::new("store-config-other");
    PkiDir::new(&other.0).init("Other CA", 30).unwrap();
    let p = check_config(&dir.0, &[crl], &other.0.join("ca.crt"));
    assert!(
        p.len() == 1 && p[0].contains("not in tls.client_ca"),
        "{p:?}"
    );
}

/// The chain a console revoke relies on: the republished CRL is picked up by the TLS files'
/// one-second check (`maintain` says it changed, which makes the control thread call
/// `cut_revoked`), and the certificate is refused from then on.
#[test]
fn a_revoke_reaches_the_endpoints_tls_reload() {
    let dir = TempDir::new("store-reload");
    let pki = PkiDir::new(&dir.0);
    pki.init("Reload CA", 30).unwrap();
    pki.issue(SERVER_NAME, true, 30, true).unwrap();
    let alice = pki.issue("alice", false, 30, true).unwrap();
    let files = TlsFiles {
        ca: dir.0.join("ca.crt"),
        cert: dir.0.join(format!("{SERVER_NAME}.crt")),
        key: dir.0.join(format!("{SERVER_NAME}.key")),
        crls: vec![dir.0.join("crl.pem")],
    };
    let tls = ReloadableTls::new(files, TlsOptions::default()).unwrap();
    let ca = std::fs::read_to_string(dir.0.join("ca.crt")).unwrap();
    let cfg = |v| client_config(&ca, Some(&alice), v);
    for v in VERSIONS {
        handshake(&tls.current(), cfg(v)).unwrap();
    }
    assert!(!tls.maintain(), "nothing changed yet");
    // A file system with coarse timestamps must still see a new mtime.
    std::thread::sleep(std::time::Duration::from_millis(20));
    api_revoke(Some(&dir.0), Some("alice"), None).unwrap();
    assert!(tls.maintain(), "the new CRL was not reloaded");
    let ctx: Arc<_> = tls.current();
    for v in VERSIONS {
        assert_eq!(
            refused(&ctx, cfg(v)),
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );
    }
}
