//! The replica: what this node serves of its own catalog to peers
//! (`Catalog.List` pages) and the entries it takes from peers' listings.
//!
//! A listing arrives through [`Catalog::apply_peer_listing`] with the
//! identity of the node that served it, as its certificate proved on the
//! mTLS connection. It is taken whole or not at all: every record must
//! verify with that node's key (pinned on first use), be owned by that node
//! and its organisation, and describe a valid dataset. The loop that pulls
//! from peers lives in the federation layer.

use super::keys::{CatalogKey, CatalogRecord, StoredEntry};
use super::{Catalog, CatalogError, Held, SignedRecord, VerifyError, entry, entry_key};
use crate::store::WriteBatch;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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

impl Catalog {
    /// This node's own changes after `since`, oldest first, at most `max`
    /// of them: what `Catalog.List` serves.
    pub fn list_since(&self, since: u64, max: usize) -> PeerListing {
        self.list_page(since, max, usize::MAX)
    }

    /// Like [`Catalog::list_since`], also stopping before the records pass
    /// `max_bytes` (at least one record is always listed).
    pub fn list_page(&self, since: u64, max: usize, max_bytes: usize) -> PeerListing {
        let Ok(st) = self.state() else {
            // Nothing is served from a state that cannot be trusted.
            return PeerListing {
                organisation: self.identity.organisation.clone(),
                node: self.identity.node.clone(),
                catalog_version: since,
                public_key: self.public_key(),
                records: Vec::new(),
                more: false,
            };
        };
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
        self.state()
            .ok()?
            .peers
            .get(&(organisation.to_owned(), node.to_owned()))
            .map(|p| p.version)
    }

    /// Every peer this replica has pulled from.
    pub fn peers(&self) -> Vec<PeerState> {
        let Ok(st) = self.state() else {
            return Vec::new();
        };
        let mut v: Vec<PeerState> = st.peers.values().cloned().collect();
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
        let known = self.state()?.peers.get(&peer_key).cloned();
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
                        dataset: crate::text::shown(&e.dataset.id, 100),
                        problems,
                    }));
                }
            } else if !entry::valid_dataset_id(payload.dataset()) {
                return Err(refuse(Refusal::Invalid {
                    index,
                    dataset: crate::text::shown(payload.dataset(), 100),
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
            let st = self.state()?;
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
            let mut idx = self.index_mut()?;
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
            let mut st = self.state_mut()?;
            st.held.extend(taken);
            st.peers.insert(peer_key, peer);
        }
        if report.updated + report.removed > 0 || report.pinned {
            tracing::info!(
                peer_org = %organisation,
                peer_node = %node,
                report = ?report,
                "catalog replica updated"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test")]
    use super::super::tests::{air_quality, open_at};
    use super::super::{CatalogEntry, DatasetDescription, SearchQuery, SignedPayload};
    use super::*;
    use crate::catalog::entry::tests::smart_meter;

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
}
