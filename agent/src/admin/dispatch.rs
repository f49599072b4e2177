//! The admin API's dispatch: one request line to one [`AdminApi`] method and one reply line,
//! and what of it goes into the audit trail. The socket and the console both answer through
//! here, so a request means the same whichever way it came.
use serde::Serialize;

use super::protocol::{
    Action, CertificatesReply, ConnectionsReply, ErrorReply, ExplainReply, LogKind, LogQuery,
    LogsReply, PolicyReply, ProfileReply, ReloadReply, Reply, Request, RevokeReply, StatusReply,
    TerminateReply, VERSION,
};

/// What the agent answers on its admin socket: one method per command.
pub trait AdminApi {
    fn status(&mut self) -> StatusReply;
    fn reload(&mut self) -> Result<ReloadReply, ErrorReply>;
    fn connections(&mut self) -> ConnectionsReply;
    /// Disconnects session `id` and every session of `user`; no such session is an error.
    /// `gateway` names the gateway of session `id` in a fleet (a standalone agent refuses
    /// one: it has no other gateway).
    fn terminate(
        &mut self,
        id: Option<u32>,
        user: Option<&str>,
        gateway: Option<&str>,
    ) -> Result<TerminateReply, ErrorReply>;
    fn policy(&mut self) -> PolicyReply;
    fn explain(&mut self, user: &str, to: &str) -> Result<ExplainReply, ErrorReply>;
    /// The built-in PKI's certificates (`crate::pki::store`); an endpoint without one says so.
    fn certificates(&mut self) -> Result<CertificatesReply, ErrorReply> {
        Err(ErrorReply::new(NO_PKI))
    }
    fn revoke(
        &mut self,
        _name: Option<&str>,
        _serial: Option<&str>,
    ) -> Result<RevokeReply, ErrorReply> {
        Err(ErrorReply::new(NO_PKI))
    }
    /// A search of a JSON-lines log (`crate::logsearch`).
    fn logs(&mut self, _log: LogKind, _query: &LogQuery) -> Result<LogsReply, ErrorReply> {
        Err(ErrorReply::new("this agent keeps no logs to search"))
    }
    /// A user's profile (`crate::profile::api`), with a certificate issued into it if asked.
    fn profile(&mut self, _user: &str, _certificate: bool) -> Result<ProfileReply, ErrorReply> {
        Err(ErrorReply::new("this agent makes no profiles"))
    }
}

/// The answer of an endpoint without `[tls] pki_dir` to the certificate commands.
pub const NO_PKI: &str = "this endpoint has no built-in PKI: set [tls] pki_dir to the `portcullis pki` directory that issues its client certificates";

pub(crate) fn line<T: Serialize>(ok: bool, body: T) -> String {
    let reply = Reply {
        v: VERSION,
        ok,
        body,
    };
    // Only maps with string keys and plain fields: serializing cannot fail.
    serde_json::to_string(&reply).unwrap_or_else(|e| {
        format!(r#"{{"v":{VERSION},"ok":false,"error":"encoding the reply: {e}"}}"#)
    })
}

pub(crate) fn reply<T: Serialize>(r: Result<T, ErrorReply>) -> String {
    match r {
        Ok(body) => line(true, body),
        Err(e) => line(false, e),
    }
}

/// Answers one request line (without its newline) with one reply line.
pub fn answer(api: &mut dyn AdminApi, request: &str) -> String {
    let req: Request = match serde_json::from_str(request) {
        Ok(r) => r,
        Err(e) => {
            return line(
                false,
                ErrorReply::new(format!(
                    "bad request: {e} (expected one JSON object per line, such as {{\"v\":{VERSION},\"cmd\":\"status\"}}; commands: status, reload, connections, terminate, policy, explain, certificates, revoke, logs, profile)"
                )),
            )
        }
    };
    if req.v != VERSION {
        return line(
            false,
            ErrorReply::new(format!(
                "bad request: protocol version {} is not spoken here (this agent speaks version {VERSION})",
                req.v
            )),
        );
    }
    match req.action {
        Action::Status => line(true, api.status()),
        Action::Reload => reply(api.reload()),
        Action::Connections => line(true, api.connections()),
        Action::Terminate { id, user, gateway } => {
            reply(api.terminate(id, user.as_deref(), gateway.as_deref()))
        }
        Action::Policy => line(true, api.policy()),
        Action::Explain { user, to } => reply(api.explain(&user, &to)),
        Action::Certificates => reply(api.certificates()),
        Action::Revoke { name, serial } => reply(api.revoke(name.as_deref(), serial.as_deref())),
        Action::Logs { log, query } => reply(api.logs(log, &query)),
        Action::Profile { user, certificate } => reply(api.profile(&user, certificate)),
    }
}

/// The audit trail's name and target of a state-changing action; `None` for reads.
pub(crate) fn audited(action: &Action) -> Option<(&'static str, String)> {
    match action {
        Action::Reload => Some(("reload", String::new())),
        Action::Terminate { id, user, gateway } => Some((
            "terminate",
            match (id, user) {
                (Some(i), Some(u)) => format!("session {i}, user {u}"),
                (Some(i), None) => format!("session {i}"),
                (None, Some(u)) => format!("user {u}"),
                (None, None) => String::new(),
            } + &gateway
                .as_ref()
                .map(|g| format!(" on gateway {g}"))
                .unwrap_or_default(),
        )),
        Action::Revoke { name, serial } => Some((
            "revoke",
            match (name, serial) {
                (Some(n), Some(s)) => format!("certificate {n}, serial {s}"),
                (Some(n), None) => format!("certificate {n}"),
                (None, Some(s)) => format!("serial {s}"),
                (None, None) => String::new(),
            },
        )),
        // A download is recorded too: it hands out the endpoint's tls-crypt key.
        Action::Profile {
            user,
            certificate: false,
        } => Some(("profile_download", format!("user {user}"))),
        Action::Profile {
            user,
            certificate: true,
        } => Some(("certificate_issue", format!("user {user}"))),
        Action::Status
        | Action::Connections
        | Action::Policy
        | Action::Explain { .. }
        | Action::Certificates
        | Action::Logs { .. } => None,
    }
}

/// `ok` (with the reload's new generation or the terminated sessions) or the error.
pub(crate) fn outcome(reply: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(reply).unwrap_or_default();
    if v["ok"] == true {
        match (&v["generation"], &v["terminated"]) {
            (serde_json::Value::Number(g), _) => format!("ok: generation {g}"),
            (_, serde_json::Value::Array(t)) => {
                let list = |a: &[serde_json::Value]| {
                    a.iter()
                        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                // In a fleet, sessions of other gateways are asked to end (`gateway/id`).
                match v["remote"].as_array().filter(|r| !r.is_empty()) {
                    Some(r) if t.is_empty() => format!("ok: asked {} to end", list(r)),
                    Some(r) => format!("ok: terminated {}; asked {} to end", list(t), list(r)),
                    None => format!("ok: terminated {}", list(t)),
                }
            }
            _ => match &v["revoked"] {
                _ if v["serial"].is_string() => {
                    format!("ok: serial {}", v["serial"].as_str().unwrap_or_default())
                }
                serde_json::Value::Array(r) => format!(
                    "ok: revoked {}",
                    r.iter()
                        .map(|x| x.as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => "ok".into(),
            },
        }
    } else {
        format!("error: {}", v["error"].as_str().unwrap_or("unknown"))
    }
}
