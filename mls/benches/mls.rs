//! MLS commit latency for the group sizes Allmende's design produces: the
//! nodes of a pair of organisations (2, 3), and larger groups for margin
//! (5, 10). Measures, at the committing node, adding the n-th member
//! (commit and welcome; for n = 2 the group's creation with its peer) and removing one member of n — each including the
//! atomic commit of the operation's writes to the in-memory store.
//!
//! Run: `cargo bench -p allmende-mls --bench mls` (not in CI; figures in
//! `docs/benchmarks.md`).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark")]

use allmende_mls::{MemoryKv, MlsGroupId, MlsNode, NodeIdentity};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use std::time::Duration;

struct Cert {
    der: Vec<u8>,
    key: Vec<u8>,
}

fn cert(uri: &str) -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    let c = params.self_signed(&key).unwrap();
    Cert {
        der: c.der().to_vec(),
        key: key.serialize_der(),
    }
}

fn ident(c: &Cert) -> NodeIdentity {
    NodeIdentity::new(&c.der, &c.key).unwrap()
}

fn uri(i: usize) -> String {
    format!("allmende://munich/org{i}/node/n{i}")
}

/// The owner's store after building a group of `n` members, the owner's
/// certificate, the group, and an extra member's key package and
/// certificate (for adding the (n+1)-th).
struct Setup {
    owner_kv: MemoryKv,
    owner_cert: Cert,
    /// None for a group of one (the owner alone: no group yet).
    group: Option<MlsGroupId>,
    extra_kp: Vec<u8>,
    extra_cert: Cert,
}

async fn setup(n: usize) -> Setup {
    let owner_cert = cert(&uri(0));
    let owner_kv = MemoryKv::new();
    let mut owner = MlsNode::open(ident(&owner_cert), owner_kv.clone())
        .await
        .unwrap();
    let mut group = None;
    for i in 1..n {
        let c = cert(&uri(i));
        let mut m = MlsNode::open(ident(&c), MemoryKv::new()).await.unwrap();
        let kp = m.key_packages(1).await.unwrap().remove(0);
        match &group {
            None => {
                let created = owner.create_group(&kp, &c.der).await.unwrap();
                group = Some(created.group);
            }
            Some(g) => {
                owner.add(g, &kp, &c.der).await.unwrap();
            }
        }
    }
    let extra_cert = cert(&uri(n));
    let mut extra = MlsNode::open(ident(&extra_cert), MemoryKv::new())
        .await
        .unwrap();
    let extra_kp = extra.key_packages(1).await.unwrap().remove(0);
    Setup {
        owner_kv,
        owner_cert,
        group,
        extra_kp,
        extra_cert,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut add = c.benchmark_group("mls_commit_add");
    for n in [2usize, 3, 5, 10] {
        // A group of n-1 members; the measured commit makes it n.
        let s = rt.block_on(setup(n - 1));
        add.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || {
                    rt.block_on(MlsNode::open(ident(&s.owner_cert), s.owner_kv.snapshot()))
                        .unwrap()
                },
                |mut owner| match &s.group {
                    // The second member: creating the group is the commit
                    // that adds it.
                    None => {
                        rt.block_on(owner.create_group(&s.extra_kp, &s.extra_cert.der))
                            .unwrap()
                            .welcome
                    }
                    Some(g) => {
                        rt.block_on(owner.add(g, &s.extra_kp, &s.extra_cert.der))
                            .unwrap()
                            .welcome
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    add.finish();
    let mut remove = c.benchmark_group("mls_commit_remove");
    for n in [2usize, 3, 5, 10] {
        // A group of n members; the measured commit removes the last one.
        let s = rt.block_on(setup(n));
        let victim = uri(n - 1);
        remove.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || {
                    rt.block_on(MlsNode::open(ident(&s.owner_cert), s.owner_kv.snapshot()))
                        .unwrap()
                },
                |mut owner| {
                    let g = s.group.as_ref().unwrap();
                    rt.block_on(owner.remove(g, &victim)).unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    remove.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
