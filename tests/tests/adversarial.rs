//! Attacks on the tunnel with stock clients, in namespaces: a client forging another
//! client's address, and an unauthenticated flood (malformed and spoofed datagrams, one
//! source's handshake flood, a TCP connection flood) while a real client still connects;
//! duplicated and replayed control packets ([`control`]), a float onto another session's
//! address ([`float`]), TCP connections that never finish a handshake or go silent
//! ([`tcp`]); another local user against the admin socket ([`admin`]).
//!
//! Every lab is built by the test and removed on drop; every loop is bounded in time.
#[path = "adversarial/admin.rs"]
mod admin;
#[path = "adversarial/control.rs"]
mod control;
#[path = "adversarial/float.rs"]
mod float;
#[path = "adversarial/tcp.rs"]
mod tcp;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::openvpn::server::ServerEvent;
use tests::clients::{inet_checksum, run_in_ns, UdpServer};
use tests::gateway::{GATEWAY, GW_NET_ADDR, SERVER};
use tests::openvpn::{ping, ClientConfig, OvpnClient, Proto, OVPN_PORT, UNDERLAY_GW};
use tests::require_root;
use tests::tunnel::{TunnelLab, TunnelOpts};

/// Upper bound for a client to connect (the host is shared with other builds).
const CONNECT: Duration = Duration::from_secs(30);

/// Start a client as `cn` in underlay namespace `i` and wait for the server's `Connected`
/// event; its tunnel address.
fn connect(lab: &TunnelLab, i: usize, cfg: &ClientConfig, cn: &str) -> (OvpnClient, Ipv4Addr) {
    let mark = lab.mark();
    let client = OvpnClient::start(&lab.underlay.client(i).ns, cfg);
    let up = client
        .wait_connected(CONNECT)
        .unwrap_or_else(|e| panic!("{cn} does not connect: {e}\n{}", client.log()));
    lab.wait_event_since(
        mark,
        Duration::from_secs(5),
        |ev| matches!(ev, ServerEvent::Connected { common_name, .. } if common_name == cn),
    )
    .unwrap_or_else(|| panic!("no Connected event for {cn}"));
    (client, up.tun_addr)
}

/// An IPv4/UDP datagram from `src` to `dst`, written as is (`IP_HDRINCL`) by a raw socket.
fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let c = inet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    // UDP checksum 0: none.
    p[28..].copy_from_slice(payload);
    p
}

