//! The control thread: owns the [`Server`], runs its timers, hands its datagrams to the
//! sockets, starts external authorization and reports every event to the hooks.
use std::fs::File;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::tcp::{Listener, TcpConns, TcpLimits};
use super::{Authorizer, Command, Ctl, SessionInfo, TunnelHooks, TunnelStats};
use crate::openvpn::peer::{Link, PeerTable};
use crate::openvpn::server::{Server, ServerEvent};
use crate::openvpn::session::CloseReason;

pub(super) struct ControlCtx {
    pub(super) server: Server,
    pub(super) hooks: Box<dyn TunnelHooks>,
    pub(super) authorizer: Option<Authorizer>,
    pub(super) rx: mpsc::Receiver<Ctl>,
    pub(super) ctl_tx: mpsc::Sender<Ctl>,
    pub(super) udp: Vec<UdpSocket>,
    pub(super) tcp_listeners: Vec<std::net::TcpListener>,
    pub(super) tcp: Arc<TcpConns>,
    pub(super) tcp_limits: TcpLimits,
    pub(super) tap: File,
    pub(super) tap_mac: [u8; 6],
    pub(super) peers: Arc<PeerTable>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stats: Arc<TunnelStats>,
    pub(super) deferred: Arc<super::lifecycle::Deferred>,
}

