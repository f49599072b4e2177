//! A stock client with an exported profile: connect, list, terminate.
use super::*;

/// The exported profile connects a stock client unchanged; `connections list` shows the
/// session; traffic flows through the XDP data path; `connections terminate --user` ends it.
#[test]
fn run_connect_list_terminate() {
    require_root!();
    let t0 = Instant::now();
    let policy = format!("banner = \"{BANNER}\"\n{ENG_ALLOWED}");
    let lab = AgentLab::new(1, &["alice"], &policy);
    eprintln!("agent up after {:?}", t0.elapsed());

    let profile = lab.export_profile("alice");
    for want in [
        "client",
        "remote 192.0.2.1 1194 udp",
        "remote 192.0.2.1 1194 tcp-client",
        "<ca>",
        "<cert>",
        "<key>",
        "<tls-crypt>",
        "remote-cert-tls server",
    ] {
        assert!(profile.contains(want), "profile lacks {want:?}:\n{profile}");
    }
    let client = lab.connect(0, "alice");
    eprintln!("alice connected after {:?}", t0.elapsed());
    // The banner reaches the stock client as pushed `echo` options, one per line.
    let log = client.log();
    for want in [
        "ECHO-PULL:msg Authorized use only.",
        "ECHO-PULL:msg Activity is logged.",
        "ECHO-PULL:msg-window",
    ] {
        assert!(log.contains(want), "client log lacks {want:?}:\n{log}");
    }
    let addr = tunnel_addr(lab.client_ns(0)).unwrap_or_else(|| {
        panic!(
            "no tunnel address in the client namespace\n{}",
            client.log()
        )
    });

    // The session in `connections list --json`.
    let conns = lab.connections();
    assert_eq!(conns.len(), 1, "{conns:#?}");
    let c = &conns[0];
    assert_eq!(c["user"], "alice", "{c}");
    assert_eq!(c["client_address"], addr.to_string(), "{c}");
    assert_eq!(c["transport"], "udp", "the profile lists UDP first: {c}");
    assert_eq!(c["established"], true, "{c}");
    let public = c["public_address"].as_str().unwrap_or_default();
    assert!(
        public.starts_with("192.0.2.11:"),
        "public address {public:?}, want the client's underlay address"
    );
    let id = c["id"].as_u64().expect("numeric id");

    // Traffic through the tunnel and the data path; the counters see it.
    assert!(
        ping(lab.client_ns(0), SERVER, 5, Duration::from_secs(5)),
        "no ping through the tunnel\n{}",
        client.log()
    );
    let c = poll(Duration::from_secs(3), || {
        lab.connections()
            .into_iter()
            .find(|c| c["id"] == id && c["ingress_packets"].as_u64() > Some(0))
    })
    .unwrap_or_else(|| panic!("no ingress counted: {:#?}", lab.connections()));
    assert!(c["egress_packets"].as_u64() > Some(0), "{c}");

    // Metrics and the connection log see the session.
    let m = poll(Duration::from_secs(3), || {
        let m = tests::agent::scrape_metrics(&lab.gw);
        (m.contains("portcullis_active_connections 1")
            && !m.contains("portcullis_ingress_packets_total 0"))
        .then_some(m)
    })
    .unwrap_or_else(|| panic!("metrics: {}", tests::agent::scrape_metrics(&lab.gw)));
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(
        m.contains("portcullis_connection_attempts_total{reason=\"successful\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_handshake_duration_seconds_count 1"),
        "{m}"
    );
    // The tunnel's own counters: the datagrams of the handshake and the ping.
    let udp_rx = m
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_tunnel_packets_total{kind=\"udp_rx\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(udp_rx > Some(0), "udp_rx {udp_rx:?}: {m}");
    assert!(
        m.contains("portcullis_tunnel_drops_total{reason=\"data_spoofed_source\"} 0"),
        "{m}"
    );
    let log = std::fs::read_to_string(lab.dir.path().join("connections.log")).unwrap_or_default();
    let first: serde_json::Value =
        serde_json::from_str(log.lines().next().unwrap_or("{}")).expect("JSON connection log");
    assert_eq!(first["connection-attempt-status"], "successful", "{log}");
    assert_eq!(first["common-name"], "alice", "{log}");
    assert_eq!(first["device-ip"], addr.to_string(), "{log}");

    // The table form, and the raw admin protocol.
    let table = cli_ok(&["connections", "list", "--config", &lab.config_arg()]);
    assert!(
        table.contains("alice") && table.contains(&addr.to_string()),
        "{table}"
    );
    let v = lab
        .agent()
        .admin(&serde_json::json!({"cmd": "connections"}))
        .unwrap();
    assert_eq!(v["connections"][0]["user"], "alice", "{v}");
    let v = lab
        .agent()
        .admin(&serde_json::json!({"cmd": "bogus"}))
        .unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("bad request"),
        "{v}"
    );
    // `portcullis status`: the agent's view, with map fill levels (table and JSON).
    let out = cli_ok(&["status", "--config", &lab.config_arg(), "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(st["endpoint"], ENDPOINT, "{st}");
    assert_eq!(st["maps"]["clients"]["entries"], 1, "{st}");
    assert_eq!(st["maps"]["clients"]["capacity"], 65536, "{st}");
    assert!(
        st["maps"]["conntrack"]["entries"].as_u64() >= Some(1),
        "{st}"
    );
    assert_eq!(st["maps"]["authz_v4"]["entries"], 1, "{st}");
    let table = cli_ok(&["status", "--config", &lab.config_arg()]);
    for want in [
        "policy generation",
        "sessions           1 (1 established)",
        "maps:",
        "clients",
        "authz_v4",
    ] {
        assert!(table.contains(want), "status lacks {want:?}:\n{table}");
    }
    let st = lab.agent().status();
    assert_eq!(
        (st["sessions"].as_u64(), st["established"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );

    // Terminating somebody who is not connected fails and ends nothing.
    let o = cli(&[
        "connections",
        "terminate",
        "--config",
        &lab.config_arg(),
        "--user",
        "mallory",
    ]);
    assert!(!o.success(), "{o}");
    assert!(o.stderr.contains("no such session"), "{o}");
    assert_eq!(lab.connections().len(), 1);

    // Terminate alice: her session goes at once, and her client is told to stop (HALT).
    let out = cli_ok(&[
        "connections",
        "terminate",
        "--config",
        &lab.config_arg(),
        "--user",
        "alice",
    ]);
    assert!(out.contains(&id.to_string()), "{out}");
    let gone = poll(Duration::from_secs(3), || {
        lab.connections().is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "session still listed: {:#?}",
        lab.connections()
    );
    // No more traffic through the old session.
    assert!(
        !ping(lab.client_ns(0), SERVER, 1, Duration::from_secs(1)),
        "a terminated session still passes traffic"
    );
    // The flow log (allowed_flows = true) has alice's ping flow, started with the rule that
    // allowed it and ended with its counters once the session was cut (scanned every second).
    let flow = |event: &'static str| {
        poll(Duration::from_secs(8), || {
            let log = std::fs::read_to_string(lab.dir.path().join("flows.log")).unwrap_or_default();
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == event && v["user"] == "alice" && v["protocol"] == "icmp")
        })
        .unwrap_or_else(|| panic!("no {event} record for alice's ping in the flow log"))
    };
    let start = flow("flow-start");
    assert_eq!(start["dst"], SERVER.to_string(), "{start}");
    assert!(
        start["deciding-rule"]
            .as_str()
            .is_some_and(|r| r.starts_with("authorization") && r.contains("eng")),
        "{start}"
    );
    let end = flow("flow-end");
    assert!(end["packets-out"].as_u64() >= Some(1), "{end}");
    assert!(
        poll(Duration::from_secs(3), || client
            .log()
            .contains("Halt command was pushed by server")
            .then_some(()))
        .is_some(),
        "the terminated client was not told to stop:\n{}",
        client.log()
    );
    eprintln!("done after {:?}", t0.elapsed());
}
