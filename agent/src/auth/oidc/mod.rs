//! Single sign-on through an OpenID Connect provider, with OpenVPN's pending authentication
//! (doc §8.2): the client gets `AUTH_PENDING,timeout N` and `INFO_PRE,WEB_AUTH::<url>`, its
//! user logs in at the provider in a browser, the provider sends the browser to our callback
//! listener, and the code exchange there decides the session that waits.
//!
//! - [`flow`]: discovery, authorization URL, code exchange and ID-token checks (openidconnect).
//! - [`callback`]: the HTTPS callback listener.
//!
//! The `state` of each login is `<login id>.<secret>`: the id finds the one VPN session that
//! waits for it (a callback completes no other), the secret proves the callback belongs to that
//! login; a login is used once, so a replayed callback finds nothing.
pub mod callback;
pub mod flow;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use openidconnect::{Nonce, PkceCodeVerifier};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::{EndpointConfig, OidcConfig};
use crate::io::Pending;
use crate::openvpn::options::web_auth_prefix;
use crate::openvpn::peer::Link;
use crate::openvpn::verdict::{AuthRequest, FailureCode, Refusal};
use flow::{FlowError, Identity, Provider};

/// How much longer than the server's own wait the client is told to wait for the verdict.
const VERDICT_GRACE: Duration = Duration::from_secs(5);

/// One login waiting for its callback.
struct Login {
    /// The provider's authorization URL, where `/login/<id>` sends the browser.
    auth_url: String,
    secret: String,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    link: Link,
    done: SyncSender<Result<Identity, Refusal>>,
    /// The provider the login started with: its code is exchanged there even if a reload
    /// changed the provider meanwhile.
    provider: Arc<Provider>,
}

/// What a reload may change without touching the listener ([`Sso::reconfigure`]).
pub struct SsoSettings {
    provider: Arc<Provider>,
    timeout: Duration,
    max_pending: usize,
    /// `redirect_url` with `/callback` replaced by `/login/`: the start of the URL sent to the
    /// client.
    login_base: String,
}

impl SsoSettings {
    /// Reads the client secret: a file that cannot be read refuses the reload.
    pub fn of(o: &OidcConfig) -> anyhow::Result<SsoSettings> {
        Ok(SsoSettings {
            provider: Arc::new(Provider::new(o)?),
            timeout: Duration::from_secs(o.pending_timeout_secs),
            max_pending: o.max_pending,
            login_base: format!("{}/login/", o.redirect_url.trim_end_matches("/callback")),
        })
    }
}

/// What the callback listener was started with: only a restart changes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackListener {
    pub listen: SocketAddr,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl CallbackListener {
    pub fn of(o: &OidcConfig) -> CallbackListener {
        CallbackListener {
            listen: o.redirect_listen,
            cert: o.callback_cert.clone(),
            key: o.callback_key.clone(),
        }
    }
}

/// Web logins in progress and the runtime that serves their callbacks.
pub struct Sso {
    settings: RwLock<Arc<SsoSettings>>,
    rt: Option<tokio::runtime::Runtime>,
    logins: Mutex<HashMap<String, Login>>,
    rng: SystemRandom,
    /// Where the callback listener is bound (port 0 in the configuration: the port it got).
    pub callback_addr: SocketAddr,
    /// The listener's configuration.
    pub listener: CallbackListener,
}

/// What the browser is told after the callback (and the log).
#[derive(Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    SignedIn(String),
    Refused(Refusal),
}

