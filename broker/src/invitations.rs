//! Invitations to join the federation, kept by the city node (the node
//! holding the root): `allmende federation invite` creates one,
//! `allmende federation join` redeems it over the network
//! (`docs/federation.md` § Joining).
//!
//! An invitation names the organisation, its kind and display name (the
//! city operator's choice; the joiner's request never sets them), expires
//! (24 h by default), and is single-use. The store keeps only the SHA-256
//! of its one-time secret. The invitation file handed to the new
//! organisation carries the secret, the root certificate (to pin the city
//! node), and a short-lived onboarding client certificate and key issued
//! under the root (`pki::onboarding`) that the city node accepts for the
//! join call only.
//!
//! A join is decided here (the onboarding certificate's invitation exists,
//! the secret matches, not used, not expired, the request names the invited
//! organisation), audited durably at the city node — allowed or denied —,
//! the invitation is marked used durably, and only then is the organisation
//! CA signed and the directory re-signed (`Directory::admit_member`). A
//! failure after the mark leaves the invitation spent: the city invites
//! again.

use crate::audit::{AuditError, AuditLog, Draft};
use crate::clock::SharedClock;
use crate::directory::{Directory, DirectoryError};
use crate::pki::OrgKind;
use crate::pki::ca::{self, OrgAdmission, PkiError, SignedOrg};
use crate::pki::identity::valid_org_name;
use crate::pki::membership::sha256_hex;
use crate::pki::onboarding::Onboarding;
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use allmende_audit::{Decision, EntryKind};
use allmende_vocab::Action;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Default lifetime of an invitation.
pub const DEFAULT_VALID_SECS: u64 = 24 * 3600;
/// Longest lifetime of an invitation.
pub const MAX_VALID_SECS: u64 = 30 * 24 * 3600;
/// How long the onboarding certificate outlives its invitation, so that a
/// late join is refused (and audited) by the invitation check with a clear
/// reason rather than by the handshake.
pub const ONBOARDING_GRACE_SECS: i64 = 3600;
/// Format of the invitation file.
pub const INVITATION_FORMAT: u32 = 1;
/// Longest display name.
const MAX_DISPLAY_NAME: usize = 200;

/// An invitation as the city node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invitation {
    pub id: String,
    pub organisation: String,
    pub kind: OrgKind,
    pub display_name: String,
    /// Lower-case hex SHA-256 of the one-time secret.
    pub secret_sha256: String,
    /// SHA-256 of the onboarding certificate issued with it.
    pub onboarding_cert_sha256: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// When it was redeemed; `None` while unused.
    pub used_at: Option<i64>,
}

/// The invitation file the city gives the new organisation. It holds a
/// secret and a private key: written with mode 0600, given to the new
/// organisation only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvitationFile {
    pub format: u32,
    pub federation: String,
    pub organisation: String,
    pub kind: OrgKind,
    pub display_name: String,
    pub invitation: String,
    /// The one-time secret (base64url).
    pub secret: String,
    pub expires_at: i64,
    /// The city node's gRPC endpoint (`https://host:port`), set by the
    /// inviting client.
    pub city_endpoint: String,
    /// The federation root certificate: the only anchor the joiner trusts
    /// the city node's certificate by.
    pub root_cert_pem: String,
    /// Lower-case hex SHA-256 of the root certificate (DER), to compare
    /// out of band.
    pub root_sha256: String,
    pub onboarding_cert_pem: String,
    pub onboarding_key_pem: String,
}

impl std::fmt::Debug for InvitationFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret or the key.
        f.debug_struct("InvitationFile")
            .field("organisation", &self.organisation)
            .field("invitation", &self.invitation)
            .finish_non_exhaustive()
    }
}

/// What a redeemed invitation gives the new organisation.
#[derive(Debug, Clone)]
pub struct Joined {
    pub signed: SignedOrg,
    pub root_cert_pem: String,
}

/// Why an invitation was not created or not redeemed.
#[derive(Debug, thiserror::Error)]
pub enum InvitationError {
    #[error("this node does not hold the federation root; invite and join at the city node")]
    NotRoot,
    #[error("invalid organisation name `{0}`: use lower-case letters, digits and `-`")]
    InvalidOrganisation(String),
    #[error("invalid display name: {0}")]
    InvalidDisplayName(String),
    #[error("organisation `{0}` is already a member of the federation")]
    AlreadyMember(String),
    #[error("an invitation is valid between 1 and {max} seconds, got {got}")]
    BadLifetime { got: u64, max: u64 },
    #[error("no such invitation")]
    Unknown,
    #[error("the invitation's secret does not match")]
    BadSecret,
    #[error("invitation `{0}` was already used")]
    Used(String),
    #[error("invitation `{id}` expired at {at} (unix seconds)")]
    Expired { id: String, at: i64 },
    #[error("the request names organisation `{requested}`, the invitation is for `{invited}`")]
    WrongOrganisation { requested: String, invited: String },
    #[error("invalid signing request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("no randomness: {0}")]
    Random(String),
}

