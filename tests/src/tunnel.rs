//! Our OpenVPN server, in-process, in front of the XDP data path: the agent's endpoint
//! ([`Endpoint::build`], as `portcullis run` starts it, its loop on a thread) in a
//! [`Network`] (gateway and private-network namespaces), listening on the underlay,
//! and client namespaces on the underlay for stock `openvpn` clients.
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portcullis::config::EndpointConfig;
use portcullis::datapath::maps::Maps;
use portcullis::endpoint::{AdjustServer, BuildOptions, Endpoint};
use portcullis::io::tls_files::ReloadableTls;
use portcullis::io::TunnelHandle;
use portcullis::netns::Netns;
use portcullis::openvpn::env::Env;
use portcullis::openvpn::server::{PushSettings, ServerEvent};
use portcullis::openvpn::session::Renegotiation;
use portcullis::openvpn::tls_crypt_v2::ServerKey;
use portcullis::policy::PolicyInput;
use tokio::sync::Notify;

use crate::gateway::{base_policy, Network, Options, TAP};
use crate::openvpn::{LabPki, TempDir, Underlay, OVPN_PORT, UNDERLAY_GW};

/// The lab endpoint's name (its pins live under `<pins>/lab`).
const ENDPOINT: &str = "lab";
/// The tls-crypt-v2 server key's file name in the lab directory.
const V2_SERVER_KEY: &str = "tls-crypt-v2-server.key";

pub struct TunnelOpts {
    pub tls_crypt: bool,
    /// tls-crypt-v2 with a fresh server key ([`TunnelLab::tls_crypt_v2`]) and this
    /// `max_age_days` (`Some(None)`: any age); `None`: off.
    pub tls_crypt_v2: Option<Option<u32>>,
    pub udp: bool,
    pub tcp: bool,
    pub reneg: Renegotiation,
    pub crls: Vec<PathBuf>,
    pub clients: usize,
    pub policy: PolicyInput,
    pub push: PushSettings,
    pub ping: Duration,
    pub ping_restart: Duration,
    /// Packet workers of the tunnel.
    pub workers: usize,
    /// Concurrent sessions (the endpoint's `max_connections`); `None`: the default.
    pub max_sessions: Option<usize>,
    /// Stateless reset replies per second and burst; `None`: the default.
    pub reset_rate: Option<(u32, u32)>,
    /// The endpoint file's `tcp_handshake_timeout_secs` and `tcp_idle_timeout_secs`;
    /// `None`: the defaults.
    pub tcp_timeouts: Option<(u64, u64)>,
}

impl Default for TunnelOpts {
    fn default() -> Self {
        Self {
            tls_crypt: true,
            tls_crypt_v2: None,
            udp: true,
            tcp: true,
            reneg: Renegotiation::default(),
            crls: Vec::new(),
            clients: 1,
            policy: base_policy(),
            push: PushSettings {
                routes: vec!["10.0.0.0/24".parse().unwrap()],
                dns: vec!["10.0.0.2".parse().unwrap()],
                full_tunnel: false,
                session_timeout: None,
                echo: Vec::new(),
            },
            ping: Duration::from_secs(10),
            ping_restart: Duration::from_secs(60),
            workers: 2,
            max_sessions: None,
            reset_rate: None,
            tcp_timeouts: None,
        }
    }
}

/// The endpoint's loop on its thread, inside the gateway namespace.
struct Running {
    stop: Arc<Notify>,
    /// Says when the loop and the endpoint's shutdown are done.
    done: mpsc::Receiver<anyhow::Result<()>>,
    thread: JoinHandle<()>,
}

