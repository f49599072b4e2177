//! The live policy of a running endpoint and its reload: the file is validated and compiled
//! as one new generation; an invalid file leaves the running policy in place.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use portcullis_common::GroupBits;

use super::handoff::Adopted;
use crate::admin::ReloadTiming;
use crate::auth::live::Prepared;
use crate::auth::LiveAuth;
use crate::config::{incremental::RuleCache, EndpointConfig, SharedConfig};
use crate::datapath::{self, Datapath};
use crate::io::tls_files::ReloadableTls;
use crate::io::{Command, Tunnel};
use crate::openvpn::server::{AuthMode, ServerSettings};
use crate::policy::compile::incremental::{Compiled, IncrementalCompiler};
use crate::policy::{self, CompiledPolicy, PolicyInput};
use crate::reconcile::Reconciler;

/// The live policy, shared with the tunnel hooks (group bitmaps of new sessions).
pub struct Live {
    pub policy: Arc<PolicyInput>,
    pub compiled: CompiledPolicy,
    pub generation: u32,
    pub config_stamp: Option<SystemTime>,
    pub reloads: u64,
    pub last_reload_error: Option<String>,
    pub last_reconcile: Duration,
    /// Phases of the last successful reload.
    pub last_reload_timing: Option<ReloadTiming>,
    /// Sessions of a previous agent (`--keep-maps`) not back yet, removed at the deadline.
    pub kept: Option<(Instant, Adopted)>,
    /// Settings changed in the file that wait for a restart.
    pub pending_restart: Vec<&'static str>,
    /// What authentication granted each session (directory user and groups).
    pub grants: Arc<crate::auth::Grants>,
    /// In a fleet (the file has `[fleet]`): the published policy this gateway runs.
    pub fleet: Option<FleetState>,
    /// The rule sections of the last file parsed: a reload parses only the changed ones.
    pub rule_cache: RuleCache,
    /// The live policy's compilation: a reload recompiles only what changed.
    pub compiler: IncrementalCompiler,
    /// The last generation applied: a reload diffs only the map keys that changed.
    pub reconciler: Reconciler,
    /// The configuration the last successful reload put in force (the file, in a fleet with
    /// the published part), `None` before the first: what profiles tell new clients.
    pub in_force: Option<EndpointConfig>,
}

/// A fleet gateway's following of the one policy.
#[derive(Default)]
pub struct FleetState {
    /// The published revision applied: its shared part replaces the local file's in every
    /// reload, so an edit of the local file changes only host settings.
    pub applied: Option<crate::fleet::Published>,
    /// Why the gateway cannot follow the fleet now (etcd unreachable).
    pub degraded: Option<String>,
    /// The membership, as the fleet member last reported it.
    pub member: crate::admin::FleetMember,
}

impl FleetState {
    pub fn status(&self) -> crate::admin::FleetStatus {
        crate::admin::FleetStatus {
            revision: self.applied.as_ref().map(|p| p.revision),
            degraded: self.degraded.clone(),
            member: self.member.clone(),
        }
    }
}

/// [`Live`] behind its lock, shared by the loop, the tunnel's control thread and the hooks.
pub type SharedLive = Arc<Mutex<Live>>;

/// Takes the lock (a panic elsewhere does not make the policy unreadable).
pub fn lock(live: &SharedLive) -> MutexGuard<'_, Live> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    /// A session's bitmap: local groups of its certificate name and directory user, and its
    /// directory groups. Groups no rule names have no bit, so they cost nothing per packet.
    pub fn session_groups(&self, common_name: &str, grant: &crate::auth::Grant) -> GroupBits {
        let g = crate::auth::combined_groups(
            &|u: &str| self.policy.local_groups_of(u),
            common_name,
            grant,
        );
        self.compiled.groups_bitmap(g.iter().map(String::as_str))
    }
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
pub fn load_and_compile(
    path: &Path,
    resolve_ifindex: &dyn Fn(&str) -> Option<u32>,
    previous: Option<&BTreeMap<String, u16>>,
) -> Result<(EndpointConfig, CompiledPolicy)> {
    load_merge_and_compile(path, None, resolve_ifindex, previous)
}

/// [`load_and_compile`] with the shared part of a fleet publish in place of the file's: the
/// merge is checked exactly as a file.
pub fn load_merge_and_compile(
    path: &Path,
    shared: Option<&SharedConfig>,
    resolve_ifindex: &dyn Fn(&str) -> Option<u32>,
    previous: Option<&BTreeMap<String, u16>>,
) -> Result<(EndpointConfig, CompiledPolicy)> {
    let parsed = EndpointConfig::load_unvalidated(path);
    validate_and_compile(
        path,
        parsed,
        shared,
        resolve_ifindex,
        previous,
        &mut IncrementalCompiler::default(),
        &mut Default::default(),
    )
    .map(|(cfg, c)| (cfg, c.policy))
}

