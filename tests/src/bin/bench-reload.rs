//! The agent's reload pipeline in one process, without privileges, for profiling
//! (`perf record` on this binary) and for quick before/after comparisons of its phases:
//! the control suite's endpoint file with N filler rules (`tests::probe::probe_policy`),
//! then one-rule changes (stream B's rule removed or added back), each through the same
//! steps as `portcullis run`'s reload: the incremental parse (`RuleCache`), `validate`, the
//! policy compiler and the reconciler against the in-memory data path (`FakePolicyMaps`,
//! which keeps a slot the way the real maps' write-through shadow does). The kernel's map
//! writes are not in it (the control suite measures them with the real agent).
//!
//! `bench-reload [--rules N] [--changes K] [--only full|incremental]` (default 10,000 and 200)
//! prints the median and 90th percentile of each phase in microseconds, for the incremental
//! compiler and reconciler and for the full ones (the code before them), interleaved.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use portcullis::config::incremental::RuleCache;
use portcullis::policy::compile::incremental::IncrementalCompiler;
use portcullis::policy::{compile_with_previous, CompiledPolicy};
use portcullis::reconcile::{reconcile, FakePolicyMaps, Reconciler};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number")))
        .unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One agent's reload state, for one mode.
#[derive(Default)]
struct Agent {
    cache: RuleCache,
    compiler: IncrementalCompiler,
    reconciler: Reconciler,
    maps: FakePolicyMaps,
    live: Option<CompiledPolicy>,
    /// parse, validate, compile, reconcile, total (µs).
    phases: [Vec<f64>; 5],
    incremental: usize,
}

impl Agent {
    fn reload(&mut self, path: &std::path::Path, full: bool, record: bool) {
        let resolve = |_: &str| Some(7);
        let t0 = Instant::now();
        let cfg = self.cache.load_unvalidated(path).expect("the file parses");
        let t1 = Instant::now();
        // The harness has no PKI files: validation errors are expected and ignored; its
        // time is what counts.
        let _ = cfg.validate();
        let t2 = Instant::now();
        let bits = self.live.as_ref().map(|l| l.group_bits.clone());
        let t3;
        if full {
            // The code before the incremental compiler and reconciler.
            let compiled = compile_with_previous(&cfg.policy(), &resolve, bits.as_ref())
                .expect("the policy compiles");
            t3 = Instant::now();
            reconcile(&mut self.maps, &compiled).expect("the fake takes every write");
            self.live = Some(compiled);
        } else {
            let c = self
                .compiler
                .compile(Arc::new(cfg.policy()), &resolve, bits.as_ref())
                .expect("the policy compiles");
            t3 = Instant::now();
            self.incremental += usize::from(c.incremental && record);
            self.reconciler
                .reconcile(&mut self.maps, &c.policy, &c.delta)
                .expect("the fake takes every write");
            self.live = Some(self.compiler.commit(c));
        }
        let t4 = Instant::now();
        if record {
            for (v, (a, b)) in
                self.phases
                    .iter_mut()
                    .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4)])
            {
                v.push((b - a).as_secs_f64() * 1e6);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rules = arg(&args, "--rules", 10_000);
    let changes = arg(&args, "--changes", 200);
    // `--only full` or `--only incremental`: one mode (for `perf record`).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let dir = PathBuf::from(std::env::var("TMPDIR").unwrap_or_else(|_| "/tmp".into()))
        .join(format!("pc-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let path = dir.join("endpoint.toml");
    let files = [true, false]
        .map(|allow_b| tests::agent::endpoint_toml(&tests::probe::probe_policy(rules, 0, allow_b)));
    // Both modes, one change each in turn (each its own agent state), so that the machine's
    // load drifts over both alike.
    let mut agents = [Agent::default(), Agent::default()];
    for i in 0..changes + 2 {
        tests::agent::write_atomic(&path, &files[i % 2]);
        for (mode, agent) in agents.iter_mut().enumerate() {
            let full = mode == 1;
            if only.is_some_and(|o| o != ["incremental", "full"][mode]) {
                continue;
            }
            // The first two apply the policy to both slots (as the control suite does).
            agent.reload(&path, full, i >= 2);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{rules} filler rules, {changes} one-rule changes; median / p90 in µs (validate \
         without PKI files); modes interleaved change by change"
    );
    for (mode, agent) in agents.iter_mut().enumerate() {
        if agent.phases[0].is_empty() {
            continue;
        }
        println!(
            "{}",
            if mode == 0 {
                format!(
                    "incremental compile and reconcile ({} of {changes} compilations incremental)",
                    agent.incremental
                )
            } else {
                "full compile and reconcile".to_string()
            }
        );
        for (name, v) in ["parse", "validate", "compile", "reconcile", "total"]
            .iter()
            .zip(agent.phases.iter_mut())
        {
            let (m, p) = (pct(v, 0.5), pct(v, 0.9));
            println!("  {name:>10}: {m:9.1} / {p:9.1}");
        }
    }
}
