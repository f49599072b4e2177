//! What may differ between two compiled policies: the compiler's answer to "what did this
//! reload change", which the reconciler uses to diff only those map keys.
use std::collections::BTreeSet;

use super::{CompiledPolicy, LpmKey};

/// What may differ between two compiled policies, as far as the policy maps are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDelta {
    /// Authorization-trie keys whose entry may differ; `None`: any key.
    pub authz: Option<BTreeSet<LpmKey>>,
    /// The security-group tries and port ranges may differ.
    pub security_groups: bool,
    /// Routes or targets may differ.
    pub other: bool,
}

impl PolicyDelta {
    /// Anything may differ.
    pub fn all() -> Self {
        PolicyDelta {
            authz: None,
            security_groups: true,
            other: true,
        }
    }

    /// Nothing differs.
    pub fn none() -> Self {
        PolicyDelta {
            authz: Some(BTreeSet::new()),
            security_groups: false,
            other: false,
        }
    }

    /// The exact delta between two compiled policies (one merge walk of the sorted
    /// authorization entries; the rest compared whole).
    pub fn between(old: &CompiledPolicy, new: &CompiledPolicy) -> Self {
        let mut authz = BTreeSet::new();
        let (mut a, mut b) = (old.authz.iter().peekable(), new.authz.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(&&(l, n, _)), None) => {
                    authz.insert((l, n));
                    a.next();
                }
                (None, Some(&&(l, n, _))) => {
                    authz.insert((l, n));
                    b.next();
                }
                (Some(&&(la, na, va)), Some(&&(lb, nb, vb))) => match (la, na).cmp(&(lb, nb)) {
                    std::cmp::Ordering::Less => {
                        authz.insert((la, na));
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        authz.insert((lb, nb));
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if va != vb {
                            authz.insert((la, na));
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        PolicyDelta {
            authz: Some(authz),
            security_groups: old.sg_enabled != new.sg_enabled
                || old.sg_nodes != new.sg_nodes
                || old.sg_ranges != new.sg_ranges,
            other: old.routes != new.routes || old.targets != new.targets,
        }
    }

    /// Nothing may differ.
    pub fn is_empty(&self) -> bool {
        self.authz.as_ref().is_some_and(BTreeSet::is_empty) && !self.security_groups && !self.other
    }

    /// What may differ after both changes.
    pub fn union(&self, other: &PolicyDelta) -> PolicyDelta {
        PolicyDelta {
            authz: match (&self.authz, &other.authz) {
                (Some(a), Some(b)) => Some(a.union(b).copied().collect()),
                _ => None,
            },
            security_groups: self.security_groups || other.security_groups,
            other: self.other || other.other,
        }
    }
}
