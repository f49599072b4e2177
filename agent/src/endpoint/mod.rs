//! One endpoint, wired in one place: TAP → XDP data path → TLS and tls-crypt → OpenVPN
//! server → clients-map hooks → tunnel, with the authenticator, logs and metrics.
//! [`Endpoint::build`] is what `portcullis run`, the demo, the tests and the benchmarks
//! start; [`Endpoint::run`] is the agent's loop, which only selects and hands each event to
//! the module that owns it (the admin API, reload, telemetry, the kept-session handoff, the
//! directory re-check).
mod fleet;
pub mod handoff;
pub mod hooks;
pub mod live;
mod serve;
pub mod status;
pub mod telemetry;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::programs::XdpMode;

use crate::auth::{Grants, LiveAuth};
use crate::config::{EndpointConfig, Listener};
use crate::datapath::{self, maps::Maps, Datapath, DatapathOptions};
use crate::io::tap::Tap;
use crate::io::tls_files::ReloadableTls;
use crate::io::{Tunnel, TunnelOptions};
use crate::openvpn::env::Env;
use crate::openvpn::packet::Role;
use crate::openvpn::server::{Server, ServerEvent, ServerSettings};
use crate::openvpn::session::TlsProvider;
use crate::openvpn::tls_crypt::{StaticKey, TlsCryptKey};
use crate::openvpn::tls_crypt_v2::{ServerKey, TlsCryptV2Server};
use crate::policy::{CompiledPolicy, PolicyInput};
use crate::reconcile;
use hooks::{ClientsMapHooks, Subscribers};
use live::{lock, Live, SharedLive};

/// What differs between the callers of [`Endpoint::build`].
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The configuration file, re-read on reload (and watched by [`Endpoint::run`]).
    pub config_path: Option<PathBuf>,
    /// bpffs directory under which the endpoint's pins live (`<pin_root>/<name>`).
    pub pin_root: PathBuf,
    /// Leave the pinned maps at shutdown, so a new agent re-adopts the live flows.
    pub keep_maps: bool,
    /// Packet workers of the tunnel; 0: one per CPU.
    pub workers: usize,
    /// TAP queues; `None`: one per CPU.
    pub tap_queues: Option<usize>,
    /// The TAP's name; `None`: `pc-<endpoint>` (cut to 15 bytes).
    pub tap_name: Option<String>,
    /// [`Endpoint::run`] ends on SIGTERM/SIGINT and reloads on SIGHUP (the agent); without,
    /// it runs until [`Endpoint::run_until`]'s stop is notified.
    pub signals: bool,
    /// Server settings the endpoint file does not carry (the test lab's push options and
    /// renegotiation by volume, the scale benchmark's reset rate), applied last.
    pub adjust_server: Option<AdjustServer>,
}

/// See [`BuildOptions::adjust_server`].
#[derive(Clone)]
pub struct AdjustServer(pub Arc<dyn Fn(&mut ServerSettings) + Send + Sync>);

impl std::fmt::Debug for AdjustServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdjustServer(..)")
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            config_path: None,
            pin_root: PathBuf::from(datapath::DEFAULT_PIN_ROOT),
            keep_maps: false,
            workers: 0,
            tap_queues: None,
            tap_name: None,
            signals: true,
            adjust_server: None,
        }
    }
}

/// A running endpoint: its listeners pass traffic from the moment it is built.
pub struct Endpoint {
    cfg: EndpointConfig,
    opts: BuildOptions,
    tap: Tap,
    dp: Datapath,
    tunnel: Option<Tunnel>,
    live: SharedLive,
    /// Every session event, for the loop's telemetry.
    events: Receiver<ServerEvent>,
    subscribers: Subscribers,
    tls: Arc<ReloadableTls>,
    /// The connection authenticator in force (replaced by reloads), shared with the
    /// console's self-service portal and the directory re-check.
    auth: Arc<LiveAuth>,
    /// Set before a stop that keeps the maps: disconnects then leave the data path alone.
    keep_flag: Arc<AtomicBool>,
    /// In a fleet: the address blocks this gateway holds in etcd (see `fleet::member`).
    fence: Option<Arc<crate::openvpn::fence::AddressFence>>,
    /// In a fleet with `max_connections_per_user` or `max_connections`: admissions checked
    /// in etcd.
    user_gate: Option<crate::fleet::UserGate>,
}

