//! Agent restarts over pinned state, shutdown, conntrack garbage collection and the
//! errors an operator sees for a bad setup.
use std::{path::PathBuf, time::Duration};

use portcullis::datapath::{self, maps::monotonic_ns, Datapath, DatapathError};
use portcullis_common::{
    ct_state, DropReason, Event, FlowKey, NS_PER_SEC, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};
use tests::{
    clients::{
        ct_entry, echo_round_trip, flow, flow_quota_counters, read_line, set_flow, Clients,
        TcpServer, UdpServer,
    },
    gateway::{base_policy, Gateway, Options, GW_IF, SERVER, TAP},
    require_root,
};

use crate::*;

/// Replace `gw.dp` with what `f` makes of it. `Gateway` implements `Drop`, so the data
/// path cannot simply be moved out; this moves it out and writes the result back. `f`
/// must not panic (the old value is gone, a new one not there yet), so a panic aborts.
fn replace_datapath(gw: &mut Gateway, f: impl FnOnce(Datapath) -> Datapath) {
    struct AbortOnUnwind;
    impl Drop for AbortOnUnwind {
        fn drop(&mut self) {
            eprintln!("panic while the data path was moved out of the gateway: aborting");
            std::process::abort();
        }
    }
    let guard = AbortOnUnwind;
    // SAFETY: the value read out is consumed by `f`, and the result written back, before
    // anything else can see `gw.dp`; if `f` unwinds, the guard aborts the process, so
    // `gw.dp` is never dropped twice.
    unsafe {
        let old = std::ptr::read(&gw.dp);
        let new = f(old);
        std::ptr::write(&mut gw.dp, new);
    }
    std::mem::forget(guard);
}

