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
