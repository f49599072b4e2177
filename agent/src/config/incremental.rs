//! Incremental parsing for reloads: a file with 10,000 `[[authorization_rule]]` sections spent
//! most of a one-rule reload (about 20 of 31 ms, `perf` in docs/benchmarks.md) in the TOML
//! parser and serde, re-reading every unchanged rule. [`RuleCache`] keeps each rule section
//! of the last file parsed, keyed by its exact text: a reload parses only the sections whose
//! text is new, and the rest of the file (everything that is not a rule section, small) in
//! one piece. The result is the same [`EndpointConfig`] a full parse gives (the unit tests
//! compare both on random files and edits); whenever the file is not of the simple shape this
//! relies on, or anything fails to parse, it falls back to the full parse, whose errors (with
//! line numbers) are the ones reported.
use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{ConfigErrors, EndpointConfig};
use crate::policy::model::AuthzRule;

/// The header a rule section starts with (the documented spelling; any other, such as the
/// `authorization_rules` alias, makes the file take the full parse).
const RULE_HEADER: &str = "[[authorization_rule]]";
const RULE_KEY: &str = "authorization_rule";

/// One rule section parsed on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    authorization_rule: Vec<AuthzRule>,
}

/// How the last parse went (for the reload timing and the tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Rule sections in the file.
    pub sections: usize,
    /// Of them, parsed now (new text); the others came from the cache.
    pub parsed: usize,
    /// The file took the full parse (not of the shape the cache handles, or an error).
    pub full: bool,
}

/// The rule sections of the last file, parsed, by their text.
#[derive(Default)]
pub struct RuleCache {
    /// Section text -> (the parse in which it was last seen, its rules).
    rules: HashMap<Box<str>, (u64, Vec<AuthzRule>)>,
    generation: u64,
    pub last: ParseStats,
}

impl RuleCache {
    /// [`EndpointConfig::load_unvalidated`], reusing the rule sections of the previous call.
    pub fn load_unvalidated(&mut self, path: &Path) -> Result<EndpointConfig, ConfigErrors> {
        let text = super::load::read_file(path)?;
        let mut cfg = self.parse(&text)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// [`EndpointConfig::parse`], reusing the rule sections of the previous call.
    pub fn parse(&mut self, text: &str) -> Result<EndpointConfig, ConfigErrors> {
        if let Some(cfg) = self.try_incremental(text) {
            return Ok(cfg);
        }
        self.rules.clear();
        self.last = ParseStats {
            full: true,
            ..ParseStats::default()
        };
        EndpointConfig::parse(text)
    }

    fn try_incremental(&mut self, text: &str) -> Option<EndpointConfig> {
        let split = split(text)?;
        // Mark the cached sections this file still has (one lookup each; nothing moves, so
        // a reload that changes one rule in 10,000 touches no allocation of the others).
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let (mut missing, mut live) = (Vec::new(), 0);
        for (i, &s) in split.sections.iter().enumerate() {
            match self.rules.get_mut(s) {
                Some(e) if e.0 != generation => {
                    e.0 = generation;
                    live += 1;
                }
                Some(_) => {}
                None => missing.push(i),
            }
        }
        // Many new sections (a first load, a wholesale replace): one parse of the file is
        // cheaper than one per section (28-60 ms for 10,000 sections alone, against ~20 ms).
        if missing.len() > 64 && missing.len() * 4 > split.sections.len() {
            return self.whole(text, &split);
        }
        for &i in &missing {
            let s = split.sections[i];
            if !self.rules.contains_key(s) {
                let v = toml::from_str::<RuleSection>(s).ok()?.authorization_rule;
                self.rules.insert(Box::from(s), (generation, v));
                live += 1;
            }
        }
        // Each piece between rule sections must parse alone: then no rule header sat inside
        // an open array (the only construct besides multi-line strings, refused in `split`,
        // that spans lines), so cutting there changed nothing.
        if split.pieces.len() > 1 {
            for p in &split.pieces {
                toml::from_str::<toml::Table>(p).ok()?;
            }
        }
        let mut cfg = EndpointConfig::parse(&split.pieces.concat()).ok()?;
        if !cfg.authorization_rule.is_empty() {
            return None;
        }
        let mut rules = Vec::with_capacity(split.sections.len());
        for &s in &split.sections {
            rules.extend(self.rules.get(s)?.1.iter().cloned());
        }
        cfg.authorization_rule = rules;
        // Sections of older files go (a linear pass, only when some are gone).
        if self.rules.len() > live {
            self.rules.retain(|_, e| e.0 == generation);
        }
        self.last = ParseStats {
            sections: split.sections.len(),
            parsed: missing.len(),
            full: false,
        };
        Some(cfg)
    }

    /// One parse of the whole file; the cache is refilled from its rules (each section holds
    /// exactly one rule header, so the file's rules are the sections' in order).
    fn whole(&mut self, text: &str, split: &Split) -> Option<EndpointConfig> {
        let cfg = EndpointConfig::parse(text).ok()?;
        self.rules.clear();
        if cfg.authorization_rule.len() == split.sections.len() {
            let generation = self.generation;
            for (&s, r) in split.sections.iter().zip(&cfg.authorization_rule) {
                self.rules
                    .entry(Box::from(s))
                    .or_insert_with(|| (generation, vec![r.clone()]));
            }
        }
        self.last = ParseStats {
            sections: split.sections.len(),
            parsed: split.sections.len(),
            full: false,
        };
        Some(cfg)
    }
}

/// A file cut at its rule headers: the rule sections (header to the next header) and the
/// pieces of everything else, in order.
struct Split<'a> {
    sections: Vec<&'a str>,
    pieces: Vec<&'a str>,
}

/// `None` when the file is not of the shape the cache handles: multi-line strings (a header
/// line could be inside one), or `authorization_rule` outside a rule header and a comment
/// (the alias, a sub-table, an inline array of rules).
fn split(text: &str) -> Option<Split<'_>> {
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let mut sections = Vec::new();
    let mut pieces = Vec::new();
    let (mut start, mut in_rule, mut off) = (0, false, 0);
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with('[') {
            let rule = is_rule_header(t);
            if in_rule {
                sections.push(&text[start..off]);
                start = off;
            } else if rule {
                if off > start {
                    pieces.push(&text[start..off]);
                }
                start = off;
            }
            in_rule = rule;
        }
        if !in_rule && !t.starts_with('#') && t.contains(RULE_KEY) {
            return None;
        }
        off += line.len();
    }
    if in_rule {
        sections.push(&text[start..]);
    } else if off > start {
        pieces.push(&text[start..]);
    }
    Some(Split { sections, pieces })
}

/// `[[authorization_rule]]`, optionally followed by a comment.
fn is_rule_header(line: &str) -> bool {
    line.strip_prefix(RULE_HEADER)
        .map(str::trim)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod tests;
