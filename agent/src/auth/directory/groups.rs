//! A user's groups: the `memberOf`-style attribute or a group search, nested by a bounded
//! client-side walk or AD's in-chain rule, named by attribute, DN or SID.
use std::collections::{BTreeSet, HashSet, VecDeque};

use ldap3::{LdapConn, Scope, SearchEntry};

use super::user::attr;
use super::{DirError, Directory, GroupId, GroupSource, Nested};

/// Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: transitive membership in one filter.
const AD_IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// Upper bound on group entries visited while resolving nested groups, whatever the cap.
const MAX_GROUPS_VISITED: usize = 2000;

impl Directory {
    /// The user's group identifiers (sorted, capped).
    pub(super) fn groups_of(
        &self,
        c: &mut LdapConn,
        user: &SearchEntry,
        username: &str,
    ) -> Result<Vec<String>, DirError> {
        let cfg = &self.cfg;
        let group_base = cfg.group_base.as_deref().unwrap_or_default();
        // Group DNs, in discovery order; entries we already read (for names and SIDs).
        let mut dns: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut entries: std::collections::HashMap<String, SearchEntry> = Default::default();
        let id_attrs = self.id_attrs();
        let mut push = |dn: String, dns: &mut Vec<String>| {
            if seen.insert(dn.to_ascii_lowercase()) {
                dns.push(dn);
                true
            } else {
                false
            }
        };
        if cfg.nested == Nested::AdInChain {
            let filter = format!(
                "(member:{AD_IN_CHAIN}:={})",
                ldap3::ldap_escape(user.dn.as_str())
            );
            for e in self.search(c, group_base, Scope::Subtree, &filter, &id_attrs)? {
                push(e.dn.clone(), &mut dns);
                entries.insert(e.dn.to_ascii_lowercase(), e);
            }
        } else {
            // Direct groups first.
            let direct: Vec<String> = match cfg.group_source {
                GroupSource::MemberOf => attr(user, &cfg.member_of_attribute),
                GroupSource::Search => {
                    let filter = self.group_filter(&user.dn, username);
                    let found = self.search(c, group_base, Scope::Subtree, &filter, &id_attrs)?;
                    let mut v = Vec::new();
                    for e in found {
                        v.push(e.dn.clone());
                        entries.insert(e.dn.to_ascii_lowercase(), e);
                    }
                    v
                }
            };
            let mut queue: VecDeque<(String, usize)> = VecDeque::new();
            for dn in direct {
                if push(dn.clone(), &mut dns) {
                    queue.push_back((dn, 1));
                }
            }
            if cfg.nested == Nested::Recursive {
                // Breadth first, bounded in depth and in entries read; `seen` breaks cycles.
                while let Some((dn, depth)) = queue.pop_front() {
                    if depth >= cfg.nested_depth || dns.len() >= MAX_GROUPS_VISITED {
                        continue;
                    }
                    let parents: Vec<String> = match cfg.group_source {
                        GroupSource::MemberOf => {
                            let mut want = id_attrs.clone();
                            want.push(cfg.member_of_attribute.as_str());
                            let e = self.search(c, &dn, Scope::Base, "(objectClass=*)", &want)?;
                            let Some(e) = e.into_iter().next() else {
                                continue;
                            };
                            let p = attr(&e, &cfg.member_of_attribute);
                            entries.insert(e.dn.to_ascii_lowercase(), e);
                            p
                        }
                        GroupSource::Search => {
                            let filter = self.group_filter(&dn, username);
                            let found =
                                self.search(c, group_base, Scope::Subtree, &filter, &id_attrs)?;
                            let mut v = Vec::new();
                            for e in found {
                                v.push(e.dn.clone());
                                entries.insert(e.dn.to_ascii_lowercase(), e);
                            }
                            v
                        }
                    };
                    for p in parents {
                        if push(p.clone(), &mut dns) {
                            queue.push_back((p, depth + 1));
                        }
                    }
                }
            }
        }
        let mut ids = BTreeSet::new();
        for dn in &dns {
            let id = match cfg.group_id {
                GroupId::Dn => Some(dn.clone()),
                GroupId::Name | GroupId::Sid => {
                    let key = dn.to_ascii_lowercase();
                    if !entries.contains_key(&key) {
                        let found =
                            self.search(c, dn, Scope::Base, "(objectClass=*)", &id_attrs)?;
                        if let Some(e) = found.into_iter().next() {
                            entries.insert(key.clone(), e);
                        }
                    }
                    entries.get(&key).and_then(|e| self.group_ident(e))
                }
            };
            if let Some(id) = id {
                ids.insert(id);
            }
        }
        let mut ids: Vec<String> = ids.into_iter().collect();
        if ids.len() > cfg.max_groups {
            tracing::warn!(
                user = username,
                groups = ids.len(),
                kept = cfg.max_groups,
                "user is in more groups than directory.max_groups: the rest are ignored"
            );
            ids.truncate(cfg.max_groups);
        }
        Ok(ids)
    }