/// Field order is drop order (after [`Drop`] stopped the endpoint): the clients'
/// namespaces go, then the gateway.
pub struct TunnelLab {
    running: Option<Running>,
    tunnel: TunnelHandle,
    pub events: mpsc::Receiver<ServerEvent>,
    pub tls: Arc<ReloadableTls>,
    /// The endpoint's pinned maps (counters, flows).
    pub maps: Maps,
    pub underlay: Underlay,
    pub gw: Network,
    pub pki: LabPki,
    /// The tls-crypt-v2 server key's file, when [`TunnelOpts::tls_crypt_v2`] is set.
    pub tls_crypt_v2: Option<PathBuf>,
    /// Every event [`TunnelLab::wait_event`] and [`TunnelLab::seen`] took from `events`, in
    /// order, so waiting for one event does not lose the others.
    history: Mutex<Vec<ServerEvent>>,
    config_path: PathBuf,
    config: toml::Table,
    _dir: TempDir,
}

/// The endpoint file for `policy`, with the lab PKI and listeners: the policy's keys at the
/// top level, as an operator writes them.
fn endpoint_file(
    policy: &PolicyInput,
    dir: &std::path::Path,
    pki: &LabPki,
    opts: &TunnelOpts,
) -> toml::Table {
    let mut t = toml::Table::try_from(policy).expect("the policy serializes");
    let at = SocketAddr::V4(SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT));
    let mut listen = Vec::new();
    if opts.udp {
        listen.push(toml::Value::from(format!("udp://{at}")));
    }
    if opts.tcp {
        listen.push(toml::Value::from(format!("tcp://{at}")));
    }
    let path = |p: &std::path::Path| toml::Value::from(p.display().to_string());
    t.insert("name".into(), ENDPOINT.into());
    t.insert("listen".into(), listen.into());
    t.insert("admin_socket".into(), path(&dir.join("admin.sock")));
    if let Some(n) = opts.max_sessions {
        t.insert("max_connections".into(), (n as i64).into());
    }
    if let Some((handshake, idle)) = opts.tcp_timeouts {
        t.insert(
            "tcp_handshake_timeout_secs".into(),
            (handshake as i64).into(),
        );
        t.insert("tcp_idle_timeout_secs".into(), (idle as i64).into());
    }
    let mut tls = toml::Table::new();
    tls.insert("cert".into(), path(&pki.server.cert));
    tls.insert("key".into(), path(&pki.server.key));
    tls.insert("client_ca".into(), path(&pki.ca));
    tls.insert(
        "crl".into(),
        opts.crls.iter().map(|c| path(c)).collect::<Vec<_>>().into(),
    );
    if opts.tls_crypt {
        tls.insert("tls_crypt_key".into(), path(&pki.tls_crypt));
    }
    if let Some(max_age_days) = opts.tls_crypt_v2 {
        tls.insert(
            "tls_crypt_v2_server_key".into(),
            path(&dir.join(V2_SERVER_KEY)),
        );
        if let Some(d) = max_age_days {
            tls.insert("tls_crypt_v2_max_age_days".into(), i64::from(d).into());
        }
    }
    t.insert("tls".into(), tls.into());
    let secs = |d: Duration| i64::try_from(d.as_secs()).expect("seconds fit");
    t.insert("keepalive_interval_secs".into(), secs(opts.ping).into());
    t.insert(
        "keepalive_timeout_secs".into(),
        secs(opts.ping_restart).into(),
    );
    t.insert(
        "renegotiate_secs".into(),
        opts.reneg.interval.map_or(0, secs).into(),
    );
    // Logs and metrics on, as a deployed `portcullis run` has them: the tests and the
    // benchmarks measure that endpoint, not a quieter one. The metrics listener is on the
    // gateway namespace's own loopback.
    let mut logging = toml::Table::new();
    logging.insert("connection_log".into(), path(&dir.join("connections.log")));
    logging.insert("flow_log".into(), path(&dir.join("flows.log")));
    t.insert("logging".into(), logging.into());
    let mut metrics = toml::Table::new();
    metrics.insert("listen".into(), "127.0.0.1:9108".into());
    t.insert("metrics".into(), metrics.into());
    t
}

fn parse_endpoint(t: &toml::Table) -> EndpointConfig {
    let cfg = EndpointConfig::parse(&t.to_string()).unwrap_or_else(|e| panic!("lab endpoint: {e}"));
    cfg.validate()
        .unwrap_or_else(|e| panic!("lab endpoint invalid: {e}"));
    cfg
}

