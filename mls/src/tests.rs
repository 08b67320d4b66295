//! Tests of the MLS layer: groups between nodes, sealed streams and their
//! attacks, the malicious hub swapping key packages, removal, single-use
//! key packages, and state that survives a node dying mid-operation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use crate::NodeIdentity;
use crate::binding::BindingError;
use crate::kv::{Batch, Entries, Kv, KvError, MemoryKv};
use crate::node::{Applied, MlsError, MlsGroupId, MlsNode};
use crate::seal::{Opener, SealError, StreamIds};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

/// A node certificate (self-signed: the binding check takes a certificate
/// the federation verifier already accepted) with the identity URI `uri`.
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

const SWM: &str = "allmende://munich/swm/node/swm-1";
const TUM: &str = "allmende://munich/tum/node/tum-1";
const LMU: &str = "allmende://munich/lmu/node/lmu-1";
const HUB: &str = "allmende://munich/city/node/hub";

struct Party<K: Kv> {
    cert: Cert,
    node: MlsNode<K>,
}

async fn party(uri: &str) -> Party<MemoryKv> {
    let cert = cert(uri);
    let node = MlsNode::open(ident(&cert), MemoryKv::new()).await.unwrap();
    Party { cert, node }
}

/// SWM (owner) and TUM in one group.
async fn pair() -> (Party<MemoryKv>, Party<MemoryKv>, MlsGroupId) {
    let mut swm = party(SWM).await;
    let mut tum = party(TUM).await;
    let kp = tum.node.key_packages(1).await.unwrap().remove(0);
    let created = swm.node.create_group(&kp, &tum.cert.der).await.unwrap();
    let joined = tum
        .node
        .join(&created.welcome, &swm.cert.der)
        .await
        .unwrap();
    assert_eq!(joined.group, created.group);
    (swm, tum, created.group)
}

fn seal_all(
    node: &MlsNode<impl Kv>,
    g: &MlsGroupId,
    stream: &str,
    chunks: &[&[u8]],
) -> Vec<Vec<u8>> {
    let mut s = node.seal_stream(g, "swm/water-quality", stream).unwrap();
    let mut out = Vec::new();
    let (last, body) = chunks.split_last().unwrap();
    for c in body {
        out.push(s.seal(c).unwrap());
    }
    out.push(s.finish(last).unwrap());
    out
}

