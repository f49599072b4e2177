//! Checks of the whole file beyond syntax (files readable, names, ranges, overlaps), each
//! problem with its field path and the fix; the policy is checked by the policy compiler.
use std::path::Path;

use ipnet::IpNet;

use super::errors::err;
use super::{interface_ipv4, ConfigErrors, EndpointConfig};

/// Highest `handshake_rate_per_second` / `handshake_burst`: far above what one gateway can
/// handshake, so only a typo is refused.
const MAX_HANDSHAKE_RATE: u32 = 1_000_000;

impl EndpointConfig {
    /// Everything except the policy compiler's checks (run `policy::compile` for those; the
    /// agent and `portcullis check` run both and print all errors together).
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        if let Some(c) = &self.console {
            errs.extend(c.problems());
            errs.extend(crate::console::config::portal_problems(self));
            if self.logging.admin_audit_log.is_none() {
                errs.push(err(
                    "logging.admin_audit_log",
                    "not set, and the console records every administrative action: give a \
                     file, e.g. admin_audit_log = \"/var/log/portcullis/audit.log\"",
                ));
            }
        }
        for (i, t) in self.target_network.iter().enumerate() {
            if t.snat_address.is_some() {
                continue;
            }
            let path = format!("target_network[{i}].snat_address");
            if crate::datapath::ifindex(&t.interface).is_none() {
                // `check` run on another machine or outside the gateway's network namespace:
                // the address cannot be taken from an interface this host does not have.
                errs.push(err(
                    path,
                    format!(
                        "not set, and interface `{}` does not exist here to take it from: run \
                         this where the interface exists (the gateway's network namespace) or \
                         set snat_address",
                        t.interface
                    ),
                ));
            } else if interface_ipv4(&t.interface).is_none() {
                errs.push(err(
                    path,
                    format!(
                        "not set, and interface `{}` has no IPv4 address to use instead: set \
                         snat_address or give the interface an address",
                        t.interface
                    ),
                ));
            }
        }
        if self.name.is_empty()
            || self.name.len() > 32
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(err(
                "name",
                format!(
                    "`{}` is not a usable endpoint name: 1-32 characters of letters, digits, `-`, `_`",
                    self.name
                ),
            ));
        }
        if !(12..=28).contains(&self.client_cidr.prefix_len()) {
            errs.push(err(
                "client_cidr",
                format!(
                    "a /{} pool is outside /12 ... /28: pick a pool in that range (twice the peak connections)",
                    self.client_cidr.prefix_len()
                ),
            ));
        }
        if let Err(e) = self.listeners() {
            errs.extend(e);
        }
        if let Err(e) = self.ciphers() {
            errs.extend(e);
        }
        if ![8, 10, 12, 24].contains(&self.session_timeout_hours) {
            errs.push(err(
                "session_timeout_hours",
                format!(
                    "{} is not allowed: use 8, 10, 12 or 24 (as AWS)",
                    self.session_timeout_hours
                ),
            ));
        }
        for (i, g) in self.gateway_addresses.iter().enumerate() {
            // Written into profiles as `remote HOST PORT PROTO`: one word, no port.
            if g.is_empty()
                || g.contains(|c: char| c.is_whitespace() || c == ':' || c == '#' || c == ';')
            {
                errs.push(err(
                    format!("gateway_addresses[{i}]"),
                    format!(
                        "{g:?} is not a host name or IPv4 address (no port: the listeners' \
                         ports are used, the same on every gateway)"
                    ),
                ));
            }
        }
        let (ping, restart) = (self.keepalive_interval_secs, self.keepalive_timeout_secs);
        if ping == 0 || ping > 3600 {
            errs.push(err(
                "keepalive_interval_secs",
                format!("{ping} is out of range: use 1 to 3600 seconds (default 10)"),
            ));
        } else if restart < 2 * ping || restart > 86_400 {
            errs.push(err(
                "keepalive_timeout_secs",
                format!(
                    "{restart} does not fit keepalive_interval_secs = {ping}: use at least twice \
                     the interval (so one lost ping does not restart the client) and at most \
                     86400 (default 60)"
                ),
            ));
        }
        if let Some(b) = &self.banner {
            // Pushed as `echo` options: printable ASCII, no commas (the push separator);
            // newlines separate lines.
            let bad = b
                .chars()
                .any(|c| c == ',' || !(c == '\n' || c == ' ' || c.is_ascii_graphic()));
            if b.len() > 1400 || bad {
                errs.push(err(
                    "banner",
                    "at most 1,400 characters of printable ASCII and newlines, without commas \
                     (it is pushed to clients as OpenVPN `echo` options)",
                ));
            }
        }
        if self.max_connections == 0
            || self.max_connections > portcullis_common::MAX_CLIENTS as usize
        {
            errs.push(err(
                "max_connections",
                format!("must be 1 ... {}", portcullis_common::MAX_CLIENTS),
            ));
        }
        for (key, v) in [
            ("handshake_rate_per_second", self.handshake_rate_per_second),
            ("handshake_burst", self.handshake_burst),
        ] {
            if v == 0 || v > MAX_HANDSHAKE_RATE {
                errs.push(err(
                    key,
                    format!(
                        "{v} is out of range: use 1 to {MAX_HANDSHAKE_RATE} (defaults: {} per second, burst {})",
                        crate::openvpn::server::DEFAULT_RESET_RATE.0,
                        crate::openvpn::server::DEFAULT_RESET_RATE.1
                    ),
                ));
            }
        }
        for (key, secs, default) in [
            (
                "tcp_handshake_timeout_secs",
                self.tcp_handshake_timeout_secs,
                60,
            ),
            ("tcp_idle_timeout_secs", self.tcp_idle_timeout_secs, 300),
        ] {
            if secs == 0 || secs > 3600 {
                errs.push(err(
                    key,
                    format!("{secs} is out of range: use 1 to 3600 seconds (default {default})"),
                ));
            }
        }
        if !["1.2", "1.3"].contains(&self.tls.min_version.as_str()) {
            errs.push(err("tls.min_version", "use \"1.2\" or \"1.3\""));
        }
        for (i, m) in self.auth.methods.iter().enumerate() {
            if !["certificate", "ldap", "oidc"].contains(&m.as_str()) {
                errs.push(err(
                    format!("auth.methods[{i}]"),
                    format!("unknown method `{m}`: use \"certificate\" and/or \"ldap\", or \"oidc\" (alone or with \"certificate\")"),
                ));
            }
        }
        errs.extend(self.validate_oidc());
        errs.extend(self.validate_tokens());
        match (self.auth.uses_directory(), &self.directory) {
            (true, None) => errs.push(err(
                "directory",
                "auth.methods has \"ldap\" but there is no [directory] section: add one (url, bind_dn or user_dn_template, ...)",
            )),
            (false, Some(_)) => errs.push(err(
                "auth.methods",
                "a [directory] section is set but not used: add \"ldap\" to auth.methods or remove [directory]",
            )),
            (true, Some(d)) => errs.extend(d.validate()),
            (false, None) => {}
        }
        if self.auth.methods.is_empty() {
            errs.push(err(
                "auth.methods",
                "empty: use [\"certificate\"], [\"ldap\"] or both (both must then pass)",
            ));
        }
        if self.auth.username_must_match_cn && !self.auth.uses_directory() {
            errs.push(err(
                "auth.username_must_match_cn",
                "only meaningful with \"ldap\" in auth.methods",
            ));
        }
        if let Some(c) = &self.auth.static_challenge {
            if c.is_empty() || c.len() > 200 || c.contains('"') || c.chars().any(char::is_control) {
                errs.push(err(
                    "auth.static_challenge",
                    "a prompt of 1-200 printable characters without double quotes",
                ));
            }
            if self
                .directory
                .as_ref()
                .and_then(|d| d.totp_secret_attribute.as_ref())
                .is_none()
            {
                errs.push(err(
                    "auth.static_challenge",
                    "the one-time code is checked against a TOTP secret in the directory: set `directory.totp_secret_attribute` (and \"ldap\" in auth.methods)",
                ));
            }
            if self.directory.as_ref().is_some_and(|d| d.bind_dn.is_none()) {
                errs.push(err(
                    "auth.static_challenge",
                    "the TOTP secret must be read by a service account, never with the user's own bind (whoever has the password could read it): set `directory.bind_dn` and `bind_password_file`, and make the secret attribute readable only by that account",
                ));
            }
        }
        if self.auth.failed_login_window_secs == 0 {
            errs.push(err(
                "auth.failed_login_window_secs",
                "must be at least 1 (set failed_logins_per_user = 0 to turn the limit off)",
            ));
        }
        let mut files: Vec<(String, &Path)> = vec![
            ("tls.cert".into(), &self.tls.cert),
            ("tls.key".into(), &self.tls.key),
            ("tls.client_ca".into(), &self.tls.client_ca),
        ];
        for (i, c) in self.tls.crl.iter().enumerate() {
            files.push((format!("tls.crl[{i}]"), c));
        }
        if let Some(k) = &self.tls.tls_crypt_key {
            files.push(("tls.tls_crypt_key".into(), k));
        }
        if let Some(k) = &self.tls.tls_crypt_v2_server_key {
            files.push(("tls.tls_crypt_v2_server_key".into(), k));
        }
        if let Some(d) = &self.tls.pki_dir {
            errs.extend(
                crate::pki::store::check_config(d, &self.tls.crl, &self.tls.client_ca)
                    .into_iter()
                    .map(|m| err("tls.pki_dir", m)),
            );
        }
        for (path, f) in files {
            if let Err(e) = std::fs::File::open(f) {
                errs.push(err(path, format!("cannot read {}: {e}", f.display())));
            }
        }
        if let Some(k) = &self.tls.tls_crypt_key {
            if let Ok(text) = std::fs::read_to_string(k) {
                if let Err(e) = crate::openvpn::tls_crypt::StaticKey::parse(&text) {
                    errs.push(err(
                        "tls.tls_crypt_key",
                        format!(
                            "{}: {e} (make one with `openvpn --genkey tls-crypt FILE`)",
                            k.display()
                        ),
                    ));
                }
            }
        }
        if let Some(k) = &self.tls.tls_crypt_v2_server_key {
            if let Ok(text) = std::fs::read_to_string(k) {
                if let Err(e) = crate::openvpn::tls_crypt_v2::ServerKey::parse(&text) {
                    errs.push(err(
                        "tls.tls_crypt_v2_server_key",
                        format!(
                            "{}: {e} (make one with `portcullis pki tls-crypt-v2-server`)",
                            k.display()
                        ),
                    ));
                }
            }
        }
        if self.tls.tls_crypt_v2_max_age_days == Some(0) {
            errs.push(err(
                "tls.tls_crypt_v2_max_age_days",
                "0 would refuse every key: give at least 1, or leave it out",
            ));
        }
        if self.tls.tls_crypt_v2_max_age_days.is_some()
            && self.tls.tls_crypt_v2_server_key.is_none()
        {
            errs.push(err(
                "tls.tls_crypt_v2_max_age_days",
                "set without tls.tls_crypt_v2_server_key",
            ));
        }
        if let Some(h) = &self.client_connect {
            if !h.is_file() {
                errs.push(err(
                    "client_connect",
                    format!("{} is not a file", h.display()),
                ));
            }
        }
        if let Some(u) = &self.client_connect_url {
            if self.client_connect.is_some() {
                errs.push(err(
                    "client_connect_url",
                    "both client_connect (a program) and client_connect_url are set: keep one",
                ));
            }
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                errs.push(err(
                    "client_connect_url",
                    format!("`{u}` is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(ca) = &self.client_connect_ca_file {
            if self.client_connect_url.is_none() {
                errs.push(err(
                    "client_connect_ca_file",
                    "only used with client_connect_url: remove it or set the URL",
                ));
            }
            if let Err(e) = std::fs::read(ca) {
                errs.push(err(
                    "client_connect_ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                ));
            }
        }
        if self.client_connect_timeout_secs == 0 || self.client_connect_timeout_secs > 300 {
            errs.push(err(
                "client_connect_timeout_secs",
                "use 1 ... 300 (AWS allows 30)",
            ));
        }
        // Routes that overlap the client pool would send client traffic back to clients.
        for (i, r) in self.route.iter().enumerate() {
            if let IpNet::V4(d) = r.destination {
                if d.contains(&self.client_cidr.network())
                    || self.client_cidr.contains(&d.network())
                {
                    errs.push(err(
                        format!("route[{i}].destination"),
                        format!(
                            "{d} overlaps client_cidr {}: pick a client pool outside your networks",
                            self.client_cidr
                        ),
                    ));
                }
            }
        }
        if let Some(f) = &self.fleet {
            errs.extend(f.validate());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }
}
