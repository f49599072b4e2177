//! A many-session OpenVPN client emulator for the benchmarks (`bench-scale --emulate`): one
//! process, thousands of sessions, each a real OpenVPN 2.6-style client on its own UDP socket
//! (own source port; source addresses round-robin over `sources`), driven by one epoll loop.
//!
//! Each session is a [`TestClient`] (tls-crypt, HMAC-cookie reset, TLS with a client
//! certificate, key-method 2, PUSH_REQUEST until the PUSH_REPLY, data channel with the
//! negotiated AEAD). Once up it keeps the session alive as a stock client does: the 16-byte
//! ping magic as a data packet whenever it sent nothing for the pushed `ping` interval; it
//! decrypts what the server sends (its pings, data) and acks control packets. It can push
//! sealed IPv4/UDP packets through a subset of sessions toward a sink behind the gateway, and
//! close every session with `EXIT`.
//!
//! Works against both Portcullis and the stock `openvpn --server`. Every loop is bounded by
//! a deadline; SIGINT/SIGTERM (see [`stop_requested`]) ends it early.
use std::{
    collections::VecDeque,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use portcullis::openvpn::{
    testclient::{client_tls, TestClient},
    tls_crypt::StaticKey,
};
use rustls::ClientConfig;
use serde_json::{json, Value};

/// The OpenVPN keepalive ping (ping.c).
pub const PING_MAGIC: [u8; 16] = [
    0x2a, 0x18, 0x7b, 0xf3, 0x64, 0x1e, 0xb4, 0xcb, 0x07, 0xed, 0x2d, 0x0a, 0x98, 0x1f, 0xc7, 0x48,
];
/// A 2.6 client repeats PUSH_REQUEST every 5 s (common.h), the first about 1 s after its key
/// became active.
const PUSH_REQUEST_FIRST: Duration = Duration::from_secs(1);
const PUSH_REQUEST_INTERVAL: Duration = Duration::from_secs(5);
/// Control-channel retransmissions and keepalives are checked this often.
const TICK: Duration = Duration::from_millis(20);
/// EXITs per tick when closing everything: a burst of thousands would overflow the server's
/// UDP receive buffer (the stock server's, 208 KiB by default, holds a few hundred), and a
/// lost EXIT leaves the session to the server's ping-restart timeout.
pub const EXITS_PER_TICK: usize = 50;
/// The peer-info of a 2.6.14 client without IV_PROTO bit 9 (dyn-tls-crypt, 512): TestClient
/// does not implement it, so it must not offer it (990 - 512).
const PEER_INFO: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n\
IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=478\nIV_LZO_STUB=1\n\
IV_COMP_STUB=1\nIV_COMP_STUBv2=1\n";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Install SIGINT/SIGTERM handlers that only set a flag (loops check [`stop_requested`]).
pub fn install_signal_handlers() {
    // SAFETY: an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Raise the soft open-file limit (one socket per session) toward `want`, up to the hard
/// limit (raising that needs CAP_SYS_RESOURCE, which a container may not grant): the limit
/// now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if r.rlim_cur >= want {
        return r.rlim_cur;
    }
    let mut n = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(r.rlim_max),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &n) } == 0 {
        return want;
    }
    n = libc::rlimit {
        rlim_cur: want.min(r.rlim_max),
        rlim_max: r.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &n) } == 0 {
        n.rlim_cur
    } else {
        r.rlim_cur
    }
}

/// The client's credentials and where the server is.
pub struct Target {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tls_crypt: Option<PathBuf>,
    pub server: SocketAddr,
    /// Local addresses to bind, round-robin (empty: the kernel picks).
    pub sources: Vec<Ipv4Addr>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum St {
    Handshaking,
    Up,
    /// Sent EXIT at this time; acks are answered until the linger passed.
    Closing(Instant),
}

struct Sess {
    client: TestClient,
    sock: UdpSocket,
    started: Instant,
    state: St,
    /// Which `open` batch it belongs to (the sweep closes each step's sessions).
    batch: u32,
    last_tx: Instant,
    last_rx: Instant,
    next_push_request: Option<Instant>,
    push_requests: u32,
    ping: Duration,
    ping_restart: Duration,
    tun_addr: Option<Ipv4Addr>,
}

/// Counters over the emulator's life.
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub datagrams_tx: u64,
    pub datagrams_rx: u64,
    pub send_errors: u64,
    pub pings_tx: u64,
    pub pings_rx: u64,
    pub data_rx: u64,
    pub push_requests: u64,
    pub exits: u64,
    pub auth_failed: u64,
    pub timed_out: u64,
    pub no_ifconfig: u64,
    pub server_messages: Vec<String>,
}

