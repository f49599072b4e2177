//! The OpenVPN 3 core client (`ovpncli`, the protocol core of OpenVPN Connect) against
//! `portcullis run`, with profiles exactly as `portcullis client-config export` writes them:
//! UDP and TCP, AES-256-GCM and CHACHA20-POLY1305, tls-crypt and tls-crypt-v2 (and a foreign
//! v2 client key refused), a directory login with `-u/-p`, renegotiation and session tokens.
//! Traffic goes through the tunnel in each case (ping to a host of the target network).
//!
//! Needs `target/debug/portcullis` and `ovpncli` (`cargo xtask setup` builds it from
//! ../shared/tools/openvpn3; without it these tests are skipped by name, saying so). Run:
//! `flock /tmp/portcullis-priv.lock cargo test -p tests --test ovpn3 -- --test-threads=1`.
#[path = "ovpn3/directory.rs"]
mod directory;

use std::time::Duration;

use tests::agent::{cli, poll, AgentLab};
use tests::gateway::SERVER;
use tests::openvpn::ping;
use tests::ovpn3::Ovpn3;
use tests::{require_ovpn3, require_root};

const POLICY: &str = r#"
[groups]
eng = ["alice"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]
"#;

/// `ovpncli` in client namespace `i`, connected within 20 s (else the test fails with both
/// logs).
fn connect(lab: &AgentLab, i: usize, profile: &str, args: &[&str]) -> Ovpn3 {
    let c = Ovpn3::start(lab.client_ns(i), profile, args);
    if let Err(e) = c.wait_connected(Duration::from_secs(20)) {
        panic!(
            "ovpncli {args:?} does not connect: {e}\nagent:\n{}",
            lab.agent().log_tail(30)
        );
    }
    c
}

fn reaches(lab: &AgentLab, i: usize) -> bool {
    ping(lab.client_ns(i), SERVER, 3, Duration::from_secs(3))
}

/// The agent logged a connection with this cipher (n of them in all, so far).
fn connected_with(lab: &AgentLab, cipher: &str, n: usize) {
    // The log has colour codes between a field's name and its value.
    let count = || {
        lab.agent()
            .log()
            .lines()
            .filter(|l| l.contains("client connected") && l.contains(cipher))
            .count()
    };
    let seen = poll(Duration::from_secs(5), || (count() >= n).then_some(()));
    assert!(
        seen.is_some(),
        "no {n} connections with {cipher}:\n{}",
        lab.agent().log_tail(20)
    );
}

#[test]
fn ovpn3_udp_tcp_ciphers_tls_crypt_and_tls_crypt_v2() {
    require_root!();
    require_ovpn3!("ovpn3_udp_tcp_ciphers_tls_crypt_and_tls_crypt_v2");
    let mut lab = AgentLab::new(2, &["alice"], POLICY);
    let profile = lab.export_profile("alice");
    assert!(profile.contains("<tls-crypt>"), "{profile}");

    // tls-crypt, AES-256-GCM (the server's first choice), over UDP then TCP.
    for (n, proto) in [(1, "udp"), (2, "tcp")] {
        let c = connect(&lab, 0, &profile, &["-P", proto]);
        assert!(reaches(&lab, 0), "ovpncli over {proto}: no traffic");
        connected_with(&lab, "AES-256-GCM", n);
        drop(c);
    }

    // CHACHA20-POLY1305 when the endpoint prefers it (a live reload of data_ciphers).
    lab.write_policy(&format!(
        "data_ciphers = [\"CHACHA20-POLY1305\", \"AES-256-GCM\"]\n{POLICY}"
    ));
    let out = lab.reload();
    assert!(out.success(), "reload: {}", out);
    for (n, proto) in [(1, "udp"), (2, "tcp")] {
        let c = connect(&lab, 0, &profile, &["-P", proto]);
        assert!(
            reaches(&lab, 0),
            "ovpncli over {proto} with ChaCha20: no traffic"
        );
        connected_with(&lab, "CHACHA20-POLY1305", n);
        drop(c);
    }

    // tls-crypt-v2: the exported profile carries a fresh wrapped client key.
    let v2 = lab.dir.path().join("pki/v2.key");
    let out = cli(&["pki", "tls-crypt-v2-server", "--out", &v2.to_string_lossy()]);
    assert!(out.success(), "{}", out);
    let cfg = std::fs::read_to_string(&lab.config).unwrap();
    let with_v2 = cfg.replacen(
        "tls_crypt_key = \"pki/tc.key\"\n",
        "tls_crypt_key = \"pki/tc.key\"\ntls_crypt_v2_server_key = \"pki/v2.key\"\n",
        1,
    );
    assert_ne!(cfg, with_v2, "no tls_crypt_key line in\n{cfg}");
    tests::agent::write_atomic(&lab.config, &with_v2);
    lab.restart_agent();
    let v2_profile = lab.export_profile("alice");
    assert!(
        v2_profile.contains("<tls-crypt-v2>") && !v2_profile.contains("<tls-crypt>"),
        "{v2_profile}"
    );
    for proto in ["udp", "tcp"] {
        let c = connect(&lab, 1, &v2_profile, &["-P", proto]);
        assert!(
            reaches(&lab, 1),
            "ovpncli with tls-crypt-v2 over {proto}: no traffic"
        );
        drop(c);
    }

    // A client key wrapped under another server's key: no session, no connection.
    let other = lab.dir.path().join("other-v2.key");
    let other_client = lab.dir.path().join("other-v2-client.key");
    assert!(cli(&[
        "pki",
        "tls-crypt-v2-server",
        "--out",
        &other.to_string_lossy()
    ])
    .success());
    let out = cli(&[
        "pki",
        "tls-crypt-v2-client",
        "--server-key",
        &other.to_string_lossy(),
        "--out",
        &other_client.to_string_lossy(),
    ]);
    assert!(out.success(), "{}", out);
    let start = v2_profile.find("<tls-crypt-v2>\n").unwrap() + "<tls-crypt-v2>\n".len();
    let end = v2_profile.find("</tls-crypt-v2>").unwrap();
    let foreign = format!(
        "{}{}{}",
        &v2_profile[..start],
        std::fs::read_to_string(&other_client).unwrap(),
        &v2_profile[end..]
    );
    let sessions_before = lab.agent().log_count("client connected");
    let c = Ovpn3::start(lab.client_ns(1), &foreign, &["-t", "8"]);
    assert!(
        c.wait_connected(Duration::from_secs(10)).is_err(),
        "a foreign tls-crypt-v2 key connected:\n{}",
        c.log()
    );
    drop(c);
    assert_eq!(
        lab.agent().log_count("client connected"),
        sessions_before,
        "{}",
        lab.agent().log_tail(20)
    );
}
