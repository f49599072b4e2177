//! Loading, validation and the settings an endpoint file maps to.
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::*;

fn dir_with_files() -> tempdir::Dir {
    tempdir::Dir::new()
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "pc-config-test-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&p).unwrap();
            for f in ["server.crt", "server.key", "ca.crt"] {
                std::fs::write(p.join(f), "x").unwrap();
            }
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const GOOD: &str = r#"
name = "corp"
client_cidr = "10.100.0.0/22"
listen = ["udp://0.0.0.0:1194", "tcp://0.0.0.0:443"]
public_address = "vpn.example.com"
split_tunnel = true
dns_servers = ["10.0.0.2"]
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
[groups]
engineering = ["alice"]
[[target_network]]
name = "private"
interface = "eth1"
snat_address = "10.0.0.1"
[[route]]
destination = "10.0.0.0/16"
target_network = "private"
[[authorization_rule]]
destination = "10.0.0.0/16"
groups = ["engineering"]
"#;

#[test]
fn good_file_loads_and_maps_to_settings() {
    let d = dir_with_files();
    let f = d.0.join("corp.toml");
    std::fs::write(&f, GOOD).unwrap();
    let c = EndpointConfig::load(&f).unwrap();
    assert_eq!(c.gateway(), Ipv4Addr::new(10, 100, 0, 1));
    assert_eq!(
        c.listeners().unwrap(),
        vec![
            Listener::Udp("0.0.0.0:1194".parse().unwrap()),
            Listener::Tcp("0.0.0.0:443".parse().unwrap())
        ]
    );
    let s = c.server_settings();
    // Not in the file: the server's default reset limiter.
    assert_eq!(s.reset_rate, crate::openvpn::server::DEFAULT_RESET_RATE);
    assert_eq!(
        s.push.routes,
        vec!["10.0.0.0/16".parse::<Ipv4Net>().unwrap()]
    );
    assert!(!s.push.full_tunnel);
    assert_eq!(s.push.session_timeout, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(c.tls.cert, d.0.join("server.crt"));
    let p = c.policy();
    assert_eq!(p.local_groups_of("alice"), vec!["engineering".to_owned()]);
    assert_eq!(c.admin_socket(), PathBuf::from("/run/portcullis/corp.sock"));
    // A relative admin socket is relative to the file, as every other path.
    std::fs::write(&f, format!("admin_socket = \"corp.sock\"\n{GOOD}")).unwrap();
    let c = EndpointConfig::load(&f).unwrap();
    assert_eq!(c.admin_socket(), d.0.join("corp.sock"));
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let d = dir_with_files();
    let f = d.0.join("bad.toml");
    let bad = GOOD
        .replace("name = \"corp\"", "name = \"bad name!\"")
        .replace("udp://0.0.0.0:1194", "0.0.0.0:1194")
        .replace("tcp://0.0.0.0:443", "sctp://0.0.0.0:443")
        .replace("client_ca = \"ca.crt\"", "client_ca = \"missing.crt\"")
        .replace("10.100.0.0/22", "10.0.0.0/22")
        + "data_ciphers = [\"BF-CBC\"]\nsession_timeout_hours = 5\n";
    // Top-level keys must precede tables in TOML: put them first.
    let (head, tail) = bad.split_at(bad.find("[tls]").unwrap());
    let extra = "data_ciphers = [\"BF-CBC\"]\nsession_timeout_hours = 5\n";
    let text = format!("{head}{extra}{}", tail.replace(extra, ""));
    std::fs::write(&f, text).unwrap();
    let e = EndpointConfig::load(&f).unwrap_err();
    let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "name",
        "listen[0]",
        "listen[1]",
        "data_ciphers[0]",
        "session_timeout_hours",
        "tls.client_ca",
        "route[0].destination",
    ] {
        assert!(paths.contains(&want), "{want} missing in {e}");
    }
}

/// The cross-field rules of authentication: each names its field.
#[test]
fn auth_errors_name_their_fields() {
    let d = dir_with_files();
    let f = d.0.join("auth.toml");
    let check = |top: &str, tables: &str| -> Vec<String> {
        let (head, tail) = GOOD.split_at(GOOD.find("[tls]").unwrap());
        std::fs::write(&f, format!("{top}{head}{tail}{tables}")).unwrap();
        match EndpointConfig::load(&f) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.path).collect(),
        }
    };
    let dir =
        "[directory]\nurl = \"ldap://127.0.0.1:389\"\nuser_dn_template = \"uid={username},dc=x\"\n";
    assert_eq!(
        check("", &format!("[auth]\nmethods = [\"ldap\"]\n{dir}")),
        Vec::<String>::new()
    );
    assert_eq!(check("", "[auth]\nmethods = [\"ldap\"]\n"), ["directory"]);
    assert_eq!(check("", dir), ["auth.methods"]);
    assert_eq!(check("", "[auth]\nmethods = []\n"), ["auth.methods"]);
    assert_eq!(
        check(
            "",
            &format!("[auth]\nmethods = [\"ldap\"]\nstatic_challenge = \"Code\"\n{dir}")
        ),
        ["auth.static_challenge", "auth.static_challenge"]
    );
    // A TOTP secret read with the user's own bind is readable with the password alone.
    let totp = "[auth]\nmethods = [\"ldap\"]\nstatic_challenge = \"Code\"\n";
    assert_eq!(
        check(
            "",
            &format!("{totp}{dir}totp_secret_attribute = \"pcTotpSecret\"\n")
        ),
        ["auth.static_challenge"]
    );
    let svc = format!(
        "[directory]\nurl = \"ldap://127.0.0.1:389\"\nbind_dn = \"cn=svc\"\nbind_password_file = \"{}\"\nuser_base = \"dc=x\"\ntotp_secret_attribute = \"pcTotpSecret\"\n",
        f.display()
    );
    assert_eq!(check("", &format!("{totp}{svc}")), Vec::<String>::new());
    assert_eq!(
        check("", "[auth]\nusername_must_match_cn = true\n"),
        ["auth.username_must_match_cn"]
    );
    assert_eq!(
        check(
            "client_connect_url = \"ftp://x\"\nclient_connect_timeout_secs = 0\n",
            ""
        ),
        ["client_connect_url", "client_connect_timeout_secs"]
    );
    assert_eq!(
        check(
            "tcp_handshake_timeout_secs = 0\ntcp_idle_timeout_secs = 3601\n",
            ""
        ),
        ["tcp_handshake_timeout_secs", "tcp_idle_timeout_secs"]
    );
    assert_eq!(
        check(
            "handshake_rate_per_second = 0\nhandshake_burst = 1000001\n",
            ""
        ),
        ["handshake_rate_per_second", "handshake_burst"]
    );
    // Directory-only makes the client certificate optional in TLS; with certificates not.
    std::fs::write(&f, format!("{GOOD}[auth]\nmethods = [\"ldap\"]\n{dir}")).unwrap();
    assert!(
        EndpointConfig::load(&f)
            .unwrap()
            .tls_options()
            .client_cert_optional
    );
    std::fs::write(&f, GOOD).unwrap();
    assert!(
        !EndpointConfig::load(&f)
            .unwrap()
            .tls_options()
            .client_cert_optional
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = EndpointConfig::parse("name = \"x\"\nclient_cidr = 5\n").unwrap_err();
    assert!(e.0[0].path.starts_with("line 2"), "{e}");
    let e = EndpointConfig::parse("name = \"x\"\nbogus = 1\n").unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    // The field path of the bad value, from the table headers above it.
    let bad = GOOD.replace(
        "destination = \"10.0.0.0/16\"\ntarget",
        "destination = \"10.0.0.0/33\"\ntarget",
    );
    let e = EndpointConfig::parse(&bad).unwrap_err();
    assert!(e.0[0].path.ends_with(", route[0].destination"), "{e}");
    let e = EndpointConfig::parse(&GOOD.replace("10.100.0.0/22", "10.100.0.0/x")).unwrap_err();
    assert!(e.0[0].path.ends_with(", client_cidr"), "{e}");
    // A missing field is reported on its table's header line: that table, not the one
    // above it.
    let e = EndpointConfig::parse(&GOOD.replace("name = \"private\"\n", "")).unwrap_err();
    assert!(e.0[0].path.ends_with(", target_network[0]"), "{e}");
    assert!(e.to_string().contains("`name`"), "{e}");
}

