//! Relayed access through the city hub (`docs/relay.md`): the node's
//! relay state — its on-behalf-of assertion signer, the replay record of
//! the assertions it accepted as an owner, its MLS node (`allmende-mls`
//! over the store's `mls_state`, one operation at a time behind one async
//! mutex) with the group of each peer organisation, the hub it forwards
//! through, and the test-only tap of a hub.
//!
//! The wire side is `rpc::relay` (the `Relay` service) and
//! `federation::relay` (the calls to the hub and from the hub to the
//! owner); this module names no wire type.

pub mod assertion;

use crate::clock::SharedClock;
use crate::mls::MlsStateStore;
use crate::pki::Trust;
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use allmende_mls::{MlsError, MlsGroupId, MlsNode, NodeIdentity, Opener, Sealer};
use assertion::{AssertionError, AssertionSigner, Verified};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::sync::Arc;

/// Expired nonces removed per accepted assertion at most (the table stays
/// bounded by the assertions of one lifetime).
const SWEEP_PER_ACCEPT: usize = 64;
/// Key prefix of the accepted nonces.
const NONCE_PREFIX: &str = "nonce/";
/// Key prefix of the group per peer organisation.
const GROUP_PREFIX: &str = "group/";
/// Unused key packages a node keeps (the MLS layer's pool).
const KEY_PACKAGE_POOL: usize = 4;
/// The name the lock helpers log for the hub endpoint and the tap.
const HUB: &str = "relay hub";

/// Why a relay step failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Assertion(#[from] AssertionError),
    #[error("mls: {0}")]
    Mls(#[from] MlsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("node `{org}/{node}` is not in the federation directory")]
    UnknownNode { org: String, node: String },
    #[error("node `{org}/{node}` has no MLS key package in the directory yet")]
    NoKeyPackage { org: String, node: String },
    #[error("the key package in the directory for `{org}/{node}` is not bound to its certificate")]
    KeyPackageSubstituted { org: String, node: String },
    #[error("this node knows no hub; set `[federation] hub` or `[federation] directory`")]
    NoHub,
    #[error("only a user of `{0}` may fetch through this node")]
    NotOwnUser(String),
    #[error("only the hub's node may call this")]
    NotHub,
    #[error("only a node listed in the federation directory may do this")]
    NotListedNode,
    #[error("the owner's certificate is not acceptable: {0}")]
    OwnerCertificate(String),
    #[error("relayed stream refused: {0}")]
    Stream(String),
    #[error("relayed stream ended before its authenticated end; the result is incomplete")]
    Truncated,
    #[error(transparent)]
    Lock(#[from] crate::locks::Poisoned),
}

/// One record of the `relay` table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Record {
    /// An accepted assertion's nonce, kept until the assertion expires.
    Nonce { expires_at: i64 },
    /// The MLS group (hex id) of the pair with a peer organisation.
    Group { id: String },
}

/// What a hub does to the frames it relays, for tests only: it cannot be
/// set from the configuration, only through [`Relay::set_tap`] on a node
/// built in-process (the sandbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Relay every frame as received.
    None,
    /// Drop the last frame of each stream.
    DropLast,
    /// Swap the second and third frames.
    Reorder,
}

