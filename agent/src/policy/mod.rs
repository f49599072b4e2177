//! The policy layer: pure functions from configuration to data-path map contents.
//!
//! - [`model`]: the policy as configured (serde, embedded in the agent's TOML config).
//! - [`compile`]: validation and compilation to map entries ([`compile::CompiledPolicy`]).
//! - [`eval`]: a naive reference evaluator over the raw [`model::PolicyInput`]; the oracle
//!   for the compiler and for the XDP program.
//! - [`compiled_eval`]: interprets compiled map contents the way the XDP program does
//!   (longest-prefix lookups, bitmap AND, binary search), so the two can be compared.
//!
//! Nothing here does I/O; the reconciler (`crate::reconcile`) applies the compiled policy.
pub mod compile;
pub mod compiled_eval;
pub mod eval;
pub mod model;
pub mod prefix;

/// Proptest generators of policies and flows, shared with the XDP differential tests in
/// `tests/` (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testgen;
#[cfg(test)]
mod tests;

pub use compile::{compile, compile_with_previous, CompileError, CompiledPolicy, ErrorKind};
pub use eval::{evaluate_frame, evaluate_new_flow, Decision, FrameDecision, Verdict};
pub use model::PolicyInput;
