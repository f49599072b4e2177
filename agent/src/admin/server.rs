//! The admin socket: a Unix socket (root only), one task per connection reading request
//! lines; each request is answered by the endpoint's loop through [`AdminApi`], so a client
//! that connects and says nothing holds up neither the loop nor other clients.
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::protocol::{
    Action, ConnectionsReply, ErrorReply, ReloadReply, Reply, Request, StatusReply, TerminateReply,
    VERSION,
};

/// What the agent answers on its admin socket: one method per command.
pub trait AdminApi {
    fn status(&mut self) -> StatusReply;
    fn reload(&mut self) -> Result<ReloadReply, ErrorReply>;
    fn connections(&mut self) -> ConnectionsReply;
    /// Disconnects session `id` and every session of `user`; no such session is an error.
    fn terminate(
        &mut self,
        id: Option<u32>,
        user: Option<&str>,
    ) -> Result<TerminateReply, ErrorReply>;
}

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
                    "bad request: {e} (expected one JSON object per line, such as {{\"v\":{VERSION},\"cmd\":\"status\"}}; commands: status, reload, connections, terminate)"
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
        Action::Terminate { id, user } => reply(api.terminate(id, user.as_deref())),
    }
}

/// One request waiting for its answer.
pub struct Call {
    request: String,
    reply: oneshot::Sender<String>,
}

impl Call {
    /// Answers through `api` (on the caller's task: the endpoint's loop).
    pub fn answer(self, api: &mut dyn AdminApi) {
        let _ = self.reply.send(answer(api, &self.request));
    }
}

/// The listening admin socket; removed on drop.
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
    calls_tx: mpsc::Sender<Call>,
    calls_rx: mpsc::Receiver<Call>,
}

impl AdminServer {
    /// Binds `path` (creating its directory, replacing a stale socket), mode 0600: the socket
    /// can terminate sessions and reload the policy.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("creating {} for the admin socket: {e}", dir.display()),
                )
            })?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding the admin socket {}: {e}", path.display()),
            )
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let (calls_tx, calls_rx) = mpsc::channel(16);
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            calls_tx,
            calls_rx,
        })
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
                Some(call) = self.calls_rx.recv() => return call,
            }
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One client: its request lines go to the loop, the replies back in order.
async fn connection(stream: tokio::net::UnixStream, calls: mpsc::Sender<Call>) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(request)) = lines.next_line().await {
        let (tx, rx) = oneshot::channel();
        if calls.send(Call { request, reply: tx }).await.is_err() {
            break;
        }
        let Ok(mut out) = rx.await else { break };
        out.push('\n');
        if wr.write_all(out.as_bytes()).await.is_err() {
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
                }],
            }
        }
        fn terminate(
            &mut self,
            id: Option<u32>,
            user: Option<&str>,
        ) -> Result<TerminateReply, ErrorReply> {
            self.asked.push(format!("terminate {id:?} {user:?}"));
            match id {
                Some(7) => Ok(TerminateReply {
                    terminated: vec![7],
                }),
                _ => Err(ErrorReply::new("no such session")),
            }
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
}
