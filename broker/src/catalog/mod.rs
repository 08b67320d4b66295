//! The federated catalog: this node's own dataset entries, signed by the node,
//! and a replica of every peer's entries, with full-text search over both.
//!
//! - **Local entries** are written only through [`Catalog::upsert_local`] and
//!   [`Catalog::remove_local`] (connector registration calls them). Each
//!   change raises the node's catalog version by one, is signed with the
//!   node's Ed25519 catalog key (made on first start, kept in the store) and
//!   is durable before the call returns.
//! - **Replicas** arrive through [`Catalog::apply_peer_listing`] with the
//!   identity of the node that served them, as its certificate proved on the
//!   mTLS connection. A listing is taken whole or not at all: every record must
//!   verify with that node's key (pinned on first use), be owned by that node
//!   and its organisation, and describe a valid dataset.
//! - **Search** answers from memory ([`search::SearchIndex`]).
//!
//! The network side (serving `Catalog.List`, pulling from peers on a schedule
//! and on `Catalog.Notify`) lives in `federation::replicator`. See `docs/catalog.md`.

pub mod dcat;
pub mod entry;
pub mod search;
pub mod signing;

/// Types the catalog's API is made of, re-exported for its callers.
pub use allmende_connectors::{FieldSpec, FieldType};
pub use allmende_policies::{Classification, LegalBasis, Purpose};
pub use entry::{
    AccessRights, CatalogEntry, ContactPoint, DatasetDescription, DatasetSchema, Frequency,
    LICENCES, Licence, Spatial, Temporal, Theme, UnknownValue,
};
pub use search::{SearchHits, SearchIndex, SearchQuery};
pub use signing::{KeyError, NodeSigner, SignedPayload, SignedRecord, VerifyError};

use crate::clock::SharedClock;
use crate::error::ApiError;
use crate::store::{Key, Store, StoreError, Table, TableName, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

/// Keys of the `catalog` table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CatalogKey {
    /// Node facts: signing key, local version.
    Meta(String),
    /// An entry or removal by (owner organisation, dataset id).
    Entry(String, String),
    /// What this node knows of a peer's catalog, by (organisation, node).
    Peer(String, String),
}

impl Key for CatalogKey {
    fn encode(&self) -> Vec<u8> {
        let (tag, parts): (u8, Vec<&str>) = match self {
            CatalogKey::Meta(a) => (b'm', vec![a]),
            CatalogKey::Entry(a, b) => (b'e', vec![a, b]),
            CatalogKey::Peer(a, b) => (b'p', vec![a, b]),
        };
        let mut v = vec![tag];
        for p in parts {
            v.push(0);
            v.extend_from_slice(p.as_bytes());
        }
        v
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (tag, rest) = bytes.split_first()?;
        let rest = rest.strip_prefix(&[0])?;
        let parts: Vec<String> = rest
            .split(|b| *b == 0)
            .map(|p| String::from_utf8(p.to_vec()).ok())
            .collect::<Option<_>>()?;
        match (tag, parts.as_slice()) {
            (b'm', [a]) => Some(CatalogKey::Meta(a.clone())),
            (b'e', [a, b]) => Some(CatalogKey::Entry(a.clone(), b.clone())),
            (b'p', [a, b]) => Some(CatalogKey::Peer(a.clone(), b.clone())),
            _ => None,
        }
    }
}

const META_SIGNING_KEY: &str = "signing_key";
const META_LOCAL_VERSION: &str = "local_version";

/// Values of the `catalog` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CatalogRecord {
    SigningKey { pkcs8_hex: String },
    LocalVersion { version: u64 },
    Entry(StoredEntry),
    Peer(PeerState),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEntry {
    record: SignedRecord,
    /// The node that served it (`None` for this node's own entries).
    received_from: Option<String>,
    received_at_ms: i64,
}

/// What this node knows of a peer's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    pub organisation: String,
    pub node: String,
    /// The peer's catalog key, pinned when first seen (hex).
    pub public_key_hex: String,
    pub pinned_at_ms: i64,
    /// The peer's catalog version this replica is complete up to.
    pub version: u64,
    pub last_pull_ms: i64,
}

