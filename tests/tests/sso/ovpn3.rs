//! Single sign-on with the OpenVPN 3 core client.
use super::*;

/// The OpenVPN 3 core client (`ovpncli`, as in OpenVPN Connect) signs in through the web
/// login: it announces `IV_SSO` (`--sso-methods`), writes the `WEB_AUTH` URL it gets to a
/// file (`-Z`, where Connect would open a browser), the browser completes it, and the
/// tunnel carries the provider's groups. Skipped by name without `ovpncli`.
#[test]
fn sso_with_the_openvpn3_client() {
    require_root!();
    tests::require_ovpn3!("sso_with_the_openvpn3_client");
    require_sso_tools();
    let mut idp = Idp::prepare(IDP_PORT, &callback_url(), &[ALICE]);
    let lab = AgentLab::new(1, &["unused"], &policy(&idp, r#"["oidc"]"#));
    let mut browser = launch(&mut idp, &lab);
    let browser = &mut browser;
    lab.add_net_address(OTHER);
    let p = cli_ok(&["client-config", "export", "--config", &lab.config_arg()]);
    let url_file = lab.dir.path().join("ovpn3-url");
    let c = tests::ovpn3::Ovpn3::start(
        lab.client_ns(0),
        &p,
        &[
            "--sso-methods",
            "webauth,openurl",
            "-Z",
            &url_file.to_string_lossy(),
            "-u",
            "sso",
            "-p",
            "not-checked",
        ],
    );
    let url = ovpn3_login_url(&c, &url_file, &lab);
    assert!(
        url.starts_with(&format!("https://127.0.0.1:{CALLBACK_PORT}/login/")),
        "login URL: {url}"
    );
    let (text, _) = callback_text(browser.login(&url, "alice", "alice-pw"));
    assert!(text.contains("Signed in as alice"), "{text}");
    if let Err(e) = c.wait_connected(Duration::from_secs(20)) {
        panic!("ovpncli: {e}\nagent:\n{}", lab.agent().log_tail(30));
    }
    let conns = lab.connections();
    assert!(
        conns.iter().any(
            |c| c["username"] == "alice" && c["directory_groups"] == serde_json::json!(["eng"])
        ),
        "{conns:?}"
    );
    // eng's /24 holds the test's server host, which finance's /32 hides from eng.
    assert!(
        blocked(&lab, 0, SERVER),
        "alice (eng) reached {SERVER}, finance's host"
    );
    assert!(
        reaches(&lab, 0, OTHER),
        "alice (eng) → {OTHER} through ovpncli"
    );
}
