//! The handshake load generator: `bench-tunnel --handshake-gen ...`, started by the benchmark
//! as its own process inside a client namespace (so its memory and CPU are never counted as
//! the server's, whichever server it loads).
//!
//! It is the many-session client emulator of the scale suite (`tests::emulator`: the real
//! OpenVPN protocol with tls-crypt, HMAC-cookie resets, TLS, key-method 2, PUSH_REPLY, over
//! one UDP socket per session, epoll), `inflight` handshakes at a time, until `total` have
//! completed.
//!
//! - rate mode: a session that got its PUSH_REPLY (with an `ifconfig`) counts as completed,
//!   sends `EXIT` (the server frees it; the stock server does so 5 s later) and is dropped
//!   after the emulator's linger of answering acks.
//! - hold mode (`--hold`): completed sessions stay open (their acks answered, nothing else
//!   sent); once all are connected it prints `HELD <n>` and waits for SIGTERM (or `--hold-max`),
//!   then sends `EXIT` on every session.
//!
//! The last line it prints is `RESULT <json>`. It samples the server's CPU time (from
//! /proc, pid and thread names given on the command line) and the machine's at the first
//! reset and at the last completion, so the interval is exactly the handshakes'.
//! Every wait is bounded by `--deadline`.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tests::emulator::{self, nearest_rank, Emulator, OpenPlan, Target};

use crate::sys::{self, CpuSample, GwSpec};

/// A session's handshake must finish within this (the stock server's hand-window is 60 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

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

pub fn run(o: GenOpts) -> Result<()> {
    emulator::install_signal_handlers();
    emulator::raise_nofile((o.total as u64 + 1024).max(4096));
    let begin = Instant::now();
    let deadline = begin + o.deadline;
    let mut emu = Emulator::new(Target {
        ca: o.ca.clone(),
        cert: o.cert.clone(),
        key: o.key.clone(),
        tls_crypt: o.tls_crypt.clone(),
        server: o.server,
        sources: Vec::new(),
    })?;
    emu.handshake_timeout = HANDSHAKE_TIMEOUT;
    let inflight = o.inflight.min(o.total);
    // The server's CPU over the handshakes: from the first reset to when the last session
    // completed (or failed).
    let c0 = CpuSample::take(&o.gw);
    let g0 = sys::own_cpu_seconds();
    let opened = emu.open(
        OpenPlan {
            sessions: o.total,
            rate: 0.0,
            inflight,
            churn: !o.hold,
        },
        deadline,
    )?;
    let c1 = CpuSample::take(&o.gw);
    let g1 = sys::own_cpu_seconds();
    let mut held_at = None;
    if o.hold && !emulator::stop_requested() {
        // Everyone answered: announce once (the parent measures now), then stay until
        // SIGTERM or --hold-max.
        println!("HELD {}", emu.up());
        held_at = Some(Instant::now());
        emu.idle(
            o.hold_max
                .min(deadline.saturating_duration_since(Instant::now())),
        );
    } else {
        emu.drain_closing(deadline);
    }
    // Leave: every session still open says EXIT; acks are answered for a moment (the
    // parent's stop allows 3 s).
    emu.close_all(Instant::now() + Duration::from_secs(1));
    let d = c1.since(&c0);
    let seconds = opened.seconds;
    let completed = opened.completed;
    let c = &emu.counters;
    let result = json!({
        "mode": if o.hold { "hold" } else { "rate" },
        "total": o.total,
        "inflight": inflight,
        "started": opened.started,
        "completed": completed,
        "failed": opened.failed,
        "timed_out": c.timed_out,
        "push_reply_without_ifconfig": c.no_ifconfig,
        "auth_failed": c.server_messages,
        "seconds": seconds,
        "rate_per_s": completed as f64 / seconds,
        "latency_ms": {
            "median": nearest_rank(&opened.latencies_ms, 50.0),
            "p90": nearest_rank(&opened.latencies_ms, 90.0),
            "p99": nearest_rank(&opened.latencies_ms, 99.0),
            "max": opened.latencies_ms.last().copied().unwrap_or(f64::NAN),
        },
        "server_cpu_s": d.gateway_s,
        "server_cpu_ms_per_handshake": d.gateway_s * 1e3 / completed as f64,
        "handshakes_per_server_cpu_second": completed as f64 / d.gateway_s,
        "server_busy_fraction": d.gateway_s / seconds,
        "generator_cpu_window_s": g1 - g0,
        "generator_busy_fraction": (g1 - g0) / seconds,
        "machine_cpu": d.to_json(),
        "generator_cpu_s": sys::own_cpu_seconds(),
        "packets_sent": c.datagrams_tx,
        "packets_received": c.datagrams_rx,
        "push_requests_sent": c.push_requests,
        "held_seconds": held_at.map(|t: Instant| t.elapsed().as_secs_f64()),
        "interrupted": emulator::stop_requested(),
        "wall_seconds": begin.elapsed().as_secs_f64(),
    });
    // Sanity for the log: the CPU figures depend on reading the server's /proc entries.
    if !sys::pid_alive(o.gw.pid) {
        eprintln!("handshake generator: server pid {} not found", o.gw.pid);
    }
    println!("RESULT {result}");
    Ok(())
}
