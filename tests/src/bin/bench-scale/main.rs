//! `bench-scale`: the scale benchmark behind `cargo xtask bench scale`.
//!
//! ```text
//! bench-scale [--quick] [--out DIR] [--sessions N,N] [--only portcullis|stock]
//! bench-scale --render DIR/scale.json [--out DIR]
//! ```
//!
//! Side by side in one run, the stock `openvpn --server` first, then Portcullis (`portcullis
//! run`, the agent binary in its own process with its logs, metrics, admin socket and
//! certificate authentication on; `tests::agent::AgentLab`), each in its own lab, loaded by
//! the same many-session client emulator (`bench-scale --emulate`,
//! `tests::emulator`, a separate process in the client namespace): N idle sessions (1,000
//! and 10,000) with memory per session, time to establish and keepalive CPU at rest;
//! throughput and cycles per byte through 1, 4 and 16 of the first N's sessions; handshakes
//! per second at increasing offered rates until saturation with p50/p99 connect latency.
//! Writes `scale.json`, `scale.md` and `scale.svg` to DIR (default `target/bench`). Needs
//! root. See docs/benchmarks.md.
//!
//! All traffic stays inside the namespaces the harness creates; every loop and wait is
//! bounded; processes, namespaces and files are removed on exit, on error and on Ctrl-C.
mod gen;
mod report;

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tests::{
    agent::{Agent, AgentLab, EndpointOpts},
    benchreport,
    benchsys::{self as sys, GwSpec},
    clients::run_in_ns,
    emulator,
    gateway::SERVER,
    openvpn::{
        Lab, LabPki, Proc, Proto, StockServerConfig, TempDir, DEFAULT_CLIENTS, OVPN_PORT,
        UNDERLAY_GW,
    },
    NetNs,
};

/// The pool for 10,000 sessions and more (both servers).
const POOL: &str = "10.100.0.0/17";
const POOL_NETMASK: &str = "255.255.128.0";
/// Session limits of both servers: above the largest hold plus sessions in flight and
/// sessions the stock server has not freed yet (it frees them 5 s after their EXIT).
const MAX_SESSIONS: usize = 16_384;
const SINK_PORT: u16 = 9;
const MGMT_PORT: u16 = 7505;
/// The issue's target: Portcullis handshakes per second ≥ 5x the stock server's.
const TARGET_HANDSHAKES: f64 = 5.0;
const TARGET_SESSIONS: usize = 10_000;
const TARGET_KIB_PER_SESSION: f64 = 64.0;

struct Args {
    quick: bool,
    out: PathBuf,
    sessions: Option<Vec<usize>>,
    only: Option<String>,
    render: Option<PathBuf>,
}

#[derive(Clone)]
struct Settings {
    holds: Vec<usize>,
    open_inflight: usize,
    settle_s: f64,
    pause_s: f64,
    rest_s: f64,
    traffic: Vec<usize>,
    traffic_s: f64,
    ip_len: usize,
    rates: Vec<f64>,
    step_s: f64,
    sweep_inflight: usize,
    handshake_timeout_s: f64,
    drain: Duration,
}

