//! TCP connections that finish the TCP handshake but never an OpenVPN one: closed after the
//! endpoint's `tcp_handshake_timeout_secs`, and their slots are free again.
use std::io::{ErrorKind, Read};

use tests::clients::wait_until;

use super::*;

/// The lab's TCP handshake timeout (the idle timeout is longer, so this one closes them).
const HANDSHAKE: Duration = Duration::from_secs(3);
/// Connections one source may hold (`io::tcp::TcpLimits::per_source`).
const PER_SOURCE: usize = 64;

/// Whether the gateway closed `s` (EOF or reset) within `wait`.
fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // Whatever the gateway sent before closing (nothing is expected).
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// One source holds its whole share of TCP connections: silent ones, ones that sent part of
/// a frame, and one that keeps sending a frame byte by byte (never idle, never complete).
/// One more is refused at once; all of them are closed by the handshake timeout (not
/// before), and then a stock client connects over TCP from that very source.
#[test]
fn tcp_connections_without_an_openvpn_handshake_are_closed_and_freed() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts {
        clients: 1,
        tcp_timeouts: Some((HANDSHAKE.as_secs(), 60)),
        ..TunnelOpts::default()
    });
    let gw = SocketAddr::V4(SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT));
    let ns = lab.underlay.client(0).ns.name.clone();
    let stats = lab.tunnel().stats.clone();
    let (mut held, mut extra) = run_in_ns(&ns, move || {
        let held: Vec<TcpStream> = (0..PER_SOURCE)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                if i % 2 == 1 {
                    // A length prefix and one byte of a 64-byte frame.
                    s.write_all(&[0x00, 0x40, 0x38]).unwrap();
                }
                s
            })
            .collect();
        let extra = TcpStream::connect_timeout(&gw, Duration::from_secs(2)).unwrap();
        (held, extra)
    });
    let opened = Instant::now();
    assert!(
        closed(&mut extra, Duration::from_secs(2)),
        "a connection past the source's share is closed at once"
    );
    assert!(stats.tcp_refused.load(Ordering::Relaxed) >= 1);
    // Connection 0 trickles a 1500-byte frame: never idle, never a whole frame.
    let mut trickler = held[0].try_clone().unwrap();
    trickler.write_all(&[0x05, 0xdc]).unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..40 {
            if trickler.write_all(&[0x38]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    // Not before the timeout (a margin for a slow accept).
    std::thread::sleep(HANDSHAKE.saturating_sub(Duration::from_millis(1500)));
    assert_eq!(
        stats.tcp_timed_out.load(Ordering::Relaxed),
        0,
        "closed before the handshake timeout"
    );
    assert!(
        !closed(&mut held[0], Duration::from_millis(50)),
        "the trickling connection is open before the timeout"
    );
    assert!(
        wait_until(HANDSHAKE + Duration::from_secs(10), || stats
            .tcp_timed_out
            .load(Ordering::Relaxed)
            >= PER_SOURCE as u64),
        "every held connection timed out: {} of {PER_SOURCE} after {:?}",
        stats.tcp_timed_out.load(Ordering::Relaxed),
        opened.elapsed()
    );
    let took = opened.elapsed();
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed(s, Duration::from_secs(2)),
            "connection {i} is closed on the client's side too"
        );
    }
    trickle.join().unwrap();
    eprintln!("{PER_SOURCE} connections closed after {took:?} (timeout {HANDSHAKE:?})");
    // Their slots are free: the same source connects a real client over TCP.
    let mut cfg = ClientConfig::new(&lab.pki, "alice", Proto::Tcp);
    cfg.extra.push("connect-timeout 5".into());
    let (client, _) = connect(&lab, 0, &cfg, "alice");
    assert!(
        ping(
            &lab.underlay.client(0).ns,
            SERVER,
            3,
            Duration::from_secs(5)
        ),
        "the TCP client passes traffic\n{}",
        client.log()
    );
}

/// A connected TCP client that goes silent (stopped, its connection left open) loses its
/// connection after `tcp_idle_timeout_secs`, and its session ends with it, long before the
/// session's own ping timeout; while it pings, the idle timeout does not touch it.
#[test]
fn a_silent_tcp_connection_is_closed_after_the_idle_timeout() {
    require_root!();
    const IDLE: Duration = Duration::from_secs(5);
    let lab = TunnelLab::new(TunnelOpts {
        clients: 1,
        tcp_timeouts: Some((60, IDLE.as_secs())),
        // The client pings every 2 s (pushed); the session's own timeout is 2 × 60 s.
        ping: Duration::from_secs(2),
        ping_restart: Duration::from_secs(60),
        ..TunnelOpts::default()
    });
    let (client, _) = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Tcp),
        "alice",
    );
    let peer_id = lab.tunnel().sessions()[0].peer_id;
    // Twice the idle timeout with keepalives: still connected.
    let mark = lab.mark();
    std::thread::sleep(IDLE * 2);
    assert!(
        comings_and_goings(&lab, mark).is_empty(),
        "a pinging client keeps its connection: {:#?}",
        lab.seen_since(mark)
    );
    assert!(ping(
        &lab.underlay.client(0).ns,
        SERVER,
        3,
        Duration::from_secs(5)
    ));
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(client.pid() as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    let ended = lab.wait_event_since(
        mark,
        IDLE + Duration::from_secs(10),
        |e| matches!(e, ServerEvent::Disconnected { peer_id: p, .. } if *p == peer_id),
    );
    let took = stopped.elapsed();
    // SAFETY: as above; the client may go on (and reconnect) before it is dropped.
    unsafe { libc::kill(client.pid() as i32, libc::SIGCONT) };
    assert!(
        ended.is_some(),
        "the silent client's session did not end within {:?}",
        IDLE + Duration::from_secs(10)
    );
    assert!(
        lab.tunnel().stats.tcp_timed_out.load(Ordering::Relaxed) >= 1,
        "closed by the idle timeout"
    );
    eprintln!("silent TCP session ended {took:?} after the client stopped (idle {IDLE:?})");
}
