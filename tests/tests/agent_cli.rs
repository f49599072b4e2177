//! The `portcullis` binary end to end: `check` on good and bad files, and `portcullis run`
//! in a gateway namespace driven by the CLI (`pki`, `client-config export`, `connections`,
//! `reload`) and signals, with stock `openvpn` clients using the exported profiles unchanged.
//!
//! Needs `target/debug/portcullis` (`cargo build -p portcullis-agent`; `cargo xtask test`
//! builds it). The topology is in `tests::agent`. Every wait is bounded.
use std::time::{Duration, Instant};

use tests::agent::{
    cli, cli_ok, endpoint_toml, poll, tunnel_addr, write_atomic, AgentLab, CliPki, Output,
    COMPLETED, ENDPOINT, TAP,
};
use tests::gateway::{GW_IF, SERVER};
use tests::openvpn::{ping, TempDir};
use tests::probe::{self, mono_ns, Sender, Sink, STREAM_A};
use tests::require_root;

/// The policy part most tests run: `alice` (and `carol`) in `eng`, which may reach the
/// private network.
const ENG_ALLOWED: &str = r#"
[groups]
eng = ["alice", "carol"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]
description = "engineering reaches the private network"
"#;

/// A two-line login banner (TOML basic string: `\n` is a newline).
const BANNER: &str = "Authorized use only.\\nActivity is logged.";

/// How long a refused client gets to (wrongly) complete before we call it refused.
const REFUSED: Duration = Duration::from_secs(8);

fn check(path: &std::path::Path, json: bool) -> Output {
    let p = path.to_string_lossy();
    let mut args = vec!["check", "--config", &p];
    if json {
        args.push("--json");
    }
    cli(&args)
}

/// `check` fails and its error output names every one of `paths`.
fn assert_check_names(file: &std::path::Path, text: &str, paths: &[&str]) {
    write_atomic(file, text);
    let o = check(file, false);
    assert!(!o.success(), "check accepted a bad file:\n{text}\n{o}");
    assert!(!o.stdout.contains("valid"), "{o}");
    for p in paths {
        assert!(
            o.stderr.contains(p),
            "the error output does not name {p:?}:\n{o}"
        );
    }
}

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

