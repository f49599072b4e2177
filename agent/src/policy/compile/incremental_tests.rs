//! The incremental compiler and reconciler against the full ones: random policies, random
//! edits (one rule added, removed or changed, a security group changed, an invalid rule),
//! some compilations not committed (a refused reload).
use std::sync::Arc;

use ipnet::IpNet;
use proptest::prelude::*;

use super::incremental::IncrementalCompiler;
use super::{compile_with_previous, CompiledPolicy, PolicyDelta};
use crate::policy::model::{AuthzRule, PolicyInput, SgRule};
use crate::policy::testgen::{self, resolver};
use crate::reconcile::{reconcile, slot_for, FakePolicyMaps, Reconciler};

#[derive(Clone, Debug)]
enum Edit {
    Insert(prop::sample::Index, AuthzRule),
    Remove(prop::sample::Index),
    Replace(prop::sample::Index, AuthzRule),
    /// A rule with a diagnostic (host bits set).
    InsertInvalid(prop::sample::Index),
    /// A rule whose destination no route covers (a warning).
    InsertUnrouted(prop::sample::Index),
    /// One more egress rule in the first security group (or a first group).
    SgRule(SgRule),
    ToggleApplied,
    /// Same input again.
    Nothing,
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    use prop::sample::Index;
    prop_oneof![
        4 => (any::<Index>(), testgen::arb_authz()).prop_map(|(i, r)| Edit::Insert(i, r)),
        3 => any::<Index>().prop_map(Edit::Remove),
        4 => (any::<Index>(), testgen::arb_authz()).prop_map(|(i, r)| Edit::Replace(i, r)),
        1 => any::<Index>().prop_map(Edit::InsertInvalid),
        1 => any::<Index>().prop_map(Edit::InsertUnrouted),
        1 => testgen::arb_sg_rule().prop_map(Edit::SgRule),
        1 => Just(Edit::ToggleApplied),
        1 => Just(Edit::Nothing),
    ]
}

fn apply(p: &PolicyInput, e: &Edit) -> PolicyInput {
    let mut p = p.clone();
    let rules = &mut p.authorization_rules;
    let rule = |dest: &str| AuthzRule {
        destination: dest.parse::<IpNet>().unwrap(),
        groups: vec!["a".into()],
        all_users: false,
        description: None,
    };
    match e {
        Edit::Insert(i, r) => rules.insert(i.index(rules.len() + 1), r.clone()),
        Edit::Remove(i) if !rules.is_empty() => drop(rules.remove(i.index(rules.len()))),
        Edit::Replace(i, r) if !rules.is_empty() => {
            let n = rules.len();
            rules[i.index(n)] = r.clone();
        }
        Edit::InsertInvalid(i) => rules.insert(i.index(rules.len() + 1), rule("10.0.0.1/8")),
        Edit::InsertUnrouted(i) => rules.insert(i.index(rules.len() + 1), rule("172.16.0.0/12")),
        Edit::SgRule(r) => match p.security_groups.first_mut() {
            Some(sg) => sg.egress.push(r.clone()),
            None => p.security_groups.push(crate::policy::model::SecurityGroup {
                name: "sg0".into(),
                egress: vec![r.clone()],
            }),
        },
        Edit::ToggleApplied => {
            if p.applied_security_groups.is_empty() {
                p.applied_security_groups =
                    p.security_groups.iter().map(|s| s.name.clone()).collect();
            } else {
                p.applied_security_groups.clear();
            }
        }
        _ => {}
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every compilation equals the full compiler's (policy or errors), its delta is exact,
    /// and the reconciler's writes of it leave both slots as the full reconciler's do.
    #[test]
    fn incremental_equals_full(
        start in testgen::arb_policy(),
        edits in prop::collection::vec((arb_edit(), prop::bool::weighted(0.85)), 1..12),
    ) {
        let mut compiler = IncrementalCompiler::default();
        let mut reconciler = Reconciler::default();
        let mut dp = FakePolicyMaps::new();
        let mut full_dp = FakePolicyMaps::new();
        // The committed state, as a running agent holds it.
        let mut input = start;
        let mut live: Option<CompiledPolicy> = None;
        for (edit, commit) in std::iter::once((Edit::Nothing, true)).chain(edits) {
            let next = apply(&input, &edit);
            let bits = live.as_ref().map(|l| &l.group_bits);
            let full = compile_with_previous(&next, &resolver, bits);
            let inc = compiler.compile(Arc::new(next.clone()), &resolver, bits);
            let inc = match (full, inc) {
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a, b);
                    continue;
                }
                (Ok(full), Ok(inc)) => {
                    prop_assert_eq!(&inc.policy, &full);
                    let want = match &live {
                        Some(l) => PolicyDelta::between(l, &full),
                        None => PolicyDelta::all(),
                    };
                    prop_assert_eq!(&inc.delta, &want);
                    inc
                }
                (a, b) => {
                    prop_assert!(false, "full {:?} vs incremental {:?}", a.err(), b.err().map(|_| ()));
                    unreachable!()
                }
            };
            if !commit {
                // A refused reload: nothing applied, nothing committed.
                continue;
            }
            // The same writes as the full reconciler's plan: same count, same resulting maps.
            let (before, full_before) = (dp.applied, full_dp.applied);
            let g_full = reconcile(&mut full_dp, &inc.policy).unwrap();
            let g = reconciler.reconcile(&mut dp, &inc.policy, &inc.delta).unwrap();
            prop_assert_eq!(g, g_full);
            prop_assert_eq!(&dp.slots, &full_dp.slots);
            prop_assert_eq!(dp.active, full_dp.active);
            prop_assert_eq!(dp.applied - before, full_dp.applied - full_before);
            input = next;
            live = Some(compiler.commit(inc));
        }
    }
}

