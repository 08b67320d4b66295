//! Export bundles and the offline verifier: a good bundle verifies; every
//! edited byte of an entry is detected and named; wrong keys, missing or
//! forged cosignatures, pruned and omitted entries, earlier checkpoints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_audit::*;
use common::{Log, ORIGIN, Rng, log_signer, swm, trust_file, tum};

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in bundle")
}

fn standard_bundle(log: &Log, start: u64, end: u64) -> Vec<u8> {
    let note = log.signed_checkpoint(&[&swm(), &tum()]);
    build_bundle(log.tree.store(), &note, start, log.slots(start, end), None)
        .unwrap()
        .encode()
        .unwrap()
}

#[test]
fn a_good_bundle_verifies_and_yields_its_entries() {
    let log = Log::with_entries(50);
    let bytes = standard_bundle(&log, 10, 30);
    let report = verify_bundle(&bytes, &trust_file(&[&swm(), &tum()], None));
    assert!(report.is_ok(), "{:?}", report.failures);
    assert_eq!(report.origin.as_deref(), Some(ORIGIN));
    assert_eq!(report.tree_head.unwrap().size, 50);
    assert_eq!(report.range, Some((10, 30)));
    assert_eq!(report.entries_matched, 20);
    assert_eq!(report.entries.len(), 20);
    assert_eq!(report.entries[0], common::sample_entry(10));
    assert_eq!(report.log_key.as_ref().unwrap().0, ORIGIN);
    assert!(
        report
            .cosignatures
            .iter()
            .all(|c| matches!(c.status, CosignatureStatus::Valid { .. }))
    );
    // Bundles decode/encode losslessly.
    assert_eq!(Bundle::decode(&bytes).unwrap().encode().unwrap(), bytes);
}

#[test]
fn every_byte_of_every_entry_edited_is_detected_and_named() {
    let log = Log::with_entries(24);
    let (start, end) = (3u64, 21u64);
    let bytes = standard_bundle(&log, start, end);
    let trust = trust_file(&[&swm(), &tum()], None);
    let mut checked = 0;
    for seq in start..end {
        let body = log.bodies[seq as usize].as_ref().unwrap();
        let at = find(&bytes, body);
        for i in 0..body.len() {
            for flip in [0x01u8, 0x80] {
                let mut m = bytes.clone();
                m[at + i] ^= flip;
                let r = verify_bundle(&m, &trust);
                assert!(!r.is_ok(), "entry {seq} byte {i} edit not detected");
                assert_eq!(
                    r.failures,
                    vec![Failure::EntryModified { sequence: seq }],
                    "entry {seq} byte {i}"
                );
                assert_eq!(r.failed_sequences(), vec![seq]);
                assert!(r.entries.is_empty());
                checked += 1;
            }
        }
    }
    assert!(checked > 1000);
    assert!(
        Failure::EntryModified { sequence: 7 }
            .to_string()
            .contains("entry 7 was modified")
    );
}

#[test]
fn every_byte_of_the_whole_bundle_edited_is_detected_without_panicking() {
    let log = Log::with_entries(12);
    let note = log.signed_checkpoint(&[&swm(), &tum()]);
    let earlier = {
        let small = Log::with_entries(5);
        sign_checkpoint(&log_signer(), &small.checkpoint()).unwrap()
    };
    let bytes = build_bundle(log.tree.store(), &note, 2, log.slots(2, 9), Some(&earlier))
        .unwrap()
        .encode()
        .unwrap();
    let trust = trust_file(&[&swm(), &tum()], None);
    assert!(verify_bundle(&bytes, &trust).is_ok());
    for i in 0..bytes.len() {
        let mut m = bytes.clone();
        m[i] ^= 0x04;
        let r = verify_bundle(&m, &trust);
        assert!(
            !r.is_ok(),
            "edit at byte {i} of {} not detected",
            bytes.len()
        );
    }
    // Truncations and appended garbage.
    for cut in 0..bytes.len() {
        assert!(!verify_bundle(&bytes[..cut], &trust).is_ok());
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        verify_bundle(&longer, &trust).failures[..],
        [Failure::MalformedBundle(_)]
    ));
    let mut rng = Rng::new(1);
    for _ in 0..300 {
        let len = rng.below(400) as usize;
        let mut junk = rng.bytes(len);
        if junk.len() > 9 {
            junk[..8].copy_from_slice(b"ALMAUDIT");
            junk[8] = 1;
        }
        assert!(!verify_bundle(&junk, &trust).is_ok());
    }
}

