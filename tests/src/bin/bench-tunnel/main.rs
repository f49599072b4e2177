//! `bench-tunnel`: the tunnel benchmark behind `cargo xtask bench tunnel`.
//!
//! ```text
//! bench-tunnel [--quick] [--out DIR]
//! ```
//!
//! In one run, on the same machine and topology, with the same stock `openvpn` 2.6 clients,
//! cipher (AES-256-GCM) and transport (UDP, tls-crypt): first the stock `openvpn --server`
//! (no DCO; `tests::openvpn::Lab::stock`), then Portcullis (our in-process tunnel in front of
//! the XDP data path; `tests::tunnel::TunnelLab`). For each: memory per connected session,
//! handshakes per second (an in-process OpenVPN client, `TestClient`, run as a separate
//! load-generator process), time-to-connected of a stock client, ICMP round-trip times idle
//! and under load, iperf3 throughput with one and several clients (upload, and download in
//! the full run) and the gateway's CPU per byte. Writes `tunnel.json`, `tunnel.md` and
//! `tunnel.svg` to DIR (default `target/bench`). Needs root. See docs/benchmarks.md.
//!
//! All traffic stays inside the namespaces the harness creates; every loop and wait is
//! bounded; processes, namespaces and files are removed on exit, on error and on Ctrl-C
//! (RAII guards of the harness; `cargo xtask cleanup` removes strays if the process is
//! killed outright).
mod gen;
mod report;
use tests::benchreport::{first_line_of, read_trim};
use tests::benchsys as sys;

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, AtomicU16, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tests::{
    gateway::SERVER,
    openvpn::{
        iperf3_client, iperf3_server, ping, ClientConfig, IperfResult, Lab, LabPki, OvpnClient,
        Proc, Proto, StockServerConfig, TempDir, DEFAULT_CLIENTS, OVPN_PORT, UNDERLAY_GW,
    },
    tunnel::{TunnelLab, TunnelOpts},
    NetNs,
};

use crate::sys::{CpuSample, GwSpec, NsDrops, PerfRun, PerfTarget};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// True after SIGINT/SIGTERM: loops check it and unwind, so cleanup runs.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

