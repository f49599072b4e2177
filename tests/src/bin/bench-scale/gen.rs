//! `bench-scale --emulate ...`: the load generator process (started by the benchmark inside
//! the client namespace, so its memory and CPU are never counted as the server's). It runs
//! one plan with [`tests::emulator::Emulator`] and prints `HELD <n>`, `MEASURED` and finally
//! `RESULT <json>`.
//!
//! - `hold`: open N sessions (closed loop, `--inflight` at a time, or at `--rate` per
//!   second), keep them idle; the server's RSS before/after; keepalive CPU of the server over
//!   `--rest` seconds; then, for each k of `--traffic`, sealed IPv4/UDP packets through k of
//!   them for `--traffic-secs` while the others idle (delivered bytes counted by the sink's
//!   nftables counter); then EXIT on all.
//! - `sweep`: for each offered rate, open `rate × step` sessions at that rate (at most
//!   `--inflight` handshaking), each closed with EXIT once connected; achieved rate
//!   (completions between the warm-up and the end of the step) and connect latency per step;
//!   stops after the second saturated step.
use std::{
    io::Write,
    net::{SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tests::{
    benchsys::{self as sys, CpuSample, GwSpec},
    emulator::{self, Emulator, OpenPlan, Target},
};

#[derive(Clone, Debug)]
pub struct GenOpts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tls_crypt: Option<PathBuf>,
    pub server: SocketAddr,
    pub gw: GwSpec,
    pub rss_pid: u32,
    pub plan: String,
    pub sessions: usize,
    pub rate: f64,
    pub inflight: usize,
    pub settle: f64,
    pub pause: f64,
    pub rest: f64,
    pub traffic: Vec<usize>,
    pub traffic_secs: f64,
    pub ip_len: usize,
    pub sink: SocketAddrV4,
    pub sink_ns: String,
    pub rates: Vec<f64>,
    pub step_secs: f64,
    pub handshake_timeout: f64,
    pub deadline: f64,
}

impl GenOpts {
    pub fn to_args(&self) -> Vec<String> {
        let list = |v: &[String]| v.join(",");
        let mut a: Vec<String> = vec![
            "--ca".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.cert.display().to_string(),
            "--key".into(),
            self.key.display().to_string(),
            "--server".into(),
            self.server.to_string(),
            "--gw-pid".into(),
            self.gw.pid.to_string(),
            "--gw-threads".into(),
            self.gw.threads.join(","),
            "--rss-pid".into(),
            self.rss_pid.to_string(),
            "--plan".into(),
            self.plan.clone(),
            "--sessions".into(),
            self.sessions.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
            "--settle".into(),
            self.settle.to_string(),
            "--pause".into(),
            self.pause.to_string(),
            "--rest".into(),
            self.rest.to_string(),
            "--traffic".into(),
            list(
                &self
                    .traffic
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>(),
            ),
            "--traffic-secs".into(),
            self.traffic_secs.to_string(),
            "--ip-len".into(),
            self.ip_len.to_string(),
            "--sink".into(),
            self.sink.to_string(),
            "--sink-ns".into(),
            self.sink_ns.clone(),
            "--rates".into(),
            list(&self.rates.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
            "--step-secs".into(),
            self.step_secs.to_string(),
            "--handshake-timeout".into(),
            self.handshake_timeout.to_string(),
            "--deadline".into(),
            self.deadline.to_string(),
        ];
        if let Some(t) = &self.tls_crypt {
            a.push("--tls-crypt".into());
            a.push(t.display().to_string());
        }
        a
    }
}

fn list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| x.trim().parse::<T>().map_err(Into::into))
        .collect()
}

