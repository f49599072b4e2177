//! The TLS context in memory: verification, identities, keying material.
use super::*;
use crate::pki::{CertificateAuthority, IssuedCert, Validity};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConnection, SupportedProtocolVersion};

pub(crate) const SERVER_NAME: &str = "vpn.example.test";
pub(crate) const VERSIONS: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS12, &rustls::version::TLS13];

pub(crate) struct Pki {
    pub ca: CertificateAuthority,
    pub server: IssuedCert,
    pub alice: IssuedCert,
}

pub(crate) fn pki() -> Pki {
    let ca = CertificateAuthority::generate("Test CA", Validity::days_from_now(30)).unwrap();
    let server = ca
        .issue_server(SERVER_NAME, Validity::days_from_now(30))
        .unwrap();
    let alice = ca
        .issue_client("alice", Validity::days_from_now(30))
        .unwrap();
    Pki { ca, server, alice }
}

pub(crate) fn ctx(pki: &Pki, crls: &[String], opts: TlsOptions) -> TlsContext {
    TlsContext::from_pem(
        &pki.ca.cert_pem(),
        &pki.server.cert_pem,
        &pki.server.key_pem,
        crls,
        &opts,
        system_clock(),
    )
    .unwrap()
}

/// These tests judge certificates issued "now" by the test PKI.
pub(crate) fn system_clock() -> WallClock {
    Arc::new(rustls::time_provider::DefaultTimeProvider)
}

pub(crate) fn crl(ca: &CertificateAuthority, revoked: &[&IssuedCert], valid: bool) -> String {
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
pub(crate) fn client_config(
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
pub(crate) fn transfer(
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
pub(crate) fn handshake(
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

pub(crate) fn opts(crl_expired: CrlExpiredPolicy) -> TlsOptions {
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

pub(crate) fn refused(ctx: &TlsContext, cfg: Arc<ClientConfig>) -> rustls::Error {
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
