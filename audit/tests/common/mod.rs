//! Shared helpers for the integration tests: deterministic RNG, sample
//! entries, keys and a small in-memory "node" with a log.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use allmende_audit::*;

/// xorshift64* — deterministic, good enough to pick test cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

pub const ORIGIN: &str = "stadt.allmende.example/audit";

pub fn seed(tag: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = tag.wrapping_mul(31).wrapping_add(i as u8);
    }
    s
}

pub fn log_signer() -> Ed25519Signer {
    Ed25519Signer::from_seed(ORIGIN, SignatureType::Ed25519, &seed(1)).unwrap()
}

pub fn witness(name: &str, tag: u8) -> Ed25519Signer {
    Ed25519Signer::from_seed(name, SignatureType::CosignatureV1, &seed(tag)).unwrap()
}

pub fn swm() -> Ed25519Signer {
    witness("swm.allmende.example/witness", 2)
}

pub fn tum() -> Ed25519Signer {
    witness("tum.allmende.example/witness", 3)
}

pub fn subject_hasher() -> SubjectHasher {
    SubjectHasher::new(&[7u8; 32]).unwrap()
}

/// A varied sample entry for sequence `seq`.
pub fn sample_entry(seq: u64) -> Entry {
    let h = subject_hasher();
    let kind = match seq % 9 {
        0 => EntryKind::Decision,
        1 => EntryKind::ReleaseIntent,
        2 => EntryKind::ReleaseCompletion {
            intent_sequence: seq.saturating_sub(1),
            rows_released: 1200 + seq,
            rows_filtered: 17,
            bytes: 99_000,
            outcome: ReleaseOutcome::Completed,
        },
        3 => EntryKind::GrantChange {
            op: GrantOp::Approved,
        },
        4 => EntryKind::ConsentChange {
            status: ConsentStatus::Withdrawn,
        },
        5 => EntryKind::PolicyChange {
            op: PolicyOp::Updated,
        },
        6 => EntryKind::FederationChange {
            op: FederationOp::NodeRemoved,
        },
        7 => EntryKind::RefusedAuthentication {
            source: "198.51.100.7".into(),
            interval_start_ms: 1_700_000_000_000,
            interval_end_ms: 1_700_000_060_000,
            count: 42,
        },
        _ => EntryKind::Retention {
            cutoff_ms: 1_600_000_000_000,
            first_sequence: 0,
            last_sequence: 3,
            pruned_count: 4,
            summary_hash: leaf_hash(b"summary"),
        },
    };
    Entry {
        sequence: seq,
        time_ms: 1_700_000_000_000 + seq * 1000,
        node: "swm".into(),
        principal: Principal {
            org: if seq.is_multiple_of(2) {
                "tum"
            } else {
                "versicherung-ag"
            }
            .into(),
            user: (!seq.is_multiple_of(3)).then(|| format!("pseudo-{seq:04}")),
        },
        action: "fetch".into(),
        resource: if seq.is_multiple_of(4) {
            "smart-meter-readings"
        } else {
            "air-quality"
        }
        .into(),
        purpose: (!seq.is_multiple_of(5)).then(|| "AcademicResearch".into()),
        decision: match seq % 3 {
            0 => Some(Decision::Allow),
            1 => Some(Decision::Deny),
            _ => None,
        },
        policy_ids: vec!["consent-required".into(), format!("purpose-{seq}")],
        policy_set_hash: seq.is_multiple_of(2).then(|| leaf_hash(b"policies")),
        grant_id: (seq % 2 == 1).then(|| format!("grant-{seq}")),
        request_id: Some(format!("req-{seq}")),
        peer_node: (seq % 3 == 2).then(|| "tum".into()),
        kind,
        subjects: (0..(seq % 4))
            .map(|i| h.hash(&format!("household-{i}")))
            .collect(),
    }
}

/// A node-side log: entry bodies by index plus the Merkle tree.
pub struct Log {
    pub bodies: Vec<Option<Vec<u8>>>,
    pub tree: MemoryTree,
}

impl Log {
    pub fn with_entries(n: u64) -> Self {
        let mut log = Log {
            bodies: Vec::new(),
            tree: MemoryTree::new(),
        };
        for i in 0..n {
            log.append(&sample_entry(i));
        }
        log
    }

    pub fn append(&mut self, e: &Entry) {
        let bytes = e.encode().unwrap();
        let idx = self.tree.append(leaf_hash(&bytes)).unwrap();
        assert_eq!(idx, self.bodies.len() as u64);
        self.bodies.push(Some(bytes));
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::new(ORIGIN, self.tree.size(), self.tree.root()).unwrap()
    }

    /// Signed by the log and cosigned by the given witnesses.
    pub fn signed_checkpoint(&self, witnesses: &[&Ed25519Signer]) -> String {
        let note = sign_checkpoint(&log_signer(), &self.checkpoint()).unwrap();
        let text = self.checkpoint().to_text();
        let cosigs: Vec<NoteSignature> = witnesses
            .iter()
            .map(|w| cosign(w, &text, 1_700_000_500).unwrap())
            .collect();
        add_cosignatures(&note, &cosigs).unwrap()
    }

    pub fn slots(&self, start: u64, end: u64) -> Vec<BundleSlot> {
        (start..end)
            .map(|i| match &self.bodies[i as usize] {
                Some(b) => BundleSlot::Entry(b.clone()),
                None => BundleSlot::Pruned,
            })
            .collect()
    }
}

pub fn trust_file(witnesses: &[&Ed25519Signer], quorum: Option<usize>) -> TrustFile {
    TrustFile::new(
        vec![TrustedLog {
            origin: ORIGIN.into(),
            keys: vec![log_signer().verifier_key()],
        }],
        witnesses.iter().map(|w| w.verifier_key()).collect(),
        quorum,
    )
    .unwrap()
}