pub fn parse(args: &[String]) -> Result<GenOpts> {
    let mut o = GenOpts {
        ca: PathBuf::new(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
        tls_crypt: None,
        server: "192.0.2.1:1194".parse()?,
        gw: GwSpec {
            pid: 0,
            threads: Vec::new(),
        },
        rss_pid: 0,
        plan: "hold".into(),
        sessions: 1,
        rate: 0.0,
        inflight: 64,
        settle: 2.0,
        pause: 2.0,
        rest: 10.0,
        traffic: Vec::new(),
        traffic_secs: 5.0,
        ip_len: 1400,
        sink: "10.0.0.10:9".parse()?,
        sink_ns: String::new(),
        rates: Vec::new(),
        step_secs: 4.0,
        handshake_timeout: 30.0,
        deadline: 300.0,
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
            "--gw-pid" => o.gw.pid = val()?.parse()?,
            "--gw-threads" => o.gw.threads = list(val()?)?,
            "--rss-pid" => o.rss_pid = val()?.parse()?,
            "--plan" => o.plan = val()?.clone(),
            "--sessions" => o.sessions = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--inflight" => o.inflight = val()?.parse()?,
            "--settle" => o.settle = val()?.parse()?,
            "--pause" => o.pause = val()?.parse()?,
            "--rest" => o.rest = val()?.parse()?,
            "--traffic" => o.traffic = list(val()?)?,
            "--traffic-secs" => o.traffic_secs = val()?.parse()?,
            "--ip-len" => o.ip_len = val()?.parse()?,
            "--sink" => o.sink = val()?.parse()?,
            "--sink-ns" => o.sink_ns = val()?.clone(),
            "--rates" => o.rates = list(val()?)?,
            "--step-secs" => o.step_secs = val()?.parse()?,
            "--handshake-timeout" => o.handshake_timeout = val()?.parse()?,
            "--deadline" => o.deadline = val()?.parse()?,
            other => bail!("emulator: unknown argument {other:?}"),
        }
    }
    if o.sessions == 0 || o.inflight == 0 {
        bail!("--sessions and --inflight must be positive");
    }
    Ok(o)
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

pub fn run(o: GenOpts) -> Result<()> {
    emulator::install_signal_handlers();
    let limit = emulator::raise_nofile((o.sessions as u64 + 4096).max(65_536));
    if (limit as usize) < o.sessions + 64 {
        bail!(
            "{} sessions need as many sockets; the open-file limit is {limit}",
            o.sessions
        );
    }
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs_f64(o.deadline);
    let mut emu = Emulator::new(Target {
        ca: o.ca.clone(),
        cert: o.cert.clone(),
        key: o.key.clone(),
        tls_crypt: o.tls_crypt.clone(),
        server: o.server,
        sources: Vec::new(),
    })?;
    emu.handshake_timeout = Duration::from_secs_f64(o.handshake_timeout);
    let mut result = match o.plan.as_str() {
        "hold" => hold(&mut emu, &o, deadline)?,
        "sweep" => sweep(&mut emu, &o, deadline)?,
        p => bail!("unknown plan {p:?}"),
    };
    result["plan"] = json!(o.plan);
    result["nofile_limit"] = json!(limit);
    result["counters"] = emu.counters.to_json();
    result["generator_cpu_s"] = json!(sys::own_cpu_seconds());
    result["generator_peak_rss_kib"] = json!(peak_rss_kib());
    result["wall_seconds"] = json!(begin.elapsed().as_secs_f64());
    result["interrupted"] = json!(emulator::stop_requested());
    say(&format!("RESULT {result}"));
    Ok(())
}

fn peak_rss_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn hold(emu: &mut Emulator, o: &GenOpts, deadline: Instant) -> Result<Value> {
    let hz = sys::cpu_mhz().unwrap_or(f64::NAN) * 1e6;
    let rss0 = sys::rss_kib(o.rss_pid);
    let c_open0 = CpuSample::take(&o.gw);
    let g_open0 = sys::own_cpu_seconds();
    let opened = emu.open(
        OpenPlan {
            sessions: o.sessions,
            rate: o.rate,
            inflight: o.inflight,
            churn: false,
        },
        deadline,
    )?;
    let open_cpu = CpuSample::take(&o.gw).since(&c_open0);
    let g_open = sys::own_cpu_seconds() - g_open0;
    let up = emu.up();
    say(&format!("HELD {up}"));
    emu.idle(Duration::from_secs_f64(o.settle));
    let rss1 = sys::rss_kib(o.rss_pid);
    say("MEASURED");
    // The parent asks the server for its session count now; that stays out of the window.
    emu.idle(Duration::from_secs_f64(o.pause));

    // Keepalive at rest.
    let (pings_tx0, pings_rx0, dg_rx0) = (
        emu.counters.pings_tx,
        emu.counters.pings_rx,
        emu.counters.datagrams_rx,
    );
    let c0 = CpuSample::take(&o.gw);
    let g0 = sys::own_cpu_seconds();
    let t0 = Instant::now();
    emu.idle(Duration::from_secs_f64(o.rest));
    let window = t0.elapsed().as_secs_f64();
    let rest_cpu = CpuSample::take(&o.gw).since(&c0);
    let g_rest = sys::own_cpu_seconds() - g0;
    let silent = emu.silent_sessions();
    let rest = json!({
        "window_s": window,
        "sessions_up": emu.up(),
        "server_cpu_s": rest_cpu.gateway_s,
        "server_core_fraction": rest_cpu.gateway_s / window,
        "machine_core_fraction": rest_cpu.busy_s / window,
        "server_cpu_ms_per_s_per_1000_sessions": rest_cpu.gateway_s / window * 1e3 / (emu.up().max(1) as f64 / 1000.0),
        "machine": rest_cpu.to_json(),
        "generator_cpu_s": g_rest,
        "pings_sent": emu.counters.pings_tx - pings_tx0,
        "pings_received": emu.counters.pings_rx - pings_rx0,
        "datagrams_received": emu.counters.datagrams_rx - dg_rx0,
        "sessions_silent_past_ping_restart": silent,
    });

    // Traffic through subsets.
    let mut traffic = Vec::new();
    for &k in &o.traffic {
        if Instant::now() >= deadline || emulator::stop_requested() {
            break;
        }
        let s0 = sys::sink_counter(&o.sink_ns);
        let c0 = CpuSample::take(&o.gw);
        let g0 = sys::own_cpu_seconds();
        let t0 = Instant::now();
        let (used, pkts, bytes, errs) =
            emu.traffic(k, Duration::from_secs_f64(o.traffic_secs), o.ip_len, o.sink);
        let secs = t0.elapsed().as_secs_f64();
        let d = CpuSample::take(&o.gw).since(&c0);
        let g = sys::own_cpu_seconds() - g0;
        // Let the server's queues empty before reading the sink.
        emu.idle(Duration::from_millis(300));
        let s1 = sys::sink_counter(&o.sink_ns);
        let (dp, db) = match (s0, s1) {
            (Some(a), Some(b)) => ((b.0 - a.0) as f64, (b.1 - a.1) as f64),
            _ => (f64::NAN, f64::NAN),
        };
        traffic.push(json!({
            "active_sessions": used,
            "requested": k,
            "seconds": secs,
            "ip_packet_bytes": o.ip_len,
            "sent_packets": pkts,
            "sent_bytes": bytes,
            "send_errors": errs,
            "delivered_packets": dp,
            "delivered_bytes": db,
            "delivered_fraction": dp / pkts as f64,
            "throughput_bits_per_second": db * 8.0 / secs,
            "packets_per_second": dp / secs,
            "server_cpu_s": d.gateway_s,
            "server_core_fraction": d.gateway_s / secs,
            "server_cycles_per_byte": d.gateway_s * hz / db,
            "machine_cycles_per_byte": d.busy_s * hz / db,
            "machine": d.to_json(),
            "generator_cpu_s": g,
        }));
    }
    let up_before_close = emu.up();
    let closed = emu.close_all(deadline);
    Ok(json!({
        "open": opened.to_json(),
        "open_server_cpu_s": open_cpu.gateway_s,
        "open_generator_cpu_s": g_open,
        "open_machine": open_cpu.to_json(),
        "sessions_up": up,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_per_session_kib": match (rss0, rss1) {
            (Some(a), Some(b)) if up > 0 => json!((b as f64 - a as f64) / up as f64),
            _ => Value::Null,
        },
        "rest": rest,
        "traffic": traffic,
        "sessions_up_before_close": up_before_close,
        "exits_sent": closed,
        "hz": hz,
    }))
}

