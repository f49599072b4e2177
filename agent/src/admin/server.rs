//! The admin socket: a Unix socket (root only), one task per connection reading request
//! lines; each request is answered by the endpoint's loop through [`AdminApi`], so a client
//! that connects and says nothing holds up neither the loop nor other clients.
use std::path::{Path, PathBuf};

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::audit::{AuditEntry, AuditLog};
use super::protocol::{
    Action, CertificatesReply, ConnectionsReply, ErrorReply, ExplainReply, LogKind, LogQuery,
    LogsReply, PolicyReply, ReloadReply, Reply, Request, RevokeReply, StatusReply, TerminateReply,
    VERSION,
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
}

/// The answer of an endpoint without `[tls] pki_dir` to the certificate commands.
pub const NO_PKI: &str = "this endpoint has no built-in PKI: set [tls] pki_dir to the `portcullis pki` directory that issues its client certificates";

fn line<T: Serialize>(ok: bool, body: T) -> String {
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

fn reply<T: Serialize>(r: Result<T, ErrorReply>) -> String {
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
                    "bad request: {e} (expected one JSON object per line, such as {{\"v\":{VERSION},\"cmd\":\"status\"}}; commands: status, reload, connections, terminate, policy, explain, certificates, revoke, logs)"
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
    }
}

/// Who sent a request: written to the audit trail with every state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// A console account, or the admin socket peer's user (`root (uid 0)`).
    pub who: String,
    /// `console 192.0.2.1`, or `admin socket, pid 42`.
    pub from: String,
}