/// A hub's test tap: every frame relayed (encoded), and what to do to them.
#[derive(Debug)]
pub struct HubTap {
    pub tamper: Tamper,
    pub frames: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl HubTap {
    pub fn new(tamper: Tamper) -> Arc<Self> {
        Arc::new(Self {
            tamper,
            frames: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Records one relayed frame.
    pub fn observe(&self, frame: &[u8]) {
        if let Ok(mut f) = crate::locks::lock(&self.frames, HUB) {
            f.push(frame.to_vec());
        }
    }

    /// The frames seen so far.
    pub fn seen(&self) -> Vec<Vec<u8>> {
        crate::locks::lock(&self.frames, HUB)
            .map(|f| f.clone())
            .unwrap_or_default()
    }
}

/// The start of a relayed stream as the forwarding node receives it.
#[derive(Debug, Clone, Copy)]
pub struct StreamStart<'a> {
    /// The owner node, as the user asked for it.
    pub org: &'a str,
    pub node: &'a str,
    /// The owner's certificate from the first frame.
    pub owner_certificate_der: &'a [u8],
    /// The welcome, when the owner created the pair's group now.
    pub welcome: Option<&'a [u8]>,
    pub group: &'a MlsGroupId,
    pub dataset: &'a str,
    pub stream_id: &'a str,
}

/// The relay state of one node.
pub struct Relay {
    signer: AssertionSigner,
    mls: tokio::sync::Mutex<MlsNode<MlsStateStore>>,
    table: Table<String, Record>,
    store: Store,
    trust: Arc<Trust>,
    clock: SharedClock,
    organisation: String,
    hub: std::sync::RwLock<Option<String>>,
    tap: std::sync::RwLock<Option<Arc<HubTap>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay state of the node whose certificate is `certificate_der`
    /// and key `key_pkcs8_der`, in `store`; forwarding through `hub`.
    pub async fn open(
        store: &Store,
        trust: Arc<Trust>,
        clock: SharedClock,
        certificate_der: &[u8],
        key_pkcs8_der: &[u8],
        hub: Option<String>,
    ) -> Result<Self, RelayError> {
        let signer = AssertionSigner::new(certificate_der, key_pkcs8_der)?;
        let identity = NodeIdentity::new(certificate_der, key_pkcs8_der)
            .map_err(|e| RelayError::Mls(MlsError::Binding(e)))?;
        let mls = MlsNode::open(identity, MlsStateStore::open(store)?).await?;
        let organisation = signer
            .uri()
            .parse::<crate::pki::identity::LeafIdentity>()
            .map(|l| l.organisation)
            .unwrap_or_default();
        Ok(Self {
            signer,
            mls: tokio::sync::Mutex::new(mls),
            table: store.table(TableName::Relay)?,
            store: store.clone(),
            trust,
            clock,
            organisation,
            hub: std::sync::RwLock::new(hub),
            tap: std::sync::RwLock::new(None),
        })
    }

    /// [`Relay::open`] with the node's TLS material (PEM: the certificate
    /// chain, the node's certificate first, and its PKCS#8 key).
    pub async fn open_pem(
        store: &Store,
        trust: Arc<Trust>,
        clock: SharedClock,
        chain_pem: &str,
        key_pem: &str,
        hub: Option<String>,
    ) -> Result<Self, RelayError> {
        let (signer, key) = AssertionSigner::from_pem(chain_pem, key_pem)?;
        let cert = signer.certificate_der().to_vec();
        Self::open(store, trust, clock, &cert, &key, hub).await
    }

    /// This node's assertion signer.
    pub fn signer(&self) -> &AssertionSigner {
        &self.signer
    }

    /// This node's identity URI.
    pub fn uri(&self) -> &str {
        self.signer.uri()
    }

    /// The hub this node forwards through.
    pub fn hub(&self) -> Result<String, RelayError> {
        crate::locks::read(&self.hub, HUB)?
            .clone()
            .ok_or(RelayError::NoHub)
    }

    /// Forwards through `hub` from now on (`None`: no relaying).
    pub fn set_hub(&self, hub: Option<String>) {
        if let Ok(mut h) = crate::locks::write(&self.hub, HUB) {
            *h = hub;
        }
    }

    /// Installs a test tap on this node as a hub (`None`: removes it).
    /// Only in builds for tests (`test-util`): a node built for service
    /// cannot tamper with what it relays.
    #[cfg(any(test, feature = "test-util"))]
    pub fn set_tap(&self, tap: Option<Arc<HubTap>>) {
        if let Ok(mut t) = crate::locks::write(&self.tap, HUB) {
            *t = tap;
        }
    }

    /// The test tap, if one is set.
    pub fn tap(&self) -> Option<Arc<HubTap>> {
        crate::locks::read(&self.tap, HUB)
            .ok()
            .and_then(|t| t.clone())
    }

    /// The node's MLS state (one operation at a time).
    pub fn mls(&self) -> &tokio::sync::Mutex<MlsNode<MlsStateStore>> {
        &self.mls
    }

    /// Verifies an on-behalf-of assertion for `request` addressed to this
    /// node and records its nonce durably before anything is served, so
    /// that a replay — also across a restart — is refused.
    pub async fn accept(&self, bytes: &[u8], request: &[u8]) -> Result<Verified, RelayError> {
        let now = self.clock.now_unix_secs();
        let v = assertion::verify(bytes, request, &self.trust, self.uri(), now)?;
        let key = format!("{NONCE_PREFIX}{}", v.nonce);
        let mut b = WriteBatch::new();
        // One accept at a time: the check and the write of a nonce must not
        // interleave with another's.
        let _one = self.mls.lock().await;
        if self.table.get(&key)?.is_some() {
            return Err(AssertionError::Replayed.into());
        }
        let expired = self
            .table
            .range(&NONCE_PREFIX.to_owned(), &format!("{NONCE_PREFIX}~"))?
            .into_iter()
            .filter(|(_, r)| matches!(r, Record::Nonce { expires_at } if *expires_at < now))
            .take(SWEEP_PER_ACCEPT);
        for (k, _) in expired {
            b.remove(&self.table, &k);
        }
        b.put(
            &self.table,
            &key,
            &Record::Nonce {
                expires_at: v.expires_at,
            },
        )?;
        self.store.commit_durable(b).await?;
        Ok(v)
    }

    /// The directory's entry of node `org/node`.
    fn entry(
        &self,
        org: &str,
        node: &str,
    ) -> Result<crate::pki::membership::NodeEntry, RelayError> {
        self.trust
            .snapshot()
            .doc
            .nodes
            .iter()
            .find(|n| n.org == org && n.node == node)
            .cloned()
            .ok_or_else(|| RelayError::UnknownNode {
                org: org.to_owned(),
                node: node.to_owned(),
            })
    }

    fn group_of(&self, org: &str) -> Result<Option<MlsGroupId>, RelayError> {
        Ok(match self.table.get(&format!("{GROUP_PREFIX}{org}"))? {
            Some(Record::Group { id }) => hex::decode(&id).ok().map(|b| MlsGroupId::from_bytes(&b)),
            _ => None,
        })
    }

    async fn set_group(&self, org: &str, group: Option<&MlsGroupId>) -> Result<(), RelayError> {
        let mut b = WriteBatch::new();
        let key = format!("{GROUP_PREFIX}{org}");
        match group {
            Some(g) => b.put(
                &self.table,
                &key,
                &Record::Group {
                    id: hex::encode(g.as_bytes()),
                },
            )?,
            None => b.remove(&self.table, &key),
        }
        self.store.commit_durable(b).await?;
        Ok(())
    }

    /// The owner's side: the pair's group with the reader organisation of
    /// the verified assertion, and a welcome when it was created now —
    /// from the reader node's key package in the directory, checked
    /// against the issuer certificate of the verified assertion (a key
    /// package the hub substituted is refused). A reader node not in the
    /// pair's group gets a new group.
    pub async fn owner_group(
        &self,
        v: &Verified,
    ) -> Result<(MlsGroupId, Option<Vec<u8>>), RelayError> {
        let org = &v.issuer.organisation;
        let mut mls = self.mls.lock().await;
        if let Some(g) = self.group_of(org)?
            && mls.groups()?.contains(&g)
            && mls.members(&g)?.iter().any(|m| m.uri == v.issuer_uri)
        {
            return Ok((g, None));
        }
        let node = match &v.issuer.subject {
            crate::pki::Subject::Node(n) => n.clone(),
            crate::pki::Subject::User(_) => return Err(AssertionError::IssuerNotNode.into()),
        };
        let entry = self.entry(org, &node)?;
        let no_kp = || RelayError::NoKeyPackage {
            org: org.clone(),
            node: node.clone(),
        };
        if entry.mls_key_package.is_empty() {
            return Err(no_kp());
        }
        let kp = B64.decode(&entry.mls_key_package).map_err(|_| no_kp())?;
        let created = mls
            .create_group(&kp, &v.issuer_certificate_der)
            .await
            .map_err(|e| match e {
                MlsError::Binding(_) => RelayError::KeyPackageSubstituted {
                    org: org.clone(),
                    node: node.clone(),
                },
                other => RelayError::Mls(other),
            })?;
        drop(mls);
        self.set_group(org, Some(&created.group)).await?;
        Ok((created.group, Some(created.welcome)))
    }

    /// A sealer for one relayed stream.
    pub async fn sealer(
        &self,
        group: &MlsGroupId,
        dataset: &str,
        stream_id: &str,
    ) -> Result<Sealer, RelayError> {
        Ok(self
            .mls
            .lock()
            .await
            .seal_stream(group, dataset, stream_id)?)
    }

    /// The reader's side: checks the owner's certificate (trusted by the
    /// federation, a node, the one the directory lists for `org/node`),
    /// joins the pair's group from `welcome` when there is one (the
    /// owner's credential checked against that certificate; the fresh key
    /// packages are returned for the directory), checks the owner's
    /// binding in the group and opens the stream.
    pub async fn reader_open(
        &self,
        s: &StreamStart<'_>,
    ) -> Result<(Opener, Option<Vec<u8>>), RelayError> {
        let StreamStart {
            org,
            node,
            owner_certificate_der,
            welcome,
            group,
            dataset,
            stream_id,
        } = *s;
        let owner = self
            .trust
            .authenticate_leaf(owner_certificate_der)
            .map_err(|e| RelayError::OwnerCertificate(e.to_string()))?;
        let listed = self.entry(org, node)?;
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            owner_certificate_der,
        ));
        if owner.organisation != org
            || owner.subject != crate::pki::Subject::Node(node.to_owned())
            || listed.cert_sha256 != sha
        {
            return Err(RelayError::OwnerCertificate(format!(
                "not the certificate the directory lists for `{org}/{node}`"
            )));
        }
        let owner_uri = crate::pki::identity::LeafIdentity {
            federation: owner.federation.clone(),
            organisation: owner.organisation.clone(),
            subject: owner.subject.clone(),
        }
        .uri();
        let mut mls = self.mls.lock().await;
        let mut fresh = None;
        if let Some(w) = welcome {
            let joined = mls.join(w, owner_certificate_der).await?;
            if &joined.group != group {
                return Err(RelayError::Stream(
                    "the welcome is for another group".into(),
                ));
            }
            fresh = joined.key_packages.into_iter().next();
            drop(mls);
            self.set_group(org, Some(group)).await?;
            mls = self.mls.lock().await;
        }
        mls.verify_binding(group, &owner_uri, owner_certificate_der)?;
        Ok((mls.open_stream(group, dataset, stream_id)?, fresh))
    }

    /// One unused key package of this node for its directory slot.
    pub async fn key_package(&self) -> Result<Vec<u8>, RelayError> {
        self.mls
            .lock()
            .await
            .key_packages(1)
            .await?
            .into_iter()
            .next()
            .ok_or(RelayError::Mls(MlsError::Malformed("key package pool")))
    }

    /// This node's unused key packages (its pool).
    pub async fn unused_key_packages(&self) -> Result<Vec<Vec<u8>>, RelayError> {
        Ok(self.mls.lock().await.key_packages(KEY_PACKAGE_POOL).await?)
    }

    /// The hub's side of a publication: the key package must be bound to
    /// `certificate_der`, the certificate of the calling node.
    pub async fn check_key_package(
        &self,
        key_package: &[u8],
        certificate_der: &[u8],
    ) -> Result<(), RelayError> {
        Ok(self
            .mls
            .lock()
            .await
            .check_key_package(key_package, certificate_der)?)
    }

    /// Commits the removal of every member of an organisation that is no
    /// longer in the federation from the pair's group (a new epoch the
    /// removed nodes cannot derive) and forgets the pair. Returns how many
    /// groups changed. Runs on every directory change.
    pub async fn remove_departed(&self) -> usize {
        let snap = self.trust.snapshot();
        let pairs = match self
            .table
            .range(&GROUP_PREFIX.to_owned(), &format!("{GROUP_PREFIX}~"))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "relay groups not read; removals not committed");
                return 0;
            }
        };
        let mut n = 0;
        for (key, record) in pairs {
            let org = key.trim_start_matches(GROUP_PREFIX).to_owned();
            if snap.doc.member(&org).is_some() {
                continue;
            }
            let Record::Group { id } = record else {
                continue;
            };
            let Ok(bytes) = hex::decode(&id) else {
                continue;
            };
            let group = MlsGroupId::from_bytes(&bytes);
            match self.remove_org(&group, &org).await {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(org = %org, error = %e, "removal not committed"),
            }
        }
        n
    }

    async fn remove_org(&self, group: &MlsGroupId, org: &str) -> Result<(), RelayError> {
        {
            let mut mls = self.mls.lock().await;
            if mls.groups()?.contains(group) {
                let gone: Vec<String> = mls
                    .members(group)?
                    .into_iter()
                    .map(|m| m.uri)
                    .filter(|u| {
                        u.parse::<crate::pki::identity::LeafIdentity>()
                            .is_ok_and(|l| l.organisation == org)
                    })
                    .collect();
                for uri in gone {
                    let r = mls.remove(group, &uri).await?;
                    tracing::info!(org = %org, epoch = r.epoch, "removed from the pair's MLS group");
                }
            }
        }
        self.set_group(org, None).await
    }

    /// The pair's group with `org`, if any (tests, the demo).
    pub fn group_with(&self, org: &str) -> Result<Option<MlsGroupId>, RelayError> {
        self.group_of(org)
    }

    /// This node's organisation.
    pub fn organisation(&self) -> &str {
        &self.organisation
    }
}