/// One rule changed in a valid 200-rule policy takes the incremental path, names one key,
/// and the reconciler writes that key, the meta and the switch.
#[test]
fn a_one_rule_change_is_incremental_and_writes_one_key() {
    let mut p = testgen::base_policy();
    p.authorization_rules = (0..200u32)
        .map(|i| AuthzRule {
            destination: format!("10.2.{}.{}/32", i / 256, i % 256).parse().unwrap(),
            groups: vec![["a", "b"][i as usize % 2].to_string()],
            all_users: false,
            description: None,
        })
        .collect();
    let mut compiler = IncrementalCompiler::default();
    let mut reconciler = Reconciler::default();
    let mut dp = FakePolicyMaps::new();
    let mut bits = None;
    let mut edited = p.clone();
    edited.authorization_rules[100].destination = "10.3.0.0/16".parse().unwrap();
    for (round, input) in [&p, &edited, &p, &edited].into_iter().enumerate() {
        let c = compiler
            .compile(Arc::new(input.clone()), &resolver, bits.as_ref())
            .unwrap();
        assert_eq!(c.incremental, round > 0, "round {round}");
        if round > 0 {
            assert_eq!(
                c.delta.authz.as_ref().map(|k| k.len()),
                Some(2),
                "round {round}"
            );
        }
        let before = dp.applied;
        let g = reconciler.reconcile(&mut dp, &c.policy, &c.delta).unwrap();
        let ops = dp.applied - before;
        // From the third generation on, the inactive slot is one change behind: a delete, an
        // upsert (this change), a delete and an upsert (the previous one, undone or redone
        // in this slot) at most, then the meta and the switch.
        if round >= 2 {
            assert!(ops <= 4 + 2, "round {round}: {ops} writes");
        }
        let c_policy = compiler.commit(c);
        assert_eq!(
            dp.slots[slot_for(g) as usize],
            crate::reconcile::SlotContents::from_compiled(&c_policy, g)
        );
        bits = Some(c_policy.group_bits.clone());
    }
}
