//! A real OpenID provider for the single sign-on tests: npm's certified `oidc-provider`, run by
//! Node (`tests/idp/idp.mjs`) on 127.0.0.1 inside a test namespace, over HTTPS with a
//! certificate from its own test CA, with one client and test users whose ID tokens carry a
//! `groups` claim. The packages come from `cargo xtask setup` (`npm ci` into [`IDP_MODULES`]).
//! Drop stops Node (the [`Proc`] guard).
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::pki::{CertificateAuthority, Validity};

use crate::openvpn::{Proc, TempDir};
use crate::NetNs;

/// Where `cargo xtask setup` installed the provider's packages.
pub const IDP_MODULES: &str = "/var/cache/portcullis/idp/node_modules";
pub const CLIENT_ID: &str = "portcullis-test";
pub const CLIENT_SECRET: &str = "test-client-secret-0123456789";

/// A test user: password and the values of the `groups` claim.
pub struct User<'a> {
    pub name: &'a str,
    pub password: &'a str,
    pub groups: &'a [&'a str],
}

/// The provider: its files from [`Idp::prepare`], its process from [`Idp::launch`].
pub struct Idp {
    pub proc: Option<Proc>,
    pub issuer: String,
    cfg_file: PathBuf,
    /// PEM of the CA that issued the provider's certificate (for `oidc.ca_file`).
    pub ca_file: PathBuf,
    /// PEM certificate of the provider (the browser trusts its key).
    pub cert_file: PathBuf,
    /// The client secret, in a file (for `oidc.client_secret_file`).
    pub secret_file: PathBuf,
    // Last: the log must outlive the process guard's panic dump.
    pub dir: TempDir,
}

/// The packages are there, or a message saying how to get them.
pub fn available() -> Result<(), String> {
    if !Path::new(IDP_MODULES).join("oidc-provider").exists() {
        return Err(format!(
            "no oidc-provider in {IDP_MODULES}: run `cargo xtask setup` (npm ci of tests/idp)"
        ));
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("no `node`: run `cargo xtask setup` (Debian package nodejs)".into());
    }
    Ok(())
}

impl Idp {
    /// The provider's certificates, secret and configuration for `https://127.0.0.1:<port>`
    /// and a client whose callback is `redirect_uri` (written before the gateway's
    /// configuration, which names them).
    pub fn prepare(port: u16, redirect_uri: &str, users: &[User<'_>]) -> Idp {
        available().unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir::new("idp");
        let ca =
            CertificateAuthority::generate("Portcullis test IdP CA", Validity::days_from_now(2))
                .expect("IdP CA");
        // An IP address as the name: the certificate carries it as an IP SAN.
        let leaf = ca
            .issue_server("127.0.0.1", Validity::days_from_now(2))
            .expect("IdP certificate");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            p
        };
        let ca_file = write("ca.crt", &ca.cert_pem());
        let cert_file = write("idp.crt", &leaf.cert_pem);
        let key_file = write("idp.key", &leaf.key_pem);
        let secret_file = write("client-secret", &format!("{CLIENT_SECRET}\n"));
        let issuer = format!("https://127.0.0.1:{port}");
        let users: serde_json::Map<String, serde_json::Value> = users
            .iter()
            .map(|u| {
                (
                    u.name.to_owned(),
                    serde_json::json!({"password": u.password, "groups": u.groups}),
                )
            })
            .collect();
        let cfg = serde_json::json!({
            "modules": IDP_MODULES,
            "port": port,
            "issuer": issuer,
            "cert": cert_file,
            "key": key_file,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": redirect_uri,
            "users": users,
        });
        let cfg_file = write("idp.json", &cfg.to_string());
        Idp {
            proc: None,
            issuer,
            cfg_file,
            ca_file,
            cert_file,
            secret_file,
            dir,
        }
    }

    /// Node with the provider in `ns`; waits until it listens.
    pub fn launch(&mut self, ns: &NetNs) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("idp/idp.mjs");
        let proc = Proc::spawn(
            ns,
            &[
                "node",
                &script.to_string_lossy(),
                &self.cfg_file.to_string_lossy(),
            ],
            &self.dir.path().join("idp.log"),
            "OpenID provider (node oidc-provider)",
        );
        if let Err(e) = proc.wait_log_or_exit("idp listening", Duration::from_secs(20)) {
            panic!("the OpenID provider did not start: {e}");
        }
        self.proc = Some(proc);
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log()).unwrap_or_default()
    }
}
