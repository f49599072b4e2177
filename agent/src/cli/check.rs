//! `portcullis check`: validates the file (and the policy) and prints a summary.
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::endpoint::live::load_and_compile;

#[derive(Serialize)]
struct Summary<'a> {
    authorization_prefixes: usize,
    client_cidr: String,
    endpoint: &'a str,
    groups_in_rules: usize,
    listeners: &'a [String],
    port_ranges: usize,
    routes: usize,
    security_group_prefixes: usize,
    security_groups_applied: bool,
    target_networks: &'a [String],
    warnings: Vec<String>,
}

pub fn check(path: &Path, json: bool) -> Result<()> {
    // Interfaces may not exist on the machine that checks: resolve them as index 1.
    let (cfg, compiled) = load_and_compile(path, &|_| Some(1), None)?;
    let warnings: Vec<String> = compiled
        .warnings
        .iter()
        .map(|w| crate::config::endpoint_paths(&w.to_string()))
        .collect();
    if json {
        let summary = Summary {
            authorization_prefixes: compiled.authz.len(),
            client_cidr: cfg.client_cidr.to_string(),
            endpoint: &cfg.name,
            groups_in_rules: compiled.group_bits.len(),
            listeners: &cfg.listen,
            port_ranges: compiled.sg_ranges.len(),
            routes: compiled.routes.len(),
            security_group_prefixes: compiled.sg_nodes.len(),
            security_groups_applied: compiled.sg_enabled,
            target_networks: &compiled.target_names,
            warnings,
        };
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!("{}: valid", path.display());
    println!("  endpoint                 {}", cfg.name);
    println!("  client pool              {}", cfg.client_cidr);
    println!("  listeners                {}", cfg.listen.join(", "));
    println!("  groups used by rules     {}", compiled.group_bits.len());
    println!("  authorization prefixes   {}", compiled.authz.len());
    println!(
        "  routes                   {} (incl. client-to-client)",
        compiled.routes.len()
    );
    println!(
        "  target networks          {}",
        compiled.target_names.join(", ")
    );
    println!(
        "  security groups          {} ({} prefixes, {} port ranges)",
        if compiled.sg_enabled {
            "applied"
        } else {
            "none (all egress allowed)"
        },
        compiled.sg_nodes.len(),
        compiled.sg_ranges.len()
    );
    for w in &warnings {
        println!("  {w}");
    }
    Ok(())
}
