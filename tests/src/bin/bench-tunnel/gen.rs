//! The handshake load generator: `bench-tunnel --handshake-gen ...`, started by the benchmark
//! as its own process inside a client namespace (so its memory and CPU are never counted as
//! the server's, whichever server it loads).
//!
//! It drives `portcullis::openvpn::testclient::TestClient`s (the real OpenVPN protocol:
//! tls-crypt, HMAC-cookie resets, TLS, key-method 2, PUSH_REPLY) over real UDP sockets, one
//! socket per session, `inflight` handshakes at a time, until `total` have completed.
//!
//! - rate mode: a session that got its PUSH_REPLY (with an `ifconfig`) counts as completed,
//!   sends `EXIT` (the server frees it; the stock server does so 5 s later) and is dropped
//!   after 2 s of answering acks.
//! - hold mode (`--hold`): completed sessions stay open (their acks answered, nothing else
//!   sent); once all are connected it prints `HELD <n>` and waits for SIGTERM (or `--hold-max`),
//!   then sends `EXIT` on every session.
//!
//! The last line it prints is `RESULT <json>`. It samples the server's CPU time (from
//! /proc, pid and thread names given on the command line) and the machine's at the first
//! reset and at the last completion, so the interval is exactly the handshakes'.
//! Every wait is bounded by `--deadline`.
use std::{
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use portcullis::openvpn::{
    testclient::{client_tls, TestClient},
    tls_crypt::StaticKey,
};
use serde_json::json;

use crate::sys::{self, CpuSample, GwSpec};

/// A session's handshake must finish within this (the stock server's hand-window is 60 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a session that sent `EXIT` keeps answering acks before its socket closes.
const LINGER: Duration = Duration::from_secs(2);

pub struct GenOpts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tls_crypt: Option<PathBuf>,
    pub server: SocketAddr,
    pub total: usize,
    pub inflight: usize,
    pub hold: bool,
    pub deadline: Duration,
    pub hold_max: Duration,
    pub gw: GwSpec,
}

impl GenOpts {
    /// The command line for [`parse`] (after the program name and `--handshake-gen`).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--ca".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.cert.display().to_string(),
            "--key".into(),
            self.key.display().to_string(),
            "--server".into(),
            self.server.to_string(),
            "--total".into(),
            self.total.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
            "--deadline".into(),
            self.deadline.as_secs_f64().to_string(),
            "--hold-max".into(),
            self.hold_max.as_secs_f64().to_string(),
            "--gw-pid".into(),
            self.gw.pid.to_string(),
            "--gw-threads".into(),
            self.gw.threads.join(","),
        ];
        if let Some(t) = &self.tls_crypt {
            v.push("--tls-crypt".into());
            v.push(t.display().to_string());
        }
        if self.hold {
            v.push("--hold".into());
        }
        v
    }
}

pub fn parse(args: &[String]) -> Result<GenOpts> {
    let mut o = GenOpts {
        ca: PathBuf::new(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
        tls_crypt: None,
        server: "192.0.2.1:1194".parse().expect("literal"),
        total: 1,
        inflight: 1,
        hold: false,
        deadline: Duration::from_secs(60),
        hold_max: Duration::from_secs(60),
        gw: GwSpec {
            pid: 0,
            threads: Vec::new(),
        },
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--ca" => o.ca = val()?.into(),
            "--cert" => o.cert = val()?.into(),
            "--key" => o.key = val()?.into(),
            "--tls-crypt" => o.tls_crypt = Some(val()?.into()),
            "--server" => o.server = val()?.parse()?,
            "--total" => o.total = val()?.parse()?,
            "--inflight" => o.inflight = val()?.parse()?,
            "--deadline" => o.deadline = Duration::from_secs_f64(val()?.parse()?),
            "--hold-max" => o.hold_max = Duration::from_secs_f64(val()?.parse()?),
            "--gw-pid" => o.gw.pid = val()?.parse()?,
            "--gw-threads" => {
                o.gw.threads = val()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--hold" => o.hold = true,
            other => bail!("handshake generator: unknown argument {other:?}"),
        }
    }
    if o.total == 0 || o.inflight == 0 {
        bail!("--total and --inflight must be positive");
    }
    Ok(o)
}

enum State {
    Handshaking,
    /// Hold mode: connected, kept open.
    Held,
    /// Sent EXIT at this time; answering acks until [`LINGER`] passed.
    Closing(Instant),
}

struct Slot {
    client: TestClient,
    sock: UdpSocket,
    started: Instant,
    state: State,
}

fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[k.clamp(1, sorted.len()) - 1]
}

fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn send_all(slot: &mut Slot, now: Instant) -> usize {
    let mut n = 0;
    for p in slot.client.poll_transmit(now) {
        if slot.sock.send(&p).is_ok() {
            n += 1;
        }
    }
    n
}

pub fn run(o: GenOpts) -> Result<()> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let tls = client_tls(&read(&o.ca)?, &read(&o.cert)?, &read(&o.key)?);
    let tc = match &o.tls_crypt {
        Some(p) => Some(
            StaticKey::parse(&read(p)?)
                .map_err(|e| anyhow::anyhow!("tls-crypt key {}: {e:?}", p.display()))?,
        ),
        None => None,
    };
    let begin = Instant::now();
    let deadline = begin + o.deadline;
    let inflight = o.inflight.min(o.total);
    let mut slots: Vec<Slot> = Vec::with_capacity(o.total.min(4096));
    let (mut started, mut completed, mut failed, mut timed_out, mut no_ifconfig) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut auth_failed: Vec<String> = Vec::new();
    // (time, server and machine CPU, the generator's own CPU seconds)
    let mut first: Option<(Instant, CpuSample, f64)> = None;
    let mut last: Option<(Instant, CpuSample, f64)> = None;
    let mut held_at: Option<Instant> = None;
    let mut packets_tx = 0usize;
    let mut packets_rx = 0usize;
    let mut buf = vec![0u8; 4096];
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut iterations = 0u64;
    loop {
        iterations += 1;
        let now = Instant::now();
        if crate::stop_requested() || now >= deadline {
            break;
        }
        let handshaking = slots
            .iter()
            .filter(|s| matches!(s.state, State::Handshaking))
            .count();
        let closing = slots
            .iter()
            .filter(|s| matches!(s.state, State::Closing(_)))
            .count();
        if !o.hold && completed + failed == o.total && closing == 0 {
            break;
        }
        if o.hold {
            if let Some(t) = held_at {
                if now >= t + o.hold_max {
                    break;
                }
            } else if completed + failed == o.total {
                // Everyone answered: announce once (the parent measures now).
                held_at = Some(now);
                println!("HELD {completed}");
            }
        }
        // Refill.
        let mut active = handshaking;
        while active < inflight && started < o.total {
            let sock = UdpSocket::bind("0.0.0.0:0").context("binding a generator socket")?;
            sock.connect(o.server)?;
            sock.set_nonblocking(true)?;
            let mut slot = Slot {
                client: TestClient::new(tls.clone(), "server", tc.as_ref()),
                sock,
                started: now,
                state: State::Handshaking,
            };
            if first.is_none() {
                first = Some((now, CpuSample::take(&o.gw), own_cpu_seconds()));
            }
            packets_tx += send_all(&mut slot, now);
            slots.push(slot);
            started += 1;
            active += 1;
        }
        // Wait for packets (5 ms at most: retransmit timers are checked every round).
        pfds.clear();
        pfds.extend(slots.iter().map(|s| libc::pollfd {
            fd: s.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: pfds is a valid array of pollfd of the given length.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 5) };
        let now = Instant::now();
        for (slot, pfd) in slots.iter_mut().zip(&pfds) {
            if pfd.revents & libc::POLLIN != 0 {
                // Bounded: at most 64 datagrams per socket per round.
                for _ in 0..64 {
                    match slot.sock.recv(&mut buf) {
                        Ok(n) => {
                            packets_rx += 1;
                            let _ = slot.client.on_packet(&buf[..n], now);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
            }
            packets_tx += send_all(slot, now);
        }
        // Completions, failures, timeouts.
        let mut i = 0;
        while i < slots.len() {
            let s = &mut slots[i];
            let mut remove = false;
            match s.state {
                State::Handshaking => {
                    if s.client.push_reply.is_some() {
                        if s.client.pushed_addr().is_some() {
                            completed += 1;
                            latencies_ms.push(now.duration_since(s.started).as_secs_f64() * 1e3);
                            last = Some((now, CpuSample::take(&o.gw), own_cpu_seconds()));
                        } else {
                            // A PUSH_REPLY without an address (pool exhausted): not a usable
                            // session.
                            failed += 1;
                            no_ifconfig += 1;
                        }
                        if o.hold {
                            s.state = State::Held;
                        } else {
                            s.client.send_message("EXIT");
                            packets_tx += send_all(s, now);
                            s.state = State::Closing(now);
                        }
                    } else if let Some(msg) = s.client.auth_failed.take() {
                        failed += 1;
                        if auth_failed.len() < 5 {
                            auth_failed.push(msg);
                        }
                        remove = true;
                    } else if now.duration_since(s.started) > HANDSHAKE_TIMEOUT {
                        failed += 1;
                        timed_out += 1;
                        remove = true;
                    }
                }
                State::Held => {}
                State::Closing(t) => remove = now.duration_since(t) >= LINGER,
            }
            if remove {
                slots.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
    // Leave: every session still open says EXIT (hold mode, or an interrupted run).
    let now = Instant::now();
    let mut exited = 0;
    for s in slots.iter_mut() {
        if matches!(s.state, State::Held | State::Handshaking) {
            s.client.send_message("EXIT");
            packets_tx += send_all(s, now);
            exited += 1;
        }
    }
    // Answer the acks of those EXITs for a moment (bounded).
    if exited > 0 {
        let end = Instant::now() + Duration::from_millis(500);
        while Instant::now() < end {
            let now = Instant::now();
            for s in slots.iter_mut() {
                while let Ok(n) = s.sock.recv(&mut buf) {
                    let _ = s.client.on_packet(&buf[..n], now);
                }
                send_all(s, now);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    let (seconds, server_cpu_s, gen_cpu_s, machine) = match (&first, &last) {
        (Some((t0, c0, g0)), Some((t1, c1, g1))) => {
            let d = c1.since(c0);
            (
                t1.duration_since(*t0).as_secs_f64(),
                d.gateway_s,
                g1 - g0,
                d.to_json(),
            )
        }
        _ => (f64::NAN, f64::NAN, f64::NAN, serde_json::Value::Null),
    };
    let result = json!({
        "mode": if o.hold { "hold" } else { "rate" },
        "total": o.total,
        "inflight": inflight,
        "started": started,
        "completed": completed,
        "failed": failed,
        "timed_out": timed_out,
        "push_reply_without_ifconfig": no_ifconfig,
        "auth_failed": auth_failed,
        "seconds": seconds,
        "rate_per_s": completed as f64 / seconds,
        "latency_ms": {
            "median": nearest_rank(&latencies_ms, 50.0),
            "p90": nearest_rank(&latencies_ms, 90.0),
            "p99": nearest_rank(&latencies_ms, 99.0),
            "max": latencies_ms.last().copied().unwrap_or(f64::NAN),
        },
        "server_cpu_s": server_cpu_s,
        "server_cpu_ms_per_handshake": server_cpu_s * 1e3 / completed as f64,
        "handshakes_per_server_cpu_second": completed as f64 / server_cpu_s,
        "server_busy_fraction": server_cpu_s / seconds,
        "generator_cpu_window_s": gen_cpu_s,
        "generator_busy_fraction": gen_cpu_s / seconds,
        "machine_cpu": machine,
        "generator_cpu_s": own_cpu_seconds(),
        "generator_rounds": iterations,
        "packets_sent": packets_tx,
        "packets_received": packets_rx,
        "held_seconds": held_at.map(|t| t.elapsed().as_secs_f64()),
        "interrupted": crate::stop_requested(),
        "wall_seconds": begin.elapsed().as_secs_f64(),
    });
    // Sanity for the log: the CPU figures depend on reading the server's /proc entries.
    if !sys::pid_alive(o.gw.pid) {
        eprintln!("handshake generator: server pid {} not found", o.gw.pid);
    }
    println!("RESULT {result}");
    Ok(())
}
