//! `cargo xtask cleanup`: remove what privileged tests may leave behind when they are killed
//! before their RAII guards run. Tests must name everything they create with these prefixes.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    setup::BPFFS,
    util::{self, command},
};

/// Prefix of network namespaces and links created by tests.
pub const TEST_NAME_PREFIX: &str = "pct-";
/// Prefix of directories that tests pin maps and programs under, in `/sys/fs/bpf`.
pub const TEST_PIN_PREFIX: &str = "portcullis-test";

pub fn run() -> Result<()> {
    util::require_root(
        "cargo xtask cleanup",
        "it deletes network namespaces, links and pins",
    )?;
    let mut removed = 0;
    removed += namespaces()?;
    removed += links()?;
    removed += pins()?;
    if removed == 0 {
        println!("cleanup: nothing to clean");
    }
    Ok(())
}

fn namespaces() -> Result<usize> {
    // Lines look like "pct-client (id: 3)" or just "pct-client".
    let list = util::output(command("ip").args(["netns", "list"]))?;
    let names: Vec<&str> = list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(TEST_NAME_PREFIX))
        .collect();
    for name in &names {
        // A process left inside (openvpn, iperf3, a test helper) keeps the namespace and its
        // devices alive after `ip netns delete`, so end those first.
        let pids = util::output(command("ip").args(["netns", "pids", name])).unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            terminate(&pids);
            println!(
                "cleanup: ended processes {} in netns {name}",
                pids.join(" ")
            );
        }
        util::output(command("ip").args(["netns", "delete", name]))?;
        println!("cleanup: deleted netns {name}");
    }
    Ok(names.len())
}

/// SIGTERM, up to two seconds of grace, then SIGKILL.
fn terminate(pids: &[&str]) {
    let alive = |pid: &&str| Path::new("/proc").join(pid).exists();
    let _ = command("kill").arg("-TERM").args(pids).output();
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(alive) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<&str> = pids.iter().copied().filter(|pid| alive(pid)).collect();
    if !left.is_empty() {
        let _ = command("kill").arg("-KILL").args(&left).output();
    }
}

fn link_names() -> Result<Vec<String>> {
    let json = util::output(command("ip").args(["-j", "link", "show"]))?;
    let links: serde_json::Value =
        serde_json::from_str(&json).context("parsing `ip -j link show`")?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link.get("ifname")?.as_str())
        .map(str::to_owned)
        .collect())
}

fn links() -> Result<usize> {
    let mut removed = 0;
    for name in link_names()? {
        if !name.starts_with(TEST_NAME_PREFIX) {
            continue;
        }
        // Deleting one end of a veth pair deletes the other, so the second delete of a pair
        // may find nothing: only a link that is still there afterwards is an error.
        match util::output(command("ip").args(["link", "delete", &name])) {
            Ok(_) => {
                println!("cleanup: deleted link {name}");
                removed += 1;
            }
            Err(err) if link_names()?.contains(&name) => return Err(err),
            Err(_) => {} // went with its peer
        }
    }
    Ok(removed)
}

fn pins() -> Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(BPFFS) {
        Ok(entries) => entries,
        Err(_) => return Ok(0), // no bpffs, nothing pinned
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {BPFFS}"))?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(TEST_PIN_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))?;
        println!("cleanup: removed {}", path.display());
        removed += 1;
    }
    Ok(removed)
}
