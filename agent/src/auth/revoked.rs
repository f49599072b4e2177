//! Session tokens an operator revoked (`connections terminate`): by token session id (kept by
//! every renewal and reconnect, see [`super::token`]), until the token's lifetime would have
//! ended anyway. Persisted (`auth.token_revocation_file`), so a restart does not bring a
//! revoked token back.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::token::SESSION_ID_LEN;

type SessionId = [u8; SESSION_ID_LEN];

/// Revoked token sessions, each until it would have expired (Unix seconds).
pub struct Revoked {
    ids: Mutex<HashMap<SessionId, u64>>,
    file: Option<PathBuf>,
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
        })
    }

    pub fn contains(&self, id: &SessionId) -> bool {
        lock(&self.ids).contains_key(id)
    }

    /// Revokes `ids` (each with the time its token dies) and writes the file.
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

fn hex(id: &SessionId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &str) -> Option<SessionId> {
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
}
