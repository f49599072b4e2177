//! The authenticator of a running endpoint, replaced by a reload (a file edit, or a fleet
//! revision, which goes through the same reload) for the logins that start afterwards.
//!
//! A reload that changes `[auth]`, `[directory]` or `[oidc]` builds a new [`Authenticator`]
//! ([`LiveAuth::prepare`], which may fail and then changes nothing) and puts it in force
//! once the rest of the reload applied ([`LiveAuth::install`]). Established sessions are
//! left alone: each session live at that moment keeps the authenticator that admitted it
//! for its renegotiations (a certificate-only session is not asked for a password it never
//! had; a directory session is re-checked by its own directory), until it ends. What
//! outlives every authenticator is the [`AuthState`]: the failed-login limiters (new limits
//! keep what was counted), the one-time-code replay guard, the login slots, the
//! client-connect hook and the session tokens.
//!
//! Two things cannot change while running and are reported as needing a restart: the
//! session-token settings (the secret is a host-local file read at start) and the OIDC
//! callback listener (`redirect_listen`, `callback_cert`, `callback_key`): single sign-on,
//! once started, keeps its listener for the agent's life, and a reload changes its provider,
//! claims, timeouts and `redirect_url` for logins that start afterwards.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::authenticator::{AuthState, Authenticator, LocalGroups};
use super::grants::Grants;
use super::oidc::{CallbackListener, Sso, SsoSettings};
use crate::config::{AuthSection, DirectoryConfig, EndpointConfig, OidcConfig};
use crate::io::{Authorizer, Pending};
use crate::openvpn::peer::Link;
use crate::openvpn::verdict::{AuthRequest, FailureCode, Refusal};

/// The login settings an authenticator was built from: a reload that leaves them alone
/// keeps it (and its directory connections).
#[derive(Clone, Debug, PartialEq, Eq)]
struct LoginSettings {
    auth: AuthSection,
    directory: Option<DirectoryConfig>,
    oidc: Option<OidcConfig>,
}

impl LoginSettings {
    fn of(cfg: &EndpointConfig) -> LoginSettings {
        LoginSettings {
            auth: cfg.auth.clone(),
            directory: cfg.directory.clone(),
            oidc: cfg.oidc.clone(),
        }
    }
}

/// The session-token settings the [`AuthState`] was built with.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TokenSettings {
    secret: Option<std::path::PathBuf>,
    revocations: Option<std::path::PathBuf>,
    lifetime: u64,
    renewal: u64,
}

impl TokenSettings {
    fn of(cfg: &EndpointConfig) -> TokenSettings {
        TokenSettings {
            secret: cfg.auth.token_secret_file.clone(),
            revocations: cfg.auth.token_revocation_path(),
            lifetime: cfg.auth.token_lifetime_secs,
            renewal: cfg.token_renewal_secs(),
        }
    }

    /// The fields of `new` that differ, by name.
    fn changed(&self, new: &TokenSettings) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.secret != new.secret {
            v.push("auth.token_secret_file");
        }
        if self.revocations != new.revocations {
            v.push("auth.token_revocation_file");
        }
        if self.lifetime != new.lifetime {
            v.push("auth.token_lifetime_secs");
        }
        if self.renewal != new.renewal {
            v.push("auth.token_renewal_secs");
        }
        v
    }
}

/// The authenticator in force and the ones that admitted sessions still alive.
pub struct LiveAuth {
    state: AuthState,
    current: RwLock<Option<Arc<Authenticator>>>,
    built_from: Mutex<LoginSettings>,
    /// Sessions that were live when the authenticator was replaced, by link: their
    /// renegotiations are decided by the one that admitted them (`None`: the certificate
    /// alone). Emptied as they end ([`LiveAuth::prune`]).
    retired: Mutex<HashMap<Link, Option<Arc<Authenticator>>>>,
    /// Single sign-on, once started (at start or by the first reload that asks for it).
    sso: Mutex<Option<Arc<Sso>>>,
    tokens_from: TokenSettings,
}

/// A reload's authenticator, built but not in force ([`LiveAuth::install`]); dropped, it
/// changes nothing.
pub struct Prepared {
    change: Option<Change>,
    /// Login settings of the file that only a restart applies.
    pub pending_restart: Vec<&'static str>,
}

struct Change {
    auth: Option<Arc<Authenticator>>,
    settings: LoginSettings,
    /// A single sign-on started for this reload (none ran before).
    started: Option<Arc<Sso>>,
    /// New provider settings for the running single sign-on.
    reconfigure: Option<SsoSettings>,
}

impl LiveAuth {
    /// The authenticator of the file the endpoint starts with (single sign-on's listener is
    /// bound now, so a taken port is reported at start).
    pub fn start(
        cfg: &EndpointConfig,
        grants: Arc<Grants>,
        local_groups: LocalGroups,
    ) -> anyhow::Result<LiveAuth> {
        use anyhow::Context as _;
        let state = AuthState::new(cfg, grants, local_groups)?;
        let sso = match (&cfg.oidc, cfg.auth.uses_oidc()) {
            (Some(o), true) => Some(Sso::start(cfg, o).context("setting up single sign-on")?),
            _ => None,
        };
        let current = Authenticator::build(cfg, &state, sso.clone())?.map(Arc::new);
        Ok(LiveAuth {
            state,
            current: RwLock::new(current),
            built_from: Mutex::new(LoginSettings::of(cfg)),
            retired: Mutex::default(),
            sso: Mutex::new(sso),
            tokens_from: TokenSettings::of(cfg),
        })
    }

