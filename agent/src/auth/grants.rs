//! What each admitted session was granted (its directory user name and groups): offered by
//! the authenticator, moved to the live set when the session is established, read by the
//! data-path hooks and the group re-check.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::openvpn::peer::Link;

/// What a session was admitted with, beyond its certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The directory user name (empty with certificate-only authentication).
    pub username: String,
    /// Directory groups (names, DNs or SIDs, as `directory.group_id` says), or the groups of
    /// a single sign-on.
    pub groups: Vec<String>,
    /// The session's name is only what the client typed (single sign-on without a client
    /// certificate: the profile's `auth-user-pass` is not checked), so it grants no local
    /// groups; `username` (from the provider) does.
    pub name_unverified: bool,
}

/// How long an offered grant waits for its session to be established.
const PENDING_TTL: Duration = Duration::from_secs(300);

/// Grants by link and session serial until the session is established (a link is reused by a
/// client that restarts, so the serial tells its sessions apart), then by peer id until it
/// ends.
#[derive(Debug, Default)]
pub struct Grants {
    pub(super) pending: Mutex<HashMap<(Link, u64), (Grant, Instant)>>,
    live: Mutex<HashMap<u32, Grant>>,
}

impl Grants {
    pub fn offer(&self, link: Link, session: u64, g: Grant) {
        let now = Instant::now();
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // A verdict that arrives after its session died leaves an entry no event removes:
        // a session is established within its handshake window, so older ones are stale.
        p.retain(|_, (_, at)| now.saturating_duration_since(*at) < PENDING_TTL);
        p.insert((link, session), (g, now));
    }

    /// Session `session` on `link` is established as `peer_id`: its grant moves to the live
    /// set.
    pub fn establish(&self, link: Link, session: u64, peer_id: u32) -> Option<Grant> {
        let g = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(link, session))?
            .0;
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer_id, g.clone());
        Some(g)
    }

    /// A session ended: a peer id belongs to one session at a time, so its entry goes.
    pub fn end(&self, link: Link, peer_id: u32) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(l, _), _| *l != link);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer_id);
    }

    pub fn get(&self, peer_id: u32) -> Option<Grant> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer_id)
            .cloned()
    }

    pub fn update(&self, peer_id: u32, groups: Vec<String>) {
        if let Some(g) = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&peer_id)
        {
            g.groups = groups;
        }
    }

    /// (peer id, username) of every live session with a directory user.
    pub fn directory_users(&self) -> Vec<(u32, String)> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, g)| !g.username.is_empty())
            .map(|(p, g)| (*p, g.username.clone()))
            .collect()
    }
}

/// Local groups of `cn` and of the grant's username, with the grant's directory groups.
pub fn combined_groups(
    local: &dyn Fn(&str) -> Vec<String>,
    cn: &str,
    grant: &Grant,
) -> Vec<String> {
    let mut g = if grant.name_unverified {
        Vec::new()
    } else {
        local(cn)
    };
    if !grant.username.is_empty() && (grant.username != cn || grant.name_unverified) {
        g.extend(local(&grant.username));
    }
    g.extend(grant.groups.iter().cloned());
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_follow_the_session() {
        let g = Grants::default();
        let link = Link::Udp {
            listener: 0,
            addr: "192.0.2.1:1000".parse().unwrap(),
        };
        g.offer(
            link,
            1,
            Grant {
                username: "alice".into(),
                groups: vec!["eng".into()],
                ..Grant::default()
            },
        );
        // Another session on the same link (a client restart) does not get it.
        assert!(g.establish(link, 2, 7).is_none());
        assert_eq!(g.establish(link, 1, 7).unwrap().groups, ["eng"]);
        assert_eq!(g.directory_users(), vec![(7, "alice".to_owned())]);
        g.update(7, vec![]);
        assert!(g.get(7).unwrap().groups.is_empty());
        g.end(link, 7);
        assert!(g.get(7).is_none());
        assert!(g.establish(link, 1, 7).is_none());
    }

    #[test]
    fn groups_combine_local_and_directory() {
        let local = |u: &str| match u {
            "alice" => vec!["local-a".to_owned()],
            "cert-cn" => vec!["local-cn".to_owned()],
            _ => vec![],
        };
        let grant = Grant {
            username: "alice".into(),
            groups: vec!["dir".into()],
            ..Grant::default()
        };
        // A name the client typed for single sign-on grants nothing of its own.
        let sso = Grant {
            username: "bob".into(),
            groups: vec!["idp".into()],
            name_unverified: true,
        };
        assert_eq!(combined_groups(&local, "alice", &sso), ["idp"]);
        let sso_alice = Grant {
            username: "alice".into(),
            ..sso.clone()
        };
        assert_eq!(
            combined_groups(&local, "alice", &sso_alice),
            ["local-a", "idp"]
        );
        assert_eq!(
            combined_groups(&local, "cert-cn", &grant),
            ["local-cn", "local-a", "dir"]
        );
        assert_eq!(
            combined_groups(&local, "alice", &Grant::default()),
            ["local-a"]
        );
    }
}
