//! Fleet foundations against a real etcd (Debian's etcd-server on loopback, started and
//! removed by each test): the gateway's client reaches it as a `[fleet]` section says, plain
//! and with TLS client certificates; keys under a gateway's lease vanish with the lease; a
//! three-member cluster keeps taking writes with one member killed.
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, PutOptions};
use portcullis::fleet::{connect, FleetError, Keys};
use tests::etcd::EtcdCluster;

pub(crate) fn have_etcd() -> bool {
    let ok = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: etcd not installed (cargo xtask setup installs etcd-server)");
    }
    ok
}

#[tokio::test]
async fn client_from_fleet_section_and_lease_bound_keys() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let dir = etcd.dir().to_owned();
    let mut c = connect(&etcd.fleet_section("gw-a")).await.expect("connect");
    let keys = Keys::new("corp");

    c.put(keys.policy(), "name = \"corp\"", None).await.unwrap();
    let got = c.get(keys.policy(), None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"name = \"corp\"");

    // A gateway's presence lives under its lease: revoking (or letting it expire) removes it.
    let lease = c.lease_grant(3, None).await.unwrap().id();
    c.put(
        keys.gateway("gw-a"),
        "{}",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let listed = c
        .get(keys.gateways(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), 1);
    c.lease_revoke(lease).await.unwrap();
    let listed = c
        .get(keys.gateways(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), 0, "the lease took its keys along");
    // The published policy is not under a lease: it stays.
    assert_eq!(c.get(keys.policy(), None).await.unwrap().kvs().len(), 1);

    drop(etcd);
    assert!(!dir.exists(), "the cluster removed its data on drop");
}

#[tokio::test]
async fn lease_expiry_removes_a_silent_gateways_keys() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let mut c = connect(&etcd.fleet_section("gw-a")).await.expect("connect");
    let keys = Keys::new("corp");
    let lease = c.lease_grant(3, None).await.unwrap().id();
    let block = keys.block("10.100.4.0/24".parse().unwrap());
    c.put(
        block.as_str(),
        "gw-a",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let start = Instant::now();
    // Nobody keeps the lease alive (a dead gateway): the block returns within the TTL plus
    // etcd's expiry check, never before the TTL.
    loop {
        let n = c.get(block.as_str(), None).await.unwrap().kvs().len();
        if n == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(2500),
        "block returned after {:?}, before the 3 s TTL",
        start.elapsed()
    );
}

