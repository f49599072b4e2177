//! `portcullis run`: one endpoint from one configuration file. Brings up the TAP, the XDP data
//! path (pinned, re-adopted after a restart), the OpenVPN listeners and the admin socket;
//! reloads the policy live on SIGHUP, `portcullis reload` or a change of the file; expires
//! flows; shuts down cleanly on SIGTERM.
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use aya::programs::XdpMode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{EndpointConfig, Listener};
use crate::datapath::{self, maps::Maps, Datapath, DatapathOptions};
use crate::gateway::{Adopted, ClientsMapHooks};
use crate::io::tap::Tap;
use crate::io::tls_files::ReloadableTls;
use crate::io::{Command, SessionInfo, Tunnel, TunnelOptions};
use crate::openvpn::env::Env;
use crate::openvpn::packet::Role;
use crate::openvpn::server::{Server, ServerEvent};
use crate::openvpn::session::TlsProvider;
use crate::openvpn::tls_crypt::{StaticKey, TlsCryptKey};
use crate::policy::{self, CompiledPolicy, PolicyInput};
use crate::reconcile;
use portcullis_common::GroupBits;

/// A request on the admin socket (one JSON object per line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    Status,
    Reload,
    Connections,
    Terminate {
        #[serde(default)]
        id: Option<u32>,
        #[serde(default)]
        user: Option<String>,
    },
}

/// One connection, as `connections list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub id: u32,
    pub user: Option<String>,
    pub client_address: Option<String>,
    pub public_address: String,
    pub transport: String,
    pub established: bool,
    pub since_secs: u64,
    pub ingress_bytes: u64,
    pub egress_bytes: u64,
    pub ingress_packets: u64,
    pub egress_packets: u64,
    /// The directory user name of the session, if it logged in with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The session's directory groups (names, DNs or SIDs as configured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directory_groups: Vec<String>,
}

/// The live policy, shared with the tunnel hooks (group bitmaps of new sessions).
struct Live {
    policy: PolicyInput,
    compiled: CompiledPolicy,
    generation: u32,
    config_stamp: Option<SystemTime>,
    reloads: u64,
    last_reload_error: Option<String>,
    last_reconcile: Duration,
    /// Phases of the last successful reload: file to compiled policy, map writes, live
    /// sessions' groups, all of it.
    last_reload_timing: Option<ReloadTiming>,
    /// Sessions of a previous agent (`--keep-maps`) not back yet, removed at the deadline.
    kept: Option<(Instant, Adopted)>,
    /// Settings changed in the file that wait for a restart.
    pending_restart: Vec<&'static str>,
    /// What authentication granted each session (directory user and groups).
    grants: Arc<crate::auth::Grants>,
}

impl Live {
    /// A session's bitmap: local groups of its certificate name and directory user, and its
    /// directory groups. Groups no rule names have no bit, so they cost nothing per packet.
    fn session_groups(&self, common_name: &str, grant: &crate::auth::Grant) -> GroupBits {
        let g = crate::auth::combined_groups(
            &|u: &str| self.policy.local_groups_of(u),
            common_name,
            grant,
        );
        self.compiled.groups_bitmap(g.iter().map(String::as_str))
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct ReloadTiming {
    load_ms: f64,
    reconcile_ms: f64,
    sessions_ms: f64,
    total_ms: f64,
}

/// Fill of the data path's maps: (map, entries, capacity). Policy maps count the live
/// generation (from the compiled policy, which is what its slot holds); the others are
/// counted in the kernel; `conntrack`, when the caller has just counted it, saves a scan of
/// the largest map.
fn map_fill(
    dp: &Datapath,
    compiled: &CompiledPolicy,
    conntrack: Option<usize>,
) -> Vec<(&'static str, usize, u32)> {
    use portcullis_common as c;
    let flows_cap = dp.options.max_flows.unwrap_or(c::DEFAULT_MAX_FLOWS);
    vec![
        (
            "clients",
            dp.maps.client_addrs().map_or(0, |v| v.len()),
            c::MAX_CLIENTS,
        ),
        (
            "conntrack",
            conntrack.unwrap_or_else(|| dp.maps.flows().map_or(0, |f| f.len())),
            flows_cap,
        ),
        ("nat_rev", dp.maps.nat_rev_len().unwrap_or(0), flows_cap),
        ("authz_v4", compiled.authz.len(), c::MAX_AUTHZ_PREFIXES),
        ("routes_v4", compiled.routes.len(), c::MAX_ROUTES),
        ("sg_v4", compiled.sg_nodes.len(), c::MAX_SG_PREFIXES),
        ("sg_ranges", compiled.sg_ranges.len(), c::MAX_SG_RANGES),
        ("targets", compiled.targets.len(), c::MAX_TARGETS),
    ]
}

/// The session in counter slot `slot`, for the flow log: its directory user name where there
/// is one, and every group it has (local and directory), as the data path sees them.
fn flow_user(
    live: &Arc<Mutex<Live>>,
    connections: &BTreeMap<u32, (ServerEvent, Instant)>,
    slot: u32,
) -> Option<crate::flowlog::FlowUser> {
    let Some((ServerEvent::Connected { common_name, .. }, _)) = connections.get(&slot) else {
        return None;
    };
    let l = live.lock().unwrap_or_else(|e| e.into_inner());
    let grant = l.grants.get(slot).unwrap_or_default();
    let groups =
        crate::auth::combined_groups(&|u: &str| l.policy.local_groups_of(u), common_name, &grant);
    let name = if grant.username.is_empty() {
        common_name.clone()
    } else {
        grant.username
    };
    Some(crate::flowlog::FlowUser { name, groups })
}

/// How long entries a previous agent left wait for their clients to reconnect.
const KEPT_GRACE: Duration = Duration::from_secs(60);

/// Where an agent stopping with `--keep-maps` writes who held which address, for the next
/// one: beside the admin socket (a runtime directory that outlives the process, like the pins).
fn kept_sessions_path(socket: &Path) -> PathBuf {
    socket.with_extension("kept-sessions.json")
}

/// The `clients` entries a previous agent left, with their users from its state file (removed
/// once this agent is up, so a start that fails early can be retried with it).
fn adopt_kept(maps: &mut Maps, state: &Path) -> Adopted {
    let users: HashMap<Ipv4Addr, crate::gateway::KeptUser> = std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let addrs = maps.client_addrs().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "listing the clients a previous agent left");
        Vec::new()
    });
    if !addrs.is_empty() {
        tracing::info!(
            sessions = addrs.len(),
            grace_s = KEPT_GRACE.as_secs(),
            "re-adopting the sessions of a previous agent: their flows stay while the clients reconnect"
        );
    }
    // Their counters and quotas must not land on whichever new session gets their old slot.
    for a in &addrs {
        if let Err(e) = maps.reslot_client(*a, portcullis_common::ORPHAN_SLOT) {
            tracing::warn!(addr = %a, error = %e, "parking a previous agent's flows");
        }
    }
    Arc::new(Mutex::new(
        addrs
            .into_iter()
            .map(|a| (a, users.get(&a).cloned()))
            .collect(),
    ))
}

