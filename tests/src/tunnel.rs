//! Our OpenVPN server, in-process, in front of the XDP data path: a [`gateway::Gateway`]
//! (gateway and private-network namespaces, TAP, XDP programs, policy) plus the tunnel
//! listening on the underlay, and client namespaces on the underlay for stock `openvpn`
//! clients.
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis::datapath::maps::Maps;
use portcullis::endpoint::hooks::ClientsMapHooks;
use portcullis::io::tls_files::{ReloadableTls, TlsFiles};
use portcullis::io::{Tunnel, TunnelOptions};
use portcullis::openvpn::env::Env;
use portcullis::openvpn::packet::Role;
use portcullis::openvpn::server::{PushSettings, Server, ServerEvent, ServerSettings};
use portcullis::openvpn::session::{Renegotiation, TlsProvider};
use portcullis::openvpn::tls::TlsOptions;
use portcullis::openvpn::tls_crypt::{StaticKey, TlsCryptKey};
use portcullis::openvpn::tls_crypt_v2::{ServerKey, TlsCryptV2Server};
use portcullis::policy::PolicyInput;

use crate::gateway::{base_policy, Gateway, Options};
use crate::openvpn::{LabPki, TempDir, Underlay, OVPN_PORT, UNDERLAY_GW};

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
    /// Concurrent sessions (`ServerSettings::max_sessions`); `None`: the default.
    pub max_sessions: Option<usize>,
    /// Stateless reset replies per second and burst; `None`: the default.
    pub reset_rate: Option<(u32, u32)>,
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
        }
    }
}

/// Field order is drop order: the tunnel stops first, then the clients' namespaces go, then
/// the gateway.
pub struct TunnelLab {
    pub tunnel: Option<Tunnel>,
    pub events: mpsc::Receiver<ServerEvent>,
    pub tls: Arc<ReloadableTls>,
    pub underlay: Underlay,
    pub gw: Gateway,
    pub pki: LabPki,
    /// The tls-crypt-v2 server key's file, when [`TunnelOpts::tls_crypt_v2`] is set.
    pub tls_crypt_v2: Option<PathBuf>,
    /// Every event [`TunnelLab::wait_event`] and [`TunnelLab::seen`] took from `events`, in
    /// order, so waiting for one event does not lose the others.
    history: Mutex<Vec<ServerEvent>>,
    _dir: TempDir,
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
        let gw = Gateway::new(opts.policy.clone(), Options::default());
        let underlay = Underlay::attach(&gw.gw, opts.clients);
        let tls = Arc::new(
            ReloadableTls::new(
                TlsFiles {
                    ca: pki.ca.clone(),
                    cert: pki.server.cert.clone(),
                    key: pki.server.key.clone(),
                    crls: opts.crls.clone(),
                },
                TlsOptions::default(),
            )
            .expect("server TLS"),
        );
        // The pool is the policy's (the TAP was given the same one).
        let mut settings = ServerSettings {
            client_cidr: opts.policy.client_cidr,
            push: opts.push.clone(),
            ..ServerSettings::default()
        };
        if let Some(n) = opts.max_sessions {
            settings.max_sessions = n;
        }
        if let Some(r) = opts.reset_rate {
            settings.reset_rate = r;
        }
        for s in [&mut settings.udp, &mut settings.tcp] {
            s.reneg = opts.reneg.clone();
            s.ping = opts.ping;
            s.ping_restart = opts.ping_restart;
        }
        let tc = opts.tls_crypt.then(|| {
            let text = std::fs::read_to_string(&pki.tls_crypt).unwrap();
            Arc::new(TlsCryptKey::new(
                &StaticKey::parse(&text).unwrap(),
                Role::Server,
            ))
        });
        let provider: Arc<dyn TlsProvider> = tls.clone();
        let mut server =
            Server::new(settings, provider, tc, Env::system(), Instant::now()).expect("server");
        let tls_crypt_v2 = opts.tls_crypt_v2.map(|max_age_days| {
            let key = ServerKey::generate(&*Env::system().rng).unwrap();
            let path = dir.path().join("tls-crypt-v2-server.key");
            std::fs::write(&path, key.to_pem()).unwrap();
            server.set_tls_crypt_v2(Some(Arc::new(TlsCryptV2Server { key, max_age_days })));
            path
        });
        let queues = (0..gw.tap.queues.len())
            .map(|i| std::fs::File::from(gw.tap.queue_fd(i).unwrap()))
            .collect();
        let (tx, rx) = mpsc::channel();
        let maps = Maps::open_pinned(&gw.dp.options.pin_dir()).expect("pinned maps");
        let hooks = ClientsMapHooks::new(maps).with_events(tx);
        let at = SocketAddr::V4(SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT));
        let tunnel = Tunnel::start(
            server,
            queues,
            gw.tap.mac,
            &TunnelOptions {
                udp: if opts.udp { vec![at] } else { vec![] },
                tcp: if opts.tcp { vec![at] } else { vec![] },
                workers: opts.workers,
                authorizer: None,
            },
            Box::new(hooks),
        )
        .expect("tunnel starts");
        TunnelLab {
            tunnel: Some(tunnel),
            events: rx,
            tls,
            underlay,
            gw,
            pki,
            tls_crypt_v2,
            history: Mutex::new(Vec::new()),
            _dir: dir,
        }
    }

    pub fn tunnel(&self) -> &Tunnel {
        self.tunnel.as_ref().expect("running")
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

/// How long [`TunnelLab`]'s drop waits for `Tunnel::stop` (the RESTART linger is 2 s).
pub const STOP_LIMIT: Duration = Duration::from_secs(10);

impl TunnelLab {
    /// Stops the tunnel (RESTART to every client, then its threads), giving up after `limit`
    /// so that a hung server cannot hang the test: returns how long the stop took, or an error
    /// when it did not return (its threads are then left behind until the process exits).
    pub fn stop_tunnel(&mut self, limit: Duration) -> Result<Duration, String> {
        let t = self.tunnel.take().ok_or("the tunnel is not running")?;
        stop_within(t, limit)
    }
}

fn stop_within(tunnel: Tunnel, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("pct-tunnel-stop".into())
        .spawn(move || {
            tunnel.stop();
            let _ = tx.send(());
        })
        .map_err(|e| format!("spawning the stop thread: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(()) => Ok(start.elapsed()),
        Err(_) => Err(format!(
            "Tunnel::stop did not return within {limit:?}; its threads are left running"
        )),
    }
}

impl Drop for TunnelLab {
    fn drop(&mut self) {
        if let Some(t) = self.tunnel.take() {
            if let Err(e) = stop_within(t, STOP_LIMIT) {
                eprintln!("WARNING: {e}");
            }
        }
    }
}
