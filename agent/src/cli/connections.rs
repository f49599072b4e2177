//! `portcullis connections list` as a table.
use std::fmt::Write;

use crate::admin::ConnectionInfo;

pub fn table(rows: &[ConnectionInfo]) -> String {
    let mut out = format!(
        "{:>5}  {:<16} {:<15} {:<21} {:<4} {:>7}  {:>12} {:>12}\n",
        "id", "user", "client", "public", "tr", "age", "in bytes", "out bytes"
    );
    for c in rows {
        let _ = writeln!(
            out,
            "{:>5}  {:<16} {:<15} {:<21} {:<4} {:>6}s  {:>12} {:>12}",
            c.id,
            // The directory user where there is one, else the certificate name.
            c.username.as_deref().or(c.user.as_deref()).unwrap_or("-"),
            c.client_address.as_deref().unwrap_or("-"),
            c.public_address,
            c.transport,
            c.since_secs,
            c.ingress_bytes,
            c.egress_bytes
        );
    }
    out
}
