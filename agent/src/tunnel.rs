//! The tunnel's IO: UDP and TCP listeners, packet workers and the control thread around the
//! sans-IO [`Server`].
//!
//! - **Workers** (one per core): each owns one `SO_REUSEPORT` UDP socket per UDP listener
//!   (the kernel keeps a client's 4-tuple on one worker) and one TAP queue. They read batches
//!   with `recvmmsg`, decrypt data packets in place through the shared [`PeerTable`] and write
//!   the IP packet, with an Ethernet header put in front of it in the same buffer, to their
//!   TAP queue. Frames the data path sends to clients arrive on any TAP queue (the kernel
//!   picks the queue by CPU); the worker encrypts them in place and sends batches with
//!   `sendmmsg`. No allocation per packet on this path.
//! - **Control thread**: a single-threaded tokio runtime owning the [`Server`]. Workers hand
//!   it control packets through a bounded channel (a flood fills the channel and is dropped,
//!   it never grows memory). It runs the timers, the TCP listeners (one reader and one writer
//!   task per connection, 16-bit length framing) and the hooks that keep the XDP clients map
//!   in sync.
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::openvpn::packet::{encode_frame, StreamDecoder};
use crate::openvpn::peer::{DataVerdict, Link, PeerTable};
use crate::openvpn::server::{Server, ServerEvent};
use crate::openvpn::session::CloseReason;

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

/// A connection decision: `Err` is the reason sent in `AUTH_FAILED`.
pub type Authorizer = Arc<
    dyn Fn(
            Link,
            &crate::openvpn::session::AuthRequest,
        ) -> Result<(), crate::openvpn::session::Refusal>
        + Send
        + Sync,
>;

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
    pub tap_no_peer: AtomicU64,
    pub control_queue_full: AtomicU64,
    pub tcp_connections: AtomicU64,
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

enum Ctl {
    Packet(Link, Vec<u8>),
    /// OCC_EXIT: peer id and session serial.
    Exit(u32, u64),
    Floated(crate::openvpn::peer::Float),
    TcpClosed(Link),
    Cmd(Command),
}

type TcpWriters = Arc<RwLock<std::collections::HashMap<u64, mpsc::Sender<Vec<u8>>>>>;

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

const BATCH: usize = 32;
const BUF: usize = 2048;
/// Room in front of a plaintext for the data header, packet id and tag (P_DATA_V2).
const HEADROOM: usize = 24;
const ETH_HLEN: usize = 14;

fn reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEPORT, libc::SO_REUSEADDR] {
        // SAFETY: setsockopt with an int.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
    }
    let buf: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with an int; failure keeps the default.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&buf as *const libc::c_int).cast(),
                4,
            )
        };
    }
    let (sa, len) = sockaddr(addr);
    // SAFETY: bind with a sockaddr_storage of the given length.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::other(format!(
            "binding UDP {addr}: {} (is another server on that port?)",
            io::Error::last_os_error()
        )));
    }
    Ok(UdpSocket::from(fd))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            // Dual-stack sockets report IPv4 clients as mapped addresses.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, port)),
                None => SocketAddr::from((ip, port)),
            })
        }
        _ => None,
    }
}

