//! Everything that touches the operating system around the sans-IO [`Server`]: sockets, the
//! TAP, threads, clocks and the TLS files ([`tls_files`]).
//!
//! - **Workers** ([`worker`], one per core): each owns one `SO_REUSEPORT` UDP socket per UDP
//!   listener ([`udp`]; the kernel keeps a client's 4-tuple on one worker) and one TAP queue
//!   ([`tap`]). They read batches with `recvmmsg`, decrypt data packets in place through the
//!   shared [`PeerTable`] and write the IP packet, with an Ethernet header put in front of it
//!   in the same buffer, to their TAP queue. Frames the data path sends to clients arrive on
//!   any TAP queue (the kernel picks the queue by CPU); the worker encrypts them in place and
//!   sends batches with `sendmmsg`. No allocation per packet on this path.
//! - **Control thread** ([`control`]): a single-threaded tokio runtime owning the [`Server`].
//!   Workers hand it control packets through a bounded channel (a flood fills the channel and
//!   is dropped, it never grows memory). It runs the timers, the TCP listeners ([`tcp`]) and
//!   the hooks that keep the XDP clients map in sync.
//!
//! [`PeerTable`]: crate::openvpn::peer::PeerTable
mod control;
mod lifecycle;
pub mod tap;
mod tcp;
pub mod tls_files;
mod udp;
mod worker;

pub use tcp::TcpLimits;

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::openvpn::peer::Link;
use crate::openvpn::server::{Server, ServerEvent};

/// Where the tunnel listens.
#[derive(Clone)]
pub struct TunnelOptions {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    /// Packet workers; 0 = one per CPU.
    pub workers: usize,
    /// With `AuthMode::External`: decides each new connection (run on its own thread, so a
    /// slow decision never stalls the control thread). Renegotiations are decided by it too
    /// (`AuthRequest::initial` is false).
    pub authorizer: Option<Authorizer>,
}

/// A connection decision: `Err` is the reason sent in `AUTH_FAILED`. The [`Pending`] lets a
/// decision that waits for something out of band (a web login) tell the client first.
pub type Authorizer = Arc<
    dyn Fn(
            Link,
            &crate::openvpn::session::AuthRequest,
            &Pending,
        ) -> Result<(), crate::openvpn::session::Refusal>
        + Send
        + Sync,
>;

/// Sends `AUTH_PENDING` and `INFO_PRE` to the client of one authorization in progress.
pub struct Pending {
    ctl: Option<mpsc::Sender<Ctl>>,
    link: Link,
    session: u64,
    key_id: crate::openvpn::packet::KeyId,
}

impl Pending {
    /// A handle that tells no one (unit tests, callers without a tunnel).
    pub fn detached(link: Link) -> Pending {
        Pending {
            ctl: None,
            link,
            session: 0,
            key_id: crate::openvpn::packet::KeyId::ZERO,
        }
    }

    /// The session token to push with this authorization's verdict (sent before the verdict
    /// on the same channel, so the control thread has it when the verdict comes).
    pub fn issue_token(&self, token: crate::openvpn::verdict::IssuedToken) {
        if let Some(tx) = &self.ctl {
            let _ = tx.blocking_send(Ctl::Cmd(Command::AuthToken {
                link: self.link,
                session: self.session,
                token,
            }));
        }
    }

    /// The client waits up to `timeout` more and is shown `info` (`WEB_AUTH::<url>`).
    pub fn announce(&self, timeout: Duration, info: String) {
        if let Some(tx) = &self.ctl {
            let _ = tx.blocking_send(Ctl::Cmd(Command::AuthPending {
                link: self.link,
                session: self.session,
                key_id: self.key_id,
                timeout,
                info,
            }));
        }
    }
}

/// Called on the control thread for every server event (connect, disconnect, …): this is
/// where the XDP clients map is kept in sync.
pub trait TunnelHooks: Send + 'static {
    fn on_event(&mut self, ev: &ServerEvent);
}

/// Counters of the IO layer (the data path has its own).
#[derive(Debug, Default)]
pub struct TunnelStats {
    pub udp_rx: AtomicU64,
    pub udp_tx: AtomicU64,
    pub tap_rx: AtomicU64,
    pub tap_tx: AtomicU64,
    pub data_unknown_peer: AtomicU64,
    pub data_rejected: AtomicU64,
    /// Decrypted packets whose source was not the session's own tunnel address.
    pub data_spoofed: AtomicU64,
    /// Decrypted packets that were not IPv4.
    pub data_not_ipv4: AtomicU64,
    pub tap_no_peer: AtomicU64,
    /// Control packets dropped because the control channel was full (clients retransmit).
    pub control_queue_full: AtomicU64,
    /// Client exits and floats that found the control channel full and waited aside for
    /// the control thread's next turn (never dropped).
    pub lifecycle_deferred: AtomicU64,
    /// TCP connections accepted.
    pub tcp_connections: AtomicU64,
    /// TCP connections closed right away: over the total or the per-source limit.
    pub tcp_refused: AtomicU64,
    /// TCP connections closed for their handshake or idle timeout.
    pub tcp_timed_out: AtomicU64,
    /// The control thread's own counters, copied every second (the server is not shared).
    pub server: std::sync::Mutex<crate::openvpn::server::ServerStats>,
}

