//! `cargo xtask bench fleet`: what a fleet of gateways costs and how fast it reacts.
//!
//! - `publish`: three `portcullis run` gateways (`tests::fleet::FleetLab`, a three-member
//!   etcd); `fleet publish` (the CLI, as an operator runs it) N times; for each gateway, the
//!   time from the start of the command until its `status` reports the new revision (applied
//!   through its live reload). An upper bound: it includes the CLI's start and its checks.
//! - `registry`: 10,000 emulated sessions spread over three fleet members (`registry.rs`):
//!   registry writes per second and etcd requests per session to connect, refresh the
//!   counters once, and disconnect.
//! - `failover`: one stock client with the exported profile; its gateway is SIGKILLed; the
//!   time until it passes traffic through another gateway, and until the dead gateway's
//!   sessions are gone from the registry.
//!
//! Writes `<out>/fleet.json`, `.md` and `.svg`.
mod registry;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tests::{
    agent::{poll, COMPLETED},
    benchreport::{self, Plot, Series, COLORS},
    fleet::{gateway_addresses, FleetLab},
    gateway::SERVER,
    openvpn::ping,
};

struct Settings {
    quick: bool,
    publishes: usize,
    sessions: usize,
    out: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Settings> {
    let mut s = Settings {
        quick: false,
        publishes: 20,
        sessions: 10_000,
        out: PathBuf::from("target/bench"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                s.quick = true;
                s.publishes = 3;
                s.sessions = 300;
            }
            "--out" => s.out = PathBuf::from(it.next().context("--out needs a directory")?),
            "--help" | "-h" => {
                println!("bench-fleet [--quick] [--out DIR]: publish-to-enforced latency, registry load, failover time");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(s)
}

fn main() -> ExitCode {
    if !tests::is_root() {
        eprintln!("bench-fleet: error: needs root (network namespaces, XDP)");
        return ExitCode::FAILURE;
    }
    let argv: Vec<String> = std::env::args().collect();
    match parse_args(&argv[1..]).and_then(|s| run(&s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-fleet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

const POLICY: &str = r#"
[groups]
eng = ["alice"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]
"#;
const PING_RESTART_SECS: u64 = 5;

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let p = |q: f64| {
        s.get(((s.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    json!({"p50": p(0.5), "p90": p(0.9), "max": s.last(), "samples": v})
}

fn run(s: &Settings) -> Result<()> {
    let machine = benchreport::machine();
    let policy = format!(
        "keepalive_interval_secs = 1\nkeepalive_timeout_secs = {PING_RESTART_SECS}\n{}{POLICY}",
        gateway_addresses(3)
    );
    eprintln!("bench-fleet: three gateways, three etcd members");
    let mut lab = FleetLab::new(3, 3, &["alice"], &policy);

    // publish → enforced on every gateway
    let mut per_gw: Vec<Vec<f64>> = vec![Vec::new(); lab.gateways.len()];
    for _ in 0..s.publishes {
        let (revision, started) = lab.publish(&policy);
        let mut pending: Vec<usize> = (0..lab.gateways.len()).collect();
        while !pending.is_empty() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("revision {revision} not applied everywhere within 30 s");
            }
            pending.retain(|&i| {
                let st = lab.gateways[i].fleet_status();
                if st["revision"] == revision {
                    per_gw[i].push(started.elapsed().as_secs_f64() * 1e3);
                    false
                } else {
                    true
                }
            });
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let publish = json!({
        "publishes": s.publishes,
        "gateways": lab.gateways.iter().zip(&per_gw).map(|(g, ms)| json!({
            "gateway": g.id, "ms": stats(ms),
        })).collect::<Vec<_>>(),
    });

    // failover
    let alice = lab.connect("alice");
    if !ping(&lab.client, SERVER, 3, Duration::from_secs(5)) {
        bail!("no traffic before the kill:\n{}", alice.log());
    }
    let on = poll(Duration::from_secs(5), || {
        lab.gateways[0]
            .connections()
            .iter()
            .find(|c| c["user"] == "alice")
            .and_then(|c| c["gateway"].as_str().map(str::to_owned))
    })
    .context("alice not in the registry")?;
    let dead = lab.index_of(&on);
    // The registry as etcd holds it (a gateway's `connections list` falls back to its own
    // sessions whenever its etcd client is reconnecting).
    let rt = tokio::runtime::Runtime::new()?;
    let mut etcd = rt.block_on(portcullis::fleet::connect(&lab.etcd.fleet_section("probe")))?;
    let sessions_of = portcullis::fleet::Keys::new(tests::agent::ENDPOINT).sessions_of(&on);
    let count = |etcd: &mut etcd_client::Client| {
        rt.block_on(
            etcd.get(
                sessions_of.as_str(),
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_count_only(),
                ),
            ),
        )
        .map(|r| r.count())
        .unwrap_or(-1)
    };
    // Registered before the kill (within a second of the connect).
    poll(Duration::from_secs(5), || {
        (count(&mut etcd) == 1).then_some(())
    })
    .context("alice's session never registered")?;
    lab.gateways[dead].kill();
    let killed = Instant::now();
    let mut registry_clean = None;
    let mut traffic = None;
    while (registry_clean.is_none() || traffic.is_none())
        && killed.elapsed() < Duration::from_secs(60)
    {
        let left = count(&mut etcd);
        if registry_clean.is_none() && left == 0 {
            registry_clean = Some(killed.elapsed().as_secs_f64());
        }
        if traffic.is_none()
            && alice.log().matches(COMPLETED).count() >= 2
            && ping(&lab.client, SERVER, 1, Duration::from_millis(300))
        {
            traffic = Some(killed.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let failover = json!({
        "pushed_ping_restart_secs": PING_RESTART_SECS,
        "profile_server_poll_timeout_secs": 4,
        "lease_ttl_secs": 3,
        "traffic_again_secs": traffic,
        "registry_clean_secs": registry_clean,
    });
    drop(alice);
    drop(lab);

    eprintln!(
        "bench-fleet: {} emulated sessions on three members",
        s.sessions
    );
    let registry = registry::run(s.sessions, 3)?;

    let report = json!({
        "suite": "fleet",
        "quick": s.quick,
        "command": std::env::var("PORTCULLIS_BENCH_COMMAND").unwrap_or_else(|_| "bench-fleet".into()),
        "machine": machine,
        "publish": publish,
        "registry": registry,
        "failover": failover,
    });
    benchreport::write_suite_reports(&s.out, "fleet", &report, true, markdown, svg)?;
    // The written one: its provenance is complete (load average after the run).
    print!("{}", std::fs::read_to_string(s.out.join("fleet.md"))?);
    Ok(())
}

fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
}

fn markdown(r: &Value) -> String {
    let mut m = String::from("# Fleet\n\n");
    if r["quick"] == true {
        m.push_str("`--quick`: figures not meaningful.\n\n");
    }
    m.push_str(&format!(
        "{}\n\n",
        benchreport::provenance_line(&r["machine"])
    ));
    m.push_str("## Publish to enforced (ms, from the start of `fleet publish`)\n\n| gateway | p50 | p90 | max |\n|---|---|---|---|\n");
    for g in r["publish"]["gateways"].as_array().into_iter().flatten() {
        m.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            g["gateway"].as_str().unwrap_or("?"),
            num(&g["ms"]["p50"]),
            num(&g["ms"]["p90"]),
            num(&g["ms"]["max"])
        ));
    }
    let reg = &r["registry"];
    m.push_str(&format!(
        "\n## Registry: {} emulated sessions on {} gateways, {} etcd members\n\nIdle fleet: {} etcd requests/s.\n\n| phase | seconds | writes/s | etcd requests per session |\n|---|---|---|---|\n",
        reg["sessions"], reg["gateways"], reg["etcd_members"], num(&reg["idle_etcd_requests_per_sec"])
    ));
    for phase in ["connect", "refresh", "disconnect"] {
        let p = &reg[phase];
        m.push_str(&format!(
            "| {phase} | {} | {} | {} |\n",
            num(&p["secs"]),
            num(&p["writes_per_sec"]),
            num(&p["etcd_requests_per_session"])
        ));
    }
    let f = &r["failover"];
    m.push_str(&format!(
        "\n## Failover (SIGKILL of the client's gateway)\n\nTraffic again after {} s (pushed ping-restart {} s, profile server-poll-timeout {} s); the dead gateway's sessions gone from the registry after {} s (lease TTL {} s).\n",
        num(&f["traffic_again_secs"]),
        f["pushed_ping_restart_secs"],
        f["profile_server_poll_timeout_secs"],
        num(&f["registry_clean_secs"]),
        f["lease_ttl_secs"]
    ));
    m
}

fn svg(r: &Value) -> String {
    let series = r["publish"]["gateways"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, g)| Series {
            name: g["gateway"].as_str().unwrap_or("?").to_string(),
            color: COLORS[i % COLORS.len()],
            points: g["ms"]["samples"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(n, v)| Some((n as f64 + 1.0, v.as_f64()?)))
                .collect(),
        })
        .collect();
    let plot = Plot {
        title: "fleet publish → enforced, per gateway".into(),
        x_label: "publish #".into(),
        y_label: "ms".into(),
        log_x: false,
        log_y: false,
        series,
        note: (r["quick"] == true).then(|| "--quick: figures not meaningful".into()),
    };
    benchreport::svg_grid(&[plot], 1, 640.0, 400.0)
}
