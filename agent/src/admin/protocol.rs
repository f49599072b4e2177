//! The admin protocol: one JSON object per line each way, over the endpoint's Unix socket.
//!
//! A request is `{"v":1,"cmd":"status"}` (`v` may be left out: version 1). A reply is the
//! typed reply of that command with `"v"` and `"ok":true` beside its fields, or
//! `{"v":1,"ok":false,"error":"..."}`. Fields are only ever added within a version, so a
//! reader built against version 1 keeps working; a change that removes or retypes a field
//! takes a new version, and an agent answers a version it does not speak with an error.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version this agent speaks.
pub const VERSION: u32 = 1;

fn version_1() -> u32 {
    1
}

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default = "version_1")]
    pub v: u32,
    #[serde(flatten)]
    pub action: Action,
}

impl Request {
    pub fn new(action: Action) -> Self {
        Self { v: VERSION, action }
    }
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Action {
    Status,
    Reload,
    Connections,
    /// Ends the session `id`, and every session of `user` (certificate or directory name).
    Terminate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// In a fleet: the gateway that runs session `id` (from `connections list`); none:
        /// this gateway. A user's sessions are ended on every gateway.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
    },
    /// The running policy.
    Policy,
    /// Whether `user` may open a flow to `to` (`10.0.0.5:443/tcp`), and the deciding rule.
    Explain {
        user: String,
        to: String,
    },
    /// The client certificates of the endpoint's built-in PKI (`[tls] pki_dir`) and its CRL.
    Certificates,
    /// Revokes the certificates of `name` (every one issued to it) or the one of `serial`
    /// (hex), republishes the CRL; the endpoint's CRL reload then ends their sessions.
    Revoke {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
    },
    /// The newest records of the connection log or the denied-flow log that match `query`
    /// (a bounded read of the file's tail).
    Logs {
        log: LogKind,
        #[serde(default)]
        query: LogQuery,
    },
    /// The `.ovpn` profile of this endpoint for `user` (the self-service portal's download,
    /// as `client-config export` makes it); with `certificate`, a personal client certificate
    /// is issued by the built-in PKI and embedded with its key, which the agent does not keep
    /// (`[console] self_service_issue_certificates`).
    Profile {
        user: String,
        #[serde(default)]
        certificate: bool,
    },
}

/// Which JSON-lines log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    /// `[logging] connection_log`.
    Connections,
    /// `[logging] flow_log`: denied flows (and allowed ones when configured).
    Flows,
}

/// A search of a log; empty fields match everything. Times are UTC, `YYYY-MM-DD[ HH:MM[:SS]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogQuery {
    /// Part of the user name (directory user or certificate name).
    pub user: String,
    pub since: String,
    pub until: String,
    /// Connections: the failure code (`invalid_credentials`, ...), exact.
    pub code: String,
    /// Flows: part of the destination (`10.0.0.5`, `10.0.0.5:443`).
    pub destination: String,
    /// Flows: part of the deciding rule, or the drop reason's name.
    pub rule: String,
    /// At most this many records, newest first (0: the default 200; at most 1000).
    pub limit: u32,
}

/// `logs`: the matching records as the log has them, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    pub records: Vec<serde_json::Value>,
    /// Lines of the tail read (the search does not look further back than this).
    pub scanned: u64,
    /// Whether the file is longer than the tail read.
    pub truncated: bool,
}

/// A reply line: `ok` and the version beside the fields of `body`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply<T> {
    pub v: u32,
    pub ok: bool,
    #[serde(flatten)]
    pub body: T,
}

/// The reply to a request that failed (bad request, refused reload, no such session).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

impl ErrorReply {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}

/// How long the phases of the last successful reload took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadTiming {
    /// File to compiled policy (the three phases below and the checks between them).
    pub load_ms: f64,
    /// Reading and parsing the file (only the changed rule sections: `config::incremental`).
    #[serde(default)]
    pub parse_ms: f64,
    /// Checking the file (files it names, listeners, overlaps).
    #[serde(default)]
    pub validate_ms: f64,
    /// The policy compiler.
    #[serde(default)]
    pub compile_ms: f64,
    /// The compiler recompiled only what changed (`policy::compile::incremental`).
    #[serde(default)]
    pub compile_incremental: bool,
    /// Rule sections in the file, and how many were parsed (the others were unchanged).
    #[serde(default)]
    pub rule_sections: u64,
    #[serde(default)]
    pub rule_sections_parsed: u64,
    /// Map writes.
    pub reconcile_ms: f64,
    /// Live sessions' group bitmaps.
    pub sessions_ms: f64,
    pub total_ms: f64,
}

