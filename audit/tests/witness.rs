//! Witnessing: cosign consistent checkpoints, report split views,
//! unproven growth, stale and foreign checkpoints; rollback detection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_audit::*;
use common::{Log, log_signer, sample_entry, swm, tum};

fn keys() -> Vec<VerifierKey> {
    vec![log_signer().verifier_key()]
}

fn signed(log: &Log) -> String {
    sign_checkpoint(&log_signer(), &log.checkpoint()).unwrap()
}

#[test]
fn witness_cosigns_a_growing_consistent_log() {
    let w = swm();
    let mut log = Log::with_entries(5);
    let first = witness_checkpoint(&w, &keys(), None, signed(&log).as_bytes(), &[], 100).unwrap();
    assert_eq!(first.state.head.size, 5);
    assert_eq!(
        verify_cosignature(
            &w.verifier_key(),
            &log.checkpoint().to_text(),
            &first.cosignature
        ),
        Some(100)
    );

    for i in 5..23 {
        log.append(&sample_entry(i));
    }
    let proof = consistency_proof(log.tree.store(), 5, 23).unwrap();
    let second = witness_checkpoint(
        &w,
        &keys(),
        Some(&first.state),
        signed(&log).as_bytes(),
        &proof,
        200,
    )
    .unwrap();
    assert_eq!(second.state.head.size, 23);
    // The cosigned note verifies as a whole.
    let note = add_cosignatures(&signed(&log), std::slice::from_ref(&second.cosignature)).unwrap();
    let parsed = SignedNote::parse(note.as_bytes()).unwrap();
    assert_eq!(
        check_cosignatures(&parsed, &[w.verifier_key()])[0].status,
        CosignatureStatus::Valid { timestamp: 200 }
    );
    // Same checkpoint again: cosigned again (fresh timestamp), no proof needed.
    let again = witness_checkpoint(
        &w,
        &keys(),
        Some(&second.state),
        signed(&log).as_bytes(),
        &[],
        300,
    )
    .unwrap();
    assert_eq!(again.state.head, second.state.head);
}

#[test]
fn two_roots_for_one_size_is_a_split_view_with_evidence() {
    let w = tum();
    let log = Log::with_entries(10);
    let seen = witness_checkpoint(&w, &keys(), None, signed(&log).as_bytes(), &[], 1).unwrap();
    // The log shows someone else a history where entry 9 differs.
    let mut other = Log::with_entries(9);
    let mut e = sample_entry(9);
    e.decision = Some(Decision::Allow);
    e.purpose = Some("InsuranceUnderwriting".into());
    other.append(&e);
    let err = witness_checkpoint(
        &w,
        &keys(),
        Some(&seen.state),
        signed(&other).as_bytes(),
        &[],
        2,
    )
    .unwrap_err();
    let WitnessError::SplitView(ev) = err else {
        panic!("expected split view, got {err:?}");
    };
    assert_eq!(ev.seen.size, 10);
    assert_ne!(ev.seen.root, ev.presented.root);
    // The evidence is two checkpoints validly signed by the log.
    assert!(open_checkpoint(ev.seen_note.as_bytes(), &keys()).is_ok());
    assert!(open_checkpoint(ev.presented_note.as_bytes(), &keys()).is_ok());
    // compare_checkpoints reaches the same verdict.
    let a = open_checkpoint(ev.seen_note.as_bytes(), &keys()).unwrap();
    let b = open_checkpoint(ev.presented_note.as_bytes(), &keys()).unwrap();
    assert!(matches!(
        compare_checkpoints(&a, &b, &[]),
        Comparison::SplitView(_)
    ));
    assert_eq!(compare_checkpoints(&a, &a, &[]), Comparison::Consistent);
}

