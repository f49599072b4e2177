//! `portcullis connections list` as a table, and the session ids `terminate` takes.
use std::fmt::Write;

use crate::admin::ConnectionInfo;

/// A session as `connections terminate` names it: `ID` (this gateway's) or `GATEWAY/ID` (in a
/// fleet, a session of that gateway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRef {
    pub gateway: Option<String>,
    pub id: u32,
}

pub fn parse_id(s: &str) -> Result<SessionRef, String> {
    let (gateway, id) = match s.split_once('/') {
        Some((g, i)) if crate::config::fleet::valid_gateway_id(g) => (Some(g.to_owned()), i),
        Some(_) => {
            return Err(format!(
                "`{s}`: the gateway before `/` is not a gateway id (letters, digits, - and _)"
            ))
        }
        None => (None, s),
    };
    let id = id.parse().map_err(|_| {
        format!("`{s}` is not a session id: use the number from `connections list`, or GATEWAY/ID")
    })?;
    Ok(SessionRef { gateway, id })
}

pub fn table(rows: &[ConnectionInfo]) -> String {
    // The gateway column only in a fleet.
    let fleet = rows.iter().any(|c| c.gateway.is_some());
    let gw = |g: &str| {
        if fleet {
            format!("{g:<12} ")
        } else {
            String::new()
        }
    };
    let mut out = format!(
        "{}{:>5}  {:<16} {:<15} {:<21} {:<4} {:>7}  {:>12} {:>12}\n",
        gw("gateway"),
        "id",
        "user",
        "client",
        "public",
        "tr",
        "age",
        "in bytes",
        "out bytes"
    );
    for c in rows {
        let _ = writeln!(
            out,
            "{}{:>5}  {:<16} {:<15} {:<21} {:<4} {:>6}s  {:>12} {:>12}",
            gw(c.gateway.as_deref().unwrap_or("-")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_with_and_without_a_gateway() {
        assert_eq!(
            parse_id("7"),
            Ok(SessionRef {
                gateway: None,
                id: 7
            })
        );
        assert_eq!(
            parse_id("gw-b/12"),
            Ok(SessionRef {
                gateway: Some("gw-b".into()),
                id: 12
            })
        );
        assert!(parse_id("gw b/1").unwrap_err().contains("gateway"));
        assert!(parse_id("gw-b/x").unwrap_err().contains("not a session id"));
    }
}
