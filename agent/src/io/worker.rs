//! A packet worker: its UDP sockets and TAP queue, data packets decrypted into the TAP and
//! TAP frames sealed back to clients, control packets handed to the control thread.
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::udp::{from_sockaddr, Batch, SendQueue};
use super::{Ctl, TcpWriters, TunnelStats, BATCH, BUF, ETH_HLEN, HEADROOM};
use crate::openvpn::packet::encode_frame;
use crate::openvpn::peer::{DataVerdict, Link, PeerTable};

pub(super) struct WorkerCtx {
    pub(super) socks: Vec<UdpSocket>,
    pub(super) tap: File,
    pub(super) reads_tap: bool,
    pub(super) tap_mac: [u8; 6],
    pub(super) peers: Arc<PeerTable>,
    pub(super) ctl: mpsc::Sender<Ctl>,
    pub(super) tcp_writers: TcpWriters,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stats: Arc<TunnelStats>,
    pub(super) base: Instant,
}

fn send_ctl(ctl: &mpsc::Sender<Ctl>, stats: &TunnelStats, m: Ctl) {
    if ctl.try_send(m).is_err() {
        stats.control_queue_full.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes `buf[range]` (an IP packet from the client `src`) to the TAP with an Ethernet
/// header built in the bytes just before it.
pub(super) fn to_tap(
    tap: &mut File,
    buf: &mut [u8],
    range: std::ops::Range<usize>,
    tap_mac: [u8; 6],
) -> bool {
    let ip = &buf[range.clone()];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return false;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let start = range.start - ETH_HLEN;
    let eth = &mut buf[start..range.start];
    eth[0..6].copy_from_slice(&tap_mac);
    eth[6..12].copy_from_slice(&[0x02, 0x50, src[0], src[1], src[2], src[3]]);
    eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    tap.write(&buf[start..range.end]).is_ok()
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
                let f = &out[HEADROOM - ETH_HLEN..HEADROOM - ETH_HLEN + n];
                if f.len() < ETH_HLEN + 20 || f[12..14] != [0x08, 0x00] {
                    continue;
                }
                let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
                let Some(peer) = w.peers.by_addr(dst) else {
                    w.stats.tap_no_peer.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let ip_len = n - ETH_HLEN;
                let Ok((range, link)) = peer.seal(out, HEADROOM, ip_len, now) else {
                    continue;
                };
                match link {
                    Link::Udp { listener, addr } => {
                        tx.meta.push((listener as usize, range, addr));
                        if tx.full() {
                            tx.flush(&w.socks, &w.stats);
                        }
                    }
                    Link::Tcp { conn, .. } => {
                        let mut framed = vec![0u8; range.len() + 2];
                        if encode_frame(&out[range], &mut framed).is_ok() {
                            if let Some(s) = w
                                .tcp_writers
                                .read()
                                .ok()
                                .and_then(|m| m.get(&conn).cloned())
                            {
                                let _ = s.try_send(framed);
                            }
                        }
                    }
                }
            }
        }
        tx.flush(&w.socks, &w.stats);
    }
    let _ = w.base;
}

fn data_in(w: &mut WorkerCtx, link: Link, buf: &mut [u8; BUF], len: usize, now: Instant) {
    let (v, floated) = w.peers.open(link, &mut buf[..len], now);
    if let Some(old) = floated {
        send_ctl(&w.ctl, &w.stats, Ctl::Floated(old, link));
    }
    match v {
        DataVerdict::Tunnel { range, .. } => {
            if range.start >= ETH_HLEN && to_tap(&mut w.tap, buf, range, w.tap_mac) {
                w.stats.tap_tx.fetch_add(1, Ordering::Relaxed);
            }
        }
        DataVerdict::Consumed => {}
        DataVerdict::Exit { peer_id } => send_ctl(&w.ctl, &w.stats, Ctl::Exit(peer_id)),
        DataVerdict::Dropped(crate::openvpn::peer::DropCause::UnknownPeer) => {
            w.stats.data_unknown_peer.fetch_add(1, Ordering::Relaxed);
        }
        DataVerdict::Dropped(_) => {
            w.stats.data_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
}
