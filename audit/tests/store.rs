//! Tamper detection in a node's store and retention.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_audit::*;
use common::{Log, log_signer, sample_entry, swm, trust_file, tum};

fn entries(log: &Log) -> Vec<(u64, Option<Vec<u8>>)> {
    log.bodies
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u64, b.clone()))
        .collect()
}

#[test]
fn an_untouched_store_verifies() {
    let log = Log::with_entries(100);
    let head = log.checkpoint().tree_head();
    let r = verify_store(log.tree.store(), entries(&log), 100, &[head]).unwrap();
    assert!(r.is_ok(), "{:?}", r.findings);
    assert_eq!(r.entries_checked, 100);
    assert_eq!(r.root, head.root);
}

#[test]
fn one_flipped_byte_in_any_stored_entry_is_named() {
    let log = Log::with_entries(40);
    let head = log.checkpoint().tree_head();
    for seq in [0usize, 1, 17, 31, 39] {
        let len = log.bodies[seq].as_ref().unwrap().len();
        for i in 0..len {
            let mut bodies = entries(&log);
            bodies[seq].1.as_mut().unwrap()[i] ^= 0x20;
            let r = verify_store(log.tree.store(), bodies, 40, &[head]).unwrap();
            assert_eq!(
                r.findings,
                vec![StoreFinding::EntryModified {
                    sequence: seq as u64
                }],
                "entry {seq} byte {i}"
            );
            assert_eq!(r.first_modified_sequence(), Some(seq as u64));
        }
    }
}

#[test]
fn rewriting_entry_and_leaf_hash_is_caught_by_the_stored_tree() {
    let mut log = Log::with_entries(16);
    let head = log.checkpoint().tree_head();
    let mut forged = sample_entry(5);
    forged.principal.org = "someone-else".into();
    let fb = forged.encode().unwrap();
    log.tree.store_mut().set(0, 5, leaf_hash(&fb)).unwrap();
    log.bodies[5] = Some(fb);
    let r = verify_store(log.tree.store(), entries(&log), 16, &[head]).unwrap();
    // Level 1 node (entries 4..=5) no longer matches; so do its ancestors,
    // and the root no longer matches the signed checkpoint.
    assert!(r.findings.contains(&StoreFinding::NodeMismatch {
        level: 1,
        index: 2,
        first_sequence: 4,
        last_sequence: 5
    }));
    assert!(
        r.findings
            .iter()
            .any(|f| matches!(f, StoreFinding::CheckpointRootMismatch { size: 16, .. }))
    );
}

#[test]
fn rewriting_the_whole_stored_tree_is_caught_by_the_signed_checkpoint() {
    let log = Log::with_entries(16);
    let head = log.checkpoint().tree_head();
    // Attacker rebuilds a consistent store for a forged history.
    let mut forged = Log::with_entries(5);
    let mut e = sample_entry(5);
    e.resource = "parking-permits".into();
    forged.append(&e);
    for i in 6..16 {
        forged.append(&sample_entry(i));
    }
    let r = verify_store(forged.tree.store(), entries(&forged), 16, &[head]).unwrap();
    assert_eq!(
        r.findings,
        vec![StoreFinding::CheckpointRootMismatch {
            size: 16,
            checkpoint_root: head.root,
            computed_root: forged.tree.root()
        }]
    );
}

#[test]
fn missing_entries_missing_nodes_and_truncation_are_reported() {
    let log = Log::with_entries(20);
    let head = log.checkpoint().tree_head();
    let mut bodies = entries(&log);
    bodies.remove(7);
    let r = verify_store(log.tree.store(), bodies, 20, &[head]).unwrap();
    assert_eq!(r.findings, vec![StoreFinding::EntryMissing { sequence: 7 }]);

    // Truncated log (restored from an older backup) vs a signed checkpoint.
    let short = Log::with_entries(12);
    let r = verify_store(short.tree.store(), entries(&short), 12, &[head]).unwrap();
    assert_eq!(
        r.findings,
        vec![StoreFinding::LogShorterThanCheckpoint {
            log_size: 12,
            checkpoint_size: 20
        }]
    );

    // Stored interior hash changed.
    let mut log2 = Log::with_entries(20);
    log2.tree.store_mut().set(2, 1, leaf_hash(b"x")).unwrap();
    let r = verify_store(log2.tree.store(), entries(&log2), 20, &[head]).unwrap();
    assert_eq!(
        r.findings,
        vec![StoreFinding::NodeMismatch {
            level: 2,
            index: 1,
            first_sequence: 4,
            last_sequence: 7
        }]
    );

    // Index out of order, and beyond the size.
    let mut audit = StoreAudit::new(log.tree.store(), 20, &[]);
    audit.feed(0, log.bodies[0].as_deref()).unwrap();
    audit.feed(0, log.bodies[0].as_deref()).unwrap();
    audit.feed(u64::MAX, Some(b"x".as_slice())).unwrap();
    for i in 1..20 {
        audit.feed(i, log.bodies[i as usize].as_deref()).unwrap();
    }
    let r = audit.finish().unwrap();
    assert_eq!(
        r.findings,
        vec![
            StoreFinding::EntryOutOfOrder {
                index: 0,
                expected: 1
            },
            StoreFinding::EntryBeyondSize {
                index: u64::MAX,
                size: 20
            }
        ]
    );
}