#[test]
fn snat_address_defaults_to_the_interface_address() {
    let text = GOOD
        .replace("interface = \"eth1\"", "interface = \"lo\"")
        .replace("snat_address = \"10.0.0.1\"\n", "");
    let c = EndpointConfig::parse(&text).unwrap();
    assert_eq!(c.target_network[0].snat_address, None);
    assert_eq!(
        c.policy().target_networks[0].snat_address,
        Ipv4Addr::LOCALHOST
    );
    assert_eq!(interface_ipv4("no-such-if0"), None);
}

/// `portcullis check` away from the gateway (another machine, or outside its network
/// namespace) cannot take the SNAT address from the interface: it says so, and not that
/// `0.0.0.0` cannot be a source address, which is what the compiler sees.
#[test]
fn snat_address_from_an_interface_that_is_not_here() {
    let d = dir_with_files();
    let text = GOOD
        .replace("interface = \"eth1\"", "interface = \"pc-absent0\"")
        .replace("snat_address = \"10.0.0.1\"\n", "");
    let mut c = EndpointConfig::parse(&text).unwrap();
    c.resolve_paths(&d.0);
    let file = c.validate().unwrap_err().0;
    assert_eq!(file.len(), 1, "{file:?}");
    assert_eq!(file[0].path, "target_network[0].snat_address");
    assert!(
        file[0].message.contains("`pc-absent0` does not exist here")
            && file[0].message.contains("set snat_address"),
        "{}",
        file[0]
    );
    // As `check` compiles it: every interface resolves.
    let compiler: Vec<String> = crate::policy::compile(&c.policy(), &|_| Some(1))
        .unwrap_err()
        .iter()
        .map(|e| endpoint_paths(&e.to_string()))
        .collect();
    assert!(compiler
        .iter()
        .any(|e| e.contains("0.0.0.0 cannot be a source address")));
    assert_eq!(merge_reports(&file, &compiler), vec![file[0].to_string()]);
}