/// The XDP program attached to `iface` in the gateway namespace, if any (`prog/xdp id N`).
fn xdp_prog_of(gw: &Gateway, iface: &str) -> Option<String> {
    let out = gw.gw.ip(&["-d", "link", "show", "dev", iface]);
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let i = s.find("prog/xdp id ")?;
    Some(
        s[i..]
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// UDP echo over `s`, without panicking (for use inside `replace_datapath`).
fn udp_echo(s: &std::net::UdpSocket, msg: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    s.send(msg).is_ok() && matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == msg)
}

/// Dropping the `Datapath` without shutdown (an agent crash or restart) leaves the pinned
/// links forwarding with no agent at all; loading again over the same pins with the same
/// options re-adopts everything: the generation, the conntrack entries (same translation,
/// same creation time) and the counters survive, re-applying the same policy is free, and
/// a TCP connection established before the restart keeps working after it.
#[test]
fn restart_over_pins_keeps_generation_flows_and_connections() {
    require_root!();
    let mut gw = Gateway::new(
        base_policy(),
        Options {
            max_flows: Some(4096),
            ..Options::default()
        },
    );
    let mut p2 = base_policy();
    p2.authorization_rules[0].description = Some("generation 2".into());
    p2.authorization_rules
        .push(p2.authorization_rules[0].clone());
    p2.authorization_rules[1].destination = "10.0.0.0/25".parse().unwrap();
    let gen = gw.set_policy(p2.clone());
    assert_eq!(gen, 2);
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let _tcp = TcpServer::start(&gw, sa(SERVER, 8080));
    let _udp = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let mut t = c
        .tcp_connect(sa(SERVER, 8080), Duration::from_secs(2))
        .expect("tcp");
    read_line(&mut t).unwrap();
    assert_eq!(echo_round_trip(&mut t, b"before").unwrap(), b"before");
    let u = c.udp_connected(48000, sa(SERVER, 7000));
    assert!(udp_echo(&u, b"before"));
    let flows_before = gw.dp.maps.flows().unwrap();
    assert_eq!(flows_before.len(), 2);
    let stats_before = gw.dp.maps.session_stats(0).unwrap();
    let new_flows_before = event_count(&gw, Event::NewFlow);
    let progs_before = (xdp_prog_of(&gw, TAP), xdp_prog_of(&gw, GW_IF));
    assert!(progs_before.0.is_some() && progs_before.1.is_some());

    let opts = gw.dp.options.clone();
    let mut gap = (false, false);
    let mut reload: Option<String> = None;
    replace_datapath(&mut gw, |old| {
        drop(old); // no shutdown: the process "crashed"
                   // No agent now: the pinned links and maps keep forwarding.
        gap.0 = echo_round_trip(&mut t, b"in the gap").is_ok_and(|b| b == b"in the gap");
        gap.1 = udp_echo(&u, b"in the gap");
        match Datapath::load(opts.clone()) {
            Ok(dp) => dp,
            Err(e) => {
                reload = Some(e.to_string());
                Datapath::load(opts).unwrap_or_else(|_| std::process::abort())
            }
        }
    });
    assert_eq!(reload, None, "re-loading over the pins");
    assert_eq!(
        gap,
        (true, true),
        "TCP and UDP kept working with no agent running"
    );

    assert_eq!(
        gw.dp.maps.active_generation().unwrap(),
        gen,
        "generation survives"
    );
    assert_eq!(
        gw.set_policy(p2),
        gen,
        "re-applying the live policy writes nothing"
    );
    let flows_after = gw.dp.maps.flows().unwrap();
    assert_eq!(flows_after.len(), 2, "no flow lost or added by the restart");
    for (k, e) in &flows_before {
        let a = flows_after
            .iter()
            .find(|(k2, _)| k2 == k)
            .expect("flow survives")
            .1;
        assert_eq!(
            (a.nat_addr, a.nat_port, a.created_ns),
            (e.nat_addr, e.nat_port, e.created_ns)
        );
        assert!(a.packets_out > e.packets_out, "the gap traffic was tracked");
    }
    assert_eq!(
        event_count(&gw, Event::NewFlow),
        new_flows_before,
        "counters survive"
    );
    let s = gw.dp.maps.session_stats(0).unwrap();
    assert!(s.ingress_packets > stats_before.ingress_packets);
    assert!(xdp_prog_of(&gw, TAP).is_some() && xdp_prog_of(&gw, GW_IF).is_some());

    // The connection from before the restart, and new flows, work after it.
    assert_eq!(echo_round_trip(&mut t, b"after").unwrap(), b"after");
    assert!(udp_echo(&u, b"after"));
    let u2 = c.udp_connected(48001, sa(SERVER, 7000));
    assert!(udp_echo(&u2, b"new flow"));
    assert_eq!(event_count(&gw, Event::NewFlow), new_flows_before + 1);
    assert_eq!(nonzero_drops(&gw), Default::default());
    drop(cl);
}

/// `shutdown(false)` detaches both programs and removes every pin, and the gateway does
/// not fail open: with the programs gone, frames written into the (persistent) TAP are not
/// forwarded by the kernel. A fresh load after it starts from nothing (generation 0, no
/// flows, no sessions: the old client is Spoofed) and forwards again.
#[test]
fn shutdown_detaches_and_removes_pins() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let udp_srv = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let u = cl.get(0).udp_connected(48100, sa(SERVER, 7000));
    assert!(udp_echo(&u, b"up"));
    let dir = gw.dp.options.pin_dir();
    for name in portcullis_common::map_names::ALL {
        assert!(dir.join(name).exists(), "map {name} pinned");
    }
    assert!(dir.join(format!("link_{TAP}")).exists() && dir.join(format!("link_{GW_IF}")).exists());
    assert!(xdp_prog_of(&gw, TAP).is_some() && xdp_prog_of(&gw, GW_IF).is_some());

    let opts = gw.dp.options.clone();
    let mut after_shutdown = (String::new(), false, None, None);
    let mut leaked: Vec<std::net::SocketAddr> = Vec::new();
    replace_datapath(&mut gw, |old| {
        after_shutdown.0 = format!("{:?}", old.shutdown(false).map_err(|e| e.to_string()));
        after_shutdown.1 = dir.exists();
        // The kernel releases a link whose last reference went from a workqueue.
        wait_until(Duration::from_secs(2), || {
            xdp_prog_of_ns(TAP).is_none() && xdp_prog_of_ns(GW_IF).is_none()
        });
        // Without the TAP program, nothing written into the TAP may reach the network
        // (untranslated, unfiltered by the gateway's kernel).
        let before = udp_srv.count();
        let _ = u.send(b"after shutdown");
        std::thread::sleep(Duration::from_millis(200));
        leaked = udp_srv.received()[before..]
            .iter()
            .map(|d| d.from)
            .collect();
        after_shutdown.2 = xdp_prog_of_ns(TAP);
        after_shutdown.3 = xdp_prog_of_ns(GW_IF);
        Datapath::load(opts.clone()).unwrap_or_else(|_| std::process::abort())
    });
    assert_eq!(after_shutdown.0, "Ok(())");
    assert!(!after_shutdown.1, "pin directory removed");
    assert_eq!(after_shutdown.2, None, "TAP program detached");
    assert_eq!(after_shutdown.3, None, "egress program detached");
    assert_eq!(
        leaked,
        vec![],
        "the gateway forwarded client traffic with the data path down"
    );

    // The fresh load knows nothing of the old state.
    assert_eq!(gw.dp.maps.active_generation().unwrap(), 0);
    assert!(gw.dp.maps.flows().unwrap().is_empty());
    assert_eq!(gw.dp.maps.client(C1).unwrap(), None);
    u.send(b"stale").unwrap();
    assert_eq!(settle_drops(&gw, DropReason::Spoofed, 1), 1);
    // Once the session is back, traffic flows (and is translated) again.
    gw.add_client(C1, &[], 0);
    gw.set_policy(base_policy());
    assert!(udp_echo(&u, b"back"));
    assert_eq!(
        udp_srv.received().last().unwrap().from,
        sa(SNAT, 48100).into()
    );
    drop(cl);
}

