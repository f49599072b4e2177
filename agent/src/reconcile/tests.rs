//! Plans, the fake with fault injection, and the three evaluators agreeing.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use portcullis_common::{GroupBits, GROUP_WORDS, PROTO_TCP};
use proptest::prelude::*;

use super::*;
use crate::policy::compiled_eval::Verdict;
use crate::policy::model::{AuthzRule, PolicyInput};
use crate::policy::testgen::{self, live_clients, resolver, TestFlow};
use crate::policy::{compile, compile::CompiledPolicy};

fn policy(rules: &[(&str, &[&str])]) -> (PolicyInput, CompiledPolicy) {
    let mut input = testgen::base_policy();
    input.authorization_rules = rules
        .iter()
        .map(|(dest, groups)| AuthzRule {
            destination: dest.parse::<IpNet>().unwrap(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            all_users: groups.is_empty(),
            description: None,
        })
        .collect();
    let compiled = compile(&input, &resolver).unwrap();
    (input, compiled)
}

fn run(dp: &mut FakePolicyMaps, ops: &[MapOp]) {
    for op in ops {
        dp.apply(op).unwrap();
    }
}

#[test]
fn first_generation_fills_slot_one_and_activates_it() {
    let (_, p) = policy(&[("10.0.0.0/8", &[])]);
    let mut dp = FakePolicyMaps::new();
    assert_eq!(reconcile(&mut dp, &p).unwrap(), 1);
    assert_eq!(dp.active, 1);
    assert_eq!(dp.slots[1], SlotContents::from_compiled(&p, 1));
    assert_eq!(
        dp.slots[0],
        SlotContents::default(),
        "the live slot was written"
    );
    let v = dp.evaluate_new_flow(
        &[0; GROUP_WORDS],
        Ipv4Addr::new(10, 0, 0, 1),
        PROTO_TCP,
        80,
        None,
        &live_clients(),
    );
    assert!(
        matches!(
            v,
            Verdict::Forward {
                target_index: 0,
                ..
            }
        ),
        "{v:?}"
    );
}

#[test]
fn reconciling_the_live_policy_writes_nothing() {
    let (_, p) = policy(&[("10.0.0.0/8", &[])]);
    let mut dp = FakePolicyMaps::new();
    reconcile(&mut dp, &p).unwrap();
    let applied = dp.applied;
    assert_eq!(reconcile(&mut dp, &p).unwrap(), 1);
    assert_eq!(dp.applied, applied);
}

#[test]
fn plan_writes_only_the_difference_and_ends_with_one_activate() {
    let (_, p1) = policy(&[("10.0.0.0/8", &["a"]), ("10.1.0.0/16", &["b"])]);
    let (_, p2) = policy(&[("10.0.0.0/8", &["a"])]);
    let mut dp = FakePolicyMaps::new();
    reconcile(&mut dp, &p1).unwrap(); // generation 1, slot 1
    reconcile(&mut dp, &p2).unwrap(); // generation 2, slot 0

    // Generation 3 goes to slot 1, which holds p1: going back to p1 only needs meta.
    let ops = plan_generation(&dp.slots[1], &p1, 3);
    assert_eq!(
        ops,
        vec![
            MapOp::MetaSet {
                slot: 1,
                meta: p1.meta(3)
            },
            MapOp::Activate { generation: 3 }
        ]
    );

    // Going to p2 instead deletes the stale /16 and updates the /8 (its group bits
    // differ: p2 numbers only `a`).
    let ops = plan_generation(&dp.slots[1], &p2, 3);
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, MapOp::Activate { .. }))
            .count(),
        1
    );
    assert_eq!(ops.last(), Some(&MapOp::Activate { generation: 3 }));
    assert!(ops.iter().all(|o| o.slot().is_none_or(|s| s == 1)));
    assert!(ops.contains(&MapOp::AuthzDelete {
        slot: 1,
        prefix_len: 16,
        addr: [10, 1, 0, 0]
    }));
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, MapOp::AuthzUpsert { .. }))
            .count(),
        0,
        "{ops:?}"
    );
    run(&mut dp, &ops);
    assert_eq!(dp.slots[1], SlotContents::from_compiled(&p2, 3));
}

