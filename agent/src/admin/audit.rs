//! The admin audit trail: one JSON line per administrative action (who, from where, when,
//! what, the result), appended to a file the agent only ever opens for appending.
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// One administrative action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC.
    pub time: String,
    /// The administrator (console account, or `uid=N` for the admin socket).
    pub who: String,
    /// The source address (console) or `admin-socket pid=N`.
    pub from: String,
    /// `console_login`, `console_logout`, `console_login_failed`, `terminate`, `reload`...
    pub action: String,
    /// What it acted on, e.g. `session 7`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// `ok`, or why it failed.
    pub result: String,
}

impl AuditEntry {
    pub fn now(
        who: &str,
        from: &str,
        action: &str,
        target: &str,
        result: impl Into<String>,
    ) -> Self {
        Self {
            time: crate::connlog::rfc3339(SystemTime::now()),
            who: who.to_owned(),
            from: from.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            result: result.into(),
        }
    }

    /// Whether every non-empty needle occurs in the matching field (case-insensitive).
    pub fn matches(&self, filter: &AuditFilter) -> bool {
        let has = |field: &str, needle: &str| {
            needle.is_empty() || field.to_lowercase().contains(&needle.to_lowercase())
        };
        has(&self.who, &filter.who)
            && has(&self.action, &filter.action)
            && has(&self.result, &filter.result)
            && (filter.text.is_empty()
                || has(&self.target, &filter.text)
                || has(&self.from, &filter.text))
    }
}

/// What the audit page filters by.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuditFilter {
    #[serde(default)]
    pub who: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub result: String,
    /// Matched against the target and the source.
    #[serde(default)]
    pub text: String,
}

/// The audit file. Appends are serialized so lines never interleave.
pub struct AuditLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl AuditLog {
    /// Creates the file (and its directory) if missing, mode 0600.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Self::append_handle(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    fn append_handle(path: &Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; a failure is logged (an action is not undone because its record
    /// could not be written, but the operator must hear of it).
    pub fn record(&self, e: &AuditEntry) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let line = match serde_json::to_string(e) {
            Ok(l) => l + "\n",
            Err(err) => {
                tracing::error!("audit: encoding an entry: {err}");
                return;
            }
        };
        if let Err(err) =
            Self::append_handle(&self.path).and_then(|mut f| f.write_all(line.as_bytes()))
        {
            tracing::error!("audit: writing {}: {err}", self.path.display());
        }
    }

    /// The newest `limit` entries matching `filter`, newest first.
    pub fn search(&self, filter: &AuditFilter, limit: usize) -> Vec<AuditEntry> {
        let Ok(f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut all: Vec<AuditEntry> = std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<AuditEntry>(&l).ok())
            .filter(|e| e.matches(filter))
            .collect();
        all.reverse();
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_append_and_filter() {
        let dir = std::env::temp_dir().join(format!("pc-audit-{}", std::process::id()));
        let path = dir.join("audit.log");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::open(&path).unwrap();
        log.record(&AuditEntry::now(
            "ann",
            "127.0.0.1",
            "console_login",
            "",
            "ok",
        ));
        log.record(&AuditEntry::now(
            "ann",
            "127.0.0.1",
            "terminate",
            "session 7",
            "ok",
        ));
        log.record(&AuditEntry::now(
            "uid=0",
            "admin-socket pid=9",
            "reload",
            "",
            "error: bad file",
        ));
        let all = log.search(&AuditFilter::default(), 10);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].action, "reload", "newest first");
        let f = AuditFilter {
            who: "ANN".into(),
            text: "session".into(),
            ..Default::default()
        };
        let hits = log.search(&f, 10);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].target, "session 7");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for k in ["time", "who", "from", "action", "result"] {
            assert!(first.get(k).is_some(), "{k} in {first}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
