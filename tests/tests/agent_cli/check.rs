//! `portcullis check` error reports and the PKI command's file safety.
use super::*;

#[test]
fn check_reports_every_error_class() {
    // No root needed: check only reads files.
    let dir = TempDir::new("check");
    let _pki = CliPki::new(&dir.path().join("pki"), &["alice"]);
    let file = dir.path().join("endpoint.toml");
    let good = endpoint_toml(ENG_ALLOWED);

    // A good file: "valid" and a summary; --json is JSON with the same facts.
    write_atomic(&file, &good);
    let o = check(&file, false);
    assert!(o.success(), "{o}");
    assert!(o.stdout.contains(": valid"), "{o}");
    assert!(o.stdout.contains(ENDPOINT), "{o}");
    let o = check(&file, true);
    assert!(o.success(), "{o}");
    let v: serde_json::Value =
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("--json: {e}\n{o}"));
    assert_eq!(v["endpoint"], ENDPOINT, "{v}");
    assert_eq!(v["client_cidr"], "10.100.0.0/24", "{v}");
    assert_eq!(v["target_networks"], serde_json::json!(["private"]), "{v}");
    assert_eq!(v["routes"], 2, "the route and client-to-client: {v}");
    assert_eq!(v["authorization_prefixes"], 1, "{v}");
    assert_eq!(v["groups_in_rules"], 1, "{v}");
    assert_eq!(v["listeners"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");

    // A group a rule names but no local group defines is accepted: it may come from the
    // directory (as in AWS, where rules name directory groups).
    write_atomic(
        &file,
        &good.replace("groups = [\"eng\"]", "groups = [\"engg\"]"),
    );
    let o = check(&file, false);
    assert!(
        o.success(),
        "an unknown group in a rule must be accepted: {o}"
    );

    // Every class at once, from the file's checks and the policy compiler together: bad
    // listeners, an unsupported cipher, a bad session timeout, missing files, duplicate
    // names, a route to an unknown target network, a route inside the pool, a rule that
    // allows nobody, an unknown applied security group, reversed ports.
    let head = good
        .replace(
            "listen = [\"udp://192.0.2.1:1194\", \"tcp://192.0.2.1:1194\"]",
            "listen = [\"udp://192.0.2.1:1194\", \"sctp://192.0.2.1:1194\", \"192.0.2.1:1194\"]\n\
             data_ciphers = [\"AES-256-GCM\", \"BF-CBC\"]\n\
             session_timeout_hours = 5\n\
             applied_security_groups = [\"web\", \"nope\"]",
        )
        .replace("pki/server.key", "pki/missing.key")
        .replace("pki/crl.pem", "pki/no-crl.pem");
    let bad = format!(
        r#"{head}
[[target_network]]
name = "private"
interface = "{GW_IF}"
snat_address = "10.0.0.1"

[[target_network]]
name = "local"
interface = "lo"

[[route]]
destination = "10.1.0.0/16"
target_network = "privat"

[[route]]
destination = "10.100.0.128/25"
target_network = "private"

[[authorization_rule]]
destination = "10.0.0.0/25"
all_users = false

[[security_group]]
name = "web"
egress = [{{ protocol = "tcp", from_port = 443, to_port = 80, destination = "10.0.0.0/24" }}]

[[security_group]]
name = "web"
egress = []
"#
    );
    assert_check_names(
        &file,
        &bad,
        &[
            "listen[1]",
            "sctp",
            "listen[2]",
            "data_ciphers[1]",
            "BF-CBC",
            "session_timeout_hours",
            "tls.key",
            "missing.key",
            "tls.crl[0]",
            "target_network[1].name",
            // No snat_address: the interface's address, here loopback's, which is refused.
            "target_network[2].snat_address",
            "127.0.0.1",
            "route[1].target_network",
            "privat",
            "[2].destination",
            "10.100.0.128/25",
            "authorization_rule[1].groups",
            "applied_security_groups[1]",
            "nope",
            "security_group[0].egress[0].from_port",
            "security_group[1].name",
        ],
    );

    // Syntax-level errors stop at the first one, but name the line and the field.
    for (what, text, paths) in [
        (
            "bad pool CIDR",
            good.replace("10.100.0.0/24", "10.100.0.0/33"),
            vec!["line 2", "client_cidr"],
        ),
        (
            "bad route CIDR",
            good.replace(
                "destination = \"10.0.0.0/24\"\ntarget",
                "destination = \"10.0.0.0/40\"\ntarget",
            ),
            vec!["route[0].destination", "invalid"],
        ),
        (
            "bad rule CIDR",
            good.replace(
                "destination = \"10.0.0.0/24\"\ngroups",
                "destination = \"10.0.0.300/24\"\ngroups",
            ),
            vec!["authorization_rule[0].destination"],
        ),
        (
            "unknown field",
            good.replace("split_tunnel = true", "split_tunnel = true\nbogus = 1"),
            vec!["bogus"],
        ),
    ] {
        eprintln!("check: {what}");
        assert_check_names(&file, &text, &paths);
    }
    // Host bits set: the compiler says what to write instead.
    assert_check_names(
        &file,
        &good.replace(
            "destination = \"10.0.0.0/24\"\ntarget",
            "destination = \"10.0.0.1/24\"\ntarget",
        ),
        &["route[0].destination", "10.0.0.0/24"],
    );
    // A file that does not exist.
    let missing = dir.path().join("nope.toml");
    let o = check(&missing, false);
    assert!(!o.success(), "{o}");
    assert!(o.stderr.contains("nope.toml"), "{o}");
}

/// `portcullis pki`: a CN never clobbers the CA or escapes the directory; a revocation lands
/// in `index.json` and a new `crl.pem`; a second `init` refuses to overwrite the CA.
#[test]
fn pki_cli_keeps_the_ca_safe() {
    let dir = TempDir::new("pkicli");
    let pki = CliPki::new(&dir.path().join("pki"), &["alice"]);
    let d = pki.dir.to_string_lossy().into_owned();
    let read = |f: &str| std::fs::read(pki.dir.join(f)).unwrap_or_default();
    let (ca_key, ca_crt) = (read("ca.key"), read("ca.crt"));
    for cn in ["ca", "../escaped", "", ".hidden", "a/b"] {
        let o = cli(&["pki", "issue-client", "--dir", &d, "--cn", cn]);
        assert!(!o.success(), "issue-client --cn {cn:?} was accepted: {o}");
        let o = cli(&["pki", "issue-server", "--dir", &d, "--cn", cn]);
        assert!(!o.success(), "issue-server --cn {cn:?} was accepted: {o}");
    }
    assert!(!dir.path().join("escaped.crt").exists());
    assert_eq!(read("ca.key"), ca_key, "the CA key was overwritten");
    assert_eq!(read("ca.crt"), ca_crt, "the CA certificate was overwritten");
    let o = cli(&["pki", "init", "--dir", &d]);
    assert!(!o.success() && o.stderr.contains("refusing"), "{o}");
    assert_eq!(read("ca.key"), ca_key, "init overwrote the CA key");

    // Revocation: unknown names fail, known ones land in index.json and a new crl.pem.
    let o = cli(&["pki", "revoke", "--dir", &d, "--cn", "mallory"]);
    assert!(!o.success() && o.stderr.contains("mallory"), "{o}");
    let crl = read("crl.pem");
    pki.revoke("alice");
    let index: serde_json::Value =
        serde_json::from_slice(&read("index.json")).expect("index.json is JSON");
    assert_eq!(
        index["revoked"], index["issued"]["alice"],
        "alice's serials are not all revoked: {index}"
    );
    assert_ne!(read("crl.pem"), crl, "crl.pem was not regenerated");
    assert!(String::from_utf8_lossy(&read("crl.pem")).contains("BEGIN X509 CRL"));
}