#[test]
fn the_live_slot_is_never_written() {
    let (_, p) = policy(&[("10.0.0.0/8", &[])]);
    let mut dp = FakePolicyMaps::new();
    reconcile(&mut dp, &p).unwrap();
    let before = dp.slots[1].clone();
    let err = dp
        .apply(&MapOp::AuthzDelete {
            slot: 1,
            prefix_len: 8,
            addr: [10, 0, 0, 0],
        })
        .unwrap_err();
    assert!(
        matches!(err, PolicyMapError::ActiveSlotWrite { slot: 1, active: 1 }),
        "{err}"
    );
    assert!(matches!(
        dp.apply(&MapOp::MetaSet {
            slot: 2,
            meta: PolicyMeta::default()
        }),
        Err(PolicyMapError::NoSuchSlot(2))
    ));
    assert_eq!(dp.slots[1], before);
}

#[test]
fn only_a_prepared_slot_can_be_activated() {
    let mut dp = FakePolicyMaps::new();
    let err = dp.apply(&MapOp::Activate { generation: 1 }).unwrap_err();
    assert!(
        matches!(
            err,
            PolicyMapError::SlotNotPrepared {
                generation: 1,
                slot: 1,
                found: 0
            }
        ),
        "{err}"
    );
    assert_eq!(dp.active, 0);
}

#[test]
fn a_failed_apply_leaves_the_old_policy_live_and_the_next_reconcile_finishes() {
    let (_, p1) = policy(&[("10.0.0.0/8", &[])]);
    let (_, p2) = policy(&[
        ("10.0.0.0/8", &["a"]),
        ("10.2.0.0/16", &[]),
        ("10.3.0.0/16", &[]),
    ]);
    let mut dp = FakePolicyMaps::new();
    reconcile(&mut dp, &p1).unwrap();
    let live_before = dp.active_slot().clone();

    dp.fail_after = Some(2);
    assert!(reconcile(&mut dp, &p2).is_err());
    assert_eq!(dp.active, 1);
    assert_eq!(dp.active_slot(), &live_before);
    assert_ne!(
        dp.slots[0],
        SlotContents::default(),
        "the failure came after some writes"
    );

    dp.fail_after = None;
    assert_eq!(reconcile(&mut dp, &p2).unwrap(), 2);
    assert_eq!(dp.active_slot(), &SlotContents::from_compiled(&p2, 2));
}

#[test]
fn deletes_come_first_so_full_tries_have_room() {
    let (_, p1) = policy(&[("10.1.0.0/16", &[]), ("10.2.0.0/16", &[])]);
    let (_, p2) = policy(&[("10.3.0.0/16", &[]), ("10.4.0.0/16", &[])]);
    let (_, p3) = policy(&[("10.5.0.0/16", &[]), ("10.6.0.0/16", &[])]);
    let mut dp = FakePolicyMaps::new();
    dp.capacities.authz = 2;
    for (i, p) in [p1, p2, p3].iter().enumerate() {
        assert_eq!(reconcile(&mut dp, p).unwrap(), i as u32 + 1);
    }
    // And the fake does enforce the capacity.
    let full = dp.apply(&MapOp::AuthzUpsert {
        slot: 0,
        prefix_len: 32,
        addr: [1, 1, 1, 1],
        value: dp.slots[0].authz.values().next().copied().unwrap(),
    });
    assert!(
        matches!(full, Err(PolicyMapError::MapFull { capacity: 2, .. })),
        "{full:?}"
    );
}

