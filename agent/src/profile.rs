//! `portcullis client-config export`: an `.ovpn` profile for an endpoint, in the shape of the
//! AWS Client VPN download (inline CA, optional inline client certificate and key, tls-crypt),
//! which stock OpenVPN clients and the AWS VPN client import unchanged.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::{EndpointConfig, Listener};

/// What a profile says after reloads: the listeners, names and TLS files the gateway started
/// with (they change only with a restart), with what a reload or a fleet revision put in force
/// for new sessions (who may log in, the ciphers, the gateways). Without a reload: `running`.
pub fn in_force(running: &EndpointConfig, applied: Option<&EndpointConfig>) -> EndpointConfig {
    let mut c = running.clone();
    if let Some(a) = applied {
        c.auth.methods = a.auth.methods.clone();
        c.auth.static_challenge = a.auth.static_challenge.clone();
        c.data_ciphers = a.data_ciphers.clone();
        c.gateway_addresses = a.gateway_addresses.clone();
    }
    c
}

/// The profile text. `cert`/`key` (PEM files) are inlined when given; otherwise the user adds
/// `cert`/`key` lines (or `<cert>`/`<key>` blocks) for their own certificate.
pub fn render(cfg: &EndpointConfig, cert: Option<&Path>, key: Option<&Path>) -> Result<String> {
    let pair = match (cert, key) {
        (Some(c), Some(k)) => Some((
            std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?,
            std::fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?,
        )),
        (None, None) => None,
        _ => bail!("give both --cert and --key, or neither"),
    };
    render_pem(cfg, pair.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))
}

/// [`render`] with the client certificate and key as PEM text (the portal's issued pair,
/// which never touches the gateway's disk).
pub fn render_pem(cfg: &EndpointConfig, cert_key: Option<(&str, &str)>) -> Result<String> {
    let hosts = match (&cfg.public_address, cfg.gateway_addresses.is_empty()) {
        (_, false) => cfg.gateway_addresses.clone(),
        (Some(h), true) => vec![h.clone()],
        (None, true) => bail!(
            "the endpoint has no public_address: set `public_address = \"vpn.example.com\"` \
             (the name or address clients connect to), or `gateway_addresses = [...]` for a \
             fleet, in the configuration"
        ),
    };
    let listeners = cfg
        .listeners()
        .map_err(|e| anyhow::anyhow!("listen: {e:?}"))?;
    let ca = std::fs::read_to_string(&cfg.tls.client_ca)
        .with_context(|| format!("reading {}", cfg.tls.client_ca.display()))?;
    let mut out = String::new();
    writeln!(out, "# Portcullis endpoint {}", cfg.name)?;
    writeln!(out, "client")?;
    writeln!(out, "dev tun")?;
    for host in &hosts {
        for l in &listeners {
            match l {
                Listener::Udp(a) => writeln!(out, "remote {host} {} udp", a.port())?,
                Listener::Tcp(a) => writeln!(out, "remote {host} {} tcp-client", a.port())?,
            }
        }
    }
    if hosts.len() > 1 {
        // Clients spread over the gateways. After its pushed ping-restart fires, a stock 2.6
        // client first retries the same remote ("Preserving recently used remote address");
        // a dead gateway answers nothing (or ICMP, which a UDP client ignores), so only this
        // timeout moves it on: 4 s instead of the default 120 (it runs only until the
        // gateway's first reply, so a slow login is not cut by it).
        writeln!(out, "remote-random")?;
        writeln!(out, "server-poll-timeout 4")?;
    }
    writeln!(out, "resolv-retry infinite")?;
    // Tells the server at once when the client quits, so its session and address are freed.
    if listeners.iter().any(|l| matches!(l, Listener::Udp(_))) {
        writeln!(out, "explicit-exit-notify 1")?;
    }
    writeln!(out, "nobind")?;
    writeln!(out, "remote-cert-tls server")?;
    let ciphers = cfg.data_ciphers.join(":");
    writeln!(out, "data-ciphers {ciphers}")?;
    // Old clients without data-ciphers fall back to this one.
    writeln!(
        out,
        "cipher {}",
        cfg.data_ciphers
            .first()
            .map_or("AES-256-GCM", |c| c.as_str())
    )?;
    if cfg.auth.methods.iter().any(|m| m == "ldap") {
        // As AWS's profiles for directory authentication: the password only goes to a server
        // with this exact name, not to any server certificate of the CA.
        let cn = server_common_name(&cfg.tls.cert)?;
        writeln!(out, "verify-x509-name {} name", quote(&cn))?;
        writeln!(out, "auth-user-pass")?;
        // The client prompts for a code and sends SCRV1:<password>:<code>; 1 = echo it.
        if let Some(c) = &cfg.auth.static_challenge {
            writeln!(out, "static-challenge \"{c}\" 1")?;
        }
    }
    if cfg.auth.uses_oidc() {
        // Single sign-on: the client opens the login page it is sent (OpenVPN Connect,
        // Tunnelblick 4, the openvpn 2.6 GUIs announce this with IV_SSO).
        writeln!(out, "# Sign-in happens in a web browser (single sign-on).")?;
        if !cfg.auth.methods.iter().any(|m| m == "certificate") {
            let cn = server_common_name(&cfg.tls.cert)?;
            writeln!(out, "verify-x509-name {} name", quote(&cn))?;
            // openvpn 2.x refuses a profile with neither a certificate nor auth-user-pass; the
            // name and password typed here are not checked (the web login is), as with
            // other SSO-only servers.
            writeln!(out, "# Any user name and password: they are not checked.")?;
            writeln!(out, "auth-user-pass")?;
        }
    }
    writeln!(out, "verb 3")?;
    writeln!(out, "<ca>\n{}</ca>", ensure_newline(&ca))?;
    match cert_key {
        Some((c, k)) => {
            writeln!(out, "<cert>\n{}</cert>", ensure_newline(c))?;
            writeln!(out, "<key>\n{}</key>", ensure_newline(k))?;
        }
        // Directory or single sign-on only: the user name and password (or the web login)
        // are the credentials. OpenVPN 3 (Connect) otherwise expects a certificate from
        // its external key store ("Missing External PKI alias"); 2.x ignores the variable.
        None if !cfg.auth.methods.iter().any(|m| m == "certificate") => {
            writeln!(out, "setenv CLIENT_CERT 0")?;
        }
        None => {
            writeln!(
                out,
                "# Add your certificate and key:\n# cert alice.crt\n# key alice.key"
            )?;
        }
    }
    // A tls-crypt-v2 endpoint gets a fresh client key per profile (the point of v2: one
    // lost profile does not expose the others); the v1 key then stays on the server only.
    if let Some(p) = &cfg.tls.tls_crypt_v2_server_key {
        let t = crate::cli::pki::tls_crypt_v2_client_pem(p)?;
        writeln!(out, "<tls-crypt-v2>\n{}</tls-crypt-v2>", ensure_newline(&t))?;
    } else if let Some(p) = &cfg.tls.tls_crypt_key {
        let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        writeln!(out, "<tls-crypt>\n{}</tls-crypt>", ensure_newline(&t))?;
    }
    Ok(out)
}

