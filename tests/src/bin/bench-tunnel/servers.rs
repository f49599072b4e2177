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
        "socket_buffers": buffers,
    });
    drop(server);
    drop(buffer_max);
    drop(lab);
    Ok(v)
}

pub(crate) fn run_portcullis(s: &Settings, c: &Cycles) -> Result<Value> {
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
    let buffers = socket_buffers(&lab.gw.gw);
    let mut v = measure_side(&side, s, c)?;
    let st = &lab.tunnel().stats;
    v["server"] = json!({
        "what": "Portcullis tunnel in this process (tests::tunnel::TunnelLab: 2 packet workers, one control thread) in front of the XDP data path on a TAP",
        "threads": tasks.iter().map(|t| t.1.clone()).collect::<Vec<_>>(),
        "cpu_accounting": format!("on-CPU time of this process's threads named pc-worker-* and pc-control: {}; the XDP program runs inside the workers' TAP writes and in the veths' softirq", sys::cpu_time_source()),
        "rss": "VmRSS of this benchmark process (the tunnel is in-process; the load generator is a separate process)",
        "reset_limiter": "ServerSettings::default: 200 stateless reset replies/s, burst 400",
        "tunnel_stats": tests::benchreport::tunnel_stats(st),
        "socket_buffers": buffers,
    });
    drop(lab);
    Ok(v)
}