#[test]
fn generation_numbers_wrap_around_and_keep_alternating_slots() {
    let (_, p1) = policy(&[("10.0.0.0/8", &[])]);
    let (_, p2) = policy(&[("10.0.0.0/16", &[])]);
    let mut dp = FakePolicyMaps::new();
    // Pretend generation u32::MAX (slot 1) is live with p1.
    run(&mut dp, &plan_generation(&SlotContents::default(), &p1, 1));
    dp.slots[1].meta.generation = u32::MAX;
    dp.active = u32::MAX;
    assert_eq!(reconcile(&mut dp, &p2).unwrap(), 0);
    assert_eq!(slot_for(0), 0);
    assert_eq!(dp.active_slot(), &SlotContents::from_compiled(&p2, 0));
}

#[test]
fn stale_array_entries_are_zeroed() {
    let mut input = testgen::base_policy();
    input.authorization_rules = vec![AuthzRule {
        destination: "10.0.0.0/8".parse().unwrap(),
        groups: vec![],
        all_users: true,
        description: None,
    }];
    let two_targets = compile(&input, &resolver).unwrap();
    input.target_networks.truncate(1);
    input.routes.retain(|r| r.target_network == "t0");
    let one_target = compile(&input, &resolver).unwrap();
    let mut dp = FakePolicyMaps::new();
    reconcile(&mut dp, &two_targets).unwrap();
    reconcile(&mut dp, &one_target).unwrap();
    let ops = plan_generation(&dp.slots[1], &one_target, 3);
    assert!(
        ops.iter().any(
            |o| matches!(o, MapOp::TargetSet { slot: 1, index: 1, target } if target.valid == 0)
        ),
        "{ops:?}"
    );
    run(&mut dp, &ops);
    assert_eq!(dp.slots[1].targets.len(), 1);
}

fn verdicts(dp: &FakePolicyMaps, bits: &GroupBits, flows: &[TestFlow]) -> Vec<Verdict> {
    let live = live_clients();
    flows
        .iter()
        .map(|f| dp.evaluate_new_flow(bits, f.dst, f.proto, f.dport, f.icmp_type, &live))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Applying a generation op by op: after every op the live view is exactly the old
    /// policy or exactly the new one (maps and packet decisions), it switches only at the
    /// final Activate, and the result is the desired slot whatever the slot held before.
    #[test]
    fn packets_never_see_half_a_policy(
        seq in prop::collection::vec(testgen::arb_policy(), 2..5),
        user in testgen::arb_user_groups(),
        flows in prop::collection::vec(testgen::arb_flow(), 12),
    ) {
        let compiled: Vec<CompiledPolicy> =
            seq.iter().map(|p| compile(p, &resolver).unwrap()).collect();
        let mut dp = FakePolicyMaps::new();
        reconcile(&mut dp, &compiled[0]).unwrap();
        for new in &compiled[1..] {
            let g = dp.active;
            let old_view = dp.active_slot().clone();
            let new_view = SlotContents::from_compiled(new, g + 1);
            let bits = new.groups_bitmap(user.iter().map(String::as_str));
            let old_verdicts = verdicts(&dp, &bits, &flows);
            let mut probe = dp.clone();
            probe.slots[slot_for(g + 1) as usize] = new_view.clone();
            probe.active = g + 1;
            let new_verdicts = verdicts(&probe, &bits, &flows);

            let ops = plan_generation(&dp.slots[slot_for(g + 1) as usize], new, g + 1);
            prop_assert_eq!(ops.last(), Some(&MapOp::Activate { generation: g + 1 }));
            for (i, op) in ops.iter().enumerate() {
                dp.apply(op).unwrap();
                let last = i + 1 == ops.len();
                let (view, want) = if last {
                    (&new_view, &new_verdicts)
                } else {
                    (&old_view, &old_verdicts)
                };
                prop_assert_eq!(dp.active_slot(), view, "after op {} {:?}", i, op);
                prop_assert_eq!(&verdicts(&dp, &bits, &flows), want);
            }
            prop_assert_eq!(dp.active, g + 1);
            let distinct: BTreeSet<String> = ops.iter().map(|o| format!("{o:?}")).collect();
            prop_assert_eq!(distinct.len(), ops.len(), "duplicate ops");
        }
    }
}
