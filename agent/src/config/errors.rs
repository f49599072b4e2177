//! How problems in the file are reported: each with its field path and the fix.
use std::collections::{BTreeMap, BTreeSet};

/// One problem in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

pub(crate) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Every problem found, printed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The field path (`route[1].destination`, `tls.key`, `client_cidr`) of the key on line
/// `line` (1-based) of a TOML text, from the table headers above it; the table alone when
/// the line holds no `key = ...` (a continuation of a multi-line value).
pub(super) fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut table: Option<String> = None;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    // Headers up to and including `line`: an error on a header line (a missing field of
    // that table) belongs to that table.
    for l in lines.iter().take(line) {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_owned());
        }
    }
    let key = lines
        .get(line.checked_sub(1)?)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        });
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_owned()),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// A policy compiler message with its field paths as the endpoint file spells them (the
/// compiler names the policy model's lists: `routes[2]` is the file's third `[[route]]`).
pub fn endpoint_paths(msg: &str) -> String {
    const MAP: &[(&str, &str)] = &[
        // First, so `security_groups[` below does not catch it.
        ("applied_security_groups[", "\u{0}applied["),
        ("target_networks[", "target_network["),
        ("routes[", "route["),
        ("authorization_rules[", "authorization_rule["),
        ("security_groups[", "security_group["),
        ("\u{0}applied[", "applied_security_groups["),
        ("add it to target_networks", "add a [[target_network]]"),
    ];
    MAP.iter()
        .fold(msg.to_owned(), |m, (from, to)| m.replace(from, to))
}

/// The file check's problems and the policy compiler's messages (already spelled as in the
/// file) as one list, each once. A compiler message on a field the file check already
/// explained is left out: the file check knows why (an SNAT address that could not be taken
/// from an interface this host does not have is `0.0.0.0` to the compiler).
pub fn merge_reports(file: &[ConfigError], compiler: &[String]) -> Vec<String> {
    let explained: BTreeSet<String> = file.iter().map(|e| format!("{}:", e.path)).collect();
    let mut seen = BTreeSet::new();
    file.iter()
        .map(ToString::to_string)
        .chain(
            compiler
                .iter()
                .filter(|m| !explained.iter().any(|p| m.starts_with(p.as_str())))
                .cloned(),
        )
        .filter(|e| seen.insert(e.clone()))
        .collect()
}