/// How long a certificate issued from the self-service portal is valid.
pub const PORTAL_CERT_DAYS: u32 = 365;

/// The admin API's `profile`: `user`'s profile for this endpoint and, with `certificate`
/// (only when `[console] self_service_issue_certificates` is on and the endpoint has the
/// built-in PKI), a personal client certificate issued into it. The key is handed out, not
/// kept: the gateway cannot leak it later.
/// How a refusal for `self_service_max_certificates` starts (the portal answers it 409).
pub const CERTIFICATE_LIMIT: &str = "certificate limit reached: ";

/// The client certificates of `user` in the PKI that are neither revoked nor expired.
fn valid_client_certificates(
    dir: &std::path::Path,
    user: &str,
) -> Result<usize, crate::admin::ErrorReply> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let list = crate::pki::store::api_list(Some(dir))?;
    Ok(list
        .certificates
        .iter()
        .filter(|c| c.kind == "client" && c.name == user && !c.revoked)
        .filter(|c| c.not_after.is_none_or(|t| t > now))
        .count())
}

pub fn api(
    cfg: &EndpointConfig,
    user: &str,
    certificate: bool,
) -> Result<crate::admin::ProfileReply, crate::admin::ErrorReply> {
    use crate::admin::ErrorReply;
    let fail = |e: anyhow::Error| ErrorReply::new(format!("{e:#}"));
    let (profile, serial) = if certificate {
        if !cfg
            .console
            .as_ref()
            .is_some_and(|c| c.self_service_issue_certificates)
        {
            return Err(ErrorReply::new(
                "issuing certificates for profiles is off: set [console] \
                 self_service_issue_certificates = true to allow it",
            ));
        }
        let dir = cfg
            .tls
            .pki_dir
            .as_deref()
            .ok_or_else(|| ErrorReply::new(crate::admin::dispatch::NO_PKI))?;
        let max = cfg
            .console
            .as_ref()
            .map_or(0, |c| c.self_service_max_certificates);
        let held = valid_client_certificates(dir, user)?;
        if max > 0 && held >= max as usize {
            return Err(ErrorReply::new(format!(
                "{CERTIFICATE_LIMIT}{user} already holds {held} valid certificates, the most [console] \
                 self_service_max_certificates allows ({max}): an administrator revokes one \
                 on the console's Certificates page (or raises the limit)"
            )));
        }
        let c = crate::pki::store::PkiDir::new(dir)
            .issue(user, false, PORTAL_CERT_DAYS, false)
            .map_err(fail)?;
        let p = render_pem(cfg, Some((&c.cert_pem, &c.key_pem))).map_err(fail)?;
        (p, Some(crate::pki::store::hex(&c.serial)))
    } else {
        (render_pem(cfg, None).map_err(fail)?, None)
    };
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
                _ => '_',
            })
            .collect()
    };
    Ok(crate::admin::ProfileReply {
        file_name: format!("{}-{}.ovpn", safe(&cfg.name), safe(user)),
        profile,
        serial,
    })
}

