//! `bench-tunnel`: the tunnel benchmark behind `cargo xtask bench tunnel`.
//!
//! ```text
//! bench-tunnel [--quick] [--out DIR]
//! ```
//!
//! In one run, on the same machine and topology, with the same stock `openvpn` 2.6 clients,
//! cipher (AES-256-GCM) and transport (UDP, tls-crypt): first the stock `openvpn --server`
//! (no DCO; `tests::openvpn::Lab::stock`), then Portcullis (`portcullis run`, the agent
//! binary, in its own process with its logs, metrics and admin socket on;
//! `tests::agent::AgentLab`). For each: memory per connected session,
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
mod measure;
mod report;
mod servers;
use measure::*;
use servers::*;
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
    agent::{Agent, AgentLab, CliPki, EndpointOpts},
    gateway::SERVER,
    openvpn::{
        iperf3_client, iperf3_server, ping, Cipher, ClientConfig, IperfResult, Lab, LabPki,
        OvpnClient, Proc, Proto, StockServerConfig, TempDir, DEFAULT_CLIENTS, OVPN_PORT,
        UNDERLAY_GW,
    },
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
    rounds: Option<usize>,
    /// Only the warm-up and the handshake rate (for profiling and A/B runs of the control
    /// path: no memory, stock clients, RTT or iperf3).
    handshakes_only: bool,
    agent_args: Vec<String>,
    agent_default_limits: bool,
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
    /// Rounds of one window per server (order alternating): the ratios are per round, the
    /// report gives their median and spread. Memory is measured in the first round only.
    rounds: usize,
    /// Only the warm-up and the handshake-rate points are measured.
    handshakes_only: bool,
    /// More `portcullis run` arguments (an A/B run of an agent option).
    agent_args: Vec<String>,
    /// Keep the agent's default stateless-reset limiter (for an agent built before the
    /// setting existed); the default raises it as the stock server's.
    agent_default_limits: bool,
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
            "rounds": self.rounds,
            "handshakes_only": self.handshakes_only,
            "agent_args": self.agent_args,
            "agent_handshake_limiter": if self.agent_default_limits { "default (200/s, burst 400; an eighth per source)" } else { "raised as the stock server's: udp_reset_replies_per_sec = udp_reset_replies_burst = 100000" },
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
        rounds: None,
        handshakes_only: false,
        agent_args: Vec::new(),
        agent_default_limits: false,
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
            "--handshakes-only" => a.handshakes_only = true,
            "--agent-default-limits" => a.agent_default_limits = true,
            "--agent-arg" => a
                .agent_args
                .push(it.next().context("--agent-arg needs an argument")?.clone()),
            "--rounds" => {
                a.rounds = Some(
                    it.next()
                        .context("--rounds needs a count")?
                        .parse::<usize>()
                        .context("--rounds needs a positive count")?
                        .max(1),
                )
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
                    "usage: bench-tunnel [--quick] [--out DIR] [--handshakes N] [--inflight N[,N...]]\n                    \
                     [--rounds N] [--handshakes-only] [--agent-arg ARG]... [--agent-default-limits]\n       \
                     bench-tunnel --render DIR/tunnel.json [--out DIR]\n\n\
                     Tunnel benchmark (needs root): Portcullis vs the stock `openvpn --server`,\n\
                     same stock openvpn 2.6 clients, AES-256-GCM over UDP: iperf3 throughput,\n\
                     gateway CPU per byte, latency under load, handshakes per second, memory per\n\
                     session. Writes DIR/tunnel.{{json,md,svg}} (default DIR: target/bench).\n\
                     --quick: short runs (under a minute) whose figures only show that the\n\
                     harness works. --handshakes, --inflight: the handshake-rate test's total\n\
                     and concurrencies (default 300 and 16,64,200; --quick 30 and 64).\n\
                     --rounds: interleaved rounds (default 3; --quick 2). --handshakes-only: only\n\
                     the warm-up and the handshake rate of each server (no memory, stock clients,\n\
                     RTT or iperf3), e.g. to profile or A/B the control path. --agent-arg: one more\n\
                     `portcullis run` argument (repeat it), e.g. for an A/B run of an agent option.\n\
                     --agent-default-limits: keep the agent's default stateless-reset limiter\n\
                     (otherwise raised as the stock server's connect-freq-initial).\n\
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
            rounds: 2,
            handshakes_only: false,
            agent_args: Vec::new(),
            agent_default_limits: false,
        }
    } else {
        Settings {
            iperf_secs: 10,
            client_counts: vec![1, 3],
            directions: vec![false, true],
            handshakes: 300,
            // Below 253: the agent lab's /24 client_cidr (in-flight sessions hold an address).
            inflight: vec![16, 64, 200],
            memory_inflight: 64,
            warmup_handshakes: 4,
            memory_sessions: 200,
            connect_samples: 5,
            ping_count: 50,
            ping_interval: Duration::from_millis(20),
            gen_deadline: Duration::from_secs(90),
            rounds: 3,
            handshakes_only: false,
            agent_args: Vec::new(),
            agent_default_limits: false,
        }
    };
    let mut s = s;
    if let Some(n) = args.handshakes {
        s.handshakes = n.max(1);
    }
    if let Some(v) = args.inflight.clone().filter(|v| !v.is_empty()) {
        s.inflight = v;
    }
    if let Some(n) = args.rounds {
        s.rounds = n;
    }
    if args.handshakes_only {
        s.handshakes_only = true;
        s.memory_sessions = 0;
    }
    s.agent_args = args.agent_args.clone();
    s.agent_default_limits = args.agent_default_limits;
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

    // Interleaved: the servers alternate round by round (stock first in even rounds), so a
    // drift of the machine's background load over the run hits both alike; each ratio is
    // taken within one round. Only the first round measures memory per session (not a rate).
    let mut rounds: Vec<(Value, Value)> = Vec::new();
    for round in 0..s.rounds {
        let mut sr = s.clone();
        if round > 0 {
            sr.memory_sessions = 0;
        }
        println!("bench-tunnel: round {} of {}", round + 1, s.rounds);
        let (stock, ours) = if round % 2 == 0 {
            let stock = run_stock(&sr, &c)?;
            check_stop()?;
            (stock, run_portcullis(&sr, &c)?)
        } else {
            let ours = run_portcullis(&sr, &c)?;
            check_stop()?;
            (run_stock(&sr, &c)?, ours)
        };
        check_stop()?;
        rounds.push((ours, stock));
    }

    machine["loadavg_after"] = json!(read_trim("/proc/loadavg"));
    let per_round: Vec<Value> = rounds
        .iter()
        .map(|(ours, stock)| report::compare(ours, stock))
        .collect();
    let comparison = report::combine(&per_round);
    let (ours, stock) = rounds.swap_remove(0);
    let later: Vec<Value> = rounds
        .into_iter()
        .enumerate()
        .map(|(i, (o, st))| {
            json!({
                "round": i + 1,
                "first": if (i + 1) % 2 == 0 { "stock" } else { "portcullis" },
                "portcullis": o,
                "stock": st,
            })
        })
        .collect();
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
            "order": "interleaved: `rounds` rounds, each one window per server in its own lab (dropped before the next), stock first in even rounds and Portcullis first in odd ones; per server and round: warm-up handshakes, memory (first round only), handshake rate, stock clients, idle RTT, iperf3. `portcullis` and `stock` hold the first round, `later_rounds` the others",
            "ratios": "per figure, the ratio Portcullis / stock within each round; `comparison` gives the median over rounds (`ratio`), its minimum and maximum (`ratio_min`, `ratio_max`) and every round's (`round_ratios`); `portcullis` and `stock` there are the medians of each server's figures over rounds; a target is judged on the median ratio",
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
        "later_rounds": later,
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