#[tokio::test]
async fn tls_with_client_certificates() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start_tls(1).await;
    let section = etcd.fleet_section("gw-a");
    assert!(section.uses_tls());
    assert_eq!(
        section.validate(),
        vec![],
        "the harness writes a valid section"
    );
    let mut c = connect(&section)
        .await
        .expect("connect with a client certificate");
    c.put("/portcullis/corp/policy", "x", None).await.unwrap();

    // Without the client certificate etcd refuses the connection.
    let mut anonymous = section.clone();
    anonymous.cert_file = None;
    anonymous.key_file = None;
    match connect(&anonymous).await {
        Err(FleetError::Unreachable { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("etcd accepted a client without a certificate"),
    }
    // A missing file is named by its field before any connection is tried.
    let mut missing = section.clone();
    missing.ca_file = Some(etcd.dir().join("nope.pem"));
    let e = connect(&missing).await.err().expect("missing CA refused");
    assert!(
        e.to_string().starts_with("fleet.ca_file: cannot read"),
        "{e}"
    );
}

#[tokio::test]
async fn three_members_keep_writing_with_one_killed() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdCluster::start(3).await;
    assert_eq!(etcd.endpoints().len(), 3);
    let mut c = connect(&etcd.fleet_section("gw-a")).await.expect("connect");
    c.put("/portcullis/corp/policy", "v1", None).await.unwrap();
    etcd.kill(0);
    // The client fails over to the two live members (a quorum of three).
    let start = Instant::now();
    loop {
        match c.put("/portcullis/corp/policy", "v2", None).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no write with 2 of 3 members: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut fresh = connect(&etcd.fleet_section("gw-b"))
        .await
        .expect("reconnect");
    let got = fresh.get("/portcullis/corp/policy", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v2");
}

pub(crate) fn shared(name: &str, dns: &str) -> portcullis::config::SharedConfig {
    portcullis::config::SharedConfig {
        name: name.into(),
        split_tunnel: true,
        dns_servers: vec![dns.parse().unwrap()],
        session_timeout_hours: 24,
        disconnect_on_session_timeout: true,
        keepalive_interval_secs: 10,
        keepalive_timeout_secs: 60,
        renegotiate_secs: 3600,
        gateway_addresses: vec![],
        banner: None,
        data_ciphers: vec!["AES-256-GCM".into()],
        groups: Default::default(),
        route: vec![],
        authorization_rule: vec![],
        security_group: vec![],
        applied_security_groups: vec![],
        crl_pem: vec![],
        ca_pem: None,
        auth: None,
        directory: None,
        oidc: None,
    }
}

async fn next(
    rx: &mut tokio::sync::mpsc::Receiver<portcullis::fleet::PolicyUpdate>,
) -> portcullis::fleet::Published {
    match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        Ok(Some(portcullis::fleet::PolicyUpdate::Published(p))) => *p,
        other => panic!("no published revision within 1 s: {other:?}"),
    }
}

/// Followers get the current policy, then each publish within 1 s; one that lost its etcd
/// member resumes on another and still gets every newer publish, none twice.
#[tokio::test]
async fn followers_get_every_publish_and_resume_after_losing_a_member() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdCluster::start(3).await;
    let keys = Keys::new("corp");
    let mut admin = connect(&etcd.fleet_section("admin")).await.unwrap();
    let r1 = portcullis::fleet::publish(&mut admin, &keys, &shared("corp", "10.0.0.1"))
        .await
        .unwrap();
    let mut rxs = Vec::new();
    let mut tasks = Vec::new();
    for gw in ["gw-a", "gw-b", "gw-c"] {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tasks.push(tokio::spawn(portcullis::fleet::follow(
            etcd.fleet_section(gw),
            keys.clone(),
            0,
            tx,
        )));
        rxs.push(rx);
    }
    for rx in &mut rxs {
        let p = next(rx).await;
        assert_eq!(
            (p.revision, p.shared.dns_servers[0].to_string()),
            (r1, "10.0.0.1".into())
        );
    }
    let r2 = portcullis::fleet::publish(&mut admin, &keys, &shared("corp", "10.0.0.2"))
        .await
        .unwrap();
    assert!(r2 > r1);
    for rx in &mut rxs {
        let p = next(rx).await;
        assert_eq!(
            (p.revision, p.shared.dns_servers[0].to_string()),
            (r2, "10.0.0.2".into())
        );
    }
    // A member dies (perhaps the leader: the first publish after it may wait for an
    // election); publishes go on through the others and reach every follower.
    etcd.kill(0);
    let mut admin = connect(&etcd.fleet_section("admin")).await.unwrap();
    let start = Instant::now();
    let r3 = loop {
        match portcullis::fleet::publish(&mut admin, &keys, &shared("corp", "10.0.0.3")).await {
            Ok(r) => break r,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(15),
                "no publish with 2 of 3 members: {e}"
            ),
        }
    };
    for rx in &mut rxs {
        // A publish that timed out may still have committed: a revision before r3 with the
        // same text may come first, never one out of order.
        let mut last = r2;
        while last < r3 {
            let p = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a follower never resumed")
                .expect("follower running");
            match p {
                portcullis::fleet::PolicyUpdate::Published(p) => {
                    assert!(p.revision > last, "{} after {last}", p.revision);
                    assert_eq!(p.shared.dns_servers[0].to_string(), "10.0.0.3");
                    last = p.revision;
                }
                // Losing the member may show as a short outage of the follower.
                portcullis::fleet::PolicyUpdate::Degraded(_)
                | portcullis::fleet::PolicyUpdate::Following => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(last, r3);
    }
    // Nothing is delivered twice.
    for rx in &mut rxs {
        while let Ok(u) = rx.try_recv() {
            assert!(
                matches!(
                    u,
                    portcullis::fleet::PolicyUpdate::Degraded(_)
                        | portcullis::fleet::PolicyUpdate::Following
                ),
                "{u:?}"
            );
        }
    }
    drop(rxs);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("follower stops when the gateway stops listening")
            .unwrap();
    }
}