/// Who this catalog belongs to: from the node's own certificate and the
/// signed membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogIdentity {
    pub organisation: String,
    pub node: String,
    /// The organisation's display name in the membership.
    pub publisher_name: String,
}

/// A page of a node's own catalog changes, as served by `Catalog.List`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerListing {
    /// What the serving node says it is (informational; the receiver uses
    /// the certificate-bound identity).
    pub organisation: String,
    pub node: String,
    /// The records cover every change up to this version.
    pub catalog_version: u64,
    /// The serving node's catalog key.
    pub public_key: Vec<u8>,
    pub records: Vec<SignedRecord>,
    /// More changes follow: ask again with `since = catalog_version`.
    pub more: bool,
}

/// Why a peer's listing was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a node does not replicate its own catalog")]
    OwnListing,
    #[error("node key changed: pinned `{pinned}`, presented `{presented}`")]
    KeyChanged { pinned: String, presented: String },
    #[error("record {index}: {error}")]
    Unverified { index: usize, error: VerifyError },
    #[error(
        "record {index}: dataset `{dataset}` is owned by `{found}`, not by the serving organisation"
    )]
    WrongOwner {
        index: usize,
        dataset: String,
        found: String,
    },
    #[error("record {index}: dataset `{dataset}` names owner node `{found}`, not the serving node")]
    WrongNode {
        index: usize,
        dataset: String,
        found: String,
    },
    #[error("record {index}: version {version} lies outside 1..={listed}")]
    VersionOutOfRange {
        index: usize,
        version: u64,
        listed: u64,
    },
    #[error("record {index}: dataset `{dataset}` is invalid: {}", problems.join("; "))]
    Invalid {
        index: usize,
        dataset: String,
        problems: Vec<String>,
    },
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
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid { .. } | CatalogError::Ambiguous { .. } => {
                ApiError::InvalidArgument(e.to_string())
            }
            CatalogError::NotFound(_) => ApiError::NotFound(e.to_string()),
            CatalogError::OwnedByOtherNode { .. } => ApiError::FailedPrecondition(e.to_string()),
            CatalogError::PeerRefused { .. } => ApiError::PermissionDenied(e.to_string()),
            CatalogError::Store(s) => ApiError::from(s),
            CatalogError::Key(k) => ApiError::Internal(k.to_string()),
        }
    }
}

/// What applying a peer's listing changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// New or changed entries taken.
    pub updated: usize,
    /// Entries removed because the owner removed them.
    pub removed: usize,
    /// Records older than what the replica holds.
    pub stale: usize,
    /// Records for a dataset this node publishes itself (kept the local one).
    pub conflicts: usize,
    /// The peer's version the replica is now complete up to.
    pub version: u64,
    /// True when the peer's key was pinned by this listing.
    pub pinned: bool,
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

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn entry_key(owner: &str, dataset: &str) -> (String, String) {
    (owner.to_owned(), dataset.to_owned())
}

impl Catalog {
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