/// `xdp_prog_of` for code that cannot reach the `Gateway` (the test thread is in its
/// namespace, so `ip` without `-n` sees the gateway's links).
fn xdp_prog_of_ns(iface: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let i = s.find("prog/xdp id ")?;
    Some(
        s[i..]
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// `gc(now)` with a future `now` expires exactly the flows idle past their timeout (ICMP
/// 60 s, UDP without reply 120 s, UDP with reply 300 s, TCP established 7440 s), removes
/// their reverse mappings, credits the client's quota (a client at its quota can open a
/// flow again), and a flow that was collected behaves as gone: a TCP segment cannot
/// reopen it (TcpNoSyn), the server's data is not translated, a UDP socket starts a fresh
/// flow that works.
#[test]
fn gc_expires_idle_flows_by_protocol_and_credits_the_quota() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client_with_quota(C1, &[], 0, 4);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let tcp = TcpServer::start(&gw, sa(SERVER, 8080));
    let _echo = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let _sink = UdpServer::start(&gw, sa(SERVER, 7001), false);
    let pins = gw.dp.options.pin_dir();

    assert!(c.ping(SERVER, 0x6060, 1, Duration::from_secs(1)));
    let quiet = c.udp_connected(49000, sa(SERVER, 7001));
    quiet.send(b"no reply").unwrap();
    let replied = c.udp_connected(49001, sa(SERVER, 7000));
    assert!(udp_echo(&replied, b"reply"));
    let mut t = c
        .tcp_connect(sa(SERVER, 8080), Duration::from_secs(2))
        .expect("tcp");
    read_line(&mut t).unwrap();
    let tport = t.local_addr().unwrap().port();
    let keys = [
        FlowKey::v4(PROTO_ICMP, C1.octets(), 0x6060, SERVER.octets(), 0),
        FlowKey::v4(PROTO_UDP, C1.octets(), 49000, SERVER.octets(), 7001),
        FlowKey::v4(PROTO_UDP, C1.octets(), 49001, SERVER.octets(), 7000),
        FlowKey::v4(PROTO_TCP, C1.octets(), tport, SERVER.octets(), 8080),
    ];
    assert!(wait_until(Duration::from_secs(1), || {
        keys.iter().all(|k| flow(&gw, k).is_some())
    }));
    assert_eq!(flow(&gw, &keys[1]).unwrap().state, ct_state::NEW);
    assert_eq!(flow(&gw, &keys[2]).unwrap().state, ct_state::ESTABLISHED);
    assert_eq!(flow(&gw, &keys[3]).unwrap().state, ct_state::ESTABLISHED);
    // At the quota: a fifth flow is refused.
    let fifth = c.udp_connected(49002, sa(SERVER, 7000));
    fifth.send(b"fifth").unwrap();
    assert!(silent(&fifth, SILENCE), "over quota: no echo");
    assert_eq!(settle_drops(&gw, DropReason::FlowQuota, 1), 1);
    assert_eq!(flow_quota_counters(&pins, 0), (4, 0));

    let now = monotonic_ns();
    let s = |secs: u64| now + secs * NS_PER_SEC;
    let live = |gw: &Gateway| -> Vec<FlowKey> {
        let f = gw.dp.maps.flows().unwrap();
        keys.iter()
            .filter(|k| f.iter().any(|(k2, _)| k2 == *k))
            .copied()
            .collect()
    };
    assert_eq!(gw.dp.maps.gc(now).unwrap().expired, 0);
    assert_eq!(
        gw.dp.maps.gc(s(59)).unwrap().expired,
        0,
        "nothing is idle for 59 s yet"
    );
    assert_eq!(gw.dp.maps.gc(s(61)).unwrap().expired, 1);
    assert_eq!(live(&gw), keys[1..].to_vec(), "ICMP after 60 s");
    assert_eq!(flow_quota_counters(&pins, 0), (4, 1), "quota credited");
    // The credit lets the client open a flow again.
    assert!(
        udp_echo(&fifth, b"fifth"),
        "admitted after the quota was credited"
    );
    assert_eq!(gw.dp.maps.gc(s(119)).unwrap().expired, 0);
    assert_eq!(
        gw.dp.maps.gc(s(122)).unwrap().expired,
        1,
        "UDP without a reply after 120 s"
    );
    assert_eq!(live(&gw), keys[2..].to_vec());
    // 299 s: past the TCP transitory timeout (240 s), not the established one.
    assert_eq!(gw.dp.maps.gc(s(299)).unwrap().expired, 0);
    // The replied UDP flow and the fifth one (replied too, opened a moment after `now`).
    assert_eq!(
        gw.dp.maps.gc(s(302)).unwrap().expired,
        2,
        "replied UDP after 300 s"
    );
    assert_eq!(live(&gw), keys[3..].to_vec());
    assert_eq!(gw.dp.maps.gc(s(7439)).unwrap().expired, 0);
    assert_eq!(
        gw.dp.maps.gc(s(7441)).unwrap().expired,
        1,
        "established TCP after 7440 s"
    );
    assert!(gw.dp.maps.flows().unwrap().is_empty());
    assert_eq!(
        gw.dp.maps.nat_rev_len().unwrap(),
        0,
        "reverse mappings go with the flows"
    );
    assert_eq!(
        flow_quota_counters(&pins, 0),
        (5, 5),
        "every collected flow credited"
    );

    // Collected means gone. The server's data is not translated to the client...
    let reverse_nat = event_count(&gw, Event::ReverseNat);
    std::io::Write::write_all(&mut tcp.conn(0), b"late").unwrap();
    t.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        std::io::Read::read(&mut t, &mut buf).is_err(),
        "nothing reaches the client"
    );
    assert_eq!(event_count(&gw, Event::ReverseNat), reverse_nat);
    // ...a mid-stream TCP segment cannot reopen the flow...
    let _ = std::io::Write::write_all(&mut t, b"x");
    assert!(wait_until(Duration::from_secs(2), || drop_count(
        &gw,
        DropReason::TcpNoSyn
    ) >= 1));
    // ...and a UDP socket simply starts a new flow, which works.
    assert!(udp_echo(&replied, b"fresh"));
    assert_eq!(flow(&gw, &keys[2]).unwrap().packets_out, 1, "a new entry");
    assert_eq!(flow_quota_counters(&pins, 0), (6, 5));
    let others: std::collections::BTreeSet<_> = nonzero_drops(&gw).into_keys().collect();
    assert_eq!(others, [DropReason::FlowQuota, DropReason::TcpNoSyn].into());
    drop(cl);
}

