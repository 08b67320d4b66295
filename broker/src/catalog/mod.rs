//! The federated catalog: this node's own dataset entries, signed by the node,
//! and a replica of every peer's entries, with full-text search over both.
//!
//! - **Local entries** are written only through [`Catalog::upsert_local`] and
//!   [`Catalog::remove_local`] (connector registration calls them). Each
//!   change raises the node's catalog version by one, is signed with the
//!   node's Ed25519 catalog key (made on first start, kept in the store) and
//!   is durable before the call returns.
//! - **Replicas** arrive through [`Catalog::apply_peer_listing`], taken
//!   whole or not at all ([`replica`]).
//! - The `catalog` table's layout is in `keys`.
//! - **Search** answers from memory ([`search::SearchIndex`]).
//!
//! The network side (serving `Catalog.List`, pulling from peers on a schedule
//! and on `Catalog.Notify`) lives in `federation::replicator`. See `docs/catalog.md`.

pub mod dcat;
pub mod entry;
mod keys;
pub mod rdf;
pub mod replica;
pub mod search;
pub mod signing;

/// Types the catalog's API is made of, re-exported for its callers.
pub use allmende_connectors::{FieldSpec, FieldType};
pub use allmende_policies::{Classification, LegalBasis, Purpose};
pub use entry::{
    AccessRights, CatalogEntry, ContactPoint, DatasetDescription, DatasetSchema, Frequency,
    LICENCES, Licence, Spatial, Temporal, Theme, UnknownValue,
};
pub use replica::{ApplyReport, PeerListing, PeerState, Refusal};
pub use search::{SearchHits, SearchIndex, SearchQuery};
pub use signing::{KeyError, NodeSigner, SignedPayload, SignedRecord, VerifyError};

use crate::clock::SharedClock;
use crate::locks::{self, Poisoned};
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use keys::{CatalogKey, CatalogRecord, META_LOCAL_VERSION, META_SIGNING_KEY, StoredEntry};
use std::collections::HashMap;
use std::sync::RwLock;
use tokio::sync::watch;

/// Who this catalog belongs to: from the node's own certificate and the
/// signed membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogIdentity {
    pub organisation: String,
    pub node: String,
    /// The organisation's display name in the membership.
    pub publisher_name: String,
}

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("dataset `{dataset}` is invalid: {}", problems.join("; "))]
    Invalid {
        dataset: String,
        problems: Vec<String>,
    },
    #[error("dataset `{0}` is not in the catalog")]
    NotFound(String),
    #[error("dataset `{dataset}` is published by several organisations ({}); name the owner", owners.join(", "))]
    Ambiguous {
        dataset: String,
        owners: Vec<String>,
    },
    #[error("dataset `{dataset}` is already published by node `{node}` of this organisation")]
    OwnedByOtherNode { dataset: String, node: String },
    #[error("catalog of `{organisation}/{node}` refused: {reason}")]
    PeerRefused {
        organisation: String,
        node: String,
        reason: Refusal,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
}

/// A search answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchResult {
    pub entries: Vec<CatalogEntry>,
    /// Matching entries in total (the answer holds at most the limit).
    pub total: usize,
}

#[derive(Debug, Clone)]
struct Held {
    payload: SignedPayload,
    record: SignedRecord,
}

#[derive(Debug, Default)]
struct State {
    /// Entries and removals by (owner, dataset).
    held: HashMap<(String, String), Held>,
    peers: HashMap<(String, String), PeerState>,
    local_version: u64,
}

/// The node's catalog.
#[derive(Debug)]
pub struct Catalog {
    store: Store,
    table: Table<CatalogKey, CatalogRecord>,
    clock: SharedClock,
    identity: CatalogIdentity,
    signer: NodeSigner,
    /// Serialises writers (each awaits a durable commit).
    write: tokio::sync::Mutex<()>,
    state: RwLock<State>,
    index: RwLock<SearchIndex>,
    version_tx: watch::Sender<u64>,
}