impl Settings {
    fn to_json(&self) -> Value {
        json!({
            "transport": "UDP (udp4), tls-crypt, TLS 1.3, ECDSA P-256 client certificates, AES-256-GCM data channel",
            "idle_sessions": self.holds,
            "open_in_flight": self.open_inflight,
            "settle_s": self.settle_s,
            "keepalive_window_s": self.rest_s,
            "traffic_active_sessions": self.traffic,
            "traffic_seconds": self.traffic_s,
            "traffic_ip_packet_bytes": self.ip_len,
            "sweep_offered_rates_per_s": self.rates,
            "sweep_step_seconds": self.step_s,
            "sweep_max_in_flight": self.sweep_inflight,
            "handshake_timeout_s": self.handshake_timeout_s,
            "pool": POOL,
            "max_sessions": MAX_SESSIONS,
            "portcullis_udp_reset_replies_per_s_and_burst": [RESET_REPLIES.0, RESET_REPLIES.1],
        })
    }
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        quick: false,
        out: PathBuf::from("target/bench"),
        sessions: None,
        only: None,
        render: None,
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = it.next().context("--out needs a directory")?.into(),
            "--render" => a.render = Some(it.next().context("--render needs a scale.json")?.into()),
            "--only" => {
                let v = it.next().context("--only needs portcullis or stock")?;
                if v != "portcullis" && v != "stock" {
                    bail!("--only: portcullis or stock, not {v:?}");
                }
                a.only = Some(v.clone());
            }
            "--sessions" => {
                a.sessions = Some(
                    it.next()
                        .context("--sessions needs counts (e.g. 1000,10000)")?
                        .split(',')
                        .map(|x| x.trim().parse::<usize>().map(|n| n.max(1)))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench-scale [--quick] [--out DIR] [--sessions N[,N]] [--only portcullis|stock]\n       \
                     bench-scale --render DIR/scale.json [--out DIR]\n\n\
                     Scale benchmark (needs root): Portcullis vs the stock `openvpn --server` under the\n\
                     same many-session client emulator: idle sessions (memory, time to establish,\n\
                     keepalive CPU), throughput through 1/4/16 sessions, handshake rate to saturation.\n\
                     Writes DIR/scale.{{json,md,svg}} (default DIR: target/bench)."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--emulate") {
        return match gen::parse(&argv[2..]).and_then(gen::run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("emulator: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    emulator::install_signal_handlers();
    match parse_args(&argv[1..]).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-scale: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_stop() -> Result<()> {
    if emulator::stop_requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// One server under test.
struct Side<'a> {
    name: &'static str,
    client: &'a NetNs,
    /// The private network namespace (the sink).
    private: &'a NetNs,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    tls_crypt: PathBuf,
    gw: GwSpec,
    rss_pid: u32,
    /// Sessions as the server counts them (`None`: could not ask).
    sessions: &'a dyn Fn() -> Option<usize>,
    /// What else a hold records of the server once its sessions are up (map fill; `Null`
    /// where the server has nothing to tell).
    snapshot: &'a dyn Fn() -> Value,
    tmp: &'a Path,
}

fn gen_opts(side: &Side, s: &Settings) -> gen::GenOpts {
    gen::GenOpts {
        ca: side.ca.clone(),
        cert: side.cert.clone(),
        key: side.key.clone(),
        tls_crypt: Some(side.tls_crypt.clone()),
        server: SocketAddr::V4(SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT)),
        gw: side.gw.clone(),
        rss_pid: side.rss_pid,
        plan: "hold".into(),
        sessions: 1,
        rate: 0.0,
        inflight: s.open_inflight,
        settle: s.settle_s,
        pause: s.pause_s,
        rest: s.rest_s,
        traffic: Vec::new(),
        traffic_secs: s.traffic_s,
        ip_len: s.ip_len,
        sink: SocketAddrV4::new(SERVER, SINK_PORT),
        sink_ns: side.private.name.clone(),
        rates: s.rates.clone(),
        step_secs: s.step_s,
        handshake_timeout: s.handshake_timeout_s,
        deadline: 600.0,
    }
}

/// Run the emulator with `o` in the client namespace; for a hold plan, ask the server for
/// its session count (and [`Side::snapshot`]) once the emulator says `MEASURED`. The
/// emulator's result, that count and that snapshot.
fn run_generator(
    side: &Side,
    o: &gen::GenOpts,
    tag: &str,
    limit: Duration,
) -> Result<(Value, Option<usize>, Value)> {
    check_stop()?;
    let exe = std::env::current_exe().context("locating this program")?;
    let mut argv: Vec<String> = vec![exe.display().to_string(), "--emulate".into()];
    argv.extend(o.to_args());
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let log = side.tmp.join(format!("emu-{}-{tag}.log", side.name));
    let proc = Proc::spawn(side.client, &argv_ref, &log, "client emulator");
    let end = Instant::now() + limit;
    let mut counted = None;
    let mut snapshot = Value::Null;
    if o.plan == "hold" {
        match proc.wait_log_or_exit("MEASURED", limit) {
            Ok(()) => {
                counted = (side.sessions)();
                snapshot = (side.snapshot)();
            }
            Err(e) => eprintln!("bench-scale: {}: {e}", side.name),
        }
    }
    let left = end.saturating_duration_since(Instant::now());
    let waited = proc.wait_log_or_exit("RESULT ", left.max(Duration::from_secs(1)));
    proc.stop();
    let text = proc.log();
    let result = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| {
            anyhow!(
                "{}: the emulator printed no result ({waited:?}); log tail:\n{}",
                side.name,
                proc.log_tail(30)
            )
        })
        .and_then(|j| serde_json::from_str::<Value>(j).context("emulator result"))?;
    Ok((result, counted, snapshot))
}

/// Wait until the server reports no session: up to `timeout`, but give up early when the
/// count has not moved for 10 s (sessions whose EXIT the server never acted on stay until
/// its ping-restart, 120 s for the stock server). Whether it drained.
fn wait_drained(side: &Side, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    let mut last: Option<(usize, Instant)> = None;
    loop {
        let now = Instant::now();
        match (side.sessions)() {
            Some(0) => return true,
            Some(n) => match last {
                Some((m, since)) if m == n => {
                    if now.duration_since(since) >= Duration::from_secs(10) {
                        return false;
                    }
                }
                _ => last = Some((n, now)),
            },
            None => {}
        }
        if now >= end || emulator::stop_requested() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every measurement against one server: the idle holds (traffic in the first), then the
/// handshake sweep.
fn measure_side(side: &Side, s: &Settings) -> Result<Value> {
    let mut notes: Vec<String> = Vec::new();
    let mut holds = Vec::new();
    for (i, &n) in s.holds.iter().enumerate() {
        println!(
            "bench-scale: {}: {n} idle sessions (up to {} in flight)",
            side.name, s.open_inflight
        );
        let mut o = gen_opts(side, s);
        o.sessions = n;
        if i == 0 {
            o.traffic = s.traffic.clone();
        }
        // Generous: the stock server with thousands of sessions already up connects slowly.
        let limit = Duration::from_secs_f64(
            120.0 + n as f64 / 50.0 + s.rest_s + s.traffic.len() as f64 * (s.traffic_s + 2.0),
        );
        o.deadline = limit.as_secs_f64() - 10.0;
        let (mut r, counted, snapshot) = run_generator(side, &o, &format!("hold{n}"), limit)?;
        r["server_sessions_counted"] = json!(counted);
        r["server_at_hold"] = snapshot;
        let up = r["sessions_up"].as_u64().unwrap_or(0);
        println!(
            "  {up} up in {:.1} s ({:.0}/s, p50 {:.0} ms, p99 {:.0} ms); server counts {counted:?}; \
             RSS {} -> {} KiB = {:.1} KiB/session; keepalive: server {:.2}% of a core, {} pings sent, {} received, {} silent",
            r["open"]["seconds"].as_f64().unwrap_or(f64::NAN),
            r["open"]["rate_per_s"].as_f64().unwrap_or(f64::NAN),
            r["open"]["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            r["open"]["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            r["rss_before_kib"],
            r["rss_after_kib"],
            r["rss_per_session_kib"].as_f64().unwrap_or(f64::NAN),
            r["rest"]["server_core_fraction"].as_f64().unwrap_or(f64::NAN) * 100.0,
            r["rest"]["pings_sent"],
            r["rest"]["pings_received"],
            r["rest"]["sessions_silent_past_ping_restart"],
        );
        for t in r["traffic"].as_array().into_iter().flatten() {
            println!(
                "  traffic through {} session(s): {:.0} Mbit/s delivered ({:.0}% of sent), server {:.0}% of a core, {:.1} cycles/byte",
                t["active_sessions"],
                t["throughput_bits_per_second"].as_f64().unwrap_or(f64::NAN) / 1e6,
                t["delivered_fraction"].as_f64().unwrap_or(f64::NAN) * 100.0,
                t["server_core_fraction"].as_f64().unwrap_or(f64::NAN) * 100.0,
                t["server_cycles_per_byte"].as_f64().unwrap_or(f64::NAN),
            );
        }
        if (up as usize) < n {
            notes.push(format!(
                "{n} idle sessions: only {up} connected (failed {}, timed out {}, interrupted {})",
                r["open"]["failed"], r["counters"]["timed_out"], r["interrupted"]
            ));
        }
        if counted.is_some_and(|c| c != up as usize) {
            notes.push(format!(
                "{n} idle sessions: the emulator had {up} up, the server counted {counted:?}"
            ));
        }
        holds.push(r);
        if !wait_drained(side, s.drain) {
            notes.push(format!(
                "{n} idle sessions: {:?} sessions still present after the emulator closed (count unchanged for 10 s, or {} s passed)",
                (side.sessions)(),
                s.drain.as_secs()
            ));
        }
    }
    println!(
        "bench-scale: {}: handshake rate sweep, offered {:?}/s, {} s per step",
        side.name, s.rates, s.step_s
    );
    let mut o = gen_opts(side, s);
    o.plan = "sweep".into();
    o.inflight = s.sweep_inflight;
    let limit = Duration::from_secs_f64(
        60.0 + s.rates.len() as f64 * (s.step_s + s.handshake_timeout_s + 5.0),
    );
    o.deadline = limit.as_secs_f64() - 10.0;
    let (sweep, _, _) = run_generator(side, &o, "sweep", limit)?;
    for st in sweep["steps"].as_array().into_iter().flatten() {
        println!(
            "  offered {:.0}/s: achieved {:.0}/s, {} of {} connected, p50 {:.0} ms, p99 {:.0} ms, server {:.0}% of a core{}",
            st["offered_per_s"].as_f64().unwrap_or(f64::NAN),
            st["achieved_per_s"].as_f64().unwrap_or(f64::NAN),
            st["completed"],
            st["started"],
            st["latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            st["latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            st["server_core_fraction"].as_f64().unwrap_or(f64::NAN) * 100.0,
            if st["saturated"] == true { " (saturated)" } else { "" },
        );
    }
    if !wait_drained(side, s.drain) {
        notes.push(format!(
            "sweep: {:?} sessions still present after the emulator closed (count unchanged for 10 s, or {} s passed)",
            (side.sessions)(),
            s.drain.as_secs()
        ));
    }
    Ok(json!({ "holds": holds, "sweep": sweep, "notes": notes }))
}

// ---- the stock server -------------------------------------------------------------------------

/// `CLIENT_LIST` lines of `status 2` on the stock server's management interface (inside
/// the gateway namespace): asked on demand, so no periodic status file costs the server CPU
/// during the keepalive window.
fn stock_sessions(ns: &str) -> Option<usize> {
    run_in_ns(ns, || -> Option<usize> {
        let addr = SocketAddr::from(([127, 0, 0, 1], MGMT_PORT));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"status 2\n").ok()?;
        let mut r = BufReader::new(s.try_clone().ok()?);
        let mut n = 0;
        let mut line = String::new();
        // Bounded: the status of MAX_SESSIONS clients plus headers.
        for _ in 0..MAX_SESSIONS * 2 + 100 {
            line.clear();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.starts_with("CLIENT_LIST,") {
                n += 1;
            }
            if line.starts_with("END") {
                let _ = s.write_all(b"quit\n");
                return Some(n);
            }
        }
        None
    })
}

/// The harness's stock configuration (`StockServerConfig::new`: UDP, AES-256-GCM, tls-crypt,
/// `keepalive 10 60`, `duplicate-cn`, `disable-dco`) plus what 10,000 sessions need: a /17
/// pool, `max-clients`, the reset limiter raised (`connect-freq-initial`, as in the tunnel
/// suite), hash tables sized for the sessions (`hash-size`; the default 256 buckets would
/// make lookups walk ~40 entries) and the management interface for the session count.
fn stock_config(pki: &LabPki) -> Result<String> {
    let mut cfg = StockServerConfig::new(pki, Proto::Udp);
    cfg.extra = vec![
        format!("management 127.0.0.1 {MGMT_PORT}"),
        format!("max-clients {MAX_SESSIONS}"),
        "connect-freq-initial 100000 10".into(),
        format!("hash-size {MAX_SESSIONS} {MAX_SESSIONS}"),
    ];
    let text = cfg.render();
    let from = "server 10.100.0.0 255.255.255.0";
    if !text.contains(from) {
        bail!("the harness's stock server config changed: no {from:?} line in\n{text}");
    }
    Ok(text.replace(from, &format!("server 10.100.0.0 {POOL_NETMASK}")))
}

fn run_stock(s: &Settings) -> Result<Value> {
    println!("bench-scale: stock openvpn --server: building the lab");
    let dir = TempDir::new("bsstock");
    let pki = LabPki::generate(&dir.path().join("pki"));
    let lab = Lab::stock(1);
    // Lab::stock translates the harness's /24 pool; the rest of the /17 too.
    lab.gw.exec(&[
        "nft",
        &format!(
            "add rule ip pct_nat post ip saddr {POOL} oifname \"{}\" snat to {}",
            tests::gateway::GW_IF,
            tests::gateway::GW_NET_ADDR
        ),
    ]);
    sys::sink_setup(&lab.net.name, SINK_PORT)?;
    let conf_text = stock_config(&pki)?;
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
    let gw_name = lab.gw.name.clone();
    let sessions = move || stock_sessions(&gw_name);
    let ck = pki.client(DEFAULT_CLIENTS[0]);
    let side = Side {
        name: "stock",
        client: &lab.underlay.clients[0].ns,
        private: &lab.net,
        ca: pki.ca.clone(),
        cert: ck.cert.clone(),
        key: ck.key.clone(),
        tls_crypt: pki.tls_crypt.clone(),
        gw: GwSpec {
            pid: server.pid(),
            threads: Vec::new(),
        },
        rss_pid: server.pid(),
        sessions: &sessions,
        snapshot: &|| Value::Null,
        tmp: dir.path(),
    };
    let mut v = measure_side(&side, s)?;
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
        "cpu_accounting": format!("on-CPU time of the openvpn process's tasks: {}", sys::cpu_time_source()),
        "rss": "VmRSS of the openvpn server process",
        "log_max_clients_refused": log.matches("would exceed maximum number of clients").count(),
        "log_pool_exhausted": log.matches("no free --ifconfig-pool").count(),
        "log_tls_errors": log.matches("TLS Error").count(),
    });
    drop(server);
    drop(lab);
    Ok(v)
}

// ---- Portcullis ---------------------------------------------------------------------------------

/// The policy part of the agent's endpoint file (`tests::agent::endpoint_toml_with`): every
/// user may reach the sink on the private network's host.
const AGENT_POLICY: &str = "[[authorization_rule]]\ndestination = \"10.0.0.10/32\"\nall_users = true\ndescription = \"the benchmark's traffic sink\"\n";

/// As the stock server's `connect-freq-initial 100000 10`: the default (200 replies/s,
/// burst 400, an eighth of it per source) is a flood guard that would cap the handshake
/// sweep and the 10,000-session ramp, which all come from one source address.
const RESET_REPLIES: (u32, u32) = (100_000, 100_000);

/// The agent's `status` over its admin socket (`None`: it did not answer).
fn agent_status(agent: &Agent) -> Option<Value> {
    agent
        .admin(&json!({"v": 1, "cmd": "status"}))
        .ok()
        .filter(|v| v["ok"] == true)
}

/// What a hold records of the agent when its sessions are up: sessions, conntrack entries
/// and the fill of every BPF map, from `status`.
fn agent_snapshot(agent: &Agent) -> Value {
    agent_status(agent).map_or(Value::Null, |v| {
        json!({
            "sessions": v["sessions"],
            "established": v["established"],
            "flows": v["flows"],
            "maps": v["maps"],
        })
    })
}

/// The tunnel's counters from the agent's metrics (`portcullis_tunnel_packets_total`,
/// `portcullis_tunnel_drops_total`, `portcullis_connection_attempts_total`), name{labels} →
/// value.
fn agent_counters(ns: &NetNs) -> Value {
    let text = match tests::agent::try_scrape_metrics(ns) {
        Ok(t) => t,
        Err(e) => return json!(format!("metrics not read: {e}")),
    };
    let mut m = serde_json::Map::new();
    for l in text.lines() {
        let wanted = [
            "portcullis_tunnel_packets_total",
            "portcullis_tunnel_drops_total",
            "portcullis_connection_attempts_total",
            "portcullis_active_connections",
        ];
        if !wanted.iter().any(|w| l.starts_with(w)) {
            continue;
        }
        if let Some((k, v)) = l.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                m.insert(k.to_string(), json!(v));
            }
        }
    }
    Value::Object(m)
}

fn run_portcullis(s: &Settings) -> Result<Value> {
    println!("bench-scale: Portcullis: starting `portcullis run` (XDP data path, TAP, tunnel)");
    let dir = TempDir::new("bsours");
    // `portcullis run` as deployed, as in the tunnel suite: its own process in the gateway
    // namespace, connection and flow logs, metrics listener and admin socket on, certificate
    // authentication with a PKI made by `portcullis pki`, the release binary
    // (`$PORTCULLIS_BIN`, set by xtask); the pool and limits for 10,000 sessions.
    let endpoint = EndpointOpts {
        client_cidr: POOL.parse().context("the pool")?,
        max_connections: Some(MAX_SESSIONS),
        udp_reset_replies: Some(RESET_REPLIES),
    };
    let lab = AgentLab::with_endpoint(1, &[DEFAULT_CLIENTS[0]], AGENT_POLICY, &[], &endpoint);
    let agent = lab.agent();
    sys::sink_setup(&lab.net.name, SINK_PORT)?;
    // The whole process, as for the stock server.
    let gw = GwSpec {
        pid: agent.pid(),
        threads: Vec::new(),
    };
    let tasks = sys::gw_tasks(&gw);
    let sessions = || agent_status(agent).and_then(|v| v["sessions"].as_u64().map(|n| n as usize));
    let snapshot = || agent_snapshot(agent);
    let cn = DEFAULT_CLIENTS[0];
    let side = Side {
        name: "portcullis",
        client: lab.client_ns(0),
        private: &lab.net,
        ca: lab.pki.dir.join("ca.crt"),
        cert: lab.pki.cert(cn),
        key: lab.pki.key(cn),
        tls_crypt: lab.pki.tls_crypt_key(),
        gw,
        rss_pid: agent.pid(),
        sessions: &sessions,
        snapshot: &snapshot,
        tmp: dir.path(),
    };
    let mut v = measure_side(&side, s)?;
    if !agent.is_running() {
        bail!(
            "portcullis run exited during the run:\n{}",
            agent.log_tail(40)
        );
    }
    let config = std::fs::read_to_string(&lab.config).unwrap_or_default();
    v["server"] = json!({
        "what": format!("`portcullis run` (the agent binary {}) in the gateway namespace: the XDP data path on a TAP, connection and flow logs, metrics listener, admin socket, certificate authentication", tests::agent::portcullis_bin().display()),
        "config": config,
        "threads_at_start": tasks.iter().map(|t| t.1.clone()).collect::<Vec<_>>(),
        "cpu_accounting": format!("on-CPU time of the portcullis process's tasks: {}; the XDP program runs inside the agent's TAP writes and in the veths' softirq (the machine figures next to it count all of it)", sys::cpu_time_source()),
        "rss": "VmRSS of the portcullis process (the emulator is a separate process); BPF map memory (clients, conntrack) is kernel memory and not in it",
        "settings": format!("client_cidr {POOL}, max_connections {MAX_SESSIONS}, udp_reset_replies_per_sec {} and udp_reset_replies_burst {} (defaults 200 and 400)", RESET_REPLIES.0, RESET_REPLIES.1),
        "agent_status": agent_status(agent),
        "counters": agent_counters(&lab.gw),
        "log_connections": std::fs::read_to_string(lab.dir.path().join("connections.log")).map(|t| t.lines().count()).ok(),
    });
    drop(lab);
    Ok(v)
}

fn write_reports(out: &Path, report: &Value, write_json: bool) -> Result<()> {
    tests::benchreport::write_suite_reports(
        out,
        "scale",
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
        println!("bench-scale: wrote {}/scale.{{md,svg}}", args.out.display());
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP, openvpn): run `cargo xtask bench` as root");
    }
    let started = Instant::now();
    // As in the tunnel suite: every task of the benchmark at nice -20 (inherited).
    // SAFETY: gettid and setpriority have no memory preconditions.
    let niced =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20) == 0 };
    // The emulator (a child) inherits it: one socket per session.
    let nofile = emulator::raise_nofile(65_536);
    let mut s = if args.quick {
        Settings {
            holds: vec![40, 100],
            open_inflight: 64,
            settle_s: 0.5,
            pause_s: 0.5,
            rest_s: 1.0,
            traffic: vec![1, 4, 16],
            traffic_s: 0.5,
            ip_len: 1400,
            rates: vec![50.0, 400.0],
            step_s: 1.0,
            sweep_inflight: 200,
            handshake_timeout_s: 10.0,
            drain: Duration::from_secs(15),
        }
    } else {
        Settings {
            holds: vec![1_000, 10_000],
            open_inflight: 64,
            settle_s: 2.0,
            pause_s: 2.0,
            rest_s: 10.0,
            traffic: vec![1, 4, 16],
            traffic_s: 5.0,
            ip_len: 1400,
            rates: vec![100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0],
            step_s: 6.0,
            sweep_inflight: 1000,
            handshake_timeout_s: 15.0,
            // The stock server needs tens of seconds to free 10,000 sessions (each 5 s after
            // its EXIT); the wait ends early once the count stops moving.
            drain: Duration::from_secs(120),
        }
    };
    if let Some(v) = args.sessions.clone().filter(|v| !v.is_empty()) {
        s.holds = v;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut machine = benchreport::machine();
    let want = |n: &str| args.only.as_deref().is_none_or(|o| o == n);
    let stock = if want("stock") {
        run_stock(&s)?
    } else {
        Value::Null
    };
    check_stop()?;
    let ours = if want("portcullis") {
        run_portcullis(&s)?
    } else {
        Value::Null
    };
    machine["loadavg_after"] = json!(std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim());
    let mut notes: Vec<Value> = Vec::new();
    for (name, side) in [("portcullis", &ours), ("stock", &stock)] {
        for n in side["notes"].as_array().into_iter().flatten() {
            notes.push(json!(format!("{name}: {}", n.as_str().unwrap_or(""))));
        }
    }
    let command: Vec<String> = std::env::args().collect();
    let mut report = json!({
        "suite": "scale",
        "command": command.join(" "),
        "invoked_as": std::env::var("PORTCULLIS_BENCH_COMMAND").ok(),
        "quick": args.quick,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "elapsed_seconds": started.elapsed().as_secs_f64(),
        "machine": machine,
        "settings": s.to_json(),
        "open_file_limit": nofile,
        "nice": if niced { json!(-20) } else { json!("setpriority failed: default priority") },
        "method": {
            "order": "stock first, then Portcullis, each in its own lab (dropped before the next); per server: the idle holds in order (traffic during the first), then the handshake sweep",
            "servers": "stock: `openvpn --server` (2.6, userspace, disable-dco) with `server.config`; Portcullis: `portcullis run` as deployed (the release agent binary in its own process in the gateway namespace, connection and flow logs, metrics listener, admin socket, certificate authentication against a `portcullis pki` CA) with `server.config`; both with a /17 pool, a 16,384-session limit and their stateless reset limiter raised far above the highest offered rate, since the emulator's sessions all come from one source address (stock: `connect-freq-initial 100000 10`; Portcullis: `udp_reset_replies_per_sec` and `udp_reset_replies_burst` 100,000, an eighth of it per source)",
            "cpu": "server = on-CPU time of the server process's tasks (every thread of either process); softirq work (the veths, the XDP program on the far side) is charged to whichever task is on the CPU, so the whole-machine busy time (user+nice+system+irq+softirq from /proc/stat, `machine` in every window) is reported next to it: it includes the emulator and any other load on the machine",
            "emulator": "bench-scale --emulate (tests::emulator): one process in the client namespace, one UDP socket per session (own source port), epoll; per session a TestClient (tls-crypt, HMAC-cookie reset, TLS 1.3 with an ECDSA P-256 client certificate, key-method 2, PUSH_REQUEST 1 s after the key exchange until the PUSH_REPLY, AES-256-GCM data channel); keepalive: the 16-byte ping magic whenever nothing was sent for the pushed ping interval; EXIT on close",
            "idle": "N sessions opened with up to open_in_flight handshakes at a time (as fast as the server answers); time to establish = first reset to last PUSH_REPLY; memory per session = (server RSS settle_s after the last connect - RSS before the first) / sessions up; keepalive CPU = server CPU over keepalive_window_s with every session idle (pings both ways), whole-machine busy time next to it; map fill (Portcullis) = the agent's `status` once the sessions are up: sessions, conntrack entries, every BPF map's entries and capacity",
            "traffic": "during the first hold: sealed IPv4/UDP packets (traffic_ip_packet_bytes, to 10.0.0.10:9 in the private namespace) through k of the idle sessions as fast as the emulator can send for traffic_seconds; delivered = nftables counter at the sink's prerouting (the packets are dropped there, so nothing comes back); throughput = delivered IP bytes / seconds; cycles per byte = server CPU seconds x cpu MHz / delivered bytes",
            "sweep": "offered rates in steps: rate x step sessions opened at that rate (at most sweep_max_in_flight handshaking), each sending EXIT once connected; achieved = completions per second in the window [warm-up, step end] shifted by the step's median connect latency (warm-up: a quarter of the step, at most 2 s) (the open loop offers the rate for the whole step, so a server that keeps up at any constant latency achieves the offered rate); a step is saturated when achieved < 0.9 x offered or more than 1% fail; the sweep stops after the second saturated step; the figure is the highest achieved rate, with the p50/p99 connect latency of that step",
        },
        "portcullis": ours,
        "stock": stock,
        "notes": notes,
    });
    report["comparison"] = report::compare(&report);
    report["targets"] = report::targets(
        &report,
        TARGET_HANDSHAKES,
        TARGET_SESSIONS,
        TARGET_KIB_PER_SESSION,
    );
    report["elapsed_seconds"] = json!(started.elapsed().as_secs_f64());
    write_reports(&args.out, &report, true)?;
    println!(
        "bench-scale: wrote {}/scale.{{json,md,svg}} in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
