//! Signed notes, verifier keys, checkpoints and cosignatures, including
//! interoperability vectors from Go's golang.org/x/mod/sumdb/note and
//! transparency-dev/formats, and hostile input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_audit::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ORIGIN, Rng, log_signer, swm, tum};

// golang.org/x/mod/sumdb/note documentation example.
const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

fn go_signer() -> Ed25519Signer {
    // PRIVATE+KEY+<name>+<id>+base64(0x01 ‖ seed)
    let b64 = GO_SKEY.splitn(5, '+').nth(4).unwrap();
    let raw = B64.decode(b64).unwrap();
    assert_eq!(raw[0], 1);
    let seed: [u8; 32] = raw[1..].try_into().unwrap();
    Ed25519Signer::from_seed("PeterNeumann", SignatureType::Ed25519, &seed).unwrap()
}

#[test]
fn go_sumdb_note_vector_signs_and_verifies_byte_for_byte() {
    let s = go_signer();
    assert_eq!(s.key_id(), 0xc74f20a3);
    assert_eq!(s.verifier_key().to_vkey(), GO_VKEY);
    let vk = VerifierKey::parse(GO_VKEY).unwrap();
    assert_eq!(vk, s.verifier_key());

    let mut note = SignedNote::new(GO_TEXT).unwrap();
    note.add_signature(s.sign_note(GO_TEXT).unwrap()).unwrap();
    assert_eq!(
        note.encode(),
        GO_NOTE,
        "ed25519 is deterministic: same bytes as Go"
    );

    let parsed = SignedNote::parse(GO_NOTE.as_bytes()).unwrap();
    assert_eq!(parsed.text(), GO_TEXT);
    assert_eq!(parsed.signatures().len(), 1);
    assert!(vk.verify_note_signature(parsed.text(), &parsed.signatures()[0]));
    let tampered =
        SignedNote::parse(GO_NOTE.replace("cryptography", "cryptographY").as_bytes()).unwrap();
    assert!(!vk.verify_note_signature(tampered.text(), &tampered.signatures()[0]));
}

#[test]
fn transparency_dev_vkeys_parse_with_matching_key_ids() {
    // Type 0x01 whose base64 contains '+', and a native 0x04 cosignature key
    // (transparency-dev/formats note/note_cosigv1_test.go).
    let plus =
        VerifierKey::parse("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6").unwrap();
    assert_eq!(plus.signature_type(), SignatureType::Ed25519);
    assert_eq!(plus.key_id(), 0x7997405c);
    let cosig =
        VerifierKey::parse("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
            .unwrap();
    assert_eq!(cosig.signature_type(), SignatureType::CosignatureV1);
    assert_eq!(cosig.key_id(), 0xda77ade7);
    assert_eq!(
        cosig.to_vkey(),
        "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
    );
    // Key id formula: SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[:4].
    assert_eq!(key_id("remora.n621.de", 4, cosig.public_key()), 0xda77ade7);
}

#[test]
fn mangled_vkeys_are_rejected() {
    // Every proper substring and every single-byte increment (as Go's tests do).
    let b = GO_VKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            if let Ok(s) = std::str::from_utf8(&b[i..j]) {
                assert!(VerifierKey::parse(s).is_err(), "accepted {s:?}");
            }
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] = m[i].wrapping_add(1);
        if let Ok(s) = std::str::from_utf8(&m) {
            assert!(VerifierKey::parse(s).is_err(), "accepted {s:?}");
        }
    }
    // Wrong length key with adjusted hash, unknown algorithm.
    assert!(
        VerifierKey::parse(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
        .is_err()
    );
    assert!(
        VerifierKey::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
            .is_err()
    );
    assert!(VerifierKey::parse("").is_err());
    assert!(VerifierKey::parse("++").is_err());
}