/// What [`TunnelStats::totals`] reports, each a list of (label, monotonic total).
pub struct TunnelTotals {
    /// Datagrams and frames moved: `udp_rx`, `udp_tx`, `tap_rx`, `tap_tx`, `stateless_reply`.
    pub packets: Vec<(&'static str, u64)>,
    /// Packets the tunnel refused before the data path, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// TCP connections: `accepted`, `refused`, `timed_out`.
    pub tcp: Vec<(&'static str, u64)>,
}

impl TunnelStats {
    /// Every counter by the label the metrics give it.
    pub fn totals(&self) -> TunnelTotals {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TunnelTotals {
            packets: vec![
                ("udp_rx", n(&self.udp_rx)),
                ("udp_tx", n(&self.udp_tx)),
                ("tap_rx", n(&self.tap_rx)),
                ("tap_tx", n(&self.tap_tx)),
                ("stateless_reply", s.stateless_replies),
            ],
            drops: vec![
                ("data_unknown_peer", n(&self.data_unknown_peer)),
                ("data_rejected", n(&self.data_rejected)),
                ("data_spoofed_source", n(&self.data_spoofed)),
                ("data_not_ipv4", n(&self.data_not_ipv4)),
                ("tap_no_peer", n(&self.tap_no_peer)),
                ("control_queue_full", n(&self.control_queue_full)),
                ("control_malformed", s.malformed),
                ("tls_crypt_rejected", s.tls_crypt_rejected),
                ("tls_crypt_v2_rejected", s.tls_crypt_v2_rejected),
                ("cookie_rejected", s.cookie_rejected),
                ("reset_rate_limited", s.reset_rate_limited),
                ("session_limit", s.session_limit),
                ("half_open_limit", s.half_open_limit),
                ("unroutable", s.unroutable),
                ("float_refused", s.float_refused),
            ],
            tcp: vec![
                ("accepted", n(&self.tcp_connections)),
                ("refused", n(&self.tcp_refused)),
                ("timed_out", n(&self.tcp_timed_out)),
            ],
        }
    }
}

/// Requests to the control thread.
pub enum Command {
    RenegotiateAll,
    /// The decision on an `AuthRequired` event.
    Authorize {
        link: Link,
        /// The session's serial from its `AuthRequest`.
        session: u64,
        key_id: crate::openvpn::packet::KeyId,
        verdict: Result<(), crate::openvpn::session::Refusal>,
        initial: bool,
    },
    /// A session token for the verdict that follows (see [`Pending::issue_token`]).
    AuthToken {
        link: Link,
        session: u64,
        token: crate::openvpn::verdict::IssuedToken,
    },
    /// An authorization continues out of band: `AUTH_PENDING` and `INFO_PRE,<info>`.
    AuthPending {
        link: Link,
        session: u64,
        key_id: crate::openvpn::packet::KeyId,
        timeout: Duration,
        info: String,
    },
    Disconnect(u32),
    /// Settings for sessions that start from now on (`Server::update_settings`).
    Settings(Box<crate::openvpn::server::ServerSettings>),
    /// Ends a session with `HALT,<reason>` (the client does not reconnect).
    Halt {
        peer_id: u32,
        reason: String,
    },
    /// Current sessions, as (peer-id, common name, tunnel address, link).
    List(std::sync::mpsc::Sender<Vec<SessionInfo>>),
}

#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub peer_id: u32,
    pub common_name: Option<String>,
    pub tunnel_addr: Option<Ipv4Addr>,
    pub link: Link,
    pub established: bool,
}

pub(crate) enum Ctl {
    Packet(Link, Vec<u8>),
    /// OCC_EXIT: peer id and session serial.
    Exit(u32, u64),
    Floated(crate::openvpn::peer::Float),
    TcpClosed(Link),
    Cmd(Command),
}

/// A running tunnel; [`Tunnel::stop`] tells clients to reconnect and joins every thread.
pub struct Tunnel {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
    ctl: mpsc::Sender<Ctl>,
    pub stats: Arc<TunnelStats>,
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_addrs: Vec<SocketAddr>,
}

/// See [`Tunnel::handle`]; commands sent after the tunnel stopped are dropped.
#[derive(Clone)]
pub struct TunnelHandle {
    ctl: mpsc::Sender<Ctl>,
    pub stats: Arc<TunnelStats>,
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_addrs: Vec<SocketAddr>,
}

impl TunnelHandle {
    pub fn command(&self, c: Command) {
        let _ = self.ctl.try_send(Ctl::Cmd(c));
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.command(Command::List(tx));
        rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
    }
}

pub(crate) const BATCH: usize = 32;
pub(crate) const BUF: usize = 2048;
/// Room in front of a plaintext for the data header, packet id and tag (P_DATA_V2).
pub(crate) const HEADROOM: usize = 24;
pub(crate) const ETH_HLEN: usize = 14;

impl Tunnel {
    /// Binds the listeners (errors name the address), starts the workers and the control
    /// thread. `taps` are the TAP queues; workers beyond their number share queue 0.
    pub fn start(
        server: Server,
        taps: Vec<File>,
        tap_mac: [u8; 6],
        opts: &TunnelOptions,
        hooks: Box<dyn TunnelHooks>,
    ) -> io::Result<Tunnel> {
        if taps.is_empty() {
            return Err(io::Error::other("no TAP queue given to the tunnel"));
        }
        let n = if opts.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.workers
        };
        let mut per_worker: Vec<Vec<UdpSocket>> = (0..n).map(|_| Vec::new()).collect();
        let mut udp_addrs = Vec::new();
        for a in &opts.udp {
            let first = udp::reuseport_udp(*a)?;
            // Port 0: the others join the port the first one got.
            let bound = first.local_addr()?;
            udp_addrs.push(bound);
            per_worker[0].push(first);
            for w in per_worker.iter_mut().skip(1) {
                w.push(udp::reuseport_udp(bound)?);
            }
        }
        // The control thread sends from the first worker's sockets (same local port).
        let control_socks: Vec<UdpSocket> = per_worker[0]
            .iter()
            .map(|s| s.try_clone())
            .collect::<io::Result<_>>()?;
        let mut tcp_listeners = Vec::new();
        let mut tcp_addrs = Vec::new();
        for a in &opts.tcp {
            let l = std::net::TcpListener::bind(a)
                .map_err(|e| io::Error::other(format!("binding TCP {a}: {e}")))?;
            l.set_nonblocking(true)?;
            tcp_addrs.push(l.local_addr()?);
            tcp_listeners.push(l);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(TunnelStats::default());
        let peers = server.peers();
        let (ctl_tx, ctl_rx) = mpsc::channel::<Ctl>(8192);
        let tcp_conns = Arc::new(tcp::TcpConns::default());
        let deferred = Arc::new(lifecycle::Deferred::default());
        let tcp_limits = TcpLimits::for_settings(server.settings());
        let tap_for_tcp = taps[0].try_clone()?;
        let base = Instant::now();
        let mut workers = Vec::new();
        for (i, socks) in per_worker.into_iter().enumerate() {
            // One reader per TAP queue: two workers sealing one client's frames from the same
            // queue would interleave its packet ids and reorder them past the client's
            // 64-packet replay window. Workers beyond the queues serve UDP only (they still
            // write decrypted packets to a queue).
            let tap = taps[i % taps.len()].try_clone()?;
            let reads_tap = i < taps.len();
            let ctx = worker::WorkerCtx {
                socks,
                tap,
                reads_tap,
                tap_mac,
                peers: peers.clone(),
                ctl: ctl_tx.clone(),
                tcp: tcp_conns.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
                deferred: deferred.clone(),
                base,
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("pc-worker-{i}"))
                    .spawn(move || worker::run(ctx))?,
            );
        }
        let stop2 = stop.clone();
        let stats2 = stats.clone();
        let authorizer = opts.authorizer.clone();
        let ctl_tx2 = ctl_tx.clone();
        let control = std::thread::Builder::new()
            .name("pc-control".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(control::run(control::ControlCtx {
                    server,
                    hooks,
                    authorizer,
                    rx: ctl_rx,
                    ctl_tx: ctl_tx2,
                    udp: control_socks,
                    tcp_listeners,
                    tcp: tcp_conns,
                    tcp_limits,
                    tap: tap_for_tcp,
                    tap_mac,
                    peers,
                    stop: stop2,
                    stats: stats2,
                    deferred,
                }));
            })?;
        Ok(Tunnel {
            stop,
            workers,
            control: Some(control),
            ctl: ctl_tx,
            stats,
            udp_addrs,
            tcp_addrs,
        })
    }

    pub fn command(&self, c: Command) {
        self.handle().command(c)
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.handle().sessions()
    }

    /// Commands and statistics for another thread than the one owning the tunnel (the
    /// tests and benchmarks, while the endpoint's loop owns it).
    pub fn handle(&self) -> TunnelHandle {
        TunnelHandle {
            ctl: self.ctl.clone(),
            stats: self.stats.clone(),
            udp_addrs: self.udp_addrs.clone(),
            tcp_addrs: self.tcp_addrs.clone(),
        }
    }

    /// Tells every client to reconnect (RESTART), waits briefly for the acks, then stops all
    /// threads.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
