//! TCP listeners: one reader and one writer task per connection, 16-bit length framing.
//! Data packets are opened right in the reader (as a worker would); control packets go to
//! the control thread.
//!
//! A TCP connection costs memory before anyone is authenticated, so connections are capped in
//! total and per source address, closed when their session has not connected within the
//! handshake timeout or when they stay silent, and closed when their session ends: one
//! connection carries at most one session.
use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::tap::to_tap;
use super::{Ctl, TunnelStats, BUF, HEADROOM};
use crate::openvpn::packet::{encode_frame, StreamDecoder, MAX_TCP_FRAME_LEN};
use crate::openvpn::peer::{DataVerdict, Link, PeerTable};
use crate::openvpn::server::ServerSettings;

/// Bounds on TCP connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    /// Open connections, all sources together.
    pub max_connections: usize,
    /// Open connections from one source address (clients behind one NAT share it).
    pub per_source: usize,
    /// A connection whose session is not connected by then is closed.
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed (connected clients ping every
    /// few seconds, and their session ends long before on its own ping timeout).
    pub idle_timeout: Duration,
}

impl TcpLimits {
    /// Room for every session on TCP plus a margin for connections still in their handshake;
    /// the timeouts of the server's settings.
    pub fn for_settings(s: &ServerSettings) -> Self {
        Self {
            max_connections: s.max_sessions + s.max_sessions / 4 + 16,
            per_source: 64,
            handshake_timeout: s.tcp_handshake_timeout,
            idle_timeout: s.tcp_idle_timeout,
        }
    }
}

/// One live connection, as the workers and the control thread reach it.
struct Conn {
    frames: mpsc::Sender<Vec<u8>>,
    close: Arc<Notify>,
    connected: Arc<AtomicBool>,
}

/// The live TCP connections, and how many each source holds.
#[derive(Default)]
pub(crate) struct TcpConns {
    conns: RwLock<HashMap<u64, Conn>>,
    /// (all connections, connections per source)
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection's place under the limits, given back when its task ends, however it ends.
struct Held<'a> {
    conns: &'a TcpConns,
    source: IpAddr,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.conns.release(self.source);
    }
}

impl TcpConns {
    /// Takes a place for a new connection from `source`; false over a limit.
    fn admit(&self, source: IpAddr, limits: &TcpLimits) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let from_source = held.1.get(&source).copied().unwrap_or(0);
        if held.0 >= limits.max_connections || from_source >= limits.per_source {
            return false;
        }
        held.0 += 1;
        held.1.insert(source, from_source + 1);
        true
    }

    fn release(&self, source: IpAddr) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.0 = held.0.saturating_sub(1);
        if let Some(n) = held.1.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&source);
            }
        }
    }

    /// Frames `packet` and queues it on connection `conn` (dropped when its queue is full,
    /// as a UDP datagram would be).
    pub(crate) fn send(&self, conn: u64, packet: &[u8]) {
        let mut framed = vec![0u8; packet.len() + 2];
        if encode_frame(packet, &mut framed).is_err() {
            return;
        }
        let frames = self
            .conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conn)
            .map(|c| c.frames.clone());
        if let Some(f) = frames {
            let _ = f.try_send(framed);
        }
    }

    /// The session on `conn` connected: the handshake timeout no longer applies.
    pub(crate) fn connected(&self, conn: u64) {
        if let Some(c) = self
            .conns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&conn)
        {
            c.connected.store(true, Ordering::Relaxed);
        }
    }

    /// Closes `conn` once what is queued for it is written (its session ended).
    pub(crate) fn close(&self, conn: u64) {
        if let Some(c) = self
            .conns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn)
        {
            c.close.notify_one();
        }
    }

    pub(crate) fn close_all(&self) {
        let all: Vec<Conn> = self
            .conns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in all {
            c.close.notify_one();
        }
    }
}

/// What every connection task of a listener shares.
pub(super) struct Listener {
    pub(super) next_conn: Arc<AtomicU64>,
    pub(super) ctl: mpsc::Sender<Ctl>,
    pub(super) conns: Arc<TcpConns>,
    pub(super) limits: TcpLimits,
    pub(super) peers: Arc<PeerTable>,
    pub(super) tap: File,
    pub(super) tap_mac: [u8; 6],
    pub(super) stats: Arc<TunnelStats>,
}