#[test]
fn growth_without_a_valid_consistency_proof_is_refused() {
    let w = swm();
    let log = Log::with_entries(8);
    let seen = witness_checkpoint(&w, &keys(), None, signed(&log).as_bytes(), &[], 1).unwrap();
    // A rewritten history that grew to 12.
    let mut fork = Log::with_entries(3);
    let mut e = sample_entry(3);
    e.resource = "parking-permits".into();
    fork.append(&e);
    for i in 4..12 {
        fork.append(&sample_entry(i));
    }
    let proof = consistency_proof(fork.tree.store(), 8, 12).unwrap();
    let err = witness_checkpoint(
        &w,
        &keys(),
        Some(&seen.state),
        signed(&fork).as_bytes(),
        &proof,
        2,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            WitnessError::Inconsistent {
                old_size: 8,
                new_size: 12,
                ..
            }
        ),
        "{err:?}"
    );
    // A garbage or missing proof for an honest log is refused as well.
    let mut honest = Log::with_entries(8);
    for i in 8..12 {
        honest.append(&sample_entry(i));
    }
    assert!(matches!(
        witness_checkpoint(
            &w,
            &keys(),
            Some(&seen.state),
            signed(&honest).as_bytes(),
            &[],
            2
        ),
        Err(WitnessError::Inconsistent { .. })
    ));
    let good = consistency_proof(honest.tree.store(), 8, 12).unwrap();
    assert!(
        witness_checkpoint(
            &w,
            &keys(),
            Some(&seen.state),
            signed(&honest).as_bytes(),
            &good,
            2
        )
        .is_ok()
    );
}

#[test]
fn stale_foreign_and_unsigned_checkpoints_are_refused() {
    let w = swm();
    let log = Log::with_entries(8);
    let seen = witness_checkpoint(&w, &keys(), None, signed(&log).as_bytes(), &[], 1).unwrap();
    let older = Log::with_entries(4);
    assert_eq!(
        witness_checkpoint(
            &w,
            &keys(),
            Some(&seen.state),
            signed(&older).as_bytes(),
            &[],
            2
        )
        .unwrap_err(),
        WitnessError::Stale {
            seen: 8,
            presented: 4
        }
    );
    let mut foreign_state = seen.state.clone();
    foreign_state.origin = "swm.allmende.example/audit".into();
    assert!(matches!(
        witness_checkpoint(
            &w,
            &keys(),
            Some(&foreign_state),
            signed(&log).as_bytes(),
            &[],
            2
        ),
        Err(WitnessError::OriginMismatch { .. })
    ));
    let evil =
        Ed25519Signer::from_seed(common::ORIGIN, SignatureType::Ed25519, &[5u8; 32]).unwrap();
    let forged = sign_checkpoint(&evil, &log.checkpoint()).unwrap();
    assert!(matches!(
        witness_checkpoint(&w, &keys(), None, forged.as_bytes(), &[], 2),
        Err(WitnessError::Checkpoint(
            CheckpointError::NoTrustedSignature { .. }
        ))
    ));
    assert!(matches!(
        witness_checkpoint(&w, &keys(), None, b"garbage", &[], 2),
        Err(WitnessError::Checkpoint(_))
    ));
}

#[test]
fn a_restored_older_log_is_reported_against_witnessed_checkpoints() {
    let mut log = Log::with_entries(20);
    let witnessed = vec![(
        "swm.allmende.example/witness".to_string(),
        log.checkpoint().tree_head(),
    )];
    // Up to date: nothing to report.
    assert!(
        check_rollback(log.tree.store(), 20, &witnessed)
            .unwrap()
            .is_empty()
    );
    log.append(&sample_entry(20));
    assert!(
        check_rollback(log.tree.store(), 21, &witnessed)
            .unwrap()
            .is_empty()
    );
    // Restored from a backup with 12 entries.
    let backup = Log::with_entries(12);
    assert_eq!(
        check_rollback(backup.tree.store(), 12, &witnessed).unwrap(),
        vec![RollbackFinding::Behind {
            witness: "swm.allmende.example/witness".into(),
            local_size: 12,
            witnessed_size: 20
        }]
    );
    // A log with rewritten history of the same length.
    let mut rewritten = Log::with_entries(5);
    let mut e = sample_entry(5);
    e.action = "erase".into();
    rewritten.append(&e);
    for i in 6..20 {
        rewritten.append(&sample_entry(i));
    }
    assert!(matches!(
        check_rollback(rewritten.tree.store(), 20, &witnessed).unwrap()[..],
        [RollbackFinding::Forked { size: 20, .. }]
    ));
}