impl Counters {
    pub fn to_json(&self) -> Value {
        json!({
            "datagrams_sent": self.datagrams_tx,
            "datagrams_received": self.datagrams_rx,
            "send_errors": self.send_errors,
            "pings_sent": self.pings_tx,
            "pings_received": self.pings_rx,
            "data_packets_received": self.data_rx,
            "push_requests_sent": self.push_requests,
            "exits_sent": self.exits,
            "auth_failed": self.auth_failed,
            "timed_out": self.timed_out,
            "push_reply_without_ifconfig": self.no_ifconfig,
            "server_messages": self.server_messages,
        })
    }
}

/// Result of opening sessions.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub requested: usize,
    pub started: usize,
    pub completed: usize,
    pub failed: usize,
    /// Connect latency (first reset sent → PUSH_REPLY with an address), ms, sorted.
    pub latencies_ms: Vec<f64>,
    /// First reset → last completion.
    pub seconds: f64,
    /// Completion times, seconds after the first session started, in order.
    pub done_at_s: Vec<f64>,
    /// When the first session started, the first and the last completed.
    pub first: Option<Instant>,
    pub first_done: Option<Instant>,
    pub last: Option<Instant>,
}

pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[k.clamp(1, sorted.len()) - 1]
}

impl Opened {
    /// The rate the server kept up with: 90% of the completions divided by the time from
    /// the first start to the completion that reached 90%. For sessions opened at a fixed
    /// rate below the server's capacity this is about that rate; above it, the capacity. The
    /// slowest 10% (retransmissions) do not stretch it.
    pub fn completion_rate(&self) -> f64 {
        let n = self.done_at_s.len();
        if n < 2 {
            return f64::NAN;
        }
        let k = ((n as f64 * 0.9).ceil() as usize).clamp(1, n);
        let t = self.done_at_s[k - 1];
        if t > 0.0 {
            k as f64 / t
        } else {
            f64::NAN
        }
    }

    /// Completions per second between `from` and `to` seconds after the first start: for
    /// sessions opened at a fixed rate over `to` seconds, the rate the server sustained once
    /// the first `from` seconds (latency ramp) are left out, however long each connect took.
    pub fn window_rate(&self, from: f64, to: f64) -> f64 {
        if to <= from {
            return f64::NAN;
        }
        let n = self
            .done_at_s
            .iter()
            .filter(|&&t| t >= from && t <= to)
            .count();
        n as f64 / (to - from)
    }

    pub fn to_json(&self) -> Value {
        let l = &self.latencies_ms;
        json!({
            "requested": self.requested,
            "started": self.started,
            "completed": self.completed,
            "failed": self.failed,
            "seconds": self.seconds,
            "rate_per_s": self.completed as f64 / self.seconds,
            "completion_rate_per_s": self.completion_rate(),
            "latency_ms": {
                "p50": nearest_rank(l, 50.0),
                "p90": nearest_rank(l, 90.0),
                "p99": nearest_rank(l, 99.0),
                "max": l.last().copied().unwrap_or(f64::NAN),
            },
        })
    }
}

/// How sessions are opened: `rate` per second (0: as fast as `inflight` allows), at most
/// `inflight` handshakes at a time; a session that completes is closed at once (`churn`,
/// for the handshake-rate sweep) or kept.
#[derive(Clone, Copy, Debug)]
pub struct OpenPlan {
    pub sessions: usize,
    pub rate: f64,
    pub inflight: usize,
    pub churn: bool,
}