fn open_all(opener: &mut Opener, sealed: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, SealError> {
    let mut out = Vec::new();
    for c in sealed {
        out.push(opener.open(c)?.data);
    }
    Ok(out)
}

const MARKER: &[u8] = b"MARKER-7f3a-row";

/// Sealed chunk header: version, epoch, salt, index, flags.
const HEADER_FOR_TESTS: usize = 1 + 8 + 16 + 8 + 1;

#[tokio::test]
async fn a_pair_seals_and_opens_a_stream_and_the_wire_holds_no_plaintext() {
    let (swm, tum, g) = pair().await;
    assert_eq!(swm.node.epoch(&g).unwrap(), tum.node.epoch(&g).unwrap());
    let uris: Vec<String> = tum
        .node
        .members(&g)
        .unwrap()
        .into_iter()
        .map(|m| m.uri)
        .collect();
    assert_eq!(uris, vec![SWM.to_string(), TUM.to_string()]);
    let sealed = seal_all(&swm.node, &g, "s1", &[MARKER, b"second", b""]);
    for c in &sealed {
        assert!(!c.windows(MARKER.len()).any(|w| w == MARKER));
    }
    let mut o = tum.node.open_stream(&g, "swm/water-quality", "s1").unwrap();
    let got = open_all(&mut o, &sealed).unwrap();
    assert_eq!(got, vec![MARKER.to_vec(), b"second".to_vec(), Vec::new()]);
    o.finish().unwrap();
}

#[tokio::test]
async fn truncated_reordered_duplicated_spliced_and_tampered_streams_fail() {
    let (swm, tum, g) = pair().await;
    let a = seal_all(&swm.node, &g, "a", &[b"0", b"1", b"2", b"end"]);
    let open = || tum.node.open_stream(&g, "swm/water-quality", "a").unwrap();

    // Truncation: the end dropped; every chunk received opens, the stream
    // does not finish.
    let mut o = open();
    open_all(&mut o, &a[..3]).unwrap();
    assert_eq!(o.finish(), Err(SealError::Truncated));

    // Truncation by relabelling: a middle chunk flagged as the last.
    let mut forged = a[1].clone();
    forged[33] = 1;
    let mut o = open();
    o.open(&a[0]).unwrap();
    assert_eq!(o.open(&forged), Err(SealError::Authentication));

    // Reordering.
    let mut o = open();
    o.open(&a[0]).unwrap();
    assert_eq!(
        o.open(&a[2]),
        Err(SealError::OutOfOrder {
            expected: 1,
            got: 2
        })
    );

    // Reordering with the index rewritten to the expected one.
    let mut moved = a[2].clone();
    moved[25..33].copy_from_slice(&1u64.to_be_bytes());
    let mut o = open();
    o.open(&a[0]).unwrap();
    assert_eq!(o.open(&moved), Err(SealError::Authentication));

    // Duplication.
    let mut o = open();
    o.open(&a[0]).unwrap();
    assert_eq!(
        o.open(&a[0]),
        Err(SealError::OutOfOrder {
            expected: 1,
            got: 0
        })
    );

    // A chunk after the authenticated end.
    let mut o = open();
    open_all(&mut o, &a).unwrap();
    assert_eq!(o.open(&a[3]), Err(SealError::AfterEnd));

    // Splicing: chunk 1 of another stream of the same dataset, and of the
    // same stream id of another dataset.
    let b = seal_all(&swm.node, &g, "b", &[b"0", b"1", b"end"]);
    let mut o = open();
    o.open(&a[0]).unwrap();
    assert_eq!(o.open(&b[1]), Err(SealError::OtherStream));
    // … also with its salt rewritten to the stream's: the key differs.
    let mut resalted = b[1].clone();
    resalted[9..25].copy_from_slice(&a[0][9..25]);
    assert_eq!(o.open(&resalted), Err(SealError::Authentication));
    let mut other = swm.node.seal_stream(&g, "swm/other", "a").unwrap();
    let c0 = other.seal(b"0").unwrap();
    let mut o = open();
    assert_eq!(o.open(&c0), Err(SealError::Authentication));

    // The same stream id sealed again in the same epoch (a sender
    // restarted mid-stream): another salt, so another key — no nonce is
    // reused, and the runs do not mix.
    let again = seal_all(&swm.node, &g, "a", &[b"0", b"1", b"2", b"end"]);
    assert_ne!(again[0][HEADER_FOR_TESTS..], a[0][HEADER_FOR_TESTS..]);
    let mut o = open();
    o.open(&a[0]).unwrap();
    assert_eq!(o.open(&again[1]), Err(SealError::OtherStream));
    let mut o = open();
    open_all(&mut o, &again).unwrap();
    o.finish().unwrap();

    // A flipped ciphertext bit.
    let mut flipped = a[0].clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(open().open(&flipped), Err(SealError::Authentication));

    // Garbage.
    assert_eq!(open().open(b"short"), Err(SealError::Malformed));
}

#[tokio::test]
async fn a_hub_substituting_key_packages_is_detected() {
    let mut swm = party(SWM).await;
    let mut tum = party(TUM).await;
    let mut hub = party(HUB).await;
    let genuine = tum.node.key_packages(1).await.unwrap().remove(0);

    // 1. The hub hands out its own node's key package for TUM's.
    let hubs = hub.node.key_packages(1).await.unwrap().remove(0);
    let err = swm
        .node
        .create_group(&hubs, &tum.cert.der)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MlsError::Binding(BindingError::IdentityMismatch { .. })
        ),
        "{err}"
    );

    // 2. A key package with TUM's credential copied byte for byte but the
    //    hub's own MLS signature key (so the hub holds the leaf's keys).
    let forged = forge_with_copied_credential(&genuine);
    let err = swm
        .node
        .create_group(&forged, &tum.cert.der)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MlsError::Binding(BindingError::SignatureKeyNotBound { .. })
        ),
        "{err}"
    );

    // 3. A credential naming TUM, bound by a key of the hub's choosing (a
    //    certificate the hub minted for TUM's URI).
    let minted = cert(TUM);
    let mut fake = MlsNode::open(ident(&minted), MemoryKv::new())
        .await
        .unwrap();
    let fakes = fake.key_packages(1).await.unwrap().remove(0);
    let err = swm
        .node
        .create_group(&fakes, &tum.cert.der)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MlsError::Binding(BindingError::CertificateMismatch { .. })
        ),
        "{err}"
    );

    // Nothing was created by the refused attempts.
    assert!(swm.node.groups().unwrap().is_empty());

    // The genuine key package passes; TUM checks the inviter likewise: a
    // welcome claimed to come from the hub is refused, and the refusal
    // consumed nothing (the same welcome then joins).
    let created = swm
        .node
        .create_group(&genuine, &tum.cert.der)
        .await
        .unwrap();
    let err = tum
        .node
        .join(&created.welcome, &hub.cert.der)
        .await
        .unwrap_err();
    assert!(matches!(err, MlsError::Binding(_)), "{err}");
    tum.node
        .join(&created.welcome, &swm.cert.der)
        .await
        .unwrap();

    // verify_binding on a member against certificates.
    swm.node
        .verify_binding(&created.group, TUM, &tum.cert.der)
        .unwrap();
    assert!(
        swm.node
            .verify_binding(&created.group, TUM, &minted.der)
            .is_err()
    );
    assert!(
        swm.node
            .verify_binding(&created.group, TUM, &hub.cert.der)
            .is_err()
    );
}