impl TunnelLab {
    pub fn new(opts: TunnelOpts) -> TunnelLab {
        Self::new_with(opts, |_| Vec::new())
    }

    /// Like [`TunnelLab::new`], but `prepare` sees the lab PKI before the server starts (to
    /// issue more certificates and write CRLs signed by the lab CA); the paths it returns are
    /// added to `opts.crls`.
    pub fn new_with(
        mut opts: TunnelOpts,
        prepare: impl FnOnce(&mut LabPki) -> Vec<PathBuf>,
    ) -> TunnelLab {
        let dir = TempDir::new("tlab");
        let mut pki = LabPki::generate(dir.path());
        opts.crls.extend(prepare(&mut pki));
        let gw = Network::new(&Options::default());
        let underlay = Underlay::attach(&gw.gw, opts.clients);
        let tls_crypt_v2 = opts.tls_crypt_v2.map(|_| {
            let key = ServerKey::generate(&*Env::system().rng).unwrap();
            let path = dir.path().join(V2_SERVER_KEY);
            std::fs::write(&path, key.to_pem()).unwrap();
            path
        });
        let config = endpoint_file(&opts.policy, dir.path(), &pki, &opts);
        let config_path = dir.path().join("endpoint.toml");
        std::fs::write(&config_path, config.to_string()).expect("write the endpoint file");
        let cfg = parse_endpoint(&config);
        // What the endpoint file does not say: the lab's push options, renegotiation by
        // volume, and the reset rate of the scale benchmark.
        let (push, reneg, reset_rate) = (opts.push.clone(), opts.reneg.clone(), opts.reset_rate);
        let adjust = AdjustServer(Arc::new(move |s| {
            s.push = push.clone();
            if let Some(r) = reset_rate {
                s.reset_rate = r;
            }
            for t in [&mut s.udp, &mut s.tcp] {
                t.reneg.bytes = reneg.bytes;
                t.reneg.packets = reneg.packets;
            }
        }));
        let build = BuildOptions {
            config_path: Some(config_path.clone()),
            pin_root: gw.pins.0.clone(),
            keep_maps: false,
            workers: opts.workers,
            tap_queues: Some(1),
            tap_name: Some(TAP.into()),
            signals: false,
            adjust_server: Some(adjust),
        };
        let stop = Arc::new(Notify::new());
        let (up_tx, up_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let gw_name = gw.gw.name.clone();
        let loop_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pct-endpoint".into())
            .spawn(move || {
                let gw_ns = Netns::open(&gw_name).expect("the gateway namespace");
                let _in_gw = gw_ns.enter().expect("enter the gateway namespace");
                let ep = match Endpoint::build(&cfg, &build) {
                    Ok(ep) => ep,
                    Err(e) => {
                        let _ = up_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                let _ = up_tx.send(Ok((
                    ep.tunnel().handle(),
                    ep.subscribe(),
                    ep.tls().clone(),
                    ep.datapath().options.pin_dir(),
                )));
                let _ = done_tx.send(ep.run_until(Some(loop_stop)));
            })
            .expect("spawn the endpoint thread");
        let (tunnel, events, tls, pin_dir) = up_rx
            .recv()
            .expect("the endpoint thread ended")
            .unwrap_or_else(|e| panic!("the lab endpoint did not start: {e}"));
        let maps = Maps::open_pinned(&pin_dir).expect("pinned maps");
        TunnelLab {
            running: Some(Running { stop, done, thread }),
            tunnel,
            events,
            tls,
            maps,
            underlay,
            gw,
            pki,
            tls_crypt_v2,
            history: Mutex::new(Vec::new()),
            config_path,
            config,
            _dir: dir,
        }
    }

    /// Applies `policy` as an operator does: rewrites the endpoint file, which the endpoint
    /// reloads (it checks every second); returns once the new generation is active.
    pub fn set_policy(&mut self, policy: PolicyInput) -> u32 {
        let before = self.maps.active_generation().expect("active generation");
        let mut t = toml::Table::try_from(&policy).expect("the policy serializes");
        for (k, v) in &self.config {
            if !t.contains_key(k) && !is_policy_key(k) {
                t.insert(k.clone(), v.clone());
            }
        }
        parse_endpoint(&t);
        std::fs::write(&self.config_path, t.to_string()).expect("write the endpoint file");
        self.config = t;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let g = self.maps.active_generation().expect("active generation");
            if g != before {
                return g;
            }
            assert!(Instant::now() < end, "the endpoint did not reload its file");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The endpoint's tunnel (commands, sessions, statistics).
    pub fn tunnel(&self) -> &TunnelHandle {
        &self.tunnel
    }

    /// Waits for an event matching `f`, skipping others (they stay in [`TunnelLab::seen`]);
    /// bounded by `timeout`.
    pub fn wait_event(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&ServerEvent) -> bool,
    ) -> Option<ServerEvent> {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(ev) => {
                    self.history.lock().unwrap().push(ev.clone());
                    if f(&ev) {
                        return Some(ev);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Every event so far (including those still queued), oldest first.
    pub fn seen(&self) -> Vec<ServerEvent> {
        let mut h = self.history.lock().unwrap();
        h.extend(self.events.try_iter());
        h.clone()
    }

    /// How many events there were so far: a mark for [`TunnelLab::wait_event_since`] and
    /// [`TunnelLab::seen_since`].
    pub fn mark(&self) -> usize {
        self.seen().len()
    }

    /// The events after `mark`, oldest first.
    pub fn seen_since(&self, mark: usize) -> Vec<ServerEvent> {
        let mut all = self.seen();
        let at = mark.min(all.len());
        all.split_off(at)
    }

    /// Like [`TunnelLab::wait_event`], but an event after `mark` that an earlier wait already
    /// took counts too.
    pub fn wait_event_since(
        &self,
        mark: usize,
        timeout: Duration,
        mut f: impl FnMut(&ServerEvent) -> bool,
    ) -> Option<ServerEvent> {
        if let Some(ev) = self.seen_since(mark).into_iter().find(|e| f(e)) {
            return Some(ev);
        }
        self.wait_event(timeout, f)
    }
}

/// How long [`TunnelLab`]'s drop waits for the endpoint to stop (the RESTART linger is 2 s).
pub const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The policy's keys in an endpoint file (replaced as a whole by [`TunnelLab::set_policy`]).
fn is_policy_key(k: &str) -> bool {
    matches!(
        k,
        "client_cidr"
            | "gateway_addr"
            | "gateway_ports"
            | "groups"
            | "target_networks"
            | "routes"
            | "authorization_rules"
            | "security_groups"
            | "applied_security_groups"
    )
}

impl TunnelLab {
    /// Stops the endpoint (RESTART to every client, then its threads, TAP and data path),
    /// giving up after `limit` so that a hung server cannot hang the test: returns how long
    /// the stop took, or an error when it did not end (its thread is then left behind until
    /// the process exits).
    pub fn stop_tunnel(&mut self, limit: Duration) -> Result<Duration, String> {
        let r = self.running.take().ok_or("the endpoint is not running")?;
        let start = Instant::now();
        r.stop.notify_one();
        match r.done.recv_timeout(limit) {
            Ok(result) => {
                let _ = r.thread.join();
                result.map_err(|e| format!("the endpoint's loop failed: {e:#}"))?;
                Ok(start.elapsed())
            }
            Err(_) => Err(format!(
                "the endpoint did not stop within {limit:?}; its thread is left running"
            )),
        }
    }
}

impl Drop for TunnelLab {
    fn drop(&mut self) {
        if self.running.is_some() {
            if let Err(e) = self.stop_tunnel(STOP_LIMIT) {
                eprintln!("WARNING: {e}");
            }
        }
    }
}
