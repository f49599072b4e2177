//! Searching the JSON-lines logs (connection log, flow log) for the admin API's `logs`: only
//! the file's tail is read ([`TAIL_BYTES`]) and at most [`MAX_LIMIT`] records are returned, so
//! a search costs the same on a log of any size.
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::admin::{LogKind, LogQuery, LogsReply};

/// How much of a log's end a search reads.
pub const TAIL_BYTES: u64 = 4 << 20;
/// The most records one search returns.
pub const MAX_LIMIT: u32 = 1000;
const DEFAULT_LIMIT: u32 = 200;

/// The last `max` bytes of `path` as whole lines (a line cut by the start of the window is
/// dropped), and whether the file was longer.
pub fn tail(path: &Path, max: u64) -> std::io::Result<(Vec<String>, bool)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(max).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    Ok((lines, start > 0))
}

/// A time of the query (`YYYY-MM-DD[ HH:MM[:SS]]`, also with a `T`) in the log's form, or the
/// error that names the expected form.
fn time_bound(what: &str, s: &str) -> Result<String, String> {
    let s = s.trim().replace('T', " ");
    let ok = s.len() >= 10
        && s.len() <= 19
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b' ' || b == b':');
    if s.is_empty() || ok {
        Ok(s)
    } else {
        Err(format!(
            "{what} {s:?} is not a time: use UTC as YYYY-MM-DD or YYYY-MM-DD HH:MM[:SS]"
        ))
    }
}

fn contains(v: &Value, key: &str, needle: &str) -> bool {
    v[key]
        .as_str()
        .is_some_and(|s| s.to_lowercase().contains(&needle.to_lowercase()))
}

/// A record's time as the log writes connection times (`YYYY-MM-DD HH:MM:SS`).
fn record_time(kind: LogKind, v: &Value) -> String {
    match kind {
        LogKind::Connections => v["connection-last-update-time"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        LogKind::Flows => v["time"].as_u64().map_or(String::new(), |t| {
            crate::connlog::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(t))
        }),
    }
}

/// Whether record `v` matches `q` (with `since`/`until` already checked).
fn matches(kind: LogKind, v: &Value, q: &LogQuery, since: &str, until: &str) -> bool {
    let t = record_time(kind, v);
    if !since.is_empty() && t.as_str() < since {
        return false;
    }
    // `until` is inclusive at its precision: 2026-12-07 includes the whole day.
    if !until.is_empty() && t.get(..until.len()).is_none_or(|p| p > until) {
        return false;
    }
    match kind {
        LogKind::Connections => {
            (q.user.is_empty()
                || contains(v, "username", &q.user)
                || contains(v, "common-name", &q.user))
                && (q.code.is_empty()
                    || v["connection-attempt-failure-reason"].as_str() == Some(q.code.trim()))
        }
        LogKind::Flows => {
            let dst = format!(
                "{}:{}/{}",
                v["dst"].as_str().unwrap_or_default(),
                v["dst-port"],
                v["protocol"].as_str().unwrap_or_default()
            );
            (q.user.is_empty() || contains(v, "user", &q.user))
                && (q.destination.is_empty() || dst.contains(q.destination.trim()))
                && (q.rule.is_empty()
                    || contains(v, "deciding-rule", &q.rule)
                    || contains(v, "reason", &q.rule))
        }
    }
}

/// The newest records of the log at `path` that match `q`.
pub fn search(path: &Path, kind: LogKind, q: &LogQuery) -> Result<LogsReply, String> {
    let since = time_bound("since", &q.since)?;
    let until = time_bound("until", &q.until)?;
    let limit = match q.limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    } as usize;
    let (lines, truncated) = match tail(path, TAIL_BYTES) {
        Ok(t) => t,
        // Nothing logged yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), false),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let records = lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.is_object() && matches(kind, v, q, &since, &until))
        .take(limit)
        .collect();
    Ok(LogsReply {
        records,
        scanned: lines.len() as u64,
        truncated,
    })
}

/// The admin API's `logs` over the configured paths (`None`: that log is off).
pub fn api(
    kind: LogKind,
    path: Option<&Path>,
    q: &LogQuery,
) -> Result<LogsReply, crate::admin::ErrorReply> {
    let path = path.ok_or_else(|| {
        crate::admin::ErrorReply::new(match kind {
            LogKind::Connections => {
                "this endpoint writes no connection log: set [logging] connection_log"
            }
            LogKind::Flows => "this endpoint writes no flow log: set [logging] flow_log",
        })
    })?;
    search(path, kind, q).map_err(crate::admin::ErrorReply::new)
}

#[cfg(test)]
#[path = "logsearch_tests.rs"]
mod tests;
