//! Revocation, SIGTERM, the client-connect hook and restarts with kept maps.
use super::*;

/// `portcullis pki revoke` → the running agent picks up the CRL within its 5 s check and
/// refuses new connections of the revoked user, while others still connect.
#[test]
fn revoked_user_cannot_reconnect() {
    require_root!();
    let t0 = Instant::now();
    let lab = AgentLab::new(2, &["alice", "bob"], ENG_ALLOWED);
    // Before: bob is connected.
    let bob = lab.connect(1, "bob");
    assert!(lab
        .connections()
        .iter()
        .any(|c| c["user"].as_str() == Some("bob")));

    let reloads = lab.agent().log_count("TLS configuration reloaded");
    let out = lab.pki.revoke("bob");
    assert!(out.contains("revoked"), "{out}");
    let revoked_at = Instant::now();
    let picked = poll(Duration::from_secs(4), || {
        (lab.agent().log_count("TLS configuration reloaded") > reloads).then_some(())
    });
    assert!(
        picked.is_some(),
        "the agent did not reload the CRL within 4 s:\n{}",
        lab.agent().log_tail(30)
    );
    eprintln!("CRL picked up {:?} after the revoke", revoked_at.elapsed());
    // The live session is cut at the reload, and the client is told to stop.
    let cut = poll(Duration::from_secs(4), || {
        (!lab
            .connections()
            .iter()
            .any(|c| c["user"].as_str() == Some("bob")))
        .then_some(())
    });
    assert!(cut.is_some(), "bob's live session survived the revocation");
    eprintln!(
        "live session cut {:?} after the revoke",
        revoked_at.elapsed()
    );
    assert!(
        poll(Duration::from_secs(3), || bob
            .log()
            .contains("Halt command was pushed by server")
            .then_some(()))
        .is_some(),
        "bob was not told to stop:\n{}",
        bob.log()
    );
    bob.proc.stop();
    drop(bob);

    let start = Instant::now();
    let bob = lab.start_client(1, "bob");
    let alice = lab.start_client(0, "alice");
    if let Err(e) = alice.wait_connected(Duration::from_secs(20)) {
        panic!("alice does not connect after bob's revocation: {e}");
    }
    let left = REFUSED.saturating_sub(start.elapsed());
    assert!(
        !bob.proc.wait_log(COMPLETED, left),
        "revoked bob connected:\n{}",
        bob.log()
    );
    assert!(!bob.log().contains(COMPLETED));
    // Refused for the right reason, on both sides.
    assert!(
        lab.agent().log().contains("client certificate is revoked"),
        "{}",
        lab.agent().log_tail(20)
    );
    assert!(
        bob.log().contains("certificate revoked"),
        "bob was not told why:\n{}",
        bob.log()
    );
    let users: Vec<String> = lab
        .connections()
        .iter()
        .filter_map(|c| c["user"].as_str().map(str::to_owned))
        .collect();
    assert!(users.contains(&"alice".to_owned()), "{users:?}");
    assert!(!users.contains(&"bob".to_owned()), "{users:?}");
    eprintln!("done after {:?}", t0.elapsed());
}

