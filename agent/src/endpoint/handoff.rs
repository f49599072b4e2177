//! Kept sessions across a restart (`run --keep-maps`): the stopping agent leaves its
//! `clients` entries and flows in the pinned maps and writes who held which address; the next
//! agent parks those flows, gives each address back to the same user when they reconnect, and
//! removes what is left after a grace period.
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::datapath::{maps::Maps, Datapath};
use crate::io::Tunnel;

/// `clients` entries a previous agent left behind (`run --keep-maps`), by tunnel address, with
/// the user whose session held it (`None`: not known). An entry leaves this table when a
/// session gets its address, or when the agent gives up waiting and removes it.
pub type Adopted = Arc<Mutex<HashMap<Ipv4Addr, Option<KeptUser>>>>;

/// Who held a kept session: its certificate name and directory user (empty without one).
/// Both must match for a returning session to inherit the flows (users may share a
/// certificate).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptUser {
    pub common_name: String,
    #[serde(default)]
    pub username: String,
}

/// How long entries a previous agent left wait for their clients to reconnect.
pub const KEPT_GRACE: Duration = Duration::from_secs(60);

/// Where an agent stopping with `--keep-maps` writes who held which address, for the next
/// one: beside the admin socket (a runtime directory that outlives the process, like the pins).
pub fn kept_sessions_path(socket: &Path) -> PathBuf {
    socket.with_extension("kept-sessions.json")
}

/// The `clients` entries a previous agent left, with their users from its state file (removed
/// once this agent is up, so a start that fails early can be retried with it).
pub fn adopt_kept(maps: &mut Maps, state: &Path) -> Adopted {
    let users: HashMap<Ipv4Addr, KeptUser> = std::fs::read(state)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let addrs = maps.client_addrs().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "listing the clients a previous agent left");
        Vec::new()
    });
    if !addrs.is_empty() {
        tracing::info!(
            sessions = addrs.len(),
            grace_s = KEPT_GRACE.as_secs(),
            "re-adopting the sessions of a previous agent: their flows stay while the clients reconnect"
        );
    }
    // Their counters and quotas must not land on whichever new session gets their old slot.
    for a in &addrs {
        if let Err(e) = maps.reslot_client(*a, portcullis_common::ORPHAN_SLOT) {
            tracing::warn!(addr = %a, error = %e, "parking a previous agent's flows");
        }
    }
    Arc::new(Mutex::new(
        addrs
            .into_iter()
            .map(|a| (a, users.get(&a).cloned()))
            .collect(),
    ))
}

/// Writes who holds which address (the live sessions of `tunnel`), for the next agent.
pub fn write_kept(state: &Path, tunnel: &Tunnel, grants: &crate::auth::Grants) {
    let held: HashMap<Ipv4Addr, KeptUser> = tunnel
        .sessions()
        .into_iter()
        .filter_map(|s| {
            let kept = KeptUser {
                common_name: s.common_name?,
                username: grants
                    .get(s.peer_id)
                    .map(|g| g.username)
                    .unwrap_or_default(),
            };
            Some((s.tunnel_addr?, kept))
        })
        .collect();
    if let Err(e) = serde_json::to_vec(&held)
        .map_err(std::io::Error::other)
        .and_then(|b| write_private(state, &b))
    {
        tracing::warn!(path = %state.display(), error = %e, "writing the kept sessions");
    }
}

/// Writes `bytes` to `path` readable by the owner only: who held which address names users.
/// The file is created 0600 (never briefly wider, whatever the umask) under a temporary name
/// and renamed over `path`, so an older file with a looser mode is replaced, not reused.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// After the grace period, removes what a previous agent's sessions left and no session
/// took back (their clients did not reconnect), with their flows.
/// `kept` is the live state's `(deadline, entries)`; it is taken once the deadline has passed.
pub fn expire_kept(dp: &mut Datapath, tunnel: &Tunnel, kept: &mut Option<(Instant, Adopted)>) {
    let due = match kept {
        Some((at, _)) if Instant::now() >= *at => kept.take().map(|(_, a)| a),
        _ => None,
    };
    let Some(adopted) = due else { return };
    let held: Vec<Ipv4Addr> = tunnel
        .sessions()
        .into_iter()
        .filter_map(|s| s.tunnel_addr)
        .collect();
    // Held while removing: a session admitted meanwhile takes its entry out of `adopted`
    // under the same lock (and only then writes its own), so it is never removed here.
    let mut adopted = adopted.lock().unwrap_or_else(|e| e.into_inner());
    let left: Vec<Ipv4Addr> = adopted
        .drain()
        .map(|(a, _)| a)
        .filter(|a| !held.contains(a))
        .collect();
    for addr in left {
        match dp.maps.remove_client(addr) {
            Ok(cut) => {
                tracing::info!(%addr, flows_cut = cut, "a previous agent's session did not come back: removed")
            }
            Err(e) => tracing::warn!(%addr, error = %e, "removing a previous agent's session"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn kept_sessions_file_is_private_even_over_a_loose_one() {
        let dir = std::env::temp_dir().join(format!("pc-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = kept_sessions_path(&dir.join("admin.sock"));
        write_private(&path, b"{}").unwrap();
        assert_eq!(mode(&path), 0o600, "a new file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"{\"10.100.0.2\":null}").unwrap();
        assert_eq!(mode(&path), 0o600, "over an older world-readable file");
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"10.100.0.2\":null}");
        let left = std::fs::read_dir(&dir).unwrap().count();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, 1, "no temporary file left behind");
    }
}