#[test]
fn hostile_notes_are_rejected_without_panicking() {
    let good = sign_checkpoint(
        &log_signer(),
        &Checkpoint::new(ORIGIN, 0, empty_root()).unwrap(),
    )
    .unwrap();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        b"\n".to_vec(),
        b"\n\n".to_vec(),
        b"text\n".to_vec(),
        b"text\n\n".to_vec(),
        b"text\n\n\xe2\x80\x94 name AAAAAAA=".to_vec(), // no final newline
        b"text\n\n- name AAAAAAA=\n".to_vec(),          // hyphen, not em dash
        "text\n\n\u{2014} name\n".as_bytes().to_vec(),
        "text\n\n\u{2014}  AAAAAAA=\n".as_bytes().to_vec(),
        "text\n\n\u{2014} na+me AAAAAAA=\n".as_bytes().to_vec(),
        "text\n\n\u{2014} name AAAA\n".as_bytes().to_vec(), // 3 bytes < 5
        "text\n\n\u{2014} name !!!!\n".as_bytes().to_vec(),
        "text\n\n\u{2014} name AAAAAAA= extra\n".as_bytes().to_vec(),
        "te\rxt\n\n\u{2014} name AAAAAAA=\n".as_bytes().to_vec(),
        "text\t\n\n\u{2014} name AAAAAAA=\n".as_bytes().to_vec(),
        b"text\n\n\xe2\x80\x94 name \xff\xfe\n".to_vec(),
        vec![b'a'; MAX_NOTE_LEN_PLUS],
    ];
    for (i, c) in cases.iter().enumerate() {
        assert!(SignedNote::parse(c).is_err(), "case {i} accepted");
        assert!(open_checkpoint(c, &[log_signer().verifier_key()]).is_err());
    }
    // Too many signatures.
    let mut many = String::from("text\n\n");
    for _ in 0..300 {
        many.push_str("\u{2014} name AAAAAAA=\n");
    }
    assert!(matches!(
        SignedNote::parse(many.as_bytes()),
        Err(NoteError::TooManySignatures { .. })
    ));
    // Random byte mutations of a valid checkpoint note never panic and never
    // verify unless they leave the signed text and signature intact.
    let mut rng = Rng::new(5);
    let keys = [log_signer().verifier_key()];
    let bytes = good.as_bytes();
    for _ in 0..3000 {
        let mut m = bytes.to_vec();
        let i = rng.below(m.len() as u64) as usize;
        m[i] ^= 1 << rng.below(8);
        if let Ok(v) = open_checkpoint(&m, &keys) {
            // Only a change in a part that is not signed can survive, and
            // then the checkpoint itself is unchanged.
            assert_eq!(
                v.checkpoint,
                Checkpoint::parse_text(&good[..good.find("\n\n").unwrap() + 1]).unwrap()
            );
        }
    }
}

const MAX_NOTE_LEN_PLUS: usize = allmende_audit::note::MAX_NOTE_LEN + 1;

#[test]
fn checkpoint_text_parsing_is_strict() {
    let root = leaf_hash(b"r").to_base64();
    let ok = format!("{ORIGIN}\n12\n{root}\n");
    let cp = Checkpoint::parse_text(&ok).unwrap();
    assert_eq!(cp.size, 12);
    assert_eq!(cp.to_text(), ok);
    let ext = format!("{ORIGIN}\n12\n{root}\nextension\n");
    assert_eq!(
        Checkpoint::parse_text(&ext).unwrap().extensions,
        vec!["extension"]
    );
    for bad in [
        format!("{ORIGIN}\n12\n{root}"),
        format!("{ORIGIN}\n12\n"),
        format!("{ORIGIN}\n012\n{root}\n"),
        format!("{ORIGIN}\n+12\n{root}\n"),
        format!("{ORIGIN}\n-1\n{root}\n"),
        format!("{ORIGIN}\n1 2\n{root}\n"),
        format!("{ORIGIN}\n18446744073709551616\n{root}\n"),
        format!("{ORIGIN}\n\n{root}\n"),
        format!("\n12\n{root}\n"),
        format!("two words\n12\n{root}\n"),
        format!("{ORIGIN}\n12\nAAAA\n"),
        format!("{ORIGIN}\n12\n{}\n", &root[..root.len() - 1]),
        format!("{ORIGIN}\n12\n{root}\n\n"),
        format!("{ORIGIN}\n0\n{root}\n"), // size 0 needs the empty root
    ] {
        assert!(Checkpoint::parse_text(&bad).is_err(), "accepted {bad:?}");
    }
    assert!(
        Checkpoint::parse_text(&format!("{ORIGIN}\n0\n{}\n", empty_root().to_base64())).is_ok()
    );
}

