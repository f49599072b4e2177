//! Finding a user, checking the password with a bind of its own, and whether the account is
//! enabled.
use ldap3::{LdapConn, Scope, SearchEntry};

use super::{unavailable, DirError, DirUser, Directory, GroupSource};

/// LDAP result code invalidCredentials (RFC 4511 A.1).
const RC_INVALID_CREDENTIALS: u32 = 49;
/// AD's userAccountControl ACCOUNTDISABLE bit.
const UAC_ACCOUNT_DISABLE: u64 = 0x2;
/// `pwdAccountLockedTime` of an account locked until an administrator unlocks it
/// (draft-behera-ldap-password-policy 5.3.3).
const PPOLICY_LOCKED_FOR_GOOD: &str = "000001010000Z";

impl Directory {
    pub(super) fn user_attrs(&self) -> Vec<&str> {
        let mut a = vec![
            "userAccountControl",
            "pwdAccountLockedTime",
            "nsAccountLock",
        ];
        if self.cfg.group_source == GroupSource::MemberOf {
            a.push(self.cfg.member_of_attribute.as_str());
        }
        if let Some(t) = &self.cfg.totp_secret_attribute {
            a.push(t.as_str());
        }
        a
    }

    /// Checks `username`/`password` and returns the user's groups.
    pub fn authenticate(&self, username: &str, password: &str) -> Result<DirUser, DirError> {
        self.authenticate_checked(username, password, |_| true)
    }

    /// [`Directory::authenticate`], asking `admit` with the user's DN once it is known and
    /// before the password is checked; `false` ends the login there with an error (the
    /// caller knows why).
    pub fn authenticate_checked(
        &self,
        username: &str,
        password: &str,
        admit: impl FnOnce(&str) -> bool,
    ) -> Result<DirUser, DirError> {
        // An empty password is an anonymous bind, which most directories accept (RFC 4513
        // 5.1.2): never let it through as a login.
        if username.is_empty() || password.is_empty() {
            return Err(DirError::Missing);
        }
        if username.len() > 256 || username.chars().any(char::is_control) {
            return Err(DirError::UnknownUser);
        }
        if self.cfg.bind_dn.is_some() {
            let entry = self.with_service(|d, c| d.find_user(c, username))?;
            if !admit(&entry.dn) {
                return Err(DirError::Protocol("login not admitted".into()));
            }
            let mut uc = self.connect()?;
            self.bind_user(&mut uc, &entry.dn, password)?;
            let _ = uc.unbind();
            check_enabled(&entry)?;
            let groups = self.with_service(|d, c| d.groups_of(c, &entry, username))?;
            Ok(DirUser {
                totp_secret: self.totp_secret(&entry),
                dn: entry.dn,
                groups,
            })
        } else {
            // Direct bind: the user's own connection reads its entry and groups.
            let template = self.cfg.user_dn_template.as_deref().unwrap_or_default();
            let dn = template.replace("{username}", &ldap3::dn_escape(username));
            if !admit(&dn) {
                return Err(DirError::Protocol("login not admitted".into()));
            }
            let mut uc = self.connect()?;
            self.bind_user(&mut uc, &dn, password)?;
            let entries = self.search(
                &mut uc,
                &dn,
                Scope::Base,
                "(objectClass=*)",
                &self.user_attrs(),
            )?;
            let entry = entries.into_iter().next().ok_or(DirError::UnknownUser)?;
            check_enabled(&entry)?;
            let groups = self.groups_of(&mut uc, &entry, username);
            let _ = uc.unbind();
            Ok(DirUser {
                totp_secret: self.totp_secret(&entry),
                dn: entry.dn,
                groups: groups?,
            })
        }
    }

