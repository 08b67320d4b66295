//! The MLS layer's state in the node's store: [`allmende_mls::Kv`] over the
//! `mls_state` table, so that every MLS operation's writes (openmls' group
//! state, key packages, the node's signature key) are one [`WriteBatch`]
//! committed with [`Store::commit_durable`] — atomic, and on disk before the
//! operation returns its commit or welcome.
//!
//! The relay builds a node's [`allmende_mls::MlsNode`] over
//! [`MlsStateStore::open`] with the node certificate and key
//! (`docs/mls.md`).

use crate::store::{RawTable, Store, StoreError, TableName, WriteBatch};
use allmende_mls::{Batch, Entries, Kv, KvError, KvOp};
use std::future::Future;

/// [`Kv`] over the node store's `mls_state` table.
#[derive(Debug, Clone)]
pub struct MlsStateStore {
    store: Store,
    table: RawTable<Vec<u8>>,
}

impl MlsStateStore {
    /// The MLS state of the node whose store is `store`.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            table: store.raw_table(TableName::MlsState)?,
        })
    }

    /// Number of stored MLS records.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the node holds no MLS state.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn kv_error(e: StoreError) -> KvError {
    KvError(e.to_string())
}

impl Kv for MlsStateStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.table.get(&key.to_vec()).map_err(kv_error)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, KvError> {
        self.table.scan_prefix(prefix).map_err(kv_error)
    }

    fn commit(&self, batch: Batch) -> impl Future<Output = Result<(), KvError>> + Send {
        let mut wb = WriteBatch::new();
        for op in batch.into_ops() {
            match op {
                KvOp::Put(k, v) => wb.put_raw(&self.table, &k, v),
                KvOp::Delete(k) => wb.remove_raw(&self.table, &k),
            }
        }
        let store = self.store.clone();
        async move { store.commit_durable(wb).await.map_err(kv_error) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::store::StoreOptions;
    use allmende_mls::{Applied, MlsNode, NodeIdentity};

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

    fn opts() -> StoreOptions {
        StoreOptions {
            cache_bytes: 1 << 20,
        }
    }

    const SWM: &str = "allmende://munich/swm/node/swm-1";
    const TUM: &str = "allmende://munich/tum/node/tum-1";
    const MARKER: &[u8] = b"MARKER-mls-state-row";

    async fn open(dir: &std::path::Path, c: &Cert) -> (Store, MlsNode<MlsStateStore>) {
        let store = Store::open(dir, &opts()).unwrap();
        let node = MlsNode::open(ident(c), MlsStateStore::open(&store).unwrap())
            .await
            .unwrap();
        (store, node)
    }

    #[tokio::test]
    async fn mls_state_survives_a_restart_and_a_refused_write_changes_nothing() {
        let swm_dir = tempfile::tempdir().unwrap();
        let tum_dir = tempfile::tempdir().unwrap();
        let swm_cert = cert(SWM);
        let tum_cert = cert(TUM);
        let (swm_store, mut swm) = open(swm_dir.path(), &swm_cert).await;
        let (tum_store, mut tum) = open(tum_dir.path(), &tum_cert).await;
        let kp = tum.key_packages(1).await.unwrap().remove(0);
        let created = swm.create_group(&kp, &tum_cert.der).await.unwrap();
        tum.join(&created.welcome, &swm_cert.der).await.unwrap();
        let g = created.group;
        assert!(!tum.kv().is_empty());

        // The owner's disk refuses the removal's batch: the removal fails
        // and the stored state is the one before it.
        let epoch = swm.epoch(&g).unwrap();
        swm_store.fail_writes(true);
        assert!(swm.remove(&g, TUM).await.is_err());
        swm_store.fail_writes(false);
        drop(swm);
        drop(swm_store);
        drop(tum);
        drop(tum_store);

        // Both nodes restart from their stores and carry on.
        let (_swm_store, swm) = open(swm_dir.path(), &swm_cert).await;
        let (tum_store, mut tum) = open(tum_dir.path(), &tum_cert).await;
        assert_eq!(swm.epoch(&g).unwrap(), epoch);
        assert_eq!(tum.epoch(&g).unwrap(), epoch);
        let mut sealer = swm.seal_stream(&g, "swm/water", "s1").unwrap();
        let c0 = sealer.seal(MARKER).unwrap();
        let c1 = sealer.finish(b"").unwrap();
        let mut opener = tum.open_stream(&g, "swm/water", "s1").unwrap();
        assert_eq!(opener.open(&c0).unwrap().data, MARKER);
        assert!(opener.open(&c1).unwrap().last);
        opener.finish().unwrap();

        // A removal committed after the restart reaches TUM, whose group
        // state is then deleted from its store.
        let mut swm = swm;
        let removed = swm.remove(&g, TUM).await.unwrap();
        assert_eq!(
            tum.apply(&g, &removed.commit).await.unwrap(),
            Applied::RemovedSelf
        );
        assert!(tum.groups().unwrap().is_empty());
        let raw = tum_store.raw_table::<Vec<u8>>(TableName::MlsState).unwrap();
        for (_, v) in raw.scan_prefix(b"").unwrap() {
            assert!(!v.windows(MARKER.len()).any(|w| w == MARKER));
        }
    }
}
