//! Audit log entries and their canonical, versioned binary encoding.
//!
//! The leaf of the Merkle tree for an entry is `SHA-256(0x00 ‖ encode(entry))`.
//! The encoding is deterministic (one value, one byte string) and decoding is
//! strict: unknown versions, unknown tags, invalid flags, invalid UTF-8 and
//! trailing bytes are rejected. The byte layout (all integers big-endian):
//!
//! ```text
//! u8        version                        = 1
//! u64       sequence                       leaf index in the log, starting at 0
//! u64       time_ms                        unix time in milliseconds
//! str       node                           node that wrote the entry
//! str       principal.org
//! opt<str>  principal.user                 pseudonymous user id
//! str       action
//! str       resource                       dataset or other resource id
//! opt<str>  purpose                        declared purpose
//! u8        decision                       0 none, 1 allow, 2 deny
//! u16 n     policy ids, then n × str
//! opt<hash> policy_set_hash
//! opt<str>  grant_id
//! opt<str>  request_id
//! opt<str>  peer_node
//! u8        kind tag, then the kind body   (see below)
//! u32 n     subject hashes, then n × 32 bytes
//!
//! str      = u16 length ‖ UTF-8 bytes
//! opt<T>   = u8 0 (absent) | u8 1 ‖ T
//! hash     = 32 bytes
//!
//! kind 0 decision                 (no body)
//! kind 1 release_intent           (no body)
//! kind 2 release_completion       u64 intent_sequence, u64 rows_released, u64 rows_filtered,
//!                                 u64 bytes, u8 outcome (0 completed, 1 aborted, 2 failed)
//! kind 3 grant_change             u8 op (0 requested, 1 approved, 2 rejected, 3 revoked, 4 expired)
//! kind 4 consent_change           u8 status (0 given, 1 refused, 2 withdrawn)
//! kind 5 policy_change            u8 op (0 added, 1 updated, 2 removed)
//! kind 6 federation_change        u8 op (0 node_added, 1 node_removed, 2 certificate_rotated,
//!                                 3 membership_updated)
//! kind 7 refused_authentication   str source, u64 interval_start_ms, u64 interval_end_ms, u64 count
//! kind 8 retention                u64 cutoff_ms, u64 first_sequence, u64 last_sequence,
//!                                 u64 pruned_count, hash summary_hash
//! ```

use ring::hmac;

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::hash::{HASH_LEN, Hash, leaf_hash};

/// Version byte of the entry encoding produced by this crate.
pub const ENTRY_VERSION: u8 = 1;

/// Who acted: an organisation and, where known, a pseudonymous user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Organisation (federation member), e.g. `tum`.
    pub org: String,
    /// Pseudonymous user id within the organisation, never a clear name.
    pub user: Option<String>,
}

/// An access decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Decision {
    /// Access allowed.
    Allow,
    /// Access denied.
    Deny,
}

/// How a data release stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Every row was sent.
    Completed,
    /// The stream was cancelled or broke off.
    Aborted,
    /// The release failed on the sending side.
    Failed,
}

/// Grant lifecycle operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOp {
    /// Access requested.
    Requested,
    /// Approved (e.g. by the DPO).
    Approved,
    /// Rejected.
    Rejected,
    /// Revoked before expiry.
    Revoked,
    /// Expired.
    Expired,
    /// An access notice from the owner's node was received and stored (at
    /// the grantee's home node).
    NoticeReceived,
    /// The grantee organisation attested the deletion its duty asked for.
    DeletionAttested,
    /// A deletion duty not tied to a grant was created (e.g. by an erasure).
    DutyCreated,
    /// An access notice sent by another node was refused (bad signature,
    /// wrong sender).
    NoticeRefused,
}

/// Consent status after a change (DPV / ISO/IEC TS 27560 terms), defined
/// once in `allmende-vocab`. Its canonical encoding here is an explicit
/// byte per value (given 0, refused 1, withdrawn 2), independent of the
/// declaration order there.
pub use allmende_vocab::ConsentStatus;

/// Policy set changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOp {
    /// Policy added.
    Added,
    /// Policy updated.
    Updated,
    /// Policy removed.
    Removed,
}

/// Federation membership changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FederationOp {
    /// A node joined.
    NodeAdded,
    /// A node was removed.
    NodeRemoved,
    /// A node certificate was rotated.
    CertificateRotated,
    /// Other membership update.
    MembershipUpdated,
}

