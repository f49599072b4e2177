//! The `portcullis` binary end to end: the CLI (`check`, `pki`, `client-config export`,
//! `reload`, `connections`) and `portcullis run` as a separate process inside a gateway
//! namespace, with stock `openvpn` clients using the profiles the CLI exports.
//!
//! ```text
//!  client ns i (pct-oc…)                 gw ns (pct-g…)                          net ns (pct-n…)
//!  eth0 192.0.2.(11+i) ─veth p2p─ pct-u… 192.0.2.1   portcullis run (nsenter)
//!  tun0 10.100.0.x  (tunnel)  ───────►  :1194 udp+tcp ─► pc-lab (TAP, XDP) ─► pct-gw0 10.0.0.1/24 ─veth─ eth0 10.0.0.10/24
//! ```
//!
//! Everything is removed on drop, also on panic: the agent is stopped (SIGTERM, then
//! SIGKILL), the namespaces and `pct-*` links deleted, the pin root under
//! `/sys/fs/bpf/portcullis-test-*` removed, the temporary directory (PKI, endpoint file, admin
//! socket, logs) deleted.
use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Read, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use portcullis::netns::Veth;

use crate::{
    gateway::{PinRoot, GW_IF, GW_NET_ADDR},
    openvpn::{Lab, Proc, TempDir, Underlay, OVPN_PORT, UNDERLAY_GW},
    unique, NetNs,
};

/// The endpoint name of the lab: TAP `pc-lab`, pins `<pin root>/lab`.
pub const ENDPOINT: &str = "lab";
/// The agent's TAP device in the gateway namespace.
pub const TAP: &str = "pc-lab";
/// What the stock client logs once the tunnel is up.
pub const COMPLETED: &str = "Initialization Sequence Completed";

/// The `portcullis` binary: `$PORTCULLIS_BIN`, or `debug/portcullis` in `$CARGO_TARGET_DIR`
/// or this workspace's `target/` (`cargo build -p portcullis-agent`; `cargo xtask test`
/// builds it first).
pub fn portcullis_bin() -> PathBuf {
    let p = std::env::var_os("PORTCULLIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
                .join("debug/portcullis")
        });
    assert!(
        p.is_file(),
        "{} does not exist: run `cargo build -p portcullis-agent` first (or set PORTCULLIS_BIN)",
        p.display()
    );
    p
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Run `prog args` with output captured, killed after `timeout` (status `None` then).
pub fn run_bounded(prog: &Path, args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(prog)
        .args(args)
        // Error messages without an anyhow backtrace, as an operator sees them.
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", prog.display()));
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let mut b = Vec::new();
                let _ = r.read_to_end(&mut b);
                s = String::from_utf8_lossy(&b).into_owned();
            }
            s
        })
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as _));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `portcullis args...` (bounded by 30 s).
pub fn cli(args: &[&str]) -> Output {
    run_bounded(&portcullis_bin(), args, Duration::from_secs(30))
}

/// `portcullis args...`, which must succeed; its stdout.
pub fn cli_ok(args: &[&str]) -> String {
    let o = cli(args);
    assert!(o.success(), "portcullis {args:?} failed: {o}");
    o.stdout
}

/// Poll `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- PKI made with the CLI --------------------------------------------------------------------

/// A CA made with `portcullis pki` in `dir`: `ca.crt`, `server.crt`/`.key`, client
/// certificates, `crl.pem`, and `tc.key` from `openvpn --genkey tls-crypt`.
pub struct CliPki {
    pub dir: PathBuf,
}

impl CliPki {
    /// `pki init`, `pki issue-server --cn server`, `pki issue-client` for each of `clients`,
    /// and a tls-crypt key.
    pub fn new(dir: &Path, clients: &[&str]) -> CliPki {
        let d = dir.to_string_lossy().into_owned();
        cli_ok(&["pki", "init", "--dir", &d]);
        cli_ok(&["pki", "issue-server", "--dir", &d, "--cn", "server"]);
        let pki = CliPki {
            dir: dir.to_path_buf(),
        };
        for c in clients {
            pki.issue_client(c);
        }
        let tc = pki.tls_crypt_key();
        let o = run_bounded(
            Path::new("openvpn"),
            &["--genkey", "tls-crypt", &tc.to_string_lossy()],
            Duration::from_secs(10),
        );
        assert!(o.success(), "openvpn --genkey tls-crypt: {o}");
        pki
    }