/// SIGTERM: the agent tells its clients to reconnect, exits 0 within a few seconds and leaves
/// nothing behind: no pins, no admin socket, no TAP, no XDP on the target interface.
#[test]
fn sigterm_cleans_up() {
    require_root!();
    let mut lab = AgentLab::new(1, &["alice"], ENG_ALLOWED);
    let client = lab.connect(0, "alice");
    assert!(ping(lab.client_ns(0), SERVER, 5, Duration::from_secs(5)));
    let tap_exists =
        |lab: &AgentLab| tests::sh_ok(&["ip", "-n", &lab.gw.name, "link", "show", "dev", TAP]);
    let xdp_on_target = |lab: &AgentLab| {
        let out = lab.gw.ip(&["link", "show", "dev", GW_IF]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    assert!(
        lab.pin_dir().is_dir(),
        "no pins at {}",
        lab.pin_dir().display()
    );
    assert!(lab.socket.exists());
    assert!(tap_exists(&lab), "no TAP {TAP}");
    assert!(xdp_on_target(&lab), "no XDP program on {GW_IF}");

    // An admin client that connects and says nothing must not hold up the shutdown (nor
    // anything else the agent does).
    let idle = std::os::unix::net::UnixStream::connect(&lab.socket).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    let st = lab.agent().status();
    assert_eq!(st["sessions"], 1, "{st}");

    let agent = lab.agent.take().expect("agent");
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let st = agent.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    let log = agent.log();
    let st = st.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{log}"));
    eprintln!("exited {st:?} after {took:?}");
    assert!(st.success(), "exit status {st:?}:\n{log}");
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    drop(idle);
    assert!(
        !lab.pin_dir().exists(),
        "pins left at {}",
        lab.pin_dir().display()
    );
    assert!(!lab.socket.exists(), "admin socket left behind");
    assert!(!tap_exists(&lab), "TAP {TAP} left behind");
    assert!(!xdp_on_target(&lab), "XDP still attached to {GW_IF}");
    // The client was told to reconnect rather than left to time out.
    assert!(
        client.proc.wait_log(
            "Connection reset command was pushed by server",
            Duration::from_secs(5)
        ),
        "the client was not told:\n{}",
        client.log()
    );
}

/// The client-connect hook decides per connection (AWS's client-connect handler): alice is
/// allowed, bob is refused with the hook's message, which his client shows.
#[test]
fn client_connect_hook_decides() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let dir = tests::openvpn::TempDir::new("hook");
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\nin=$(cat)\ncase \"$in\" in\n  *'\"common-name\":\"bob\"'*) echo '{\"allow\":false,\"error-msg-on-denied-connection\":\"bob is on leave\"}';;\n  *) echo '{\"allow\":true}';;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = format!("client_connect = \"{}\"\n{ENG_ALLOWED}", hook.display());
    let lab = AgentLab::new(2, &["alice", "bob"], &policy);
    let _alice = lab.connect(0, "alice");
    let bob = lab.start_client(1, "bob");
    assert!(
        poll(Duration::from_secs(10), || bob
            .log()
            .contains("AUTH_FAILED")
            .then_some(()))
        .is_some(),
        "bob was not refused:\n{}",
        bob.log()
    );
    assert!(bob.log().contains("bob is on leave"), "{}", bob.log());
    assert!(!bob.log().contains(COMPLETED));
    // Bob's refused session lingers a few seconds (for AUTH_FAILED to be acked), never
    // established.
    let users: Vec<String> = lab
        .connections()
        .iter()
        .filter(|c| c["established"] == true)
        .filter_map(|c| c["user"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(users, vec!["alice".to_owned()]);
}

/// `portcullis run --keep-maps`, restarted: the pinned maps (policy, sessions, conntrack and
/// SNAT) outlive the process, the client reconnects by itself to the same address, and a TCP
/// connection opened before the restart, translated by the data path, carries on. The time to
/// full service is measured from the stop to the first probe datagram through again.
#[test]
fn restart_with_kept_maps_keeps_translated_flows() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    require_root!();
    let mut lab = AgentLab::new_with(1, &["alice"], ENG_ALLOWED, &["--keep-maps"]);
    let client = lab.connect(0, "alice");
    let addr = tunnel_addr(lab.client_ns(0)).expect("tunnel address");

    // A TCP echo server in the private network that reports each peer it accepts.
    let (peer_tx, peer_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let net = lab.net.name.clone();
    let listener = tests::clients::run_in_ns(&net, || {
        TcpListener::bind((SERVER, 7000)).expect("bind the echo server")
    });
    let server = std::thread::spawn(move || {
        let Ok((mut s, peer)) = listener.accept() else {
            return;
        };
        let _ = peer_tx.send(peer);
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let mut buf = [0u8; 256];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let cns = lab.client_ns(0).name.clone();
    let mut conn = tests::clients::run_in_ns(&cns, || {
        TcpStream::connect_timeout(&(SERVER, 7000).into(), Duration::from_secs(5))
            .expect("connect through the tunnel")
    });
    conn.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let mut echo = |msg: &[u8]| -> Result<(), String> {
        conn.write_all(msg).map_err(|e| e.to_string())?;
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).map_err(|e| e.to_string())?;
        (got == msg).then_some(()).ok_or("wrong echo".into())
    };
    echo(b"before the restart").expect("echo before the restart");
    let peer = peer_rx
        .recv_timeout(Duration::from_secs(2))
        .expect("the server saw the connection");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::from(tests::gateway::GW_NET_ADDR),
        "the flow is not translated by the data path"
    );

    let sink = Sink::start(&lab.net, &[STREAM_A.port()], 1);
    let sender = Sender::start(
        lab.client_ns(0),
        &[STREAM_A],
        Duration::from_millis(2),
        Duration::from_secs(60),
    );
    let flowing = poll(Duration::from_secs(5), || {
        (sink.snapshot()[0].packets.len() > 50).then_some(())
    });
    assert!(flowing.is_some(), "the probe does not get through");

    let stop_ns = mono_ns();
    let stopped_at = lab.restart_agent();
    let agent_up = stopped_at.elapsed();
    assert!(
        client
            .proc
            .wait_log_count(COMPLETED, 2, Duration::from_secs(30)),
        "the client did not reconnect by itself:\n{}",
        client.log()
    );
    let reconnected = stopped_at.elapsed();
    assert!(
        client
            .log()
            .contains("Connection reset command was pushed by server"),
        "{}",
        client.log()
    );
    assert_eq!(
        tunnel_addr(lab.client_ns(0)),
        Some(addr),
        "the client came back with another address"
    );
    // The translated TCP flow from before the restart still works, same connection.
    echo(b"after the restart").unwrap_or_else(|e| {
        panic!(
            "the pre-restart TCP flow broke: {e}\nagent log:\n{}",
            lab.agent().log_tail(30)
        )
    });
    // Probes through again after the restart (the old agent serves until it exits).
    let back = poll(Duration::from_secs(10), || {
        let r = &sink.snapshot()[0];
        r.longest_gap_after(stop_ns)
            .and_then(|(_, end)| (r.count_between(end, u64::MAX) > 20).then_some(()))
    });
    assert!(
        back.is_some(),
        "the probe does not get through after the restart"
    );
    let sent = sender.stop();
    std::thread::sleep(Duration::from_millis(300));
    let got = sink.stop();
    let (gap_from, gap_to) = got[0]
        .longest_gap_after(stop_ns)
        .expect("probes after the stop");
    let lost = sent.lost_between(0, &got[0], stop_ns, u64::MAX);
    assert!(
        lab.agent().log().contains("session back after a restart"),
        "{}",
        lab.agent().log_tail(30)
    );
    eprintln!(
        "restart with kept maps: new agent answering after {agent_up:?}, client reconnected \
         after {reconnected:?}; probes: none through from {:.0} ms to {:.0} ms after the stop \
         ({lost} of {} lost)",
        gap_from.saturating_sub(stop_ns) as f64 / 1e6,
        (gap_to - stop_ns) as f64 / 1e6,
        sent.streams[0].len()
    );
    drop(conn);
    let _ = server.join();
    // A clean stop without --keep-maps afterwards is not this test's business; the lab's drop
    // removes the pins either way.
}

/// Maps pinned by an agent of another layout (an upgrade that changed a key or a value) are
/// refused with `--keep-maps`, naming the map, both layouts and the way out, instead of being
/// adopted and misread (aya adopts a pin by name without comparing its definition).
#[test]
fn kept_maps_of_another_layout_are_refused_by_name() {
    require_root!();
    let mut lab = AgentLab::new_with(1, &["alice"], ENG_ALLOWED, &["--keep-maps"]);
    let old = lab.agent.take().expect("the agent runs");
    let st = old.stop();
    assert!(st.is_some_and(|s| s.success()), "{}", old.log_tail(20));
    // The conntrack map as an agent with 40-byte flow keys and 112-byte entries pinned it.
    let pin = lab.pin_dir().join("conntrack");
    std::fs::remove_file(&pin).expect("the kept conntrack pin");
    let o = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type", "hash", "key", "40", "value", "112", "entries", "1024",
        ])
        .args(["name", "conntrack"])
        .output()
        .expect("bpftool");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = lab.dir.path().join("agent-layout.log");
    let agent = tests::agent::Agent::start_with(
        &lab.gw,
        &lab.config,
        &lab.pins.0,
        &lab.socket,
        &log,
        &["--keep-maps".to_owned()],
    );
    let st = agent.wait_exit(Duration::from_secs(30));
    let text = agent.log();
    assert!(
        st.is_some_and(|s| !s.success()),
        "the agent adopted maps of another layout:\n{text}"
    );
    assert!(
        text.contains(
            "have another layout than this agent's: conntrack (pinned key/value 40/112 bytes"
        ) && text.contains("start without --keep-maps"),
        "{text}"
    );
}