impl InvitationError {
    /// The label of a refused join in the audit entry.
    fn label(&self) -> &'static str {
        match self {
            InvitationError::Unknown => "invitation:unknown",
            InvitationError::BadSecret => "invitation:secret",
            InvitationError::Used(_) => "invitation:used",
            InvitationError::Expired { .. } => "invitation:expired",
            InvitationError::WrongOrganisation { .. } => "invitation:organisation",
            _ => "invitation:request",
        }
    }
}

/// The city node's invitations.
#[derive(Debug)]
pub struct Invitations {
    store: Store,
    table: Table<String, Invitation>,
    audit: AuditLog,
    clock: SharedClock,
    directory: Arc<Directory>,
    federation: String,
    /// One redemption at a time: check and mark are one step.
    redeem: tokio::sync::Mutex<()>,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], InvitationError> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|e| InvitationError::Random(e.to_string()))?;
    Ok(b)
}

/// Compares two equal-length hex digests without an early exit.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The audit label of the federation's join of `org`.
pub fn join_label(federation: &str, org: &str) -> String {
    format!("federation/{federation}/join/{org}")
}

/// An audit draft about an onboarding connection: organisation the invited
/// one, no user, action `manage_federation`, the decision and its reason.
pub fn onboarding_draft(o: &Onboarding, resource: &str, allowed: bool, reason: &str) -> Draft {
    let mut d = Draft::new(
        &o.organisation,
        Action::ManageFederation.as_str(),
        resource,
        EntryKind::Decision,
    );
    d.decision = Some(if allowed {
        Decision::Allow
    } else {
        Decision::Deny
    });
    d.policy_ids = vec![reason.to_owned()];
    d
}