/// Reusable `recvmmsg`/`sendmmsg` state: buffers, iovecs and headers allocated once.
struct Batch {
    bufs: Vec<[u8; BUF]>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: zeroed sockaddr_storage / iovec / mmsghdr are valid plain data.
        let mut b = Box::new(Batch {
            bufs: vec![[0u8; BUF]; BATCH],
            lens: vec![0; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: vec![unsafe { std::mem::zeroed() }; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        });
        b.relink();
        b
    }

    /// Points the headers at the buffers (the vectors never reallocate after `new`).
    fn relink(&mut self) {
        for i in 0..BATCH {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = BUF;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            self.hdrs[i].msg_len = 0;
        }
    }

    fn recv(&mut self, sock: &UdpSocket) -> usize {
        for i in 0..BATCH {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = BUF;
            self.hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: hdrs point at our live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        for i in 0..n as usize {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        n as usize
    }
}

/// Outgoing datagrams of one worker, flushed with `sendmmsg` per socket.
struct SendQueue {
    bufs: Vec<[u8; BUF]>,
    /// (listener, range in buf, destination)
    meta: Vec<(usize, std::ops::Range<usize>, SocketAddr)>,
}

impl SendQueue {
    fn new() -> Self {
        Self {
            bufs: vec![[0u8; BUF]; BATCH],
            meta: Vec::with_capacity(BATCH),
        }
    }

    fn full(&self) -> bool {
        self.meta.len() == BATCH
    }

    fn flush(&mut self, socks: &[UdpSocket], stats: &TunnelStats) {
        if self.meta.is_empty() {
            return;
        }
        for (li, sock) in socks.iter().enumerate() {
            // SAFETY: zeroed plain-data structs, filled below.
            let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let mut n = 0;
            for (i, (l, r, to)) in self.meta.iter().enumerate() {
                if *l != li {
                    continue;
                }
                let (sa, len) = sockaddr(*to);
                addrs[n] = sa;
                iovs[n].iov_base = self.bufs[i][r.start..].as_mut_ptr().cast();
                iovs[n].iov_len = r.len();
                n += 1;
                let h = &mut hdrs[n - 1].msg_hdr;
                h.msg_namelen = len;
            }
            for i in 0..n {
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
                hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            }
            let mut off = 0;
            // Bounded: each round sends at least one message or gives up.
            while off < n {
                // SAFETY: headers point at live buffers and addresses in this frame.
                let r = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        hdrs[off..].as_mut_ptr(),
                        (n - off) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r <= 0 {
                    break;
                }
                stats.udp_tx.fetch_add(r as u64, Ordering::Relaxed);
                off += r as usize;
            }
        }
        self.meta.clear();
    }
}

struct WorkerCtx {
    socks: Vec<UdpSocket>,
    tap: File,
    reads_tap: bool,
    tap_mac: [u8; 6],
    peers: Arc<PeerTable>,
    ctl: mpsc::Sender<Ctl>,
    tcp_writers: TcpWriters,
    stop: Arc<AtomicBool>,
    stats: Arc<TunnelStats>,
    base: Instant,
}

fn send_ctl(ctl: &mpsc::Sender<Ctl>, stats: &TunnelStats, m: Ctl) {
    if ctl.try_send(m).is_err() {
        stats.control_queue_full.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes `buf[range]` (an IP packet from the client `src`) to the TAP with an Ethernet
/// header built in the bytes just before it.
fn to_tap(tap: &mut File, buf: &mut [u8], range: std::ops::Range<usize>, tap_mac: [u8; 6]) -> bool {
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

fn worker(mut w: WorkerCtx) {
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
    if let Some(f) = floated {
        send_ctl(&w.ctl, &w.stats, Ctl::Floated(f));
    }
    match v {
        DataVerdict::Tunnel { range, .. } => {
            if range.start >= ETH_HLEN && to_tap(&mut w.tap, buf, range, w.tap_mac) {
                w.stats.tap_tx.fetch_add(1, Ordering::Relaxed);
            }
        }
        DataVerdict::Consumed => {}
        DataVerdict::Exit { peer_id, session } => {
            send_ctl(&w.ctl, &w.stats, Ctl::Exit(peer_id, session))
        }
        DataVerdict::Dropped(crate::openvpn::peer::DropCause::UnknownPeer) => {
            w.stats.data_unknown_peer.fetch_add(1, Ordering::Relaxed);
        }
        DataVerdict::Dropped(_) => {
            w.stats.data_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

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
            let first = reuseport_udp(*a)?;
            // Port 0: the others join the port the first one got.
            let bound = first.local_addr()?;
            udp_addrs.push(bound);
            per_worker[0].push(first);
            for w in per_worker.iter_mut().skip(1) {
                w.push(reuseport_udp(bound)?);
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
        let tcp_writers: TcpWriters = Arc::default();
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
            let ctx = WorkerCtx {
                socks,
                tap,
                reads_tap,
                tap_mac,
                peers: peers.clone(),
                ctl: ctl_tx.clone(),
                tcp_writers: tcp_writers.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
                base,
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("pc-worker-{i}"))
                    .spawn(move || worker(ctx))?,
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
                rt.block_on(control_loop(ControlCtx {
                    server,
                    hooks,
                    authorizer,
                    rx: ctl_rx,
                    ctl_tx: ctl_tx2,
                    udp: control_socks,
                    tcp_listeners,
                    tcp_writers,
                    tap: tap_for_tcp,
                    tap_mac,
                    peers,
                    stop: stop2,
                    stats: stats2,
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
        let _ = self.ctl.try_send(Ctl::Cmd(c));
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.command(Command::List(tx));
        rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
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

struct ControlCtx {
    server: Server,
    hooks: Box<dyn TunnelHooks>,
    authorizer: Option<Authorizer>,
    rx: mpsc::Receiver<Ctl>,
    ctl_tx: mpsc::Sender<Ctl>,
    udp: Vec<UdpSocket>,
    tcp_listeners: Vec<std::net::TcpListener>,
    tcp_writers: TcpWriters,
    tap: File,
    tap_mac: [u8; 6],
    peers: Arc<PeerTable>,
    stop: Arc<AtomicBool>,
    stats: Arc<TunnelStats>,
}

async fn control_loop(mut c: ControlCtx) {
    let next_conn = Arc::new(AtomicU64::new(1));
    for l in std::mem::take(&mut c.tcp_listeners) {
        let Ok(l) = tokio::net::TcpListener::from_std(l) else {
            continue;
        };
        tokio::spawn(accept_loop(
            l,
            next_conn.clone(),
            c.ctl_tx.clone(),
            c.tcp_writers.clone(),
            c.peers.clone(),
            c.tap.try_clone().expect("dup tap"),
            c.tap_mac,
            c.stats.clone(),
        ));
    }
    let mut shutting_down: Option<Instant> = None;
    let mut next_maintenance = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_maintenance {
            if c.server.tls_provider().maintain() {
                let n = c.server.cut_revoked(now);
                if n > 0 {
                    tracing::info!(sessions = n, "revoked certificates: sessions ended");
                }
            }
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
    c.tcp_writers.write().map(|mut m| m.clear()).ok();
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
            Link::Tcp { conn, .. } => {
                let mut framed = vec![0u8; bytes.len() + 2];
                if encode_frame(&bytes, &mut framed).is_ok() {
                    if let Some(s) = c
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
    while let Some(ev) = c.server.poll_event() {
        if let ServerEvent::AuthRequired { link, request } = &ev {
            let (link, key_id, initial, session) =
                (*link, request.key_id, request.initial, request.session);
            match &c.authorizer {
                // Renegotiations too: the directory checks the resent password (auth.rs).
                Some(a) => {
                    let (a, req, tx) = (a.clone(), request.clone(), c.ctl_tx.clone());
                    std::thread::spawn(move || {
                        let verdict = a(link, &req);
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

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
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
                            } else if let DataVerdict::Exit { peer_id, session } = v {
                                let _ = ctl.send(Ctl::Exit(peer_id, session)).await;
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
