//! The way from the authorizer threads (which decide each new connection and may block) to
//! the fleet member (which owns the etcd connection) for the fleet-wide caps
//! (`max_connections_per_user`, `max_connections`).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::io::Authorizer;
use crate::openvpn::session::{FailureCode, Refusal};

/// How long a connection waits for the fleet's admission before it is refused as temporary
/// (etcd out of reach).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The fleet-wide caps that are on (at least one of them, where a gate exists).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// `[fleet] max_connections_per_user`.
    pub per_user: Option<usize>,
    /// `[fleet] max_connections`: the whole endpoint.
    pub total: Option<usize>,
}

impl Caps {
    pub fn per_user(max: usize) -> Caps {
        Caps {
            per_user: Some(max),
            total: None,
        }
    }

    /// The caps of a `[fleet]` section; `None` when neither is set (no admission in etcd).
    pub fn of(section: &crate::config::FleetSection) -> Option<Caps> {
        let c = Caps {
            per_user: section.max_connections_per_user.map(|m| m as usize),
            total: section.max_connections.map(|m| m as usize),
        };
        (c != Caps::default()).then_some(c)
    }
}

/// One admission asked of the member.
pub struct AdmitRequest {
    pub user: String,
    /// The server's serial of the session: names its `users/` key.
    pub serial: u64,
    pub reply: std::sync::mpsc::Sender<Result<(), Refusal>>,
    /// When the asking thread stops waiting (and refuses the connection as temporary): a
    /// request still queued then is dropped, not decided (it queued up while etcd was out
    /// of reach; admitting it would hold a place for a connection that was refused).
    pub deadline: std::time::Instant,
}

/// The fleet-wide caps on a new connection (one user's, the endpoint's).
#[derive(Clone)]
pub struct UserGate {
    pub caps: Caps,
    tx: mpsc::Sender<AdmitRequest>,
    rx: Arc<Mutex<Option<mpsc::Receiver<AdmitRequest>>>>,
}

impl UserGate {
    /// Only `max_connections_per_user = max`.
    pub fn new(max: usize) -> UserGate {
        UserGate::with_caps(Caps::per_user(max))
    }

    pub fn with_caps(caps: Caps) -> UserGate {
        let (tx, rx) = mpsc::channel(256);
        UserGate {
            caps,
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
        }
    }

    /// The member takes the requests (once).
    pub fn take_requests(&self) -> Option<mpsc::Receiver<AdmitRequest>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Asks the member to admit connection `serial` of `user`; blocks (an authorizer thread).
    pub fn admit_blocking(&self, user: &str, serial: u64) -> Result<(), Refusal> {
        let unavailable = |why: &str| {
            Refusal::temporary(
                FailureCode::FleetUnavailable,
                format!("fleet admission unavailable: {why}"),
            )
        };
        let (reply, answer) = std::sync::mpsc::channel();
        self.tx
            .try_send(AdmitRequest {
                user: user.to_owned(),
                serial,
                reply,
                deadline: std::time::Instant::now() + ADMIT_TIMEOUT,
            })
            .map_err(|_| unavailable("too many admissions waiting"))?;
        answer
            .recv_timeout(ADMIT_TIMEOUT)
            .map_err(|_| unavailable("etcd did not answer"))?
    }

    /// `inner` (the directory, or none: certificates only) and then, for a new connection,
    /// the fleet-wide caps. The user is the directory user where there is one, else the
    /// certificate's common name.
    pub fn wrap(&self, inner: Option<Authorizer>) -> Authorizer {
        let gate = self.clone();
        Arc::new(move |link, req, pending| {
            match &inner {
                Some(a) => a(link, req, pending)?,
                // Certificate-only endpoints run in external mode for the cap: the same
                // refusal of a client without a certificate as the server's own check.
                None if !req.identity.has_certificate() => {
                    return Err(Refusal::new(
                        FailureCode::CertificateRequired,
                        "client certificate required",
                    ))
                }
                None => {}
            }
            if !req.initial {
                return Ok(());
            }
            let user = if req.username.is_empty() {
                req.identity.common_name.as_str()
            } else {
                req.username.as_str()
            };
            gate.admit_blocking(user, req.session)
        })
    }
}