#[test]
fn an_edited_leaf_hash_is_caught_by_the_range_proof_and_names_the_entry() {
    let log = Log::with_entries(20);
    let bytes = standard_bundle(&log, 0, 20);
    let h5 = log.tree.store().node(0, 5).unwrap().unwrap();
    let at = find(&bytes, h5.as_bytes());
    let mut m = bytes.clone();
    m[at] ^= 1;
    let r = verify_bundle(&m, &trust_file(&[&swm(), &tum()], None));
    assert!(
        r.failures
            .iter()
            .any(|f| matches!(f, Failure::RangeProofInvalid { .. }))
    );
    assert!(r.failures.contains(&Failure::EntryModified { sequence: 5 }));
}

#[test]
fn rewriting_an_entry_and_its_leaf_hash_together_still_fails() {
    let log = Log::with_entries(20);
    let note = log.signed_checkpoint(&[&swm(), &tum()]);
    let mut b = build_bundle(log.tree.store(), &note, 0, log.slots(0, 20), None).unwrap();
    let mut forged = common::sample_entry(6);
    forged.purpose = Some("InsuranceUnderwriting".into());
    let fb = forged.encode().unwrap();
    b.leaf_hashes[6] = leaf_hash(&fb);
    b.slots[6] = BundleSlot::Entry(fb);
    let r = verify_bundle(&b.encode().unwrap(), &trust_file(&[&swm(), &tum()], None));
    assert_eq!(r.failures.len(), 1);
    assert!(matches!(
        r.failures[0],
        Failure::RangeProofInvalid {
            start: 0,
            end: 20,
            ..
        }
    ));
}

#[test]
fn wrong_log_key_in_the_trust_file_is_reported() {
    let log = Log::with_entries(8);
    let bytes = standard_bundle(&log, 0, 8);
    let wrong = Ed25519Signer::from_seed(ORIGIN, SignatureType::Ed25519, &[42u8; 32]).unwrap();
    let trust = TrustFile::new(
        vec![TrustedLog {
            origin: ORIGIN.into(),
            keys: vec![wrong.verifier_key()],
        }],
        vec![swm().verifier_key(), tum().verifier_key()],
        None,
    )
    .unwrap();
    let r = verify_bundle(&bytes, &trust);
    assert_eq!(
        r.failures,
        vec![Failure::NoTrustedLogSignature {
            origin: ORIGIN.into()
        }]
    );
    assert!(r.entries.is_empty());

    // A trust file for another log only.
    let other = TrustFile::new(
        vec![TrustedLog {
            origin: "swm.allmende.example/audit".into(),
            keys: vec![log_signer().verifier_key()],
        }],
        vec![],
        None,
    )
    .unwrap();
    let r = verify_bundle(&bytes, &other);
    assert!(r.failures.contains(&Failure::UnknownLog {
        origin: ORIGIN.into()
    }));
}

#[test]
fn keys_inside_the_bundle_are_never_trusted() {
    // An attacker re-signs a forged log with their own key named like the log.
    let mut log = Log::with_entries(8);
    let mut e = common::sample_entry(8);
    e.principal.org = "nobody".into();
    log.append(&e);
    let evil = Ed25519Signer::from_seed(ORIGIN, SignatureType::Ed25519, &[66u8; 32]).unwrap();
    let note = sign_checkpoint(&evil, &log.checkpoint()).unwrap();
    let bytes = build_bundle(log.tree.store(), &note, 0, log.slots(0, 9), None)
        .unwrap()
        .encode()
        .unwrap();
    let r = verify_bundle(&bytes, &trust_file(&[], None));
    assert!(r.failures.contains(&Failure::NoTrustedLogSignature {
        origin: ORIGIN.into()
    }));
}