pub struct Emulator {
    tls: Arc<ClientConfig>,
    tls_crypt: Option<StaticKey>,
    target: Target,
    epfd: i32,
    slots: Vec<Option<Sess>>,
    free: Vec<usize>,
    batch: u32,
    next_source: usize,
    pub handshake_timeout: Duration,
    /// How long a closing session answers acks at least, and at most while its EXIT is
    /// not acknowledged (retransmissions at 2 s and 6 s).
    pub linger: Duration,
    pub linger_max: Duration,
    pub counters: Counters,
    buf: Vec<u8>,
    events: Vec<libc::epoll_event>,
    last_tick: Instant,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: closing the epoll fd we created.
        unsafe { libc::close(self.epfd) };
    }
}

fn is_ping(p: &[u8]) -> bool {
    p == PING_MAGIC
}

/// `ping N` / `ping-restart N` from a PUSH_REPLY.
fn pushed_secs(push: &str, name: &str) -> Option<Duration> {
    push.split(',').find_map(|o| {
        let v = o.trim().strip_prefix(name)?.strip_prefix(' ')?;
        v.trim().parse::<u64>().ok().map(Duration::from_secs)
    })
}

impl Emulator {
    pub fn new(target: Target) -> Result<Emulator> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let tls = client_tls(
            &read(&target.ca)?,
            &read(&target.cert)?,
            &read(&target.key)?,
        );
        let tls_crypt = match &target.tls_crypt {
            Some(p) => Some(
                StaticKey::parse(&read(p)?)
                    .map_err(|e| anyhow::anyhow!("tls-crypt key {}: {e:?}", p.display()))?,
            ),
            None => None,
        };
        // SAFETY: epoll_create1 has no memory preconditions.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        Ok(Emulator {
            tls,
            tls_crypt,
            target,
            epfd,
            slots: Vec::new(),
            free: Vec::new(),
            batch: 0,
            next_source: 0,
            handshake_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(500),
            linger_max: Duration::from_secs(7),
            counters: Counters::default(),
            buf: vec![0u8; 65536],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            last_tick: Instant::now(),
        })
    }

    fn iter_live(&self) -> impl Iterator<Item = &Sess> {
        self.slots.iter().flatten()
    }

    fn count(&self, f: impl Fn(St) -> bool) -> usize {
        self.iter_live().filter(|s| f(s.state)).count()
    }

    pub fn up(&self) -> usize {
        self.count(|s| s == St::Up)
    }

    pub fn handshaking(&self) -> usize {
        self.count(|s| s == St::Handshaking)
    }

    pub fn closing(&self) -> usize {
        self.count(|s| matches!(s, St::Closing(_)))
    }

    fn start_session(&mut self, now: Instant) -> Result<usize> {
        let local = match self.target.sources.len() {
            0 => SocketAddr::from(([0, 0, 0, 0], 0)),
            n => {
                let a = self.target.sources[self.next_source % n];
                self.next_source += 1;
                SocketAddr::V4(SocketAddrV4::new(a, 0))
            }
        };
        let sock = UdpSocket::bind(local).context("binding a session socket")?;
        sock.connect(self.target.server)?;
        sock.set_nonblocking(true)?;
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: idx as u64,
        };
        // SAFETY: valid epoll fd, a socket fd we own, an event struct we own.
        if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &mut ev) }
            != 0
        {
            self.free.push(idx);
            bail!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
        let mut client = TestClient::new(self.tls.clone(), "server", self.tls_crypt.as_ref());
        client.peer_info = PEER_INFO.to_owned();
        self.slots[idx] = Some(Sess {
            client,
            sock,
            started: now,
            state: St::Handshaking,
            batch: self.batch,
            last_tx: now,
            last_rx: now,
            next_push_request: None,
            push_requests: 0,
            ping: Duration::from_secs(10),
            ping_restart: Duration::from_secs(60),
            tun_addr: None,
        });
        self.flush(idx, now);
        Ok(idx)
    }

    fn remove(&mut self, idx: usize) {
        if let Some(s) = self.slots[idx].take() {
            // Closing the socket removes it from the epoll set.
            drop(s);
            self.free.push(idx);
        }
    }

    /// Send whatever the session's control channel has queued.
    fn flush(&mut self, idx: usize, now: Instant) {
        let Some(s) = self.slots[idx].as_mut() else {
            return;
        };
        for p in s.client.poll_transmit(now) {
            match s.sock.send(&p) {
                Ok(_) => {
                    self.counters.datagrams_tx += 1;
                    s.last_tx = now;
                }
                Err(_) => self.counters.send_errors += 1,
            }
        }
    }

    /// Read what arrived on session `idx` (bounded) and feed it to its client.
    fn receive(&mut self, idx: usize, now: Instant) {
        let Some(s) = self.slots[idx].as_mut() else {
            return;
        };
        for _ in 0..64 {
            match s.sock.recv(&mut self.buf) {
                Ok(n) => {
                    self.counters.datagrams_rx += 1;
                    s.last_rx = now;
                    if let Some(p) = s.client.on_packet(&self.buf[..n], now) {
                        if is_ping(&p) {
                            self.counters.pings_rx += 1;
                        } else {
                            self.counters.data_rx += 1;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        self.flush(idx, now);
    }

    /// Wait up to `timeout` for datagrams and handle them, then run timers if a tick passed.
    /// Returns sessions that completed their handshake in this call (index, latency).
    fn pump(&mut self, timeout: Duration) -> Vec<(usize, Duration)> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: the events buffer is ours and its length is passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        let now = Instant::now();
        let mut touched: Vec<usize> = Vec::new();
        for i in 0..n.max(0) as usize {
            let idx = self.events[i].u64 as usize;
            self.receive(idx, now);
            touched.push(idx);
        }
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            self.tick(now);
        }
        let mut done = Vec::new();
        for idx in touched {
            if let Some(r) = self.check_handshake(idx, now) {
                done.push((idx, r));
            }
        }
        done
    }

    /// A session that just got its PUSH_REPLY becomes Up; returns its connect latency.
    fn check_handshake(&mut self, idx: usize, now: Instant) -> Option<Duration> {
        let s = self.slots[idx].as_mut()?;
        if s.state != St::Handshaking {
            return None;
        }
        if let Some(msg) = s.client.auth_failed.take() {
            self.counters.auth_failed += 1;
            if self.counters.server_messages.len() < 5 {
                self.counters
                    .server_messages
                    .push(format!("AUTH_FAILED{msg}"));
            }
            self.remove(idx);
            return None;
        }
        let push = s.client.push_reply.as_deref()?;
        if !s.client.data_ready() {
            return None; // push-continuation: more parts to come
        }
        s.ping = pushed_secs(push, "ping").unwrap_or(Duration::from_secs(10));
        s.ping_restart = pushed_secs(push, "ping-restart").unwrap_or(Duration::from_secs(60));
        s.tun_addr = s.client.pushed_addr();
        if s.tun_addr.is_none() {
            self.counters.no_ifconfig += 1;
            self.remove(idx);
            return None;
        }
        s.state = St::Up;
        s.next_push_request = None;
        Some(now.duration_since(s.started))
    }

    /// Timers: retransmissions, PUSH_REQUEST, keepalive pings, handshake timeouts, the end of
    /// a closing session's linger.
    fn tick(&mut self, now: Instant) {
        for idx in 0..self.slots.len() {
            let Some(s) = self.slots[idx].as_mut() else {
                continue;
            };
            match s.state {
                St::Handshaking => {
                    if now.duration_since(s.started) > self.handshake_timeout {
                        self.counters.timed_out += 1;
                        self.remove(idx);
                        continue;
                    }
                    if s.client.key_exchanged() && s.client.push_reply.is_none() {
                        match s.next_push_request {
                            None => s.next_push_request = Some(now + PUSH_REQUEST_FIRST),
                            Some(t) if now >= t => {
                                s.client.send_message("PUSH_REQUEST");
                                s.push_requests += 1;
                                self.counters.push_requests += 1;
                                s.next_push_request = Some(now + PUSH_REQUEST_INTERVAL);
                            }
                            Some(_) => {}
                        }
                    }
                    self.flush(idx, now);
                }
                St::Up => {
                    if now.duration_since(s.last_tx) >= s.ping {
                        let mut out = [0u8; 128];
                        if let Some(n) = s.client.seal_into(&PING_MAGIC, &mut out) {
                            match s.sock.send(&out[..n]) {
                                Ok(_) => {
                                    self.counters.pings_tx += 1;
                                    self.counters.datagrams_tx += 1;
                                    s.last_tx = now;
                                }
                                Err(_) => self.counters.send_errors += 1,
                            }
                        }
                    }
                    self.flush(idx, now);
                }
                St::Closing(t) => {
                    let age = now.duration_since(t);
                    if age >= self.linger_max || (age >= self.linger && s.client.all_acked()) {
                        self.remove(idx);
                    } else {
                        self.flush(idx, now);
                    }
                }
            }
        }
    }

    fn exit(&mut self, idx: usize, now: Instant) {
        if let Some(s) = self.slots[idx].as_mut() {
            s.client.send_message("EXIT");
            s.state = St::Closing(now);
            self.counters.exits += 1;
        }
        self.flush(idx, now);
    }

    /// Open sessions per `plan` until all completed or failed, or `deadline`.
    pub fn open(&mut self, plan: OpenPlan, deadline: Instant) -> Result<Opened> {
        self.batch += 1;
        let batch = self.batch;
        let mut o = Opened {
            requested: plan.sessions,
            ..Opened::default()
        };
        let t0 = Instant::now();
        let mut inflight: VecDeque<usize> = VecDeque::new();
        loop {
            let now = Instant::now();
            if stop_requested() || now >= deadline {
                break;
            }
            // Sessions of this batch still handshaking.
            inflight.retain(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.batch == batch && s.state == St::Handshaking)
            });
            if o.started == plan.sessions && inflight.is_empty() {
                break;
            }
            let due = if plan.rate > 0.0 {
                ((now.duration_since(t0).as_secs_f64() * plan.rate).floor() as usize + 1)
                    .min(plan.sessions)
            } else {
                plan.sessions
            };
            // Bounded per round, so replies are read between bursts.
            let mut opened_now = 0;
            while o.started < due && inflight.len() < plan.inflight && opened_now < 64 {
                let idx = self.start_session(now)?;
                o.first.get_or_insert(now);
                inflight.push_back(idx);
                o.started += 1;
                opened_now += 1;
            }
            let wait = if o.started < due && inflight.len() < plan.inflight {
                Duration::ZERO
            } else if plan.rate > 0.0 && o.started < plan.sessions {
                Duration::from_millis(1)
            } else {
                TICK
            };
            for (idx, lat) in self.pump(wait) {
                if self.slots[idx].as_ref().map(|s| s.batch) != Some(batch) {
                    continue;
                }
                o.completed += 1;
                o.latencies_ms.push(lat.as_secs_f64() * 1e3);
                let t = Instant::now();
                o.first_done.get_or_insert(t);
                if let Some(f) = o.first {
                    o.done_at_s.push(t.duration_since(f).as_secs_f64());
                }
                o.last = Some(t);
                if plan.churn {
                    self.exit(idx, Instant::now());
                }
            }
        }
        // Still handshaking at the deadline counts as failed too.
        o.failed = o.started - o.completed.min(o.started);
        o.latencies_ms.sort_by(f64::total_cmp);
        o.seconds = match (o.first, o.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => f64::NAN,
        };
        Ok(o)
    }

    /// Keep everything alive (keepalive, acks) for `d`.
    pub fn idle(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while !stop_requested() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.pump((end - now).min(TICK));
        }
    }

    /// Sessions that heard nothing from the server for longer than their pushed
    /// `ping-restart` (a stock client would restart them).
    pub fn silent_sessions(&self) -> usize {
        let now = Instant::now();
        self.iter_live()
            .filter(|s| s.state == St::Up && now.duration_since(s.last_rx) > s.ping_restart)
            .count()
    }

    /// Send sealed IPv4/UDP packets of `ip_len` bytes (IP header included) to `sink` through
    /// the first `k` sessions that are up, round-robin, as fast as possible for `d`, while the
    /// other sessions keep their keepalive. Returns `(sessions used, packets, IP bytes,
    /// send errors)`.
    pub fn traffic(
        &mut self,
        k: usize,
        d: Duration,
        ip_len: usize,
        sink: SocketAddrV4,
    ) -> (usize, u64, u64, u64) {
        let active: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|s| s.state == St::Up && s.tun_addr.is_some())
            })
            .take(k)
            .collect();
        let templates: Vec<Vec<u8>> = active
            .iter()
            .enumerate()
            .map(|(j, &i)| {
                let src = self.slots[i].as_ref().and_then(|s| s.tun_addr).expect("up");
                ipv4_udp(src, *sink.ip(), 40000 + j as u16, sink.port(), ip_len)
            })
            .collect();
        // One sendmmsg per session per round: the emulator's syscalls, not the server, would
        // otherwise bound the offered rate.
        const BATCH: usize = 32;
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; ip_len + 128]).collect();
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 0,
            })
            .collect();
        let (mut pkts, mut bytes, mut errs) = (0u64, 0u64, 0u64);
        let end = Instant::now() + d;
        let mut round = 0u64;
        if active.is_empty() {
            self.idle(d);
        }
        while !active.is_empty() {
            for (j, &i) in active.iter().enumerate() {
                let Some(s) = self.slots[i].as_mut() else {
                    continue;
                };
                let mut n = 0;
                while n < BATCH {
                    // SAFETY: iov[n] points into bufs[n], which lives (unmoved) for the loop.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(iov[n].iov_base.cast::<u8>(), ip_len + 128)
                    };
                    let Some(len) = s.client.seal_into(&templates[j], out) else {
                        break;
                    };
                    iov[n].iov_len = len;
                    n += 1;
                }
                // SAFETY: zeroed msghdrs are valid; each points at one iovec of ours.
                let mut msgs: Vec<libc::mmsghdr> = (0..n)
                    .map(|k| {
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_iov = &mut iov[k];
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                // SAFETY: a connected socket we own and `n` valid mmsghdrs.
                let sent =
                    unsafe { libc::sendmmsg(s.sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
                let sent = if sent < 0 { 0 } else { sent as u64 };
                pkts += sent;
                bytes += sent * ip_len as u64;
                errs += n as u64 - sent;
                s.last_tx = Instant::now();
            }
            round += 1;
            if round.is_multiple_of(4) {
                self.pump(Duration::ZERO);
                if Instant::now() >= end || stop_requested() {
                    break;
                }
            }
        }
        drop(bufs);
        self.counters.datagrams_tx += pkts;
        self.counters.send_errors += errs;
        (active.len(), pkts, bytes, errs)
    }

    /// EXIT on every session (up or still handshaking), paced ([`EXITS_PER_TICK`]), then
    /// answer acks until each session's linger passed (bounded by `deadline`).
    pub fn close_all(&mut self, deadline: Instant) -> usize {
        let open: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .as_ref()
                    .is_some_and(|s| matches!(s.state, St::Up | St::Handshaking))
            })
            .collect();
        // Not cut short by SIGTERM: that is how a holding emulator is told to leave.
        for chunk in open.chunks(EXITS_PER_TICK) {
            if Instant::now() >= deadline {
                break;
            }
            let now = Instant::now();
            for &idx in chunk {
                self.exit(idx, now);
            }
            self.pump(TICK);
        }
        self.drain_closing(deadline);
        open.len()
    }

    /// Run until no session is closing (bounded by `deadline`, also after SIGTERM).
    pub fn drain_closing(&mut self, deadline: Instant) {
        while self.closing() > 0 && Instant::now() < deadline {
            self.pump(TICK);
        }
    }
}

/// An IPv4/UDP packet of `len` bytes (header checksum set, UDP checksum 0 = none).
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let len = len.max(28);
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let p = ipv4_udp(
            Ipv4Addr::new(10, 100, 0, 2),
            Ipv4Addr::new(10, 0, 0, 10),
            40000,
            9,
            1400,
        );
        let h = etherparse::Ipv4HeaderSlice::from_slice(&p).unwrap();
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        assert_eq!(p.len(), 1400);
    }

    #[test]
    fn pushed_ping_values() {
        let p = "PUSH_REPLY,route 10.0.0.0 255.255.255.0,ping 10,ping-restart 60,ifconfig 10.100.0.2 255.255.128.0";
        assert_eq!(pushed_secs(p, "ping"), Some(Duration::from_secs(10)));
        assert_eq!(
            pushed_secs(p, "ping-restart"),
            Some(Duration::from_secs(60))
        );
    }
}
