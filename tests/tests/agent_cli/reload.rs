//! Live reloads: under continuous traffic, and policy changes that apply at once.
use super::*;

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

/// A reload that changes what new sessions are told (here the data ciphers) reaches the
/// profiles the admin API hands out (the console's and the portal's downloads), not only
/// the tunnel.
#[test]
fn profiles_follow_a_reload() {
    require_root!();
    let lab = AgentLab::new(1, &["alice"], ENG_ALLOWED);
    let profile = |lab: &AgentLab| {
        let v = lab
            .agent()
            .admin(&serde_json::json!({"v": 1, "cmd": "profile", "user": "alice"}))
            .expect("admin profile");
        v["profile"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_owned()
    };
    let before = profile(&lab);
    assert!(before.contains("data-ciphers AES-256-GCM"), "{before}");
    lab.write_policy(&format!(
        "data_ciphers = [\"CHACHA20-POLY1305\"]\n{ENG_ALLOWED}"
    ));
    let o = lab.reload();
    assert!(o.success(), "{o}");
    let after = profile(&lab);
    assert!(
        after.contains("data-ciphers CHACHA20-POLY1305\n"),
        "the profile still has the ciphers of the start:\n{after}"
    );
}
