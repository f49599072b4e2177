//! TCP listeners: one reader and one writer task per connection, 16-bit length framing.
//! Data packets are opened right in the reader (as a worker would); control packets go to
//! the control thread.
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::worker::to_tap;
use super::{Ctl, TcpWriters, TunnelStats, BUF, ETH_HLEN, HEADROOM};
use crate::openvpn::packet::StreamDecoder;
use crate::openvpn::peer::{DataVerdict, Link, PeerTable};

#[allow(clippy::too_many_arguments)]
pub(super) async fn accept_loop(
    l: tokio::net::TcpListener,
    next_conn: Arc<AtomicU64>,
    ctl: mpsc::Sender<Ctl>,
    writers: TcpWriters,
    peers: Arc<PeerTable>,
    tap: File,
    tap_mac: [u8; 6],
    stats: Arc<TunnelStats>,
) {
    loop {
        let Ok((stream, addr)) = l.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.tcp_connections.fetch_add(1, Ordering::Relaxed);
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let link = Link::Tcp { conn, addr };
        let (mut rd, mut wr) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(1024);
        if let Ok(mut m) = writers.write() {
            m.insert(conn, wtx);
        }
        tokio::spawn(async move {
            while let Some(b) = wrx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let ctl = ctl.clone();
        let writers = writers.clone();
        let peers = peers.clone();
        let mut tap = tap.try_clone().expect("dup tap");
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut dec = StreamDecoder::new(crate::openvpn::packet::MAX_TCP_FRAME_LEN);
            let mut buf = vec![0u8; 16 * 1024];
            let mut pkt = vec![0u8; BUF + HEADROOM];
            'conn: loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
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
                            let (v, _) = peers.open(link, &mut pkt[..len], Instant::now());
                            if let DataVerdict::Tunnel { range, .. } = v {
                                if range.start >= ETH_HLEN
                                    && to_tap(&mut tap, &mut pkt, range, tap_mac)
                                {
                                    stats.tap_tx.fetch_add(1, Ordering::Relaxed);
                                }
                            } else if let DataVerdict::Exit { peer_id } = v {
                                let _ = ctl.send(Ctl::Exit(peer_id)).await;
                            }
                        } else if ctl.send(Ctl::Packet(link, p.to_vec())).await.is_err() {
                            break 'conn;
                        }
                    }
                }
            }
            if let Ok(mut m) = writers.write() {
                m.remove(&conn);
            }
            let _ = ctl.send(Ctl::TcpClosed(link)).await;
        });
    }
}
