//! The federation directory as a node holds it: the signed membership
//! document (members, kinds, node endpoints and certificate fingerprints,
//! MLS key-package slots, the deny list; `pki::membership`) and what
//! follows from installing a new one.
//!
//! Every way a new document reaches the node — the membership file, the
//! directory fetched from the city node (`federation::directory`), a
//! removal signed by this node when it holds the root — goes through
//! [`Directory::install`]: the root signature, the federation and the root
//! are checked and an older version is refused (`Trust::install_membership`);
//! a refusal is counted (`allmende_directory_refused_total{reason}`) and the
//! node keeps the document it has. An accepted document is in force at once
//! (TLS verifier, per-request re-check, open streams; the policy's
//! organisation entities), kept in the store, and every active grant of an
//! organisation that is no longer a member is revoked, each revocation
//! audited by this node.

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::grants::{Grants, GrantsError};
use crate::metrics::{NodeMetrics, ReasonLabel};
use crate::pki::ca::{self, FederationDir, PkiError};
use crate::pki::membership::MembershipError;
use crate::pki::{Principal, Trust};
use crate::policy::PolicyPoint;
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use allmende_vocab::GrantState;
use std::sync::Arc;

/// The key of the newest accepted membership in the `membership` table.
const MEMBERSHIP_KEY: &str = "current";

/// The reason recorded with each grant revoked because its grantee left.
pub const REMOVED_REASON: &str = "organisation removed from the federation";

/// Why a directory change was not made.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory refused: {0}")]
    Refused(#[from] MembershipError),
    #[error("this node does not hold the federation root; change the directory at the city node")]
    NotRoot,
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The metrics label of a refused document.
fn refusal_label(e: &MembershipError) -> &'static str {
    match e {
        MembershipError::Envelope(_) => "envelope",
        MembershipError::BadSignature => "signature",
        MembershipError::Document(_) => "document",
        MembershipError::WrongFederation { .. } => "federation",
        MembershipError::WrongRoot { .. } => "root",
        MembershipError::Rollback { .. } => "rollback",
        MembershipError::Sign(_) => "sign",
    }
}

/// The parts of a node a new directory reaches.
#[derive(Debug)]
pub struct DirectoryParts {
    pub trust: Arc<Trust>,
    pub policy: Arc<PolicyPoint>,
    pub store: Store,
    pub audit: AuditLog,
    pub grants: Arc<Grants>,
    pub metrics: Arc<NodeMetrics>,
    pub clock: SharedClock,
    /// This node (the revocations' principal).
    pub own: Principal,
    /// The federation directory with the root key (the city node only).
    pub root: Option<FederationDir>,
}

/// The node's directory.
#[derive(Debug)]
pub struct Directory {
    parts: DirectoryParts,
    /// One install (or signed change) at a time.
    write: tokio::sync::Mutex<()>,
}

impl Directory {
    pub fn new(parts: DirectoryParts) -> Self {
        Self {
            parts,
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this node signs directory changes.
    pub fn holds_root(&self) -> bool {
        self.parts.root.is_some()
    }

    /// The version in force.
    pub fn version(&self) -> u64 {
        self.parts.trust.snapshot().doc.version
    }

    /// Verifies and installs a signed document from `source` (for the log).
    /// Returns the version in force afterwards; a refused document is
    /// counted and the current one stays.
    pub async fn install(&self, signed: &[u8], source: &str) -> Result<u64, DirectoryError> {
        let _w = self.write.lock().await;
        self.install_locked(signed, source).await
    }

    async fn install_locked(&self, signed: &[u8], source: &str) -> Result<u64, DirectoryError> {
        let p = &self.parts;
        let before = p.trust.snapshot().doc.version;
        let v = match p.trust.install_membership(signed) {
            Ok(v) => v,
            Err(e) => {
                p.metrics
                    .directory_refused
                    .get_or_create(&ReasonLabel {
                        reason: refusal_label(&e).to_owned(),
                    })
                    .inc();
                tracing::warn!(source, error = %e, "directory refused; the current one stays");
                return Err(e.into());
            }
        };
        if v > before {
            p.policy.sync_membership(&p.trust.snapshot().doc);
            p.metrics
                .membership_version
                .set(i64::try_from(v).unwrap_or(i64::MAX));
            tracing::info!(source, version = v, "directory installed");
            persist_membership(&p.store, &p.trust).await?;
            self.revoke_non_members().await;
        }
        Ok(v)
    }

    /// Revokes every active grant whose grantee organisation is not a
    /// member of the directory in force (audited by this node, one entry
    /// per grant; streams reading under it end). Returns how many it
    /// revoked; a grant it could not revoke is logged and tried again at
    /// the next change or start.
    pub async fn revoke_non_members(&self) -> usize {
        let p = &self.parts;
        let snap = p.trust.snapshot();
        let grants = match p.grants.list_grants(None) {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "grants of removed members not revoked");
                return 0;
            }
        };
        let mut n = 0;
        for g in grants {
            if g.state != GrantState::Active || snap.doc.member(&g.grantee_org).is_some() {
                continue;
            }
            match p
                .grants
                .revoke(&p.audit, &p.own, &g.id, REMOVED_REASON)
                .await
            {
                Ok(_) => {
                    n += 1;
                    tracing::info!(grant = %g.id, org = %g.grantee_org, "grant of a removed member revoked");
                }
                Err(GrantsError::NotActive { .. }) => {}
                Err(e) => {
                    tracing::warn!(grant = %g.id, error = %e, "grant of a removed member not revoked")
                }
            }
        }
        n
    }