/// What kind of event an entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// An access decision (allow or deny, see [`Entry::decision`]).
    Decision,
    /// A data release is about to start; durable before the first byte leaves.
    ReleaseIntent,
    /// A data release ended (completed or broken).
    ReleaseCompletion {
        /// Sequence number of the matching intent entry.
        intent_sequence: u64,
        /// Rows sent.
        rows_released: u64,
        /// Rows withheld (no consent, suppressed cells, …).
        rows_filtered: u64,
        /// Bytes sent.
        bytes: u64,
        /// How the stream ended.
        outcome: ReleaseOutcome,
    },
    /// A grant changed.
    GrantChange {
        /// Operation.
        op: GrantOp,
    },
    /// A consent record changed.
    ConsentChange {
        /// New status.
        status: ConsentStatus,
    },
    /// The policy set changed.
    PolicyChange {
        /// Operation.
        op: PolicyOp,
    },
    /// The federation changed.
    FederationChange {
        /// Operation.
        op: FederationOp,
    },
    /// Refused authentications from one source, aggregated over an interval.
    RefusedAuthentication {
        /// Source (address or certificate fingerprint).
        source: String,
        /// Start of the interval, unix ms.
        interval_start_ms: u64,
        /// End of the interval, unix ms.
        interval_end_ms: u64,
        /// Number of refused attempts.
        count: u64,
    },
    /// Entry bodies older than a cutoff were summarised and deleted.
    Retention {
        /// Cutoff, unix ms: entries before it were pruned.
        cutoff_ms: u64,
        /// First pruned sequence number.
        first_sequence: u64,
        /// Last pruned sequence number.
        last_sequence: u64,
        /// Number of pruned entry bodies.
        pruned_count: u64,
        /// SHA-256 of the canonical retention summary encoding.
        summary_hash: Hash,
    },
}

/// Keyed hash of a data-subject identifier (HMAC-SHA256 with a node secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectHash(pub [u8; HASH_LEN]);

impl std::fmt::Debug for SubjectHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubjectHash({})", hex::encode(self.0))
    }
}

impl SubjectHash {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number = leaf index in the log (0-based).
    pub sequence: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// Node that wrote the entry.
    pub node: String,
    /// Who acted.
    pub principal: Principal,
    /// Action, e.g. `fetch`, `catalog.read`, `audit.query`.
    pub action: String,
    /// Resource, e.g. dataset id.
    pub resource: String,
    /// Declared purpose, e.g. `AcademicResearch`.
    pub purpose: Option<String>,
    /// Decision, if the entry records one.
    pub decision: Option<Decision>,
    /// Ids of the policies that decided.
    pub policy_ids: Vec<String>,
    /// Hash of the policy set in force.
    pub policy_set_hash: Option<Hash>,
    /// Grant the access relied on.
    pub grant_id: Option<String>,
    /// Request id (ties intent, completion and decision together).
    pub request_id: Option<String>,
    /// Peer node involved, if any.
    pub peer_node: Option<String>,
    /// What happened.
    pub kind: EntryKind,
    /// Keyed hashes of the data subjects concerned.
    pub subjects: Vec<SubjectHash>,
}

/// An entry could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Decoding failed.
    #[error("malformed entry: {0}")]
    Decode(#[from] DecodeError),
    /// Encoding failed.
    #[error("entry cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
}