/// The common name of the server certificate (the first one in the file). Without one (or
/// with one that no profile line can carry) the export fails: a profile without
/// `verify-x509-name` would send the password to any server certificate of the CA.
fn server_common_name(path: &Path) -> Result<String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() else {
        bail!("{} holds no PEM certificate", path.display());
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_owned);
    match cn {
        Some(c) if !c.is_empty() && !c.chars().any(char::is_control) => Ok(c),
        Some(_) => bail!(
            "the server certificate {} has a common name with control characters, which a \
             profile's verify-x509-name line cannot carry: issue it with a printable name",
            path.display()
        ),
        None => bail!(
            "the server certificate {} has no common name, which directory-authentication \
             profiles pin with verify-x509-name: issue it with one",
            path.display()
        ),
    }
}

/// One OpenVPN configuration parameter: bare when it has no blank, quote, backslash or
/// comment character, otherwise in double quotes with `\` and `"` escaped (OpenVPN's
/// `parse_line` reads a backslash as "take the next character as it is").
fn quote(p: &str) -> String {
    let plain = !p.is_empty()
        && p.chars().all(|c| {
            !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\' | '#' | ';') && !c.is_control()
        });
    if plain {
        return p.to_owned();
    }
    let mut q = String::from("\"");
    for c in p.chars() {
        if matches!(c, '"' | '\\') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, Validity};

    /// A fresh directory for one test with a CA and its `ca.crt`.
    fn scratch(test: &str) -> (std::path::PathBuf, CertificateAuthority) {
        let dir = std::env::temp_dir().join(format!("pc-profile-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertificateAuthority::generate("profile CA", Validity::days_from_now(2)).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
        (dir, ca)
    }

    /// [`scratch`] with a server certificate for vpn.example.com in `server.crt`.
    fn scratch_with_server(test: &str) -> std::path::PathBuf {
        let (dir, ca) = scratch(test);
        let server = ca
            .issue_server("vpn.example.com", Validity::days_from_now(2))
            .unwrap();
        std::fs::write(dir.join("server.crt"), &server.cert_pem).unwrap();
        dir
    }

    /// An endpoint on `listen` with `[auth] methods`, its TLS files in `dir`.
    fn endpoint(dir: &std::path::Path, methods: &str, listen: &str) -> EndpointConfig {
        let mut c = EndpointConfig::parse(&format!(
            r#"
name = "corp"
client_cidr = "10.100.0.0/22"
listen = ["{listen}"]
public_address = "vpn.example.com"
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
[auth]
methods = {methods}
"#
        ))
        .unwrap();
        c.tls.client_ca = dir.join("ca.crt");
        c.tls.cert = dir.join("server.crt");
        c
    }

    #[test]
    fn server_names_are_quoted_for_the_profile() {
        assert_eq!(quote("vpn.example.com"), "vpn.example.com");
        assert_eq!(quote("Corp VPN"), "\"Corp VPN\"");
        assert_eq!(quote(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(quote("x#y;z'"), "\"x#y;z'\"");
        let (dir, ca) = scratch("names");
        let cert = ca
            .issue_server("Corp VPN \"main\"", Validity::days_from_now(2))
            .unwrap();
        let path = dir.join("server.crt");
        std::fs::write(&path, &cert.cert_pem).unwrap();
        let cn = server_common_name(&path).unwrap();
        assert_eq!(cn, "Corp VPN \"main\"");
        assert_eq!(
            format!("verify-x509-name {} name", quote(&cn)),
            r#"verify-x509-name "Corp VPN \"main\"" name"#
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tls_crypt_v2_endpoints_get_a_fresh_client_key_per_profile() {
        use crate::openvpn::tls_crypt_v2::{ClientKey, ServerKey};
        let (dir, _ca) = scratch("v2");
        let server = ServerKey::from_bytes([3; 128]);
        std::fs::write(dir.join("v2.key"), server.to_pem()).unwrap();
        let mut cfg = EndpointConfig::parse(
            r#"
name = "corp"
client_cidr = "10.100.0.0/22"
listen = ["udp://0.0.0.0:1194"]
public_address = "vpn.example.com"
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
tls_crypt_v2_server_key = "v2.key"
"#,
        )
        .unwrap();
        cfg.tls.client_ca = dir.join("ca.crt");
        cfg.tls.tls_crypt_v2_server_key = Some(dir.join("v2.key"));
        let key_of = |profile: &str| {
            let a = profile.find("<tls-crypt-v2>\n").expect("block") + 15;
            let b = profile.find("</tls-crypt-v2>").expect("end");
            ClientKey::parse(&profile[a..b]).unwrap()
        };
        let one = key_of(&render(&cfg, None, None).unwrap());
        let two = key_of(&render(&cfg, None, None).unwrap());
        // Both open under the server key; each export has its own Kc.
        let a = server.unwrap(&one.wkc).unwrap();
        let b = server.unwrap(&two.wkc).unwrap();
        assert_eq!(a.key.as_bytes(), one.key.as_bytes());
        assert_ne!(a.key.as_bytes(), b.key.as_bytes());
        assert!(matches!(
            a.metadata,
            crate::openvpn::tls_crypt_v2::Metadata::Timestamp(_)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fleet's profile lists every gateway for every listener, in random order, and moves
    /// on from a silent one quickly; a bad gateway address is refused by name.
    #[test]
    fn fleet_profiles_list_every_gateway() {
        let (dir, _ca) = scratch("fleet");
        let text = |gateways: &str| {
            format!(
                r#"
name = "corp"
client_cidr = "10.100.0.0/22"
listen = ["udp://0.0.0.0:1194", "tcp://0.0.0.0:443"]
public_address = "vpn.example.com"
gateway_addresses = {gateways}
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
"#
            )
        };
        let mut cfg = EndpointConfig::parse(&text(r#"["gw-a.example.com", "192.0.2.7"]"#)).unwrap();
        cfg.tls.client_ca = dir.join("ca.crt");
        let p = render(&cfg, None, None).unwrap();
        let remotes: Vec<&str> = p.lines().filter(|l| l.starts_with("remote ")).collect();
        assert_eq!(
            remotes,
            [
                "remote gw-a.example.com 1194 udp",
                "remote gw-a.example.com 443 tcp-client",
                "remote 192.0.2.7 1194 udp",
                "remote 192.0.2.7 443 tcp-client",
            ]
        );
        assert!(
            p.contains("\nremote-random\n") && p.contains("\nserver-poll-timeout 4\n"),
            "{p}"
        );
        cfg.gateway_addresses.clear();
        let one = render(&cfg, None, None).unwrap();
        assert!(
            one.contains("remote vpn.example.com 1194 udp") && !one.contains("remote-random"),
            "{one}"
        );
        let bad = EndpointConfig::parse(&text(r#"["gw-a:1194"]"#)).unwrap();
        let e = bad.validate().unwrap_err();
        assert!(
            e.0.iter()
                .any(|e| e.path == "gateway_addresses[0]" && e.message.contains("no port")),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// SSO alone: openvpn 2.x needs a certificate or auth-user-pass, so the profile carries a
    /// bare (unchecked) auth-user-pass and the server name check; with certificates it
    /// carries neither.
    #[test]
    fn sso_profiles_give_stock_clients_what_they_need() {
        let dir = scratch_with_server("sso");
        let cfg = |methods: &str| endpoint(&dir, methods, "udp://0.0.0.0:1194");
        let only = render(&cfg(r#"["oidc"]"#), None, None).unwrap();
        assert!(only.contains("\nauth-user-pass\n"), "{only}");
        assert!(
            only.contains("verify-x509-name vpn.example.com name"),
            "{only}"
        );
        assert!(!only.contains("# Add your certificate"), "{only}");
        let both = render(&cfg(r#"["certificate", "oidc"]"#), None, None).unwrap();
        assert!(!both.contains("auth-user-pass"), "{both}");
        assert!(both.contains("web browser"), "{both}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// After a reload (or a fleet revision) turns the directory on, profiles ask for the
    /// password; the listeners stay the ones the gateway runs until a restart.
    #[test]
    fn profiles_follow_what_a_reload_put_in_force() {
        let dir = scratch_with_server("in-force");
        let running = endpoint(&dir, r#"["certificate"]"#, "udp://0.0.0.0:1194");
        let mut applied = endpoint(&dir, r#"["certificate", "ldap"]"#, "udp://0.0.0.0:1195");
        applied.data_ciphers = vec!["CHACHA20-POLY1305".into()];
        let before = render(&in_force(&running, None), None, None).unwrap();
        assert!(!before.contains("auth-user-pass"), "{before}");
        let after = render(&in_force(&running, Some(&applied)), None, None).unwrap();
        assert!(after.contains("\nauth-user-pass\n"), "{after}");
        assert!(after.contains("data-ciphers CHACHA20-POLY1305"), "{after}");
        // The new port waits for a restart: the profile keeps the one that answers.
        assert!(after.contains("remote vpn.example.com 1194 udp"), "{after}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