/// A raw IPv4 socket (`IPPROTO_RAW`: the caller writes the whole header) in the current
/// namespace.
fn raw_socket() -> OwnedFd {
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn send_raw(fd: &OwnedFd, pkt: &[u8]) -> bool {
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    // SAFETY: all-zero sockaddr_in is valid; filled below.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as u16;
    sin.sin_addr.s_addr = u32::from(dst).to_be();
    // SAFETY: sendto with a live buffer and a sockaddr_in of its size.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    n == pkt.len() as isize
}

/// Loads `ruleset` into namespace `ns`'s nftables (its tables go with the namespace).
fn nft(ns: &tests::NetNs, ruleset: &str) {
    let file = std::env::temp_dir().join(tests::unique("nf"));
    std::fs::write(&file, ruleset).unwrap();
    // Panics with nft's error when the ruleset does not load.
    ns.exec(&["nft", "-f", &file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
}

/// The packets counted by the rules of `chain` (`family table chain`) in `ns`, summed.
fn nft_packets(ns: &tests::NetNs, chain: &[&str]) -> u64 {
    let mut args = vec!["nft", "list", "chain"];
    args.extend_from_slice(chain);
    let out = ns.exec(&args);
    String::from_utf8_lossy(&out.stdout)
        .split("packets ")
        .skip(1)
        .filter_map(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Every `Connected` (`true`) and `Disconnected` (`false`) event since `mark`, with its peer
/// id.
fn comings_and_goings(lab: &TunnelLab, mark: usize) -> Vec<(bool, u32)> {
    lab.seen_since(mark)
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Connected { peer_id, .. } => Some((true, *peer_id)),
            ServerEvent::Disconnected { peer_id, .. } => Some((false, *peer_id)),
            _ => None,
        })
        .collect()
}

/// This process's resident memory (the tunnel runs in it), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn a_client_cannot_send_as_another_client() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts {
        clients: 2,
        ..TunnelOpts::default()
    });
    let (_alice, alice_addr) = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Udp),
        "alice",
    );
    let (_bob, bob_addr) = connect(
        &lab,
        1,
        &ClientConfig::new(&lab.pki, "bob", Proto::Udp),
        "bob",
    );
    let server = UdpServer::start(&lab.gw, SocketAddrV4::new(SERVER, 7100), false);
    let dst = SocketAddrV4::new(SERVER, 7100);
    // From alice's namespace, through her tunnel: her own address, then bob's, the
    // gateway's and an unassigned pool address.
    let forged = [
        (alice_addr, &b"genuine"[..]),
        (bob_addr, b"as bob"),
        (Ipv4Addr::new(10, 100, 0, 1), b"as the gateway"),
        (Ipv4Addr::new(10, 100, 0, 200), b"as nobody"),
    ];
    let ns = lab.underlay.client(0).ns.name.clone();
    run_in_ns(&ns, move || {
        let fd = raw_socket();
        for _ in 0..5 {
            for (src, payload) in forged {
                assert!(send_raw(
                    &fd,
                    &ipv4_udp(SocketAddrV4::new(src, 7200), dst, payload)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(
        server.wait_count(1, Duration::from_secs(5)),
        "alice's own packets arrive"
    );
    std::thread::sleep(Duration::from_millis(500));
    let got: Vec<String> = server
        .received()
        .iter()
        .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
        .collect();
    assert!(
        got.iter().all(|p| p == "genuine"),
        "forged sources reached the private network: {got:?}"
    );
    let spoofed = lab.tunnel().stats.data_spoofed.load(Ordering::Relaxed);
    assert!(
        spoofed >= 15,
        "the worker counted the forged packets: {spoofed}"
    );
}

/// Services of the gateway host itself (stand-ins for SSH and the metrics listener on its
/// target-network address, a closed port of the pool gateway address)
/// are not reachable from a client over UDP or TCP, with TTL 1 (which once went to the host
/// before authorization) or any other TTL: nothing arrives and nothing answers.
#[test]
fn a_client_cannot_reach_the_gateways_own_services() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts {
        clients: 1,
        ..TunnelOpts::default()
    });
    let (_alice, alice_addr) = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Udp),
        "alice",
    );
    // The host's own sockets, bound inside the gateway's namespace (the endpoint runs there
    // on its own thread; a socket stays in the namespace it was made in).
    let local = [
        SocketAddrV4::new(GW_NET_ADDR, 22),
        SocketAddrV4::new(GW_NET_ADDR, 9100),
        SocketAddrV4::new(GATEWAY, 7302),
    ];
    let (host, host_tcp): (Vec<UdpSocket>, Vec<std::net::TcpListener>) = lab.gw.gw.run(move || {
        local
            .iter()
            .map(|a| {
                let s =
                    UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a} on the gateway: {e}"));
                s.set_nonblocking(true).unwrap();
                let l = std::net::TcpListener::bind(a)
                    .unwrap_or_else(|e| panic!("listen on {a} on the gateway: {e}"));
                l.set_nonblocking(true).unwrap();
                (s, l)
            })
            .unzip()
    });
    let server = UdpServer::start(&lab.gw, SocketAddrV4::new(SERVER, 7100), false);
    let target_tcp = lab
        .gw
        .in_net(|| std::net::TcpListener::bind(SocketAddrV4::new(SERVER, 7101)))
        .expect("listen on the target network");
    let ns = lab.underlay.client(0).ns.name.clone();
    let answered = run_in_ns(&ns, move || {
        let mut answered = Vec::new();
        for ttl in [1, 64] {
            for dst in local {
                // Connected, so an ICMP error (port unreachable, time exceeded) would show
                // as an error on recv: any answer at all is a failure.
                let s = UdpSocket::bind(SocketAddrV4::new(alice_addr, 0)).unwrap();
                s.set_ttl(ttl).unwrap();
                s.connect(dst).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                for _ in 0..3 {
                    let _ = s.send(format!("ttl {ttl} to {dst}").as_bytes());
                }
                let mut buf = [0u8; 64];
                match s.recv(&mut buf) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    other => answered.push(format!("ttl {ttl} to {dst}: {other:?}")),
                }
            }
        }
        // TCP: neither a connection nor a reset (a reset would show the port exists).
        for ttl in [1, 64] {
            for dst in local {
                match tcp_connect_with_ttl(alice_addr, dst, ttl, Duration::from_millis(600)) {
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    other => answered.push(format!("tcp ttl {ttl} to {dst}: {other:?}")),
                }
            }
        }
        // The same client still reaches the target network, by TCP too (so the probe above
        // can tell a connection when there is one).
        let to_target = SocketAddrV4::new(SERVER, 7101);
        if let Err(e) = tcp_connect_with_ttl(alice_addr, to_target, 64, Duration::from_secs(3)) {
            answered.push(format!("tcp to the target network {to_target} failed: {e}"));
        }
        let s = UdpSocket::bind(SocketAddrV4::new(alice_addr, 0)).unwrap();
        s.send_to(b"genuine", SocketAddrV4::new(SERVER, 7100))
            .unwrap();
        answered
    });
    assert!(
        answered.is_empty(),
        "the gateway answered, or the target did not: {answered:?}"
    );
    drop(target_tcp);
    assert!(
        server.wait_count(1, Duration::from_secs(5)),
        "the client's own traffic to the target network arrives"
    );
    for (l, a) in host_tcp.iter().zip(local) {
        if let Ok((_, from)) = l.accept() {
            panic!("{from} opened a TCP connection to the gateway's own {a}");
        }
    }
    let mut buf = [0u8; 128];
    for (s, a) in host.iter().zip(local) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            panic!(
                "{from} reached the gateway's own {a}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

/// A TCP connection from `src` to `dst` whose packets carry TTL `ttl` (set before the SYN,
/// which `std` cannot do): `TimedOut` when nothing answered within `wait`.
fn tcp_connect_with_ttl(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    ttl: u32,
    wait: Duration,
) -> std::io::Result<TcpStream> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let last = || Err(std::io::Error::last_os_error());
    // SAFETY: plain socket calls on a descriptor this function owns (OwnedFd closes it).
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return last();
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let ttl = ttl as libc::c_int;
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_TTL,
            (&ttl as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return last();
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let from = sockaddr(SocketAddrV4::new(src, 0));
        if libc::bind(
            fd.as_raw_fd(),
            (&from as *const libc::sockaddr_in).cast(),
            len,
        ) != 0
        {
            return last();
        }
        let to = sockaddr(dst);
        if libc::connect(
            fd.as_raw_fd(),
            (&to as *const libc::sockaddr_in).cast(),
            len,
        ) != 0
            && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS)
        {
            return last();
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        match libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) {
            0 => return Err(std::io::ErrorKind::TimedOut.into()),
            n if n < 0 => return last(),
            _ => {}
        }
        let stream = TcpStream::from(fd);
        match stream.take_error()? {
            Some(e) => Err(e),
            None => Ok(stream),
        }
    }
}

