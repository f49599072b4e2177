//! A packet worker: its UDP sockets and TAP queue, data packets decrypted into the TAP and
//! TAP frames sealed back to clients, control packets handed to the control thread.
use std::fs::File;
use std::io::Read;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::lifecycle::Deferred;
use super::tap::{from_tap, to_tap, NotForTunnel};
use super::tcp::TcpConns;
use super::udp::{from_sockaddr, Batch, SendQueue};
use super::{Ctl, TunnelStats, BATCH, BUF, ETH_HLEN, HEADROOM};
use crate::openvpn::peer::{DataVerdict, Link, PeerTable};

pub(super) struct WorkerCtx {
    pub(super) socks: Vec<UdpSocket>,
    pub(super) tap: File,
    pub(super) reads_tap: bool,
    pub(super) tap_mac: [u8; 6],
    pub(super) peers: Arc<PeerTable>,
    pub(super) ctl: mpsc::Sender<Ctl>,
    pub(super) tcp: Arc<TcpConns>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stats: Arc<TunnelStats>,
    pub(super) deferred: Arc<Deferred>,
    pub(super) base: Instant,
}

/// Hands a control packet to the control thread; a full channel drops it (counted): the
/// client retransmits.
fn send_ctl(ctl: &mpsc::Sender<Ctl>, stats: &TunnelStats, m: Ctl) {
    if ctl.try_send(m).is_err() {
        stats.control_queue_full.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands an `Exit` or `Floated` to the control thread; over a full channel it waits in
/// `deferred` (counted) instead of being lost.
pub(super) fn send_lifecycle(
    ctl: &mpsc::Sender<Ctl>,
    deferred: &Deferred,
    stats: &TunnelStats,
    m: Ctl,
) {
    if let Err(mpsc::error::TrySendError::Full(m)) = ctl.try_send(m) {
        stats.lifecycle_deferred.fetch_add(1, Ordering::Relaxed);
        deferred.push(m);
    }
}

pub(super) fn run(mut w: WorkerCtx) {
    let mut rx = Batch::new();
    let mut tx = SendQueue::new();
    let nsock = w.socks.len();
    // Built once: the poll set never changes while the worker runs.
    let mut fds: Vec<libc::pollfd> = w
        .socks
        .iter()
        .map(|s| s.as_raw_fd())
        .chain(std::iter::once(w.tap.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .take(nsock + usize::from(w.reads_tap))
        .collect();
    while !w.stop.load(Ordering::Relaxed) {
        for f in fds.iter_mut() {
            f.revents = 0;
        }
        // SAFETY: fds is a live array of pollfd. 100 ms bounds the stop latency.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as u64, 100) };
        if r <= 0 {
            continue;
        }
        let now = Instant::now();
        for (li, pfd) in fds.iter().enumerate().take(nsock) {
            if pfd.revents == 0 {
                continue;
            }
            // Bounded: a few batches per wake-up, then the TAP gets its turn.
            for _ in 0..8 {
                let n = rx.recv(&w.socks[li]);
                if n == 0 {
                    break;
                }
                w.stats.udp_rx.fetch_add(n as u64, Ordering::Relaxed);
                for i in 0..n {
                    let Some(addr) = from_sockaddr(&rx.addrs[i]) else {
                        continue;
                    };
                    let link = Link::Udp {
                        listener: li as u16,
                        addr,
                    };
                    let len = rx.lens[i];
                    let pkt = &mut rx.bufs[i][..len];
                    if len == 0 {
                        continue;
                    }
                    let op = pkt[0] >> 3;
                    if op == 6 || op == 9 {
                        data_in(&mut w, link, &mut rx.bufs[i], len, now);
                    } else {
                        send_ctl(&w.ctl, &w.stats, Ctl::Packet(link, pkt.to_vec()));
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
        if w.reads_tap && fds[nsock].revents != 0 {
            for _ in 0..(4 * BATCH) {
                // Read straight into the next send slot, the IP packet at HEADROOM, so it is
                // sealed in place and sent from there.
                let slot = tx.meta.len();
                let out = &mut tx.bufs[slot];
                let n = match w.tap.read(&mut out[HEADROOM - ETH_HLEN..]) {
                    Ok(n) if n > ETH_HLEN => n,
                    Ok(_) => continue,
                    Err(_) => break,
                };
                w.stats.tap_rx.fetch_add(1, Ordering::Relaxed);
                let (range, link) = match from_tap(&w.peers, out, HEADROOM, n, now) {
                    Ok(sealed) => sealed,
                    Err(NotForTunnel::NoPeer) => {
                        w.stats.tap_no_peer.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(_) => continue,
                };
                match link {
                    Link::Udp { listener, addr } => {
                        tx.meta.push((listener as usize, range, addr));
                        if tx.full() {
                            tx.flush(&w.socks, &w.stats);
                        }
                    }
                    Link::Tcp { conn, .. } => w.tcp.send(conn, &out[range]),
                }
            }
        }
        tx.flush(&w.socks, &w.stats);
    }
    let _ = w.base;
}

fn data_in(w: &mut WorkerCtx, link: Link, buf: &mut [u8; BUF], len: usize, now: Instant) {
    let (v, floated) = w.peers.open(link, &mut buf[..len], now);
    if let Some(f) = floated {
        send_lifecycle(&w.ctl, &w.deferred, &w.stats, Ctl::Floated(f));
    }
    match v {
        DataVerdict::Tunnel {
            range,
            peer_id,
            addr,
        } => to_tap(&mut w.tap, buf, range, (addr, peer_id), w.tap_mac, &w.stats),
        DataVerdict::Consumed => {}
        DataVerdict::Exit { peer_id, session } => {
            send_lifecycle(&w.ctl, &w.deferred, &w.stats, Ctl::Exit(peer_id, session))
        }
        DataVerdict::Dropped(crate::openvpn::peer::DropCause::UnknownPeer) => {
            w.stats.data_unknown_peer.fetch_add(1, Ordering::Relaxed);
        }
        DataVerdict::Dropped(_) => {
            w.stats.data_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood that fills the control channel must not lose a client's exit or float: they
    /// wait (counted) and the control thread takes them on its next turn.
    #[test]
    fn exit_and_float_survive_a_full_control_channel() {
        let (tx, mut rx) = mpsc::channel::<Ctl>(1);
        let stats = TunnelStats::default();
        let deferred = Deferred::default();
        let link = Link::Udp {
            listener: 0,
            addr: "192.0.2.1:1194".parse().unwrap(),
        };
        send_ctl(&tx, &stats, Ctl::Packet(link, vec![0; 8]));
        send_ctl(&tx, &stats, Ctl::Packet(link, vec![0; 8]));
        assert_eq!(stats.control_queue_full.load(Ordering::Relaxed), 1);
        let to = Link::Udp {
            listener: 0,
            addr: "192.0.2.1:1195".parse().unwrap(),
        };
        let f = crate::openvpn::peer::Float {
            peer_id: 3,
            session: 30,
            from: link,
            to,
        };
        send_lifecycle(&tx, &deferred, &stats, Ctl::Floated(f));
        send_lifecycle(&tx, &deferred, &stats, Ctl::Exit(3, 30));
        send_lifecycle(&tx, &deferred, &stats, Ctl::Exit(3, 30));
        assert_eq!(stats.lifecycle_deferred.load(Ordering::Relaxed), 3);
        let got = deferred.take();
        assert!(matches!(got[..], [Ctl::Floated(g), Ctl::Exit(3, 30)] if g == f));
        assert!(deferred.take().is_empty(), "taken once");
        // With room in the channel nothing waits aside.
        assert!(matches!(rx.try_recv(), Ok(Ctl::Packet(..))));
        send_lifecycle(&tx, &deferred, &stats, Ctl::Exit(4, 40));
        assert!(matches!(rx.try_recv(), Ok(Ctl::Exit(4, 40))));
        assert!(deferred.take().is_empty());
    }
}