/// The hub's forgery: TUM's credential bytes with a signature key the hub
/// holds, signed correctly (openmls accepts it: only the binding catches it).
fn forge_with_copied_credential(genuine: &[u8]) -> Vec<u8> {
    use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
    use openmls::prelude::*;
    let kp = KeyPackageIn::tls_deserialize_exact(genuine)
        .unwrap()
        .validate(
            openmls_rust_crypto::OpenMlsRustCrypto::default().crypto(),
            ProtocolVersion::Mls10,
        )
        .unwrap();
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let signer =
        openmls_basic_credential::SignatureKeyPair::new(crate::CIPHERSUITE.signature_algorithm())
            .unwrap();
    let credential = CredentialWithKey {
        credential: kp.leaf_node().credential().clone(),
        signature_key: signer.to_public_vec().into(),
    };
    KeyPackage::builder()
        .build(crate::CIPHERSUITE, &provider, &signer, credential)
        .unwrap()
        .key_package()
        .tls_serialize_detached()
        .unwrap()
}

#[tokio::test]
async fn a_removed_member_cannot_open_what_is_sealed_afterwards_even_with_its_saved_state() {
    let (mut swm, mut tum, g) = pair().await;
    let mut lmu = party(LMU).await;
    let kp = lmu.node.key_packages(1).await.unwrap().remove(0);
    let added = swm.node.add(&g, &kp, &lmu.cert.der).await.unwrap();
    assert_eq!(
        tum.node.apply(&g, &added.commit).await.unwrap(),
        Applied::Epoch(added.epoch)
    );
    lmu.node.join(&added.welcome, &swm.cert.der).await.unwrap();
    assert_eq!(lmu.node.epoch(&g).unwrap(), added.epoch);

    // Before removal LMU reads; it keeps a copy of its state.
    let before = seal_all(&swm.node, &g, "s0", &[b"before"]);
    let mut o = lmu.node.open_stream(&g, "swm/water-quality", "s0").unwrap();
    assert_eq!(open_all(&mut o, &before).unwrap(), vec![b"before".to_vec()]);
    let saved = lmu.node.kv().snapshot();
    let old_epoch = lmu.node.epoch(&g).unwrap();

    let removed = swm.node.remove(&g, LMU).await.unwrap();
    assert!(removed.epoch > old_epoch);
    assert_eq!(
        tum.node.apply(&g, &removed.commit).await.unwrap(),
        Applied::Epoch(removed.epoch)
    );
    let after = seal_all(&swm.node, &g, "s1", &[MARKER]);
    let mut o = tum.node.open_stream(&g, "swm/water-quality", "s1").unwrap();
    assert_eq!(open_all(&mut o, &after).unwrap(), vec![MARKER.to_vec()]);

    // The live removed node applies the commit: its group state is gone.
    assert_eq!(
        lmu.node.apply(&g, &removed.commit).await.unwrap(),
        Applied::RemovedSelf
    );
    assert!(matches!(
        lmu.node.open_stream(&g, "swm/water-quality", "s1"),
        Err(MlsError::UnknownGroup(_))
    ));

    // Its saved state (from before the removal) opens the stream only in
    // the old epoch, and the old epoch's key does not open the chunk even
    // when told it belongs to the new epoch.
    let revived = MlsNode::open(ident(&lmu.cert), saved).await.unwrap();
    let mut o = revived.open_stream(&g, "swm/water-quality", "s1").unwrap();
    assert_eq!(
        o.open(&after[0]),
        Err(SealError::Epoch {
            chunk: removed.epoch,
            stream: old_epoch
        })
    );
    let ids = StreamIds {
        group: g.as_bytes().to_vec(),
        dataset: "swm/water-quality".into(),
        stream: "s1".into(),
    };
    let (_, old_secret) = revived.stream_secret(&g, &ids).unwrap();
    let mut forced = Opener::new(ids, removed.epoch, old_secret).unwrap();
    assert_eq!(forced.open(&after[0]), Err(SealError::Authentication));
    // Nor does applying the commit to the saved state help.
    let mut revived = revived;
    assert_eq!(
        revived.apply(&g, &removed.commit).await.unwrap(),
        Applied::RemovedSelf
    );
    assert!(revived.open_stream(&g, "swm/water-quality", "s1").is_err());
}

