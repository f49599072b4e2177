//! Incremental reconciling: diff only the map keys a change can have touched.
//!
//! A reload writes the inactive slot, which holds the generation before the live one. So the
//! keys where that slot may differ from the new policy are the keys the previous reload
//! changed plus the keys this one changes. [`Reconciler`] remembers the first set (for the
//! generation it made live) and takes the second from the compiler ([`PolicyDelta`]); the plan
//! then looks at those authorization keys only (and at the security-group maps only if
//! they changed), instead of comparing every entry of every map against its shadow.
//! Routes, targets and the slot's meta are small and always diffed in full.
//!
//! Whenever the reconciler does not know what the inactive slot holds (first reconcile, a
//! failed write, the live generation moved under it, no delta) it takes the full
//! [`super::reconcile`].
use super::{plan_generation_delta, reconcile, slot_for, PolicyMapError, PolicyMaps};
use crate::policy::compile::{CompiledPolicy, PolicyDelta};

/// The generation the reconciler made live, and what its inactive slot may lack.
#[derive(Clone, Debug)]
struct Synced {
    live: u32,
    /// Where the inactive slot (the generation before `live`) may differ from `live`'s policy.
    behind: PolicyDelta,
}

/// The reconciler of a running agent: [`super::reconcile`] with memory of the last
/// generation it applied, so a reload diffs only the keys that changed (module docs).
#[derive(Clone, Debug, Default)]
pub struct Reconciler {
    synced: Option<Synced>,
}

impl Reconciler {
    /// Brings the data path to `desired`, which differs from the policy of the last call by
    /// at most `delta`, and returns the generation now live. Forgets everything it knew if
    /// anything fails (the next call is a full reconcile).
    pub fn reconcile(
        &mut self,
        dp: &mut dyn PolicyMaps,
        desired: &CompiledPolicy,
        delta: &PolicyDelta,
    ) -> Result<u32, PolicyMapError> {
        let synced = self.synced.take();
        let active = dp.active_generation()?;
        let known = synced.filter(|s| s.live == active && delta.authz.is_some());
        let Some(s) = known else {
            let g = reconcile(dp, desired)?;
            self.synced = Some(Synced {
                live: g,
                behind: PolicyDelta::all(),
            });
            return Ok(g);
        };
        if delta.is_empty() {
            // The live slot already holds `desired` (see `reconcile`).
            self.synced = Some(s);
            return Ok(active);
        }
        let next = active.wrapping_add(1);
        let dirty = s.behind.union(delta);
        let mut ops = Vec::new();
        dp.with_slot(slot_for(next), &mut |current| {
            ops = plan_generation_delta(current, desired, next, &dirty);
        })?;
        for op in &ops {
            dp.apply(op)?;
        }
        self.synced = Some(Synced {
            live: next,
            behind: delta.clone(),
        });
        Ok(next)
    }

    /// `generation` was made live by a full [`super::reconcile`] (at start): what its
    /// inactive slot holds is unknown.
    pub fn adopt(&mut self, generation: u32) {
        self.synced = Some(Synced {
            live: generation,
            behind: PolicyDelta::all(),
        });
    }

    /// Forgets what the reconciler knew (after a write outside it).
    pub fn reset(&mut self) {
        self.synced = None;
    }
}