/// A P_CONTROL_HARD_RESET_CLIENT_V2 without tls-crypt: opcode 7 key 0, a session id, no
/// acks, message id 0.
fn plain_reset(sid: u64) -> Vec<u8> {
    let mut p = vec![7 << 3];
    p.extend_from_slice(&(sid | 1).to_be_bytes());
    p.push(0);
    p.extend_from_slice(&0u32.to_be_bytes());
    p
}

#[test]
fn a_flood_from_one_host_does_not_keep_a_real_client_out() {
    require_root!();
    // Without tls-crypt, so the flood's resets reach the reset limiter (with it, anyone who
    // holds the shared profile can do the same).
    let lab = TunnelLab::new(TunnelOpts {
        clients: 3,
        tls_crypt: false,
        ..TunnelOpts::default()
    });
    let gw = SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT);
    let attacker = lab.underlay.client(0).addr;
    let ns = lab.underlay.client(0).ns.name.clone();
    let rss_before = rss();
    let stop = Arc::new(AtomicBool::new(false));
    // UDP, as fast as one thread can: resets from the attacker's own address (one source),
    // garbage, and resets from spoofed addresses; bounded by `stop` and a 90 s cap.
    let udp_flood = {
        let stop = stop.clone();
        let ns = ns.clone();
        std::thread::spawn(move || {
            run_in_ns(&ns, move || {
                let s = UdpSocket::bind((attacker, 0)).unwrap();
                let raw = raw_socket();
                let end = Instant::now() + Duration::from_secs(90);
                let mut sent = 0u64;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    for _ in 0..200 {
                        i += 1;
                        let _ = s.send_to(&plain_reset(i), gw);
                        let _ = s.send_to(&i.to_be_bytes()[..(i % 8) as usize], gw);
                        let spoofed = SocketAddrV4::new(
                            Ipv4Addr::new(192, 0, 2, 100 + (i % 100) as u8),
                            (i % 60_000) as u16 + 1024,
                        );
                        let _ = send_raw(&raw, &ipv4_udp(spoofed, gw, &plain_reset(i)));
                        sent += 3;
                    }
                }
                sent
            })
        })
    };
    // TCP: as many connections as the attacker can open (bounded at 400), each sending a
    // partial frame, held open.
    let held: Vec<TcpStream> = run_in_ns(&ns, move || {
        let mut v = Vec::new();
        for _ in 0..400 {
            match TcpStream::connect_timeout(&SocketAddr::V4(gw), Duration::from_millis(500)) {
                Ok(mut s) => {
                    let _ = s.write_all(&[0x00, 0x40, 0x38]);
                    v.push(s);
                }
                Err(_) => break,
            }
        }
        v
    });
    std::thread::sleep(Duration::from_secs(2));
    // Real clients from other hosts, over UDP and over TCP.
    let start = Instant::now();
    let mut cfg = ClientConfig::new(&lab.pki, "alice", Proto::Udp);
    cfg.tls_crypt = None;
    let (udp_client, _) = connect(&lab, 1, &cfg, "alice");
    let mut cfg = ClientConfig::new(&lab.pki, "carol", Proto::Tcp);
    cfg.tls_crypt = None;
    let (tcp_client, _) = {
        let mark = lab.mark();
        let client = OvpnClient::start(&lab.underlay.client(2).ns, &cfg);
        let up = client
            .wait_connected(CONNECT)
            .unwrap_or_else(|e| panic!("carol (TCP) does not connect: {e}\n{}", client.log()));
        assert!(lab
            .wait_event_since(mark, Duration::from_secs(5), |ev| matches!(
                ev,
                ServerEvent::Connected { common_name, .. } if common_name == "carol"
            ))
            .is_some());
        (client, up.tun_addr)
    };
    let took = start.elapsed();
    for (i, c) in [(1, &udp_client), (2, &tcp_client)] {
        assert!(
            ping(
                &lab.underlay.client(i).ns,
                SERVER,
                3,
                Duration::from_secs(5)
            ),
            "traffic passes during the flood\n{}",
            c.log()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let sent = udp_flood.join().unwrap();
    let stats = &lab.tunnel().stats;
    let refused = stats.tcp_refused.load(Ordering::Relaxed);
    let accepted = stats.tcp_connections.load(Ordering::Relaxed);
    let rss_after = rss();
    eprintln!(
        "flood: {sent} datagrams, {} TCP connections held by the attacker, {accepted} accepted, \
         {refused} refused; {} datagrams received, {} control packets dropped (queue full); \
         clients connected after {took:?}; RSS {} -> {} MiB",
        held.len(),
        stats.udp_rx.load(Ordering::Relaxed),
        stats.control_queue_full.load(Ordering::Relaxed),
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        refused > 0,
        "the attacker's connections past its share are refused"
    );
    assert!(
        accepted <= 64 + 2,
        "one source holds at most its share: {accepted}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 128 << 20,
        "memory bounded: {} MiB more",
        (rss_after - rss_before) >> 20
    );
    drop(held);
}