/// Compiles the policy part, with every error message.
pub fn compile(
    cfg: &EndpointConfig,
    previous: Option<&BTreeMap<String, u16>>,
) -> Result<CompiledPolicy> {
    policy::compile_with_previous(&cfg.policy(), &|n| datapath::ifindex(n), previous).map_err(
        |errs| {
            anyhow::anyhow!(
                "the policy is invalid:\n{}",
                errs.iter()
                    .map(|e| format!("  {}", crate::config::endpoint_paths(&e.to_string())))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        },
    )
}

/// Loads the file and compiles its policy; the file's errors and the policy compiler's are
/// reported together (with the compiler's warnings), so one round fixes them all.
fn load_and_compile(
    path: &Path,
    resolve_ifindex: &dyn Fn(&str) -> Option<u32>,
    previous: Option<&BTreeMap<String, u16>>,
) -> Result<(EndpointConfig, CompiledPolicy)> {
    let cfg = EndpointConfig::load_unvalidated(path)
        .map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", path.display()))?;
    let file_errors = cfg.validate().err().map(|e| e.0).unwrap_or_default();
    let compiler_errors =
        match policy::compile_with_previous(&cfg.policy(), resolve_ifindex, previous) {
            Ok(compiled) if file_errors.is_empty() => return Ok((cfg, compiled)),
            Ok(_) => Vec::new(),
            Err(errs) => errs
                .iter()
                .map(|e| crate::config::endpoint_paths(&e.to_string()))
                .collect(),
        };
    let errors = crate::config::merge_reports(&file_errors, &compiler_errors);
    bail!(
        "{} is invalid:\n{}",
        path.display(),
        errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// `portcullis check`: validates the file (and the policy) and prints a summary.
pub fn check(path: &Path, json: bool) -> Result<()> {
    // Interfaces may not exist on the machine that checks: resolve them as index 1.
    let (cfg, compiled) = load_and_compile(path, &|_| Some(1), None)?;
    let summary = serde_json::json!({
        "endpoint": cfg.name,
        "client_cidr": cfg.client_cidr.to_string(),
        "listeners": cfg.listen,
        "groups_in_rules": compiled.group_bits.len(),
        "authorization_prefixes": compiled.authz.len(),
        "routes": compiled.routes.len(),
        "target_networks": compiled.target_names,
        "security_groups_applied": compiled.sg_enabled,
        "security_group_prefixes": compiled.sg_nodes.len(),
        "port_ranges": compiled.sg_ranges.len(),
        "warnings": compiled.warnings.iter().map(|w| crate::config::endpoint_paths(&w.to_string())).collect::<Vec<_>>(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}: valid", path.display());
        println!("  endpoint                 {}", cfg.name);
        println!("  client pool              {}", cfg.client_cidr);
        println!("  listeners                {}", cfg.listen.join(", "));
        println!("  groups used by rules     {}", compiled.group_bits.len());
        println!("  authorization prefixes   {}", compiled.authz.len());
        println!(
            "  routes                   {} (incl. client-to-client)",
            compiled.routes.len()
        );
        println!(
            "  target networks          {}",
            compiled.target_names.join(", ")
        );
        println!(
            "  security groups          {} ({} prefixes, {} port ranges)",
            if compiled.sg_enabled {
                "applied"
            } else {
                "none (all egress allowed)"
            },
            compiled.sg_nodes.len(),
            compiled.sg_ranges.len()
        );
        for w in &compiled.warnings {
            println!("  {}", crate::config::endpoint_paths(&w.to_string()));
        }
    }
    Ok(())
}

fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Loads and attaches the XDP data path for `policy` on `tap` and its target interfaces
/// (re-adopting pins of a previous run), applies `compiled` as the first generation and
/// reserves the PAT ports. Returns the data path and the active generation.
pub fn start_datapath(
    endpoint: &str,
    pin_root: &Path,
    tap: &Tap,
    tap_name: &str,
    policy: &PolicyInput,
    compiled: &CompiledPolicy,
) -> Result<(Datapath, u32)> {
    let mut dp = Datapath::load(DatapathOptions {
        endpoint: endpoint.to_owned(),
        pin_root: pin_root.to_path_buf(),
        tap_ifindex: tap.ifindex,
        tap_name: tap_name.into(),
        tap_mac: tap.mac,
        gateway: policy.gateway_addr,
        gateway_ports: policy.gateway_ports.clone(),
        targets: policy
            .target_networks
            .iter()
            .map(|t| t.interface.clone())
            .collect(),
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

/// Runs until SIGTERM/SIGINT. `keep_maps`: leave the pinned maps at shutdown (so a new agent
/// re-adopts translated flows).
pub fn run(config_path: &Path, keep_maps: bool, pin_root: &Path) -> Result<()> {
    let (cfg, compiled) = load_and_compile(config_path, &|n| datapath::ifindex(n), None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tap_name = format!("pc-{}", cfg.name);
    let tap_name = &tap_name[..tap_name.len().min(15)];
    let queues = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tap = rt
        .block_on(Tap::open(
            tap_name,
            queues,
            cfg.gateway(),
            cfg.client_cidr,
            1500,
        ))
        .with_context(|| format!("creating the TAP device {tap_name}"))?;
    let (mut dp, generation) = start_datapath(
        &cfg.name,
        pin_root,
        &tap,
        tap_name,
        &cfg.policy(),
        &compiled,
    )?;
    let adopted = adopt_kept(&mut dp.maps, &kept_sessions_path(&cfg.admin_socket()));
    let tls = Arc::new(
        ReloadableTls::new(cfg.tls_files(), cfg.tls_options()).context("loading the TLS files")?,
    );
    let tc = match &cfg.tls.tls_crypt_key {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the tls-crypt key {}", p.display()))?;
            let key = StaticKey::parse(&text)
                .map_err(|e| anyhow::anyhow!("tls-crypt key {}: {e}", p.display()))?;
            Some(Arc::new(TlsCryptKey::new(&key, Role::Server)))
        }
        None => None,
    };
    let provider: Arc<dyn TlsProvider> = tls.clone();
    let mut settings = cfg.server_settings();
    let grants = Arc::new(crate::auth::Grants::default());
    let live = Arc::new(Mutex::new(Live {
        policy: cfg.policy(),
        compiled,
        generation,
        config_stamp: stamp(config_path),
        reloads: 0,
        last_reload_error: None,
        last_reconcile: Duration::ZERO,
        last_reload_timing: None,
        pending_restart: Vec::new(),
        kept: Some((Instant::now() + KEPT_GRACE, adopted.clone())),
        grants: grants.clone(),
    }));
    let local_groups: crate::auth::LocalGroups = {
        let live = live.clone();
        Arc::new(move |u: &str| {
            let l = live.lock().unwrap_or_else(|e| e.into_inner());
            l.policy.local_groups_of(u)
        })
    };
    let authenticator =
        crate::auth::Authenticator::from_config(&cfg, grants.clone(), local_groups)?;
    // The periodic re-check asks the same directory client.
    let directory = authenticator.as_ref().and_then(|a| a.directory.clone());
    let authorizer = authenticator.map(|a| {
        settings.auth = crate::openvpn::server::AuthMode::External;
        a.into_authorizer()
    });
    let server = Server::new(settings, provider, tc, Env::system(), Instant::now())
        .map_err(|e| anyhow::anyhow!("OpenVPN server: {e}"))?;
    let groups_of = {
        let live = live.clone();
        move |user: &str, grant: &crate::auth::Grant| {
            let l = live.lock().unwrap_or_else(|e| e.into_inner());
            l.session_groups(user, grant)
        }
    };
    let (ev_tx, ev_rx) = std::sync::mpsc::channel::<ServerEvent>();
    let hooks = ClientsMapHooks::new(Maps::open_pinned(&dp.options.pin_dir())?)
        .with_groups(Box::new(groups_of))
        .with_events(ev_tx)
        .with_grants(grants.clone())
        .with_adopted(adopted.clone());
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
            workers: 0,
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
    let _ = std::fs::remove_file(kept_sessions_path(&cfg.admin_socket()));
    let socket = cfg.admin_socket();
    let result = rt.block_on(serve(
        config_path,
        &cfg,
        &socket,
        &mut dp,
        &tunnel,
        &live,
        ev_rx,
        &tls,
        directory,
    ));
    let _ = std::fs::remove_file(&socket);
    if keep_maps {
        // The sessions' entries and flows stay for the next agent; it needs their users.
        let grants = live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .grants
            .clone();
        let held: HashMap<Ipv4Addr, crate::gateway::KeptUser> = tunnel
            .sessions()
            .into_iter()
            .filter_map(|s| {
                let kept = crate::gateway::KeptUser {
                    common_name: s.common_name?,
                    username: grants
                        .get(s.peer_id)
                        .map(|g| g.username)
                        .unwrap_or_default(),
                };
                Some((s.tunnel_addr?, kept))
            })
            .collect();
        keep_flag.store(true, std::sync::atomic::Ordering::Relaxed);
        let state = kept_sessions_path(&socket);
        if let Err(e) = serde_json::to_vec(&held)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&state, b))
        {
            tracing::warn!(path = %state.display(), error = %e, "writing the kept sessions");
        }
    }
    tracing::info!("shutting down: telling clients to reconnect");
    tunnel.stop();
    if !keep_maps {
        tap.unpersist();
    }
    dp.shutdown(keep_maps)?;
    result
}

/// One request line from an admin connection and where its reply goes.
type AdminCall = (String, tokio::sync::oneshot::Sender<serde_json::Value>);

#[allow(clippy::too_many_arguments)]
async fn serve(
    config_path: &Path,
    cfg: &EndpointConfig,
    socket: &Path,
    dp: &mut Datapath,
    tunnel: &Tunnel,
    live: &Arc<Mutex<Live>>,
    events: std::sync::mpsc::Receiver<ServerEvent>,
    tls: &ReloadableTls,
    directory: Option<Arc<crate::auth::directory::Directory>>,
) -> Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the admin socket", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding the admin socket {}", socket.display()))?;
    // Root only: the socket can terminate sessions and reload the policy.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut connections: BTreeMap<u32, (ServerEvent, Instant)> = BTreeMap::new();
    let metrics = Arc::new(Mutex::new(crate::metrics::Metrics::new()));
    let _metrics_task = match cfg.metrics.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            Some(tokio::spawn(crate::metrics::serve(l, metrics.clone())))
        }
        None => None,
    };
    let mut ended = portcullis_common::SessionStats::default();
    let mut counted = portcullis_common::SessionStats::default();
    let mut flowlog = match &cfg.logging.flow_log {
        Some(p) => Some((
            crate::flowlog::FlowLog::open(p)
                .with_context(|| format!("opening the flow log {}", p.display()))?,
            dp.maps.take_deny_events()?,
        )),
        None => None,
    };
    let mut connlog = match &cfg.logging.connection_log {
        Some(p) => Some(
            crate::connlog::ConnectionLog::open(p, &cfg.name)
                .with_context(|| format!("opening the connection log {}", p.display()))?
                .with_usernames({
                    let grants = live
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .grants
                        .clone();
                    Box::new(move |peer| grants.get(peer).map(|g| g.username))
                }),
        ),
        None => None,
    };
    let mut last_gc = Instant::now();
    let mut allowed_flows =
        (cfg.logging.allowed_flows && flowlog.is_some()).then(crate::flowlog::FlowTracker::default);
    let recheck_every = directory
        .as_ref()
        .map(|d| Duration::from_secs(d.config().recheck_interval_secs))
        .filter(|d| !d.is_zero());
    let mut recheck = Recheck::default();
    let (calls_tx, mut calls_rx) = tokio::sync::mpsc::channel::<AdminCall>(16);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => { let _ = reload(config_path, cfg, dp, tunnel, live); }
            _ = tick.tick() => {
                while let Ok(ev) = events.try_recv() {
                    if let Some(log) = &mut connlog {
                        log.on_event(&ev, &|slot| dp.maps.session_stats(slot).unwrap_or_default());
                    }
                    {
                        let m = metrics.lock().unwrap_or_else(|e| e.into_inner());
                        let hs = match &ev {
                            ServerEvent::Connected { handshake, .. } => Some(*handshake),
                            _ => None,
                        };
                        m.on_event(&ev, hs);
                    }
                    if let ServerEvent::Disconnected { peer_id, tunnel_addr: Some(_), .. } = &ev {
                        let s = dp.maps.session_stats(*peer_id).unwrap_or_default();
                        ended.ingress_bytes += s.ingress_bytes;
                        ended.egress_bytes += s.egress_bytes;
                        ended.ingress_packets += s.ingress_packets;
                        ended.egress_packets += s.egress_packets;
                    }
                    match &ev {
                        ServerEvent::Connected { peer_id, .. } => { connections.insert(*peer_id, (ev.clone(), Instant::now())); }
                        ServerEvent::Disconnected { peer_id, .. } => { connections.remove(peer_id); }
                        _ => {}
                    }
                }
                if let Some(log) = &mut connlog {
                    log.tick(&|slot| dp.maps.session_stats(slot).unwrap_or_default());
                }
                // Every second, so short flows are seen too (it reads the whole map: opt-in).
                if let (Some(t), Some((log, _)), Ok(flows)) = (&mut allowed_flows, &mut flowlog, dp.maps.flows()) {
                    let policy = live.lock().unwrap_or_else(|e| e.into_inner()).policy.clone();
                    let user = |slot: u32| flow_user(live, &connections, slot);
                    t.scan(&flows, datapath::maps::monotonic_ns(), &user, &policy, log);
                }
                if let Some((log, rb)) = &mut flowlog {
                    let policy = live.lock().unwrap_or_else(|e| e.into_inner()).policy.clone();
                    // Bounded by the ring buffer's size (and its rate limit in XDP).
                    while let Some(item) = rb.next() {
                        if item.len() < std::mem::size_of::<portcullis_common::DenyEvent>() {
                            continue;
                        }
                        // SAFETY: the XDP program writes whole DenyEvent records.
                        let ev = unsafe {
                            std::ptr::read_unaligned(item.as_ptr().cast::<portcullis_common::DenyEvent>())
                        };
                        let user = flow_user(live, &connections, ev.slot);
                        log.record(&ev, user.as_ref(), &policy);
                    }
                }
                {
                    // Totals: ended sessions plus the live ones, fed as counter increments.
                    let mut total = ended;
                    for id in connections.keys() {
                        let s = dp.maps.session_stats(*id).unwrap_or_default();
                        total.ingress_bytes += s.ingress_bytes;
                        total.egress_bytes += s.egress_bytes;
                        total.ingress_packets += s.ingress_packets;
                        total.egress_packets += s.egress_packets;
                    }
                    let mut m = metrics.lock().unwrap_or_else(|e| e.into_inner());
                    m.ingress_bytes.inc_by(total.ingress_bytes.saturating_sub(counted.ingress_bytes));
                    m.egress_bytes.inc_by(total.egress_bytes.saturating_sub(counted.egress_bytes));
                    m.ingress_packets.inc_by(total.ingress_packets.saturating_sub(counted.ingress_packets));
                    m.egress_packets.inc_by(total.egress_packets.saturating_sub(counted.egress_packets));
                    counted = portcullis_common::SessionStats {
                        ingress_bytes: counted.ingress_bytes.max(total.ingress_bytes),
                        egress_bytes: counted.egress_bytes.max(total.egress_bytes),
                        ingress_packets: counted.ingress_packets.max(total.ingress_packets),
                        egress_packets: counted.egress_packets.max(total.egress_packets),
                    };
                    if let Ok(d) = dp.maps.drop_counters() {
                        m.set_drops(&d.iter().map(|(r, n)| (r.name().to_owned(), *n)).collect::<Vec<_>>());
                    }
                    let l = live.lock().unwrap_or_else(|e| e.into_inner());
                    m.policy_generation.set(i64::from(l.generation));
                    m.reconcile_seconds.set(l.last_reconcile.as_secs_f64());
                    drop(l);
                }
                if last_gc.elapsed() >= Duration::from_secs(5) {
                    last_gc = Instant::now();
                    // The expiry scans conntrack anyway: its count (taken before it deleted
                    // anything) is the fill level, without a second scan.
                    let scanned = match dp.maps.gc(datapath::maps::monotonic_ns()) {
                        Ok(st) => Some(st.scanned as usize),
                        Err(e) => {
                            tracing::warn!(error = %e, "expiring flows");
                            None
                        }
                    };
                    {
                        let m = metrics.lock().unwrap_or_else(|e| e.into_inner());
                        m.set_crls(tls.current().crls());
                        let fill = map_fill(dp, &live.lock().unwrap_or_else(|e| e.into_inner()).compiled, scanned);
                        for (map, entries, capacity) in fill {
                            let k = crate::metrics::Map { map: map.into() };
                            m.map_entries.get_or_create(&k).set(entries as i64);
                            m.map_capacity.get_or_create(&k).set(i64::from(capacity));
                        }
                    }
                    expire_kept(dp, tunnel, live);
                }
                if let (Some(every), Some(dir)) = (recheck_every, &directory) {
                    recheck.tick(every, dir, dp, tunnel, live, &connections);
                }
                let changed = {
                    let l = live.lock().unwrap_or_else(|e| e.into_inner());
                    stamp(config_path) != l.config_stamp
                };
                if changed {
                    let _ = reload(config_path, cfg, dp, tunnel, live);
                }
            }
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                // Each connection in its own task, its requests answered here: a client that
                // connects and says nothing holds up neither signals nor ticks nor others.
                let calls = calls_tx.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = stream.into_split();
                    let mut lines = BufReader::new(rd).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if calls.send((line, tx)).await.is_err() {
                            break;
                        }
                        let Ok(reply) = rx.await else { break };
                        let mut out = reply.to_string();
                        out.push('\n');
                        if wr.write_all(out.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Some((line, reply_tx)) = calls_rx.recv() => {
                let reply = match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(AdminRequest::Status) => {
                        let mut v = status(dp, live, tunnel);
                        v["endpoint"] = cfg.name.clone().into();
                        v
                    }
                    Ok(AdminRequest::Reload) => {
                        match reload(config_path, cfg, dp, tunnel, live) {
                            Ok(g) => {
                                let l = live.lock().unwrap_or_else(|e| e.into_inner());
                                serde_json::json!({"ok": true, "generation": g, "timing": l.last_reload_timing, "pending_restart": l.pending_restart})
                            }
                            Err(e) => serde_json::json!({"ok": false, "error": e}),
                        }
                    }
                    Ok(AdminRequest::Connections) => {
                        // The grants outside the live lock: listing waits for the control thread.
                        let grants = live.lock().unwrap_or_else(|e| e.into_inner()).grants.clone();
                        serde_json::json!({"ok": true, "connections": list(dp, tunnel, &connections, &grants)})
                    }
                    Ok(AdminRequest::Terminate { id, user }) => {
                        let grants = live.lock().unwrap_or_else(|e| e.into_inner()).grants.clone();
                        // A user is its certificate name or its directory user name.
                        let is_user = |s: &SessionInfo| {
                            user.is_some()
                                && (s.common_name == user
                                    || grants.get(s.peer_id).is_some_and(|g| Some(g.username) == user))
                        };
                        let ids: Vec<u32> = tunnel
                            .sessions()
                            .iter()
                            .filter(|s| Some(s.peer_id) == id || is_user(s))
                            .map(|s| s.peer_id)
                            .collect();
                        for i in &ids {
                            tunnel.command(Command::Disconnect(*i));
                        }
                        serde_json::json!({"ok": !ids.is_empty(), "terminated": ids})
                    }
                    Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
                };
                let _ = reply_tx.send(reply);
            }
        }
    }
}