/// A flow idle past its timeout but not yet collected (aged here by rewriting its
/// `last_seen_ns`) behaves the same on both sides: the network can no longer use the
/// mapping (a reply is not translated: RFC 4787 filtering), the client revives it by
/// sending (Revived, re-checked against the policy, same translation, replies flow
/// again), and `gc` then leaves the revived flow alone while it collects an aged one.
#[test]
fn expired_flows_are_revived_by_the_client_and_closed_to_the_network() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let srv = UdpServer::start(&gw, sa(SERVER, 7000), true);
    let pins = gw.dp.options.pin_dir();
    let revive = c.udp_connected(49500, sa(SERVER, 7000));
    let collect = c.udp_connected(49501, sa(SERVER, 7000));
    assert!(udp_echo(&revive, b"one") && udp_echo(&collect, b"one"));
    let rkey = FlowKey::v4(PROTO_UDP, C1.octets(), 49500, SERVER.octets(), 7000);
    let ckey = FlowKey::v4(PROTO_UDP, C1.octets(), 49501, SERVER.octets(), 7000);
    let before = flow(&gw, &rkey).unwrap();
    assert_eq!(
        before.state,
        ct_state::ESTABLISHED,
        "replied UDP: 300 s timeout"
    );
    let aged = monotonic_ns() - 301 * NS_PER_SEC;
    for k in [rkey, ckey] {
        let mut e = ct_entry(&gw, &k).unwrap();
        e.last_seen_ns = aged;
        set_flow(&pins, &k, e);
    }

    // The network side cannot use an expired mapping.
    let reverse_nat = event_count(&gw, Event::ReverseNat);
    srv.socket.send_to(b"unsolicited", sa(SNAT, 49500)).unwrap();
    assert!(
        silent(&revive, SILENCE),
        "an expired mapping admits nothing inbound"
    );
    assert_eq!(event_count(&gw, Event::ReverseNat), reverse_nat);

    // The client revives it: same entry, same translation, replies flow again.
    assert!(udp_echo(&revive, b"two"), "revived flow works both ways");
    assert_eq!(event_count(&gw, Event::Revived), 1);
    let after = flow(&gw, &rkey).unwrap();
    assert_eq!(
        (after.created_ns, after.nat_port),
        (before.created_ns, before.nat_port)
    );
    assert!(after.last_seen_ns > aged + 300 * NS_PER_SEC);
    assert_eq!(srv.received().last().unwrap().from, sa(SNAT, 49500).into());

    // The collector agrees with the data path: the aged flow goes, the revived one stays.
    let st = gw.dp.maps.gc(monotonic_ns()).unwrap();
    assert_eq!((st.scanned, st.expired), (2, 1));
    let left: Vec<FlowKey> = gw
        .dp
        .maps
        .flows()
        .unwrap()
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(left, vec![rkey]);
    assert_eq!(flow_quota_counters(&pins, 0), (2, 1));
    assert_eq!(
        event_count(&gw, Event::NewFlow),
        2,
        "revival is not a new flow"
    );
    assert_eq!(nonzero_drops(&gw), Default::default());
    drop(cl);
}

