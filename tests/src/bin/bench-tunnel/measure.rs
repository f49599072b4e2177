//! The measurements of one server: sessions, handshakes, time to connect, latency, throughput and CPU per byte.
use super::*;

/// How cycles are obtained: `perf stat -e cycles` if the machine counts them, else CPU
/// seconds × the clock from /proc/cpuinfo.
#[derive(Clone)]
pub(crate) struct Cycles {
    pub(crate) perf: bool,
    pub(crate) hz: f64,
    pub(crate) method: String,
    pub(crate) probe: String,
}

pub(crate) static PING_ID: AtomicU16 = AtomicU16::new(0);

pub(crate) fn ping_id() -> u16 {
    (std::process::id() as u16).wrapping_mul(31) ^ PING_ID.fetch_add(1, Ordering::Relaxed)
}

/// The files a client needs, whichever PKI made them: the harness's `LabPki` (stock
/// server) or `portcullis pki` (the agent's lab).
pub(crate) struct Creds {
    pub(crate) ca: PathBuf,
    pub(crate) tls_crypt: PathBuf,
    /// Certificate and key of each of [`DEFAULT_CLIENTS`].
    pub(crate) clients: Vec<(PathBuf, PathBuf)>,
}

impl Creds {
    pub(crate) fn of_lab(pki: &LabPki) -> Creds {
        Creds {
            ca: pki.ca.clone(),
            tls_crypt: pki.tls_crypt.clone(),
            clients: DEFAULT_CLIENTS
                .iter()
                .map(|cn| {
                    let ck = pki.client(cn);
                    (ck.cert.clone(), ck.key.clone())
                })
                .collect(),
        }
    }

    pub(crate) fn of_cli(pki: &CliPki) -> Creds {
        Creds {
            ca: pki.dir.join("ca.crt"),
            tls_crypt: pki.tls_crypt_key(),
            clients: DEFAULT_CLIENTS
                .iter()
                .map(|cn| (pki.cert(cn), pki.key(cn)))
                .collect(),
        }
    }

    /// The harness's client config (`ClientConfig::new`: UDP, AES-256-GCM, tls-crypt) for
    /// client `i` of [`DEFAULT_CLIENTS`], with these files.
    pub(crate) fn client_config(&self, i: usize) -> ClientConfig {
        let (cert, key) = &self.clients[i];
        ClientConfig {
            remote: SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT),
            proto: Proto::Udp,
            cipher: Cipher::Aes256Gcm,
            tls_crypt: Some(self.tls_crypt.clone()),
            ca: self.ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            tls12_only: false,
            ping_restart: None,
            verb: 3,
            extra: Vec::new(),
        }
    }
}

/// One server under test, as the measurements see it.
pub(crate) struct Side<'a> {
    pub(crate) name: &'static str,
    /// Underlay client namespaces (openvpn clients, iperf3 clients, the generator in [0]).
    pub(crate) clients: Vec<&'a NetNs>,
    /// The private network namespace (10.0.0.10: iperf3 servers, ping target).
    pub(crate) private: &'a NetNs,
    /// The gateway namespace (where the server's UDP socket and tun/TAP live).
    pub(crate) gw_ns: &'a NetNs,
    pub(crate) pki: &'a Creds,
    pub(crate) gw: GwSpec,
    /// The process whose RSS is the server's.
    pub(crate) rss_pid: u32,
    /// `(sessions, established sessions)` as the server reports them.
    pub(crate) sessions: &'a dyn Fn() -> Option<(usize, usize)>,
    pub(crate) tmp: &'a Path,
}

/// A generator run: `total` handshakes; `hold` keeps them connected until `during` has run.
pub(crate) fn run_generator(
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
        cert: side.pki.clients[0].0.clone(),
        key: side.pki.clients[0].1.clone(),
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
pub(crate) fn wait_drained(side: &Side, timeout: Duration) -> bool {
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

pub(crate) fn cycles_per_byte(cpu_s: f64, perf_cycles: Option<f64>, bytes: f64, c: &Cycles) -> f64 {
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
pub(crate) fn throughput_point(
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
pub(crate) fn connect_timed(
    side: &Side,
    ns: &NetNs,
    cfg: &ClientConfig,
) -> Result<(f64, OvpnClient)> {
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
/// session, handshake rate, stock clients (time to connected), idle RTT, iperf3 points (only
/// the first three with `handshakes_only`).
pub(crate) fn measure_side(side: &Side, s: &Settings, c: &Cycles) -> Result<Value> {
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

    // ---- memory per connected session (skipped with memory_sessions = 0) ----------------------
    let memory = if s.memory_sessions == 0 {
        Value::Null
    } else {
        measure_memory(side, s, &mut notes, drain)?
    };

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

    if s.handshakes_only {
        return Ok(json!({
            "warmup": warmup,
            "memory": memory,
            "handshakes": rates,
            "notes": notes,
        }));
    }

    // ---- stock clients: time to connected ----------------------------------------------------------
    // First `connect_samples` connects of a fresh client process in client namespace 0, each
    // stopped again (explicit-exit-notify: the server frees the session), then the clients
    // that stay for iperf3, also timed.
    check_stop()?;
    let mut ttc = Vec::new();
    for _ in 0..s.connect_samples {
        let mut cfg = side.pki.client_config(0);
        cfg.extra.push("explicit-exit-notify 1".into());
        let (took, cl) = connect_timed(side, side.clients[0], &cfg)?;
        ttc.push(took);
        cl.proc.stop();
    }
    let mut clients = Vec::new();
    for (i, ns) in side.clients.iter().enumerate().take(s.max_clients()) {
        let cfg = side.pki.client_config(i);
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

/// RSS before and while `memory_sessions` generator sessions are connected and idle.
fn measure_memory(
    side: &Side,
    s: &Settings,
    notes: &mut Vec<String>,
    drain: Duration,
) -> Result<Value> {
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
    if !wait_drained(side, drain) {
        notes.push("memory-test sessions still present 20 s after EXIT".into());
    }
    Ok(json!({
        "sessions_requested": s.memory_sessions,
        "sessions_connected": connected,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "per_session_kib": per_session,
        "server_view": during,
        "generator": held,
    }))
}
