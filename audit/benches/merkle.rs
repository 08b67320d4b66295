//! Benchmarks: appends into the in-memory hash store, proof generation and
//! verification at 1M entries, entry encoding and checkpoint signing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use allmende_audit::*;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const MILLION: u64 = 1_000_000;

fn leaf(i: u64) -> Hash {
    leaf_hash(&i.to_be_bytes())
}

fn entry(seq: u64) -> Entry {
    Entry {
        sequence: seq,
        time_ms: 1_700_000_000_000 + seq,
        node: "swm".into(),
        principal: Principal {
            org: "tum".into(),
            user: Some("pseudo-8f3a".into()),
        },
        action: "fetch".into(),
        resource: "smart-meter-readings".into(),
        purpose: Some("AcademicResearch".into()),
        decision: Some(Decision::Allow),
        policy_ids: vec!["consent-required".into(), "research-grant".into()],
        policy_set_hash: Some(leaf_hash(b"policies")),
        grant_id: Some("grant-42".into()),
        request_id: Some("req-0001".into()),
        peer_node: Some("tum".into()),
        kind: EntryKind::ReleaseIntent,
        subjects: vec![],
    }
}

fn appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("memory_tree_10k_leaves", |b| {
        b.iter_batched(
            MemoryTree::new,
            |mut t| {
                for i in 0..N {
                    t.append(leaf(i)).unwrap();
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
    // The broker's path: frontier append returning writes, batches of 256.
    g.bench_function("frontier_writes_batches_of_256_10k_leaves", |b| {
        b.iter_batched(
            || (Frontier::new(), MemoryHashStore::new()),
            |(mut f, mut store)| {
                let mut i = 0;
                while i < N {
                    let mut next = f.clone();
                    let writes = next.append_all((i..(i + 256).min(N)).map(leaf)).unwrap();
                    store.apply(&writes).unwrap();
                    f = next;
                    i += 256;
                }
                (f, store)
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("encode_and_hash_entry_then_append_10k", |b| {
        b.iter_batched(
            MemoryTree::new,
            |mut t| {
                for i in 0..N {
                    let bytes = entry(i).encode().unwrap();
                    t.append(leaf_hash(&bytes)).unwrap();
                }
                t
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn proofs_at_1m(c: &mut Criterion) {
    let start = std::time::Instant::now();
    let mut t = MemoryTree::new();
    for i in 0..MILLION {
        t.append(leaf(i)).unwrap();
    }
    eprintln!(
        "built 1M-leaf tree in {:?}; store holds {} hashes = {:.1} MiB",
        start.elapsed(),
        t.store().len(),
        (t.store().len() * 32) as f64 / (1024.0 * 1024.0)
    );
    let store = t.store();
    let root = t.root();
    let mut g = c.benchmark_group("proofs_1m");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| inclusion_proof(store, black_box(next() % MILLION), MILLION).unwrap())
    });
    g.bench_function("consistency_proof", |b| {
        b.iter(|| consistency_proof(store, black_box(1 + next() % (MILLION - 1)), MILLION).unwrap())
    });
    g.bench_function("range_proof_100_entries", |b| {
        b.iter(|| {
            let s = next() % (MILLION - 100);
            range_proof(store, black_box(s), s + 100, MILLION).unwrap()
        })
    });
    g.bench_function("root_at_random_size", |b| {
        b.iter(|| root_at(store, black_box(1 + next() % MILLION)).unwrap())
    });
    let p = inclusion_proof(store, 123_457, MILLION).unwrap();
    let l = leaf(123_457);
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| verify_inclusion(black_box(&l), 123_457, MILLION, &p, &root).unwrap())
    });
    let old_root = root_at(store, 654_321).unwrap();
    let cp = consistency_proof(store, 654_321, MILLION).unwrap();
    g.bench_function("verify_consistency", |b| {
        b.iter(|| verify_consistency(654_321, MILLION, &old_root, &root, black_box(&cp)).unwrap())
    });
    g.finish();
}

fn signing(c: &mut Criterion) {
    let signer = Ed25519Signer::from_seed(
        "stadt.allmende.example/audit",
        SignatureType::Ed25519,
        &[1u8; 32],
    )
    .unwrap();
    let witness = Ed25519Signer::from_seed(
        "swm.allmende.example/witness",
        SignatureType::CosignatureV1,
        &[2u8; 32],
    )
    .unwrap();
    let cp = Checkpoint::new("stadt.allmende.example/audit", MILLION, leaf(1)).unwrap();
    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    g.bench_function("sign", |b| {
        b.iter(|| sign_checkpoint(&signer, black_box(&cp)).unwrap())
    });
    let note = sign_checkpoint(&signer, &cp).unwrap();
    let keys = [signer.verifier_key()];
    g.bench_function("open_and_verify", |b| {
        b.iter(|| open_checkpoint(black_box(note.as_bytes()), &keys).unwrap())
    });
    g.bench_function("cosign", |b| {
        b.iter(|| cosign(&witness, black_box(&cp.to_text()), 1_700_000_000).unwrap())
    });
    g.finish();
}

criterion_group!(benches, appends, proofs_at_1m, signing);
criterion_main!(benches);
