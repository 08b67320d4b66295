//! An MLS node: the node's groups, key packages and sealed streams, every
//! state change committed to the [`Kv`] in one atomic batch.
//!
//! Each operation runs against a fresh [`Overlay`]; openmls' writes and the
//! node's own records (key package pool, group list) go into it, and only a
//! successful operation commits it, in one [`Kv::commit`], before anything
//! it produced (a commit, a welcome) is returned. An operation that fails,
//! or a node that dies before the commit, leaves the store as it was.
//! No group is kept in memory: each operation loads what it needs from the
//! store, so a node reopened on the same store carries on where the last
//! committed operation left it.
//!
//! Own records: `allmende\0signer` (the MLS signature key pair),
//! `allmende\0credential` (the current bound credential),
//! `allmende\0kp\0<ref hex>` (published, unused key packages),
//! `allmende\0group\0<id hex>` (the groups this node is in).

use crate::binding::{self, BindingError, Claim, NodeIdentity, hex};
use crate::kv::{Kv, KvError};
use crate::seal::{EXPORT_LABEL, Opener, SealError, Sealer, StreamIds};
use crate::storage::{Overlay, Provider, StorageError};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Ciphersuite, CredentialWithKey, GroupId, KeyPackage, KeyPackageIn,
    LeafNodeIndex, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn, ProcessedMessageContent, ProtocolVersion, StagedWelcome,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use serde::{Deserialize, Serialize};

/// The one ciphersuite Allmende's groups use.
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// How many unused key packages a node keeps published by default.
pub const DEFAULT_POOL: usize = 4;

const SIGNER_KEY: &[u8] = b"allmende\0signer";
const CREDENTIAL_KEY: &[u8] = b"allmende\0credential";
const KP_PREFIX: &[u8] = b"allmende\0kp\0";
const GROUP_PREFIX: &[u8] = b"allmende\0group\0";

/// Errors of the MLS layer.
#[derive(Debug, thiserror::Error)]
pub enum MlsError {
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Binding(#[from] BindingError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("mls {op} failed: {reason}")]
    Mls { op: &'static str, reason: String },
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unknown group `{0}`")]
    UnknownGroup(String),
    #[error("`{uri}` is not a member of group `{group}`")]
    UnknownMember { group: String, uri: String },
    #[error("this node is no longer a member of group `{0}`")]
    NotMember(String),
    #[error("a node cannot remove itself from group `{0}`")]
    SelfRemoval(String),
    #[error("key package uses another ciphersuite")]
    Ciphersuite,
    #[error("commit belongs to another group")]
    WrongGroup,
    #[error("message is not a commit")]
    NotACommit,
}

fn mls<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> MlsError {
    move |e| MlsError::Mls {
        op,
        reason: e.to_string(),
    }
}

/// A group's id (random, chosen by its creator).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MlsGroupId(Vec<u8>);

impl MlsGroupId {
    /// The id from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn openmls(&self) -> GroupId {
        GroupId::from_slice(&self.0)
    }
}

impl std::fmt::Display for MlsGroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// A member of a group as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's federation identity URI (from its credential).
    pub uri: String,
    /// Its leaf index.
    pub index: u32,
}

/// What creating a group produced.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new group.
    pub group: MlsGroupId,
    /// The welcome for the peer (MLS message bytes).
    pub welcome: Vec<u8>,
}

/// What adding a member produced.
#[derive(Debug, Clone)]
pub struct Added {
    /// The commit for the existing members (MLS message bytes).
    pub commit: Vec<u8>,
    /// The welcome for the new member (MLS message bytes).
    pub welcome: Vec<u8>,
    /// The epoch after the commit.
    pub epoch: u64,
}

/// What removing a member produced.
#[derive(Debug, Clone)]
pub struct Removed {
    /// The commit for the remaining members (MLS message bytes).
    pub commit: Vec<u8>,
    /// The epoch after the commit.
    pub epoch: u64,
}

/// What applying a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The group moved to this epoch.
    Epoch(u64),
    /// The commit removed this node: the group's state is deleted.
    RemovedSelf,
}

/// What joining produced.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The group joined.
    pub group: MlsGroupId,
    /// The key packages now published (the used one replaced): hand them to
    /// the directory.
    pub key_packages: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct PoolEntry {
    /// openmls' storage key of the key package's private part.
    private_key: Vec<u8>,
    /// The key package (TLS encoding).
    key_package: Vec<u8>,
}

