//! The admin commands that span the fleet, answered by any gateway: `connections list` (this
//! gateway's sessions as it sees them now, the others' from the registry) and `connections
//! terminate` (local sessions at once, the others' through a terminate request to their
//! gateway).
use super::member::Shared;
use super::registry::{self, unix_now};
use std::time::Duration;

use super::{terminate, Keys};
use crate::admin::{ConnectionInfo, ConnectionsReply, ErrorReply, TerminateReply};

/// How long an operator's command waits for a member that is reconnecting (after one etcd
/// member died it is back within about a second; with all of etcd gone the command answers
/// after this with what this gateway knows).
const WAIT_MEMBER: Duration = Duration::from_secs(3);

/// The fleet's sessions; with etcd out of reach, this gateway's and why.
pub async fn connections(
    shared: &Shared,
    keys: &Keys,
    own: &str,
    mut local: Vec<ConnectionInfo>,
) -> ConnectionsReply {
    for c in &mut local {
        c.gateway = Some(own.to_owned());
    }
    let others = shared
        .request(WAIT_MEMBER, |mut c| async move {
            registry::list(&mut c, keys).await
        })
        .await;
    match others {
        Ok(records) => {
            let now = unix_now();
            local.extend(
                records
                    .iter()
                    .filter(|r| r.gateway != own)
                    .map(|r| r.to_info(now)),
            );
            ConnectionsReply {
                connections: local,
                fleet_error: None,
            }
        }
        Err(e) => ConnectionsReply {
            connections: local,
            fleet_error: Some(format!("only this gateway's sessions: {e}")),
        },
    }
}

/// What to end elsewhere: session `id` of `gateway` (another gateway's), and every session of
/// `user` on the other gateways.
pub struct RemoteTarget<'a> {
    pub id: Option<u32>,
    pub gateway: Option<&'a str>,
    pub user: Option<&'a str>,
}

/// Sends terminate requests for `target` and adds them to `local` (what this gateway ended
/// itself); no session anywhere is an error.
pub async fn terminate(
    shared: &Shared,
    keys: &Keys,
    own: &str,
    local: Result<TerminateReply, ErrorReply>,
    target: RemoteTarget<'_>,
) -> Result<TerminateReply, ErrorReply> {
    let mut reply = local.unwrap_or(TerminateReply {
        terminated: Vec::new(),
        remote: Vec::new(),
    });
    let wants_remote = target.user.is_some() || target.gateway.is_some_and(|g| g != own);
    if wants_remote {
        if let Err(e) = request_remote(shared, keys, own, &target, &mut reply.remote).await {
            // What this gateway ended stays ended; the caller learns the rest failed.
            if reply.terminated.is_empty() && reply.remote.is_empty() {
                return Err(ErrorReply::new(e));
            }
            tracing::warn!("fleet terminate: only partly sent: {e}");
        }
    }
    if reply.terminated.is_empty() && reply.remote.is_empty() {
        return Err(ErrorReply::new("no such session"));
    }
    Ok(reply)
}

async fn request_remote(
    shared: &Shared,
    keys: &Keys,
    own: &str,
    target: &RemoteTarget<'_>,
    sent: &mut Vec<String>,
) -> Result<(), String> {
    // The whole read-and-request is repeated after a transport error (a request is a put:
    // sending it twice is harmless); what was sent is reported once.
    let done = shared
        .request(WAIT_MEMBER, |mut c| async move {
            let records = registry::list(&mut c, keys).await?;
            let mut done = Vec::new();
            for r in records.iter().filter(|r| r.gateway != own) {
                let by_id = target.gateway == Some(r.gateway.as_str()) && target.id == Some(r.id);
                let by_user = target.user.is_some_and(|u| r.is_user(u));
                if by_id || by_user {
                    terminate::request(&mut c, keys, &r.gateway, r.id, own).await?;
                    done.push(format!("{}/{}", r.gateway, r.id));
                }
            }
            Ok(done)
        })
        .await?;
    sent.extend(done);
    Ok(())
}