/// The rest of [`load_merge_and_compile`] after parsing, timing its phases into `timing`.
fn validate_and_compile(
    path: &Path,
    parsed: std::result::Result<EndpointConfig, crate::config::ConfigErrors>,
    shared: Option<&SharedConfig>,
    resolve_ifindex: &dyn Fn(&str) -> Option<u32>,
    previous: Option<&BTreeMap<String, u16>>,
    compiler: &mut IncrementalCompiler,
    timing: &mut ReloadTiming,
) -> Result<(EndpointConfig, Compiled)> {
    let mut cfg = parsed.map_err(|e| anyhow::anyhow!("{} is invalid:\n{e}", path.display()))?;
    if let Some(shared) = shared {
        cfg = cfg.with_shared(shared.clone())?;
    }
    let t = Instant::now();
    let file_errors = cfg.validate().err().map(|e| e.0).unwrap_or_default();
    timing.validate_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let compiled = compiler.compile(Arc::new(cfg.policy()), resolve_ifindex, previous);
    timing.compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let compiler_errors = match compiled {
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

/// Key exchanges wait for an external verdict when something decides beyond the
/// certificate (an authenticator, a fleet-wide cap).
pub fn auth_mode(external: bool) -> AuthMode {
    if external {
        AuthMode::External
    } else {
        AuthMode::CertificateOnly
    }
}

/// The file's modification time, to notice edits.
pub fn stamp(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// What a reload applies besides the policy and the pushed options: who may log in.
pub struct Logins<'a> {
    pub auth: &'a LiveAuth,
    /// Whether a client certificate is required follows `auth.methods`.
    pub tls: &'a ReloadableTls,
    /// A fleet-wide connection cap decides every admission (external mode in any case).
    pub capped: bool,
}

/// Validates, compiles and applies the file (in a fleet: with `shared`, the published part, in
/// place of the file's) as one new policy generation; an invalid result leaves the running
/// policy in place. Group changes reach live sessions at once (their
/// bitmaps in the clients map are rewritten); flows no longer allowed are cut by the data
/// path's revalidation. New logins are decided by the new `[auth]`, `[directory]` and
/// `[oidc]`; live sessions keep the authenticator that admitted them (`auth::live`).
pub fn reload(
    config_path: &Path,
    shared: Option<&SharedConfig>,
    running: &EndpointConfig,
    dp: &mut Datapath,
    tunnel: &Tunnel,
    live: &SharedLive,
    logins: &Logins<'_>,
) -> std::result::Result<u32, String> {
    let t0 = Instant::now();
    let mut guard = lock(live);
    let l = &mut *guard;
    l.config_stamp = stamp(config_path);
    let mut timing = ReloadTiming::default();
    let result = (|| -> Result<(u32, Prepared, ServerSettings)> {
        let parsed = l.rule_cache.load_unvalidated(config_path);
        timing.parse_ms = t0.elapsed().as_secs_f64() * 1e3;
        timing.rule_sections = l.rule_cache.last.sections as u64;
        timing.rule_sections_parsed = l.rule_cache.last.parsed as u64;
        let (cfg, compiled) = validate_and_compile(
            config_path,
            parsed,
            shared,
            &|n| datapath::ifindex(n),
            Some(&l.compiled.group_bits),
            &mut l.compiler,
            &mut timing,
        )?;
        let mut pending = crate::config::restart_only_changes(running, &cfg);
        timing.compile_incremental = compiled.incremental;
        if compiled.policy.targets.len() != l.compiled.targets.len() {
            bail!("adding or removing target networks needs a restart (the XDP program attaches to their interfaces)");
        }
        if crate::config::target_attachments(running) != crate::config::target_attachments(&cfg) {
            bail!("changing a target network's interface or PAT ports needs a restart (the XDP program and the reserved ports are set up at start)");
        }
        // Built now, in force after the policy: a login setting that cannot be applied
        // (a directory file unreadable here, a callback port taken) refuses the reload.
        let prepared = logins.auth.prepare(&cfg)?;
        pending.extend(prepared.pending_restart.iter().copied());
        logins
            .tls
            .set_options(cfg.tls_options())
            .map_err(|e| anyhow::anyhow!("TLS with the new auth.methods: {e}"))?;
        timing.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let g = l
            .reconciler
            .reconcile(&mut dp.maps, &compiled.policy, &compiled.delta)?;
        l.last_reconcile = t.elapsed();
        timing.reconcile_ms = l.last_reconcile.as_secs_f64() * 1e3;
        l.policy = Arc::clone(compiled.input());
        l.compiled = l.compiler.commit(compiled);
        l.generation = g;
        if !pending.is_empty() {
            tracing::warn!(
                settings = ?pending,
                "these settings changed and take effect at the next restart of the agent; the rest is applied"
            );
        }
        l.pending_restart = pending;
        l.in_force = Some(cfg.clone());
        Ok((g, prepared, cfg.server_settings()))
    })();
    let l = guard;
    match result {
        Ok((g, prepared, mut settings)) => {
            let mut l = l;
            l.reloads += 1;
            l.last_reload_error = None;
            drop(l);
            let t = Instant::now();
            // Live sessions get their new group bitmaps. The sessions are listed without the
            // lock: the tunnel's control thread takes it to resolve the groups of a client
            // that connects meanwhile (which then either has the new policy already, or is
            // in this list because it connected before).
            let sessions = tunnel.sessions();
            let links: Vec<_> = sessions.iter().map(|s| s.link).collect();
            logins.auth.install(prepared, &links);
            // New sessions get the new pushed options and authentication mode; live ones
            // keep their options until they reconnect.
            settings.auth = auth_mode(logins.auth.external() || logins.capped);
            tunnel.command(Command::Settings(Box::new(settings)));
            let mut l = lock(live);
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
            let mut l = l;
            let msg = format!("{e:#}");
            tracing::error!("reload refused, the running policy stays: {msg}");
            l.last_reload_error = Some(msg.clone());
            Err(msg)
        }
    }
}