impl Entry {
    /// Canonical encoding (see the module documentation for the layout).
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let mut w = Writer::with_capacity(128 + self.subjects.len() * HASH_LEN);
        w.u8(ENTRY_VERSION);
        w.u64(self.sequence);
        w.u64(self.time_ms);
        w.str16("node", &self.node)?;
        w.str16("principal.org", &self.principal.org)?;
        w.opt_str16("principal.user", self.principal.user.as_deref())?;
        w.str16("action", &self.action)?;
        w.str16("resource", &self.resource)?;
        w.opt_str16("purpose", self.purpose.as_deref())?;
        w.u8(match self.decision {
            None => 0,
            Some(Decision::Allow) => 1,
            Some(Decision::Deny) => 2,
        });
        w.count16("policy_ids", self.policy_ids.len())?;
        for p in &self.policy_ids {
            w.str16("policy_ids", p)?;
        }
        match &self.policy_set_hash {
            None => w.u8(0),
            Some(h) => {
                w.u8(1);
                w.hash(h);
            }
        }
        w.opt_str16("grant_id", self.grant_id.as_deref())?;
        w.opt_str16("request_id", self.request_id.as_deref())?;
        w.opt_str16("peer_node", self.peer_node.as_deref())?;
        encode_kind(&mut w, &self.kind)?;
        w.count32("subjects", self.subjects.len())?;
        for s in &self.subjects {
            w.raw(&s.0);
        }
        Ok(w.into_inner())
    }

    /// Strict decoding of the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != ENTRY_VERSION {
            return Err(DecodeError::UnsupportedVersion { version }.into());
        }
        let sequence = r.u64("sequence")?;
        let time_ms = r.u64("time_ms")?;
        let node = r.str16("node")?;
        let org = r.str16("principal.org")?;
        let user = r.opt_str16("principal.user")?;
        let action = r.str16("action")?;
        let resource = r.str16("resource")?;
        let purpose = r.opt_str16("purpose")?;
        let decision = match r.u8("decision")? {
            0 => None,
            1 => Some(Decision::Allow),
            2 => Some(Decision::Deny),
            v => return Err(invalid("decision", v)),
        };
        let n = r.u16("policy_ids")?;
        let n = r.check_count("policy_ids", u64::from(n), 2)?;
        let mut policy_ids = Vec::with_capacity(n);
        for _ in 0..n {
            policy_ids.push(r.str16("policy_ids")?);
        }
        let policy_set_hash = if r.flag("policy_set_hash")? {
            Some(r.hash("policy_set_hash")?)
        } else {
            None
        };
        let grant_id = r.opt_str16("grant_id")?;
        let request_id = r.opt_str16("request_id")?;
        let peer_node = r.opt_str16("peer_node")?;
        let kind = decode_kind(&mut r)?;
        let n = r.u32("subjects")?;
        let n = r.check_count("subjects", u64::from(n), HASH_LEN)?;
        let mut subjects = Vec::with_capacity(n);
        for _ in 0..n {
            subjects.push(SubjectHash(r.hash("subjects")?.0));
        }
        r.finish()?;
        Ok(Entry {
            sequence,
            time_ms,
            node,
            principal: Principal { org, user },
            action,
            resource,
            purpose,
            decision,
            policy_ids,
            policy_set_hash,
            grant_id,
            request_id,
            peer_node,
            kind,
            subjects,
        })
    }

    /// Merkle leaf hash of the canonical encoding.
    pub fn leaf_hash(&self) -> Result<Hash, EntryError> {
        Ok(leaf_hash(&self.encode()?))
    }

    /// Whether the entry concerns the given data subject.
    pub fn concerns(&self, subject: &SubjectHash) -> bool {
        self.subjects.contains(subject)
    }
}

fn invalid(field: &'static str, v: u8) -> EntryError {
    DecodeError::InvalidTag {
        field,
        value: u64::from(v),
    }
    .into()
}

fn encode_kind(w: &mut Writer, kind: &EntryKind) -> Result<(), EncodeError> {
    match kind {
        EntryKind::Decision => w.u8(0),
        EntryKind::ReleaseIntent => w.u8(1),
        EntryKind::ReleaseCompletion {
            intent_sequence,
            rows_released,
            rows_filtered,
            bytes,
            outcome,
        } => {
            w.u8(2);
            w.u64(*intent_sequence);
            w.u64(*rows_released);
            w.u64(*rows_filtered);
            w.u64(*bytes);
            w.u8(match outcome {
                ReleaseOutcome::Completed => 0,
                ReleaseOutcome::Aborted => 1,
                ReleaseOutcome::Failed => 2,
            });
        }
        EntryKind::GrantChange { op } => {
            w.u8(3);
            w.u8(match op {
                GrantOp::Requested => 0,
                GrantOp::Approved => 1,
                GrantOp::Rejected => 2,
                GrantOp::Revoked => 3,
                GrantOp::Expired => 4,
                GrantOp::NoticeReceived => 5,
                GrantOp::DeletionAttested => 6,
                GrantOp::DutyCreated => 7,
                GrantOp::NoticeRefused => 8,
            });
        }
        EntryKind::ConsentChange { status } => {
            w.u8(4);
            w.u8(match status {
                ConsentStatus::Given => 0,
                ConsentStatus::Refused => 1,
                ConsentStatus::Withdrawn => 2,
            });
        }
        EntryKind::PolicyChange { op } => {
            w.u8(5);
            w.u8(match op {
                PolicyOp::Added => 0,
                PolicyOp::Updated => 1,
                PolicyOp::Removed => 2,
            });
        }
        EntryKind::FederationChange { op } => {
            w.u8(6);
            w.u8(match op {
                FederationOp::NodeAdded => 0,
                FederationOp::NodeRemoved => 1,
                FederationOp::CertificateRotated => 2,
                FederationOp::MembershipUpdated => 3,
            });
        }
        EntryKind::RefusedAuthentication {
            source,
            interval_start_ms,
            interval_end_ms,
            count,
        } => {
            w.u8(7);
            w.str16("refused_authentication.source", source)?;
            w.u64(*interval_start_ms);
            w.u64(*interval_end_ms);
            w.u64(*count);
        }
        EntryKind::Retention {
            cutoff_ms,
            first_sequence,
            last_sequence,
            pruned_count,
            summary_hash,
        } => {
            w.u8(8);
            w.u64(*cutoff_ms);
            w.u64(*first_sequence);
            w.u64(*last_sequence);
            w.u64(*pruned_count);
            w.hash(summary_hash);
        }
    }
    Ok(())
}