fn check_stop() -> Result<()> {
    if stop_requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// Targets from the issue: Portcullis / stock.
const TARGET_THROUGHPUT: f64 = 3.0;
const TARGET_CYCLES_PER_BYTE: f64 = 1.0 / 3.0;
const TARGET_HANDSHAKES: f64 = 5.0;
const IPERF_PORT: u16 = 5201;
/// How long a stock client may take to connect (the host is shared with other builds).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// What a stock client logs once its tunnel is up.
const CONNECTED: &str = "Initialization Sequence Completed";
/// The stock server's pool, widened from the harness's /24 (see `stock_config`).
const STOCK_POOL_NETMASK: &str = "255.255.248.0";

struct Args {
    quick: bool,
    out: PathBuf,
    handshakes: Option<usize>,
    inflight: Option<Vec<usize>>,
    /// Only rewrite tunnel.md and tunnel.svg from this tunnel.json.
    render: Option<PathBuf>,
}

#[derive(Clone)]
struct Settings {
    iperf_secs: u32,
    client_counts: Vec<usize>,
    /// `false` = upload (client → server), `true` = download (`iperf3 -R`).
    directions: Vec<bool>,
    handshakes: usize,
    /// Handshake-rate points: sessions in flight.
    inflight: Vec<usize>,
    /// Sessions in flight while the memory test connects its sessions.
    memory_inflight: usize,
    warmup_handshakes: usize,
    memory_sessions: usize,
    /// Connect/disconnect cycles of one stock client, timed.
    connect_samples: usize,
    ping_count: u16,
    ping_interval: Duration,
    gen_deadline: Duration,
}

impl Settings {
    fn max_clients(&self) -> usize {
        self.client_counts.iter().copied().max().unwrap_or(1)
    }

    fn to_json(&self) -> Value {
        json!({
            "transport": "UDP (udp4), tls-crypt, AES-256-GCM data channel",
            "iperf3_seconds": self.iperf_secs,
            "iperf3_streams_per_client": 1,
            "client_counts": self.client_counts,
            "directions": self.directions.iter().map(|r| dir_name(*r)).collect::<Vec<_>>(),
            "handshakes_total": self.handshakes,
            "handshakes_in_flight": self.inflight.iter().map(|n| (*n).min(self.handshakes)).collect::<Vec<_>>(),
            "memory_sessions_in_flight": self.memory_inflight,
            "warmup_handshakes": self.warmup_handshakes,
            "memory_sessions": self.memory_sessions,
            "connect_samples": self.connect_samples,
            "ping_count": self.ping_count,
            "ping_interval_ms": self.ping_interval.as_millis() as u64,
            "generator_deadline_s": self.gen_deadline.as_secs_f64(),
        })
    }
}

fn dir_name(reverse: bool) -> &'static str {
    if reverse {
        "download"
    } else {
        "upload"
    }
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("target/bench"),
        handshakes: None,
        inflight: None,
        render: None,
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = it.next().context("--out needs a directory")?.into(),
            "--render" => {
                a.render = Some(it.next().context("--render needs a tunnel.json")?.into())
            }
            "--handshakes" => {
                a.handshakes = Some(it.next().context("--handshakes needs a count")?.parse()?)
            }
            "--inflight" => {
                a.inflight = Some(
                    it.next()
                        .context("--inflight needs counts (e.g. 16,64)")?
                        .split(',')
                        .map(|x| x.trim().parse::<usize>().map(|n| n.max(1)))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench-tunnel [--quick] [--out DIR] [--handshakes N] [--inflight N[,N...]]\n       \
                     bench-tunnel --render DIR/tunnel.json [--out DIR]\n\n\
                     Tunnel benchmark (needs root): Portcullis vs the stock `openvpn --server`,\n\
                     same stock openvpn 2.6 clients, AES-256-GCM over UDP: iperf3 throughput,\n\
                     gateway CPU per byte, latency under load, handshakes per second, memory per\n\
                     session. Writes DIR/tunnel.{{json,md,svg}} (default DIR: target/bench).\n\
                     --quick: short runs (under a minute) whose figures only show that the\n\
                     harness works. --handshakes, --inflight: the handshake-rate test's total\n\
                     and concurrencies (default 300 and 16,64,200; --quick 30 and 64).\n\
                     --render: rewrite tunnel.md and tunnel.svg from an existing tunnel.json."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let argv: Vec<String> = std::env::args().collect();
    // The load generator: this same program, started in a client namespace.
    if argv.get(1).map(String::as_str) == Some("--handshake-gen") {
        return match gen::parse(&argv[2..]).and_then(gen::run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("handshake generator: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match parse_args(&argv[1..]).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-tunnel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The machine, with the iperf3 version this suite also depends on.
fn machine() -> Value {
    let mut m = tests::benchreport::machine();
    m["iperf3_version"] = json!(first_line_of(&["iperf3", "--version"]));
    m
}

/// How cycles are obtained: `perf stat -e cycles` if the machine counts them, else CPU
/// seconds × the clock from /proc/cpuinfo.
#[derive(Clone)]
struct Cycles {
    perf: bool,
    hz: f64,
    method: String,
    probe: String,
}

static PING_ID: AtomicU16 = AtomicU16::new(0);

fn ping_id() -> u16 {
    (std::process::id() as u16).wrapping_mul(31) ^ PING_ID.fetch_add(1, Ordering::Relaxed)
}

/// One server under test, as the measurements see it.
struct Side<'a> {
    name: &'static str,
    /// Underlay client namespaces (openvpn clients, iperf3 clients, the generator in [0]).
    clients: Vec<&'a NetNs>,
    /// The private network namespace (10.0.0.10: iperf3 servers, ping target).
    private: &'a NetNs,
    /// The gateway namespace (where the server's UDP socket and tun/TAP live).
    gw_ns: &'a NetNs,
    pki: &'a LabPki,
    gw: GwSpec,
    /// The process whose RSS is the server's.
    rss_pid: u32,
    /// `(sessions, established sessions)` as the server reports them.
    sessions: &'a dyn Fn() -> Option<(usize, usize)>,
    tmp: &'a Path,
}

/// A generator run: `total` handshakes; `hold` keeps them connected until `during` has run.
fn run_generator(
    side: &Side,
    s: &Settings,
    total: usize,
    inflight: usize,
    hold: bool,
    tag: &str,
    during: impl FnOnce() -> Value,
) -> Result<(Value, Value)> {
    check_stop()?;
    let opts = gen::GenOpts {
        ca: side.pki.ca.clone(),
        cert: side.pki.client(DEFAULT_CLIENTS[0]).cert.clone(),
        key: side.pki.client(DEFAULT_CLIENTS[0]).key.clone(),
        tls_crypt: Some(side.pki.tls_crypt.clone()),
        server: SocketAddr::V4(SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT)),
        total,
        inflight: inflight.min(total),
        hold,
        deadline: s.gen_deadline,
        hold_max: Duration::from_secs(30),
        gw: side.gw.clone(),
    };
    let exe = std::env::current_exe().context("locating this program")?;
    let mut argv: Vec<String> = vec![exe.display().to_string(), "--handshake-gen".into()];
    argv.extend(opts.to_args());
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let log = side.tmp.join(format!("gen-{}-{tag}.log", side.name));
    let proc = Proc::spawn(side.clients[0], &argv_ref, &log, "handshake generator");
    let limit = s.gen_deadline + Duration::from_secs(10);
    let mut during_out = Value::Null;
    if hold {
        match proc.wait_log_or_exit("HELD ", limit) {
            Ok(()) => during_out = during(),
            Err(e) => eprintln!("bench-tunnel: {}: generator did not hold: {e}", side.name),
        }
        proc.stop();
    } else {
        let _ = proc.wait_log_or_exit("RESULT ", limit);
        proc.stop();
    }
    let text = proc.log();
    let result = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| {
            anyhow!(
                "{}: the generator printed no result; log:\n{text}",
                side.name
            )
        })
        .and_then(|j| serde_json::from_str::<Value>(j).context("generator result"))?;
    Ok((result, during_out))
}

/// Wait (bounded) until the server reports no session; false if some remain.
fn wait_drained(side: &Side, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if matches!((side.sessions)(), Some((0, _))) {
            return true;
        }
        if Instant::now() >= end || stop_requested() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cycles_per_byte(cpu_s: f64, perf_cycles: Option<f64>, bytes: f64, c: &Cycles) -> f64 {
    match perf_cycles {
        Some(cy) if c.perf => cy / bytes,
        _ => cpu_s * c.hz / bytes,
    }
}

type IperfOutcome = Result<IperfResult, String>;
/// Round-trip times in ms, `None` = lost.
type RttSeries = Vec<Option<f64>>;

/// One iperf3 point: `n` clients at once, each to its own iperf3 server, one stream each;
/// CPU sampled around it; optionally ICMP RTTs from client 0 while it runs.
fn throughput_point(
    side: &Side,
    s: &Settings,
    c: &Cycles,
    client_pids: &[u32],
    reverse: bool,
    with_ping: bool,
) -> Result<Value> {
    check_stop()?;
    let n = client_pids.len();
    println!(
        "bench-tunnel: {}: iperf3 {} with {n} client(s), {} s",
        side.name,
        dir_name(reverse),
        s.iperf_secs
    );
    let perf = if c.perf {
        let target = if side.gw.threads.is_empty() {
            PerfTarget::Pid(side.gw.pid)
        } else {
            PerfTarget::Tids(sys::gw_tasks(&side.gw).iter().map(|t| t.0).collect())
        };
        let tag = format!("{}-{n}-{}", side.name, dir_name(reverse));
        Some((
            PerfRun::start(&target, side.tmp, &format!("{tag}-gw")),
            PerfRun::start(&PerfTarget::System, side.tmp, &format!("{tag}-all")),
        ))
    } else {
        None
    };
    let secs = s.iperf_secs;
    let ping_delay = if secs >= 4 {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(500)
    };
    let loadavg = read_trim("/proc/loadavg");
    let drop_nss: Vec<&str> = std::iter::once(side.gw_ns.name.as_str())
        .chain(side.clients.iter().take(n).map(|c| c.name.as_str()))
        .collect();
    let drops0: Vec<NsDrops> = drop_nss.iter().map(|ns| NsDrops::read(ns)).collect();
    let c0 = CpuSample::take(&side.gw);
    let clients0 = sys::pids_cpu_seconds(client_pids);
    let t0 = Instant::now();
    let (results, rtt): (Vec<IperfOutcome>, Option<RttSeries>) = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let ns = side.clients[i];
                sc.spawn(move || iperf3_client(ns, SERVER, IPERF_PORT + i as u16, secs, reverse, 1))
            })
            .collect();
        let pinger = with_ping.then(|| {
            let ns = side.clients[0].name.clone();
            let (count, interval, id) = (s.ping_count, s.ping_interval, ping_id());
            sc.spawn(move || {
                std::thread::sleep(ping_delay);
                sys::rtt_series(&ns, SERVER, count, interval, id)
            })
        });
        let results = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("iperf3 thread panicked".into()))
            })
            .collect();
        let rtt = pinger.and_then(|h| h.join().ok());
        (results, rtt)
    });
    let c1 = CpuSample::take(&side.gw);
    let clients_cpu = sys::pids_cpu_seconds(client_pids) - clients0;
    let wall = t0.elapsed().as_secs_f64();
    let drops: Vec<Value> = drop_nss
        .iter()
        .zip(&drops0)
        .map(|(ns, before)| NsDrops::read(ns).since(before))
        .collect();
    let (perf_gw, perf_all) = match perf {
        Some((g, a)) => (g.and_then(PerfRun::finish), a.and_then(PerfRun::finish)),
        None => (None, None),
    };
    let d = c1.since(&c0);
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    let ok: Vec<&IperfResult> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let bps: f64 = if errors.is_empty() {
        ok.iter().map(|r| r.bits_per_second).sum()
    } else {
        f64::NAN
    };
    let bytes = bps * f64::from(secs) / 8.0;
    // iperf3 reports its own processes' CPU (percent of one core over the test).
    let iperf_cpu: f64 = ok
        .iter()
        .map(|r| (r.cpu_host + r.cpu_remote) / 100.0 * f64::from(secs))
        .sum();
    let tasks_cpu = d.gateway_s + clients_cpu + iperf_cpu;
    for e in &errors {
        eprintln!("bench-tunnel: {}: iperf3 failed: {e}", side.name);
    }
    println!(
        "  {:.1} Mbit/s; CPU s: gateway {:.2}, openvpn clients {:.2}, machine busy {:.2} in {:.2} s",
        bps / 1e6,
        d.gateway_s,
        clients_cpu,
        d.busy_s,
        wall
    );
    Ok(json!({
        "clients": n,
        "direction": dir_name(reverse),
        "seconds": secs,
        "errors": errors,
        "bits_per_second": bps,
        "per_client_bits_per_second": ok.iter().map(|r| r.bits_per_second).collect::<Vec<_>>(),
        "retransmits": ok.iter().map(|r| r.retransmits).sum::<u64>(),
        "iperf3_cpu_percent": ok.iter().map(|r| json!({"client": r.cpu_host, "server": r.cpu_remote})).collect::<Vec<_>>(),
        "bytes": bytes,
        "wall_seconds": wall,
        "loadavg_before": loadavg,
        "cpu": d.to_json(),
        "openvpn_clients_cpu_s": clients_cpu,
        "iperf3_cpu_s": iperf_cpu,
        "benchmark_tasks_cpu_s": tasks_cpu,
        "drops": { "gateway": drops[0], "clients": &drops[1..] },
        "perf_cycles_gateway": perf_gw,
        "perf_cycles_machine": perf_all,
        "gateway_cycles_per_byte": cycles_per_byte(d.gateway_s, perf_gw, bytes, c),
        "machine_cycles_per_byte": cycles_per_byte(d.busy_s, perf_all, bytes, c),
        "tasks_cycles_per_byte": tasks_cpu * c.hz / bytes,
        "loaded_rtt": rtt.as_deref().map(sys::rtt_stats),
    }))
}

