//! The fleet's keys in etcd, all under `/portcullis/<endpoint>/`:
//!
//! | key | value | lifetime |
//! | --- | --- | --- |
//! | `policy` | the shared part of the endpoint file (TOML) | until the next publish; its `mod_revision` is the policy revision a gateway reports |
//! | `gateways/<gateway>` | the gateway's presence (JSON) | under the gateway's lease |
//! | `blocks/<network>-<prefix>` | the gateway id that leased this block of `client_cidr` | under the owner's lease |
//! | `sessions/<gateway>/<connection>` | one session (JSON) | under the owner's lease |
//! | `terminate/<gateway>/<connection>` | who asked, when | short lease; watched by the owner |
//! | `users/<user>/<gateway>/<connection>` | empty: one admitted connection of the user | under the owner's lease |
//! | `admitted/<gateway>/<connection>` | empty: one admitted connection of the endpoint | under the owner's lease |
//! | `revoked-tokens/<token session id hex>` | a revoked session token: until when, by whom (JSON) | a lease of its own, the token's remaining lifetime |
//!
//! Every key that describes something alive on a gateway is written under that gateway's
//! lease, so a gateway that dies leaves nothing behind after its TTL. Parts that come from
//! users (user names) are percent-encoded so that no value can forge a `/` and reach another
//! key; gateway ids and connection ids are validated to need no encoding.
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The key layout of one endpoint's fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys of the endpoint named `endpoint` (the file's `name`, already validated as
    /// letters, digits, `-`, `_`).
    pub fn new(endpoint: &str) -> Keys {
        Keys {
            root: format!("/portcullis/{}/", escape(endpoint)),
        }
    }

    /// Everything of this endpoint (for a prefix read or a cleanup).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The published shared configuration.
    pub fn policy(&self) -> String {
        format!("{}policy", self.root)
    }

    pub fn gateways(&self) -> String {
        format!("{}gateways/", self.root)
    }

    pub fn gateway(&self, gateway: &str) -> String {
        format!("{}{gateway}", self.gateways())
    }

    pub fn blocks(&self) -> String {
        format!("{}blocks/", self.root)
    }

    /// A leased block of the client pool; `/` of the CIDR is written `-` so that the block is
    /// one key component.
    pub fn block(&self, block: Ipv4Net) -> String {
        format!(
            "{}{}-{}",
            self.blocks(),
            block.network(),
            block.prefix_len()
        )
    }

    /// The block a `blocks/...` key names, if it is one.
    pub fn parse_block(&self, key: &str) -> Option<Ipv4Net> {
        let rest = key.strip_prefix(&self.blocks())?;
        let (net, len) = rest.split_once('-')?;
        let net: Ipv4Addr = net.parse().ok()?;
        let b = Ipv4Net::new(net, len.parse().ok()?).ok()?;
        // Only the canonical spelling: one block, one key.
        (b.network() == net).then_some(b)
    }

    /// All sessions of the fleet.
    pub fn sessions(&self) -> String {
        format!("{}sessions/", self.root)
    }

    /// The sessions of one gateway.
    pub fn sessions_of(&self, gateway: &str) -> String {
        format!("{}{gateway}/", self.sessions())
    }

    pub fn session(&self, gateway: &str, connection: &str) -> String {
        format!("{}{connection}", self.sessions_of(gateway))
    }

    /// `(gateway, connection)` of a `sessions/...` key.
    pub fn parse_session<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        split_pair(key.strip_prefix(&self.sessions())?)
    }

    /// The terminate requests addressed to one gateway (the prefix it watches).
    pub fn terminates_of(&self, gateway: &str) -> String {
        format!("{}terminate/{gateway}/", self.root)
    }

    pub fn terminate(&self, gateway: &str, connection: &str) -> String {
        format!("{}{connection}", self.terminates_of(gateway))
    }

    /// One user's admitted connections, fleet-wide (counted for `max_connections_per_user`).
    pub fn user_connections(&self, user: &str) -> String {
        format!("{}users/{}/", self.root, escape(user))
    }

    pub fn user_connection(&self, user: &str, gateway: &str, connection: &str) -> String {
        format!("{}{gateway}/{connection}", self.user_connections(user))
    }

    /// Every admitted connection of the endpoint (counted for `[fleet] max_connections`).
    pub fn admissions(&self) -> String {
        format!("{}admitted/", self.root)
    }

    pub fn admission(&self, gateway: &str, connection: &str) -> String {
        format!("{}{gateway}/{connection}", self.admissions())
    }

    /// Every revoked session token of the fleet.
    pub fn revoked_tokens(&self) -> String {
        format!("{}revoked-tokens/", self.root)
    }

    /// One revoked token session (its id in lower-case hex: no escaping needed).
    pub fn revoked_token(&self, id_hex: &str) -> String {
        format!("{}{id_hex}", self.revoked_tokens())
    }
}