#[tokio::test]
async fn key_packages_are_single_use_and_replenished() {
    let mut swm = party(SWM).await;
    let mut tum = party(TUM).await;
    let published = tum.node.key_packages(crate::DEFAULT_POOL).await.unwrap();
    assert_eq!(published.len(), crate::DEFAULT_POOL);
    // Asking again returns the same unused ones.
    assert!(tum.node.key_packages(crate::DEFAULT_POOL).await.unwrap() == published);

    let first = swm
        .node
        .create_group(&published[0], &tum.cert.der)
        .await
        .unwrap();
    let joined = tum.node.join(&first.welcome, &swm.cert.der).await.unwrap();
    assert_eq!(joined.key_packages.len(), crate::DEFAULT_POOL);
    assert!(!joined.key_packages.contains(&published[0]));
    for kp in &published[1..] {
        assert!(joined.key_packages.contains(kp));
    }

    // The hub replays the used key package: the welcome made with it cannot
    // be joined, and the failed attempt changes nothing.
    let replay = swm
        .node
        .create_group(&published[0], &tum.cert.der)
        .await
        .unwrap();
    let before = tum.node.kv().entries();
    assert!(tum.node.join(&replay.welcome, &swm.cert.der).await.is_err());
    assert_eq!(tum.node.kv().entries(), before);
    // The first welcome is not joinable twice either.
    assert!(tum.node.join(&first.welcome, &swm.cert.der).await.is_err());
}

/// A store whose commits can be held (a node killed while its commit is in
/// flight) or refused (a disk error).
#[derive(Clone)]
struct Faulty {
    inner: MemoryKv,
    hold: Arc<AtomicBool>,
    refuse: Arc<AtomicBool>,
}

