//! Entry encoding: round trips, determinism, strict rejection of malformed
//! input, and keyed subject hashes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_audit::*;
use common::{Rng, sample_entry, subject_hasher};

#[test]
fn every_kind_round_trips_and_encoding_is_deterministic() {
    for seq in 0..200 {
        let e = sample_entry(seq);
        let a = e.encode().unwrap();
        let b = e.clone().encode().unwrap();
        assert_eq!(a, b);
        assert_eq!(Entry::decode(&a).unwrap(), e, "seq {seq}");
        assert_eq!(e.leaf_hash().unwrap(), leaf_hash(&a));
    }
}

#[test]
fn documented_layout_of_a_minimal_entry() {
    let e = Entry {
        sequence: 1,
        time_ms: 2,
        node: "n".into(),
        principal: Principal {
            org: "o".into(),
            user: None,
        },
        action: "a".into(),
        resource: "r".into(),
        purpose: None,
        decision: Some(Decision::Deny),
        policy_ids: vec!["p".into()],
        policy_set_hash: None,
        grant_id: None,
        request_id: None,
        peer_node: None,
        kind: EntryKind::Decision,
        subjects: vec![],
    };
    let mut want = vec![1u8];
    want.extend_from_slice(&1u64.to_be_bytes());
    want.extend_from_slice(&2u64.to_be_bytes());
    for s in ["n", "o"] {
        want.extend_from_slice(&[0, 1]);
        want.extend_from_slice(s.as_bytes());
    }
    want.push(0); // user absent
    for s in ["a", "r"] {
        want.extend_from_slice(&[0, 1]);
        want.extend_from_slice(s.as_bytes());
    }
    want.push(0); // purpose absent
    want.push(2); // deny
    want.extend_from_slice(&[0, 1, 0, 1, b'p']); // one policy id "p"
    want.extend_from_slice(&[0, 0, 0, 0]); // policy_set_hash, grant, request, peer absent
    want.push(0); // kind decision
    want.extend_from_slice(&[0, 0, 0, 0]); // no subjects
    assert_eq!(e.encode().unwrap(), want);
}

/// The consent status is hashed into stored logs as one fixed byte per
/// value (given 0, refused 1, withdrawn 2), whatever the shared
/// vocabulary's declaration order: stored logs must keep verifying.
#[test]
fn consent_status_bytes_are_pinned() {
    let minimal = |kind| Entry {
        sequence: 1,
        time_ms: 2,
        node: "n".into(),
        principal: Principal {
            org: "o".into(),
            user: None,
        },
        action: "a".into(),
        resource: "r".into(),
        purpose: None,
        decision: None,
        policy_ids: vec![],
        policy_set_hash: None,
        grant_id: None,
        request_id: None,
        peer_node: None,
        kind,
        subjects: vec![],
    };
    let decision = minimal(EntryKind::Decision).encode().unwrap();
    // Everything before the kind tag, then the tag; no subjects after.
    let (head, tail) = decision.split_at(decision.len() - 5);
    assert_eq!(tail, [0, 0, 0, 0, 0]);
    for (status, byte) in [
        (ConsentStatus::Given, 0u8),
        (ConsentStatus::Refused, 1),
        (ConsentStatus::Withdrawn, 2),
    ] {
        let e = minimal(EntryKind::ConsentChange { status });
        let mut want = head.to_vec();
        want.extend_from_slice(&[4, byte, 0, 0, 0, 0]);
        let got = e.encode().unwrap();
        assert_eq!(got, want, "{status}");
        assert_eq!(Entry::decode(&got).unwrap(), e);
    }
}

#[test]
fn every_truncation_is_rejected() {
    for seq in 0..9 {
        let bytes = sample_entry(seq).encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..cut]).is_err(), "seq {seq} cut {cut}");
        }
    }
}

