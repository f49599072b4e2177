//! Who may log in, through a publish: what travels, what stays on each gateway.
use super::super::tests::{dir_with_files, GOOD};
use super::super::{restart_only_changes, EndpointConfig, SharedConfig, SharedRefused};

const DIRECTORY: &str = r#"
[auth]
methods = ["certificate", "ldap"]
failed_logins_per_user = 3
[directory]
url = "ldap://10.0.0.5:389"
bind_dn = "cn=svc,dc=example,dc=org"
bind_password_file = "bind.pw"
user_base = "ou=people,dc=example,dc=org"
user_filter = "(&(uid={username})(memberOf=cn=vpn,ou=groups,dc=example,dc=org))"
"#;

#[test]
fn login_settings_travel_with_secrets_by_path_and_merge_into_each_gateway() {
    let d = dir_with_files();
    std::fs::write(d.0.join("bind.pw"), "s3cret-bind-pw\n").unwrap();
    let f = d.0.join("corp.toml");
    std::fs::write(&f, format!("{GOOD}{DIRECTORY}")).unwrap();
    let published = EndpointConfig::load(&f).unwrap();
    let shared = published.shared();
    let text = shared.to_text();
    assert_eq!(SharedConfig::from_text(&text).unwrap(), shared);
    // The secret travels as its path (each gateway holds the file there), never itself.
    assert!(
        text.contains(&d.0.join("bind.pw").display().to_string()),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("memberOf=cn=vpn"), "{text}");
    // Session-token settings go with their host-local secret.
    assert!(!text.contains("token_"), "{text}");

    // A certificate-only gateway with its own session-token lifetime takes the directory.
    std::fs::write(
        &f,
        format!("{GOOD}\n[auth]\nfailed_logins_per_user = 9\ntoken_lifetime_secs = 7200\n"),
    )
    .unwrap();
    let local = EndpointConfig::load(&f).unwrap();
    let merged = local.clone().with_shared(shared.clone()).unwrap();
    assert_eq!(merged.auth.methods, ["certificate", "ldap"]);
    assert_eq!(merged.auth.failed_logins_per_user, 3);
    assert_eq!(merged.auth.token_lifetime_secs, 7200, "host-local");
    assert_eq!(merged.directory, published.directory);
    merged.validate().unwrap();
    // Login settings apply live: nothing of the merge waits for a restart.
    assert!(restart_only_changes(&local, &merged).is_empty());

    // A revision published before login settings were shared leaves each gateway's own.
    let older = SharedConfig {
        auth: None,
        directory: None,
        oidc: None,
        ..shared.clone()
    };
    let older = SharedConfig::from_text(&older.to_text()).unwrap();
    let kept = local.clone().with_shared(older).unwrap();
    assert_eq!(kept.auth, local.auth);
    assert_eq!(kept.directory, None);

    // Publishing the certificate alone takes the directory away from a gateway that had it.
    let cert_only = EndpointConfig {
        directory: None,
        auth: Default::default(),
        ..published.clone()
    }
    .shared();
    let merged = published.clone().with_shared(cert_only).unwrap();
    assert_eq!(merged.directory, None);
    assert_eq!(merged.auth.methods, ["certificate"]);
    merged.validate().unwrap();
}

/// The provider is the endpoint's, the callback the gateway's: a gateway without its own
/// callback cannot take single sign-on and says what to add.
#[test]
fn oidc_provider_is_shared_and_the_callback_stays_on_each_gateway() {
    let with_oidc = |listen: &str, url: &str, issuer: &str| -> EndpointConfig {
        let text = format!(
            "{GOOD}\n[auth]\nmethods = [\"oidc\"]\n[oidc]\nissuer = \"{issuer}\"\n\
             client_id = \"vpn\"\nredirect_listen = \"{listen}\"\nredirect_url = \"{url}\"\n\
             [oidc.group_mapping]\nvpn-eng = \"engineering\"\n"
        );
        toml::from_str(&text).unwrap()
    };
    let published = with_oidc(
        "0.0.0.0:8443",
        "https://gw-a.example.com:8443/callback",
        "https://idp.example.com/realms/corp",
    );
    let shared = published.shared();
    assert_eq!(SharedConfig::from_text(&shared.to_text()).unwrap(), shared);
    let local = with_oidc(
        "192.0.2.2:9443",
        "https://gw-b.example.com:9443/callback",
        "https://old-idp.example.com",
    );
    let merged = local.clone().with_shared(shared.clone()).unwrap();
    let (m, l, p) = (
        merged.oidc.unwrap(),
        local.oidc.unwrap(),
        published.oidc.unwrap(),
    );
    assert_eq!(m.issuer, p.issuer);
    assert_eq!(m.group_mapping, p.group_mapping);
    assert_eq!(
        (m.redirect_listen, m.redirect_url),
        (l.redirect_listen, l.redirect_url)
    );

    let no_callback: EndpointConfig = toml::from_str(GOOD).unwrap();
    let e = no_callback.with_shared(shared).unwrap_err();
    assert!(matches!(e, SharedRefused::NoOidcCallback));
    assert!(e.to_string().contains("redirect_listen"), "{e}");
}
