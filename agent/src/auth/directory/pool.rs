//! Service connections: connecting (TLS, timeouts), the pool, retrying once on a fresh
//! connection after a connection-level failure, and searches.
use std::time::Duration;

use ldap3::{LdapConn, LdapConnSettings, Scope, SearchEntry};

use super::{unavailable, DirError, Directory};

impl Directory {
    pub(super) fn op_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout_secs)
    }

    pub(super) fn connect(&self) -> Result<LdapConn, DirError> {
        let mut s = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(self.cfg.connect_timeout_secs))
            .set_starttls(self.cfg.starttls);
        if let Some(t) = &self.tls {
            s = s.set_config(t.clone());
        }
        LdapConn::with_settings(s, &self.cfg.url).map_err(unavailable)
    }

    /// A bound service connection from the pool, or a new one.
    pub(super) fn service(&self) -> Result<LdapConn, DirError> {
        if let Some(c) = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        self.new_service()
    }

    /// A new bound service connection (never one from the pool).
    pub(super) fn new_service(&self) -> Result<LdapConn, DirError> {
        let mut c = self.connect()?;
        if let (Some(dn), Some(pw)) = (&self.cfg.bind_dn, &self.bind_password) {
            let t = self.op_timeout();
            let r = c.with_timeout(t).simple_bind(dn, pw).map_err(unavailable)?;
            if r.rc != 0 {
                return Err(DirError::Unavailable(format!(
                    "service account bind refused (result {}: {})",
                    r.rc, r.text
                )));
            }
        }
        Ok(c)
    }

    /// Service connections waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(super) fn give_back(&self, c: LdapConn) {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < self.cfg.pool_size {
            p.push(c);
        }
    }

    /// Runs `f` on a service connection. After a connection-level failure the whole pool is
    /// dropped (a directory restart cut every pooled connection, not just this one) and `f`
    /// is tried once more on a new connection.
    pub(super) fn with_service<T>(
        &self,
        f: impl Fn(&Self, &mut LdapConn) -> Result<T, DirError>,
    ) -> Result<T, DirError> {
        let mut last = None;
        for attempt in 0..2 {
            let mut c = if attempt == 0 {
                self.service()?
            } else {
                self.new_service()?
            };
            match f(self, &mut c) {
                Ok(v) => {
                    self.give_back(c);
                    return Ok(v);
                }
                Err(e @ DirError::Unavailable(_)) => {
                    let stale =
                        std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
                    drop(stale);
                    last = Some(e);
                }
                Err(e) => {
                    self.give_back(c);
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| DirError::Unavailable("no connection".into())))
    }

    pub(super) fn search(
        &self,
        c: &mut LdapConn,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, DirError> {
        let r = c
            .with_timeout(self.op_timeout())
            .search(base, scope, filter, attrs.to_vec())
            .map_err(unavailable)?;
        // noSuchObject (32) is an empty answer, not an outage.
        if r.1.rc == 32 {
            return Ok(Vec::new());
        }
        if r.1.rc != 0 {
            return Err(DirError::Protocol(format!(
                "search {filter} under {base}: result {} {}",
                r.1.rc, r.1.text
            )));
        }
        // Active Directory answers searches at a domain root with continuation references
        // (DomainDnsZones, Configuration, ...). ldap3's search already leaves them out (its
        // EntriesOnly adapter); the filter keeps SearchEntry::construct, which panics on
        // them, safe should that change.
        Ok(r.0
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect())
    }
}
