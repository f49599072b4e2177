//! The periodic re-check of connected directory users: one background pass at a time (the
//! directory may be slow; the endpoint's loop never waits for it), its results turned into
//! changes on the next tick. New groups rewrite the session's bitmap (flows no longer allowed
//! are cut); a disabled or removed user, or one who lost every group a rule names, is ended.
//! An unreachable directory changes nothing.
use std::net::Ipv4Addr;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_common::GroupBits;

use crate::auth::directory::{DirError, Directory};
use crate::auth::{Grant, Grants};

/// (peer id, directory user the pass looked up, what the directory said).
pub type RecheckResults = Vec<(u32, String, Result<Vec<String>, DirError>)>;

#[derive(Default)]
pub struct Recheck {
    last: Option<Instant>,
    running: Option<Receiver<RecheckResults>>,
}

impl Recheck {
    /// The results of the pass that ran, once it has finished.
    pub fn finished(&mut self) -> Option<RecheckResults> {
        let rx = self.running.as_ref()?;
        match rx.try_recv() {
            Ok(results) => {
                self.running = None;
                Some(results)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.running = None;
                None
            }
        }
    }

    /// Starts a pass over the sessions with a directory user, when none runs and the last
    /// started `every` ago.
    pub fn start_if_due(&mut self, every: Duration, dir: &Arc<Directory>, grants: &Grants) {
        if self.running.is_some() || self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let users = grants.directory_users();
        if users.is_empty() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = dir.clone();
        // Blocking LDAP calls: a thread of their own, not the endpoint loop's runtime.
        std::thread::spawn(move || {
            let out = users
                .into_iter()
                .map(|(peer, user)| {
                    let r = dir.refresh(&user).map(|u| u.groups);
                    (peer, user, r)
                })
                .collect();
            let _ = tx.send(out);
        });
        self.running = Some(rx);
    }
}

/// What a pass changes for one live session.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// End the session (out of the data path now, not when the client has taken the HALT).
    End {
        peer_id: u32,
        addr: Ipv4Addr,
        reason: &'static str,
    },
    /// The session's new group bitmap; `lost`: some group went away, so its flows to
    /// destinations the new groups do not allow must be cut (established flows are otherwise
    /// re-checked only when the policy generation changes).
    Regroup {
        peer_id: u32,
        addr: Ipv4Addr,
        groups: GroupBits,
        lost: bool,
    },
}