/// Operator errors name what is wrong: a missing interface by name, a pin root outside
/// bpffs with the bpffs hint (from `preflight` and from `Datapath::load`).
#[test]
fn preflight_errors_name_the_problem() {
    require_root!();
    let missing = tests::unique("nope");
    let err = datapath::preflight(
        std::path::Path::new("/sys/fs/bpf"),
        std::slice::from_ref(&missing),
    )
    .expect_err("missing interface");
    assert!(
        matches!(&err, DatapathError::NoInterface(n) if *n == missing),
        "{err:?}"
    );
    assert!(err.to_string().contains(&missing), "{err}");

    let dir = PinRoot::new();
    let root = dir.0.join("pins");
    let err = datapath::preflight(&root, &[]).expect_err("not bpffs");
    assert!(
        matches!(&err, DatapathError::NoBpffs(p) if *p == dir.0),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("is not a BPF filesystem") && msg.contains("mount -t bpf"),
        "{msg}"
    );
    assert!(msg.contains(dir.0.to_str().unwrap()), "{msg}");

    // The same errors from a full load, before anything is created.
    let opts = datapath::DatapathOptions {
        endpoint: "e2e".into(),
        pin_root: root.clone(),
        tap_ifindex: 1,
        tap_name: "lo".into(),
        tap_mac: [2, 0, 0, 0, 0, 1],
        gateway: std::net::Ipv4Addr::new(10, 100, 0, 1),
        gateway_ports: portcullis::policy::model::default_gateway_ports(),
        targets: vec![],
        max_flows: None,
        deny_events_per_sec: 0,
        mode: aya::programs::XdpMode::Driver,
    };
    let err = Datapath::load(opts.clone())
        .err()
        .expect("load refuses a non-bpffs root");
    assert!(matches!(err, DatapathError::NoBpffs(_)), "{err:?}");
    assert!(!root.exists(), "nothing created");
    let err = Datapath::load(datapath::DatapathOptions {
        pin_root: "/sys/fs/bpf".into(),
        targets: vec![missing.clone()],
        ..opts
    })
    .err()
    .expect("load refuses a missing target interface");
    assert!(err.to_string().contains(&missing), "{err}");
}

/// A scratch directory under /tmp (not bpffs), removed on drop.
struct PinRoot(PathBuf);

impl PinRoot {
    fn new() -> PinRoot {
        let p = std::env::temp_dir().join(tests::unique("pin"));
        std::fs::create_dir_all(&p).unwrap();
        PinRoot(p)
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