/// Start a stock client and time it to "Initialization Sequence Completed" (the log polled
/// every 2 ms: the harness's 20 ms is too coarse for connects of tens of ms).
fn connect_timed(side: &Side, ns: &NetNs, cfg: &ClientConfig) -> Result<(f64, OvpnClient)> {
    let t = Instant::now();
    let cl = OvpnClient::start(ns, cfg);
    let end = t + CONNECT_TIMEOUT;
    let mut took = None;
    while took.is_none() && Instant::now() < end && cl.is_running() && !stop_requested() {
        if cl.log().contains(CONNECTED) {
            took = Some(t.elapsed().as_secs_f64());
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    cl.wait_connected(Duration::from_secs(1)).map_err(|e| {
        anyhow!(
            "{}: stock client in {} does not connect: {e}",
            side.name,
            ns.name
        )
    })?;
    Ok((took.unwrap_or(f64::NAN), cl))
}

/// Every measurement against one server, in this order: warm-up handshakes, memory per
/// session, handshake rate, stock clients (time to connected), idle RTT, iperf3 points.
fn measure_side(side: &Side, s: &Settings, c: &Cycles) -> Result<Value> {
    let mut notes: Vec<String> = Vec::new();
    let drain = Duration::from_secs(20);

    // ---- warm-up: first handshakes pay one-time initialisation --------------------------------
    let warmup = if s.warmup_handshakes > 0 {
        println!(
            "bench-tunnel: {}: {} warm-up handshakes",
            side.name, s.warmup_handshakes
        );
        let (r, _) = run_generator(
            side,
            s,
            s.warmup_handshakes,
            s.warmup_handshakes,
            false,
            "warmup",
            || Value::Null,
        )?;
        if !wait_drained(side, drain) {
            notes.push("warm-up sessions still present after 20 s".into());
        }
        r
    } else {
        Value::Null
    };

    // ---- memory per connected session ---------------------------------------------------------
    println!(
        "bench-tunnel: {}: memory with {} idle sessions",
        side.name, s.memory_sessions
    );
    let rss0 = sys::rss_kib(side.rss_pid);
    let (held, during) = run_generator(
        side,
        s,
        s.memory_sessions,
        s.memory_inflight,
        true,
        "memory",
        || {
            let rss1 = sys::rss_kib(side.rss_pid);
            // The stock server rewrites its status file every second.
            let end = Instant::now() + Duration::from_secs(3);
            let mut seen = (side.sessions)();
            while seen.is_none_or(|(_, e)| e < s.memory_sessions) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(200));
                seen = (side.sessions)();
            }
            json!({ "rss_after_kib": rss1, "server_sessions": seen.map(|x| x.0), "server_established": seen.map(|x| x.1) })
        },
    )?;
    let connected = held["completed"].as_u64().unwrap_or(0);
    let rss1 = during["rss_after_kib"].as_u64();
    let per_session = match (rss0, rss1) {
        (Some(a), Some(b)) if connected > 0 => (b as f64 - a as f64) / connected as f64,
        _ => f64::NAN,
    };
    println!(
        "  {connected} sessions: RSS {rss0:?} -> {rss1:?} KiB, {per_session:.1} KiB per session"
    );
    if connected < s.memory_sessions as u64 {
        notes.push(format!(
            "memory: only {connected} of {} sessions connected",
            s.memory_sessions
        ));
    }
    let memory = json!({
        "sessions_requested": s.memory_sessions,
        "sessions_connected": connected,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "per_session_kib": per_session,
        "server_view": during,
        "generator": held,
    });
    if !wait_drained(side, drain) {
        notes.push("memory-test sessions still present 20 s after EXIT".into());
    }

    // ---- handshakes per second, at each concurrency ---------------------------------------------
    let mut rates = Vec::new();
    for &inflight in &s.inflight {
        let inflight = inflight.min(s.handshakes);
        println!(
            "bench-tunnel: {}: {} handshakes, {inflight} in flight",
            side.name, s.handshakes
        );
        let nss = [side.gw_ns.name.as_str(), side.clients[0].name.as_str()];
        let before: Vec<NsDrops> = nss.iter().map(|ns| NsDrops::read(ns)).collect();
        let (mut rate, _) = run_generator(
            side,
            s,
            s.handshakes,
            inflight,
            false,
            &format!("rate{inflight}"),
            || Value::Null,
        )?;
        rate["drops"] = json!({
            "gateway": NsDrops::read(nss[0]).since(&before[0]),
            "generator": NsDrops::read(nss[1]).since(&before[1]),
        });
        println!(
            "  {} completed, {} failed in {:.2} s: {:.1}/s, server CPU {:.2} ms per handshake, \
             server {:.0}% busy, {} UDP receive-buffer drops at the server",
            rate["completed"],
            rate["failed"],
            rate["seconds"].as_f64().unwrap_or(f64::NAN),
            rate["rate_per_s"].as_f64().unwrap_or(f64::NAN),
            rate["server_cpu_ms_per_handshake"]
                .as_f64()
                .unwrap_or(f64::NAN),
            rate["server_busy_fraction"].as_f64().unwrap_or(f64::NAN) * 100.0,
            rate["drops"]["gateway"]["udp_rcvbuf_errors"],
        );
        if rate["failed"].as_u64().unwrap_or(0) > 0 {
            notes.push(format!(
                "handshakes ({inflight} in flight): {} of {} failed ({} timed out)",
                rate["failed"], s.handshakes, rate["timed_out"]
            ));
        }
        if !wait_drained(side, drain) {
            notes.push(format!(
                "handshake-test sessions ({inflight} in flight) still present 20 s after EXIT"
            ));
        }
        rates.push(rate);
    }

    // ---- stock clients: time to connected ----------------------------------------------------------
    // First `connect_samples` connects of a fresh client process in client namespace 0, each
    // stopped again (explicit-exit-notify: the server frees the session), then the clients
    // that stay for iperf3, also timed.
    check_stop()?;
    let mut ttc = Vec::new();
    for _ in 0..s.connect_samples {
        let mut cfg = ClientConfig::new(side.pki, DEFAULT_CLIENTS[0], Proto::Udp);
        cfg.extra.push("explicit-exit-notify 1".into());
        let (took, cl) = connect_timed(side, side.clients[0], &cfg)?;
        ttc.push(took);
        cl.proc.stop();
    }
    let mut clients = Vec::new();
    for (cn, ns) in DEFAULT_CLIENTS
        .iter()
        .zip(&side.clients)
        .take(s.max_clients())
    {
        let cfg = ClientConfig::new(side.pki, cn, Proto::Udp);
        let (took, cl) = connect_timed(side, ns, &cfg)?;
        ttc.push(took);
        clients.push(cl);
    }
    println!("bench-tunnel: {}: time to connected {ttc:.3?} s", side.name);
    for (i, ns) in side.clients.iter().take(s.max_clients()).enumerate() {
        if !ping(ns, SERVER, 10, Duration::from_secs(10)) {
            bail!(
                "{}: client {i} cannot reach {SERVER} through the tunnel",
                side.name
            );
        }
    }

    // ---- idle RTT ------------------------------------------------------------------------------------
    let idle = sys::rtt_series(
        &side.clients[0].name,
        SERVER,
        s.ping_count,
        s.ping_interval,
        ping_id(),
    );
    let idle = sys::rtt_stats(&idle);
    println!(
        "bench-tunnel: {}: idle RTT median {:.3} ms, p99 {:.3} ms",
        side.name,
        idle["median_ms"].as_f64().unwrap_or(f64::NAN),
        idle["p99_ms"].as_f64().unwrap_or(f64::NAN)
    );

    // ---- throughput, CPU per byte, RTT under load -------------------------------------------------
    let _servers: Vec<_> = (0..s.max_clients())
        .map(|i| iperf3_server(side.private, IPERF_PORT + i as u16))
        .collect();
    let client_pids: Vec<u32> = clients.iter().map(OvpnClient::pid).collect();
    let mut points = Vec::new();
    for &reverse in &s.directions {
        for &n in &s.client_counts {
            let p = throughput_point(side, s, c, &client_pids[..n], reverse, n == 1)?;
            if let Some(rtt) = p["loaded_rtt"].as_object() {
                println!(
                    "  RTT under load median {:.3} ms, p99 {:.3} ms ({} lost)",
                    rtt["median_ms"].as_f64().unwrap_or(f64::NAN),
                    rtt["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    rtt["lost"]
                );
            }
            points.push(p);
        }
    }
    for (i, cl) in clients.iter().enumerate() {
        if !cl.is_running() {
            notes.push(format!("stock client {i} exited during the run"));
        }
    }
    drop(clients);
    Ok(json!({
        "warmup": warmup,
        "memory": memory,
        "handshakes": rates,
        "time_to_connected_s": ttc,
        "idle_rtt": idle,
        "throughput": points,
        "notes": notes,
    }))
}

/// The stock server's configuration: the harness's baseline (`StockServerConfig::new`:
/// UDP, AES-256-GCM, tls-crypt, `duplicate-cn`, `disable-dco`) plus what the benchmark
/// needs: a status file (the session count), `max-clients` above the generator's sessions,
/// `connect-freq-initial` raised so the 2.6 default reset limiter (100 per 10 s) does not
/// cap the handshake rate, and a /21 pool instead of the /24: the stock server frees a
/// session 5 s after its EXIT, so 300 handshakes in a few seconds would exhaust a /24.
fn stock_config(pki: &LabPki, status: &Path) -> Result<String> {
    let mut cfg = StockServerConfig::new(pki, Proto::Udp);
    cfg.extra = vec![
        format!("status {} 1", status.display()),
        "status-version 2".into(),
        "max-clients 2048".into(),
        "connect-freq-initial 100000 10".into(),
    ];
    let text = cfg.render();
    let from = "server 10.100.0.0 255.255.255.0";
    if !text.contains(from) {
        bail!("the harness's stock server config changed: no {from:?} line in\n{text}");
    }
    Ok(text.replace(from, &format!("server 10.100.0.0 {STOCK_POOL_NETMASK}")))
}

/// `(sessions, sessions)` from the stock server's status file (`CLIENT_LIST` lines).
fn stock_sessions(status: &Path) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(status).ok()?;
    let n = text
        .lines()
        .filter(|l| l.starts_with("CLIENT_LIST,"))
        .count();
    Some((n, n))
}

