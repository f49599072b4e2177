//! `portcullis status`: what an endpoint is doing, from the agent or read from its pins.
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::admin::StatusReply;
use crate::datapath::Maps;

/// The data path alone, from its pinned maps (works while the agent is down).
pub fn print(dir: &Path, as_json: bool) -> Result<()> {
    let maps = Maps::open_pinned(dir).with_context(|| {
        format!(
            "opening the pinned maps in {} (is the endpoint running, and is this the right --endpoint/--pin-root?)",
            dir.display()
        )
    })?;
    let generation = maps.active_generation()?;
    let drops = maps.drop_counters()?;
    let events = maps.event_counters()?;
    let flows = maps.ct_entries()?;
    if as_json {
        let v = json!({
            "pins": dir.display().to_string(),
            "policy_generation": generation,
            "flows": flows.len(),
            "drops": drops.iter().map(|(r, n)| (r.name(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "events": events.iter().map(|(e, n)| (e.name(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("pins               {}", dir.display());
    println!("policy generation  {generation} (slot {})", generation % 2);
    println!("conntrack flows    {}", flows.len());
    println!("drops:");
    for (r, n) in &drops {
        println!("  {:<24} {n}", r.name());
    }
    println!("events:");
    for (e, n) in &events {
        println!("  {:<24} {n}", e.name());
    }
    Ok(())
}

/// The agent's `status` reply as a table.
pub fn print_agent(v: &StatusReply) {
    println!("endpoint           {}", v.endpoint);
    println!("policy generation  {}", v.generation);
    println!("reloads            {}", v.reloads);
    if let Some(t) = &v.last_reload_timing {
        println!("last reload        {:.1} ms", t.total_ms);
    }
    if !v.pending_restart.is_empty() {
        println!("pending restart    {}", v.pending_restart.join(", "));
    }
    if let Some(e) = &v.last_reload_error {
        println!("last reload error  {e}");
    }
    if let Some(f) = &v.fleet {
        match f.revision {
            Some(r) => println!("fleet revision     {r}"),
            None => println!("fleet revision     none (the local file's policy)"),
        }
        if let Some(e) = &f.degraded {
            println!("fleet              degraded: {e}");
        }
        let m = &f.member;
        println!(
            "fleet lease        {}",
            if m.lease_valid {
                "valid"
            } else {
                "none: new clients refused (AUTH_FAILED,TEMP)"
            }
        );
        if let Some(e) = &m.error {
            println!("fleet member       out of the fleet, reconnecting: {e}");
        }
        println!("fleet blocks       {}", m.blocks.join(" "));
        println!("fleet gateways     {}", m.gateways.join(" "));
        for p in &m.peers {
            let rev = p.revision.map_or("none".to_owned(), |r| r.to_string());
            println!("  {:<16} revision {rev}, version {}", p.gateway, p.version);
        }
        if !m.token_secret_mismatch.is_empty() {
            println!(
                "fleet WARNING      another session-token secret on {}: their tokens are refused here (copy auth.token_secret_file to every gateway)",
                m.token_secret_mismatch.join(" ")
            );
        }
    }
    println!(
        "sessions           {} ({} established)",
        v.sessions, v.established
    );
    println!("conntrack flows    {}", v.flows);
    println!("drops:");
    for (r, n) in &v.drops {
        println!("  {r:<24} {n}");
    }
    println!("maps:               entries   capacity   fill");
    for (m, f) in &v.maps {
        let (e, c) = (f.entries, f.capacity);
        let pct = if c > 0 {
            e as f64 * 100.0 / c as f64
        } else {
            0.0
        };
        println!("  {m:<16} {e:>10} {c:>10} {pct:>5.1}%");
    }
}
