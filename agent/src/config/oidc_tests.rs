//! The `[oidc]` section: what is accepted and what each mistake is reported as.
use super::*;

fn good() -> OidcConfig {
    toml::from_str(
        r#"
issuer = "https://login.example.com/realms/corp"
client_id = "portcullis"
redirect_listen = "0.0.0.0:8443"
redirect_url = "https://vpn.example.com:8443/callback"
[group_mapping]
vpn-eng = "eng"
"#,
    )
    .unwrap()
}

fn paths(c: &OidcConfig) -> Vec<String> {
    c.validate().into_iter().map(|e| e.path).collect()
}

#[test]
fn a_minimal_section_is_valid_with_its_defaults() {
    let c = good();
    assert_eq!(paths(&c), Vec::<String>::new());
    assert_eq!(c.groups_claim, "groups");
    assert_eq!(c.username_claim, "preferred_username");
    assert_eq!(c.pending_timeout_secs, 120);
    assert_eq!(c.allowed_clock_skew_secs, 60);
    assert_eq!(
        c.group_mapping.get("vpn-eng").map(String::as_str),
        Some("eng")
    );
}

#[test]
fn each_mistake_names_its_field() {
    let mut c = good();
    c.issuer = "http://login.example.com".into();
    c.redirect_url = "https://vpn.example.com/other".into();
    c.pending_timeout_secs = 5;
    c.allowed_clock_skew_secs = 3600;
    c.scopes = vec!["a b".into()];
    c.client_secret_file = Some("/nonexistent/secret".into());
    c.callback_cert = Some("/nonexistent/cert".into());
    let p = paths(&c);
    for f in [
        "oidc.issuer",
        "oidc.redirect_url",
        "oidc.pending_timeout_secs",
        "oidc.allowed_clock_skew_secs",
        "oidc.scopes[0]",
        "oidc.client_secret_file",
        "oidc.callback_cert",
    ] {
        assert!(p.iter().any(|x| x == f), "{f} not reported: {p:?}");
    }
    let e = c.validate();
    let issuer = e.iter().find(|e| e.path == "oidc.issuer").unwrap();
    assert!(issuer.message.contains("https://"), "{}", issuer.message);
}

#[test]
fn unknown_fields_are_refused() {
    let r: Result<OidcConfig, _> = toml::from_str(
        "issuer = \"https://x\"\nclient_id = \"c\"\nredirect_listen = \"0.0.0.0:1\"\nredirect_url = \"https://x/callback\"\ngroup_claim = \"g\"\n",
    );
    assert!(r.is_err());
}

fn endpoint(auth_and_oidc: &str) -> crate::config::EndpointConfig {
    crate::config::EndpointConfig::parse(&format!(
        r#"
name = "corp"
client_cidr = "10.100.0.0/22"
listen = ["udp://0.0.0.0:1194"]
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
{auth_and_oidc}
"#
    ))
    .unwrap()
}

const SECTION: &str = r#"
[oidc]
issuer = "https://login.example.com"
client_id = "portcullis"
redirect_listen = "0.0.0.0:8443"
redirect_url = "https://vpn.example.com:8443/callback"
"#;

#[test]
fn methods_and_section_must_agree() {
    let paths = |c: &crate::config::EndpointConfig| -> Vec<String> {
        c.validate_oidc().into_iter().map(|e| e.path).collect()
    };
    let ok = endpoint(&format!(
        "[auth]\nmethods = [\"certificate\", \"oidc\"]\n{SECTION}"
    ));
    assert_eq!(paths(&ok), Vec::<String>::new());
    assert_eq!(paths(&endpoint("[auth]\nmethods = [\"oidc\"]\n")), ["oidc"]);
    assert_eq!(paths(&endpoint(SECTION)), ["auth.methods"]);
    let with_ldap = endpoint(&format!(
        "[auth]\nmethods = [\"ldap\", \"oidc\"]\n{SECTION}"
    ));
    assert_eq!(paths(&with_ldap), ["auth.methods"]);
    let with_code = endpoint(&format!(
        "[auth]\nmethods = [\"oidc\"]\nstatic_challenge = \"Code\"\n{SECTION}"
    ));
    assert_eq!(paths(&with_code), ["auth.static_challenge"]);
}