/// The exported profile connects a stock client unchanged; `connections list` shows the
/// session; traffic flows through the XDP data path; `connections terminate --user` ends it.
#[test]
fn run_connect_list_terminate() {
    require_root!();
    let t0 = Instant::now();
    let policy = format!("banner = \"{BANNER}\"\n{ENG_ALLOWED}");
    let lab = AgentLab::new(1, &["alice"], &policy);
    eprintln!("agent up after {:?}", t0.elapsed());

    let profile = lab.export_profile("alice");
    for want in [
        "client",
        "remote 192.0.2.1 1194 udp",
        "remote 192.0.2.1 1194 tcp-client",
        "<ca>",
        "<cert>",
        "<key>",
        "<tls-crypt>",
        "remote-cert-tls server",
    ] {
        assert!(profile.contains(want), "profile lacks {want:?}:\n{profile}");
    }
    let client = lab.connect(0, "alice");
    eprintln!("alice connected after {:?}", t0.elapsed());
    // The banner reaches the stock client as pushed `echo` options, one per line.
    let log = client.log();
    for want in [
        "ECHO-PULL:msg Authorized use only.",
        "ECHO-PULL:msg Activity is logged.",
        "ECHO-PULL:msg-window",
    ] {
        assert!(log.contains(want), "client log lacks {want:?}:\n{log}");
    }
    let addr = tunnel_addr(lab.client_ns(0)).unwrap_or_else(|| {
        panic!(
            "no tunnel address in the client namespace\n{}",
            client.log()
        )
    });

    // The session in `connections list --json`.
    let conns = lab.connections();
    assert_eq!(conns.len(), 1, "{conns:#?}");
    let c = &conns[0];
    assert_eq!(c["user"], "alice", "{c}");
    assert_eq!(c["client_address"], addr.to_string(), "{c}");
    assert_eq!(c["transport"], "udp", "the profile lists UDP first: {c}");
    assert_eq!(c["established"], true, "{c}");
    let public = c["public_address"].as_str().unwrap_or_default();
    assert!(
        public.starts_with("192.0.2.11:"),
        "public address {public:?}, want the client's underlay address"
    );
    let id = c["id"].as_u64().expect("numeric id");

    // Traffic through the tunnel and the data path; the counters see it.
    assert!(
        ping(lab.client_ns(0), SERVER, 5, Duration::from_secs(5)),
        "no ping through the tunnel\n{}",
        client.log()
    );
    let c = poll(Duration::from_secs(3), || {
        lab.connections()
            .into_iter()
            .find(|c| c["id"] == id && c["ingress_packets"].as_u64() > Some(0))
    })
    .unwrap_or_else(|| panic!("no ingress counted: {:#?}", lab.connections()));
    assert!(c["egress_packets"].as_u64() > Some(0), "{c}");

    // Metrics and the connection log see the session.
    let m = poll(Duration::from_secs(3), || {
        let m = tests::agent::scrape_metrics(&lab.gw);
        (m.contains("portcullis_active_connections 1")
            && !m.contains("portcullis_ingress_packets_total 0"))
        .then_some(m)
    })
    .unwrap_or_else(|| panic!("metrics: {}", tests::agent::scrape_metrics(&lab.gw)));
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert!(
        m.contains("portcullis_connection_attempts_total{reason=\"successful\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_handshake_duration_seconds_count 1"),
        "{m}"
    );
    let log = std::fs::read_to_string(lab.dir.path().join("connections.log")).unwrap_or_default();
    let first: serde_json::Value =
        serde_json::from_str(log.lines().next().unwrap_or("{}")).expect("JSON connection log");
    assert_eq!(first["connection-attempt-status"], "successful", "{log}");
    assert_eq!(first["common-name"], "alice", "{log}");
    assert_eq!(first["device-ip"], addr.to_string(), "{log}");

    // The table form, and the raw admin protocol.
    let table = cli_ok(&["connections", "list", "--config", &lab.config_arg()]);
    assert!(
        table.contains("alice") && table.contains(&addr.to_string()),
        "{table}"
    );
    let v = lab
        .agent()
        .admin(&serde_json::json!({"cmd": "connections"}))
        .unwrap();
    assert_eq!(v["connections"][0]["user"], "alice", "{v}");
    let v = lab
        .agent()
        .admin(&serde_json::json!({"cmd": "bogus"}))
        .unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("bad request"),
        "{v}"
    );
    // `portcullis status`: the agent's view, with map fill levels (table and JSON).
    let out = cli_ok(&["status", "--config", &lab.config_arg(), "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(st["endpoint"], ENDPOINT, "{st}");
    assert_eq!(st["maps"]["clients"]["entries"], 1, "{st}");
    assert_eq!(st["maps"]["clients"]["capacity"], 65536, "{st}");
    assert!(
        st["maps"]["conntrack"]["entries"].as_u64() >= Some(1),
        "{st}"
    );
    assert_eq!(st["maps"]["authz_v4"]["entries"], 1, "{st}");
    let table = cli_ok(&["status", "--config", &lab.config_arg()]);
    for want in [
        "policy generation",
        "sessions           1 (1 established)",
        "maps:",
        "clients",
        "authz_v4",
    ] {
        assert!(table.contains(want), "status lacks {want:?}:\n{table}");
    }
    let st = lab.agent().status();
    assert_eq!(
        (st["sessions"].as_u64(), st["established"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );

    // Terminating somebody who is not connected fails and ends nothing.
    let o = cli(&[
        "connections",
        "terminate",
        "--config",
        &lab.config_arg(),
        "--user",
        "mallory",
    ]);
    assert!(!o.success(), "{o}");
    assert!(o.stderr.contains("no such session"), "{o}");
    assert_eq!(lab.connections().len(), 1);

    // Terminate alice: her session goes at once, and her client is told to stop (HALT).
    let out = cli_ok(&[
        "connections",
        "terminate",
        "--config",
        &lab.config_arg(),
        "--user",
        "alice",
    ]);
    assert!(out.contains(&id.to_string()), "{out}");
    let gone = poll(Duration::from_secs(3), || {
        lab.connections().is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "session still listed: {:#?}",
        lab.connections()
    );
    // No more traffic through the old session.
    assert!(
        !ping(lab.client_ns(0), SERVER, 1, Duration::from_secs(1)),
        "a terminated session still passes traffic"
    );
    // The flow log (allowed_flows = true) has alice's ping flow, started with the rule that
    // allowed it and ended with its counters once the session was cut (scanned every second).
    let flow = |event: &'static str| {
        poll(Duration::from_secs(8), || {
            let log = std::fs::read_to_string(lab.dir.path().join("flows.log")).unwrap_or_default();
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == event && v["user"] == "alice" && v["protocol"] == "icmp")
        })
        .unwrap_or_else(|| panic!("no {event} record for alice's ping in the flow log"))
    };
    let start = flow("flow-start");
    assert_eq!(start["dst"], SERVER.to_string(), "{start}");
    assert!(
        start["deciding-rule"]
            .as_str()
            .is_some_and(|r| r.starts_with("authorization") && r.contains("eng")),
        "{start}"
    );
    let end = flow("flow-end");
    assert!(end["packets-out"].as_u64() >= Some(1), "{end}");
    assert!(
        poll(Duration::from_secs(3), || client
            .log()
            .contains("Halt command was pushed by server")
            .then_some(()))
        .is_some(),
        "the terminated client was not told to stop:\n{}",
        client.log()
    );
    eprintln!("done after {:?}", t0.elapsed());
}

/// Reloads under continuous traffic: a flow that every generation allows loses nothing
/// (every datagram sent arrives), a flow a reload removes stops at once, one it adds starts
/// at once; 200 filler rules are replaced wholesale each time. One session all along.
#[test]
fn reload_under_traffic_loses_nothing_allowed() {
    require_root!();
    let t0 = Instant::now();
    let lab = AgentLab::new(1, &["alice"], &probe::probe_policy(200, 0, true));
    let client = lab.connect(0, "alice");
    // 1,000 datagrams a second per stream; bounded at 60 s.
    let (sink, sender) = probe::start_ab(&lab, Duration::from_millis(1), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", client.log()));
    let started = mono_ns();

    // B out, B in, B out; the filler rules change variant each time.
    let mut changes = Vec::new();
    for (i, allow_b) in [false, true, false].into_iter().enumerate() {
        let at = mono_ns();
        lab.write_policy(&probe::probe_policy(200, i as u32 + 1, allow_b));
        let o = lab.reload();
        assert!(o.success(), "{o}");
        // The bound below counts from the agent's answer, not from the CLI's start.
        let replied = mono_ns();
        std::thread::sleep(Duration::from_millis(1500));
        changes.push((at, replied, allow_b));
    }
    let sent = sender.stop();
    let stopped = mono_ns();
    std::thread::sleep(Duration::from_millis(500));
    let got = sink.stop();

    // A: every datagram arrived, across all three reloads.
    let a_sent = sent.streams[0].len();
    let a_lost = sent.lost_between(0, &got[0], started, stopped);
    eprintln!("stream A: {a_sent} sent, {a_lost} lost");
    assert!(a_sent > 3000, "only {a_sent} sent");
    assert_eq!(
        a_lost, 0,
        "datagrams of an allowed flow were lost across reloads"
    );

    // B: cut or admitted within a second of each reload (typically milliseconds).
    for (n, &(at, replied, allow_b)) in changes.iter().enumerate() {
        let until = changes.get(n + 1).map_or(stopped, |c| c.0);
        let settled = replied + 1_000_000_000;
        if allow_b {
            let first = got[1]
                .first_after(at)
                .expect("B never got through after it was allowed");
            eprintln!(
                "reload {n}: B admitted {:.1} ms after the file changed",
                (first - at) as f64 / 1e6
            );
            assert_eq!(
                sent.lost_between(1, &got[1], settled, until),
                0,
                "B allowed again, but datagrams sent after the reload settled were lost"
            );
        } else {
            let last = got[1].last_before(until).unwrap_or(0);
            eprintln!(
                "reload {n}: B cut {:.1} ms after the file changed",
                last.saturating_sub(at) as f64 / 1e6
            );
            assert_eq!(
                got[1].count_between(settled, until),
                0,
                "B still got through more than 1 s after the reload removed its rule"
            );
        }
    }
    assert_eq!(client.proc.log_count(COMPLETED), 1, "{}", client.log());
    eprintln!("done after {:?}", t0.elapsed());
}

/// `portcullis reload` applies a new policy to live sessions at once (no reconnect); a broken
/// file is refused with the error and the running policy stays; the admin socket reports it;
/// a change of the file alone reloads too.
#[test]
fn reload_changes_policy_live() {
    require_root!();
    let t0 = Instant::now();
    let lab = AgentLab::new(1, &["alice"], ENG_ALLOWED);
    let client = lab.connect(0, "alice");
    let ns = lab.client_ns(0);
    assert!(
        ping(ns, SERVER, 5, Duration::from_secs(5)),
        "{}",
        client.log()
    );
    let id = lab.connections()[0]["id"].clone();
    let st = lab.agent().status();
    let (gen0, reloads0) = (st["generation"].clone(), st["reloads"].as_u64());

    // alice leaves eng: her pings stop within 1 s, without a reconnect.
    lab.write_policy(&ENG_ALLOWED.replace("[\"alice\", \"carol\"]", "[\"carol\"]"));
    let o = lab.reload();
    assert!(o.success(), "{o}");
    assert!(o.stdout.contains("reloaded: policy generation"), "{o}");
    assert!(
        !ping(ns, SERVER, 2, Duration::from_secs(1)),
        "alice still reaches {SERVER} within 1 s of leaving the group"
    );
    // Same rules, so the same policy generation: only alice's group bitmap changed, and
    // the data path dropped her echo as not authorized.
    let st = lab.agent().status();
    // (The agent may also have noticed the new file by itself, before the command.)
    assert!(st["reloads"].as_u64() > reloads0, "{st}");
    assert_eq!(st["generation"], gen0, "{st}");
    assert_eq!(st["last_reload_error"], serde_json::Value::Null, "{st}");
    assert!(st["drops"]["not_authorized"].as_u64() > Some(0), "{st}");
    // The flow log names the user, the flow and the deciding rule.
    let denied = poll(Duration::from_secs(3), || {
        let log = std::fs::read_to_string(lab.dir.path().join("flows.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["user"] == "alice" && v["reason"] == "not_authorized")
    })
    .expect("a not_authorized record for alice in the flow log");
    assert_eq!(denied["dst"], SERVER.to_string(), "{denied}");
    assert_eq!(denied["protocol"], "icmp", "{denied}");
    assert!(
        denied["deciding-rule"]
            .as_str()
            .is_some_and(|r| r.contains("authorization")),
        "{denied}"
    );

    // Back in: allowed again, same session. The session limit changes too, which only a
    // restart applies: the reload says so, and `status` keeps saying it.
    lab.write_policy(&format!("max_connections = 100\n{ENG_ALLOWED}"));
    let o = lab.reload();
    assert!(o.success(), "{o}");
    assert!(
        o.stdout
            .contains("applied at the next restart of the agent: max_connections"),
        "{o}"
    );
    assert_eq!(
        lab.agent().status()["pending_restart"],
        serde_json::json!(["max_connections"])
    );
    assert!(
        ping(ns, SERVER, 5, Duration::from_secs(5)),
        "alice back in eng, but no ping"
    );
    let st = lab.agent().status();
    let (good_gen, good_reloads) = (st["generation"].clone(), st["reloads"].clone());

    // A broken file (a route to a target network that does not exist), which would also
    // have removed alice: refused with the error, the running policy stays.
    let broken = ENG_ALLOWED.replace("[\"alice\", \"carol\"]", "[\"carol\"]")
        + "\n[[route]]\ndestination = \"10.9.0.0/16\"\ntarget_network = \"nowhere\"\n";
    lab.write_policy(&broken);
    let o = lab.reload();
    assert!(!o.success(), "a broken file was accepted: {o}");
    assert!(
        o.stderr.contains("route[1].target_network") && o.stderr.contains("nowhere"),
        "the error does not say what is wrong: {o}"
    );
    assert!(
        ping(ns, SERVER, 5, Duration::from_secs(5)),
        "the old policy did not stay after a refused reload"
    );
    let st = lab.agent().status();
    let err = st["last_reload_error"].as_str().unwrap_or_default();
    assert!(err.contains("nowhere"), "status: {st}");
    assert_eq!(st["generation"], good_gen, "{st}");
    assert_eq!(
        st["reloads"], good_reloads,
        "a refused reload counted: {st}"
    );

    // Fixing the file is enough: the agent notices the change (checked every second).
    lab.write_policy(ENG_ALLOWED);
    let fixed = poll(Duration::from_secs(5), || {
        let st = lab.agent().status();
        st["last_reload_error"].is_null().then_some(st)
    });
    assert!(
        fixed.is_some(),
        "the fixed file was not reloaded: {}",
        lab.agent().status()
    );
    assert!(ping(ns, SERVER, 5, Duration::from_secs(5)));

    // All along one session: nothing reconnected.
    assert_eq!(client.proc.log_count(COMPLETED), 1, "{}", client.log());
    let conns = lab.connections();
    assert_eq!(conns.len(), 1, "{conns:#?}");
    assert_eq!(conns[0]["id"], id, "{conns:#?}");
    eprintln!("done after {:?}", t0.elapsed());
}

/// `portcullis pki revoke` → the running agent picks up the CRL within its 5 s check and
/// refuses new connections of the revoked user, while others still connect.
#[test]
fn revoked_user_cannot_reconnect() {
    require_root!();
    let t0 = Instant::now();
    let lab = AgentLab::new(2, &["alice", "bob"], ENG_ALLOWED);
    // Before: bob is connected.
    let bob = lab.connect(1, "bob");
    assert!(lab
        .connections()
        .iter()
        .any(|c| c["user"].as_str() == Some("bob")));

    let reloads = lab.agent().log_count("TLS configuration reloaded");
    let out = lab.pki.revoke("bob");
    assert!(out.contains("revoked"), "{out}");
    let revoked_at = Instant::now();
    let picked = poll(Duration::from_secs(4), || {
        (lab.agent().log_count("TLS configuration reloaded") > reloads).then_some(())
    });
    assert!(
        picked.is_some(),
        "the agent did not reload the CRL within 4 s:\n{}",
        lab.agent().log_tail(30)
    );
    eprintln!("CRL picked up {:?} after the revoke", revoked_at.elapsed());
    // The live session is cut at the reload, and the client is told to stop.
    let cut = poll(Duration::from_secs(4), || {
        (!lab
            .connections()
            .iter()
            .any(|c| c["user"].as_str() == Some("bob")))
        .then_some(())
    });
    assert!(cut.is_some(), "bob's live session survived the revocation");
    eprintln!(
        "live session cut {:?} after the revoke",
        revoked_at.elapsed()
    );
    assert!(
        poll(Duration::from_secs(3), || bob
            .log()
            .contains("Halt command was pushed by server")
            .then_some(()))
        .is_some(),
        "bob was not told to stop:\n{}",
        bob.log()
    );
    bob.proc.stop();
    drop(bob);

    let start = Instant::now();
    let bob = lab.start_client(1, "bob");
    let alice = lab.start_client(0, "alice");
    if let Err(e) = alice.wait_connected(Duration::from_secs(20)) {
        panic!("alice does not connect after bob's revocation: {e}");
    }
    let left = REFUSED.saturating_sub(start.elapsed());
    assert!(
        !bob.proc.wait_log(COMPLETED, left),
        "revoked bob connected:\n{}",
        bob.log()
    );
    assert!(!bob.log().contains(COMPLETED));
    // Refused for the right reason, on both sides.
    assert!(
        lab.agent().log().contains("client certificate is revoked"),
        "{}",
        lab.agent().log_tail(20)
    );
    assert!(
        bob.log().contains("certificate revoked"),
        "bob was not told why:\n{}",
        bob.log()
    );
    let users: Vec<String> = lab
        .connections()
        .iter()
        .filter_map(|c| c["user"].as_str().map(str::to_owned))
        .collect();
    assert!(users.contains(&"alice".to_owned()), "{users:?}");
    assert!(!users.contains(&"bob".to_owned()), "{users:?}");
    eprintln!("done after {:?}", t0.elapsed());
}

/// SIGTERM: the agent tells its clients to reconnect, exits 0 within a few seconds and leaves
/// nothing behind: no pins, no admin socket, no TAP, no XDP on the target interface.
#[test]
fn sigterm_cleans_up() {
    require_root!();
    let mut lab = AgentLab::new(1, &["alice"], ENG_ALLOWED);
    let client = lab.connect(0, "alice");
    assert!(ping(lab.client_ns(0), SERVER, 5, Duration::from_secs(5)));
    let tap_exists =
        |lab: &AgentLab| tests::sh_ok(&["ip", "-n", &lab.gw.name, "link", "show", "dev", TAP]);
    let xdp_on_target = |lab: &AgentLab| {
        let out = lab.gw.ip(&["link", "show", "dev", GW_IF]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    assert!(
        lab.pin_dir().is_dir(),
        "no pins at {}",
        lab.pin_dir().display()
    );
    assert!(lab.socket.exists());
    assert!(tap_exists(&lab), "no TAP {TAP}");
    assert!(xdp_on_target(&lab), "no XDP program on {GW_IF}");

    // An admin client that connects and says nothing must not hold up the shutdown (nor
    // anything else the agent does).
    let idle = std::os::unix::net::UnixStream::connect(&lab.socket).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    let st = lab.agent().status();
    assert_eq!(st["sessions"], 1, "{st}");

    let agent = lab.agent.take().expect("agent");
    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let st = agent.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    let log = agent.log();
    let st = st.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{log}"));
    eprintln!("exited {st:?} after {took:?}");
    assert!(st.success(), "exit status {st:?}:\n{log}");
    assert!(took < Duration::from_secs(6), "shutdown took {took:?}");
    drop(idle);
    assert!(
        !lab.pin_dir().exists(),
        "pins left at {}",
        lab.pin_dir().display()
    );
    assert!(!lab.socket.exists(), "admin socket left behind");
    assert!(!tap_exists(&lab), "TAP {TAP} left behind");
    assert!(!xdp_on_target(&lab), "XDP still attached to {GW_IF}");
    // The client was told to reconnect rather than left to time out.
    assert!(
        client.proc.wait_log(
            "Connection reset command was pushed by server",
            Duration::from_secs(5)
        ),
        "the client was not told:\n{}",
        client.log()
    );
}

/// The client-connect hook decides per connection (AWS's client-connect handler): alice is
/// allowed, bob is refused with the hook's message, which his client shows.
#[test]
fn client_connect_hook_decides() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let dir = tests::openvpn::TempDir::new("hook");
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\nin=$(cat)\ncase \"$in\" in\n  *'\"common-name\":\"bob\"'*) echo '{\"allow\":false,\"error-msg-on-denied-connection\":\"bob is on leave\"}';;\n  *) echo '{\"allow\":true}';;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = format!("client_connect = \"{}\"\n{ENG_ALLOWED}", hook.display());
    let lab = AgentLab::new(2, &["alice", "bob"], &policy);
    let _alice = lab.connect(0, "alice");
    let bob = lab.start_client(1, "bob");
    assert!(
        poll(Duration::from_secs(10), || bob
            .log()
            .contains("AUTH_FAILED")
            .then_some(()))
        .is_some(),
        "bob was not refused:\n{}",
        bob.log()
    );
    assert!(bob.log().contains("bob is on leave"), "{}", bob.log());
    assert!(!bob.log().contains(COMPLETED));
    // Bob's refused session lingers a few seconds (for AUTH_FAILED to be acked), never
    // established.
    let users: Vec<String> = lab
        .connections()
        .iter()
        .filter(|c| c["established"] == true)
        .filter_map(|c| c["user"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(users, vec!["alice".to_owned()]);
}

/// `portcullis run --keep-maps`, restarted: the pinned maps (policy, sessions, conntrack and
/// SNAT) outlive the process, the client reconnects by itself to the same address, and a TCP
/// connection opened before the restart, translated by the data path, carries on. The time to
/// full service is measured from the stop to the first probe datagram through again.
#[test]
fn restart_with_kept_maps_keeps_translated_flows() {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    require_root!();
    let mut lab = AgentLab::new_with(1, &["alice"], ENG_ALLOWED, &["--keep-maps"]);
    let client = lab.connect(0, "alice");
    let addr = tunnel_addr(lab.client_ns(0)).expect("tunnel address");

    // A TCP echo server in the private network that reports each peer it accepts.
    let (peer_tx, peer_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let net = lab.net.name.clone();
    let listener = tests::clients::run_in_ns(&net, || {
        TcpListener::bind((SERVER, 7000)).expect("bind the echo server")
    });
    let server = std::thread::spawn(move || {
        let Ok((mut s, peer)) = listener.accept() else {
            return;
        };
        let _ = peer_tx.send(peer);
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let mut buf = [0u8; 256];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let cns = lab.client_ns(0).name.clone();
    let mut conn = tests::clients::run_in_ns(&cns, || {
        TcpStream::connect_timeout(&(SERVER, 7000).into(), Duration::from_secs(5))
            .expect("connect through the tunnel")
    });
    conn.set_read_timeout(Some(Duration::from_secs(15))).ok();
    let mut echo = |msg: &[u8]| -> Result<(), String> {
        conn.write_all(msg).map_err(|e| e.to_string())?;
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).map_err(|e| e.to_string())?;
        (got == msg).then_some(()).ok_or("wrong echo".into())
    };
    echo(b"before the restart").expect("echo before the restart");
    let peer = peer_rx
        .recv_timeout(Duration::from_secs(2))
        .expect("the server saw the connection");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::from(tests::gateway::GW_NET_ADDR),
        "the flow is not translated by the data path"
    );

    let sink = Sink::start(&lab.net, &[STREAM_A.port()], 1);
    let sender = Sender::start(
        lab.client_ns(0),
        &[STREAM_A],
        Duration::from_millis(2),
        Duration::from_secs(60),
    );
    let flowing = poll(Duration::from_secs(5), || {
        (sink.snapshot()[0].packets.len() > 50).then_some(())
    });
    assert!(flowing.is_some(), "the probe does not get through");

    let stop_ns = mono_ns();
    let stopped_at = lab.restart_agent();
    let agent_up = stopped_at.elapsed();
    assert!(
        client
            .proc
            .wait_log_count(COMPLETED, 2, Duration::from_secs(30)),
        "the client did not reconnect by itself:\n{}",
        client.log()
    );
    let reconnected = stopped_at.elapsed();
    assert!(
        client
            .log()
            .contains("Connection reset command was pushed by server"),
        "{}",
        client.log()
    );
    assert_eq!(
        tunnel_addr(lab.client_ns(0)),
        Some(addr),
        "the client came back with another address"
    );
    // The translated TCP flow from before the restart still works, same connection.
    echo(b"after the restart").unwrap_or_else(|e| {
        panic!(
            "the pre-restart TCP flow broke: {e}\nagent log:\n{}",
            lab.agent().log_tail(30)
        )
    });
    // Probes through again after the restart (the old agent serves until it exits).
    let back = poll(Duration::from_secs(10), || {
        let r = &sink.snapshot()[0];
        r.longest_gap_after(stop_ns)
            .and_then(|(_, end)| (r.count_between(end, u64::MAX) > 20).then_some(()))
    });
    assert!(
        back.is_some(),
        "the probe does not get through after the restart"
    );
    let sent = sender.stop();
    std::thread::sleep(Duration::from_millis(300));
    let got = sink.stop();
    let (gap_from, gap_to) = got[0]
        .longest_gap_after(stop_ns)
        .expect("probes after the stop");
    let lost = sent.lost_between(0, &got[0], stop_ns, u64::MAX);
    assert!(
        lab.agent().log().contains("session back after a restart"),
        "{}",
        lab.agent().log_tail(30)
    );
    eprintln!(
        "restart with kept maps: new agent answering after {agent_up:?}, client reconnected \
         after {reconnected:?}; probes: none through from {:.0} ms to {:.0} ms after the stop \
         ({lost} of {} lost)",
        gap_from.saturating_sub(stop_ns) as f64 / 1e6,
        (gap_to - stop_ns) as f64 / 1e6,
        sent.streams[0].len()
    );
    drop(conn);
    let _ = server.join();
    // A clean stop without --keep-maps afterwards is not this test's business; the lab's drop
    // removes the pins either way.
}