fn run_stock(s: &Settings, c: &Cycles) -> Result<Value> {
    println!("bench-tunnel: stock openvpn --server: building the lab");
    let dir = TempDir::new("btstock");
    let pki = LabPki::generate(&dir.path().join("pki"));
    let lab = Lab::stock(s.max_clients());
    let status = dir.path().join("status.txt");
    let conf_text = stock_config(&pki, &status)?;
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, &conf_text)?;
    let conf_s = conf.display().to_string();
    let server = Proc::spawn(
        &lab.gw,
        &["openvpn", "--config", &conf_s],
        &dir.path().join("server.log"),
        "stock openvpn server",
    );
    server
        .wait_log_or_exit("Initialization Sequence Completed", Duration::from_secs(20))
        .map_err(|e| anyhow!("{e}"))?;
    let sessions = || stock_sessions(&status);
    let side = Side {
        name: "stock",
        clients: lab.underlay.clients.iter().map(|c| &c.ns).collect(),
        private: &lab.net,
        gw_ns: &lab.gw,
        pki: &pki,
        gw: GwSpec {
            pid: server.pid(),
            threads: Vec::new(),
        },
        rss_pid: server.pid(),
        sessions: &sessions,
        tmp: dir.path(),
    };
    let mut v = measure_side(&side, s, c)?;
    if !server.is_running() {
        bail!(
            "the stock server exited during the run:\n{}",
            server.log_tail(40)
        );
    }
    let log = server.log();
    v["server"] = json!({
        "what": "openvpn --server (stock 2.6, userspace, disable-dco), one process",
        "config": conf_text,
        "cpu_accounting": format!("on-CPU time of the openvpn server process's tasks: {}", sys::cpu_time_source()),
        "rss": "VmRSS of the openvpn server process",
        "log_pool_exhausted": log.matches("no free --ifconfig-pool").count(),
    });
    drop(server);
    drop(lab);
    Ok(v)
}

