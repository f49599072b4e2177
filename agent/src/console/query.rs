//! The query strings and forms of the monitoring pages: what the handlers parse and the
//! views link back to.
use serde::Deserialize;

use crate::admin::ConnectionInfo;

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The connections table's filter and order.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConnQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub sort: String,
    #[serde(default)]
    pub desc: bool,
}

impl ConnQuery {
    /// Whether `c` matches the filter (user, directory user, group, addresses, gateway).
    pub(super) fn matches(&self, c: &ConnectionInfo) -> bool {
        let q = self.q.to_lowercase();
        q.is_empty()
            || [
                c.user.as_deref().unwrap_or(""),
                c.username.as_deref().unwrap_or(""),
                c.client_address.as_deref().unwrap_or(""),
                &c.public_address,
                c.gateway.as_deref().unwrap_or(""),
            ]
            .iter()
            .any(|f| f.to_lowercase().contains(&q))
            || c.directory_groups
                .iter()
                .any(|g| g.to_lowercase().contains(&q))
    }

    pub(super) fn apply(&self, mut conns: Vec<ConnectionInfo>) -> Vec<ConnectionInfo> {
        conns.retain(|c| self.matches(c));
        // Ids are per gateway: (gateway, id) is the order of last resort.
        conns.sort_by(|a, b| (&a.gateway, a.id).cmp(&(&b.gateway, b.id)));
        match self.sort.as_str() {
            "user" => conns.sort_by(|a, b| a.user.cmp(&b.user)),
            "gateway" => conns.sort_by(|a, b| a.gateway.cmp(&b.gateway)),
            "since" => conns.sort_by_key(|c| c.since_secs),
            "in" => conns.sort_by_key(|c| c.ingress_bytes),
            "out" => conns.sort_by_key(|c| c.egress_bytes),
            _ => {}
        }
        if self.desc {
            conns.reverse();
        }
        conns
    }
}

/// The explain form's fields.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub to: String,
}