impl Sso {
    /// The provider client and the callback listener (bound now, so a taken port is reported
    /// at start). The listener's certificate is `callback_cert`, or the endpoint's own.
    pub fn start(cfg: &EndpointConfig, o: &OidcConfig) -> anyhow::Result<Arc<Sso>> {
        use anyhow::Context as _;
        let settings = SsoSettings::of(o)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pc-oidc")
            .enable_all()
            .build()
            .context("starting the OIDC runtime")?;
        let (cert, key) = match (&o.callback_cert, &o.callback_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => (cfg.tls.cert.clone(), cfg.tls.key.clone()),
        };
        let tls = crate::console::server::tls_config(&cert, &key)
            .context("the OIDC callback listener's certificate")?;
        let listener = std::net::TcpListener::bind(o.redirect_listen)
            .with_context(|| format!("binding oidc.redirect_listen {}", o.redirect_listen))?;
        listener.set_nonblocking(true)?;
        let callback_addr = listener.local_addr()?;
        let sso = Arc::new_cyclic(|weak: &std::sync::Weak<Sso>| {
            let weak = weak.clone();
            rt.spawn(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => callback::serve(l, tls, weak).await,
                    Err(e) => tracing::error!("OIDC callback listener: {e}"),
                }
            });
            Sso {
                settings: RwLock::new(Arc::new(settings)),
                rt: Some(rt),
                logins: Mutex::new(HashMap::new()),
                rng: SystemRandom::new(),
                callback_addr,
                listener: CallbackListener::of(o),
            }
        });
        tracing::info!(issuer = o.issuer, callback = %callback_addr, "single sign-on ready");
        Ok(sso)
    }

    /// A reload's provider, claims, timeouts and `redirect_url`, for logins that start from
    /// now on (logins in progress finish with the provider they started with). The listener
    /// stays: the caller reports a change of it as needing a restart.
    pub fn reconfigure(&self, settings: SsoSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    fn settings(&self) -> Arc<SsoSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The web login of a new connection: tells the client where to log in and waits for the
    /// callback (or the timeout). Runs on an authorizer thread.
    pub fn login(
        &self,
        link: Link,
        req: &AuthRequest,
        pending: &Pending,
    ) -> Result<Identity, Refusal> {
        let Some(prefix) = web_auth_prefix(&req.peer_info) else {
            tracing::warn!(%link, "SSO login refused: the client cannot open a web login (no webauth/openurl in IV_SSO)");
            return Err(Refusal::new(
                FailureCode::SsoUnsupportedClient,
                "this server signs in through a web browser: use a client with web login (OpenVPN Connect, openvpn 2.6 with a GUI, Tunnelblick 4)",
            ));
        };
        let (id, secret) = (self.random(), self.random());
        let settings = self.settings();
        let started = self
            .rt
            .as_ref()
            .expect("started")
            .block_on(settings.provider.start(format!("{id}.{secret}")))
            .map_err(|e| {
                tracing::warn!(%link, error = %e, "SSO login not started");
                flow_refusal(&e)
            })?;
        let (tx, rx) = sync_channel(1);
        {
            let mut logins = lock(&self.logins);
            if logins.len() >= settings.max_pending {
                tracing::warn!(%link, "SSO login refused: too many web logins in progress");
                return Err(Refusal::temporary(
                    FailureCode::SsoBusy,
                    "too many web logins in progress, try again later",
                ));
            }
            logins.insert(
                id.clone(),
                Login {
                    auth_url: started.url,
                    secret,
                    nonce: started.nonce,
                    verifier: started.verifier,
                    link,
                    done: tx,
                    provider: settings.provider.clone(),
                },
            );
        }
        tracing::info!(%link, login = id, "SSO login pending");
        // The client gets our short URL, which redirects to the provider: the 2.6 client
        // hands its management client only INFO messages of up to about 240 bytes (a longer
        // one is dropped with "Received INFO command is too long"), shorter than most
        // authorization URLs.
        // The client is told a little more than we wait: with the same figure it gives up
        // ("No reply from server to push requests") just as our AUTH_FAILED is on its way,
        // and restarts instead of reporting why.
        pending.announce(
            settings.timeout + VERDICT_GRACE,
            format!("{prefix}{}{id}", settings.login_base),
        );
        let verdict = match rx.recv_timeout(settings.timeout) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Err(Refusal::new(
                FailureCode::SsoTimeout,
                "web login not completed in time",
            )),
        };
        lock(&self.logins).remove(&id);
        match &verdict {
            Ok(who) => {
                tracing::info!(%link, user = who.username, groups = ?who.groups, "SSO login")
            }
            Err(r) => {
                tracing::warn!(%link, code = %r.code, reason = r.message, "SSO login failed")
            }
        }
        verdict
    }

    /// The provider sent the browser back with `state` and either `code` or `error`.
    pub async fn callback(
        &self,
        state: &str,
        code: Option<String>,
        error: Option<String>,
    ) -> CallbackOutcome {
        let refused = |code, msg: &str| CallbackOutcome::Refused(Refusal::new(code, msg));
        let (id, secret) = state.split_once('.').unwrap_or((state, ""));
        // Taken out at once: a login is completed (or spoilt) by one callback only.
        let Some(login) = lock(&self.logins).remove(id) else {
            tracing::warn!(code = %FailureCode::SsoState, "SSO callback for no login in progress (replayed, expired or forged state)");
            return refused(
                FailureCode::SsoState,
                "this login is unknown, already used or expired: connect again",
            );
        };
        let link = login.link;
        let outcome = if !same(secret, &login.secret) {
            refused(FailureCode::SsoState, "login state mismatch")
        } else if let Some(e) = error {
            let e: String = e
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            refused(
                FailureCode::SsoDenied,
                &format!("login refused by the identity provider ({e})"),
            )
        } else if let Some(code) = code {
            match login
                .provider
                .finish(code, login.verifier, &login.nonce)
                .await
            {
                Ok(who) => {
                    let name = who.username.clone();
                    let _ = login.done.try_send(Ok(who));
                    return CallbackOutcome::SignedIn(name);
                }
                Err(e) => {
                    tracing::warn!(%link, error = %e, "SSO code exchange failed");
                    CallbackOutcome::Refused(flow_refusal(&e))
                }
            }
        } else {
            refused(FailureCode::SsoState, "callback without code or error")
        };
        if let CallbackOutcome::Refused(r) = &outcome {
            let _ = login.done.try_send(Err(r.clone()));
        }
        outcome
    }

    /// The provider's authorization URL of login `id`, while it waits.
    pub fn auth_url(&self, id: &str) -> Option<String> {
        lock(&self.logins).get(id).map(|l| l.auth_url.clone())
    }

    /// Logins waiting for their callback.
    pub fn pending_count(&self) -> usize {
        lock(&self.logins).len()
    }

    fn random(&self) -> String {
        let mut b = [0u8; 18];
        self.rng.fill(&mut b).expect("randomness");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}

impl Drop for Sso {
    fn drop(&mut self) {
        // Dropped from within the tunnel's async control thread: a blocking shutdown panics.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn flow_refusal(e: &FlowError) -> Refusal {
    match e {
        FlowError::Unavailable(_) => Refusal::temporary(
            FailureCode::SsoUnavailable,
            "identity provider unavailable, try again later",
        ),
        FlowError::Token(m) => Refusal::new(FailureCode::SsoToken, m.clone()),
    }
}

/// Equal secrets, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    use ring::digest::{digest, SHA256};
    let (x, y) = (digest(&SHA256, a.as_bytes()), digest(&SHA256, b.as_bytes()));
    x.as_ref()
        .iter()
        .zip(y.as_ref())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