#[test]
fn compiler_paths_are_spelled_as_in_the_file() {
    assert_eq!(
        endpoint_paths("routes[1].target_network: no target network is named `x`: use one of [`a`] or add it to target_networks"),
        "route[1].target_network: no target network is named `x`: use one of [`a`] or add a [[target_network]]"
    );
    assert_eq!(
        endpoint_paths(
            "applied_security_groups[0] and security_groups[2].name and authorization_rules[3]"
        ),
        "applied_security_groups[0] and security_group[2].name and authorization_rule[3]"
    );
}

#[test]
fn the_documented_example_parses_and_compiles() {
    let text = include_str!("../../../docs/example-endpoint.toml");
    let c = EndpointConfig::parse(text).unwrap();
    assert!(c.listeners().is_ok());
    assert_eq!(c.ciphers().unwrap().len(), 2);
    crate::policy::compile(&c.policy(), &|_| Some(1)).unwrap();
}

#[test]
fn tls_crypt_v2_options_are_checked() {
    let d = dir_with_files();
    let key = crate::openvpn::tls_crypt_v2::ServerKey::from_bytes([7; 128]);
    std::fs::write(d.0.join("v2.key"), key.to_pem()).unwrap();
    std::fs::write(d.0.join("bad-v2.key"), "not a key").unwrap();
    let with = |extra: &str| {
        let f = d.0.join("v2.toml");
        std::fs::write(
            &f,
            GOOD.replace(
                "client_ca = \"ca.crt\"",
                &format!("client_ca = \"ca.crt\"\n{extra}"),
            ),
        )
        .unwrap();
        EndpointConfig::load(&f)
    };
    let c = with("tls_crypt_v2_server_key = \"v2.key\"\ntls_crypt_v2_max_age_days = 30").unwrap();
    assert_eq!(c.tls.tls_crypt_v2_server_key, Some(d.0.join("v2.key")));
    assert_eq!(c.tls.tls_crypt_v2_max_age_days, Some(30));
    let paths = |e: ConfigErrors| e.0.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
    let e = with("tls_crypt_v2_server_key = \"bad-v2.key\"").unwrap_err();
    assert_eq!(paths(e), ["tls.tls_crypt_v2_server_key"]);
    let e =
        with("tls_crypt_v2_server_key = \"v2.key\"\ntls_crypt_v2_max_age_days = 0").unwrap_err();
    assert_eq!(paths(e), ["tls.tls_crypt_v2_max_age_days"]);
    let e = with("tls_crypt_v2_max_age_days = 3").unwrap_err();
    assert_eq!(paths(e), ["tls.tls_crypt_v2_max_age_days"]);
}