/// The periodic re-check of connected directory users: one background pass at a time (the
/// directory may be slow; the admin loop never waits for it), results applied on the next
/// tick. New groups rewrite the session's bitmap (flows no longer allowed are cut by the data
/// path's revalidation); a disabled or removed user, or one who lost every group a rule names,
/// is ended with HALT. An unreachable directory changes nothing.
/// (peer id, directory user the pass looked up, what the directory said).
type RecheckResults = Vec<(
    u32,
    String,
    Result<Vec<String>, crate::auth::directory::DirError>,
)>;

#[derive(Default)]
struct Recheck {
    last: Option<Instant>,
    running: Option<std::sync::mpsc::Receiver<RecheckResults>>,
}

impl Recheck {
    fn tick(
        &mut self,
        every: Duration,
        dir: &Arc<crate::auth::directory::Directory>,
        dp: &mut Datapath,
        tunnel: &Tunnel,
        live: &Arc<Mutex<Live>>,
        connections: &BTreeMap<u32, (ServerEvent, Instant)>,
    ) {
        if let Some(rx) = &self.running {
            match rx.try_recv() {
                Ok(results) => {
                    self.running = None;
                    self.apply(results, dp, tunnel, live, connections);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.running = None,
            }
        }
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let users = live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .grants
            .directory_users();
        if users.is_empty() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.clone();
        // Blocking LDAP calls: a thread of their own, not the admin loop's runtime.
        std::thread::spawn(move || {
            let out = users
                .into_iter()
                .map(|(peer, user)| {
                    let r = dir.refresh(&user).map(|u| u.groups);
                    (peer, user, r)
                })
                .collect();
            let _ = tx.send(out);
        });
        self.running = Some(rx);
    }

    fn apply(
        &self,
        results: RecheckResults,
        dp: &mut Datapath,
        tunnel: &Tunnel,
        live: &Arc<Mutex<Live>>,
        connections: &BTreeMap<u32, (ServerEvent, Instant)>,
    ) {
        use crate::auth::directory::DirError;
        let l = live.lock().unwrap_or_else(|e| e.into_inner());
        for (peer_id, user, r) in results {
            let Some(old) = l.grants.get(peer_id) else {
                continue; // ended meanwhile
            };
            if old.username != user {
                // The session ended during the pass and its peer id went to another user:
                // this result is not theirs.
                continue;
            }
            let Some((
                ServerEvent::Connected {
                    tunnel_addr,
                    common_name,
                    ..
                },
                _,
            )) = connections.get(&peer_id)
            else {
                continue;
            };
            let groups = match r {
                Ok(g) => g,
                Err(e @ (DirError::Disabled | DirError::UnknownUser)) => {
                    tracing::warn!(peer_id, user = old.username, reason = %e, "directory re-check: session ended");
                    // Out of the data path now, not when the client has taken the HALT.
                    let _ = dp.maps.remove_client(*tunnel_addr);
                    tunnel.command(Command::Halt {
                        peer_id,
                        reason: "account disabled or removed".into(),
                    });
                    continue;
                }
                Err(e) => {
                    tracing::warn!(peer_id, user = old.username, error = %e, "directory re-check failed; groups kept");
                    continue;
                }
            };
            if groups == old.groups {
                continue;
            }
            let new = crate::auth::Grant {
                username: old.username.clone(),
                groups: groups.clone(),
            };
            let before = l.session_groups(common_name, &old);
            let after = l.session_groups(common_name, &new);
            l.grants.update(peer_id, groups.clone());
            tracing::info!(
                peer_id,
                user = new.username,
                ?groups,
                "directory groups changed"
            );
            if after.iter().all(|w| *w == 0) && before.iter().any(|w| *w != 0) {
                let _ = dp.maps.remove_client(*tunnel_addr);
                tunnel.command(Command::Halt {
                    peer_id,
                    reason: "no longer in an authorized group".into(),
                });
                continue;
            }
            if let Ok(Some(mut info)) = dp.maps.client(*tunnel_addr) {
                info.groups = after;
                if let Err(e) = dp.maps.upsert_client(*tunnel_addr, info) {
                    tracing::error!(peer_id, error = %e, "updating the groups of a live session");
                }
            }
            // Established flows are re-checked only when the policy generation changes: cut
            // this session's flows to destinations the new groups no longer allow.
            let lost = before.iter().zip(after.iter()).any(|(b, a)| b & !a != 0);
            if lost {
                let src = portcullis_common::v4_addr(tunnel_addr.octets());
                let cut = dp.maps.delete_flows(|k, _| {
                    if k.src != src {
                        return false;
                    }
                    let dst = std::net::Ipv4Addr::new(k.dst[0], k.dst[1], k.dst[2], k.dst[3]);
                    !crate::policy::compiled_eval::lpm(&l.compiled.authz, dst).is_some_and(|v| {
                        v.all_users != 0
                            || v.groups.iter().zip(after.iter()).any(|(r, u)| r & u != 0)
                    })
                });
                if let Err(e) = cut {
                    tracing::error!(peer_id, error = %e, "cutting flows of a session that lost groups");
                }
            }
        }
    }
}

fn status(dp: &Datapath, live: &Arc<Mutex<Live>>, tunnel: &Tunnel) -> serde_json::Value {
    // Before the lock: listing sessions needs the tunnel's control thread, which takes the
    // lock to resolve the groups of a connecting client.
    let sessions = tunnel.sessions();
    let l = live.lock().unwrap_or_else(|e| e.into_inner());
    let drops = dp.maps.drop_counters().unwrap_or_default();
    let fill = map_fill(dp, &l.compiled, None);
    let flows = fill
        .iter()
        .find(|(n, _, _)| *n == "conntrack")
        .map_or(0, |f| f.1);
    serde_json::json!({
        "ok": true,
        "generation": l.generation,
        "reloads": l.reloads,
        "last_reload_error": l.last_reload_error,
        "last_reload_timing": l.last_reload_timing,
        "pending_restart": l.pending_restart,
        "sessions": sessions.len(),
        "established": sessions.iter().filter(|s| s.established).count(),
        "flows": flows,
        "drops": drops.iter().map(|(r, n)| (r.name(), *n)).collect::<BTreeMap<_, _>>(),
        "maps": fill
            .iter()
            .map(|(n, e, c)| (*n, serde_json::json!({"entries": e, "capacity": c})))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// The sessions as `connections list` reports them (`connections`: each session's
/// `Connected` event and when it came).
pub fn list(
    dp: &Datapath,
    tunnel: &Tunnel,
    connections: &BTreeMap<u32, (ServerEvent, Instant)>,
    grants: &crate::auth::Grants,
) -> Vec<ConnectionInfo> {
    tunnel
        .sessions()
        .into_iter()
        .map(|s: SessionInfo| {
            let stats = dp.maps.session_stats(s.peer_id).unwrap_or_default();
            let since = connections
                .get(&s.peer_id)
                .map_or(0, |(_, t)| t.elapsed().as_secs());
            let grant = grants.get(s.peer_id).unwrap_or_default();
            ConnectionInfo {
                username: Some(grant.username).filter(|u| !u.is_empty()),
                directory_groups: grant.groups,
                id: s.peer_id,
                user: s.common_name,
                client_address: s.tunnel_addr.map(|a| a.to_string()),
                public_address: s.link.addr().to_string(),
                transport: if s.link.is_tcp() { "tcp" } else { "udp" }.into(),
                established: s.established,
                since_secs: since,
                ingress_bytes: stats.ingress_bytes,
                egress_bytes: stats.egress_bytes,
                ingress_packets: stats.ingress_packets,
                egress_packets: stats.egress_packets,
            }
        })
        .collect()
}

/// Validates, compiles and applies the file as one new policy generation; an invalid file
/// leaves the running policy in place. Group changes reach live sessions at once (their
/// bitmaps in the clients map are rewritten); flows no longer allowed are cut by the data
/// path's revalidation.
fn reload(
    config_path: &Path,
    running: &EndpointConfig,
    dp: &mut Datapath,
    tunnel: &Tunnel,
    live: &Arc<Mutex<Live>>,
) -> std::result::Result<u32, String> {
    let t0 = Instant::now();
    let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
    l.config_stamp = stamp(config_path);
    let mut timing = ReloadTiming::default();
    let result = (|| -> Result<u32> {
        let (cfg, compiled) = load_and_compile(
            config_path,
            &|n| datapath::ifindex(n),
            Some(&l.compiled.group_bits),
        )?;
        let pending = crate::config::restart_only_changes(running, &cfg);
        if compiled.targets.len() != l.compiled.targets.len() {
            bail!("adding or removing target networks needs a restart (the XDP program attaches to their interfaces)");
        }
        if crate::config::target_attachments(running) != crate::config::target_attachments(&cfg) {
            bail!("changing a target network's interface or PAT ports needs a restart (the XDP program and the reserved ports are set up at start)");
        }
        timing.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let g = reconcile::reconcile(&mut dp.maps, &compiled)?;
        l.last_reconcile = t.elapsed();
        timing.reconcile_ms = l.last_reconcile.as_secs_f64() * 1e3;
        l.policy = cfg.policy();
        l.compiled = compiled;
        l.generation = g;
        // New sessions get the new pushed options; live ones keep theirs until they reconnect.
        tunnel.command(Command::Settings(Box::new(cfg.server_settings())));
        if !pending.is_empty() {
            tracing::warn!(
                settings = ?pending,
                "these settings changed and take effect at the next restart of the agent; the rest is applied"
            );
        }
        l.pending_restart = pending;
        Ok(g)
    })();
    match result {
        Ok(g) => {
            l.reloads += 1;
            l.last_reload_error = None;
            drop(l);
            let t = Instant::now();
            // Live sessions get their new group bitmaps. The sessions are listed without the
            // lock: the tunnel's control thread takes it to resolve the groups of a client
            // that connects meanwhile (which then either has the new policy already, or is
            // in this list because it connected before).
            let sessions = tunnel.sessions();
            let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
            for s in sessions {
                if let (Some(addr), Some(user)) = (s.tunnel_addr, s.common_name.as_deref()) {
                    if let Ok(Some(mut info)) = dp.maps.client(addr) {
                        let grant = l.grants.get(s.peer_id).unwrap_or_default();
                        info.groups = l.session_groups(user, &grant);
                        if let Err(e) = dp.maps.upsert_client(addr, info) {
                            tracing::error!(%addr, user, error = %e, "updating the groups of a live session");
                        }
                    }
                }
            }
            timing.sessions_ms = t.elapsed().as_secs_f64() * 1e3;
            timing.total_ms = t0.elapsed().as_secs_f64() * 1e3;
            l.last_reload_timing = Some(timing);
            tracing::info!(
                generation = g,
                load_ms = timing.load_ms,
                reconcile_ms = timing.reconcile_ms,
                sessions_ms = timing.sessions_ms,
                took_ms = timing.total_ms,
                "policy reloaded"
            );
            Ok(g)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("reload refused, the running policy stays: {msg}");
            l.last_reload_error = Some(msg.clone());
            Err(msg)
        }
    }
}

/// After the grace period, removes what a previous agent's sessions left and no session
/// took back (their clients did not reconnect), with their flows.
fn expire_kept(dp: &mut Datapath, tunnel: &Tunnel, live: &Arc<Mutex<Live>>) {
    let due = {
        let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
        match &l.kept {
            Some((at, _)) if Instant::now() >= *at => l.kept.take().map(|(_, a)| a),
            _ => None,
        }
    };
    let Some(adopted) = due else { return };
    let held: Vec<Ipv4Addr> = tunnel
        .sessions()
        .into_iter()
        .filter_map(|s| s.tunnel_addr)
        .collect();
    // Held while removing: a session admitted meanwhile takes its entry out of `adopted`
    // under the same lock (and only then writes its own), so it is never removed here.
    let mut adopted = adopted.lock().unwrap_or_else(|e| e.into_inner());
    let left: Vec<Ipv4Addr> = adopted
        .drain()
        .map(|(a, _)| a)
        .filter(|a| !held.contains(a))
        .collect();
    for addr in left {
        match dp.maps.remove_client(addr) {
            Ok(cut) => {
                tracing::info!(%addr, flows_cut = cut, "a previous agent's session did not come back: removed")
            }
            Err(e) => tracing::warn!(%addr, error = %e, "removing a previous agent's session"),
        }
    }
}

/// `connections list` as a table (`v` is the agent's reply, or a list of [`ConnectionInfo`]).
pub fn connections_table(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:>5}  {:<16} {:<15} {:<21} {:<4} {:>7}  {:>12} {:>12}\n",
        "id", "user", "client", "public", "tr", "age", "in bytes", "out bytes"
    );
    let rows = v
        .get("connections")
        .unwrap_or(v)
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in rows {
        // Numbers as text first: a JSON value ignores width and alignment.
        let n = |k: &str| c[k].as_u64().map_or("-".into(), |x| x.to_string());
        let _ = writeln!(
            out,
            "{:>5}  {:<16} {:<15} {:<21} {:<4} {:>6}s  {:>12} {:>12}",
            n("id"),
            // The directory user where there is one, else the certificate name.
            c["username"]
                .as_str()
                .or_else(|| c["user"].as_str())
                .unwrap_or("-"),
            c["client_address"].as_str().unwrap_or("-"),
            c["public_address"].as_str().unwrap_or("-"),
            c["transport"].as_str().unwrap_or("-"),
            n("since_secs"),
            n("ingress_bytes"),
            n("egress_bytes")
        );
    }
    out
}

/// Sends one request to a running agent's admin socket and returns the JSON reply.
pub fn admin_request(socket: &Path, req: &AdminRequest) -> Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is `portcullis run` running for this endpoint, and are you root?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply)?;
    Ok(serde_json::from_str(&reply)?)
}