#[test]
fn trailing_bytes_unknown_version_and_bad_tags_are_rejected() {
    let e = sample_entry(3);
    let bytes = e.encode().unwrap();
    let mut t = bytes.clone();
    t.push(0);
    assert!(matches!(
        Entry::decode(&t),
        Err(EntryError::Decode(DecodeError::TrailingBytes { count: 1 }))
    ));
    let mut v = bytes.clone();
    v[0] = 2;
    assert!(matches!(
        Entry::decode(&v),
        Err(EntryError::Decode(DecodeError::UnsupportedVersion {
            version: 2
        }))
    ));
    assert!(Entry::decode(&[]).is_err());

    // Option flag other than 0/1 (principal.user follows version, seq, time, node, org).
    let off = 1 + 8 + 8 + 2 + e.node.len() + 2 + e.principal.org.len();
    let mut f = bytes.clone();
    f[off] = 7;
    assert!(matches!(
        Entry::decode(&f),
        Err(EntryError::Decode(DecodeError::InvalidTag { .. }))
    ));

    // Unknown kind tag: find it by re-encoding with a known kind and patching.
    let mut k = Entry {
        kind: EntryKind::Decision,
        subjects: vec![],
        ..e.clone()
    }
    .encode()
    .unwrap();
    let kind_pos = k.len() - 5;
    assert_eq!(k[kind_pos], 0);
    k[kind_pos] = 200;
    assert!(matches!(
        Entry::decode(&k),
        Err(EntryError::Decode(DecodeError::InvalidTag {
            field: "kind",
            value: 200
        }))
    ));

    // Invalid UTF-8 in the node field.
    let mut u = bytes.clone();
    u[1 + 8 + 8 + 2] = 0xff;
    assert!(matches!(
        Entry::decode(&u),
        Err(EntryError::Decode(DecodeError::InvalidUtf8 {
            field: "node"
        }))
    ));
}

#[test]
fn huge_counts_do_not_allocate_or_panic() {
    // A subject count of u32::MAX with nothing behind it.
    let e = Entry {
        subjects: vec![],
        ..sample_entry(0)
    };
    let mut b = e.encode().unwrap();
    let n = b.len();
    b[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Entry::decode(&b),
        Err(EntryError::Decode(DecodeError::CountTooLarge {
            field: "subjects",
            ..
        }))
    ));
}

#[test]
fn random_mutations_never_panic_and_never_decode_to_the_same_entry() {
    let mut rng = Rng::new(99);
    for seq in 0..30 {
        let e = sample_entry(seq);
        let bytes = e.encode().unwrap();
        for _ in 0..300 {
            let mut m = bytes.clone();
            let flips = 1 + rng.below(3);
            for _ in 0..flips {
                let i = rng.below(m.len() as u64) as usize;
                m[i] ^= 1 << rng.below(8);
            }
            if m == bytes {
                continue; // the same bit was flipped twice
            }
            if let Ok(d) = Entry::decode(&m) {
                // Decoding is canonical: a different byte string is a different entry.
                assert_ne!(d, e);
                assert_eq!(d.encode().unwrap(), m);
            }
        }
        // Random garbage of random length.
        for _ in 0..100 {
            let len = rng.below(200) as usize;
            let _ = Entry::decode(&rng.bytes(len));
        }
    }
}

#[test]
fn fields_too_long_for_their_prefix_are_refused_at_encoding() {
    let mut e = sample_entry(1);
    e.resource = "x".repeat(70_000);
    assert!(matches!(e.encode(), Err(EntryError::Encode(_))));
    let mut e = sample_entry(1);
    e.policy_ids = vec![String::new(); 70_000];
    assert!(matches!(e.encode(), Err(EntryError::Encode(_))));
}

#[test]
fn subject_hashes_are_keyed_deterministic_and_domain_separated() {
    let h = subject_hasher();
    let a = h.hash("household-17");
    assert_eq!(a, h.hash("household-17"));
    assert_ne!(a, h.hash("household-18"));
    let other = SubjectHasher::new(&[8u8; 32]).unwrap();
    assert_ne!(
        a,
        other.hash("household-17"),
        "another node secret, another hash"
    );
    // Not a bare SHA-256 or HMAC over the id alone.
    assert_ne!(a.0, leaf_hash(b"household-17").0);
    assert!(SubjectHasher::new(&[1u8; 16]).is_err());
    assert!(
        !format!("{h:?}").contains("7, 7"),
        "secret must not leak through Debug"
    );
    // HMAC-SHA256(key=[7;32], "allmende-audit-subject-v1\0household-17"),
    // computed independently with ring::hmac here.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]);
    let tag = ring::hmac::sign(&key, b"allmende-audit-subject-v1\0household-17");
    assert_eq!(&a.0[..], tag.as_ref());
    // Entries answer "does this concern me".
    let e = sample_entry(3);
    assert!(e.concerns(&h.hash("household-0")));
    assert!(!e.concerns(&h.hash("household-9")));
}