/// Turns a pass's results into changes, recording new directory groups in `grants`.
/// `session`: a live session's tunnel address and certificate name; `bitmap`: a session's
/// group bitmap under the live policy.
pub fn decide(
    results: RecheckResults,
    grants: &Grants,
    session: &dyn Fn(u32) -> Option<(Ipv4Addr, String)>,
    bitmap: &dyn Fn(&str, &Grant) -> GroupBits,
) -> Vec<Change> {
    let mut out = Vec::new();
    for (peer_id, user, r) in results {
        let Some(old) = grants.get(peer_id) else {
            continue; // ended meanwhile
        };
        if old.username != user {
            // The session ended during the pass and its peer id went to another user: this
            // result is not theirs.
            continue;
        }
        let Some((addr, common_name)) = session(peer_id) else {
            continue;
        };
        let groups = match r {
            Ok(g) => g,
            Err(e @ (DirError::Disabled | DirError::UnknownUser)) => {
                tracing::warn!(peer_id, user = old.username, reason = %e, "directory re-check: session ended");
                out.push(Change::End {
                    peer_id,
                    addr,
                    reason: "account disabled or removed",
                });
                continue;
            }
            Err(e) => {
                tracing::warn!(peer_id, user = old.username, error = %e, "directory re-check failed; groups kept");
                continue;
            }
        };
        if groups == old.groups {
            continue;
        }
        let new = Grant {
            username: old.username.clone(),
            groups: groups.clone(),
            name_unverified: old.name_unverified,
        };
        let before = bitmap(&common_name, &old);
        let after = bitmap(&common_name, &new);
        grants.update(peer_id, groups.clone());
        tracing::info!(
            peer_id,
            user = new.username,
            ?groups,
            "directory groups changed"
        );
        if after.iter().all(|w| *w == 0) && before.iter().any(|w| *w != 0) {
            out.push(Change::End {
                peer_id,
                addr,
                reason: "no longer in an authorized group",
            });
            continue;
        }
        out.push(Change::Regroup {
            peer_id,
            addr,
            groups: after,
            lost: before.iter().zip(after.iter()).any(|(b, a)| b & !a != 0),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openvpn::peer::Link;

    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);

    /// Peer 1 is user `u` (certificate `cn`) with directory groups `groups`.
    fn grants(groups: &[&str]) -> Grants {
        let g = Grants::default();
        let link = Link::Udp {
            listener: 0,
            addr: "192.0.2.1:5000".parse().unwrap(),
        };
        let grant = Grant {
            username: "u".into(),
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            ..Grant::default()
        };
        g.offer(link, 7, grant);
        g.establish(link, 7, 1).unwrap();
        g
    }

    fn session(peer: u32) -> Option<(Ipv4Addr, String)> {
        (peer == 1).then(|| (ADDR, "cn".to_owned()))
    }

    /// Bit 0 for group `a`, bit 1 for `b`: other groups no rule names.
    fn bitmap(_: &str, g: &Grant) -> GroupBits {
        let mut b = GroupBits::default();
        for (i, name) in ["a", "b"].iter().enumerate() {
            if g.groups.iter().any(|x| x == name) {
                b[0] |= 1 << i;
            }
        }
        b
    }

    fn decide1(g: &Grants, r: Result<Vec<String>, DirError>) -> Vec<Change> {
        decide(vec![(1, "u".into(), r)], g, &session, &bitmap)
    }

    #[test]
    fn disabled_or_removed_users_are_ended() {
        for e in [DirError::Disabled, DirError::UnknownUser] {
            let g = grants(&["a"]);
            assert_eq!(
                decide1(&g, Err(e)),
                [Change::End {
                    peer_id: 1,
                    addr: ADDR,
                    reason: "account disabled or removed"
                }]
            );
        }
    }

    #[test]
    fn an_unreachable_directory_changes_nothing() {
        let g = grants(&["a"]);
        assert!(decide1(&g, Err(DirError::Unavailable("down".into()))).is_empty());
        assert_eq!(g.get(1).unwrap().groups, ["a"]);
    }

    #[test]
    fn new_groups_regroup_and_say_whether_some_were_lost() {
        let g = grants(&["a"]);
        let gained = decide1(&g, Ok(vec!["a".into(), "b".into()]));
        let mut both = GroupBits::default();
        both[0] = 0b11;
        assert_eq!(
            gained,
            [Change::Regroup {
                peer_id: 1,
                addr: ADDR,
                groups: both,
                lost: false
            }]
        );
        assert_eq!(g.get(1).unwrap().groups, ["a", "b"]);
        let lost = decide1(&g, Ok(vec!["b".into()]));
        assert!(
            matches!(lost[..], [Change::Regroup { lost: true, .. }]),
            "{lost:?}"
        );
        // Unchanged groups: nothing to do.
        assert!(decide1(&g, Ok(vec!["b".into()])).is_empty());
    }

    #[test]
    fn losing_every_authorized_group_ends_the_session() {
        let g = grants(&["a"]);
        assert_eq!(
            decide1(&g, Ok(vec!["unrelated".into()])),
            [Change::End {
                peer_id: 1,
                addr: ADDR,
                reason: "no longer in an authorized group"
            }]
        );
    }

    #[test]
    fn results_for_another_user_or_an_ended_session_are_ignored() {
        let g = grants(&["a"]);
        // The peer id went to another user during the pass.
        let r = decide(
            vec![(1, "v".into(), Err(DirError::Disabled))],
            &g,
            &session,
            &bitmap,
        );
        assert!(r.is_empty());
        // Ended meanwhile: no grant.
        let r = decide(
            vec![(2, "u".into(), Err(DirError::Disabled))],
            &g,
            &session,
            &bitmap,
        );
        assert!(r.is_empty());
    }
}