    pub fn issue_client(&self, cn: &str) {
        let out = cli_ok(&[
            "pki",
            "issue-client",
            "--dir",
            &self.dir.to_string_lossy(),
            "--cn",
            cn,
        ]);
        assert!(
            out.contains(&format!("client certificate for {cn:?}")),
            "{out}"
        );
    }

    pub fn revoke(&self, cn: &str) -> String {
        cli_ok(&[
            "pki",
            "revoke",
            "--dir",
            &self.dir.to_string_lossy(),
            "--cn",
            cn,
        ])
    }

    pub fn cert(&self, cn: &str) -> PathBuf {
        self.dir.join(format!("{cn}.crt"))
    }

    pub fn key(&self, cn: &str) -> PathBuf {
        self.dir.join(format!("{cn}.key"))
    }

    pub fn tls_crypt_key(&self) -> PathBuf {
        self.dir.join("tc.key")
    }
}

// ---- endpoint file ----------------------------------------------------------------------------

/// What the lab's endpoint file sets besides the policy. The default is the lab every test
/// uses: a /24 pool and the agent's own limits. The scale benchmark widens them for 10,000
/// sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointOpts {
    /// `client_cidr`.
    pub client_cidr: ipnet::Ipv4Net,
    /// `max_connections` (`None`: the agent's default).
    pub max_connections: Option<usize>,
    /// `udp_reset_replies_per_sec` and `udp_reset_replies_burst` (`None`: the defaults).
    pub udp_reset_replies: Option<(u32, u32)>,
}

impl Default for EndpointOpts {
    fn default() -> Self {
        EndpointOpts {
            client_cidr: "10.100.0.0/24".parse().expect("literal"),
            max_connections: None,
            udp_reset_replies: None,
        }
    }
}

impl EndpointOpts {
    /// The top-level lines these options add to the file.
    fn toml_lines(&self) -> String {
        let mut s = format!("client_cidr = \"{}\"\n", self.client_cidr);
        if let Some(n) = self.max_connections {
            s.push_str(&format!("max_connections = {n}\n"));
        }
        if let Some((rate, burst)) = self.udp_reset_replies {
            s.push_str(&format!(
                "udp_reset_replies_per_sec = {rate}\nudp_reset_replies_burst = {burst}\n"
            ));
        }
        s
    }
}

/// The lab's endpoint file: listeners on 192.0.2.1:1194 (UDP and TCP), split tunnel, the
/// CLI PKI with its CRL and tls-crypt key, the admin socket next to the file, one target
/// network behind [`GW_IF`] with a route to 10.0.0.0/24; `policy` (groups, authorization
/// rules, ...) is appended as is. Relative paths: the file lives in the lab directory, the
/// PKI in `pki/`. The pool and limits of [`EndpointOpts::default`].
pub fn endpoint_toml(policy: &str) -> String {
    endpoint_toml_with(&EndpointOpts::default(), policy)
}