/// `[tls] pki_dir`: relative to the file; its CA must issue the clients and its CRL be
/// checked, or the file is refused naming `tls.pki_dir`.
#[test]
fn pki_dir_is_checked_against_the_crl_and_client_ca() {
    let d = dir_with_files();
    let pki = d.0.join("pki");
    crate::pki::store::PkiDir::new(&pki)
        .init("Config CA", 30)
        .unwrap();
    let with = |tls: &str| {
        let f = d.0.join("pki.toml");
        let text = GOOD.replace("client_ca = \"ca.crt\"", tls);
        std::fs::write(&f, text).unwrap();
        EndpointConfig::load(&f)
    };
    let good = "client_ca = \"pki/ca.crt\"\ncrl = [\"pki/crl.pem\"]\npki_dir = \"pki\"";
    let c = with(good).unwrap();
    assert_eq!(c.tls.pki_dir, Some(pki.clone()));
    let e = with("client_ca = \"pki/ca.crt\"\npki_dir = \"pki\"").unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].path, "tls.pki_dir");
    assert!(e.0[0].message.contains("crl.pem is not in tls.crl"), "{e}");
    let e = with("client_ca = \"ca.crt\"\ncrl = [\"pki/crl.pem\"]\npki_dir = \"pki\"").unwrap_err();
    assert!(e.0[0].message.contains("not in tls.client_ca"), "{e}");
    let e = with("client_ca = \"ca.crt\"\npki_dir = \"nowhere\"").unwrap_err();
    assert!(e.0[0].message.contains("pki init"), "{e}");
}

/// `[fleet]`: absent means standalone; present, its paths are relative to the file and its
/// problems carry `fleet.` paths next to the rest of the file's.
#[test]
fn fleet_section_loads_and_reports_with_paths() {
    let d = dir_with_files();
    let f = d.0.join("fleet.toml");
    std::fs::write(&f, GOOD).unwrap();
    assert_eq!(EndpointConfig::load(&f).unwrap().fleet, None);
    std::fs::write(d.0.join("etcd-ca.pem"), "x").unwrap();
    let good = format!(
        "{GOOD}[fleet]\nendpoints = [\"https://10.0.0.5:2379\"]\ngateway_id = \"gw-a\"\n\
         ca_file = \"etcd-ca.pem\"\n"
    );
    std::fs::write(&f, &good).unwrap();
    let c = EndpointConfig::load(&f).unwrap();
    let fleet = c.fleet.clone().unwrap();
    assert_eq!(fleet.ca_file, Some(d.0.join("etcd-ca.pem")));
    assert_eq!(fleet.lease_ttl_secs, 10);
    // Joining or leaving a fleet is not a live reload.
    std::fs::write(&f, GOOD).unwrap();
    let standalone = EndpointConfig::load(&f).unwrap();
    assert_eq!(restart_only_changes(&standalone, &c), vec!["fleet"]);
    let bad = good
        .replace("https://10.0.0.5:2379", "10.0.0.5:2379")
        .replace("gw-a", "gw/a");
    std::fs::write(&f, bad).unwrap();
    let e = EndpointConfig::load(&f).unwrap_err();
    let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["fleet.endpoints[0]", "fleet.gateway_id"], "{e}");
}