    /// The version of this node's own catalog.
    pub fn local_version(&self) -> u64 {
        read(&self.state).local_version
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
                dataset: dataset.id.chars().take(100).collect(),
                problems,
            });
        }
        let _w = self.write.lock().await;
        let key = entry_key(&self.identity.organisation, &dataset.id);
        let version = {
            let st = read(&self.state);
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
            let st = read(&self.state);
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
            let mut idx = write(&self.index);
            match payload.entry() {
                Some(e) => idx.upsert(e),
                None => {
                    idx.remove(&key.0, &key.1);
                }
            }
        }
        {
            let mut st = write(&self.state);
            st.held.insert(key, Held { payload, record });
            st.local_version = version;
        }
        self.version_tx.send_replace(version);
        Ok(())
    }

    /// This node's own changes after `since`, oldest first, at most `max`
    /// of them: what `Catalog.List` serves.
    pub fn list_since(&self, since: u64, max: usize) -> PeerListing {
        self.list_page(since, max, usize::MAX)
    }

    /// Like [`Catalog::list_since`], also stopping before the records pass
    /// `max_bytes` (at least one record is always listed).
    pub fn list_page(&self, since: u64, max: usize, max_bytes: usize) -> PeerListing {
        let st = read(&self.state);
        let mut own: Vec<&Held> = st
            .held
            .values()
            .filter(|h| self.is_local(&h.payload) && h.payload.version() > since)
            .collect();
        own.sort_by_key(|h| h.payload.version());
        let mut take = 0;
        let mut bytes = 0usize;
        for h in &own {
            bytes = bytes.saturating_add(h.record.payload.len() + h.record.signature.len());
            if take >= max.max(1) || (take > 0 && bytes > max_bytes) {
                break;
            }
            take += 1;
        }
        let more = own.len() > take;
        own.truncate(take);
        let catalog_version = if more {
            own.last().map_or(since, |h| h.payload.version())
        } else {
            st.local_version
        };
        PeerListing {
            organisation: self.identity.organisation.clone(),
            node: self.identity.node.clone(),
            catalog_version,
            public_key: self.public_key(),
            records: own.into_iter().map(|h| h.record.clone()).collect(),
            more,
        }
    }

    /// The version of `organisation/node`'s catalog this replica is complete
    /// up to (`None`: never pulled).
    pub fn peer_version(&self, organisation: &str, node: &str) -> Option<u64> {
        read(&self.state)
            .peers
            .get(&(organisation.to_owned(), node.to_owned()))
            .map(|p| p.version)
    }

    /// Every peer this replica has pulled from.
    pub fn peers(&self) -> Vec<PeerState> {
        let mut v: Vec<PeerState> = read(&self.state).peers.values().cloned().collect();
        v.sort_by(|a, b| (&a.organisation, &a.node).cmp(&(&b.organisation, &b.node)));
        v
    }

    /// Applies a listing served by `organisation/node` — the identity its
    /// certificate proved on the connection, never what the listing claims.
    /// All or nothing: one bad record refuses the whole listing.
    pub async fn apply_peer_listing(
        &self,
        organisation: &str,
        node: &str,
        listing: &PeerListing,
    ) -> Result<ApplyReport, CatalogError> {
        let refuse = |reason: Refusal| CatalogError::PeerRefused {
            organisation: organisation.to_owned(),
            node: node.to_owned(),
            reason,
        };
        if organisation == self.identity.organisation && node == self.identity.node {
            return Err(refuse(Refusal::OwnListing));
        }
        let presented = hex::encode(&listing.public_key);
        let peer_key = (organisation.to_owned(), node.to_owned());
        let _w = self.write.lock().await;
        let known = read(&self.state).peers.get(&peer_key).cloned();
        if let Some(p) = &known
            && p.public_key_hex != presented
        {
            return Err(refuse(Refusal::KeyChanged {
                pinned: p.public_key_hex.clone(),
                presented,
            }));
        }
        // Verify everything before changing anything.
        let mut verified = Vec::with_capacity(listing.records.len());
        for (index, rec) in listing.records.iter().enumerate() {
            let payload = rec
                .verify(&listing.public_key)
                .map_err(|error| refuse(Refusal::Unverified { index, error }))?;
            if payload.owner() != organisation {
                return Err(refuse(Refusal::WrongOwner {
                    index,
                    dataset: payload.dataset().to_owned(),
                    found: payload.owner().to_owned(),
                }));
            }
            if payload.owner_node() != node {
                return Err(refuse(Refusal::WrongNode {
                    index,
                    dataset: payload.dataset().to_owned(),
                    found: payload.owner_node().to_owned(),
                }));
            }
            if payload.version() == 0 || payload.version() > listing.catalog_version {
                return Err(refuse(Refusal::VersionOutOfRange {
                    index,
                    version: payload.version(),
                    listed: listing.catalog_version,
                }));
            }
            if let Some(e) = payload.entry() {
                let problems = e.dataset.problems();
                if !problems.is_empty() {
                    return Err(refuse(Refusal::Invalid {
                        index,
                        dataset: e.dataset.id.chars().take(100).collect(),
                        problems,
                    }));
                }
            } else if !entry::valid_dataset_id(payload.dataset()) {
                return Err(refuse(Refusal::Invalid {
                    index,
                    dataset: payload.dataset().chars().take(100).collect(),
                    problems: vec!["invalid dataset id".into()],
                }));
            }
            verified.push((payload, rec.clone()));
        }
        verified.sort_by_key(|(p, _)| p.version());

        let now = self.clock.now_unix_ms();
        let mut report = ApplyReport {
            version: listing.catalog_version,
            pinned: known.is_none(),
            ..ApplyReport::default()
        };
        let mut batch = WriteBatch::new();
        let mut taken: HashMap<(String, String), Held> = HashMap::new();
        {
            let st = read(&self.state);
            for (payload, record) in verified {
                let key = entry_key(payload.owner(), payload.dataset());
                let current = taken
                    .get(&key)
                    .or_else(|| st.held.get(&key))
                    .map(|h| &h.payload);
                let take = match current {
                    None => true,
                    Some(c) if self.is_local(c) => {
                        report.conflicts += 1;
                        tracing::warn!(
                            peer_org = %organisation,
                            peer_node = %node,
                            dataset = %payload.dataset(),
                            "peer publishes a dataset this node publishes; keeping the local entry"
                        );
                        false
                    }
                    Some(c) if c.owner_node() == node => c.version() < payload.version(),
                    // Another node of the same organisation published it: the later change wins.
                    Some(c) => c.updated_at_ms() < payload.updated_at_ms(),
                };
                if !take {
                    if current.is_some_and(|c| !self.is_local(c)) {
                        report.stale += 1;
                    }
                    continue;
                }
                if payload.entry().is_some() {
                    report.updated += 1;
                } else {
                    report.removed += 1;
                }
                batch.put(
                    &self.table,
                    &CatalogKey::Entry(key.0.clone(), key.1.clone()),
                    &CatalogRecord::Entry(StoredEntry {
                        record: record.clone(),
                        received_from: Some(node.to_owned()),
                        received_at_ms: now,
                    }),
                )?;
                taken.insert(key, Held { payload, record });
            }
        }
        let peer = PeerState {
            organisation: organisation.to_owned(),
            node: node.to_owned(),
            public_key_hex: presented,
            pinned_at_ms: known.as_ref().map_or(now, |p| p.pinned_at_ms),
            version: listing.catalog_version,
            last_pull_ms: now,
        };
        batch.put(
            &self.table,
            &CatalogKey::Peer(peer_key.0.clone(), peer_key.1.clone()),
            &CatalogRecord::Peer(peer.clone()),
        )?;
        self.store.commit_durable(batch).await?;
        {
            let mut idx = write(&self.index);
            for (key, h) in &taken {
                match h.payload.entry() {
                    Some(e) => idx.upsert(e),
                    None => {
                        idx.remove(&key.0, &key.1);
                    }
                }
            }
        }
        {
            let mut st = write(&self.state);
            st.held.extend(taken);
            st.peers.insert(peer_key, peer);
        }
        if report.updated + report.removed > 0 || report.pinned {
            tracing::info!(
                peer_org = %organisation,
                peer_node = %node,
                updated = report.updated,
                removed = report.removed,
                stale = report.stale,
                version = report.version,
                pinned = report.pinned,
                "catalog replica updated"
            );
        }
        Ok(report)
    }

    /// The entry `dataset`; `owner` picks one when several organisations use
    /// the same id.
    pub fn get(&self, owner: Option<&str>, dataset: &str) -> Result<CatalogEntry, CatalogError> {
        let st = read(&self.state);
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
        read(&self.state)
            .held
            .get(&entry_key(&self.identity.organisation, dataset))
            .filter(|h| self.is_local(&h.payload))
            .and_then(|h| h.payload.entry().cloned())
    }

    /// Every entry (local and replicated), sorted by owner and id.
    pub fn entries(&self) -> Vec<CatalogEntry> {
        let mut v: Vec<CatalogEntry> = read(&self.state)
            .held
            .values()
            .filter_map(|h| h.payload.entry().cloned())
            .collect();
        v.sort_by(|a, b| (&a.owner, &a.dataset.id).cmp(&(&b.owner, &b.dataset.id)));
        v
    }

    /// Searches the local replica.
    pub fn search(&self, q: &SearchQuery) -> SearchResult {
        let hits = read(&self.index).search(q);
        let st = read(&self.state);
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
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "test"
    )]
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::StoreOptions;
    use entry::tests::smart_meter;

    async fn open_at(dir: &std::path::Path, org: &str, node: &str) -> Catalog {
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

    fn air_quality() -> DatasetDescription {
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

    #[test]
    fn keys_round_trip() {
        for k in [
            CatalogKey::Meta("x".into()),
            CatalogKey::Entry("swm".into(), "a-b".into()),
            CatalogKey::Peer("stadt".into(), "stadt-1".into()),
        ] {
            assert_eq!(CatalogKey::decode(&k.encode()), Some(k));
        }
        assert_eq!(CatalogKey::decode(b"e\0only-one"), None);
        assert_eq!(CatalogKey::decode(b""), None);
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
    async fn replicas_follow_changes_and_removals_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let swm = open_at(dir.path(), "swm", "swm-1").await;
        let stadt = open_at(dir.path(), "stadt", "stadt-1").await;
        for i in 0..5 {
            let mut d = smart_meter();
            d.id = format!("ds-{i}");
            swm.upsert_local(d).await.unwrap();
        }
        assert!(swm.remove_local("ds-3").await.unwrap());
        assert!(!swm.remove_local("ds-3").await.unwrap());
        // Pull in pages of two.
        let mut since = 0;
        let mut pages = 0;
        loop {
            let l = swm.list_since(since, 2);
            let r = stadt.apply_peer_listing("swm", "swm-1", &l).await.unwrap();
            since = r.version;
            pages += 1;
            if !l.more {
                break;
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(stadt.peer_version("swm", "swm-1"), Some(6));
        let ids: Vec<String> = stadt.entries().into_iter().map(|e| e.dataset.id).collect();
        assert_eq!(ids, ["ds-0", "ds-1", "ds-2", "ds-4"]);
        // Search answers from the replica.
        let hits = stadt.search(&SearchQuery {
            owner: Some("swm".into()),
            ..SearchQuery::text("zaehler")
        });
        assert_eq!(hits.total, 0);
        let hits = stadt.search(&SearchQuery::text("stromverbrauchswerte"));
        assert_eq!(hits.total, 4);
        // Re-applying an old page is harmless.
        let old = swm.list_since(0, 100);
        let r = stadt
            .apply_peer_listing("swm", "swm-1", &old)
            .await
            .unwrap();
        assert_eq!((r.updated, r.stale), (0, 5));
        // The replica survives a restart.
        drop(stadt);
        let stadt = open_at(dir.path(), "stadt", "stadt-1").await;
        assert_eq!(stadt.entries().len(), 4);
        assert_eq!(stadt.search(&SearchQuery::text("ds")).total, 4);
    }

    #[tokio::test]
    async fn forged_listings_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let swm = open_at(dir.path(), "swm", "swm-1").await;
        let stadt = open_at(dir.path(), "stadt", "stadt-1").await;
        swm.upsert_local(smart_meter()).await.unwrap();
        let good = swm.list_since(0, 100);

        let reason = |e: CatalogError| match e {
            CatalogError::PeerRefused { reason, .. } => reason,
            other => panic!("unexpected {other}"),
        };
        // Served by a node of another organisation (the certificate says stadt).
        let r = reason(
            stadt
                .apply_peer_listing("tum", "tum-1", &good)
                .await
                .unwrap_err(),
        );
        assert!(matches!(r, Refusal::WrongOwner { .. }), "{r}");
        // Served by another node of the right organisation.
        let r = reason(
            stadt
                .apply_peer_listing("swm", "swm-2", &good)
                .await
                .unwrap_err(),
        );
        assert!(matches!(r, Refusal::WrongNode { .. }), "{r}");
        // A node signing an entry that names another owner: its own key,
        // its own connection, the wrong organisation in the entry.
        let tum = open_at(dir.path(), "tum", "tum-1").await;
        let forged_payload = SignedPayload::Entry(Box::new(CatalogEntry {
            owner: "swm".into(),
            owner_node: "tum-1".into(),
            publisher_name: "x".into(),
            version: 1,
            updated_at_ms: 0,
            dataset: air_quality(),
        }));
        let forged = PeerListing {
            records: vec![tum.signer.sign(&forged_payload).unwrap()],
            catalog_version: 1,
            ..tum.list_since(0, 10)
        };
        let r = reason(
            stadt
                .apply_peer_listing("tum", "tum-1", &forged)
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(r, Refusal::WrongOwner { ref found, .. } if found == "swm"),
            "{r}"
        );
        // Tampered bytes.
        let mut tampered = good.clone();
        tampered.records[0].payload = tampered.records[0]
            .payload
            .replace("Smart-Meter", "Smart-Metre");
        let r = reason(
            stadt
                .apply_peer_listing("swm", "swm-1", &tampered)
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(
                r,
                Refusal::Unverified {
                    error: VerifyError::BadSignature,
                    ..
                }
            ),
            "{r}"
        );
        // Nothing was taken, nothing pinned.
        assert!(stadt.entries().is_empty());
        assert_eq!(stadt.peer_version("swm", "swm-1"), None);

        // The genuine listing pins the key; a later listing with another key
        // (signed consistently, e.g. by a node that lost its store) is refused.
        stadt
            .apply_peer_listing("swm", "swm-1", &good)
            .await
            .unwrap();
        assert_eq!(stadt.entries().len(), 1);
        let dir2 = tempfile::tempdir().unwrap();
        let swm_again = open_at(dir2.path(), "swm", "swm-1").await;
        let mut d = smart_meter();
        d.title = "Übernommen".into();
        swm_again.upsert_local(d.clone()).await.unwrap();
        swm_again
            .upsert_local(DatasetDescription {
                id: "x".into(),
                ..d
            })
            .await
            .unwrap();
        let r = reason(
            stadt
                .apply_peer_listing("swm", "swm-1", &swm_again.list_since(0, 10))
                .await
                .unwrap_err(),
        );
        assert!(matches!(r, Refusal::KeyChanged { .. }), "{r}");
        assert_eq!(
            stadt
                .get(Some("swm"), "smart-meter-readings")
                .unwrap()
                .dataset
                .title,
            smart_meter().title
        );
        // Own listing.
        let r = reason(
            swm.apply_peer_listing("swm", "swm-1", &good)
                .await
                .unwrap_err(),
        );
        assert_eq!(r, Refusal::OwnListing);
    }

    #[tokio::test]
    async fn invalid_entries_are_refused_even_when_signed() {
        let dir = tempfile::tempdir().unwrap();
        let swm = open_at(dir.path(), "swm", "swm-1").await;
        let stadt = open_at(dir.path(), "stadt", "stadt-1").await;
        let mut bad = smart_meter();
        bad.licence = "beerware".into();
        let payload = SignedPayload::Entry(Box::new(CatalogEntry {
            owner: "swm".into(),
            owner_node: "swm-1".into(),
            publisher_name: "x".into(),
            version: 1,
            updated_at_ms: 0,
            dataset: bad,
        }));
        let listing = PeerListing {
            records: vec![swm.signer.sign(&payload).unwrap()],
            catalog_version: 1,
            ..swm.list_since(0, 1)
        };
        let err = stadt
            .apply_peer_listing("swm", "swm-1", &listing)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("licence `beerware` is unknown"),
            "{err}"
        );
        // Versions beyond what the listing claims are refused too.
        let listing = PeerListing {
            catalog_version: 0,
            ..swm.list_since(0, 1)
        };
        assert!(
            stadt
                .apply_peer_listing("swm", "swm-1", &listing)
                .await
                .is_ok()
        );
        swm.upsert_local(smart_meter()).await.unwrap();
        let mut l = swm.list_since(0, 1);
        l.catalog_version = 0;
        let err = stadt
            .apply_peer_listing("swm", "swm-1", &l)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
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
}
