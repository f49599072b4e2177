//! The certificates page over real HTTPS, on a real `portcullis pki` directory: listing,
//! escaping, revoke (operator only, CSRF, audited with who and from), and the same revoke
//! from the admin socket.
use std::time::Duration;

use super::config::Role;
use super::tests::{admin, csrf_of, lab, XSS_CERT};
use crate::admin::dispatch::NO_PKI;
use crate::pki::store::{read_crl, PkiDir};

#[test]
fn the_page_lists_certificates_and_the_crl_and_escapes_names() {
    let lab = lab(
        "certs-list",
        vec![admin("rob", "pw", Role::ReadOnly)],
        Duration::from_secs(60),
        5,
    );
    let rob = lab.login("rob", "pw");
    assert_eq!(lab.get("/certificates", None).status, 303);
    let g = lab.get("/certificates", Some(&rob));
    assert_eq!(g.status, 200, "{}", g.body);
    let listed = PkiDir::new(&lab.pki).list().unwrap();
    assert_eq!(listed.certificates.len(), 2);
    for c in &listed.certificates {
        assert!(
            g.body.contains(&c.serial),
            "{} missing: {}",
            c.serial,
            g.body
        );
    }
    assert!(
        g.body.contains(r#"<td class="name">alice</td>"#),
        "{}",
        g.body
    );
    assert!(
        g.body.contains("&lt;script&gt;alert(&#39;cert&#39;)")
            || g.body.contains("&lt;script&gt;alert('cert')"),
        "the name is not escaped: {}",
        g.body
    );
    assert!(!g.body.contains(XSS_CERT), "{}", g.body);
    assert!(g.body.contains("CRL #1: 0 revoked"), "{}", g.body);
    assert!(g.body.contains("current"), "{}", g.body);
    // Read-only: no revoke button.
    assert!(!g.body.contains("/certificates/revoke"), "{}", g.body);
}

#[test]
fn revoke_needs_an_operator_and_the_csrf_token_and_is_audited() {
    let lab = lab(
        "certs-revoke",
        vec![
            admin("ann", "pw", Role::Operator),
            admin("rob", "pw", Role::ReadOnly),
        ],
        Duration::from_secs(60),
        5,
    );
    let listed = PkiDir::new(&lab.pki).list().unwrap();
    let alice = listed
        .certificates
        .iter()
        .find(|c| c.name == "alice")
        .unwrap()
        .serial
        .clone();
    let rob = lab.login("rob", "pw");
    let page = lab.get("/certificates", Some(&rob)).body;
    let g = lab.post(
        "/certificates/revoke",
        &[("csrf", &csrf_of(&page)), ("serial", &alice)],
        Some(&rob),
    );
    assert_eq!(g.status, 403, "{}", g.body);
    assert_eq!(read_crl(&lab.pki.join("crl.pem")).unwrap().revoked, 0);

    let ann = lab.login("ann", "pw");
    let page = lab.get("/certificates", Some(&ann)).body;
    let confirm = format!("data-confirm=\"Revoke certificate {alice} of alice?");
    assert!(page.contains(&confirm), "{page}");
    // Without the CSRF token: refused, nothing revoked.
    let g = lab.post("/certificates/revoke", &[("serial", &alice)], Some(&ann));
    assert_eq!(g.status, 403, "{}", g.body);
    assert_eq!(read_crl(&lab.pki.join("crl.pem")).unwrap().revoked, 0);
    // Without a session: refused.
    let g = lab.post(
        "/certificates/revoke",
        &[("csrf", &csrf_of(&page)), ("serial", &alice)],
        None,
    );
    assert_eq!(g.status, 401, "{}", g.body);

    let g = lab.post(
        "/certificates/revoke",
        &[("csrf", &csrf_of(&page)), ("serial", &alice)],
        Some(&ann),
    );
    assert_eq!(g.status, 200, "{}", g.body);
    assert!(
        g.body.contains(&format!("Revoked serial {alice}")),
        "{}",
        g.body
    );
    assert!(
        g.body.contains(r#"<span class="bad">revoked</span>"#),
        "{}",
        g.body
    );
    let crl = read_crl(&lab.pki.join("crl.pem")).unwrap();
    assert_eq!((crl.revoked, crl.number), (1, 2), "{crl:?}");
    // Again: nothing left to revoke, said so.
    let g = lab.post(
        "/certificates/revoke",
        &[("csrf", &csrf_of(&page)), ("serial", &alice)],
        Some(&ann),
    );
    assert_eq!(g.status, 409, "{}", g.body);
    assert!(g.body.contains("already revoked"), "{}", g.body);

    // The CLI's way: the admin socket, by name, recorded with the socket peer.
    let mut cli = crate::admin::AdminClient::connect(&lab.socket).unwrap();
    let r = cli.revoke(Some(XSS_CERT.into()), None).unwrap();
    assert_eq!(r.revoked.len(), 1);
    assert_eq!(read_crl(&lab.pki.join("crl.pem")).unwrap().revoked, 2);
    let err = cli.revoke(Some("nobody".into()), None).unwrap_err();
    assert!(
        err.to_string().contains("no certificate named \"nobody\""),
        "{err}"
    );

    let lines = lab.audit_lines();
    let revokes: Vec<_> = lines.iter().filter(|v| v["action"] == "revoke").collect();
    assert_eq!(revokes.len(), 5, "{lines:?}");
    assert_eq!(revokes[0]["who"], "rob");
    assert_eq!(revokes[0]["result"], "refused: read-only account");
    assert_eq!(revokes[1]["who"], "ann");
    assert_eq!(revokes[1]["from"], "console 127.0.0.1");
    assert_eq!(revokes[1]["target"], format!("serial {alice}"));
    assert_eq!(revokes[1]["result"], format!("ok: revoked {alice}"));
    assert!(revokes[2]["result"]
        .as_str()
        .unwrap()
        .starts_with(&format!("error: {alice} already revoked")));
    assert_eq!(revokes[3]["target"], format!("certificate {XSS_CERT}"));
    assert!(revokes[3]["from"]
        .as_str()
        .unwrap()
        .starts_with("admin socket, pid "));
    assert!(revokes[4]["result"]
        .as_str()
        .unwrap()
        .starts_with("error: no certificate named"));
    // The audit page shows the script-named target as text.
    let a = lab.get("/audit?action=revoke", Some(&ann)).body;
    assert!(!a.contains(XSS_CERT), "{a}");
}

/// The page's judgement of dates and kinds, from a reply as the agent sends it.
#[test]
fn the_crl_is_flagged_before_and_after_its_next_update_and_servers_get_no_revoke() {
    use crate::admin::{CertificateInfo, CertificatesReply, CrlInfo};
    let s = super::sessions::Session {
        admin: "ann".into(),
        role: Role::Operator,
        csrf: "t".into(),
        expires: std::time::Instant::now() + Duration::from_secs(60),
    };
    let day = 86_400;
    let reply = |next: u64| CertificatesReply {
        certificates: vec![
            CertificateInfo {
                name: "vpn.example.test".into(),
                serial: "0a".into(),
                kind: "server".into(),
                not_after: Some(100 * day),
                revoked: false,
            },
            CertificateInfo {
                name: "alice".into(),
                serial: "0b".into(),
                kind: "client".into(),
                not_after: Some(5 * day),
                revoked: false,
            },
        ],
        crl: Some(CrlInfo {
            number: 4,
            this_update: 0,
            next_update: Some(next),
            revoked: 0,
        }),
    };
    let page = |next: u64, now: u64| {
        super::certs::view(&s, Ok(reply(next)), None, now, false).into_string()
    };
    let p = page(30 * day, 10 * day);
    assert!(p.contains("— current"), "{p}");
    assert!(
        p.contains("(expired)"),
        "alice's certificate is past its not-after: {p}"
    );
    assert_eq!(p.matches("/certificates/revoke").count(), 1, "{p}");
    assert!(p.contains(r#"name="serial" value="0b""#), "{p}");
    assert!(page(30 * day, 25 * day).contains("expires within a week"));
    assert!(page(30 * day, 30 * day).contains("expired: the endpoint refuses clients"));
    let e = super::certs::view(&s, Err(NO_PKI.into()), None, 0, false).into_string();
    assert!(e.contains("[tls] pki_dir"), "{e}");
    // In a fleet a revoke needs a publish to act: said before and in the confirm question.
    assert!(!p.contains("fleet-crl"), "{p}");
    let f = super::certs::view(&s, Ok(reply(30 * day)), None, 10 * day, true).into_string();
    assert!(
        f.contains(r#"id="fleet-crl""#) && f.contains("fleet publish"),
        "{f}"
    );
    assert!(
        f.contains("in a fleet its sessions end with the next fleet publish"),
        "{f}"
    );
}
