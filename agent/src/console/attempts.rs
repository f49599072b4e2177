//! Connection attempts and authentication failures by reason over the last hour, for the
//! dashboard: counted from the connection log through the admin API's `logs` action (no
//! second way into the agent). The search reads the log's tail on the endpoint's loop, so the
//! console asks at most every [`REFRESH`], whatever the number of open dashboards.
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::connlog::rfc3339;

/// Buckets of the chart: twelve of five minutes.
pub const BUCKETS: usize = 12;
pub const BUCKET: Duration = Duration::from_secs(300);
/// How stale the counts may be.
pub const REFRESH: Duration = Duration::from_secs(10);

/// One row of the chart: `successful`, or a failure code; attempts per bucket, oldest first.
pub type Row = (String, [u64; BUCKETS]);

/// The chart's rows from connection-log records: successful attempts first, then each
/// failure code (alphabetical). Records outside the hour before `now` are not counted.
pub fn count(records: &[Value], now: SystemTime) -> Vec<Row> {
    // Bucket bounds as the log writes times (`YYYY-MM-DD HH:MM:SS`, UTC): they compare as
    // strings, so no record time needs parsing.
    let bounds: Vec<String> = (0..=BUCKETS)
        .map(|k| rfc3339(now - BUCKET * (BUCKETS - k) as u32))
        .collect();
    let mut ok = [0u64; BUCKETS];
    let mut failed: std::collections::BTreeMap<String, [u64; BUCKETS]> = Default::default();
    for r in records {
        if r["connection-log-type"] != "connection-attempt" {
            continue;
        }
        let t = r["connection-last-update-time"]
            .as_str()
            .unwrap_or_default();
        let Some(k) = (0..BUCKETS).find(|&k| bounds[k].as_str() <= t && t < bounds[k + 1].as_str())
        else {
            continue;
        };
        match r["connection-attempt-status"].as_str() {
            Some("successful") => ok[k] += 1,
            Some("failed") => {
                let reason = r["connection-attempt-failure-reason"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("unknown");
                failed.entry(reason.to_owned()).or_default()[k] += 1;
            }
            _ => {}
        }
    }
    std::iter::once(("successful".to_owned(), ok))
        .chain(failed)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attempts_are_counted_by_outcome_and_reason_in_five_minute_buckets() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |ago: u64| rfc3339(now - Duration::from_secs(ago));
        let rec = |ago: u64, status: &str, reason: &str| {
            json!({
                "connection-log-type": "connection-attempt",
                "connection-attempt-status": status,
                "connection-attempt-failure-reason": reason,
                "connection-last-update-time": at(ago),
            })
        };
        let records = vec![
            rec(10, "successful", "NA"),
            rec(20, "failed", "invalid_credentials"),
            rec(400, "failed", "invalid_credentials"),
            rec(3590, "failed", "rate_limited"),
            // Older than the hour, and not an attempt: not counted.
            rec(3700, "failed", "rate_limited"),
            json!({"connection-log-type": "connection-reset", "connection-last-update-time": at(5)}),
        ];
        let rows = count(&records, now);
        let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["successful", "invalid_credentials", "rate_limited"]);
        assert_eq!(rows[0].1[BUCKETS - 1], 1);
        assert_eq!(rows[1].1[BUCKETS - 1], 1);
        assert_eq!(rows[1].1[BUCKETS - 2], 1);
        assert_eq!(rows[2].1[0], 1);
        let total: u64 = rows.iter().flat_map(|r| r.1).sum();
        assert_eq!(total, 4);
    }
}