impl Invitations {
    pub fn open(
        store: Store,
        audit: AuditLog,
        clock: SharedClock,
        directory: Arc<Directory>,
        federation: &str,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            table: store.table(TableName::Invitations)?,
            store,
            audit,
            clock,
            directory,
            federation: federation.to_owned(),
            redeem: tokio::sync::Mutex::new(()),
        })
    }

    /// An invitation by id.
    pub fn get(&self, id: &str) -> Result<Option<Invitation>, StoreError> {
        self.table.get(&id.to_owned())
    }

    /// Creates an invitation for `org` (after the inviter's
    /// `manage_federation` was decided and audited) and returns the file
    /// for the new organisation, without the city's endpoint. `valid_secs`
    /// 0 means [`DEFAULT_VALID_SECS`].
    pub async fn invite(
        &self,
        org: &str,
        kind: OrgKind,
        display_name: &str,
        valid_secs: u64,
    ) -> Result<InvitationFile, InvitationError> {
        let root = self.directory.root().ok_or(InvitationError::NotRoot)?;
        if !valid_org_name(org) {
            return Err(InvitationError::InvalidOrganisation(crate::text::shown(
                org, 80,
            )));
        }
        if display_name.trim().is_empty() || display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(InvitationError::InvalidDisplayName(format!(
                "give 1 to {MAX_DISPLAY_NAME} characters"
            )));
        }
        let valid = if valid_secs == 0 {
            DEFAULT_VALID_SECS
        } else {
            valid_secs
        };
        if valid > MAX_VALID_SECS {
            return Err(InvitationError::BadLifetime {
                got: valid,
                max: MAX_VALID_SECS,
            });
        }
        let doc = root.load_membership()?;
        if doc.member(org).is_some() {
            return Err(InvitationError::AlreadyMember(org.to_owned()));
        }
        let now = self.clock.now_unix_secs();
        let expires_at = now.saturating_add(i64::try_from(valid).unwrap_or(i64::MAX));
        let id = hex::encode(random_bytes::<16>()?);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
        let onboarding = ca::issue_onboarding(
            root,
            org,
            &id,
            expires_at.saturating_add(ONBOARDING_GRACE_SECS),
            now,
        )?;
        let root_cert_pem =
            std::fs::read_to_string(root.root_cert()).map_err(|source| PkiError::Read {
                path: root.root_cert(),
                source,
            })?;
        let inv = Invitation {
            id: id.clone(),
            organisation: org.to_owned(),
            kind,
            display_name: display_name.to_owned(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            onboarding_cert_sha256: onboarding.sha256.clone(),
            created_at: now,
            expires_at,
            used_at: None,
        };
        let mut b = WriteBatch::new();
        b.put(&self.table, &id, &inv)?;
        self.store.commit_durable(b).await?;
        tracing::info!(org, invitation = %id, expires_at, "invitation created");
        Ok(InvitationFile {
            format: INVITATION_FORMAT,
            federation: doc.federation,
            organisation: org.to_owned(),
            kind,
            display_name: display_name.to_owned(),
            invitation: id,
            secret,
            expires_at,
            city_endpoint: String::new(),
            root_sha256: doc.root_ca_sha256,
            root_cert_pem,
            onboarding_cert_pem: onboarding.cert_pem,
            onboarding_key_pem: onboarding.key_pem,
        })
    }

    /// The join's checks, in order: the invitation exists and is the one
    /// the onboarding certificate was issued for, the secret matches, it is
    /// unused and unexpired, and the request names the invited organisation.
    fn check(
        &self,
        o: &Onboarding,
        secret: &str,
        csr_pem: &str,
    ) -> Result<Invitation, InvitationError> {
        let inv = self.get(&o.invitation)?.ok_or(InvitationError::Unknown)?;
        if inv.organisation != o.organisation
            || !same_digest(&inv.onboarding_cert_sha256, &o.certificate_sha256)
        {
            return Err(InvitationError::Unknown);
        }
        if !same_digest(&inv.secret_sha256, &sha256_hex(secret.as_bytes())) {
            return Err(InvitationError::BadSecret);
        }
        if inv.used_at.is_some() {
            return Err(InvitationError::Used(inv.id));
        }
        if self.clock.now_unix_secs() >= inv.expires_at {
            return Err(InvitationError::Expired {
                id: inv.id,
                at: inv.expires_at,
            });
        }
        let (federation, requested) =
            ca::csr_organisation(csr_pem).map_err(InvitationError::BadRequest)?;
        if federation != self.federation || requested != inv.organisation {
            return Err(InvitationError::WrongOrganisation {
                requested: format!("{federation}/{requested}"),
                invited: format!("{}/{}", self.federation, inv.organisation),
            });
        }
        Ok(inv)
    }

    /// Redeems the invitation of onboarding connection `o` with `secret`
    /// and the organisation CA request `csr_pem`: checked, audited (allowed
    /// or denied, durable), marked used durably, then the organisation is
    /// admitted with the invitation's kind.
    pub async fn join(
        &self,
        o: &Onboarding,
        secret: &str,
        csr_pem: &str,
    ) -> Result<Joined, InvitationError> {
        let root = self
            .directory
            .root()
            .ok_or(InvitationError::NotRoot)?
            .clone();
        let _one = self.redeem.lock().await;
        let label = join_label(&self.federation, &o.organisation);
        let mut inv = match self.check(o, secret, csr_pem) {
            Ok(inv) => inv,
            Err(e) => {
                // Refusals are audited; a refusal that cannot be is still a
                // refusal.
                if let Err(a) = self
                    .audit
                    .append(onboarding_draft(o, &label, false, e.label()))
                    .await
                {
                    tracing::warn!(error = %a, "refused join not audited");
                }
                tracing::info!(org = %o.organisation, reason = e.label(), "join refused");
                return Err(e);
            }
        };
        // Decide → audit (durable) → act.
        self.audit
            .append(onboarding_draft(o, &label, true, "invitation:valid"))
            .await?;
        inv.used_at = Some(self.clock.now_unix_secs());
        let mut b = WriteBatch::new();
        b.put(&self.table, &inv.id, &inv)?;
        self.store.commit_durable(b).await?;
        let signed = self
            .directory
            .admit_member(
                csr_pem,
                &OrgAdmission {
                    kind: inv.kind,
                    display_name: &inv.display_name,
                    invited_org: Some(&inv.organisation),
                },
            )
            .await?;
        let root_cert_pem =
            std::fs::read_to_string(root.root_cert()).map_err(|source| PkiError::Read {
                path: root.root_cert(),
                source,
            })?;
        tracing::info!(org = %inv.organisation, kind = %inv.kind, version = signed.version, "organisation joined");
        Ok(Joined {
            signed,
            root_cert_pem,
        })
    }
}