#[test]
fn cosignature_problems_are_named_per_witness() {
    let log = Log::with_entries(10);
    // Only swm cosigned.
    let note = log.signed_checkpoint(&[&swm()]);
    let bytes = build_bundle(log.tree.store(), &note, 0, log.slots(0, 10), None)
        .unwrap()
        .encode()
        .unwrap();
    let r = verify_bundle(&bytes, &trust_file(&[&swm(), &tum()], None));
    assert_eq!(
        r.failures,
        vec![Failure::WitnessQuorumNotMet {
            valid: 1,
            required: 2,
            missing: vec!["tum.allmende.example/witness".into()]
        }]
    );
    // Quorum 1 is satisfied.
    assert!(verify_bundle(&bytes, &trust_file(&[&swm(), &tum()], Some(1))).is_ok());

    // A forged cosignature line for tum (right name and key id, bad signature).
    let mut c = cosign(&tum(), &log.checkpoint().to_text(), 5).unwrap();
    c.signature[20] ^= 1;
    let forged = add_cosignatures(&note, &[c]).unwrap();
    let bytes = build_bundle(log.tree.store(), &forged, 0, log.slots(0, 10), None)
        .unwrap()
        .encode()
        .unwrap();
    let r = verify_bundle(&bytes, &trust_file(&[&swm(), &tum()], Some(1)));
    let tum_id = tum().key_id();
    assert_eq!(
        r.failures,
        vec![Failure::CosignatureInvalid {
            witness: "tum.allmende.example/witness".into(),
            key_id: tum_id
        }]
    );
    // A cosignature over a different checkpoint (copied from another tree) is invalid too.
    let other = Log::with_entries(11);
    let c = cosign(&tum(), &other.checkpoint().to_text(), 5).unwrap();
    let copied = add_cosignatures(&note, &[c]).unwrap();
    let bytes = build_bundle(log.tree.store(), &copied, 0, log.slots(0, 10), None)
        .unwrap()
        .encode()
        .unwrap();
    let r = verify_bundle(&bytes, &trust_file(&[&swm(), &tum()], None));
    assert!(
        r.failures
            .iter()
            .any(|f| matches!(f, Failure::CosignatureInvalid { .. }))
    );
}

#[test]
fn pruned_and_omitted_entries_keep_the_bundle_verifiable() {
    let mut log = Log::with_entries(30);
    for i in [0usize, 1, 2, 3, 11] {
        log.bodies[i] = None;
    }
    let note = log.signed_checkpoint(&[&swm(), &tum()]);
    let mut slots = log.slots(0, 30);
    slots[20] = BundleSlot::Omitted;
    let bytes = build_bundle(log.tree.store(), &note, 0, slots, None)
        .unwrap()
        .encode()
        .unwrap();
    let r = verify_bundle(&bytes, &trust_file(&[&swm(), &tum()], None));
    assert!(r.is_ok(), "{:?}", r.failures);
    assert_eq!(r.entries_pruned, 5);
    assert_eq!(r.entries_omitted, 1);
    assert_eq!(r.entries_matched, 24);
    assert_eq!(r.entries.len(), 24);
}

