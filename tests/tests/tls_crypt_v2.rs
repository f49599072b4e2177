//! tls-crypt-v2 with the stock `openvpn` client, in namespaces: per-client keys made by our
//! pki and by `openvpn --genkey` under our server key connect (UDP and TCP) and pass traffic;
//! a key wrapped under another server key, and one past `max-age`, are refused before any
//! session exists.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis::openvpn::env::Env;
use portcullis::openvpn::server::ServerEvent;
use portcullis::openvpn::tls_crypt_v2::ServerKey;
use tests::gateway::SERVER;
use tests::openvpn::{ping, ClientConfig, OvpnClient, Proto};
use tests::tunnel::{TunnelLab, TunnelOpts};
use tests::{require_root, NetNs};

const COMPLETED: &str = "Initialization Sequence Completed";
const CONNECT: Duration = Duration::from_secs(20);
const REFUSED: Duration = Duration::from_secs(8);

fn ns(lab: &TunnelLab, i: usize) -> &NetNs {
    &lab.underlay.client(i).ns
}

/// A stock client config for `cn` that uses the tls-crypt-v2 client key at `key`.
fn v2_config(lab: &TunnelLab, cn: &str, proto: Proto, key: &Path) -> ClientConfig {
    let mut cfg = ClientConfig::new(&lab.pki, cn, proto);
    cfg.tls_crypt = None;
    cfg.extra.push(format!("tls-crypt-v2 {}", key.display()));
    cfg
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn write_key(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

#[test]
fn stock_client_connects_with_tls_crypt_v2_and_foreign_keys_create_nothing() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts {
        tls_crypt: false,
        tls_crypt_v2: Some(Some(30)),
        clients: 3,
        ..TunnelOpts::default()
    });
    let server_key = lab.tls_crypt_v2.clone().expect("v2 server key");
    let dir = server_key.parent().unwrap().to_path_buf();
    let rng = Env::system().rng;

    // Refused keys first, so their wait overlaps the positive checks.
    let other = ServerKey::generate(&*rng).unwrap();
    let foreign = write_key(
        &dir,
        "foreign.key",
        &other.new_client_key(&*rng, unix_now()).unwrap().to_pem(),
    );
    let ours = ServerKey::parse(&std::fs::read_to_string(&server_key).unwrap()).unwrap();
    let old = write_key(
        &dir,
        "old.key",
        &ours
            .new_client_key(&*rng, unix_now() - 31 * 86_400)
            .unwrap()
            .to_pem(),
    );
    let start = Instant::now();
    let mark = lab.mark();
    let refused: Vec<(OvpnClient, IpAddr, &str)> = [(1, &foreign, "foreign"), (2, &old, "old")]
        .into_iter()
        .map(|(i, key, what)| {
            let c = OvpnClient::start(ns(&lab, i), &v2_config(&lab, "dave", Proto::Udp, key));
            (c, IpAddr::V4(lab.underlay.client(i).addr), what)
        })
        .collect();

    // A key from our pki (UDP) and one openvpn makes under our server key (TCP).
    let pki_key = dir.join("alice-v2.key");
    portcullis::cli::pki::tls_crypt_v2_client(&server_key, &pki_key).unwrap();
    let stock_key = dir.join("alice-stock-v2.key");
    let out = Command::new("openvpn")
        .arg("--tls-crypt-v2")
        .arg(&server_key)
        .args(["--genkey", "tls-crypt-v2-client"])
        .arg(&stock_key)
        .output()
        .expect("openvpn --genkey");
    assert!(out.status.success(), "{out:?}");
    for (proto, key) in [(Proto::Udp, &pki_key), (Proto::Tcp, &stock_key)] {
        let what = format!("{proto:?} with {}", key.display());
        let c = OvpnClient::start(ns(&lab, 0), &v2_config(&lab, "alice", proto, key));
        c.wait_connected(CONNECT)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", c.log()));
        assert!(
            ping(ns(&lab, 0), SERVER, 3, Duration::from_secs(3)),
            "{what}: no ping through the tunnel\n{}",
            c.log()
        );
        c.proc.stop();
    }

    // The refused clients never got a session, not even a half-open one.
    while start.elapsed() < REFUSED {
        for s in lab.tunnel().sessions() {
            for (_, addr, what) in &refused {
                assert_ne!(s.link.addr().ip(), *addr, "{what} key: a session exists");
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (c, _, what) in &refused {
        assert!(
            !c.log().contains(COMPLETED),
            "{what} key: the client connected:\n{}",
            c.log()
        );
    }
    let dave = lab
        .seen_since(mark)
        .into_iter()
        .filter(
            |e| matches!(e, ServerEvent::Connected { common_name, .. } if common_name == "dave"),
        )
        .count();
    assert_eq!(dave, 0, "a refused key connected");
}