fn run_portcullis(s: &Settings, c: &Cycles) -> Result<Value> {
    println!("bench-tunnel: Portcullis: building the lab (XDP data path, TAP, tunnel)");
    let dir = TempDir::new("btours");
    // Enters the gateway namespace on this thread until it drops.
    let lab = TunnelLab::new(TunnelOpts {
        clients: s.max_clients(),
        tls_crypt: true,
        udp: true,
        tcp: false,
        ..TunnelOpts::default()
    });
    let sessions = || {
        let list = lab.tunnel().sessions();
        Some((list.len(), list.iter().filter(|x| x.established).count()))
    };
    let gw = GwSpec {
        pid: std::process::id(),
        threads: vec!["pc-worker-".into(), "pc-control".into()],
    };
    // A thread names itself once it runs: wait (bounded) for the workers and the control thread.
    let end = Instant::now() + Duration::from_secs(5);
    let mut tasks = sys::gw_tasks(&gw);
    while tasks.len() < 3 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        tasks = sys::gw_tasks(&gw);
    }
    if tasks.is_empty() {
        bail!("no pc-worker-*/pc-control threads in this process: the tunnel did not start?");
    }
    let side = Side {
        name: "portcullis",
        clients: lab.underlay.clients.iter().map(|c| &c.ns).collect(),
        private: &lab.gw.net,
        gw_ns: &lab.gw.gw,
        pki: &lab.pki,
        gw,
        rss_pid: std::process::id(),
        sessions: &sessions,
        tmp: dir.path(),
    };
    let mut v = measure_side(&side, s, c)?;
    let st = &lab.tunnel().stats;
    v["server"] = json!({
        "what": "Portcullis tunnel in this process (tests::tunnel::TunnelLab: 2 packet workers, one control thread) in front of the XDP data path on a TAP",
        "threads": tasks.iter().map(|t| t.1.clone()).collect::<Vec<_>>(),
        "cpu_accounting": format!("on-CPU time of this process's threads named pc-worker-* and pc-control: {}; the XDP program runs inside the workers' TAP writes and in the veths' softirq", sys::cpu_time_source()),
        "rss": "VmRSS of this benchmark process (the tunnel is in-process; the load generator is a separate process)",
        "reset_limiter": "ServerSettings::default: 200 stateless reset replies/s, burst 400",
        "tunnel_stats": tests::benchreport::tunnel_stats(st),
    });
    drop(lab);
    Ok(v)
}