/// Fill of one data-path map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub entries: u64,
    pub capacity: u64,
}

/// `status`: the endpoint's policy generation, reloads, sessions, drops and map fill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub endpoint: String,
    pub generation: u32,
    pub reloads: u64,
    pub last_reload_error: Option<String>,
    pub last_reload_timing: Option<ReloadTiming>,
    /// Settings changed in the file that wait for a restart of the agent.
    pub pending_restart: Vec<String>,
    pub sessions: u64,
    pub established: u64,
    /// Conntrack entries.
    pub flows: u64,
    /// Drop reason name → packets.
    pub drops: BTreeMap<String, u64>,
    /// Map name → fill.
    pub maps: BTreeMap<String, MapFill>,
    /// In a fleet: the published policy revision this gateway runs.
    #[serde(default)]
    pub fleet: Option<FleetStatus>,
}

/// A fleet gateway's view of the one policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The etcd revision of the published policy applied here; `None` while the gateway
    /// runs its local file's policy (nothing published yet, or etcd not reached since start).
    pub revision: Option<i64>,
    /// Why the gateway cannot follow the fleet policy now (etcd unreachable); `None` when it
    /// follows.
    pub degraded: Option<String>,
    #[serde(default)]
    pub member: FleetMember,
}

/// A fleet gateway's membership: its lease, its address blocks and the gateways alive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetMember {
    /// Whether the gateway's etcd lease is valid now (no new session is admitted otherwise).
    pub lease_valid: bool,
    /// The blocks of the client CIDR this gateway holds.
    pub blocks: Vec<String>,
    /// The gateways with a presence key (alive within their lease TTL), as last read.
    pub gateways: Vec<String>,
    /// The same gateways with what their presence says (version, policy revision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<FleetPeer>,
    /// Why the gateway is out of the fleet now (etcd out of reach, its lease lost): new
    /// sessions are refused once `lease_valid` is false, established ones keep running.
    #[serde(default)]
    pub error: Option<String>,
    /// The gateways whose session-token secret (`auth.token_secret_file`) differs from this
    /// one's: a token pushed by one is refused by the other (the client logs in again).
    #[serde(default)]
    pub token_secret_mismatch: Vec<String>,
}

/// One gateway of the fleet as its presence key says (written by that gateway).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPeer {
    pub gateway: String,
    /// Its Portcullis version ("?" when its presence could not be read).
    pub version: String,
    /// The published policy revision it runs (`None`: its local file's policy), as of its
    /// last keep-alive.
    #[serde(default)]
    pub revision: Option<i64>,
    /// Unix seconds since its current lease (0: unknown).
    #[serde(default)]
    pub since: u64,
}

/// `reload`: the new policy generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub generation: u32,
    pub timing: Option<ReloadTiming>,
    pub pending_restart: Vec<String>,
}

/// One connection, as `connections list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub id: u32,
    /// The certificate's common name.
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
    /// In a fleet: the gateway that runs the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// `connections`: every session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsReply {
    pub connections: Vec<ConnectionInfo>,
    /// In a fleet: why only this gateway's sessions are listed (etcd out of reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_error: Option<String>,
}

/// `terminate`: the sessions told to disconnect (never empty: no match is an error reply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateReply {
    pub terminated: Vec<u32>,
    /// In a fleet: sessions of other gateways asked to end (`gateway/id`); each ends within
    /// a second on its gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<String>,
}

/// `policy`: the policy as the running generation was compiled from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReply {
    pub generation: u32,
    pub policy: crate::policy::model::PolicyInput,
}