/// [`endpoint_toml`] with another pool and other limits.
pub fn endpoint_toml_with(opts: &EndpointOpts, policy: &str) -> String {
    // Top-level keys at the start of `policy` (before its first table) must precede the
    // tables of the file.
    let split = policy
        .lines()
        .position(|l| l.trim_start().starts_with('['))
        .unwrap_or(policy.lines().count());
    let top: Vec<&str> = policy.lines().take(split).collect();
    let rest: Vec<&str> = policy.lines().skip(split).collect();
    let top: String = top
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let policy = rest.join("\n");
    let opts = opts.toml_lines();
    format!(
        r#"{top}name = "{ENDPOINT}"
{opts}listen = ["udp://{UNDERLAY_GW}:{OVPN_PORT}", "tcp://{UNDERLAY_GW}:{OVPN_PORT}"]
public_address = "{UNDERLAY_GW}"
split_tunnel = true
dns_servers = ["10.0.0.2"]
admin_socket = "admin.sock"

[logging]
connection_log = "connections.log"
flow_log = "flows.log"
allowed_flows = true
admin_audit_log = "audit.log"

[metrics]
listen = "127.0.0.1:9108"

[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
crl = ["pki/crl.pem"]
tls_crypt_key = "pki/tc.key"
pki_dir = "pki"

[[target_network]]
name = "private"
interface = "{GW_IF}"
snat_address = "{GW_NET_ADDR}"

[[route]]
destination = "10.0.0.0/24"
target_network = "private"
description = "the private network"

{policy}
"#
    )
}

/// Replace `path` atomically (write a sibling, rename), as an editor saves.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

// ---- the agent process ------------------------------------------------------------------------

/// `portcullis run` inside a namespace (entered with `nsenter --net`, which keeps the root
/// namespace's /sys and so bpffs). Drop: SIGTERM, up to 10 s of grace, SIGKILL.
pub struct Agent {
    child: Mutex<Child>,
    pid: u32,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(ns: &NetNs, config: &Path, pin_root: &Path, socket: &Path, log: &Path) -> Agent {
        Agent::start_with(ns, config, pin_root, socket, log, &[])
    }

    /// Like [`Agent::start`], with more arguments for `portcullis run` (`--keep-maps`).
    pub fn start_with(
        ns: &NetNs,
        config: &Path,
        pin_root: &Path,
        socket: &Path,
        log: &Path,
        extra: &[String],
    ) -> Agent {
        let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        // nsenter execs the agent (no --fork for a network namespace), so the pid is its.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(portcullis_bin())
            .args(["run", "--config"])
            .arg(config)
            .arg("--pin-root")
            .arg(pin_root)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn portcullis run in {}: {e}", ns.name));
        Agent {
            pid: child.id(),
            child: Mutex::new(child),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn is_running(&self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        crate::openvpn::read_log(&self.log)
    }

    pub fn log_tail(&self, n: usize) -> String {
        crate::openvpn::last_lines(&self.log(), n)
    }

    pub fn log_count(&self, pattern: &str) -> usize {
        self.log().matches(pattern).count()
    }

    /// Wait until the admin socket answers `status`; the error has the log tail.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let ok = poll(timeout, || {
            if !self.is_running() {
                return Some(false);
            }
            match self.admin(&serde_json::json!({"cmd": "status"})) {
                Ok(v) if v["ok"] == true => Some(true),
                _ => None,
            }
        });
        match ok {
            Some(true) => Ok(()),
            Some(false) => Err(format!(
                "portcullis run exited ({:?}) before it was ready; log:\n{}",
                self.child().try_wait(),
                self.log_tail(60)
            )),
            None => Err(format!(
                "portcullis run not ready within {timeout:?}; log:\n{}",
                self.log_tail(60)
            )),
        }
    }

    /// One request on the admin socket (a JSON line), its JSON reply.
    pub fn admin(&self, req: &serde_json::Value) -> Result<serde_json::Value, String> {
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("{req}\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("reply {line:?} is not JSON: {e}"))
    }

    /// `{"cmd":"status"}`.
    pub fn status(&self) -> serde_json::Value {
        self.admin(&serde_json::json!({"cmd": "status"}))
            .unwrap_or_else(|e| panic!("status: {e}\n{}", self.log_tail(40)))
    }

    pub fn signal(&self, sig: libc::c_int) {
        let mut child = self.child();
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child, not reaped yet (we hold its handle), so the
            // pid cannot have been reused.
            unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        }
    }

    /// Wait (bounded) for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        poll(timeout, || self.child().try_wait().ok().flatten())
    }

    /// SIGTERM, up to 10 s, SIGKILL; the exit status.
    pub fn stop(&self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_exit(Duration::from_secs(10)) {
            return Some(st);
        }
        let mut child = self.child();
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- log of portcullis run ({}) ----\n{}\n---- end of log ----",
                self.log.display(),
                self.log_tail(200)
            );
        }
    }
}

// ---- a stock client with an exported profile --------------------------------------------------

/// `openvpn --config <profile>` in a client namespace, the profile exactly as
/// `portcullis client-config export` wrote it. Stopped on drop.
pub struct ProfileClient {
    pub proc: Proc,
    pub profile: PathBuf,
    _dir: TempDir,
}

impl ProfileClient {
    pub fn start(ns: &NetNs, profile: &str) -> ProfileClient {
        let dir = TempDir::new("agentc");
        let path = dir.path().join("client.ovpn");
        fs::write(&path, profile).expect("write the profile");
        let proc = Proc::spawn(
            ns,
            &["openvpn", "--config", &path.to_string_lossy()],
            &dir.path().join("openvpn.log"),
            "openvpn (exported profile)",
        );
        ProfileClient {
            proc,
            profile: path,
            _dir: dir,
        }
    }