impl Kv for Faulty {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, KvError> {
        self.inner.scan_prefix(prefix)
    }
    fn commit(&self, batch: Batch) -> impl Future<Output = Result<(), KvError>> + Send {
        let this = self.clone();
        async move {
            if this.refuse.load(Ordering::SeqCst) {
                return Err(KvError("disk refused the write".into()));
            }
            std::future::poll_fn(|_| {
                if this.hold.load(Ordering::SeqCst) {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            this.inner.commit(batch).await
        }
    }
}

#[tokio::test]
async fn a_node_killed_mid_operation_resumes_from_persisted_state() {
    let (swm, mut tum, g) = pair().await;
    let tum_store = tum.node.kv().clone();
    let tum_ident = || ident(&tum.cert);
    let swm_store = Faulty {
        inner: swm.node.kv().clone(),
        hold: Arc::default(),
        refuse: Arc::default(),
    };
    drop(tum.node);
    tum.node = MlsNode::open(tum_ident(), tum_store.clone()).await.unwrap();

    // SWM dies while committing the removal of TUM: the future is polled
    // until it waits for the store, then dropped.
    let swm_ident = ident(&swm.cert);
    drop(swm.node);
    let mut owner = MlsNode::open(swm_ident, swm_store.clone()).await.unwrap();
    let epoch = owner.epoch(&g).unwrap();
    let stored = swm_store.inner.entries();
    swm_store.hold.store(true, Ordering::SeqCst);
    {
        let fut = pin!(owner.remove(&g, TUM));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.poll(&mut cx).is_pending());
    }
    drop(owner);
    assert_eq!(
        swm_store.inner.entries(),
        stored,
        "nothing reached the store"
    );
    swm_store.hold.store(false, Ordering::SeqCst);

    // A refused commit leaves the store as it was too.
    let mut owner = MlsNode::open(ident(&swm.cert), swm_store.clone())
        .await
        .unwrap();
    swm_store.refuse.store(true, Ordering::SeqCst);
    assert!(matches!(owner.remove(&g, TUM).await, Err(MlsError::Kv(_))));
    swm_store.refuse.store(false, Ordering::SeqCst);
    assert_eq!(swm_store.inner.entries(), stored);

    // Reopened from the store: same epoch, TUM still a member, and TUM
    // (itself reopened) keeps decrypting.
    let owner_epoch = owner.epoch(&g).unwrap();
    assert_eq!(owner_epoch, epoch);
    assert_eq!(owner.members(&g).unwrap().len(), 2);
    let sealed = seal_all(&owner, &g, "resumed", &[MARKER, b"tail"]);
    let mut o = tum
        .node
        .open_stream(&g, "swm/water-quality", "resumed")
        .unwrap();
    assert_eq!(open_all(&mut o, &sealed).unwrap()[0], MARKER);
    o.finish().unwrap();

    // Operations after the restart still work and survive another reopen.
    let mut lmu = party(LMU).await;
    let kp = lmu.node.key_packages(1).await.unwrap().remove(0);
    let added = owner.add(&g, &kp, &lmu.cert.der).await.unwrap();
    drop(owner);
    let owner = MlsNode::open(ident(&swm.cert), swm_store.clone())
        .await
        .unwrap();
    assert_eq!(owner.epoch(&g).unwrap(), added.epoch);
    tum.node.apply(&g, &added.commit).await.unwrap();
    drop(tum.node);
    let tum_node = MlsNode::open(tum_ident(), tum_store.clone()).await.unwrap();
    let sealed = seal_all(&owner, &g, "after-add", &[b"x"]);
    let mut o = tum_node
        .open_stream(&g, "swm/water-quality", "after-add")
        .unwrap();
    open_all(&mut o, &sealed).unwrap();
}

#[test]
fn a_key_not_matching_the_certificate_is_refused() {
    let a = cert(SWM);
    let b = cert(TUM);
    assert!(matches!(
        NodeIdentity::new(&a.der, &b.key),
        Err(BindingError::KeyMismatch)
    ));
    assert!(NodeIdentity::new(b"not a certificate", &a.key).is_err());
}

#[test]
fn node_operations_are_send() {
    fn is_send<T: Send>(_: T) {}
    let kv = MemoryKv::new();
    let c = cert(SWM);
    is_send(MlsNode::open(ident(&c), kv));
}