/// Loads and attaches the XDP data path for `policy` on `tap` and its target interfaces
/// (re-adopting pins of a previous run), applies `compiled` as the first generation and
/// reserves the PAT ports. Returns the data path and the active generation.
fn start_datapath(
    endpoint: &str,
    pin_root: &Path,
    tap: &Tap,
    policy: &PolicyInput,
    compiled: &CompiledPolicy,
) -> Result<(Datapath, u32)> {
    let mut dp = Datapath::load(DatapathOptions {
        endpoint: endpoint.to_owned(),
        pin_root: pin_root.to_path_buf(),
        tap_ifindex: tap.ifindex,
        tap_name: tap.name.clone(),
        tap_mac: tap.mac,
        gateway: policy.gateway_addr,
        targets: policy
            .target_networks
            .iter()
            .map(|t| t.interface.clone())
            .collect(),
        gateway_ports: policy.gateway_ports.clone(),
        max_flows: None,
        deny_events_per_sec: 1000,
        mode: XdpMode::Driver,
    })
    .context("loading the XDP data path")?;
    let generation = reconcile::reconcile(&mut dp.maps, compiled)?;
    datapath::reserve_ports(
        &compiled
            .targets
            .iter()
            .map(|t| (t.port_min, t.port_max))
            .collect::<Vec<_>>(),
    )?;
    Ok((dp, generation))
}

fn tls_crypt(cfg: &EndpointConfig) -> Result<Option<Arc<TlsCryptKey>>> {
    let Some(p) = &cfg.tls.tls_crypt_key else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading the tls-crypt key {}", p.display()))?;
    let key = StaticKey::parse(&text)
        .map_err(|e| anyhow::anyhow!("tls-crypt key {}: {e}", p.display()))?;
    Ok(Some(Arc::new(TlsCryptKey::new(&key, Role::Server))))
}

fn tls_crypt_v2(cfg: &EndpointConfig) -> Result<Option<Arc<TlsCryptV2Server>>> {
    let Some(p) = &cfg.tls.tls_crypt_v2_server_key else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading the tls-crypt-v2 server key {}", p.display()))?;
    let key = ServerKey::parse(&text)
        .map_err(|e| anyhow::anyhow!("tls-crypt-v2 server key {}: {e}", p.display()))?;
    Ok(Some(Arc::new(TlsCryptV2Server {
        key,
        max_age_days: cfg.tls.tls_crypt_v2_max_age_days,
    })))
}

