//! The two servers under test: the stock `openvpn --server` and Portcullis, each measured alike.
use super::*;

/// The stock server's configuration: the harness's baseline (`StockServerConfig::new`:
/// UDP, AES-256-GCM, tls-crypt, `duplicate-cn`, `disable-dco`) plus what the benchmark
/// needs: a status file (the session count), `max-clients` above the generator's sessions,
/// `connect-freq-initial` raised so the 2.6 default reset limiter (100 per 10 s) does not
/// cap the handshake rate, and a /21 pool instead of the /24: the stock server frees a
/// session 5 s after its EXIT, so 300 handshakes in a few seconds would exhaust a /24.
/// And the socket buffers Portcullis uses ([`SOCKET_BUFFER`], see [`CoreBufferMax`]).
pub(crate) fn stock_config(pki: &LabPki, status: &Path) -> Result<String> {
    let mut cfg = StockServerConfig::new(pki, Proto::Udp);
    cfg.extra = vec![
        format!("status {} 1", status.display()),
        "status-version 2".into(),
        "max-clients 2048".into(),
        "connect-freq-initial 100000 10".into(),
        format!("sndbuf {SOCKET_BUFFER}"),
        format!("rcvbuf {SOCKET_BUFFER}"),
    ];
    let text = cfg.render();
    let from = "server 10.100.0.0 255.255.255.0";
    if !text.contains(from) {
        bail!("the harness's stock server config changed: no {from:?} line in\n{text}");
    }
    Ok(text.replace(from, &format!("server 10.100.0.0 {STOCK_POOL_NETMASK}")))
}

/// The UDP socket buffer both servers run with: what Portcullis sets on its listeners
/// (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`, `io/udp.rs`), and what the stock server asks for
/// with `rcvbuf`/`sndbuf`.
pub(crate) const SOCKET_BUFFER: u64 = 4 << 20;

/// `net.core.rmem_max` and `wmem_max` raised to [`SOCKET_BUFFER`] for the stock server's run
/// (`rcvbuf`/`sndbuf` use `SO_RCVBUF`, which the kernel caps there), and put back on drop.
/// They are host-wide, not per namespace, and only the host's namespace may write them: this
/// runs on the benchmark's main thread, which is in the host's namespace between the labs.
pub(crate) struct CoreBufferMax {
    old: Vec<(&'static str, String)>,
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

fn host_sysctl_write(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).with_context(|| {
        format!("setting {key} = {value} (needs root in the host's network namespace)")
    })
}

impl CoreBufferMax {
    pub(crate) fn raise() -> Result<Self> {
        let mut old = Vec::new();
        for key in ["net.core.rmem_max", "net.core.wmem_max"] {
            let was = std::fs::read_to_string(sysctl_path(key))
                .with_context(|| format!("reading {key}"))?
                .trim()
                .to_string();
            if was.parse::<u64>().unwrap_or(0) < SOCKET_BUFFER {
                host_sysctl_write(key, &SOCKET_BUFFER.to_string())?;
                old.push((key, was));
            }
        }
        Ok(Self { old })
    }
}

impl Drop for CoreBufferMax {
    fn drop(&mut self) {
        for (key, was) in &self.old {
            if let Err(e) = host_sysctl_write(key, was) {
                eprintln!("bench-tunnel: could not put {key} back to {was}: {e}");
            }
        }
    }
}

/// The receive and send buffers (`ss -uamn`: `rb`, `tb`, in bytes, as the kernel doubled
/// them) of the UDP sockets bound to the OpenVPN port in `ns`: the proof that both servers
/// ran with the same.
pub(crate) fn socket_buffers(ns: &NetNs) -> Value {
    let out = ns.exec(&["ss", "-uamn"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let port = format!(":{OVPN_PORT} ");
    let mut socks = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if !l.contains(&port) {
            continue;
        }
        let mem = lines.peek().copied().unwrap_or_default();
        let field = |name: &str| {
            mem.split([',', '(', ')'])
                .find_map(|f| f.trim().strip_prefix(name)?.parse::<u64>().ok())
        };
        socks.push(
            json!({"socket": l.split_whitespace().nth(3), "rb": field("rb"), "tb": field("tb")}),
        );
    }
    json!({"requested": SOCKET_BUFFER, "sockets": socks})
}

/// `(sessions, sessions)` from the stock server's status file (`CLIENT_LIST` lines).
pub(crate) fn stock_sessions(status: &Path) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(status).ok()?;
    let n = text
        .lines()
        .filter(|l| l.starts_with("CLIENT_LIST,"))
        .count();
    Some((n, n))
}

pub(crate) fn run_stock(s: &Settings, c: &Cycles) -> Result<Value> {
    println!("bench-tunnel: stock openvpn --server: building the lab");
    let dir = TempDir::new("btstock");
    let pki = LabPki::generate(&dir.path().join("pki"));
    let lab = Lab::stock(s.max_clients());
    let status = dir.path().join("status.txt");
    let conf_text = stock_config(&pki, &status)?;
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, &conf_text)?;
    let conf_s = conf.display().to_string();
    let buffer_max = CoreBufferMax::raise()?;
    let server = Proc::spawn(
        &lab.gw,
        &["openvpn", "--config", &conf_s],
        &dir.path().join("server.log"),
        "stock openvpn server",
    );
    server
        .wait_log_or_exit("Initialization Sequence Completed", Duration::from_secs(20))
        .map_err(|e| anyhow!("{e}"))?;
    let buffers = socket_buffers(&lab.gw);
    let sessions = || stock_sessions(&status);
    let creds = Creds::of_lab(&pki);
    let side = Side {
        name: "stock",
        clients: lab.underlay.clients.iter().map(|c| &c.ns).collect(),
        private: &lab.net,
        gw_ns: &lab.gw,
        pki: &creds,
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
        "socket_buffers": buffers,
    });
    drop(server);
    drop(buffer_max);
    drop(lab);
    Ok(v)
}

