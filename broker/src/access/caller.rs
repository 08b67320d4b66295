//! Who a release is for: a member of the federation (a [`Principal`] bound
//! from a verified certificate) or the public — a caller with a public-tier
//! certificate (an organisation of kind `public` in the signed membership)
//! or an anonymous caller of the open-data HTTP listener.
//!
//! A public caller is known only by a keyed pseudonym: HMAC-SHA256 under a
//! key derived from the node secret ([`PUBLIC_KEY_LABEL`]) of its
//! certificate fingerprint or of its IP address, truncated. Neither the
//! fingerprint, the certificate URI nor the address is kept or audited in
//! clear (IP addresses are personal data). A public caller is decided as
//! Cedar's `Allmende::Public`, audited as `public/<pseudonym>` and
//! rate-limited per pseudonym.
//!
//! Architecture invariant: whether a certificate is public-tier comes only
//! from the organisation kind in the signed membership
//! (`Principal::organisation_kind`), never from a request field.

use crate::audit::AuditLog;
use crate::pki::{OrgKind, Principal};
use std::net::IpAddr;

/// Label of the node-secret-derived key that pseudonymises public callers.
pub const PUBLIC_KEY_LABEL: &str = "public-caller:p1";

/// Hex digits of the pseudonym (96 bits).
const PSEUDONYM_HEX: usize = 24;

/// A caller of the public tier, known only by its keyed pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicCaller {
    pseudonym: String,
}

impl PublicCaller {
    /// The public caller holding certificate `p` (a user of an organisation
    /// of kind `public`): pseudonym of the certificate's fingerprint.
    pub fn by_certificate(audit: &AuditLog, p: &Principal) -> Self {
        Self::keyed(audit, &format!("cert:{}", p.certificate_sha256))
    }

    /// The anonymous caller at `ip` (the open-data HTTP listener).
    pub fn by_ip(audit: &AuditLog, ip: IpAddr) -> Self {
        // An IPv4 address mapped into IPv6 is the same caller.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        Self::keyed(audit, &format!("ip:{ip}"))
    }

    fn keyed(audit: &AuditLog, input: &str) -> Self {
        let key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &audit.derive_key(PUBLIC_KEY_LABEL));
        let tag = ring::hmac::sign(&key, input.as_bytes());
        let mut hex = hex::encode(tag.as_ref());
        hex.truncate(PSEUDONYM_HEX);
        Self {
            pseudonym: format!("p-{hex}"),
        }
    }

    /// The pseudonym, `p-<hex>`.
    pub fn pseudonym(&self) -> &str {
        &self.pseudonym
    }

    /// How the caller appears in the audit log and in rate limits:
    /// `public/<pseudonym>`.
    pub fn label(&self) -> String {
        format!("{}/{}", allmende_policies::PUBLIC_ORG_ID, self.pseudonym)
    }
}

/// Who a release or a decision is for.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A member of the federation, as its certificate says.
    Member(Principal),
    /// The public (a public-tier certificate or an anonymous HTTP caller).
    Public(PublicCaller),
}

impl Caller {
    /// The caller a bound certificate is: public if its organisation's kind
    /// in the signed membership is `public`, else a member.
    pub fn of(p: &Principal, audit: &AuditLog) -> Self {
        if p.organisation_kind == OrgKind::Public {
            Caller::Public(PublicCaller::by_certificate(audit, p))
        } else {
            Caller::Member(p.clone())
        }
    }

    /// The key of the caller's rate limits, fetch slots and
    /// pseudonymisation: `<org>/<name>` for a member, `public/<pseudonym>`
    /// for the public.
    pub fn key(&self) -> String {
        match self {
            Caller::Member(p) => crate::policy::user_entity_id(&p.organisation, p.subject.name()),
            Caller::Public(c) => c.label(),
        }
    }

    /// What a resume cursor is bound to: the member's identity URI, the
    /// public caller's label.
    pub fn binding(&self) -> String {
        match self {
            Caller::Member(p) => p.uri(),
            Caller::Public(c) => c.label(),
        }
    }

    /// The caller's organisation as the policies see it (`public` for the
    /// public).
    pub fn organisation(&self) -> &str {
        match self {
            Caller::Member(p) => &p.organisation,
            Caller::Public(_) => allmende_policies::PUBLIC_ORG_ID,
        }
    }

    /// An audit draft by this caller: [`crate::audit::Draft::by`] for a
    /// member, [`crate::audit::Draft::by_public`] for the public.
    pub fn draft(
        &self,
        action: &str,
        resource: &str,
        kind: allmende_audit::EntryKind,
    ) -> crate::audit::Draft {
        match self {
            Caller::Member(p) => crate::audit::Draft::by(p, action, resource, kind),
            Caller::Public(c) => crate::audit::Draft::by_public(c, action, resource, kind),
        }
    }
}