#[test]
fn earlier_checkpoint_consistency_is_checked() {
    let mut log = Log::with_entries(7);
    let old_note = sign_checkpoint(&log_signer(), &log.checkpoint()).unwrap();
    for i in 7..40 {
        log.append(&common::sample_entry(i));
    }
    let note = log.signed_checkpoint(&[&swm(), &tum()]);
    let trust = trust_file(&[&swm(), &tum()], None);
    let b = build_bundle(
        log.tree.store(),
        &note,
        30,
        log.slots(30, 40),
        Some(&old_note),
    )
    .unwrap();
    let r = verify_bundle(&b.encode().unwrap(), &trust);
    assert!(r.is_ok(), "{:?}", r.failures);
    assert_eq!(r.consistent_with.unwrap().size, 7);

    // A fork: an earlier checkpoint of a different history of size 7.
    let mut fork = Log::with_entries(6);
    let mut e = common::sample_entry(6);
    e.action = "delete".into();
    fork.append(&e);
    let fork_note = sign_checkpoint(&log_signer(), &fork.checkpoint()).unwrap();
    let mut b2 = b.clone();
    b2.earlier = Some(EarlierCheckpoint {
        note: fork_note,
        consistency_proof: b.earlier.clone().unwrap().consistency_proof,
    });
    let r = verify_bundle(&b2.encode().unwrap(), &trust);
    assert!(matches!(
        r.failures[..],
        [Failure::ConsistencyProofInvalid {
            old_size: 7,
            new_size: 40,
            ..
        }]
    ));
    // An earlier checkpoint not signed by the log.
    let evil = Ed25519Signer::from_seed(ORIGIN, SignatureType::Ed25519, &[3u8; 32]).unwrap();
    let mut b3 = b.clone();
    b3.earlier = Some(EarlierCheckpoint {
        note: sign_checkpoint(&evil, &Log::with_entries(7).checkpoint()).unwrap(),
        consistency_proof: b.earlier.clone().unwrap().consistency_proof,
    });
    let r = verify_bundle(&b3.encode().unwrap(), &trust);
    assert!(matches!(
        r.failures[..],
        [Failure::EarlierCheckpointInvalid { .. }]
    ));
}

#[test]
fn a_range_beyond_the_checkpoint_cannot_be_built_or_verified() {
    let log = Log::with_entries(10);
    let note = log.signed_checkpoint(&[]);
    assert!(build_bundle(log.tree.store(), &note, 5, log.slots(5, 10), None).is_ok());
    let mut longer = Log::with_entries(12);
    longer.bodies.truncate(12);
    assert!(build_bundle(longer.tree.store(), &note, 8, longer.slots(8, 12), None).is_err());
    // Hand-crafted: start moved beyond the tree.
    let mut b = build_bundle(log.tree.store(), &note, 5, log.slots(5, 10), None).unwrap();
    b.start = 8;
    let r = verify_bundle(&b.encode().unwrap(), &trust_file(&[], None));
    assert!(
        r.failures
            .iter()
            .any(|f| matches!(f, Failure::RangeOutsideTree { .. }))
    );
}

#[test]
fn trust_file_toml_round_trips_and_is_validated() {
    let t = trust_file(&[&swm(), &tum()], Some(1));
    let text = t.to_toml();
    assert_eq!(TrustFile::from_toml(&text).unwrap(), t);
    let log_vkey = log_signer().verifier_key().to_vkey();
    let w_vkey = swm().verifier_key().to_vkey();
    assert!(TrustFile::from_toml("").is_err(), "no logs");
    assert!(
        TrustFile::from_toml(&format!(
            "[[log]]\norigin = \"{ORIGIN}\"\nkeys = [\"{w_vkey}\"]\n"
        ))
        .is_err(),
        "a 0x04 key cannot be a log key"
    );
    assert!(TrustFile::from_toml(&format!(
        "[[log]]\norigin = \"{ORIGIN}\"\nkeys = [\"{log_vkey}\"]\n[[witness]]\nkey = \"{log_vkey}\"\n"
    ))
    .is_err(), "a 0x01 key cannot be a witness key");
    assert!(TrustFile::from_toml(&format!(
        "witness_quorum = 2\n[[log]]\norigin = \"{ORIGIN}\"\nkeys = [\"{log_vkey}\"]\n[[witness]]\nkey = \"{w_vkey}\"\n"
    ))
    .is_err(), "quorum above witness count");
    assert!(
        TrustFile::from_toml(&format!(
            "[[log]]\norigin = \"{ORIGIN}\"\nkeys = [\"{log_vkey}\"]\ntypo = 1\n"
        ))
        .is_err(),
        "unknown fields"
    );
    let ok = TrustFile::from_toml(&format!(
        "[[log]]\norigin = \"{ORIGIN}\"\nkeys = [\"{log_vkey}\"]\n[[witness]]\nkey = \"{w_vkey}\"\n"
    ))
    .unwrap();
    assert_eq!(ok.quorum(), 1, "default quorum = all witnesses");
}