/// The policy part of the agent's endpoint file (`tests::agent::endpoint_toml`): every user
/// may reach the private network's host (iperf3 servers, ping target).
const AGENT_POLICY: &str = "[[authorization_rule]]\ndestination = \"10.0.0.10/32\"\nall_users = true\ndescription = \"the benchmark's iperf3 servers and ping target\"\n";

/// `(sessions, established sessions)` from the agent's admin socket (`connections`, what
/// `portcullis connections list` asks).
fn agent_sessions(agent: &Agent) -> Option<(usize, usize)> {
    let v = agent.admin(&json!({"v": 1, "cmd": "connections"})).ok()?;
    let list = v["connections"].as_array()?;
    Some((
        list.len(),
        list.iter().filter(|c| c["established"] == true).count(),
    ))
}

/// The agent's `udp_reset_replies_per_sec` and `udp_reset_replies_burst`. The handshake
/// generator's sessions all come from one address, and one source gets an eighth of the
/// limiter: the default (200/s, burst 400, so 25/s and 50 per source) would cap the handshake
/// rate from the 51st handshake on, as the stock server's default limiter would (raised with
/// `connect-freq-initial` in [`stock_config`]).
pub(crate) const RESET_REPLIES: (u32, u32) = (100_000, 100_000);

pub(crate) fn run_portcullis(s: &Settings, c: &Cycles) -> Result<Value> {
    println!("bench-tunnel: Portcullis: starting `portcullis run` (XDP data path, TAP, tunnel)");
    let dir = TempDir::new("btours");
    // `portcullis run` as deployed: its own process in the gateway namespace, the endpoint file
    // with the connection and flow logs, the metrics listener and the admin socket on, a PKI
    // made with `portcullis pki`, the release binary (`$PORTCULLIS_BIN`, set by xtask). Its
    // reset limiter raised as the stock server's `connect-freq-initial` ([`RESET_REPLIES`])
    // unless `--agent-default-limits`.
    let endpoint = EndpointOpts {
        udp_reset_replies: (!s.agent_default_limits).then_some(RESET_REPLIES),
        ..EndpointOpts::default()
    };
    let run_args: Vec<&str> = s.agent_args.iter().map(String::as_str).collect();
    let lab = AgentLab::with_endpoint(
        s.max_clients(),
        DEFAULT_CLIENTS,
        AGENT_POLICY,
        &run_args,
        &endpoint,
    );
    let agent = lab.agent();
    let creds = Creds::of_cli(&lab.pki);
    let sessions = || agent_sessions(agent);
    // The whole process, as for the stock server.
    let gw = GwSpec {
        pid: agent.pid(),
        threads: Vec::new(),
    };
    let tasks = sys::gw_tasks(&gw);
    let side = Side {
        name: "portcullis",
        clients: lab.underlay.clients.iter().map(|c| &c.ns).collect(),
        private: &lab.net,
        gw_ns: &lab.gw,
        pki: &creds,
        gw,
        rss_pid: agent.pid(),
        sessions: &sessions,
        tmp: dir.path(),
    };
    let buffers = socket_buffers(&lab.gw);
    let mut v = measure_side(&side, s, c)?;
    if !agent.is_running() {
        bail!(
            "portcullis run exited during the run:\n{}",
            agent.log_tail(40)
        );
    }
    let status = agent.admin(&json!({"v": 1, "cmd": "status"})).ok();
    let config = std::fs::read_to_string(&lab.config).unwrap_or_default();
    v["server"] = json!({
        "what": format!("`portcullis run` (the agent binary {}) in the gateway namespace: the XDP data path on a TAP, connection and flow logs, metrics listener, admin socket", tests::agent::portcullis_bin().display()),
        "config": config,
        "threads_at_start": tasks.iter().map(|t| t.1.clone()).collect::<Vec<_>>(),
        "cpu_accounting": format!("on-CPU time of the portcullis process's tasks: {}; the XDP program runs inside the agent's TAP writes and in the veths' softirq (machine figures count all of it)", sys::cpu_time_source()),
        "rss": "VmRSS of the portcullis process; BPF map memory is kernel memory and not in it",
        "agent_status": status,
        "socket_buffers": buffers,
    });
    drop(lab);
    Ok(v)
}
