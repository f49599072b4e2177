//! The TLS files: loading, reloading, key formats, and interop with openssl.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::{CertificateError, ServerConnection};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::openvpn::tls::tests::{
    client_config, crl, ctx, handshake, pki, refused, system_clock, Pki, SERVER_NAME, VERSIONS,
};
use crate::openvpn::tls::{client_identity, serial_hex, EKM_LABEL, EKM_LEN};
use crate::pki::tests::TempDir;
use crate::pki::{CertificateAuthority, IssuedCert, Validity};

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
    let ctx = load(&files, &TlsOptions::default(), system_clock()).unwrap();
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
    let ctx = load(&files, &TlsOptions::default(), system_clock()).unwrap();
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
    let load = |f: &TlsFiles| super::load(f, &TlsOptions::default(), system_clock()).unwrap_err();

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
    let impostor = CertificateAuthority::generate("Test CA", Validity::days_from_now(1)).unwrap();
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
    let ctx = load(
        &TlsFiles { key: sec1, ..files },
        &TlsOptions::default(),
        system_clock(),
    )
    .unwrap();
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
    let ctx = load(&files, &TlsOptions::default(), system_clock()).unwrap();
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

/// A reload that fails (here: a CRL caught half-written) is retried on the next call, not
/// only once the file's modification time changes again: the writer may finish within the
/// same timestamp, or the file may become readable without being rewritten.
#[test]
fn failed_reload_is_retried_until_it_loads() {
    let dir = TempDir::new("tls-retry");
    let pki = pki();
    let files = files(&dir.0, &pki, &crl(&pki.ca, &[], true));
    let crl_path = dir.0.join("crl.pem");
    let tls = ReloadableTls::new(files, TlsOptions::default()).unwrap();
    let before = tls.current();
    assert!(tls.reload_if_changed().is_none(), "nothing changed");

    write(&crl_path, b"-----BEGIN X509 CRL-----\ngarbage\n");
    let stamp = std::fs::metadata(&crl_path).unwrap().modified().unwrap();
    assert!(matches!(tls.reload_if_changed(), Some(Err(_))));
    assert!(Arc::ptr_eq(&before, &tls.current()), "old CRL kept");
    assert!(tls.reload_failure().unwrap().contains("crl.pem"));
    assert!(
        matches!(tls.reload_if_changed(), Some(Err(_))),
        "retried while failing"
    );

    // The complete CRL, with the very same modification time as the broken one.
    write(&crl_path, crl(&pki.ca, &[&pki.alice], true).as_bytes());
    std::fs::File::options()
        .write(true)
        .open(&crl_path)
        .unwrap()
        .set_modified(stamp)
        .unwrap();
    assert!(matches!(tls.reload_if_changed(), Some(Ok(()))));
    assert_eq!(tls.current().crls()[0].revoked, 1);
    assert_eq!(tls.reload_failure(), None);
    assert!(tls.reload_if_changed().is_none(), "no retry once it loaded");
}