pub(super) async fn accept_loop(l: tokio::net::TcpListener, s: Arc<Listener>) {
    loop {
        let (stream, addr) = match l.accept().await {
            Ok(a) => a,
            // Out of descriptors or memory: let connections end before accepting more.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !s.conns.admit(addr.ip(), &s.limits) {
            s.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = stream.set_nodelay(true);
        s.stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(stream, addr, s.clone()));
    }
}

async fn connection(stream: tokio::net::TcpStream, addr: std::net::SocketAddr, s: Arc<Listener>) {
    // Admitted in the accept loop.
    let _held = Held {
        conns: &s.conns,
        source: addr.ip(),
    };
    let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
    let link = Link::Tcp { conn, addr };
    let (mut rd, mut wr) = stream.into_split();
    let (frames, mut queued) = mpsc::channel::<Vec<u8>>(1024);
    let close = Arc::new(Notify::new());
    let connected = Arc::new(AtomicBool::new(false));
    s.conns
        .conns
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            conn,
            Conn {
                frames,
                close: close.clone(),
                connected: connected.clone(),
            },
        );
    // Ends when the connection is removed from the table (its sender dropped) after writing
    // what was queued, which closes the write side.
    tokio::spawn(async move {
        while let Some(b) = queued.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let Ok(mut tap) = s.tap.try_clone() else {
        s.conns.close(conn);
        return;
    };
    let handshake_deadline = Instant::now() + s.limits.handshake_timeout;
    let mut dec = StreamDecoder::new(MAX_TCP_FRAME_LEN);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pkt = vec![0u8; BUF + HEADROOM];
    'conn: loop {
        let mut deadline = Instant::now() + s.limits.idle_timeout;
        if !connected.load(Ordering::Relaxed) {
            deadline = deadline.min(handshake_deadline);
        }
        let n = tokio::select! {
            _ = close.notified() => break,
            r = tokio::time::timeout_at(deadline, rd.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => {
                    s.stats.tcp_timed_out.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            },
        };
        let mut off = 0;
        while off < n {
            match dec.feed(&buf[off..n]) {
                Ok(used) => off += used,
                Err(_) => break 'conn,
            }
            loop {
                let p = match dec.next_packet() {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(_) => break 'conn,
                };
                let op = p.first().map_or(0, |b| b >> 3);
                if op == 6 || op == 9 {
                    if p.len() > BUF {
                        continue;
                    }
                    let len = p.len();
                    // The decrypted packet needs room for an Ethernet header in front.
                    pkt[..len].copy_from_slice(p);
                    let (v, _) = s
                        .peers
                        .open(link, &mut pkt[..len], std::time::Instant::now());
                    match v {
                        DataVerdict::Tunnel {
                            range,
                            peer_id,
                            addr,
                        } => to_tap(
                            &mut tap,
                            &mut pkt,
                            range,
                            (addr, peer_id),
                            s.tap_mac,
                            &s.stats,
                        ),
                        DataVerdict::Exit { peer_id, session } => {
                            let _ = s.ctl.send(Ctl::Exit(peer_id, session)).await;
                        }
                        DataVerdict::Consumed | DataVerdict::Dropped(_) => {}
                    }
                } else if s.ctl.send(Ctl::Packet(link, p.to_vec())).await.is_err() {
                    break 'conn;
                }
            }
        }
    }
    s.conns.close(conn);
    let _ = s.ctl.send(Ctl::TcpClosed(link)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_source: usize) -> TcpLimits {
        TcpLimits {
            max_connections: max,
            per_source,
            ..TcpLimits::for_settings(&ServerSettings {
                max_sessions: 16,
                ..ServerSettings::default()
            })
        }
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let conns = TcpConns::default();
        let l = limits(100, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(conns.admit(a, &l));
        }
        assert!(!conns.admit(a, &l), "a fourth from the same source");
        assert!(conns.admit(b, &l), "another source still gets in");
        drop(Held {
            conns: &conns,
            source: a,
        });
        assert!(
            conns.admit(a, &l),
            "a place comes back when a connection ends"
        );
    }

    #[test]
    fn the_total_is_capped_and_released() {
        let conns = TcpConns::default();
        let l = limits(4, 4);
        let sources: Vec<IpAddr> = (1..=4u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();
        for a in &sources {
            assert!(conns.admit(*a, &l));
        }
        assert!(!conns.admit(IpAddr::from([192, 0, 2, 9]), &l));
        for a in &sources {
            conns.release(*a);
        }
        let held = conns.held.lock().unwrap();
        assert_eq!(held.0, 0);
        assert!(held.1.is_empty(), "no entry left per source");
    }
}
