//! `portcullis client-config export`: an `.ovpn` profile for an endpoint, in the shape of the
//! AWS Client VPN download (inline CA, optional inline client certificate and key, tls-crypt),
//! which stock OpenVPN clients and the AWS VPN client import unchanged.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::{EndpointConfig, Listener};

/// The profile text. `cert`/`key` (PEM files) are inlined when given; otherwise the user adds
/// `cert`/`key` lines (or `<cert>`/`<key>` blocks) for their own certificate.
pub fn render(cfg: &EndpointConfig, cert: Option<&Path>, key: Option<&Path>) -> Result<String> {
    let host = match &cfg.public_address {
        Some(h) => h.clone(),
        None => bail!(
            "the endpoint has no public_address: set `public_address = \"vpn.example.com\"` \
             (the name or address clients connect to) in the configuration"
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
    for l in &listeners {
        match l {
            Listener::Udp(a) => writeln!(out, "remote {host} {} udp", a.port())?,
            Listener::Tcp(a) => writeln!(out, "remote {host} {} tcp-client", a.port())?,
        }
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
        if let Some(cn) = server_common_name(&cfg.tls.cert)? {
            writeln!(out, "verify-x509-name {cn} name")?;
        }
        writeln!(out, "auth-user-pass")?;
        // The client prompts for a code and sends SCRV1:<password>:<code>; 1 = echo it.
        if let Some(c) = &cfg.auth.static_challenge {
            writeln!(out, "static-challenge \"{c}\" 1")?;
        }
    }
    writeln!(out, "verb 3")?;
    writeln!(out, "<ca>\n{}</ca>", ensure_newline(&ca))?;
    match (cert, key) {
        (Some(c), Some(k)) => {
            let c =
                std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?;
            let k =
                std::fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?;
            writeln!(out, "<cert>\n{}</cert>", ensure_newline(&c))?;
            writeln!(out, "<key>\n{}</key>", ensure_newline(&k))?;
        }
        // Directory only: the user name and password are the credentials.
        (None, None) if !cfg.auth.methods.iter().any(|m| m == "certificate") => {}
        (None, None) => {
            writeln!(
                out,
                "# Add your certificate and key:\n# cert alice.crt\n# key alice.key"
            )?;
        }
        _ => bail!("give both --cert and --key, or neither"),
    }
    if let Some(p) = &cfg.tls.tls_crypt_key {
        let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        writeln!(out, "<tls-crypt>\n{}</tls-crypt>", ensure_newline(&t))?;
    }
    Ok(out)
}

/// The common name of the server certificate (the first one in the file), if it has a
/// simple one (no spaces or quotes, which would need quoting in the profile).
fn server_common_name(path: &Path) -> Result<Option<String>> {
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
    Ok(cn.filter(|c| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_graphic() && ch != '"' && ch != '\'')
    }))
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_owned()
    } else {
        format!("{s}\n")
    }
}