    /// Wait for "Initialization Sequence Completed"; the error has the log tail.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), String> {
        self.proc.wait_log_or_exit(COMPLETED, timeout)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// The IPv4 address in 10.100.0.0/24 the tunnel gave `ns` (from `ip addr`), if any.
pub fn tunnel_addr(ns: &NetNs) -> Option<Ipv4Addr> {
    let out = ns.ip(&["-o", "-4", "addr", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|a| a.octets()[..3] == [10, 100, 0])
}

// ---- the lab ----------------------------------------------------------------------------------

/// Gateway, private network and client namespaces, a CLI PKI, the endpoint file and
/// `portcullis run` in the gateway namespace. Field order is drop order: the agent stops
/// first (while its namespace still exists), then the client namespaces, the gateway's,
/// the pins and the directory.
pub struct AgentLab {
    pub agent: Option<Agent>,
    pub underlay: Underlay,
    _private_link: Veth,
    pub net: NetNs,
    pub gw: NetNs,
    pub pins: PinRoot,
    pub pki: CliPki,
    /// The endpoint file.
    pub config: PathBuf,
    /// The admin socket (`admin.sock` next to the endpoint file).
    pub socket: PathBuf,
    pub dir: TempDir,
    /// Extra `portcullis run` arguments, and how many agents ran (for log names).
    run_args: Vec<String>,
    runs: usize,
    /// The pool and limits of the endpoint file (kept by [`AgentLab::write_policy`]).
    endpoint: EndpointOpts,
}

impl AgentLab {
    /// Gives the private network a second host address, `addr` (a destination other rules
    /// decide), with a permanent neighbour entry for it on the gateway so that the first
    /// packet is not lost to address resolution.
    pub fn add_net_address(&self, addr: Ipv4Addr) {
        self.net
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        let net_mac = portcullis::netns::fmt_mac(&crate::mac_of(&self.net, "eth0"));
        self.gw.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &net_mac,
            "dev",
            GW_IF,
            "nud",
            "permanent",
        ]);
    }

    /// The topology, a PKI with `clients`, the endpoint file with `policy`
    /// ([`endpoint_toml`]) and a running agent.
    pub fn new(n_clients: usize, clients: &[&str], policy: &str) -> AgentLab {
        AgentLab::new_with(n_clients, clients, policy, &[])
    }

    /// Like [`AgentLab::new`], with more arguments for `portcullis run` (`--keep-maps`), also
    /// used by [`AgentLab::restart_agent`].
    pub fn new_with(
        n_clients: usize,
        clients: &[&str],
        policy: &str,
        run_args: &[&str],
    ) -> AgentLab {
        AgentLab::with_endpoint(
            n_clients,
            clients,
            policy,
            run_args,
            &EndpointOpts::default(),
        )
    }

    /// Like [`AgentLab::new_with`], with another pool and other limits in the endpoint file
    /// ([`endpoint_toml_with`]).
    pub fn with_endpoint(
        n_clients: usize,
        clients: &[&str],
        policy: &str,
        run_args: &[&str],
        endpoint: &EndpointOpts,
    ) -> AgentLab {
        let run_args: Vec<String> = run_args.iter().map(|s| s.to_string()).collect();
        let dir = TempDir::new("agent");
        let pki = CliPki::new(&dir.path().join("pki"), clients);
        let config = dir.path().join("endpoint.toml");
        write_atomic(&config, &endpoint_toml_with(endpoint, policy));
        let socket = dir.path().join("admin.sock");
        let Lab {
            underlay,
            private_link,
            net,
            gw,
        } = Lab::topology(n_clients);
        let pins = PinRoot(PathBuf::from(format!(
            "/sys/fs/bpf/portcullis-test-{}",
            unique("a")
        )));
        let agent = Agent::start_with(
            &gw,
            &config,
            &pins.0,
            &socket,
            &dir.path().join("agent.log"),
            &run_args,
        );
        let lab = AgentLab {
            agent: Some(agent),
            underlay,
            _private_link: private_link,
            net,
            gw,
            pins,
            pki,
            config,
            socket,
            dir,
            run_args,
            runs: 1,
            endpoint: endpoint.clone(),
        };
        if let Err(e) = lab.agent().wait_ready(Duration::from_secs(30)) {
            panic!("{e}");
        }
        lab
    }

    /// Stop the agent (SIGTERM: it tells clients to reconnect) and start a new one with the
    /// same arguments (log `agent-<n>.log`); returns once the new one answers on its admin
    /// socket, with the instant the old one was told to stop.
    pub fn restart_agent(&mut self) -> Instant {
        let stopped_at = Instant::now();
        if let Some(old) = self.agent.take() {
            let st = old.stop();
            assert!(
                st.is_some_and(|s| s.success()),
                "the agent did not stop cleanly ({st:?}):\n{}",
                old.log_tail(40)
            );
        }
        self.runs += 1;
        let log = self.dir.path().join(format!("agent-{}.log", self.runs));
        self.agent = Some(Agent::start_with(
            &self.gw,
            &self.config,
            &self.pins.0,
            &self.socket,
            &log,
            &self.run_args,
        ));
        if let Err(e) = self.agent().wait_ready(Duration::from_secs(30)) {
            panic!("{e}");
        }
        stopped_at
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the agent runs")
    }

