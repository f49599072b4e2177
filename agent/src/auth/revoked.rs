//! Session tokens an operator revoked (`connections terminate`): by token session id (kept by
//! every renewal and reconnect, see [`super::token`]), until the token's lifetime would have
//! ended anyway. Persisted (`auth.token_revocation_file`), so a restart does not bring a
//! revoked token back. In a fleet, `crate::fleet::revocations` publishes this gateway's
//! revocations ([`Revoked::revoke`], announced on [`Revoked::local_revocations`]) and adds
//! the other gateways' ([`Revoked::add`]); this module knows nothing of the fleet.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio::sync::watch;

use super::token::SESSION_ID_LEN;

pub type SessionId = [u8; SESSION_ID_LEN];

/// Revoked token sessions, each until it would have expired (Unix seconds).
pub struct Revoked {
    ids: Mutex<HashMap<SessionId, u64>>,
    file: Option<PathBuf>,
    /// Bumped at each revocation made here (not at one learnt from the fleet).
    local: watch::Sender<u64>,
}

impl Revoked {
    /// The set kept in `file` (none yet: empty). An unreadable file is an error: starting
    /// without it would accept revoked tokens again.
    pub fn load(file: Option<PathBuf>, now: u64) -> anyhow::Result<Revoked> {
        use anyhow::Context as _;
        let mut ids = HashMap::new();
        if let Some(f) = &file {
            match std::fs::read_to_string(f) {
                Ok(text) => {
                    let m: HashMap<String, u64> = serde_json::from_str(&text).with_context(|| {
                        format!("auth.token_revocation_file {}: not a revocation list (remove it to start empty)", f.display())
                    })?;
                    for (hex, until) in m {
                        if let Some(id) = parse_hex(&hex).filter(|_| until > now) {
                            ids.insert(id, until);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("reading auth.token_revocation_file {}", f.display())
                    })
                }
            }
        }
        Ok(Revoked {
            ids: Mutex::new(ids),
            file,
            local: watch::Sender::new(0),
        })
    }

    /// An operator revoked `ids` on this gateway ([`Revoked::add`]): those listening to
    /// [`Revoked::local_revocations`] (the fleet member) are told.
    pub fn revoke(&self, ids: &[(SessionId, u64)], now: u64) {
        if ids.is_empty() {
            return;
        }
        self.add(ids, now);
        self.local.send_modify(|n| *n += 1);
    }

    /// Changes at every [`Revoked::revoke`]; the set itself is read with
    /// [`Revoked::entries`] (a listener that was away misses nothing).
    pub fn local_revocations(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    /// Every revocation whose token is still alive at `now`, with its end.
    pub fn entries(&self, now: u64) -> Vec<(SessionId, u64)> {
        lock(&self.ids)
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, until)| (*id, *until))
            .collect()
    }

    pub fn contains(&self, id: &SessionId) -> bool {
        lock(&self.ids).contains_key(id)
    }

    /// Revokes `ids` (each with the time its token dies) and writes the file. Nobody is told:
    /// what comes from the fleet goes back to no one.
    pub fn add(&self, ids: &[(SessionId, u64)], now: u64) {
        if ids.is_empty() {
            return;
        }
        let mut m = lock(&self.ids);
        m.retain(|_, until| *until > now);
        m.extend(ids.iter().copied());
        let Some(f) = &self.file else {
            return;
        };
        let out: HashMap<String, u64> = m.iter().map(|(id, u)| (hex(id), *u)).collect();
        let json = serde_json::to_vec(&out).expect("a map of strings");
        if let Err(e) = write_private(f, &json) {
            // The set in memory still holds; a restart before the next write loses these.
            tracing::error!(path = %f.display(), error = %e, "writing the revoked session tokens");
        }
    }
}

/// Owner-only, written beside and renamed over `path` (never half-written).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
}

pub fn hex(id: &SessionId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(s: &str) -> Option<SessionId> {
    let mut id = [0; SESSION_ID_LEN];
    if s.len() != SESSION_ID_LEN * 2 {
        return None;
    }
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn revocations_survive_a_restart_until_the_token_would_have_died() {
        let dir = std::env::temp_dir().join(format!("pc-revoked-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token.revoked");
        let r = Revoked::load(Some(f.clone()), 1_000).unwrap();
        r.add(
            &[(*b"session-id-1", 5_000), (*b"session-id-2", 1_500)],
            1_000,
        );
        assert!(r.contains(b"session-id-1"));
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Revoked::load(Some(f.clone()), 2_000).unwrap();
        assert!(again.contains(b"session-id-1"), "kept across a restart");
        assert!(!again.contains(b"session-id-2"), "dead anyway: dropped");
        assert!(!again.contains(b"session-id-3"));
        std::fs::write(&f, "garbage").unwrap();
        assert!(
            Revoked::load(Some(f), 2_000).is_err(),
            "never silently empty"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_revocations_made_here_are_announced() {
        let r = Revoked::load(None, 1_000).unwrap();
        let rx = r.local_revocations();
        r.add(&[(*b"from-fleet-1", 5_000)], 1_000);
        assert!(
            !rx.has_changed().unwrap(),
            "learnt from the fleet: not sent back"
        );
        r.revoke(&[(*b"revoked-here", 5_000), (*b"dead-already", 900)], 1_000);
        assert!(rx.has_changed().unwrap());
        let mut e = r.entries(1_000);
        e.sort();
        assert_eq!(
            e,
            vec![(*b"from-fleet-1", 5_000), (*b"revoked-here", 5_000)]
        );
        assert_eq!(parse_hex(&hex(b"revoked-here")), Some(*b"revoked-here"));
        assert_eq!(parse_hex("zz"), None);
    }
}