    /// The authenticator for new logins (`None`: the certificate alone decides).
    pub fn current(&self) -> Option<Arc<Authenticator>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether key exchanges wait for an external verdict (the server's `AuthMode`).
    pub fn external(&self) -> bool {
        self.current().is_some()
    }

    /// The session tokens (built at start; `None` without a token secret).
    pub fn tokens(&self) -> Option<Arc<super::sessions::SessionTokens>> {
        self.state.tokens.clone()
    }

    /// The directory client of the authenticator in force (the periodic re-check asks it).
    pub fn directory(&self) -> Option<Arc<super::directory::Directory>> {
        self.current().and_then(|a| a.directory.clone())
    }

    /// Builds the authenticator `cfg` (validated) asks for, without putting it in force.
    /// An error (a directory CA or secret file unreadable now, a callback port taken) refuses
    /// the reload.
    pub fn prepare(&self, cfg: &EndpointConfig) -> anyhow::Result<Prepared> {
        use anyhow::Context as _;
        let mut pending_restart = self.tokens_from.changed(&TokenSettings::of(cfg));
        let settings = LoginSettings::of(cfg);
        if *lock(&self.built_from) == settings {
            return Ok(Prepared {
                change: None,
                pending_restart,
            });
        }
        let running = lock(&self.sso).clone();
        let (sso, started, reconfigure) = match (&cfg.oidc, cfg.auth.uses_oidc(), running) {
            (Some(o), true, Some(sso)) => {
                let new = CallbackListener::of(o);
                if sso.listener.listen != new.listen {
                    pending_restart.push("oidc.redirect_listen");
                }
                if (&sso.listener.cert, &sso.listener.key) != (&new.cert, &new.key) {
                    pending_restart.push("oidc.callback_cert");
                }
                let s = SsoSettings::of(o).context("single sign-on")?;
                (Some(sso), None, Some(s))
            }
            (Some(o), true, None) => {
                let sso = Sso::start(cfg, o).context("setting up single sign-on")?;
                (Some(sso.clone()), Some(sso), None)
            }
            _ => (None, None, None),
        };
        // The limiters take the new limits only when this is put in force.
        let auth = Authenticator::build(cfg, &self.state, sso)?.map(Arc::new);
        Ok(Prepared {
            change: Some(Change {
                auth,
                settings,
                started,
                reconfigure,
            }),
            pending_restart,
        })
    }

    /// Puts a prepared authenticator in force for logins from now on; `live` are the links
    /// of the sessions the tunnel has now, which keep the authenticator that admitted them.
    /// True when the authenticator changed.
    pub fn install(&self, p: Prepared, live: &[Link]) -> bool {
        let Some(c) = p.change else {
            return false;
        };
        if let Some(s) = c.started {
            *lock(&self.sso) = Some(s);
        }
        if let (Some(s), Some(sso)) = (c.reconfigure, lock(&self.sso).as_ref()) {
            sso.reconfigure(s);
        }
        let a = &c.settings.auth;
        let window = std::time::Duration::from_secs(a.failed_login_window_secs.max(1));
        lock(&self.state.per_user).set_limit(a.failed_logins_per_user, window);
        lock(&self.state.per_source).set_limit(a.failed_logins_per_source, window);
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            c.auth,
        );
        tracing::info!(
            methods = ?a.methods,
            kept_for_renegotiations = live.len(),
            "authentication settings applied to new logins"
        );
        let mut retired = lock(&self.retired);
        for l in live {
            retired.entry(*l).or_insert_with(|| old.clone());
        }
        drop(retired);
        *lock(&self.built_from) = c.settings;
        true
    }

    /// Forgets the sessions that ended (`live`: the links the tunnel has now).
    pub fn prune(&self, live: &[Link]) {
        let mut retired = lock(&self.retired);
        if !retired.is_empty() {
            retired.retain(|l, _| live.contains(l));
        }
    }

    /// Sessions that keep an authenticator replaced since.
    pub fn retired(&self) -> usize {
        lock(&self.retired).len()
    }

    /// Who decides a request: a new connection the authenticator in force (a new session
    /// on a link takes it from an old one there), a renegotiation the one that admitted its
    /// session.
    fn for_request(&self, link: Link, req: &AuthRequest) -> Option<Arc<Authenticator>> {
        let mut retired = lock(&self.retired);
        if req.initial {
            retired.remove(&link);
        } else if let Some(a) = retired.get(&link) {
            return a.clone();
        }
        drop(retired);
        self.current()
    }

    /// The tunnel's authorizer: every verdict asks the authenticator of the moment.
    pub fn authorizer(self: &Arc<Self>) -> Authorizer {
        let me = Arc::clone(self);
        Arc::new(
            move |link, req, pending: &Pending| match me.for_request(link, req) {
                Some(a) => a.decide_caught(link, req, pending),
                None => certificate_only(req),
            },
        )
    }
}

/// No authenticator: the certificate decides (as the server's own certificate-only mode,
/// for the verdicts asked while a reload switches the mode).
fn certificate_only(req: &AuthRequest) -> Result<(), Refusal> {
    if req.initial && !req.identity.has_certificate() {
        return Err(Refusal::new(
            FailureCode::CertificateRequired,
            "client certificate required",
        ));
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
