//! Identities: organisation kinds, roles, leaf identity URIs and the typed
//! [`Principal`] a handler receives.
//!
//! Leaf identity URIs: `allmende://<federation>/<org>/node/<name>` and
//! `allmende://<federation>/<org>/user/<id>`; an organisation CA carries
//! `allmende://<federation>/<org>`.

pub use allmende_vocab::{OrgKind, Role};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a leaf certificate identifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Subject {
    /// A broker node.
    Node(String),
    /// A person.
    User(String),
}

impl Subject {
    /// The node name or user id.
    pub fn name(&self) -> &str {
        match self {
            Subject::Node(n) | Subject::User(n) => n,
        }
    }
}

/// A parsed leaf identity URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeafIdentity {
    pub federation: String,
    pub organisation: String,
    pub subject: Subject,
}

/// Why an identity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identity `{input}`: {reason}")]
pub struct IdentityError {
    pub input: String,
    pub reason: &'static str,
}

/// Checks a federation or organisation name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_org_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a node name or user id: `[A-Za-z0-9._-]{1,64}`, not starting with a dot.
pub fn valid_leaf_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

const SCHEME: &str = "allmende://";

impl IdentityError {
    /// Refuses `input` (of which at most 200 characters are kept).
    fn new(input: &str, reason: &'static str) -> Self {
        Self {
            input: crate::text::shown(input, 200),
            reason,
        }
    }
}

/// `s` after the `allmende://` scheme.
fn strip_scheme(s: &str) -> Result<&str, IdentityError> {
    s.strip_prefix(SCHEME)
        .ok_or_else(|| IdentityError::new(s, "expected scheme `allmende://`"))
}

impl LeafIdentity {
    /// The SAN URI of this identity.
    pub fn uri(&self) -> String {
        let (kind, name) = match &self.subject {
            Subject::Node(n) => ("node", n),
            Subject::User(n) => ("user", n),
        };
        format!(
            "{SCHEME}{}/{}/{kind}/{name}",
            self.federation, self.organisation
        )
    }
}

impl fmt::Display for LeafIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl FromStr for LeafIdentity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IdentityError::new(s, reason);
        let rest = strip_scheme(s)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [fed, org, kind, name] = parts.as_slice() else {
            return Err(err(
                "expected `allmende://<federation>/<org>/node|user/<name>`",
            ));
        };
        if !valid_org_name(fed) {
            return Err(err("invalid federation name"));
        }
        if !valid_org_name(org) {
            return Err(err("invalid organisation name"));
        }
        if !valid_leaf_name(name) {
            return Err(err("invalid node name or user id"));
        }
        let subject = match *kind {
            "node" => Subject::Node((*name).to_owned()),
            "user" => Subject::User((*name).to_owned()),
            _ => return Err(err("kind must be `node` or `user`")),
        };
        Ok(Self {
            federation: (*fed).to_owned(),
            organisation: (*org).to_owned(),
            subject,
        })
    }
}

/// Parses an organisation CA URI `allmende://<federation>/<org>`.
pub fn parse_org_uri(s: &str) -> Result<(String, String), IdentityError> {
    let err = |reason| IdentityError::new(s, reason);
    let rest = strip_scheme(s)?;
    let (fed, org) = rest
        .split_once('/')
        .ok_or_else(|| err("expected `allmende://<federation>/<org>`"))?;
    if !valid_org_name(fed) || !valid_org_name(org) {
        return Err(err("invalid federation or organisation name"));
    }
    Ok((fed.to_owned(), org.to_owned()))
}

/// The organisation CA URI.
pub fn org_uri(federation: &str, org: &str) -> String {
    format!("{SCHEME}{federation}/{org}")
}

/// A caller as bound from its verified certificate and the signed membership.
///
/// Architecture invariant: the only constructor is the trust verifier
/// (`pki::verifier`); handlers never build one from request fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub federation: String,
    pub organisation: String,
    /// From the signed membership.
    pub organisation_kind: OrgKind,
    pub subject: Subject,
    /// Users only; from the certificate issued by the organisation's CA.
    pub role: Option<Role>,
    /// Lower-case hex SHA-256 of the leaf certificate.
    pub certificate_sha256: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// Lower-case hex SHA-256 of the SPKI of the organisation CA that issued
    /// the leaf: the per-request re-check finds the organisation's current
    /// membership entry by it.
    pub issuer_ca_spki_sha256: String,
}

impl Principal {
    /// True for broker nodes.
    pub fn is_node(&self) -> bool {
        matches!(self.subject, Subject::Node(_))
    }

    /// The identity URI.
    pub fn uri(&self) -> String {
        LeafIdentity {
            federation: self.federation.clone(),
            organisation: self.organisation.clone(),
            subject: self.subject.clone(),
        }
        .uri()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn leaf_uris_round_trip() {
        for s in [
            "allmende://munich/swm/node/swm-1",
            "allmende://munich/tum/user/alice.researcher",
        ] {
            let id: LeafIdentity = s.parse().unwrap();
            assert_eq!(id.uri(), s);
        }
    }

    #[test]
    fn hostile_uris_are_refused() {
        for s in [
            "",
            "https://munich/swm/node/a",
            "allmende://munich/swm/node",
            "allmende://munich/swm/node/a/b",
            "allmende://Munich/swm/node/a",
            "allmende://munich/swm/admin/a",
            "allmende://munich/swm/user/",
            "allmende://munich/swm/user/..",
            "allmende://munich/sw m/user/a",
            "allmende://munich//user/a",
        ] {
            assert!(s.parse::<LeafIdentity>().is_err(), "{s}");
        }
    }

    #[test]
    fn kinds_and_roles_parse_strictly() {
        assert_eq!("utility".parse::<OrgKind>().unwrap(), OrgKind::Utility);
        assert!("Utility".parse::<OrgKind>().is_err());
        assert_eq!("dpo".parse::<Role>().unwrap(), Role::Dpo);
        assert!("admin".parse::<Role>().is_err());
        assert_eq!(parse_org_uri("allmende://munich/swm").unwrap().1, "swm");
        assert!(parse_org_uri("allmende://munich/swm/x").is_err());
    }
}