/// `a/b` into `(a, b)`, both non-empty and without further `/`.
fn split_pair(s: &str) -> Option<(&str, &str)> {
    let (a, b) = s.split_once('/')?;
    (!a.is_empty() && !b.is_empty() && !b.contains('/')).then_some((a, b))
}

/// Percent-encodes every byte outside `[A-Za-z0-9._@-]`, so the result holds no `/` and
/// distinct inputs give distinct keys.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._@-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_under_the_endpoint() {
        let k = Keys::new("corp");
        assert_eq!(k.policy(), "/portcullis/corp/policy");
        assert_eq!(k.gateway("gw-a"), "/portcullis/corp/gateways/gw-a");
        assert_eq!(
            k.session("gw-a", "cvpn-connection-1"),
            "/portcullis/corp/sessions/gw-a/cvpn-connection-1"
        );
        assert_eq!(
            k.terminate("gw-a", "c1"),
            "/portcullis/corp/terminate/gw-a/c1"
        );
        assert_eq!(
            k.user_connection("alice", "gw-a", "c1"),
            "/portcullis/corp/users/alice/gw-a/c1"
        );
        for key in [k.policy(), k.gateway("g"), k.session("g", "c")] {
            assert!(key.starts_with(k.root()));
        }
    }

    #[test]
    fn one_gateways_prefix_never_covers_another() {
        let k = Keys::new("corp");
        assert!(!k.session("gw-ab", "c").starts_with(&k.sessions_of("gw-a")));
        assert!(!k
            .terminate("gw-ab", "c")
            .starts_with(&k.terminates_of("gw-a")));
        assert!(!Keys::new("corp2").policy().starts_with(k.root()));
    }

    #[test]
    fn blocks_round_trip_in_canonical_form_only() {
        let k = Keys::new("corp");
        let b: Ipv4Net = "10.100.4.0/24".parse().unwrap();
        assert_eq!(k.block(b), "/portcullis/corp/blocks/10.100.4.0-24");
        assert_eq!(k.parse_block(&k.block(b)), Some(b));
        assert_eq!(k.parse_block("/portcullis/corp/blocks/10.100.4.1-24"), None);
        assert_eq!(k.parse_block("/portcullis/corp/blocks/10.100.4.0-33"), None);
        assert_eq!(
            k.parse_block("/portcullis/other/blocks/10.100.4.0-24"),
            None
        );
    }

    #[test]
    fn sessions_parse_back() {
        let k = Keys::new("corp");
        assert_eq!(
            k.parse_session(&k.session("gw-a", "c7")),
            Some(("gw-a", "c7"))
        );
        assert_eq!(k.parse_session(&k.sessions_of("gw-a")), None);
        assert_eq!(k.parse_session("/portcullis/corp/sessions/a/b/c"), None);
    }

    #[test]
    fn user_names_cannot_escape_their_key() {
        let k = Keys::new("corp");
        let evil = k.user_connections("../gateways/gw-a");
        assert_eq!(evil, "/portcullis/corp/users/..%2Fgateways%2Fgw-a/");
        assert_ne!(escape("a/b"), escape("a%2Fb"));
        assert_eq!(escape("alice@corp.example"), "alice@corp.example");
        assert_eq!(escape("Ünï"), "%C3%9Cn%C3%AF");
    }
}
