//! The registry at scale: `sessions` emulated sessions spread over `gateways` fleet members
//! (the product's [`Member`], as a gateway runs it, without clients or data path) on a
//! three-member etcd. Three phases: every session registered (connect), every session's
//! counters changed (refresh), every session gone (disconnect). For each: how long until
//! etcd holds the result, the writes per second, and the etcd requests per session, counted
//! from etcd's own metrics (`grpc_server_msg_received_total` summed over the members: every
//! request and stream message, lease keep-alives and watches included).
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::GetOptions;
use portcullis::fleet::registry::unix_now;
use portcullis::fleet::{Keys, Member, SessionRecord};
use portcullis::openvpn::fence::AddressFence;
use serde_json::{json, Value};
use tests::etcd::EtcdCluster;
use tests::fleet::port_of;

/// `GET /metrics` of one member: the sum of every `name{...} value` line.
fn metric_sum(endpoint: &str, name: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port_of(endpoint))) else {
        return 0.0;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn requests(etcd: &EtcdCluster) -> f64 {
    etcd.endpoints()
        .iter()
        .map(|e| metric_sum(e, "grpc_server_msg_received_total"))
        .sum()
}

/// Puts applied (the same on every member: each applies every write).
fn puts(etcd: &EtcdCluster) -> f64 {
    metric_sum(&etcd.endpoints()[0], "etcd_mvcc_put_total")
}

fn record(gateway: &str, id: u32, bytes: u64) -> SessionRecord {
    SessionRecord {
        gateway: gateway.into(),
        id,
        serial: u64::from(id),
        user: Some(format!("user{id}")),
        username: None,
        groups: vec!["eng".into()],
        client_address: None,
        public_address: format!("198.51.100.{}:{}", id % 250 + 1, 1024 + id % 60000),
        transport: "udp".into(),
        started: unix_now(),
        ingress_bytes: bytes,
        egress_bytes: bytes,
        ingress_packets: bytes / 100,
        egress_packets: bytes / 100,
        updated: unix_now(),
    }
}

/// One phase's figures: `writes` etcd writes expected, done once `done()` says so.
fn phase(
    etcd: &EtcdCluster,
    sessions: usize,
    writes: usize,
    start: impl FnOnce(),
    mut done: impl FnMut() -> bool,
) -> Result<Value> {
    let before = requests(etcd);
    let t = Instant::now();
    start();
    while !done() {
        if t.elapsed() > Duration::from_secs(300) {
            bail!("the phase did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    // Let in-flight stream messages land in the counters.
    std::thread::sleep(Duration::from_millis(300));
    let msgs = requests(etcd) - before;
    Ok(json!({
        "secs": secs,
        "writes": writes,
        "writes_per_sec": writes as f64 / secs,
        "etcd_requests": msgs,
        "etcd_requests_per_session": msgs / sessions as f64,
    }))
}

pub fn run(sessions: usize, gateways: usize) -> Result<Value> {
    let rt = tokio::runtime::Runtime::new()?;
    let etcd = rt.block_on(EtcdCluster::start(3));
    let keys = Keys::new("bench");
    let _guard = rt.enter();
    let members: Vec<Member> = (0..gateways)
        .map(|i| {
            Member::start(
                etcd.fleet_section(&format!("gw-{i}")),
                keys.clone(),
                "10.128.0.0/16".parse().expect("pool"),
                AddressFence::new(),
                None,
            )
        })
        .collect();
    let mut probe = rt
        .block_on(portcullis::fleet::connect(&etcd.fleet_section("probe")))
        .context("etcd")?;
    let mut count = |prefix: String| -> i64 {
        rt.block_on(probe.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        ))
        .map(|r| r.count())
        .unwrap_or(-1)
    };
    // Every member holds its lease (its presence key) before the clock starts.
    let t = Instant::now();
    while count(keys.gateways()) < gateways as i64 {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("the members did not join within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let of = |g: usize, bytes: u64| -> Vec<SessionRecord> {
        (0..sessions)
            .filter(|i| i % gateways == g)
            .map(|i| record(&format!("gw-{g}"), i as u32, bytes))
            .collect()
    };
    let idle = {
        let before = requests(&etcd);
        std::thread::sleep(Duration::from_secs(3));
        (requests(&etcd) - before) / 3.0
    };
    let connect = phase(
        &etcd,
        sessions,
        sessions,
        || {
            for (g, m) in members.iter().enumerate() {
                m.sessions.send_replace(of(g, 1000));
            }
        },
        || count(keys.sessions()) == sessions as i64,
    )?;
    // The registry rewrites a changed session once its last write is older than the
    // refresh interval (1 s here).
    std::thread::sleep(Duration::from_millis(1200));
    let base = puts(&etcd);
    let refresh = phase(
        &etcd,
        sessions,
        sessions,
        || {
            for (g, m) in members.iter().enumerate() {
                m.sessions.send_replace(of(g, 2000));
            }
        },
        || puts(&etcd) - base >= sessions as f64,
    )?;
    let disconnect = phase(
        &etcd,
        sessions,
        sessions,
        || {
            for m in &members {
                m.sessions.send_replace(Vec::new());
            }
        },
        || count(keys.sessions()) == 0,
    )?;
    drop(members);
    Ok(json!({
        "sessions": sessions,
        "gateways": gateways,
        "etcd_members": 3,
        "idle_etcd_requests_per_sec": idle,
        "connect": connect,
        "refresh": refresh,
        "disconnect": disconnect,
    }))
}