/// The names the lock helpers log for the catalog's state.
const STATE: &str = "catalog entries";
const INDEX: &str = "catalog search index";

fn entry_key(owner: &str, dataset: &str) -> (String, String) {
    (owner.to_owned(), dataset.to_owned())
}

impl Catalog {
    fn state(&self) -> Result<std::sync::RwLockReadGuard<'_, State>, Poisoned> {
        locks::read(&self.state, STATE)
    }

    fn state_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, State>, Poisoned> {
        locks::write(&self.state, STATE)
    }

    fn index_mut(&self) -> Result<std::sync::RwLockWriteGuard<'_, SearchIndex>, Poisoned> {
        locks::write(&self.index, INDEX)
    }

    /// Opens the catalog in `store`, making the node's signing key on first
    /// start (durably, before anything is signed with it).
    pub async fn open(
        store: Store,
        clock: SharedClock,
        identity: CatalogIdentity,
    ) -> Result<Self, CatalogError> {
        let table: Table<CatalogKey, CatalogRecord> = store.table(TableName::Catalog)?;
        let mut state = State::default();
        let mut pkcs8 = None;
        for (k, v) in table.entries()? {
            match (k, v) {
                (CatalogKey::Meta(_), CatalogRecord::SigningKey { pkcs8_hex }) => {
                    pkcs8 = Some(
                        hex::decode(&pkcs8_hex)
                            .map_err(|_| KeyError("stored catalog key is not hex".into()))?,
                    );
                }
                (CatalogKey::Meta(_), CatalogRecord::LocalVersion { version }) => {
                    state.local_version = version;
                }
                (CatalogKey::Entry(owner, dataset), CatalogRecord::Entry(stored)) => {
                    let payload =
                        stored
                            .record
                            .payload_unverified()
                            .map_err(|e| StoreError::Corrupt {
                                table: TableName::Catalog.as_str(),
                                reason: format!("entry `{owner}/{dataset}`: {e}"),
                            })?;
                    state.held.insert(
                        (owner, dataset),
                        Held {
                            payload,
                            record: stored.record,
                        },
                    );
                }
                (CatalogKey::Peer(org, node), CatalogRecord::Peer(p)) => {
                    state.peers.insert((org, node), p);
                }
                (k, _) => {
                    return Err(StoreError::Corrupt {
                        table: TableName::Catalog.as_str(),
                        reason: format!("unexpected record under {k:?}"),
                    }
                    .into());
                }
            }
        }
        let signer = match pkcs8 {
            Some(bytes) => NodeSigner::from_pkcs8(&bytes)?,
            None => {
                let (signer, bytes) = NodeSigner::generate()?;
                let mut b = WriteBatch::new();
                b.put(
                    &table,
                    &CatalogKey::Meta(META_SIGNING_KEY.into()),
                    &CatalogRecord::SigningKey {
                        pkcs8_hex: hex::encode(bytes),
                    },
                )?;
                store.commit_durable(b).await?;
                tracing::info!(
                    node = %identity.node,
                    public_key = %hex::encode(signer.public_key()),
                    "catalog signing key created"
                );
                signer
            }
        };
        let index = SearchIndex::build(state.held.values().filter_map(|h| h.payload.entry()));
        let (version_tx, _) = watch::channel(state.local_version);
        Ok(Self {
            store,
            table,
            clock,
            identity,
            signer,
            write: tokio::sync::Mutex::new(()),
            state: RwLock::new(state),
            index: RwLock::new(index),
            version_tx,
        })
    }

    /// This catalog's owner.
    pub fn identity(&self) -> &CatalogIdentity {
        &self.identity
    }

    /// The node's catalog public key (Ed25519, 32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.signer.public_key().to_vec()
    }

    /// The node's signing key (also signs grant approvals).
    pub fn signer(&self) -> &NodeSigner {
        &self.signer
    }

    /// The version of this node's own catalog.
    pub fn local_version(&self) -> u64 {
        *self.version_tx.borrow()
    }

    /// Follows this node's catalog version (for change notifications).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    fn is_local(&self, p: &SignedPayload) -> bool {
        p.owner() == self.identity.organisation && p.owner_node() == self.identity.node
    }

    /// True when `entry` is one of this node's own.
    pub fn is_local_entry(&self, entry: &CatalogEntry) -> bool {
        entry.owner == self.identity.organisation && entry.owner_node == self.identity.node
    }

    /// Publishes (or updates) one of this node's datasets. Validates it,
    /// signs it and stores it durably before returning. Publishing the same
    /// description again changes nothing.
    pub async fn upsert_local(
        &self,
        dataset: DatasetDescription,
    ) -> Result<CatalogEntry, CatalogError> {
        let problems = dataset.problems();
        if !problems.is_empty() {
            return Err(CatalogError::Invalid {
                dataset: crate::text::shown(&dataset.id, 100),
                problems,
            });
        }
        let _w = self.write.lock().await;
        let key = entry_key(&self.identity.organisation, &dataset.id);
        let version = {
            let st = self.state()?;
            if let Some(h) = st.held.get(&key) {
                if !self.is_local(&h.payload) {
                    return Err(CatalogError::OwnedByOtherNode {
                        dataset: dataset.id.clone(),
                        node: h.payload.owner_node().to_owned(),
                    });
                }
                if let Some(e) = h.payload.entry()
                    && e.dataset == dataset
                    && e.publisher_name == self.identity.publisher_name
                {
                    return Ok(e.clone());
                }
            }
            st.local_version + 1
        };
        let entry = CatalogEntry {
            owner: self.identity.organisation.clone(),
            owner_node: self.identity.node.clone(),
            publisher_name: self.identity.publisher_name.clone(),
            version,
            updated_at_ms: self.clock.now_unix_ms(),
            dataset,
        };
        self.commit_local(SignedPayload::Entry(Box::new(entry.clone())))
            .await?;
        tracing::info!(dataset = %entry.dataset.id, version, "catalog entry published");
        Ok(entry)
    }

    /// Removes one of this node's datasets from the catalog (replicas learn
    /// of it through a signed removal). Returns false when it was not there.
    pub async fn remove_local(&self, dataset: &str) -> Result<bool, CatalogError> {
        let _w = self.write.lock().await;
        let key = entry_key(&self.identity.organisation, dataset);
        let version = {
            let st = self.state()?;
            match st.held.get(&key) {
                Some(h) if self.is_local(&h.payload) && h.payload.entry().is_some() => {}
                _ => return Ok(false),
            }
            st.local_version + 1
        };
        self.commit_local(SignedPayload::Removed {
            owner: self.identity.organisation.clone(),
            owner_node: self.identity.node.clone(),
            dataset: dataset.to_owned(),
            version,
            updated_at_ms: self.clock.now_unix_ms(),
        })
        .await?;
        tracing::info!(dataset = %dataset, version, "catalog entry removed");
        Ok(true)
    }

    /// Signs and stores a local change; the caller holds the write lock.
    async fn commit_local(&self, payload: SignedPayload) -> Result<(), CatalogError> {
        let version = payload.version();
        let record = self.signer.sign(&payload)?;
        let key = entry_key(payload.owner(), payload.dataset());
        let mut b = WriteBatch::new();
        b.put(
            &self.table,
            &CatalogKey::Entry(key.0.clone(), key.1.clone()),
            &CatalogRecord::Entry(StoredEntry {
                record: record.clone(),
                received_from: None,
                received_at_ms: self.clock.now_unix_ms(),
            }),
        )?;
        b.put(
            &self.table,
            &CatalogKey::Meta(META_LOCAL_VERSION.into()),
            &CatalogRecord::LocalVersion { version },
        )?;
        self.store.commit_durable(b).await?;
        {
            let mut idx = self.index_mut()?;
            match payload.entry() {
                Some(e) => idx.upsert(e),
                None => {
                    idx.remove(&key.0, &key.1);
                }
            }
        }
        {
            let mut st = self.state_mut()?;
            st.held.insert(key, Held { payload, record });
            st.local_version = version;
        }
        self.version_tx.send_replace(version);
        Ok(())
    }

    /// The entry `dataset`; `owner` picks one when several organisations use
    /// the same id.
    pub fn get(&self, owner: Option<&str>, dataset: &str) -> Result<CatalogEntry, CatalogError> {
        let st = self.state()?;
        if let Some(o) = owner {
            return st
                .held
                .get(&entry_key(o, dataset))
                .and_then(|h| h.payload.entry().cloned())
                .ok_or_else(|| CatalogError::NotFound(format!("{o}/{dataset}")));
        }
        let mut found: Vec<&CatalogEntry> = st
            .held
            .values()
            .filter_map(|h| h.payload.entry())
            .filter(|e| e.dataset.id == dataset)
            .collect();
        match found.len() {
            0 => Err(CatalogError::NotFound(dataset.to_owned())),
            1 => Ok(found.remove(0).clone()),
            _ => {
                let mut owners: Vec<String> = found.iter().map(|e| e.owner.clone()).collect();
                owners.sort();
                Err(CatalogError::Ambiguous {
                    dataset: dataset.to_owned(),
                    owners,
                })
            }
        }
    }

    /// One of this node's own entries (for the release pipeline and
    /// connector registration).
    pub fn local(&self, dataset: &str) -> Option<CatalogEntry> {
        self.state()
            .ok()?
            .held
            .get(&entry_key(&self.identity.organisation, dataset))
            .filter(|h| self.is_local(&h.payload))
            .and_then(|h| h.payload.entry().cloned())
    }

    /// Every entry (local and replicated), sorted by owner and id.
    pub fn entries(&self) -> Vec<CatalogEntry> {
        let Ok(st) = self.state() else {
            return Vec::new();
        };
        let mut v: Vec<CatalogEntry> = st
            .held
            .values()
            .filter_map(|h| h.payload.entry().cloned())
            .collect();
        v.sort_by(|a, b| (&a.owner, &a.dataset.id).cmp(&(&b.owner, &b.dataset.id)));
        v
    }

    /// Searches the local replica.
    pub fn search(&self, q: &SearchQuery) -> SearchResult {
        let (Ok(index), Ok(st)) = (locks::read(&self.index, INDEX), self.state()) else {
            return SearchResult::default();
        };
        let hits = index.search(q);
        SearchResult {
            entries: hits
                .hits
                .iter()
                .filter_map(|h| st.held.get(&h.key).and_then(|x| x.payload.entry().cloned()))
                .collect(),
            total: hits.total,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test")]
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::StoreOptions;
    use entry::tests::smart_meter;

    pub(super) async fn open_at(dir: &std::path::Path, org: &str, node: &str) -> Catalog {
        let store = Store::open(
            &dir.join(node),
            &StoreOptions {
                cache_bytes: 1 << 20,
            },
        )
        .unwrap();
        Catalog::open(
            store,
            ManualClock::at_unix_ms(1_741_000_000_000),
            CatalogIdentity {
                organisation: org.into(),
                node: node.into(),
                publisher_name: format!("{org} display"),
            },
        )
        .await
        .unwrap()
    }

    pub(super) fn air_quality() -> DatasetDescription {
        let mut d = smart_meter();
        d.id = "air-quality".into();
        d.title = "Luftqualität".into();
        d.description = "Stündliche Messwerte der LÜB-Stationen".into();
        d.classification = allmende_policies::Classification::Public;
        d.contains_personal_data = false;
        d.access_rights = AccessRights::Public;
        d.legal_basis = allmende_policies::LegalBasis::NotApplicable;
        d.public_space_origin = true;
        d.licence = "dl-de-by-2.0".into();
        d.schema.subject_column = None;
        d.schema.identifier_columns = vec![];
        d
    }
    #[tokio::test]
    async fn local_entries_are_versioned_signed_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key;
        {
            let c = open_at(dir.path(), "swm", "swm-1").await;
            key = c.public_key();
            let e = c.upsert_local(smart_meter()).await.unwrap();
            assert_eq!((e.version, e.owner.as_str()), (1, "swm"));
            // Same description again: no new version.
            assert_eq!(c.upsert_local(smart_meter()).await.unwrap().version, 1);
            let mut changed = smart_meter();
            changed.title = "Neuer Titel".into();
            assert_eq!(c.upsert_local(changed).await.unwrap().version, 2);
            let err = c
                .upsert_local(DatasetDescription {
                    title: String::new(),
                    ..smart_meter()
                })
                .await
                .unwrap_err();
            assert!(err.to_string().contains("title is empty"), "{err}");
            assert_eq!(c.local_version(), 2);
        }
        let c = open_at(dir.path(), "swm", "swm-1").await;
        assert_eq!(c.public_key(), key, "the signing key is kept");
        assert_eq!(c.local_version(), 2);
        assert_eq!(
            c.local("smart-meter-readings").unwrap().dataset.title,
            "Neuer Titel"
        );
        let listing = c.list_since(0, 100);
        assert_eq!(listing.records.len(), 1);
        assert_eq!(listing.catalog_version, 2);
        let p = listing.records[0].verify(&key).unwrap();
        assert_eq!(p.version(), 2);
        assert!(c.list_since(2, 100).records.is_empty());
        // A byte budget still lists one record.
        let page = c.list_page(0, 100, 1);
        assert_eq!((page.records.len(), page.more), (1, false));
    }

    #[tokio::test]
    async fn get_names_ambiguity_and_local_entries_win() {
        let dir = tempfile::tempdir().unwrap();
        let swm = open_at(dir.path(), "swm", "swm-1").await;
        let stadt = open_at(dir.path(), "stadt", "stadt-1").await;
        swm.upsert_local(air_quality()).await.unwrap();
        stadt.upsert_local(air_quality()).await.unwrap();
        stadt
            .apply_peer_listing("swm", "swm-1", &swm.list_since(0, 10))
            .await
            .unwrap();
        let err = stadt.get(None, "air-quality").unwrap_err();
        assert!(
            err.to_string()
                .contains("several organisations (stadt, swm)"),
            "{err}"
        );
        assert_eq!(stadt.get(Some("swm"), "air-quality").unwrap().owner, "swm");
        assert!(matches!(
            stadt.get(None, "nope"),
            Err(CatalogError::NotFound(_))
        ));
        assert!(stadt.local("air-quality").is_some());
        assert!(stadt.local("smart-meter-readings").is_none());
    }

    /// A panic while the catalog's state was being changed leaves it
    /// unusable: nothing is served to peers or searchers, and changes and
    /// lookups refuse, until a restart reloads it from the store.
    #[tokio::test]
    async fn a_poisoned_catalog_serves_nothing_and_refuses_changes() {
        let dir = tempfile::tempdir().unwrap();
        let c = std::sync::Arc::new(open_at(dir.path(), "swm", "swm-1").await);
        c.upsert_local(air_quality()).await.unwrap();
        let c2 = c.clone();
        let _ = std::thread::spawn(move || {
            let _held = c2.state.write();
            panic!("a bug while changing the catalog");
        })
        .join();
        let page = c.list_since(0, 10);
        assert!(page.records.is_empty() && !page.more, "{page:?}");
        assert!(c.entries().is_empty());
        assert!(c.local("air-quality").is_none());
        assert_eq!(c.search(&SearchQuery::text("luft")).total, 0);
        assert!(matches!(
            c.get(None, "air-quality"),
            Err(CatalogError::Poisoned(_))
        ));
        assert!(matches!(
            c.remove_local("air-quality").await,
            Err(CatalogError::Poisoned(_))
        ));
        drop(c);
        let c = open_at(dir.path(), "swm", "swm-1").await;
        assert!(c.local("air-quality").is_some());
    }
}