    /// The current groups of a connected user (periodic re-check): `Err(UnknownUser)` or
    /// `Err(Disabled)` when the account is gone or disabled. Needs a service account.
    pub fn refresh(&self, username: &str) -> Result<DirUser, DirError> {
        if self.cfg.bind_dn.is_none() {
            return Err(DirError::Protocol(
                "re-checking groups needs a service account (bind_dn)".into(),
            ));
        }
        self.with_service(|d, c| {
            let entry = d.find_user(c, username)?;
            check_enabled(&entry)?;
            let groups = d.groups_of(c, &entry, username)?;
            Ok(DirUser {
                totp_secret: None,
                dn: entry.dn,
                groups,
            })
        })
    }

    pub(super) fn totp_secret(&self, e: &SearchEntry) -> Option<String> {
        let a = self.cfg.totp_secret_attribute.as_deref()?;
        attr(e, a).into_iter().next()
    }

    pub(super) fn find_user(
        &self,
        c: &mut LdapConn,
        username: &str,
    ) -> Result<SearchEntry, DirError> {
        let base = self.cfg.user_base.as_deref().unwrap_or_default();
        let filter = self
            .cfg
            .user_filter
            .replace("{username}", &ldap3::ldap_escape(username));
        let mut found = self.search(c, base, Scope::Subtree, &filter, &self.user_attrs())?;
        match found.len() {
            0 => Err(DirError::UnknownUser),
            1 => Ok(found.remove(0)),
            n => Err(DirError::Protocol(format!(
                "{n} entries match {filter}: make user_filter unique"
            ))),
        }
    }

    pub(super) fn bind_user(
        &self,
        c: &mut LdapConn,
        dn: &str,
        password: &str,
    ) -> Result<(), DirError> {
        let r = c
            .with_timeout(self.op_timeout())
            .simple_bind(dn, password)
            .map_err(unavailable)?;
        match r.rc {
            0 => Ok(()),
            // With a direct bind this also covers an unknown DN: the directory does not say.
            RC_INVALID_CREDENTIALS => Err(DirError::InvalidCredentials),
            // unwillingToPerform / inappropriateAuthentication: disabled or locked accounts.
            48 | 53 => Err(DirError::Disabled),
            rc => Err(DirError::Protocol(format!("bind result {rc}: {}", r.text))),
        }
    }
}

/// Values of an attribute, matched case-insensitively (servers echo their own spelling).
pub(super) fn attr(e: &SearchEntry, name: &str) -> Vec<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn check_enabled(e: &SearchEntry) -> Result<(), DirError> {
    let uac = attr(e, "userAccountControl")
        .first()
        .and_then(|v| v.trim().parse::<i64>().ok());
    if uac.is_some_and(|v| (v as u64) & UAC_ACCOUNT_DISABLE != 0) {
        return Err(DirError::Disabled);
    }
    // OpenLDAP ppolicy: only 000001010000Z locks for good (until an administrator unlocks);
    // any other time is a lockout that may have expired (pwdLockoutDuration), which the
    // server decides at the bind (refused with invalidCredentials or unwillingToPerform).
    // 389-DS/FreeIPA lock.
    if attr(e, "pwdAccountLockedTime")
        .iter()
        .any(|v| v.trim() == PPOLICY_LOCKED_FOR_GOOD)
        || attr(e, "nsAccountLock")
            .first()
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(DirError::Disabled);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_permanent_ppolicy_lock_is_disabled() {
        let entry = |attrs: &[(&str, &str)]| SearchEntry {
            dn: "uid=alice,dc=x".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            bin_attrs: Default::default(),
        };
        assert_eq!(check_enabled(&entry(&[])), Ok(()));
        // A lockout with a time may have expired: the bind decides.
        assert_eq!(
            check_enabled(&entry(&[("pwdAccountLockedTime", "20260101120000Z")])),
            Ok(())
        );
        assert_eq!(
            check_enabled(&entry(&[("pwdAccountLockedTime", "000001010000Z")])),
            Err(DirError::Disabled)
        );
        assert_eq!(
            check_enabled(&entry(&[("nsAccountLock", "TRUE")])),
            Err(DirError::Disabled)
        );
        assert_eq!(
            check_enabled(&entry(&[("userAccountControl", "514")])),
            Err(DirError::Disabled)
        );
    }
}