    /// Takes organisation `org` out of the federation (the city node, after
    /// the caller's `manage_federation` was decided and audited): re-signs
    /// the directory with the organisation removed and its CA and node
    /// certificates denied, and installs it here. Every other node takes it
    /// at its next refresh. Returns the new version.
    pub async fn remove_member(&self, org: &str, reason: &str) -> Result<u64, DirectoryError> {
        let root = self.parts.root.as_ref().ok_or(DirectoryError::NotRoot)?;
        let _w = self.write.lock().await;
        let current = self.parts.trust.snapshot().doc.version;
        let now = self.parts.clock.now_unix_secs();
        let (_, json) = ca::remove_member(root, org, reason, now, current)?;
        self.install_locked(&json, "federation remove").await
    }

    /// Re-signs the directory from the city's federation directory with the
    /// node entries `entries` (recorded or replaced) and installs it here.
    pub async fn set_nodes(
        &self,
        entries: &[crate::pki::membership::NodeEntry],
    ) -> Result<u64, DirectoryError> {
        let root = self.parts.root.as_ref().ok_or(DirectoryError::NotRoot)?;
        let _w = self.write.lock().await;
        let current = self.parts.trust.snapshot().doc.version;
        let now = self.parts.clock.now_unix_secs();
        let (_, json) = ca::set_nodes(root, entries, now, current)?;
        self.install_locked(&json, "directory nodes").await
    }
}

impl Directory {
    /// Admits an organisation (the city node, joining by invitation, after
    /// the invitation was checked, audited and marked used): signs its CA
    /// request, adds it with the admission's kind, re-signs the directory
    /// and installs it here. Returns the signed organisation with the
    /// version in force.
    pub async fn admit_member(
        &self,
        csr_pem: &str,
        admission: &ca::OrgAdmission<'_>,
    ) -> Result<ca::SignedOrg, DirectoryError> {
        let root = self.parts.root.as_ref().ok_or(DirectoryError::NotRoot)?;
        let _w = self.write.lock().await;
        let current = self.parts.trust.snapshot().doc.version;
        let now = self.parts.clock.now_unix_secs();
        let mut signed = ca::sign_org(
            root,
            csr_pem,
            std::path::Path::new("join request"),
            admission,
            now,
            current,
        )?;
        signed.version = self
            .install_locked(&signed.signed_json, "federation join")
            .await?;
        Ok(signed)
    }

    /// Records one node's entry (endpoint, certificate fingerprint) at the
    /// city node, keeping its other fields (`ca::upsert_node`), and
    /// installs the re-signed directory here. Returns the new version.
    pub async fn upsert_node(
        &self,
        entry: &crate::pki::membership::NodeEntry,
    ) -> Result<u64, DirectoryError> {
        let root = self.parts.root.as_ref().ok_or(DirectoryError::NotRoot)?;
        let _w = self.write.lock().await;
        let current = self.parts.trust.snapshot().doc.version;
        let now = self.parts.clock.now_unix_secs();
        let (_, json) = ca::upsert_node(root, entry, now, current)?;
        self.install_locked(&json, "directory node entry").await
    }

    /// At the city node: records the node's own entry (`own`, reached at
    /// `endpoint`) unless the directory lists it so already; it is how the
    /// other nodes' relay checks know the hub. Returns the new version, or
    /// `None` when nothing changed or this node holds no root.
    pub async fn record_own_entry(
        &self,
        own: &Principal,
        endpoint: &str,
    ) -> Result<Option<u64>, DirectoryError> {
        if self.parts.root.is_none() {
            return Ok(None);
        }
        let node = own.subject.name().to_owned();
        let listed = self.parts.trust.snapshot().doc.nodes.iter().any(|n| {
            n.org == own.organisation
                && n.node == node
                && n.endpoint == endpoint
                && n.cert_sha256 == own.certificate_sha256
        });
        if listed {
            return Ok(None);
        }
        let entry = crate::pki::membership::NodeEntry {
            org: own.organisation.clone(),
            node,
            endpoint: endpoint.to_owned(),
            cert_sha256: own.certificate_sha256.clone(),
            mls_key_package: String::new(),
        };
        self.upsert_node(&entry).await.map(Some)
    }

    /// The federation directory with the root key, at the city node.
    pub fn root(&self) -> Option<&FederationDir> {
        self.parts.root.as_ref()
    }
}

/// Keeps the membership in force in the store (only when it changed), so
/// a restart never goes back to an older one.
pub async fn persist_membership(store: &Store, trust: &Trust) -> Result<(), StoreError> {
    let table: Table<String, String> = store.table(TableName::Membership)?;
    let snap = trust.snapshot();
    let text = String::from_utf8_lossy(&snap.signed_json).into_owned();
    if table.get(&MEMBERSHIP_KEY.to_owned())?.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let mut b = WriteBatch::new();
    b.put(&table, &MEMBERSHIP_KEY.to_owned(), &text)?;
    store.commit_durable(b).await
}

/// The membership kept in the store, if any.
pub fn stored_membership(store: &Store) -> Result<Option<String>, StoreError> {
    let table: Table<String, String> = store.table(TableName::Membership)?;
    table.get(&MEMBERSHIP_KEY.to_owned())
}