/// `explain`: the running policy's decision for a new flow, step by step (as `policy
/// explain` prints it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainReply {
    pub user: String,
    pub groups: Vec<String>,
    pub destination: String,
    /// The verdict in words (`ALLOWED: out through ...`, `DROPPED: ...`).
    pub verdict: String,
    /// The drop reason's name when dropped.
    pub reason: Option<String>,
    /// Each check and the rule that decided it.
    pub steps: Vec<String>,
}

/// One certificate the built-in PKI issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// The common name (the VPN user name for a client certificate).
    pub name: String,
    /// Hex, as `openssl x509 -serial` prints it (lower case).
    pub serial: String,
    /// "client" or "server".
    pub kind: String,
    /// Unix seconds; `None` when the PKI no longer has the certificate to read it from.
    pub not_after: Option<u64>,
    pub revoked: bool,
}

/// The published CRL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlInfo {
    pub number: u64,
    /// Unix seconds.
    pub this_update: u64,
    /// Unix seconds: after it, the endpoint refuses every client (`crl_expired = "refuse"`)
    /// until a fresh CRL is published.
    pub next_update: Option<u64>,
    pub revoked: u64,
}

/// `certificates`: what the built-in PKI issued, newest serial of a name last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesReply {
    pub certificates: Vec<CertificateInfo>,
    pub crl: Option<CrlInfo>,
}

/// `profile`: the profile text and the name to save it under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileReply {
    /// `<endpoint>-<user>.ovpn`, with only file-name-safe characters.
    pub file_name: String,
    pub profile: String,
    /// The serial (hex) of the certificate issued into it, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// `revoke`: the serials newly revoked (never empty: nothing to revoke is an error reply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeReply {
    pub revoked: Vec<String>,
    pub crl_number: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_without_a_version_are_version_1() {
        let r: Request = serde_json::from_str(r#"{"cmd":"connections"}"#).unwrap();
        assert_eq!(r, Request::new(Action::Connections));
        let r: Request = serde_json::from_str(r#"{"cmd":"terminate","user":"bob"}"#).unwrap();
        assert_eq!(
            r.action,
            Action::Terminate {
                id: None,
                user: Some("bob".into()),
                gateway: None,
            }
        );
    }

    #[test]
    fn request_round_trip() {
        for c in [
            Action::Status,
            Action::Reload,
            Action::Connections,
            Action::Terminate {
                id: Some(3),
                user: None,
                gateway: Some("gw-b".into()),
            },
            Action::Certificates,
            Action::Revoke {
                name: Some("alice".into()),
                serial: None,
            },
            Action::Profile {
                user: "alice".into(),
                certificate: true,
            },
        ] {
            let line = serde_json::to_string(&Request::new(c.clone())).unwrap();
            assert!(line.contains(r#""v":1"#), "{line}");
            let back: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(back.action, c);
        }
    }

    #[test]
    fn audit_outcome_names_the_remote_sessions_asked_to_end() {
        use crate::admin::dispatch::outcome;
        let r =
            |t: TerminateReply| outcome(&crate::admin::dispatch::reply::<TerminateReply>(Ok(t)));
        let asked = r(TerminateReply {
            terminated: vec![],
            remote: vec!["gw-b/3".into()],
        });
        assert_eq!(asked, "ok: asked gw-b/3 to end");
        let both = r(TerminateReply {
            terminated: vec![4],
            remote: vec!["gw-b/3".into()],
        });
        assert_eq!(both, "ok: terminated 4; asked gw-b/3 to end");
        let local = r(TerminateReply {
            terminated: vec![4, 5],
            remote: vec![],
        });
        assert_eq!(local, "ok: terminated 4, 5");
    }

    #[test]
    fn replies_are_flat() {
        let line = serde_json::to_string(&Reply {
            v: VERSION,
            ok: true,
            body: TerminateReply {
                terminated: vec![4, 5],
                remote: vec![],
            },
        })
        .unwrap();
        assert_eq!(line, r#"{"v":1,"ok":true,"terminated":[4,5]}"#);
        let line = serde_json::to_string(&Reply {
            v: VERSION,
            ok: false,
            body: ErrorReply::new("no such session"),
        })
        .unwrap();
        assert_eq!(line, r#"{"v":1,"ok":false,"error":"no such session"}"#);
    }
}