    pub fn client_ns(&self, i: usize) -> &NetNs {
        &self.underlay.client(i).ns
    }

    /// The endpoint's pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.pins.0.join(ENDPOINT)
    }

    pub fn config_arg(&self) -> String {
        self.config.to_string_lossy().into_owned()
    }

    /// `portcullis client-config export --config F --cert C --key K` for `cn`.
    pub fn export_profile(&self, cn: &str) -> String {
        cli_ok(&[
            "client-config",
            "export",
            "--config",
            &self.config_arg(),
            "--cert",
            &self.pki.cert(cn).to_string_lossy(),
            "--key",
            &self.pki.key(cn).to_string_lossy(),
        ])
    }

    /// Start `cn`'s stock client with its exported profile in client namespace `i`.
    pub fn start_client(&self, i: usize, cn: &str) -> ProfileClient {
        ProfileClient::start(self.client_ns(i), &self.export_profile(cn))
    }

    /// Like [`AgentLab::start_client`], waiting (up to 20 s) until it is connected.
    pub fn connect(&self, i: usize, cn: &str) -> ProfileClient {
        let c = self.start_client(i, cn);
        if let Err(e) = c.wait_connected(Duration::from_secs(20)) {
            panic!(
                "{cn} does not connect: {e}\nagent log:\n{}",
                self.agent().log_tail(40)
            );
        }
        c
    }

    /// `portcullis connections list --json --config F`: the connections array.
    pub fn connections(&self) -> Vec<serde_json::Value> {
        let out = cli_ok(&[
            "connections",
            "list",
            "--json",
            "--config",
            &self.config_arg(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("connections list --json is not JSON ({e}): {out}"));
        v["connections"]
            .as_array()
            .unwrap_or_else(|| panic!("no connections array: {v}"))
            .clone()
    }

    /// `portcullis reload --config F`.
    pub fn reload(&self) -> Output {
        cli(&["reload", "--config", &self.config_arg()])
    }

    /// Rewrite the endpoint file with another policy part.
    pub fn write_policy(&self, policy: &str) {
        write_atomic(&self.config, &endpoint_toml_with(&self.endpoint, policy));
    }
}

/// `GET /metrics` from the agent's metrics endpoint (127.0.0.1:9108 inside `ns`).
pub fn scrape_metrics(ns: &NetNs) -> String {
    try_scrape_metrics(ns).unwrap_or_else(|e| panic!("metrics endpoint: {e}"))
}

/// [`scrape_metrics`] that reports a refused connection instead of panicking (a benchmark
/// keeps its figures when the last scrape fails).
pub fn try_scrape_metrics(ns: &NetNs) -> std::io::Result<String> {
    ns.run(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:9108".parse().unwrap(),
            Duration::from_secs(2),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis::config::EndpointConfig;

    /// The file as the agent reads it (its model refuses unknown keys, so a misspelt key
    /// fails here, not in a privileged run).
    fn parsed(opts: &EndpointOpts) -> EndpointConfig {
        let text = endpoint_toml_with(
            opts,
            "[[authorization_rule]]\ndestination = \"10.0.0.10/32\"\nall_users = true\n",
        );
        portcullis::toml_from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn endpoint_options_reach_the_agents_settings() {
        let default = parsed(&EndpointOpts::default());
        assert_eq!(default.client_cidr.to_string(), "10.100.0.0/24");
        assert_eq!(
            default.server_settings().reset_rate,
            portcullis::openvpn::server::ServerSettings::DEFAULT_RESET_RATE
        );
        let wide = parsed(&EndpointOpts {
            client_cidr: "10.100.0.0/17".parse().unwrap(),
            max_connections: Some(16_384),
            udp_reset_replies: Some((100_000, 100_000)),
        });
        assert_eq!(wide.client_cidr.to_string(), "10.100.0.0/17");
        let s = wide.server_settings();
        assert_eq!(s.max_sessions, 16_384);
        assert_eq!(s.reset_rate, (100_000, 100_000));
        assert_eq!(wide.authorization_rule.len(), 1);
    }
}