fn decode_kind(r: &mut Reader<'_>) -> Result<EntryKind, EntryError> {
    let tag = r.u8("kind")?;
    Ok(match tag {
        0 => EntryKind::Decision,
        1 => EntryKind::ReleaseIntent,
        2 => {
            let intent_sequence = r.u64("release_completion.intent_sequence")?;
            let rows_released = r.u64("release_completion.rows_released")?;
            let rows_filtered = r.u64("release_completion.rows_filtered")?;
            let bytes = r.u64("release_completion.bytes")?;
            let outcome = match r.u8("release_completion.outcome")? {
                0 => ReleaseOutcome::Completed,
                1 => ReleaseOutcome::Aborted,
                2 => ReleaseOutcome::Failed,
                v => return Err(invalid("release_completion.outcome", v)),
            };
            EntryKind::ReleaseCompletion {
                intent_sequence,
                rows_released,
                rows_filtered,
                bytes,
                outcome,
            }
        }
        3 => EntryKind::GrantChange {
            op: match r.u8("grant_change.op")? {
                0 => GrantOp::Requested,
                1 => GrantOp::Approved,
                2 => GrantOp::Rejected,
                3 => GrantOp::Revoked,
                4 => GrantOp::Expired,
                5 => GrantOp::NoticeReceived,
                6 => GrantOp::DeletionAttested,
                7 => GrantOp::DutyCreated,
                8 => GrantOp::NoticeRefused,
                v => return Err(invalid("grant_change.op", v)),
            },
        },
        4 => EntryKind::ConsentChange {
            status: match r.u8("consent_change.status")? {
                0 => ConsentStatus::Given,
                1 => ConsentStatus::Refused,
                2 => ConsentStatus::Withdrawn,
                v => return Err(invalid("consent_change.status", v)),
            },
        },
        5 => EntryKind::PolicyChange {
            op: match r.u8("policy_change.op")? {
                0 => PolicyOp::Added,
                1 => PolicyOp::Updated,
                2 => PolicyOp::Removed,
                v => return Err(invalid("policy_change.op", v)),
            },
        },
        6 => EntryKind::FederationChange {
            op: match r.u8("federation_change.op")? {
                0 => FederationOp::NodeAdded,
                1 => FederationOp::NodeRemoved,
                2 => FederationOp::CertificateRotated,
                3 => FederationOp::MembershipUpdated,
                v => return Err(invalid("federation_change.op", v)),
            },
        },
        7 => EntryKind::RefusedAuthentication {
            source: r.str16("refused_authentication.source")?,
            interval_start_ms: r.u64("refused_authentication.interval_start_ms")?,
            interval_end_ms: r.u64("refused_authentication.interval_end_ms")?,
            count: r.u64("refused_authentication.count")?,
        },
        8 => EntryKind::Retention {
            cutoff_ms: r.u64("retention.cutoff_ms")?,
            first_sequence: r.u64("retention.first_sequence")?,
            last_sequence: r.u64("retention.last_sequence")?,
            pruned_count: r.u64("retention.pruned_count")?,
            summary_hash: r.hash("retention.summary_hash")?,
        },
        v => return Err(invalid("kind", v)),
    })
}

/// Minimum length of the node secret for [`SubjectHasher`].
pub const MIN_SUBJECT_SECRET_LEN: usize = 32;

/// Domain separation prefix for subject hashes.
const SUBJECT_DOMAIN: &[u8] = b"allmende-audit-subject-v1\0";

/// The subject hasher's secret is too short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject hash secret has {len} bytes, at least {min} are required")]
pub struct SubjectSecretError {
    /// Length given.
    pub len: usize,
    /// Minimum length.
    pub min: usize,
}

/// Computes keyed data-subject hashes: `HMAC-SHA256(node_secret, "allmende-audit-subject-v1\0" ‖ subject_id)`.
///
/// The log stores only these hashes, so it answers "who accessed data about
/// me" for a citizen whose id the node hashes on request, without itself being
/// a register of people: without the node secret the hashes cannot be linked
/// to ids by guessing.
pub struct SubjectHasher {
    key: hmac::Key,
}

impl std::fmt::Debug for SubjectHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectHasher { key: <redacted> }")
    }
}

impl SubjectHasher {
    /// Creates a hasher from the node secret (at least 32 bytes).
    pub fn new(secret: &[u8]) -> Result<Self, SubjectSecretError> {
        if secret.len() < MIN_SUBJECT_SECRET_LEN {
            return Err(SubjectSecretError {
                len: secret.len(),
                min: MIN_SUBJECT_SECRET_LEN,
            });
        }
        Ok(SubjectHasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// Keyed hash of a data-subject identifier.
    pub fn hash(&self, subject_id: &str) -> SubjectHash {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(SUBJECT_DOMAIN);
        ctx.update(subject_id.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(tag.as_ref());
        SubjectHash(out)
    }
}
