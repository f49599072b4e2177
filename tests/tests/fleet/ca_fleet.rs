//! The client CA bundle travels with `fleet publish`: dave's certificate comes from a second
//! CA that neither gateway's own `client_ca` file holds, so both refuse him; one publish of a
//! file whose `client_ca` bundles both CAs (and whose CRLs cover both: the verifier wants a
//! revocation status for every issuer) lets him in on each gateway, with neither gateway's
//! own files changed.
use std::time::Duration;

use tests::agent::{cli_ok, endpoint_toml, poll, CliPki, ProfileClient, COMPLETED};
use tests::fleet::{underlay_addr, FleetLab};

use super::{have_etcd, ENG_ALLOWED};

/// `profile` pinned to gateway `i`, with the client certificate and key replaced.
fn as_dave(profile: &str, i: usize, cert: &str, key: &str) -> String {
    let addr = underlay_addr(i).to_string();
    let mut out = String::new();
    let mut skip = false;
    for l in profile.lines() {
        match l {
            "<cert>" => {
                out += &format!("<cert>\n{cert}</cert>\n");
                skip = true;
            }
            "<key>" => {
                out += &format!("<key>\n{key}</key>\n");
                skip = true;
            }
            "</cert>" | "</key>" => skip = false,
            _ if skip => {}
            _ if l.starts_with("remote-random") => {}
            _ if l.starts_with("remote ") && l.split_whitespace().nth(1) != Some(addr.as_str()) => {
            }
            _ => out += &format!("{l}\n"),
        }
    }
    out
}

#[test]
fn a_published_ca_bundle_admits_another_cas_clients_on_every_gateway() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let policy = tests::fleet::gateway_addresses(2) + ENG_ALLOWED;
    let lab = FleetLab::new(2, 1, &["alice"], &policy);
    // A second CA with a name of its own (certificates are matched to their issuer by
    // name: two CAs called alike would shadow each other).
    let other_dir = lab.dir().join("pki-b");
    let d = other_dir.to_string_lossy().into_owned();
    cli_ok(&["pki", "init", "--dir", &d, "--name", "Second CA"]);
    let other = CliPki { dir: other_dir };
    other.issue_client("dave");
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let (cert, key) = (read(other.cert("dave")), read(other.key("dave")));
    assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
    let profile = lab.export_profile("alice");
    assert!(
        profile.contains("<cert>") && profile.contains("<key>"),
        "{profile}"
    );

    // Before: no gateway knows dave's CA.
    let dave = ProfileClient::start(&lab.client, &as_dave(&profile, 0, &cert, &key));
    poll(Duration::from_secs(15), || {
        let log = dave.log();
        // The gateway refuses the certificate with a TLS alert.
        (log.contains("fatal SSL alert") || log.contains("TLS Error")).then_some(())
    })
    .unwrap_or_else(|| panic!("dave's handshake did not fail:\n{}", dave.log()));
    assert!(!dave.log().contains(COMPLETED), "{}", dave.log());
    drop(dave);

    // One publish: the bundle of both CAs, the CRLs of both.
    let bundle = read(lab.pki.dir.join("ca.crt")) + &read(other.dir.join("ca.crt"));
    std::fs::write(lab.dir().join("bundle.crt"), bundle).unwrap();
    let text = endpoint_toml(&policy)
        .replace("client_ca = \"pki/ca.crt\"", "client_ca = \"bundle.crt\"")
        .replace(
            "crl = [\"pki/crl.pem\"]",
            "crl = [\"pki/crl.pem\", \"pki-b/crl.pem\"]",
        );
    assert!(text.contains("bundle.crt") && text.contains("pki-b/crl.pem"));
    let (revision, _) = lab.publish_file(&text);
    for gw in &lab.gateways {
        poll(Duration::from_secs(2), || {
            (gw.fleet_status()["revision"] == revision).then_some(())
        })
        .unwrap_or_else(|| panic!("{} does not run {revision}: {}", gw.id, gw.fleet_status()));
    }
    for i in 0..2 {
        let dave = ProfileClient::start(&lab.client, &as_dave(&profile, i, &cert, &key));
        dave.wait_connected(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("dave not admitted by gw-{i} after the publish: {e}"));
    }
    // The gateways' own files still name only the first CA.
    for gw in &lab.gateways {
        let own = std::fs::read_to_string(&gw.config).unwrap();
        assert!(own.contains("client_ca = \"pki/ca.crt\""), "{own}");
    }
}
