//! Onboarding identities: the short-lived client certificate an invitation
//! carries so that a new organisation, which has no member certificate yet,
//! can open an mTLS connection to the city node for `Federation.Join` only.
//!
//! An onboarding certificate is issued directly by the federation root (no
//! organisation CA in between, so the member verifier refuses it), carries
//! exactly one SAN URI `allmende://<federation>/<org>/join/<invitation>`
//! (a form no member leaf has: `LeafIdentity` accepts only `node` and
//! `user`), the client-auth usage only, and expires shortly after its
//! invitation. Only a node that holds the root accepts it at all, and only
//! for the join call (`docs/federation.md` § Joining).

use super::identity::{IdentityError, valid_org_name};

const SCHEME: &str = "allmende://";
/// The path segment that marks an onboarding identity.
const JOIN: &str = "join";

/// A connection authenticated with an invitation's onboarding certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onboarding {
    pub federation: String,
    /// The invited organisation (not a member yet).
    pub organisation: String,
    /// The invitation's id.
    pub invitation: String,
    /// Lower-case hex SHA-256 of the onboarding certificate (DER).
    pub certificate_sha256: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

/// Checks an invitation id: 16 to 64 lower-case hex digits.
pub fn valid_invitation_id(s: &str) -> bool {
    (16..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The SAN URI of an onboarding certificate.
pub fn onboarding_uri(federation: &str, org: &str, invitation: &str) -> String {
    format!("{SCHEME}{federation}/{org}/{JOIN}/{invitation}")
}

/// Parses an onboarding URI into federation, organisation and invitation.
pub fn parse_onboarding_uri(s: &str) -> Result<(String, String, String), IdentityError> {
    let err = |reason| IdentityError {
        input: crate::text::shown(s, 200),
        reason,
    };
    let rest = s
        .strip_prefix(SCHEME)
        .ok_or_else(|| err("expected scheme `allmende://`"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [fed, org, JOIN, id] = parts.as_slice() else {
        return Err(err(
            "expected `allmende://<federation>/<org>/join/<invitation>`",
        ));
    };
    if !valid_org_name(fed) || !valid_org_name(org) {
        return Err(err("invalid federation or organisation name"));
    }
    if !valid_invitation_id(id) {
        return Err(err("invalid invitation id"));
    }
    Ok(((*fed).to_owned(), (*org).to_owned(), (*id).to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn onboarding_uris_round_trip_and_are_no_member_identity() {
        let u = onboarding_uri("munich", "fz", "0123456789abcdef");
        assert_eq!(
            parse_onboarding_uri(&u).unwrap(),
            ("munich".into(), "fz".into(), "0123456789abcdef".into())
        );
        assert!(u.parse::<super::super::identity::LeafIdentity>().is_err());
        for bad in [
            "allmende://munich/fz/node/0123456789abcdef",
            "allmende://munich/fz/join/short",
            "allmende://munich/fz/join/0123456789ABCDEF",
            "allmende://munich/fz/join/0123456789abcdef/x",
            "https://munich/fz/join/0123456789abcdef",
        ] {
            assert!(parse_onboarding_uri(bad).is_err(), "{bad}");
        }
    }
}