fn sweep(emu: &mut Emulator, o: &GenOpts, deadline: Instant) -> Result<Value> {
    let mut steps = Vec::new();
    let mut saturated_at = Value::Null;
    for &rate in &o.rates {
        if Instant::now() >= deadline || emulator::stop_requested() {
            break;
        }
        let n = ((rate * o.step_secs).round() as usize).max(1);
        let c0 = CpuSample::take(&o.gw);
        let g0 = sys::own_cpu_seconds();
        let t0 = Instant::now();
        let opened = emu.open(
            OpenPlan {
                sessions: n,
                rate,
                inflight: o.inflight,
                churn: true,
            },
            deadline,
        )?;
        let wall = t0.elapsed().as_secs_f64();
        let d = CpuSample::take(&o.gw).since(&c0);
        let g = sys::own_cpu_seconds() - g0;
        // Steady state: the completions of the sessions started after a warm-up, i.e. the
        // window [warm, step] shifted by the median connect latency. A server whose latency
        // stays constant keeps up with the offered rate however long each connect takes; one
        // that cannot keep up completes at its capacity.
        let warm = (o.step_secs / 4.0).min(2.0);
        let l50 = emulator::nearest_rank(&opened.latencies_ms, 50.0) / 1e3;
        let l50 = if l50.is_finite() { l50 } else { 0.0 };
        let achieved = opened.window_rate(warm + l50, o.step_secs + l50);
        let failed_frac = opened.failed as f64 / opened.started.max(1) as f64;
        // NaN (fewer than two completions) counts as saturated.
        let kept_up = achieved.is_finite() && achieved >= 0.9 * rate;
        let saturated = !kept_up || failed_frac > 0.01;
        let mut step = opened.to_json();
        step["offered_per_s"] = json!(rate);
        step["achieved_per_s"] = json!(achieved);
        step["warmup_s"] = json!(warm);
        step["wall_s"] = json!(wall);
        step["server_cpu_s"] = json!(d.gateway_s);
        step["server_core_fraction"] = json!(d.gateway_s / wall);
        step["server_cpu_ms_per_handshake"] = json!(d.gateway_s * 1e3 / opened.completed as f64);
        step["generator_cpu_s"] = json!(g);
        step["generator_core_fraction"] = json!(g / wall);
        step["machine_core_fraction"] = json!(d.busy_s / wall);
        step["machine"] = d.to_json();
        step["saturated"] = json!(saturated);
        steps.push(step);
        // Closed sessions linger (answering acks) before the next step.
        emu.drain_closing(deadline);
        // One more step after the first saturated one: on a shared machine a single step
        // can fall short for reasons that are not the server's.
        if saturated {
            if saturated_at.is_null() {
                saturated_at = json!(rate);
            } else {
                break;
            }
        }
    }
    let best = steps
        .iter()
        .map(|s| s["achieved_per_s"].as_f64().unwrap_or(0.0))
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    // p50/p99 at the highest achieved rate's step.
    let at_best = steps
        .iter()
        .find(|s| s["achieved_per_s"].as_f64() == Some(best))
        .cloned()
        .unwrap_or(Value::Null);
    emu.close_all(deadline);
    Ok(json!({
        "steps": steps,
        "saturated_at_offered_per_s": saturated_at,
        "max_achieved_per_s": best,
        "at_max": {
            "offered_per_s": at_best["offered_per_s"],
            "latency_ms": at_best["latency_ms"],
            "server_core_fraction": at_best["server_core_fraction"],
            "machine_core_fraction": at_best["machine_core_fraction"],
        },
    }))
}