    pub(super) fn group_filter(&self, dn: &str, username: &str) -> String {
        self.cfg
            .group_filter
            .replace("{dn}", &ldap3::ldap_escape(dn))
            .replace("{username}", &ldap3::ldap_escape(username))
    }

    pub(super) fn id_attrs(&self) -> Vec<&str> {
        match self.cfg.group_id {
            GroupId::Dn => vec!["1.1"],
            GroupId::Name => vec![self.cfg.group_name_attribute.as_str()],
            GroupId::Sid => vec!["objectSid"],
        }
    }

    pub(super) fn group_ident(&self, e: &SearchEntry) -> Option<String> {
        match self.cfg.group_id {
            GroupId::Dn => Some(e.dn.clone()),
            GroupId::Name => attr(e, &self.cfg.group_name_attribute).into_iter().next(),
            GroupId::Sid => sid_of(e),
        }
    }
}

/// `objectSid` as `S-1-5-21-…`: AD sends it binary; a textual value is taken as it is.
fn sid_of(e: &SearchEntry) -> Option<String> {
    if let Some(b) = e
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("objectSid"))
        .and_then(|(_, v)| v.first())
    {
        return sid_to_string(b);
    }
    // ldap3 files values that happen to be valid UTF-8 under text attributes, binary or not.
    let v = attr(e, "objectSid").into_iter().next()?;
    if v.starts_with("S-") {
        Some(v)
    } else {
        sid_to_string(v.as_bytes())
    }
}

/// MS-DTYP 2.4.2.2: revision, sub-authority count, 48-bit big-endian authority, then
/// little-endian 32-bit sub-authorities.
pub fn sid_to_string(b: &[u8]) -> Option<String> {
    if b.len() < 8 || b[0] != 1 {
        return None;
    }
    let n = usize::from(b[1]);
    if b.len() != 8 + 4 * n {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    let mut s = format!("S-1-{authority}");
    for i in 0..n {
        let o = 8 + 4 * i;
        let v = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        s.push_str(&format!("-{v}"));
    }
    Some(s)
}

/// The inverse of [`sid_to_string`] (fixtures and tests write binary SIDs with it).
pub fn sid_from_string(s: &str) -> Option<Vec<u8>> {
    let mut parts = s.strip_prefix("S-1-")?.split('-');
    let authority: u64 = parts.next()?.parse().ok()?;
    if authority >= 1 << 48 {
        return None;
    }
    let subs: Vec<u32> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if subs.len() > 15 {
        return None;
    }
    let mut b = vec![1, subs.len() as u8];
    b.extend_from_slice(&authority.to_be_bytes()[2..]);
    for v in subs {
        b.extend_from_slice(&v.to_le_bytes());
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_round_trip() {
        // A well-known AD domain SID layout.
        let s = "S-1-5-21-3623811015-3361044348-30300820-1013";
        let b = sid_from_string(s).unwrap();
        assert_eq!(b.len(), 8 + 4 * 5);
        assert_eq!(&b[..8], &[1, 5, 0, 0, 0, 0, 0, 5]);
        assert_eq!(sid_to_string(&b).as_deref(), Some(s));
        assert_eq!(sid_to_string(&b[..b.len() - 1]), None);
        assert_eq!(sid_from_string("S-2-5"), None);
        assert_eq!(sid_from_string("S-1-5-x"), None);
    }
}