/// A node's MLS state over a [`Kv`]. Operations take `&mut self`: one at a
/// time per node (the broker keeps the node behind one async mutex).
pub struct MlsNode<K: Kv> {
    kv: K,
    crypto: RustCrypto,
    identity: NodeIdentity,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    pool: usize,
}

impl<K: Kv> std::fmt::Debug for MlsNode<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsNode")
            .field("identity", &self.identity)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<K: Kv> MlsNode<K> {
    /// Opens the node's MLS state in `kv`, creating its signature key on
    /// first use, and binds its credential to `identity`'s certificate (a
    /// new binding when the certificate changed).
    pub async fn open(identity: NodeIdentity, kv: K) -> Result<Self, MlsError> {
        let overlay = Overlay::new(&kv);
        let signer: SignatureKeyPair = match overlay.get(SIGNER_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(StorageError::from)?,
            None => {
                let s = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm())
                    .map_err(mls("signature key generation"))?;
                overlay.put(
                    SIGNER_KEY.to_vec(),
                    serde_json::to_vec(&s).map_err(StorageError::from)?,
                );
                s
            }
        };
        let stored: Option<Claim> = match overlay.get(CREDENTIAL_KEY)? {
            Some(bytes) => Some(Claim::decode(&bytes)?),
            None => None,
        };
        let claim = match stored {
            Some(c) if identity.owns(&c, signer.public()) => c,
            _ => {
                let c = identity.claim(signer.public())?;
                overlay.put(CREDENTIAL_KEY.to_vec(), c.encode()?);
                c
            }
        };
        let credential = CredentialWithKey {
            credential: BasicCredential::new(claim.encode()?).into(),
            signature_key: signer.to_public_vec().into(),
        };
        let batch = overlay.into_batch();
        if !batch.is_empty() {
            kv.commit(batch).await?;
        }
        Ok(Self {
            kv,
            crypto: RustCrypto::default(),
            identity,
            signer,
            credential,
            pool: DEFAULT_POOL,
        })
    }

    /// The node's federation identity URI.
    pub fn uri(&self) -> &str {
        self.identity.uri()
    }

    /// The store behind the node.
    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// Commits an operation's writes (nothing to do for an operation that
    /// wrote nothing).
    async fn commit(&self, batch: crate::kv::Batch) -> Result<(), MlsError> {
        if !batch.is_empty() {
            self.kv.commit(batch).await?;
        }
        Ok(())
    }

    /// Runs one operation against a fresh overlay; returns its result and
    /// its writes.
    fn run<T>(
        &self,
        f: impl FnOnce(&Provider<'_, '_, K>) -> Result<T, MlsError>,
    ) -> Result<(T, crate::kv::Batch), MlsError> {
        let overlay = Overlay::new(&self.kv);
        let out = {
            let provider = Provider {
                crypto: &self.crypto,
                storage: &overlay,
            };
            f(&provider)?
        };
        Ok((out, overlay.into_batch()))
    }

    /// `n` unused key packages (TLS encoding) to publish, generating any
    /// missing. Each is single-use: a welcome consumes it, and the node
    /// replaces it in the same atomic batch ([`Joined::key_packages`]).
    pub async fn key_packages(&mut self, n: usize) -> Result<Vec<Vec<u8>>, MlsError> {
        self.pool = self.pool.max(n);
        let (all, batch) = self.run(|p| self.top_up(p))?;
        self.commit(batch).await?;
        Ok(all.into_iter().take(n).collect())
    }

    /// Fills the pool up to its size; returns the pool's key packages.
    fn top_up(&self, p: &Provider<'_, '_, K>) -> Result<Vec<Vec<u8>>, MlsError> {
        let mut entries = self.pool_entries(p)?;
        while entries.len() < self.pool {
            let bundle = KeyPackage::builder()
                .build(CIPHERSUITE, p, &self.signer, self.credential.clone())
                .map_err(mls("key package"))?;
            let kp = bundle.key_package();
            let r = kp.hash_ref(p.crypto()).map_err(mls("key package"))?;
            let entry = PoolEntry {
                private_key: Overlay::<K>::storage_key(b"KeyPackage", &r)?,
                key_package: kp.tls_serialize_detached().map_err(mls("key package"))?,
            };
            let mut key = KP_PREFIX.to_vec();
            key.extend_from_slice(hex(r.as_slice()).as_bytes());
            p.storage.put(
                key.clone(),
                serde_json::to_vec(&entry).map_err(StorageError::from)?,
            );
            entries.push((key, entry));
        }
        // In key order, as a later read of the pool returns them.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries.into_iter().map(|(_, e)| e.key_package).collect())
    }

    /// The pool's entries; entries whose private part is gone (consumed by
    /// a welcome) are dropped from the pool.
    fn pool_entries(&self, p: &Provider<'_, '_, K>) -> Result<Vec<(Vec<u8>, PoolEntry)>, MlsError> {
        let mut out = Vec::new();
        for (key, value) in p.storage.scan_prefix(KP_PREFIX)? {
            let entry: PoolEntry = serde_json::from_slice(&value).map_err(StorageError::from)?;
            if p.storage.get(&entry.private_key)?.is_some() {
                out.push((key, entry));
            } else {
                p.storage.delete(key);
            }
        }
        Ok(out)
    }

    /// Parses and verifies a peer's key package and checks its credential
    /// against the certificate the peer presented in its TLS handshake.
    /// Checks a key package (TLS encoding) as [`MlsNode::create_group`]
    /// would: valid, this ciphersuite, its credential bound to
    /// `certificate_der` (the directory checks a published key package
    /// against the publishing node's certificate).
    pub fn check_key_package(
        &self,
        key_package: &[u8],
        certificate_der: &[u8],
    ) -> Result<(), MlsError> {
        self.checked_key_package(key_package, certificate_der)
            .map(|_| ())
    }

    fn checked_key_package(
        &self,
        key_package: &[u8],
        peer_certificate_der: &[u8],
    ) -> Result<KeyPackage, MlsError> {
        let kp = KeyPackageIn::tls_deserialize_exact(key_package)
            .map_err(|_| MlsError::Malformed("key package"))?
            .validate(&self.crypto, ProtocolVersion::Mls10)
            .map_err(mls("key package validation"))?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err(MlsError::Ciphersuite);
        }
        let leaf = kp.leaf_node();
        binding::verify(
            leaf.credential().serialized_content(),
            leaf.signature_key().as_slice(),
            peer_certificate_der,
        )?;
        Ok(kp)
    }

    fn load(p: &Provider<'_, '_, K>, group: &MlsGroupId) -> Result<MlsGroup, MlsError> {
        MlsGroup::load(p.storage, &group.openmls())?
            .ok_or_else(|| MlsError::UnknownGroup(group.to_string()))
    }

    fn group_key(group: &MlsGroupId) -> Vec<u8> {
        let mut k = GROUP_PREFIX.to_vec();
        k.extend_from_slice(group.to_string().as_bytes());
        k
    }

    /// Creates a group with one peer, whose key package (from the
    /// directory) must carry a credential bound to `peer_certificate_der`
    /// (the certificate the peer presented in its TLS handshake). Returns
    /// the welcome for the peer.
    pub async fn create_group(
        &mut self,
        peer_key_package: &[u8],
        peer_certificate_der: &[u8],
    ) -> Result<Created, MlsError> {
        let kp = self.checked_key_package(peer_key_package, peer_certificate_der)?;
        let (created, batch) = self.run(|p| {
            let config = MlsGroupCreateConfig::builder()
                .ciphersuite(CIPHERSUITE)
                .use_ratchet_tree_extension(true)
                .build();
            let mut group = MlsGroup::new(p, &self.signer, &config, self.credential.clone())
                .map_err(mls("group creation"))?;
            let (_commit, welcome, _info) = group
                .add_members(p, &self.signer, std::slice::from_ref(&kp))
                .map_err(mls("add"))?;
            group.merge_pending_commit(p).map_err(mls("merge"))?;
            let id = MlsGroupId(group.group_id().as_slice().to_vec());
            p.storage.put(Self::group_key(&id), Vec::new());
            Ok(Created {
                welcome: welcome.to_bytes().map_err(mls("welcome"))?,
                group: id,
            })
        })?;
        self.commit(batch).await?;
        Ok(created)
    }

    /// Adds a member to a group (checked like [`MlsNode::create_group`]'s
    /// peer); returns the commit for the other members and the welcome.
    pub async fn add(
        &mut self,
        group: &MlsGroupId,
        key_package: &[u8],
        certificate_der: &[u8],
    ) -> Result<Added, MlsError> {
        let kp = self.checked_key_package(key_package, certificate_der)?;
        let (added, batch) = self.run(|p| {
            let mut g = Self::load(p, group)?;
            let (commit, welcome, _info) = g
                .add_members(p, &self.signer, std::slice::from_ref(&kp))
                .map_err(mls("add"))?;
            g.merge_pending_commit(p).map_err(mls("merge"))?;
            Ok(Added {
                commit: commit.to_bytes().map_err(mls("commit"))?,
                welcome: welcome.to_bytes().map_err(mls("welcome"))?,
                epoch: g.epoch().as_u64(),
            })
        })?;
        self.commit(batch).await?;
        Ok(added)
    }

    /// Joins a group from a welcome. The inviter's credential must be bound
    /// to `inviter_certificate_der` (the certificate the inviter presented
    /// in its TLS handshake). The consumed key package is replaced in the
    /// same batch.
    pub async fn join(
        &mut self,
        welcome: &[u8],
        inviter_certificate_der: &[u8],
    ) -> Result<Joined, MlsError> {
        let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|_| MlsError::Malformed("welcome"))?
            .extract()
        else {
            return Err(MlsError::Malformed("welcome"));
        };
        let (joined, batch) = self.run(|p| {
            let config = MlsGroupJoinConfig::builder()
                .use_ratchet_tree_extension(true)
                .build();
            let staged = StagedWelcome::new_from_welcome(p, &config, welcome, None)
                .map_err(mls("welcome"))?;
            let sender = staged.welcome_sender().map_err(mls("welcome"))?;
            binding::verify(
                sender.credential().serialized_content(),
                sender.signature_key().as_slice(),
                inviter_certificate_der,
            )?;
            let g = staged.into_group(p).map_err(mls("join"))?;
            let id = MlsGroupId(g.group_id().as_slice().to_vec());
            p.storage.put(Self::group_key(&id), Vec::new());
            let key_packages = self.top_up(p)?;
            Ok(Joined {
                group: id,
                key_packages,
            })
        })?;
        self.commit(batch).await?;
        Ok(joined)
    }

    /// Removes the member with identity `uri`: commits a new epoch, which
    /// the removed member cannot derive. Returns the commit for the
    /// remaining members.
    pub async fn remove(&mut self, group: &MlsGroupId, uri: &str) -> Result<Removed, MlsError> {
        let (removed, batch) = self.run(|p| {
            let mut g = Self::load(p, group)?;
            let index = Self::find(&g, group, uri)?;
            if index == g.own_leaf_index() {
                return Err(MlsError::SelfRemoval(group.to_string()));
            }
            let (commit, _welcome, _info) = g
                .remove_members(p, &self.signer, &[index])
                .map_err(mls("remove"))?;
            g.merge_pending_commit(p).map_err(mls("merge"))?;
            Ok(Removed {
                commit: commit.to_bytes().map_err(mls("commit"))?,
                epoch: g.epoch().as_u64(),
            })
        })?;
        self.commit(batch).await?;
        Ok(removed)
    }

    /// Applies a commit another member made. A commit that removes this
    /// node deletes the group's state.
    pub async fn apply(&mut self, group: &MlsGroupId, commit: &[u8]) -> Result<Applied, MlsError> {
        let message = MlsMessageIn::tls_deserialize_exact(commit)
            .map_err(|_| MlsError::Malformed("commit"))?
            .try_into_protocol_message()
            .map_err(|_| MlsError::NotACommit)?;
        if message.group_id().as_slice() != group.as_bytes() {
            return Err(MlsError::WrongGroup);
        }
        let (applied, batch) = self.run(|p| {
            let mut g = Self::load(p, group)?;
            let processed = g.process_message(p, message).map_err(mls("commit"))?;
            let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
            else {
                return Err(MlsError::NotACommit);
            };
            g.merge_staged_commit(p, *staged).map_err(mls("merge"))?;
            if g.is_active() {
                Ok(Applied::Epoch(g.epoch().as_u64()))
            } else {
                g.delete(p.storage)?;
                p.storage.delete(Self::group_key(group));
                Ok(Applied::RemovedSelf)
            }
        })?;
        self.commit(batch).await?;
        Ok(applied)
    }

    fn find(g: &MlsGroup, group: &MlsGroupId, uri: &str) -> Result<LeafNodeIndex, MlsError> {
        g.members()
            .find(|m| Claim::decode(m.credential.serialized_content()).is_ok_and(|c| c.uri == uri))
            .map(|m| m.index)
            .ok_or_else(|| MlsError::UnknownMember {
                group: group.to_string(),
                uri: uri.to_string(),
            })
    }

    /// Checks the credential of member `uri` against the certificate it
    /// presented in a TLS handshake (`certificate_der`, already verified by
    /// the federation's certificate verifier).
    pub fn verify_binding(
        &self,
        group: &MlsGroupId,
        uri: &str,
        certificate_der: &[u8],
    ) -> Result<(), MlsError> {
        let (member, _) = self.run(|p| {
            let g = Self::load(p, group)?;
            let index = Self::find(&g, group, uri)?;
            g.members()
                .find(|m| m.index == index)
                .ok_or_else(|| MlsError::UnknownMember {
                    group: group.to_string(),
                    uri: uri.to_string(),
                })
        })?;
        binding::verify(
            member.credential.serialized_content(),
            &member.signature_key,
            certificate_der,
        )?;
        Ok(())
    }

    /// The groups this node is in.
    pub fn groups(&self) -> Result<Vec<MlsGroupId>, MlsError> {
        let mut out = Vec::new();
        for (k, _) in self.kv.scan_prefix(GROUP_PREFIX)? {
            let hexed = std::str::from_utf8(&k[GROUP_PREFIX.len()..])
                .map_err(|_| MlsError::Malformed("group record"))?;
            let bytes = (0..hexed.len())
                .step_by(2)
                .map(|i| {
                    hexed
                        .get(i..i + 2)
                        .and_then(|b| u8::from_str_radix(b, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or(MlsError::Malformed("group record"))?;
            out.push(MlsGroupId(bytes));
        }
        Ok(out)
    }

    /// The members of a group.
    pub fn members(&self, group: &MlsGroupId) -> Result<Vec<MemberInfo>, MlsError> {
        let (members, _) = self.run(|p| {
            let g = Self::load(p, group)?;
            Ok(g.members()
                .map(|m| MemberInfo {
                    uri: Claim::decode(m.credential.serialized_content())
                        .map(|c| c.uri)
                        .unwrap_or_default(),
                    index: m.index.u32(),
                })
                .collect::<Vec<_>>())
        })?;
        Ok(members)
    }

    /// The group's current epoch.
    pub fn epoch(&self, group: &MlsGroupId) -> Result<u64, MlsError> {
        let (epoch, _) = self.run(|p| Ok(Self::load(p, group)?.epoch().as_u64()))?;
        Ok(epoch)
    }

    pub(crate) fn stream_secret(
        &self,
        group: &MlsGroupId,
        ids: &StreamIds,
    ) -> Result<(u64, Vec<u8>), MlsError> {
        let (out, _) = self.run(|p| {
            let g = Self::load(p, group)?;
            if !g.is_active() {
                return Err(MlsError::NotMember(group.to_string()));
            }
            let secret = g
                .export_secret(p.crypto(), EXPORT_LABEL, &ids.context(), 32)
                .map_err(mls("export"))?;
            Ok((g.epoch().as_u64(), secret))
        })?;
        Ok(out)
    }

    /// A sealer for stream `stream_id` of `dataset`, keyed from the group's
    /// current epoch.
    pub fn seal_stream(
        &self,
        group: &MlsGroupId,
        dataset: &str,
        stream_id: &str,
    ) -> Result<Sealer, MlsError> {
        let ids = StreamIds {
            group: group.as_bytes().to_vec(),
            dataset: dataset.to_string(),
            stream: stream_id.to_string(),
        };
        let (epoch, secret) = self.stream_secret(group, &ids)?;
        Ok(Sealer::new(ids, epoch, secret)?)
    }

    /// An opener for stream `stream_id` of `dataset`, keyed from the
    /// group's current epoch (a stream sealed in another epoch is refused).
    pub fn open_stream(
        &self,
        group: &MlsGroupId,
        dataset: &str,
        stream_id: &str,
    ) -> Result<Opener, MlsError> {
        let ids = StreamIds {
            group: group.as_bytes().to_vec(),
            dataset: dataset.to_string(),
            stream: stream_id.to_string(),
        };
        let (epoch, secret) = self.stream_secret(group, &ids)?;
        Ok(Opener::new(ids, epoch, secret)?)
    }
}