/// The policy both gateways' files start with: `alice` in `eng`, which reaches the private
/// network.
pub(crate) const ENG_ALLOWED: &str = r#"
[groups]
eng = ["alice"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]
description = "engineering reaches the private network"
"#;

/// `policy` with a `[fleet]` section for the cluster at `port` on loopback.
pub(crate) fn with_fleet(policy: &str, port: u16, gateway_id: &str) -> String {
    format!(
        "{policy}\n[fleet]\nendpoints = [\"http://127.0.0.1:{port}\"]\ngateway_id = \"{gateway_id}\"\nlease_ttl_secs = 3\n"
    )
}

/// One etcd member and two `portcullis run` gateways `gw-a` and `gw-b` (each its own lab
/// topology and PKI with `users[i]`; files: `ENG_ALLOWED` and `fleet_extra` lines added to
/// `[fleet]`). Returns once both hold a lease and see each other. Drop order of the tuple
/// as bound (`let (etcd, a, b)`): the gateways stop before etcd.
pub(crate) fn two_gateways(
    users: [&[&str]; 2],
    fleet_extra: &str,
) -> (EtcdCluster, tests::agent::AgentLab, tests::agent::AgentLab) {
    use tests::agent::{poll, AgentLab};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(EtcdCluster::start(1));
    let port = tests::fleet::port_of(&etcd.endpoints()[0]);
    let lab = |gw: &str, users: &[&str]| {
        AgentLab::new(1, users, &(with_fleet(ENG_ALLOWED, port, gw) + fleet_extra))
    };
    let (a, b) = (lab("gw-a", users[0]), lab("gw-b", users[1]));
    for lab in [&a, &b] {
        tests::etcd::forward_into(&lab.gw, port);
    }
    for lab in [&a, &b] {
        poll(Duration::from_secs(10), || {
            let m = fleet_status(lab)["member"].clone();
            (m["lease_valid"] == true && m["gateways"].as_array().map(Vec::len) == Some(2))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("not a member: {}", lab.agent().log_tail(30)));
    }
    (etcd, a, b)
}

fn fleet_status(lab: &tests::agent::AgentLab) -> serde_json::Value {
    lab.agent().status()["fleet"].clone()
}

/// Two `portcullis run` gateways with `[fleet]`: started while etcd is out of reach, they run
/// their local file's policy and say degraded; once etcd is reachable they follow (and lease
/// address blocks, so clients are admitted). One
/// `fleet publish` (alice leaves eng) is then running on both within 1 s: both status
/// replies show its revision and alice's pings stop on both, without a reconnect. A file
/// `check` refuses publishes nothing.
#[test]
fn one_publish_is_enforced_on_every_gateway() {
    use tests::agent::{cli, endpoint_toml, poll, write_atomic, AgentLab};
    use tests::gateway::SERVER;
    use tests::openvpn::ping;
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(EtcdCluster::start(1));
    let port = tests::fleet::port_of(&etcd.endpoints()[0]);
    let labs: Vec<AgentLab> = ["gw-a", "gw-b"]
        .iter()
        .map(|gw| AgentLab::new(1, &["alice"], &with_fleet(ENG_ALLOWED, port, gw)))
        .collect();
    // etcd is not reachable from the gateways' namespaces yet: local policy, degraded.
    for lab in &labs {
        let degraded = poll(Duration::from_secs(5), || {
            let f = fleet_status(lab);
            f["degraded"].is_string().then_some(f)
        })
        .unwrap_or_else(|| panic!("no degraded status: {}", lab.agent().log_tail(30)));
        assert_eq!(degraded["revision"], serde_json::Value::Null, "{degraded}");
    }
    // etcd comes within reach: both follow (nothing published yet). Clients connect only
    // now: a gateway that never held a lease has no address block to admit them into.
    for lab in &labs {
        tests::etcd::forward_into(&lab.gw, port);
    }
    for lab in &labs {
        poll(Duration::from_secs(10), || {
            fleet_status(lab)["degraded"].is_null().then_some(())
        })
        .unwrap_or_else(|| panic!("still degraded: {}", lab.agent().log_tail(30)));
    }
    let clients: Vec<_> = labs.iter().map(|lab| lab.connect(0, "alice")).collect();
    for (lab, client) in labs.iter().zip(&clients) {
        assert!(
            ping(lab.client_ns(0), SERVER, 5, Duration::from_secs(5)),
            "{}",
            client.log()
        );
    }

    // A file `check` refuses changes nothing.
    let file = labs[0].dir.path().join("publish.toml");
    write_atomic(
        &file,
        &endpoint_toml(&with_fleet(ENG_ALLOWED, port, "admin"))
            .replace("split_tunnel = true", "split_tunnel = true\nbogus = 1"),
    );
    let o = cli(&["fleet", "publish", "--config", &file.to_string_lossy()]);
    assert!(!o.success() && o.stderr.contains("bogus"), "{o}");
    let mut admin = rt
        .block_on(connect(&etcd.fleet_section("admin")))
        .expect("connect");
    let stored = rt
        .block_on(admin.get(Keys::new(tests::agent::ENDPOINT).policy(), None))
        .unwrap();
    assert!(stored.kvs().is_empty(), "a refused file was published");

    // alice leaves eng, published once.
    let gens: Vec<_> = labs
        .iter()
        .map(|l| l.agent().status()["reloads"].clone())
        .collect();
    write_atomic(
        &file,
        &endpoint_toml(&with_fleet(
            &ENG_ALLOWED.replace("[\"alice\"]", "[]"),
            port,
            "admin",
        )),
    );
    let published_at = Instant::now();
    let o = cli(&["fleet", "publish", "--config", &file.to_string_lossy()]);
    assert!(o.success(), "{o}");
    let revision: i64 = o
        .stdout
        .trim()
        .strip_prefix("published: revision ")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision printed: {o}"));
    for (lab, reloads) in labs.iter().zip(&gens) {
        let deadline = published_at + Duration::from_secs(1);
        let st = poll(deadline.saturating_duration_since(Instant::now()), || {
            let st = lab.agent().status();
            (st["fleet"]["revision"] == revision).then_some(st)
        })
        .unwrap_or_else(|| {
            panic!(
                "revision {revision} not running within 1 s of the publish: {}\n{}",
                fleet_status(lab),
                lab.agent().log_tail(30)
            )
        });
        assert!(st["reloads"].as_u64() > reloads.as_u64(), "{st}");
        assert_eq!(st["last_reload_error"], serde_json::Value::Null, "{st}");
    }
    for (lab, client) in labs.iter().zip(&clients) {
        assert!(
            !ping(lab.client_ns(0), SERVER, 2, Duration::from_secs(1)),
            "alice still reaches {SERVER} after the publish: {}",
            client.log()
        );
    }
    // `portcullis status` names the revision.
    let o = cli(&["status", "--config", &labs[1].config_arg()]);
    assert!(
        o.stdout.contains(&format!("fleet revision     {revision}")),
        "{o}"
    );
}

#[path = "fleet/blocks.rs"]
mod blocks;
#[path = "fleet/ca_fleet.rs"]
mod ca_fleet;
#[path = "fleet/console.rs"]
mod console;
#[path = "fleet/failover.rs"]
mod failover;
#[path = "fleet/gateways.rs"]
mod gateways;
#[path = "fleet/limits.rs"]
mod limits;
#[path = "fleet/login.rs"]
mod login;
#[path = "fleet/outage.rs"]
mod outage;
#[path = "fleet/partition.rs"]
mod partition;
#[path = "fleet/presence.rs"]
mod presence;
#[path = "fleet/registry.rs"]
mod registry;
#[path = "fleet/revocation.rs"]
mod revocation;
#[path = "fleet/token_revocation.rs"]
mod token_revocation;
#[path = "fleet/watch.rs"]
mod watch;