impl Endpoint {
    /// Brings the endpoint up: TAP, data path (re-adopting pins and kept sessions of a
    /// previous agent), TLS, the OpenVPN server and its listeners. `cfg` is validated; the
    /// current network namespace is the endpoint's.
    pub fn build(cfg: &EndpointConfig, opts: &BuildOptions) -> Result<Endpoint> {
        let compiled = live::compile(cfg, None)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tap_name = opts.tap_name.clone().unwrap_or_else(|| {
            let n = format!("pc-{}", cfg.name);
            n[..n.len().min(15)].to_owned()
        });
        let queues = opts
            .tap_queues
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let tap = rt
            .block_on(Tap::open(
                &tap_name,
                queues,
                cfg.gateway(),
                cfg.client_cidr,
                1500,
            ))
            .with_context(|| format!("creating the TAP device {tap_name}"))?;
        let policy = cfg.policy();
        let (mut dp, generation) =
            start_datapath(&cfg.name, &opts.pin_root, &tap, &policy, &compiled)?;
        let kept_state = handoff::kept_sessions_path(&cfg.admin_socket());
        let adopted = handoff::adopt_kept(&mut dp.maps, &kept_state);
        let tls = Arc::new(
            ReloadableTls::new(cfg.tls_files(), cfg.tls_options())
                .context("loading the TLS files")?,
        );
        let grants = Arc::new(Grants::default());
        // Parsed once more here so that the first reload, too, parses only what changed.
        let mut rule_cache = crate::config::incremental::RuleCache::default();
        if let Some(path) = opts.config_path.as_deref() {
            let _ = rule_cache.load_unvalidated(path);
        }
        // The compiler's and the reconciler's base is the policy just applied, so the first
        // reload is incremental too.
        let mut compiler = crate::policy::compile::incremental::IncrementalCompiler::default();
        let policy = Arc::new(policy);
        let compiled = match compiler.compile(Arc::clone(&policy), &datapath::ifindex, None) {
            Ok(c) if c.policy == compiled => compiler.commit(c),
            _ => compiled,
        };
        let mut reconciler = crate::reconcile::Reconciler::default();
        reconciler.adopt(generation);
        let live: SharedLive = Arc::new(Mutex::new(Live {
            policy,
            compiled,
            compiler,
            reconciler,
            generation,
            config_stamp: opts.config_path.as_deref().and_then(live::stamp),
            reloads: 0,
            last_reload_error: None,
            last_reconcile: Duration::ZERO,
            last_reload_timing: None,
            pending_restart: Vec::new(),
            kept: Some((Instant::now() + handoff::KEPT_GRACE, adopted.clone())),
            grants: grants.clone(),
            // Until the first publish is applied, the local file's policy runs.
            fleet: cfg.fleet.as_ref().map(|_| live::FleetState::default()),
            rule_cache,
            in_force: None,
        }));
        let local_groups: crate::auth::LocalGroups = {
            let live = live.clone();
            Arc::new(move |u: &str| lock(&live).policy.local_groups_of(u))
        };
        let auth = Arc::new(LiveAuth::start(cfg, grants.clone(), local_groups)?);
        let mut settings = cfg.server_settings();
        // The fleet-wide caps decide after authentication, in etcd.
        let user_gate = cfg
            .fleet
            .as_ref()
            .and_then(crate::fleet::gate::Caps::of)
            .map(crate::fleet::UserGate::with_caps);
        // The tunnel always has the live authorizer, so that a reload can turn a directory
        // or single sign-on on; the mode says whether key exchanges ask it.
        settings.auth = live::auth_mode(auth.external() || user_gate.is_some());
        let authorizer = Some(match &user_gate {
            Some(g) => g.wrap(Some(auth.authorizer())),
            None => auth.authorizer(),
        });
        if let Some(adjust) = &opts.adjust_server {
            (adjust.0)(&mut settings);
        }
        let provider: Arc<dyn TlsProvider> = tls.clone();
        let mut server = Server::new(
            settings,
            provider,
            tls_crypt(cfg)?,
            Env::system(),
            Instant::now(),
        )
        .map_err(|e| anyhow::anyhow!("OpenVPN server: {e}"))?;
        server.set_tls_crypt_v2(tls_crypt_v2(cfg)?);
        // In a fleet, addresses come only from blocks leased in etcd.
        let fence = cfg
            .fleet
            .as_ref()
            .map(|_| crate::openvpn::fence::AddressFence::new());
        server.set_address_fence(fence.clone());
        let groups_of = {
            let live = live.clone();
            move |user: &str, grant: &crate::auth::Grant| lock(&live).session_groups(user, grant)
        };
        let (ev_tx, ev_rx) = std::sync::mpsc::channel::<ServerEvent>();
        let subscribers = Subscribers::default();
        let hooks = ClientsMapHooks::new(Maps::open_pinned(&dp.options.pin_dir())?)
            .with_groups(Box::new(groups_of))
            .with_events(ev_tx)
            .with_subscribers(subscribers.clone())
            .with_grants(grants.clone())
            .with_adopted(adopted);
        let keep_flag = hooks.keep_flag();
        let taps = tap
            .queues
            .iter()
            .map(|q| q.try_clone())
            .collect::<std::io::Result<Vec<_>>>()?;
        let listeners = cfg.listeners().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let tunnel = Tunnel::start(
            server,
            taps,
            tap.mac,
            &TunnelOptions {
                udp: listeners
                    .iter()
                    .filter_map(|l| match l {
                        Listener::Udp(a) => Some(*a),
                        Listener::Tcp(_) => None,
                    })
                    .collect(),
                tcp: listeners
                    .iter()
                    .filter_map(|l| match l {
                        Listener::Tcp(a) => Some(*a),
                        Listener::Udp(_) => None,
                    })
                    .collect(),
                workers: opts.workers,
                authorizer,
            },
            Box::new(hooks),
        )
        .context("starting the OpenVPN listeners")?;
        tracing::info!(
            endpoint = cfg.name,
            generation,
            listeners = ?cfg.listen,
            pins = %dp.options.pin_dir().display(),
            "endpoint up"
        );
        let _ = std::fs::remove_file(&kept_state);
        Ok(Endpoint {
            cfg: cfg.clone(),
            opts: opts.clone(),
            tap,
            dp,
            tunnel: Some(tunnel),
            live,
            events: ev_rx,
            subscribers,
            tls,
            auth,
            keep_flag,
            fence,
            user_gate,
        })
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }

