//! The `admin_request` target: one line as the admin socket reads it, through the framing,
//! the parser, the dispatch and the audit trail's summary.
//!
//! What must hold: nothing panics; the answer is one line of JSON with `v` and `ok`; a line
//! that is not a version-1 request calls no method and is answered `ok: false` with an error
//! that starts `bad request`; a request calls exactly the method it names, with its
//! arguments; only state changes (reload, terminate, revoke) and profile downloads are audited, and an audit line stays
//! one line whatever the request carried.

use crate::admin::audit::AuditEntry;
use crate::admin::dispatch::{answer, audited, outcome};
use crate::admin::protocol::{
    Action, CertificatesReply, ConnectionsReply, ErrorReply, ExplainReply, LogKind, LogQuery,
    LogsReply, PolicyReply, ProfileReply, ReloadReply, Request, RevokeReply, StatusReply,
    TerminateReply, VERSION,
};
use crate::admin::server::request_line;
use crate::admin::{AdminApi, ConnectionInfo};

/// Answers from fixed data (echoing the request's arguments, so replies carry fuzzed text)
/// and records each call as the action it served.
#[derive(Default)]
struct Recorder {
    calls: Vec<Action>,
}

impl AdminApi for Recorder {
    fn status(&mut self) -> StatusReply {
        self.calls.push(Action::Status);
        StatusReply {
            endpoint: "fuzz".into(),
            generation: 1,
            reloads: 0,
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
        self.calls.push(Action::Reload);
        Ok(ReloadReply {
            generation: 2,
            timing: None,
            pending_restart: vec![],
        })
    }

    fn connections(&mut self) -> ConnectionsReply {
        self.calls.push(Action::Connections);
        ConnectionsReply {
            connections: vec![ConnectionInfo {
                id: 7,
                user: Some("alice\n\"x".into()),
                client_address: None,
                public_address: "192.0.2.1:1194".into(),
                transport: "udp".into(),
                established: true,
                since_secs: 1,
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
        gateway: Option<&str>,
    ) -> Result<TerminateReply, ErrorReply> {
        self.calls.push(Action::Terminate {
            id,
            user: user.map(str::to_owned),
            gateway: gateway.map(str::to_owned),
        });
        match (id, user) {
            (Some(i), _) if i % 2 == 0 => Ok(TerminateReply {
                terminated: vec![i],
                remote: vec![],
            }),
            (_, Some(u)) => Err(ErrorReply::new(format!("no session of {u}"))),
            _ => Err(ErrorReply::new("no such session")),
        }
    }

    fn policy(&mut self) -> PolicyReply {
        self.calls.push(Action::Policy);
        let policy =
            crate::toml_from_str("client_cidr = \"10.8.0.0/24\"\ngateway_addr = \"10.8.0.1\"")
                .expect("a minimal policy parses");
        PolicyReply {
            generation: 1,
            policy,
        }
    }

    fn explain(&mut self, user: &str, to: &str) -> Result<ExplainReply, ErrorReply> {
        self.calls.push(Action::Explain {
            user: user.to_owned(),
            to: to.to_owned(),
        });
        Err(ErrorReply::new(format!("cannot read {to:?} for {user:?}")))
    }

    fn certificates(&mut self) -> Result<CertificatesReply, ErrorReply> {
        self.calls.push(Action::Certificates);
        Ok(CertificatesReply {
            certificates: vec![],
            crl: None,
        })
    }

    fn revoke(
        &mut self,
        name: Option<&str>,
        serial: Option<&str>,
    ) -> Result<RevokeReply, ErrorReply> {
        self.calls.push(Action::Revoke {
            name: name.map(str::to_owned),
            serial: serial.map(str::to_owned),
        });
        match (name, serial) {
            (Some(n), None) => Ok(RevokeReply {
                revoked: vec![n.to_owned()],
                crl_number: 2,
            }),
            _ => Err(ErrorReply::new("name or serial")),
        }
    }

    fn logs(&mut self, log: LogKind, query: &LogQuery) -> Result<LogsReply, ErrorReply> {
        self.calls.push(Action::Logs {
            log,
            query: query.clone(),
        });
        Ok(LogsReply {
            records: vec![serde_json::json!({ "username": query.user })],
            scanned: 1,
            truncated: false,
        })
    }

    fn profile(&mut self, user: &str, certificate: bool) -> Result<ProfileReply, ErrorReply> {
        self.calls.push(Action::Profile {
            user: user.to_owned(),
            certificate,
        });
        Ok(ProfileReply {
            file_name: format!("e-{user}.ovpn"),
            profile: format!("# {user}\n"),
            serial: certificate.then(|| "01".into()),
        })
    }
}

pub fn admin_request(data: &[u8]) {
    let request = match request_line(data) {
        Ok(r) => r,
        Err(e) => {
            assert!(e.error.starts_with("bad request"), "{}", e.error);
            return;
        }
    };
    let mut api = Recorder::default();
    let reply = answer(&mut api, request);
    assert!(!reply.contains('\n'), "a reply is one line: {reply:?}");
    let v: serde_json::Value = serde_json::from_str(&reply).expect("the reply is JSON");
    assert_eq!(v["v"], VERSION, "{reply}");
    let parsed = serde_json::from_str::<Request>(request)
        .ok()
        .filter(|r| r.v == VERSION);
    match parsed {
        None => {
            assert!(api.calls.is_empty(), "{request:?} called {:?}", api.calls);
            assert_eq!(v["ok"], false, "{reply}");
            let e = v["error"].as_str().expect("an error text");
            assert!(e.starts_with("bad request"), "{e}");
        }
        Some(req) => {
            assert_eq!(api.calls, std::slice::from_ref(&req.action), "{request:?}");
            // What the CLI and the console send back reads as the same request.
            let again = serde_json::to_string(&req).expect("a request serializes");
            assert_eq!(
                serde_json::from_str::<Request>(&again).ok(),
                Some(req.clone())
            );
            let audit = audited(&req.action);
            let changes = matches!(
                req.action,
                Action::Reload
                    | Action::Terminate { .. }
                    | Action::Revoke { .. }
                    | Action::Profile { .. }
            );
            assert_eq!(audit.is_some(), changes, "{:?}", req.action);
            if let Some((what, target)) = audit {
                let entry = AuditEntry::now("fuzz", "admin socket", what, &target, outcome(&reply));
                let json = serde_json::to_string(&entry).expect("an entry serializes");
                assert!(!json.contains('\n'), "an audit entry is one line");
            }
        }
    }
}