#[test]
fn retention_prunes_bodies_and_everything_still_verifies() {
    let mut log = Log::with_entries(60);
    let decoded: Vec<Entry> = log
        .bodies
        .iter()
        .map(|b| Entry::decode(b.as_ref().unwrap()).unwrap())
        .collect();
    // Entries are 1 s apart from 1_700_000_000_000.
    let cutoff = 1_700_000_000_000 + 25 * 1000;
    let plan = plan_retention(&decoded, cutoff);
    assert_eq!(plan.prunable, (0..25).collect::<Vec<u64>>());
    assert_eq!(plan.summary.pruned, 25);
    assert_eq!(plan.summary.first_sequence, Some(0));
    assert_eq!(plan.summary.last_sequence, Some(24));
    let total: u64 = plan.summary.groups.values().map(|g| g.entries).sum();
    assert_eq!(total, 25);
    let sm = plan
        .summary
        .groups
        .get(&(
            "smart-meter-readings".to_string(),
            Some("AcademicResearch".to_string()),
        ))
        .unwrap();
    let expected = decoded[..25]
        .iter()
        .filter(|e| {
            e.resource == "smart-meter-readings" && e.purpose.as_deref() == Some("AcademicResearch")
        })
        .count() as u64;
    assert_eq!(sm.entries, expected);
    let allowed: u64 = plan.summary.groups.values().map(|g| g.allowed).sum();
    assert_eq!(
        allowed,
        decoded[..25]
            .iter()
            .filter(|e| e.decision == Some(Decision::Allow))
            .count() as u64
    );

    // The retention run is itself logged, committing to the summary.
    let kind = plan.summary.to_entry_kind().unwrap().unwrap();
    let EntryKind::Retention {
        summary_hash,
        pruned_count,
        ..
    } = &kind
    else {
        panic!()
    };
    assert_eq!(*pruned_count, 25);
    assert_eq!(*summary_hash, plan.summary.hash().unwrap());
    let mut changed = plan.summary.clone();
    changed.pruned += 1;
    assert_ne!(changed.hash().unwrap(), *summary_hash);

    for s in &plan.prunable {
        log.bodies[*s as usize] = None;
    }
    let mut e = sample_entry(60);
    e.kind = kind;
    log.append(&e);

    let head = log.checkpoint().tree_head();
    let r = verify_store(log.tree.store(), entries(&log), 61, &[head]).unwrap();
    assert!(r.is_ok(), "{:?}", r.findings);
    assert_eq!(r.entries_pruned, 25);
    assert_eq!(r.entries_checked, 36);

    // Proofs for pruned positions still work, and a bundle across the
    // boundary verifies with pruned markers.
    let root = log.tree.root();
    let leaf3 = log.tree.store().node(0, 3).unwrap().unwrap();
    let p = inclusion_proof(log.tree.store(), 3, 61).unwrap();
    verify_inclusion(&leaf3, 3, 61, &p, &root).unwrap();
    let note = log.signed_checkpoint(&[&swm(), &tum()]);
    let bundle = build_bundle(log.tree.store(), &note, 20, log.slots(20, 61), None).unwrap();
    let rep = verify_bundle(
        &bundle.encode().unwrap(),
        &trust_file(&[&swm(), &tum()], None),
    );
    assert!(rep.is_ok(), "{:?}", rep.failures);
    assert_eq!(rep.entries_pruned, 5);
    assert_eq!(rep.entries.len(), 36);

    // Nothing older than the cutoff: nothing to prune, no retention entry.
    let none = plan_retention(&decoded, 0);
    assert!(none.prunable.is_empty());
    assert_eq!(none.summary.to_entry_kind().unwrap(), None);
    let _ = log_signer();
}
