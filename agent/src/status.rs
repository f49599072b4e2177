//! `portcullis status`: what the data path of an endpoint is doing, read from its pins.
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use crate::datapath::Maps;

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
    let flows = maps.flows()?;
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

/// The settings waiting for a restart, from a `status` or `reload` reply.
pub fn pending_restart(v: &serde_json::Value) -> Vec<&str> {
    v["pending_restart"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect()
}

/// The agent's `status` reply as a table.
pub fn print_agent(v: &serde_json::Value) {
    let s = |k: &str| match &v[k] {
        serde_json::Value::String(x) => x.clone(),
        serde_json::Value::Null => "-".into(),
        x => x.to_string(),
    };
    println!("endpoint           {}", s("endpoint"));
    println!("policy generation  {}", s("generation"));
    println!("reloads            {}", s("reloads"));
    if let Some(t) = v["last_reload_timing"]["total_ms"].as_f64() {
        println!("last reload        {t:.1} ms");
    }
    let pending = pending_restart(v);
    if !pending.is_empty() {
        println!("pending restart    {}", pending.join(", "));
    }
    if let Some(e) = v["last_reload_error"].as_str() {
        println!("last reload error  {e}");
    }
    println!(
        "sessions           {} ({} established)",
        s("sessions"),
        s("established")
    );
    println!("conntrack flows    {}", s("flows"));
    println!("drops:");
    for (r, n) in v["drops"].as_object().into_iter().flatten() {
        println!("  {r:<24} {n}");
    }
    println!("maps:               entries   capacity   fill");
    for (m, f) in v["maps"].as_object().into_iter().flatten() {
        let (e, c) = (
            f["entries"].as_u64().unwrap_or(0),
            f["capacity"].as_u64().unwrap_or(0),
        );
        let pct = if c > 0 {
            e as f64 * 100.0 / c as f64
        } else {
            0.0
        };
        println!("  {m:<16} {e:>10} {c:>10} {pct:>5.1}%");
    }
}