fn write_reports(out: &Path, report: &Value, write_json: bool) -> Result<()> {
    tests::benchreport::write_suite_reports(
        out,
        "tunnel",
        report,
        write_json,
        report::markdown,
        report::svg,
    )
}

fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.render {
        let report = tests::benchreport::read_report(path)?;
        write_reports(&args.out, &report, false)?;
        println!(
            "bench-tunnel: wrote {}/tunnel.{{md,svg}}",
            args.out.display()
        );
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP, openvpn): run `cargo xtask bench` as root");
    }
    let started = Instant::now();
    // The machine is shared with builds: every benchmark task (both servers, the stock
    // clients, iperf3, the generator, the tunnel's threads) runs at nice -20, inherited from
    // this thread, which has spawned nothing yet.
    // SAFETY: gettid and setpriority have no memory preconditions.
    let niced =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) == 0 };
    let s = if args.quick {
        Settings {
            iperf_secs: 2,
            client_counts: vec![1, 2],
            directions: vec![false],
            handshakes: 30,
            inflight: vec![64],
            memory_inflight: 64,
            warmup_handshakes: 0,
            memory_sessions: 20,
            connect_samples: 2,
            ping_count: 50,
            ping_interval: Duration::from_millis(20),
            gen_deadline: Duration::from_secs(30),
        }
    } else {
        Settings {
            iperf_secs: 10,
            client_counts: vec![1, 3],
            directions: vec![false, true],
            handshakes: 300,
            // Below 253: TunnelLab's /24 pool (in-flight sessions hold an address).
            inflight: vec![16, 64, 200],
            memory_inflight: 64,
            warmup_handshakes: 4,
            memory_sessions: 200,
            connect_samples: 5,
            ping_count: 50,
            ping_interval: Duration::from_millis(20),
            gen_deadline: Duration::from_secs(90),
        }
    };
    let mut s = s;
    if let Some(n) = args.handshakes {
        s.handshakes = n.max(1);
    }
    if let Some(v) = args.inflight.clone().filter(|v| !v.is_empty()) {
        s.inflight = v;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut machine = machine();
    let (perf, probe) = sys::perf_cycles_probe();
    let mhz = sys::cpu_mhz().unwrap_or(f64::NAN);
    let c = Cycles {
        perf,
        hz: mhz * 1e6,
        method: if perf {
            "perf stat -e cycles (gateway: -p PID or -t TIDs; machine: -a)".into()
        } else {
            format!(
                "CPU seconds x {mhz:.0} MHz (cpu MHz in /proc/cpuinfo): `perf stat -e cycles true` counts no cycles here"
            )
        },
        probe,
    };
    println!("bench-tunnel: cycles: {}", c.method);

    let stock = run_stock(&s, &c)?;
    check_stop()?;
    let ours = run_portcullis(&s, &c)?;

    machine["loadavg_after"] = json!(read_trim("/proc/loadavg"));
    let comparison = report::compare(&ours, &stock);
    let targets = report::targets(
        &comparison,
        TARGET_THROUGHPUT,
        TARGET_CYCLES_PER_BYTE,
        TARGET_HANDSHAKES,
    );
    let mut notes: Vec<Value> = Vec::new();
    for (name, side) in [("portcullis", &ours), ("stock", &stock)] {
        for n in side["notes"].as_array().into_iter().flatten() {
            notes.push(json!(format!("{name}: {}", n.as_str().unwrap_or(""))));
        }
    }
    let command: Vec<String> = std::env::args().collect();
    let report = json!({
        "suite": "tunnel",
        "command": command.join(" "),
        "invoked_as": std::env::var("PORTCULLIS_BENCH_COMMAND").ok(),
        "quick": args.quick,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "elapsed_seconds": started.elapsed().as_secs_f64(),
        "machine": machine,
        "settings": s.to_json(),
        "nice": if niced { json!(-20) } else { json!("setpriority failed: default priority") },
        "cycles": { "perf": c.perf, "method": c.method, "hz": c.hz, "perf_probe_output": c.probe },
        "method": {
            "order": "stock first, then Portcullis, each in its own lab (dropped before the next); per server: warm-up handshakes, memory, handshake rate, stock clients, idle RTT, iperf3",
            "priority": "every process and thread of the benchmark runs at nice -20 (inherited), so other load on the machine takes little CPU from it; the whole-machine figures still include whatever other load ran",
            "throughput": "iperf3 TCP, one stream per client, each client namespace runs a stock openvpn 2.6 client (disable-dco) and an iperf3 client to its own iperf3 server on 10.0.0.10 in the private namespace; receiver-side goodput (sum_received), summed over clients",
            "cpu_per_byte": "CPU time during the iperf3 run (from before the clients start until all finished) divided by bytes moved (goodput x seconds); gateway = the server process/threads (on-CPU time; this kernel has no IRQ_TIME_ACCOUNTING, so softirq work that runs while a gateway thread is on the CPU is charged to it); benchmark tasks = gateway + the openvpn clients + iperf3's own CPU report; machine = all busy time in /proc/stat (user+nice+system+irq+softirq), which includes any other load on the machine",
            "latency": "ICMP echo from client 0 to 10.0.0.10 through the tunnel, one every 20 ms on a fixed schedule (raw socket), idle and while the 1-client iperf3 run moves data (starting 2 s in; 0.5 s in --quick); added = loaded - idle",
            "handshakes": "a separate generator process in client namespace 0 runs TestClient sessions (tls-crypt, TLS 1.3 with rustls, ECDSA P-256 certificates, key-method 2, PUSH_REPLY with ifconfig = completed), each on its own UDP socket, N in flight (several N in the full run); a completed session sends EXIT; rate = completed / (first reset to last completion); server CPU sampled over the same interval; UDP receive-buffer errors and device drops in the gateway and generator namespaces around each run",
            "memory": "server RSS (VmRSS) before and right after N generator sessions connected and stay idle (acks answered, nothing sent), divided by N",
            "time_to_connected": "spawn of a stock openvpn client to its 'Initialization Sequence Completed' line (log polled every 2 ms): first connect_samples connect/disconnect cycles in client namespace 0 (explicit-exit-notify), then the clients kept for iperf3, started one after another",
        },
        "portcullis": ours,
        "stock": stock,
        "comparison": comparison,
        "targets": targets,
        "notes": notes,
    });
    write_reports(&args.out, &report, true)?;
    println!(
        "bench-tunnel: wrote {}/tunnel.{{json,md,svg}} in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