pub(super) async fn run(mut c: ControlCtx) {
    let next_conn = Arc::new(AtomicU64::new(1));
    for l in std::mem::take(&mut c.tcp_listeners) {
        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
            continue;
        };
        let Ok(tap) = c.tap.try_clone() else {
            continue;
        };
        let shared = Arc::new(Listener {
            next_conn: next_conn.clone(),
            ctl: c.ctl_tx.clone(),
            conns: c.tcp.clone(),
            limits: c.tcp_limits.clone(),
            peers: c.peers.clone(),
            tap,
            tap_mac: c.tap_mac,
            stats: c.stats.clone(),
        });
        tokio::spawn(super::tcp::accept_loop(l, shared));
    }
    let mut shutting_down: Option<Instant> = None;
    let mut next_maintenance = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_maintenance || c.server.tls_provider().changed_outside() {
            if c.server.tls_provider().maintain() {
                let n = c.server.cut_revoked(now);
                if n > 0 {
                    tracing::info!(sessions = n, "revoked certificates: sessions ended");
                }
            }
            *c.stats.server.lock().unwrap_or_else(|e| e.into_inner()) = c.server.stats.clone();
            next_maintenance = now + Duration::from_secs(1);
        }
        if c.stop.load(Ordering::Relaxed) && shutting_down.is_none() {
            c.server.shutdown(now);
            shutting_down = Some(now + Duration::from_secs(2));
        }
        if let Some(t) = shutting_down {
            if now >= t || c.server.session_count() == 0 {
                flush(&mut c);
                break;
            }
        }
        for m in c.deferred.take() {
            handle_ctl(&mut c, m, now);
        }
        c.server.handle_timeout(now);
        flush(&mut c);
        let wake = c
            .server
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_millis(200))
            .max(now);
        tokio::select! {
            m = c.rx.recv() => {
                let Some(m) = m else { break };
                let now = Instant::now();
                handle_ctl(&mut c, m, now);
                // Drain what is queued without sleeping in between.
                for _ in 0..256 {
                    match c.rx.try_recv() {
                        Ok(m) => handle_ctl(&mut c, m, now),
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        flush(&mut c);
    }
    c.tcp.close_all();
}

fn handle_ctl(c: &mut ControlCtx, m: Ctl, now: Instant) {
    match m {
        Ctl::Packet(link, bytes) => c.server.handle_control(link, &bytes, now),
        Ctl::Exit(peer_id, session) => c.server.client_exit(peer_id, session, now),
        Ctl::Floated(f) => c.server.floated(f, now),
        Ctl::TcpClosed(link) => c.server.link_closed(link, now),
        Ctl::Cmd(Command::RenegotiateAll) => c.server.renegotiate_all(now),
        Ctl::Cmd(Command::Authorize {
            link,
            session,
            key_id,
            verdict,
            initial,
        }) => c
            .server
            .authorize_external(link, session, key_id, verdict, initial, now),
        Ctl::Cmd(Command::AuthToken {
            link,
            session,
            token,
        }) => c.server.set_auth_token(link, session, token),
        Ctl::Cmd(Command::AuthPending {
            link,
            session,
            key_id,
            timeout,
            info,
        }) => c
            .server
            .auth_pending(link, session, key_id, timeout, &info, now),
        Ctl::Cmd(Command::Settings(s)) => c.server.update_settings(*s),
        Ctl::Cmd(Command::Disconnect(id)) => c.server.close_peer(
            id,
            CloseReason::Server("disconnected by operator".into()),
            now,
        ),
        Ctl::Cmd(Command::Halt { peer_id, reason }) => c.server.halt_peer(peer_id, &reason, now),
        Ctl::Cmd(Command::List(tx)) => {
            let v = c
                .server
                .sessions()
                .map(|(l, s, a)| SessionInfo {
                    peer_id: s.peer().peer_id,
                    common_name: s.common_name().map(str::to_owned),
                    tunnel_addr: a,
                    link: *l,
                    established: s.is_established(),
                })
                .collect();
            let _ = tx.send(v);
        }
    }
}

fn flush(c: &mut ControlCtx) {
    // Bounded by what the server queued.
    while let Some((link, bytes)) = c.server.poll_transmit() {
        match link {
            Link::Udp { listener, addr } => {
                if let Some(s) = c.udp.get(listener as usize) {
                    if s.send_to(&bytes, addr).is_ok() {
                        c.stats.udp_tx.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Link::Tcp { conn, .. } => c.tcp.send(conn, &bytes),
        }
    }
    while let Some(ev) = c.server.poll_event() {
        if let ServerEvent::AuthRequired { link, request } = &ev {
            let (link, key_id, initial, session) =
                (*link, request.key_id, request.initial, request.session);
            match &c.authorizer {
                // Renegotiations too: the directory checks the resent password (auth.rs).
                Some(a) => {
                    let (a, req, tx) = (a.clone(), request.clone(), c.ctl_tx.clone());
                    std::thread::spawn(move || {
                        let pending = super::Pending {
                            ctl: Some(tx.clone()),
                            link,
                            session,
                            key_id,
                        };
                        let verdict = a(link, &req, &pending);
                        let _ = tx.blocking_send(Ctl::Cmd(Command::Authorize {
                            link,
                            session,
                            key_id,
                            verdict,
                            initial,
                        }));
                    });
                }
                None => {
                    let _ = c.ctl_tx.try_send(Ctl::Cmd(Command::Authorize {
                        link,
                        session,
                        key_id,
                        verdict: Ok(()),
                        initial,
                    }));
                }
            }
        }
        match ev {
            ServerEvent::Connected {
                link: Link::Tcp { conn, .. },
                ..
            } => c.tcp.connected(conn),
            // One connection, one session: a connection that could start session after
            // session would escape the handshake timeout and the per-source limits.
            ServerEvent::Disconnected {
                link: Link::Tcp { conn, .. },
                ..
            } => c.tcp.close(conn),
            _ => {}
        }
        log_event(&ev);
        c.hooks.on_event(&ev);
    }
}

fn log_event(ev: &ServerEvent) {
    match ev {
        ServerEvent::Connected {
            link,
            peer_id,
            common_name,
            tunnel_addr,
            cipher,
            tls_version,
            ..
        } => {
            tracing::info!(%link, peer_id, common_name, %tunnel_addr, %cipher, tls_version, "client connected")
        }
        ServerEvent::Disconnected {
            link,
            peer_id,
            common_name,
            reason,
            rx_bytes,
            tx_bytes,
            ..
        } => {
            tracing::info!(%link, peer_id, ?common_name, %reason, rx_bytes, tx_bytes, "client disconnected")
        }
        ServerEvent::Rekeyed {
            link,
            peer_id,
            key_id,
        } => tracing::debug!(%link, peer_id, key_id = key_id.get(), "renegotiated"),
        ServerEvent::Floated {
            peer_id, from, to, ..
        } => {
            tracing::info!(peer_id, %from, %to, "client address changed")
        }
        ServerEvent::Message { link, text } => tracing::debug!(%link, text, "control message"),
        ServerEvent::AuthRequired { link, .. } => tracing::debug!(%link, "authentication pending"),
    }
}