#[test]
fn checkpoints_verify_only_with_the_right_log_key_and_support_rotation() {
    let cp = Checkpoint::new(ORIGIN, 5, leaf_hash(b"x")).unwrap();
    let note = sign_checkpoint(&log_signer(), &cp).unwrap();
    let key = log_signer().verifier_key();
    let v = open_checkpoint(note.as_bytes(), std::slice::from_ref(&key)).unwrap();
    assert_eq!(v.checkpoint, cp);
    assert_eq!(v.log_key_id, key.key_id());

    // A different key with the same name: ignored (unknown key) → no trusted signature.
    let other = Ed25519Signer::from_seed(ORIGIN, SignatureType::Ed25519, &[9u8; 32]).unwrap();
    assert!(matches!(
        open_checkpoint(note.as_bytes(), &[other.verifier_key()]),
        Err(CheckpointError::NoTrustedSignature { .. })
    ));
    // Rotation: a note signed by old and new key verifies with either.
    let both = add_cosignatures(&note, &[other.sign_note(&cp.to_text()).unwrap()]).unwrap();
    assert!(open_checkpoint(both.as_bytes(), &[other.verifier_key()]).is_ok());
    assert!(open_checkpoint(both.as_bytes(), std::slice::from_ref(&key)).is_ok());

    // A signature line with the right name and key id but a wrong signature rejects the note.
    let mut bad = SignedNote::parse(note.as_bytes()).unwrap();
    let mut sig = bad.signatures()[0].clone();
    sig.signature[3] ^= 1;
    bad = {
        let mut n = SignedNote::new(bad.text()).unwrap();
        n.add_signature(sig).unwrap();
        n
    };
    assert!(matches!(
        open_checkpoint(bad.encode().as_bytes(), std::slice::from_ref(&key)),
        Err(CheckpointError::SignatureInvalid { .. })
    ));
    // A changed tree size in the text breaks the signature.
    let forged = note.replacen("\n5\n", "\n6\n", 1);
    assert!(open_checkpoint(forged.as_bytes(), &[key]).is_err());
}

#[test]
fn cosignatures_follow_cosignature_v1_and_are_checked_per_witness() {
    let cp = Checkpoint::new(ORIGIN, 7, leaf_hash(b"root")).unwrap();
    let text = cp.to_text();
    let w = swm();
    let c = cosign(&w, &text, 1_679_315_147).unwrap();
    assert_eq!(c.signature.len(), 72);
    assert_eq!(&c.signature[..8], &1_679_315_147u64.to_be_bytes());
    // The signed message is exactly "cosignature/v1\ntime <t>\n" + note text,
    // checked here with ring directly.
    let msg = format!("cosignature/v1\ntime 1679315147\n{text}");
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ED25519,
        w.verifier_key().public_key(),
    )
    .verify(msg.as_bytes(), &c.signature[8..])
    .unwrap();
    // Key id uses type 0x04.
    assert_eq!(
        c.key_id,
        key_id(w.name(), 0x04, w.verifier_key().public_key())
    );
    assert_eq!(
        verify_cosignature(&w.verifier_key(), &text, &c),
        Some(1_679_315_147)
    );

    // Tampered timestamp, text or key: rejected.
    let mut t = c.clone();
    t.signature[7] ^= 1;
    assert_eq!(verify_cosignature(&w.verifier_key(), &text, &t), None);
    assert_eq!(
        verify_cosignature(&w.verifier_key(), &text.replace('7', "8"), &c),
        None
    );
    assert_eq!(verify_cosignature(&tum().verifier_key(), &text, &c), None);
    // A log (0x01) key cannot cosign and a cosigner cannot sign checkpoints.
    assert!(cosign(&log_signer(), &text, 1).is_err());
    assert!(w.sign_note(&text).is_err());
    assert!(cosign(&w, &text, u64::MAX).is_err());
    assert!(cosign(&w, "not a checkpoint\n", 1).is_err());

    let note = sign_checkpoint(&log_signer(), &cp).unwrap();
    let note = add_cosignatures(&note, std::slice::from_ref(&c)).unwrap();
    let parsed = SignedNote::parse(note.as_bytes()).unwrap();
    let checks = check_cosignatures(&parsed, &[swm().verifier_key(), tum().verifier_key()]);
    assert_eq!(
        checks[0].status,
        CosignatureStatus::Valid {
            timestamp: 1_679_315_147
        }
    );
    assert_eq!(checks[1].status, CosignatureStatus::Missing);
    // Cosignatures do not disturb the log signature check.
    assert!(open_checkpoint(note.as_bytes(), &[log_signer().verifier_key()]).is_ok());
}

#[test]
fn pkcs8_keys_round_trip() {
    let der = generate_pkcs8().unwrap();
    let a = Ed25519Signer::from_pkcs8("a.example/log", SignatureType::Ed25519, &der).unwrap();
    let b = Ed25519Signer::from_pkcs8("a.example/log", SignatureType::Ed25519, &der).unwrap();
    assert_eq!(a.verifier_key(), b.verifier_key());
    assert!(Ed25519Signer::from_pkcs8("a.example/log", SignatureType::Ed25519, b"junk").is_err());
    assert!(Ed25519Signer::from_pkcs8("bad name", SignatureType::Ed25519, &der).is_err());
    assert!(!format!("{a:?}").contains("key_pair"));
}