/// The shared part round-trips through its stored text, and merging it into another
/// gateway's file replaces the policy and pushed options but no host setting.
#[test]
fn shared_part_round_trips_and_merges_without_host_settings() {
    let d = dir_with_files();
    let f = d.0.join("corp.toml");
    std::fs::write(&f, GOOD).unwrap();
    let published = EndpointConfig::load(&f).unwrap();
    let shared = published.shared();
    assert_eq!(SharedConfig::from_text(&shared.to_text()).unwrap(), shared);

    let local_text = GOOD
        .replace("udp://0.0.0.0:1194", "udp://0.0.0.0:1195")
        .replace("snat_address = \"10.0.0.1\"", "snat_address = \"10.0.0.9\"")
        .replace("engineering = [\"alice\"]", "engineering = [\"bob\"]")
        .replace("split_tunnel = true", "split_tunnel = false");
    std::fs::write(&f, local_text).unwrap();
    let local = EndpointConfig::load(&f).unwrap();
    let merged = local.clone().with_shared(shared.clone()).unwrap();
    // Shared: from the publish.
    assert_eq!(merged.groups, published.groups);
    assert!(merged.split_tunnel);
    assert_eq!(merged.authorization_rule, published.authorization_rule);
    // Host-local: from this gateway's file.
    assert_eq!(merged.listen, local.listen);
    assert_eq!(merged.target_network, local.target_network);
    assert_eq!(merged.tls, local.tls);
    // What remains different is only what a live reload applies.
    assert!(restart_only_changes(&local, &merged).is_empty());
    // The merge is checked as a file: it is valid here.
    merged.validate().unwrap();

    // A part published for another endpoint is refused.
    let other = SharedConfig {
        name: "other".into(),
        ..shared
    };
    let e = local.with_shared(other).unwrap_err();
    assert!(e.to_string().contains("\"other\""), "{e}");
}

/// Keepalive and renegotiation come from the file and reach both listeners' sessions; a
/// timeout that one lost ping would trip is refused with both fields named.
#[test]
fn keepalive_and_renegotiation_settings() {
    let d = dir_with_files();
    let f = d.0.join("keepalive.toml");
    let (head, tail) = GOOD.split_at(GOOD.find("[tls]").unwrap());
    let with = |extra: &str| {
        std::fs::write(&f, format!("{head}{extra}\n{tail}")).unwrap();
        EndpointConfig::load(&f)
    };
    let cfg =
        with("keepalive_interval_secs = 5\nkeepalive_timeout_secs = 20\nrenegotiate_secs = 0")
            .unwrap();
    let s = cfg.server_settings();
    for t in [&s.udp, &s.tcp] {
        assert_eq!(t.ping, Duration::from_secs(5));
        assert_eq!(t.ping_restart, Duration::from_secs(20));
        assert_eq!(t.reneg.interval, None);
    }
    // The stateless-reset limiter comes from the file too.
    let s = with("handshake_rate_per_second = 5000\nhandshake_burst = 8000")
        .unwrap()
        .server_settings();
    assert_eq!(s.reset_rate, (5000, 8000));
    let s = with("").unwrap().server_settings();
    assert_eq!(
        (s.udp.ping, s.udp.ping_restart, s.udp.reneg.interval),
        (
            Duration::from_secs(10),
            Duration::from_secs(60),
            Some(Duration::from_secs(3600))
        )
    );
    let e = with("keepalive_interval_secs = 30\nkeepalive_timeout_secs = 45").unwrap_err();
    assert!(
        e.0.iter().any(|e| e.path == "keepalive_timeout_secs"
            && e.message.contains("twice")
            && e.message.contains("keepalive_interval_secs = 30")),
        "{e}"
    );
    let e = with("keepalive_interval_secs = 0").unwrap_err();
    assert!(
        e.0.iter().any(|e| e.path == "keepalive_interval_secs"),
        "{e}"
    );
}