impl Caller {
    /// The peer of an admin socket connection, from `SO_PEERCRED`.
    fn of_socket(stream: &tokio::net::UnixStream) -> Self {
        match stream.peer_cred() {
            Ok(c) => {
                let uid = c.uid();
                let name = nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name);
                Caller {
                    who: match name {
                        Some(n) => format!("{n} (uid {uid})"),
                        None => format!("uid {uid}"),
                    },
                    from: match c.pid() {
                        Some(p) => format!("admin socket, pid {p}"),
                        None => "admin socket".into(),
                    },
                }
            }
            Err(_) => Caller {
                who: "unknown".into(),
                from: "admin socket".into(),
            },
        }
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
            (_, serde_json::Value::Array(t)) => format!(
                "ok: terminated {}",
                t.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => match &v["revoked"] {
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

/// One request waiting for its answer.
pub struct Call {
    request: String,
    reply: oneshot::Sender<String>,
    caller: Caller,
    audit: Option<Arc<AuditLog>>,
}

impl Call {
    /// Answers through `api` (on the caller's task: the endpoint's loop), and records a
    /// state change in the audit trail.
    pub fn answer(self, api: &mut dyn AdminApi) {
        let out = answer(api, &self.request);
        self.send(out);
    }

    /// What the request asks, if it is a request this agent speaks (for a loop that answers
    /// some commands later, such as a fleet gateway that asks etcd first).
    pub fn action(&self) -> Option<Action> {
        serde_json::from_str::<Request>(&self.request)
            .ok()
            .filter(|r| r.v == VERSION)
            .map(|r| r.action)
    }

    /// Answers with a result computed elsewhere: the same reply line and audit record as
    /// [`Call::answer`].
    pub fn finish<T: Serialize>(self, r: Result<T, ErrorReply>) {
        self.send(reply(r));
    }

    fn send(self, out: String) {
        if let Some(log) = &self.audit {
            let action = serde_json::from_str::<Request>(&self.request).ok();
            if let Some((what, target)) = action.as_ref().and_then(|r| audited(&r.action)) {
                log.record(&AuditEntry::now(
                    &self.caller.who,
                    &self.caller.from,
                    what,
                    &target,
                    outcome(&out),
                ));
            }
        }
        let _ = self.reply.send(out);
    }
}

/// Asks the endpoint's loop in-process, through the same dispatch and audit as the socket:
/// the console's way in.
#[derive(Clone)]
pub struct AdminHandle {
    calls: mpsc::Sender<Call>,
}

impl AdminHandle {
    /// The typed reply to `action`, or the agent's error.
    pub async fn ask<T: DeserializeOwned>(
        &self,
        action: Action,
        caller: Caller,
    ) -> Result<T, String> {
        let request = serde_json::to_string(&Request::new(action)).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        let call = Call {
            request,
            reply: tx,
            caller,
            audit: None,
        };
        self.calls
            .send(call)
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        let line = rx
            .await
            .map_err(|_| "the agent dropped the request".to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("bad reply: {e}"))?;
        if v["ok"] != true {
            return Err(v["error"].as_str().unwrap_or("unknown error").to_owned());
        }
        serde_json::from_value(v).map_err(|e| format!("bad reply: {e}"))
    }
}

/// The listening admin socket; removed on drop.
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
    calls_tx: mpsc::Sender<Call>,
    calls_rx: mpsc::Receiver<Call>,
    audit: Option<Arc<AuditLog>>,
}

impl AdminServer {
    /// Binds `path` (creating its directory 0700 if missing, replacing a stale socket), mode
    /// 0600: the socket can terminate sessions and reload the policy.
    ///
    /// `bind(2)` creates the socket with the umask's mode, so a socket bound at `path` and
    /// chmodded after would be open to other local users in between. It is bound instead in
    /// a fresh 0700 directory next to `path`, made 0600 there and renamed into place: at
    /// `path` it only ever exists private, whatever the umask.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let listener = super::socket::bind_private(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding the admin socket {}: {e}", path.display()),
            )
        })?;
        let (calls_tx, calls_rx) = mpsc::channel(16);
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            calls_tx,
            calls_rx,
            audit: None,
        })
    }

    /// Records every state change (from the socket and from handles) in `log`.
    pub fn set_audit(&mut self, log: Arc<AuditLog>) {
        self.audit = Some(log);
    }

    /// An in-process way to ask this server's loop.
    pub fn handle(&self) -> AdminHandle {
        AdminHandle {
            calls: self.calls_tx.clone(),
        }
    }

    /// The next request of any client, accepting connections meanwhile. Cancel-safe (for
    /// `select!`): accepting and receiving both are.
    pub async fn next(&mut self) -> Call {
        loop {
            tokio::select! {
                conn = self.listener.accept() => {
                    if let Ok((stream, _)) = conn {
                        tokio::spawn(connection(stream, self.calls_tx.clone()));
                    }
                }
                Some(mut call) = self.calls_rx.recv() => {
                    call.audit = self.audit.clone();
                    return call;
                }
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Longest request line accepted, newline included. Real requests are a few hundred bytes;
/// a client that sends more is answered and disconnected, so no peer grows the agent's memory.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The request in one line as read from the socket (`raw`, its newline still on unless the
/// peer closed first or it was cut at [`MAX_REQUEST`]), or the error to answer.
pub(crate) fn request_line(raw: &[u8]) -> Result<&str, ErrorReply> {
    let Some(line) = raw
        .strip_suffix(b"\n")
        .or((raw.len() < MAX_REQUEST).then_some(raw))
    else {
        return Err(ErrorReply::new(format!(
            "bad request: longer than {MAX_REQUEST} bytes (one JSON object per line); closing"
        )));
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    std::str::from_utf8(line).map_err(|e| {
        ErrorReply::new(format!(
            "bad request: not UTF-8 ({e}); requests are JSON lines such as {{\"v\":{VERSION},\"cmd\":\"status\"}}"
        ))
    })
}

/// One client: its request lines go to the loop, the replies back in order.
async fn connection(stream: tokio::net::UnixStream, calls: mpsc::Sender<Call>) {
    let caller = Caller::of_socket(&stream);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let limit = MAX_REQUEST as u64;
        match (&mut rd).take(limit).read_until(b'\n', &mut raw).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut out = match request_line(&raw) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                let call = Call {
                    request: request.to_owned(),
                    reply: tx,
                    caller: caller.clone(),
                    audit: None,
                };
                if calls.send(call).await.is_err() {
                    break;
                }
                let Ok(out) = rx.await else { break };
                out
            }
            Err(e) => line(false, e),
        };
        out.push('\n');
        let cut = raw.len() >= MAX_REQUEST && !raw.ends_with(b"\n");
        if wr.write_all(out.as_bytes()).await.is_err() || cut {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::protocol::ConnectionInfo;

    /// Answers from fixed data and records what it was asked.
    #[derive(Default)]
    struct Fake {
        asked: Vec<String>,
    }

    impl AdminApi for Fake {
        fn status(&mut self) -> StatusReply {
            self.asked.push("status".into());
            StatusReply {
                endpoint: "e".into(),
                generation: 2,
                reloads: 1,
                last_reload_error: None,
                last_reload_timing: None,
                pending_restart: vec![],
                sessions: 0,
                established: 0,
                flows: 0,
                drops: Default::default(),
                maps: Default::default(),
                fleet: None,
            }
        }
        fn reload(&mut self) -> Result<ReloadReply, ErrorReply> {
            self.asked.push("reload".into());
            Err(ErrorReply::new("the file is invalid"))
        }
        fn connections(&mut self) -> ConnectionsReply {
            self.asked.push("connections".into());
            ConnectionsReply {
                connections: vec![ConnectionInfo {
                    id: 7,
                    user: Some("alice".into()),
                    client_address: None,
                    public_address: "192.0.2.1:1194".into(),
                    transport: "udp".into(),
                    established: true,
                    since_secs: 3,
                    ingress_bytes: 0,
                    egress_bytes: 0,
                    ingress_packets: 0,
                    egress_packets: 0,
                    username: None,
                    directory_groups: vec![],
                    gateway: None,
                }],
                fleet_error: None,
            }
        }
        fn terminate(
            &mut self,
            id: Option<u32>,
            user: Option<&str>,
            _gateway: Option<&str>,
        ) -> Result<TerminateReply, ErrorReply> {
            self.asked.push(format!("terminate {id:?} {user:?}"));
            match id {
                Some(7) => Ok(TerminateReply {
                    terminated: vec![7],
                    remote: vec![],
                }),
                _ => Err(ErrorReply::new("no such session")),
            }
        }
        fn policy(&mut self) -> PolicyReply {
            unreachable!("not asked in these tests")
        }
        fn explain(&mut self, _: &str, _: &str) -> Result<ExplainReply, ErrorReply> {
            unreachable!("not asked in these tests")
        }
    }

    fn ask(api: &mut Fake, req: &str) -> serde_json::Value {
        serde_json::from_str(&answer(api, req)).unwrap()
    }

    #[test]
    fn dispatches_each_command_to_its_method() {
        let mut f = Fake::default();
        let v = ask(&mut f, r#"{"cmd":"status"}"#);
        assert_eq!(
            (v["ok"].clone(), v["generation"].clone()),
            (true.into(), 2.into())
        );
        let v = ask(&mut f, r#"{"v":1,"cmd":"connections"}"#);
        assert_eq!(v["connections"][0]["user"], "alice");
        let v = ask(&mut f, r#"{"cmd":"reload"}"#);
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "the file is invalid");
        let v = ask(&mut f, r#"{"cmd":"terminate","id":7}"#);
        assert_eq!(v["terminated"], serde_json::json!([7]));
        let v = ask(&mut f, r#"{"cmd":"terminate","user":"bob"}"#);
        assert_eq!(v["error"], "no such session");
        assert_eq!(
            f.asked,
            [
                "status",
                "connections",
                "reload",
                "terminate Some(7) None",
                "terminate None Some(\"bob\")"
            ]
        );
    }

    #[test]
    fn malformed_requests_get_an_error_naming_the_problem() {
        let mut f = Fake::default();
        for (req, says) in [
            (r#"{"cmd":"bogus"}"#, "bogus"),
            ("not json", "expected"),
            (r#"{"v":1}"#, "cmd"),
            (r#"{"v":2,"cmd":"status"}"#, "version 2"),
            (r#"{"cmd":"terminate","id":"x"}"#, "id"),
        ] {
            let v = ask(&mut f, req);
            assert_eq!(v["ok"], false, "{req}: {v}");
            let e = v["error"].as_str().unwrap();
            assert!(
                e.starts_with("bad request") && e.contains(says),
                "{req}: {e}"
            );
        }
        assert!(f.asked.is_empty(), "{:?}", f.asked);
    }

    #[test]
    fn request_lines_are_bounded_and_utf8() {
        assert_eq!(
            request_line(b"{\"cmd\":\"status\"}\r\n").unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            request_line(b"{}").unwrap(),
            "{}",
            "the last line, without a newline"
        );
        let e = request_line(b"{\"cmd\":\"st\xffatus\"}\n").unwrap_err();
        assert!(e.error.contains("not UTF-8"), "{}", e.error);
        let mut long = vec![b' '; MAX_REQUEST - 1];
        long.push(b'\n');
        assert!(
            request_line(&long).is_ok(),
            "a line of exactly the limit is read"
        );
        long.pop();
        long.push(b' ');
        let e = request_line(&long).unwrap_err();
        assert!(e.error.contains("longer than"), "{}", e.error);
    }

    /// A peer that sends an endless line gets an error and is disconnected; the agent never
    /// holds more than the limit of it.
    #[tokio::test]
    async fn an_endless_request_line_is_refused_and_the_peer_dropped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = std::env::temp_dir().join(format!("pct-admin-{}", std::process::id()));
        let path = dir.join("admin.sock");
        let mut server = AdminServer::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut api = Fake::default();
            loop {
                server.next().await.answer(&mut api);
            }
        });
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        // The agent stops reading at the limit: later writes may fail once it closed.
        for _ in 0..8 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Read until the agent closes (a reset, since our excess bytes are unread, counts).
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            out.extend_from_slice(&buf[..n]);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent closes the connection"
        );
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains("\"ok\":true"), "{}", lines[0]);
        assert!(lines[1].contains("longer than"), "{}", lines[1]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