    pub fn tunnel(&self) -> &Tunnel {
        self.tunnel
            .as_ref()
            .expect("the tunnel runs until the endpoint stops")
    }

    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The TLS files' reloader (certificate and CRL changes).
    pub fn tls(&self) -> &Arc<ReloadableTls> {
        &self.tls
    }

    /// The live policy generation.
    pub fn generation(&self) -> u32 {
        lock(&self.live).generation
    }

    /// What authentication granted each session.
    pub fn grants(&self) -> Arc<Grants> {
        lock(&self.live).grants.clone()
    }

    /// A copy of every session event from now on, for as long as the receiver lives.
    pub fn subscribe(&self) -> Receiver<ServerEvent> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.add_subscriber(tx);
        rx
    }

    pub fn add_subscriber(&self, tx: Sender<ServerEvent>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
    }

    /// Runs the agent's loop (admin socket, reloads, telemetry, expiry) until a signal (with
    /// `signals`) or `stop` is notified (from any thread), then stops the endpoint.
    pub fn run_until(mut self, stop: Option<Arc<tokio::sync::Notify>>) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let result = rt.block_on(serve::serve(&mut self, stop));
        self.shutdown()?;
        result
    }

    /// `portcullis run`: [`Endpoint::run_until`] a signal.
    pub fn run(self) -> Result<()> {
        self.run_until(None)
    }

    /// Stops the tunnel (clients are told to reconnect) and, unless the maps are kept, removes
    /// the TAP and the data path.
    pub fn shutdown(mut self) -> Result<()> {
        let keep_maps = self.opts.keep_maps;
        if keep_maps {
            // The sessions' entries and flows stay for the next agent; it needs their users.
            let grants = lock(&self.live).grants.clone();
            self.keep_flag.store(true, Ordering::Relaxed);
            handoff::write_kept(
                &handoff::kept_sessions_path(&self.cfg.admin_socket()),
                self.tunnel(),
                &grants,
            );
        }
        tracing::info!("shutting down: telling clients to reconnect");
        if let Some(t) = self.tunnel.take() {
            t.stop();
        }
        if !keep_maps {
            self.tap.unpersist();
        }
        self.dp.shutdown(keep_maps)?;
        Ok(())
    }
}
