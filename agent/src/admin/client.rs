//! The typed client of the admin socket (the CLI's; a console or fleet agent would use the
//! same calls).
use std::io::{BufRead, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::protocol::{
    Action, CertificatesReply, ConnectionsReply, ErrorReply, LogKind, LogQuery, LogsReply,
    ReloadReply, Request, RevokeReply, StatusReply, TerminateReply,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "connecting to {0} (is `portcullis run` running for this endpoint, and are you root?): {1}"
    )]
    Connect(PathBuf, std::io::Error),
    #[error("talking to the agent on {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("the agent's reply is not understood ({0}): {1}")]
    Reply(serde_json::Error, String),
    /// The agent answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// A connection to one agent's admin socket.
pub struct AdminClient {
    path: PathBuf,
    stream: std::io::BufReader<UnixStream>,
}

/// Whether a reply is a success, read before its body.
#[derive(Deserialize)]
struct Head {
    ok: bool,
}

impl AdminClient {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let s = UnixStream::connect(path).map_err(|e| ClientError::Connect(path.into(), e))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| ClientError::Io(path.into(), e))?;
        Ok(Self {
            path: path.into(),
            stream: std::io::BufReader::new(s),
        })
    }

    fn call<T: DeserializeOwned>(&mut self, action: Action) -> Result<T, ClientError> {
        let io = |e| ClientError::Io(self.path.clone(), e);
        let mut line = serde_json::to_string(&Request::new(action))
            .map_err(|e| ClientError::Reply(e, String::new()))?;
        line.push('\n');
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(io)?;
        let mut reply = String::new();
        self.stream
            .read_line(&mut reply)
            .map_err(|e| ClientError::Io(self.path.clone(), e))?;
        let bad = |e| ClientError::Reply(e, reply.trim_end().to_owned());
        let head: Head = serde_json::from_str(&reply).map_err(bad)?;
        if !head.ok {
            let e: ErrorReply = serde_json::from_str(&reply).map_err(bad)?;
            return Err(ClientError::Refused(e.error));
        }
        serde_json::from_str(&reply).map_err(bad)
    }

    pub fn status(&mut self) -> Result<StatusReply, ClientError> {
        self.call(Action::Status)
    }

    pub fn reload(&mut self) -> Result<ReloadReply, ClientError> {
        self.call(Action::Reload)
    }

    pub fn connections(&mut self) -> Result<ConnectionsReply, ClientError> {
        self.call(Action::Connections)
    }

    pub fn terminate(
        &mut self,
        id: Option<u32>,
        user: Option<String>,
        gateway: Option<String>,
    ) -> Result<TerminateReply, ClientError> {
        self.call(Action::Terminate { id, user, gateway })
    }

    pub fn certificates(&mut self) -> Result<CertificatesReply, ClientError> {
        self.call(Action::Certificates)
    }

    pub fn revoke(
        &mut self,
        name: Option<String>,
        serial: Option<String>,
    ) -> Result<RevokeReply, ClientError> {
        self.call(Action::Revoke { name, serial })
    }

    pub fn logs(&mut self, log: LogKind, query: LogQuery) -> Result<LogsReply, ClientError> {
        self.call(Action::Logs { log, query })
    }
}
