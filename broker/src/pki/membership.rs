//! The federation membership: which organisation CAs belong to the
//! federation, each organisation's kind, and the deny list. Signed by the
//! federation root key; nodes accept only a document whose signature verifies
//! against the root certificate they were configured with, and never an older
//! version than the one they already trust.
//!
//! On disk (`membership.json`) it is a JSON envelope
//! `{"payload": base64(JSON document), "signature": base64(ECDSA P-256 SHA-256 ASN.1)}`
//! so the signed bytes are exactly the payload bytes (no canonicalisation).
//!
//! The same document is the federation **directory**: besides the members
//! and the deny list it lists the members' nodes ([`NodeEntry`]: gRPC
//! endpoint, certificate fingerprint, an MLS key-package slot). One
//! signature and one version cover both, so a node never holds a directory
//! that disagrees with the membership it verifies certificates against
//! (`docs/federation.md`).

use super::identity::{OrgKind, valid_leaf_name, valid_org_name};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Current document format.
pub const MEMBERSHIP_FORMAT: u32 = 1;

/// One member organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub org: String,
    pub kind: OrgKind,
    pub display_name: String,
    /// The organisation CA certificate, PEM.
    pub ca_cert_pem: String,
    /// Lower-case hex SHA-256 of the CA's SubjectPublicKeyInfo (DER).
    pub ca_spki_sha256: String,
    /// Lower-case hex SHA-256 of the CA certificate (DER).
    pub ca_cert_sha256: String,
    pub added_at: i64,
}

/// A deny-list entry: a certificate (leaf or organisation CA) by fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Denied {
    /// Lower-case hex SHA-256 of the certificate (DER).
    pub cert_sha256: String,
    /// The identity URI, when known (informational).
    pub subject: String,
    pub reason: String,
    pub at: i64,
}

/// One node of a member organisation, as the directory lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub org: String,
    pub node: String,
    /// The node's gRPC endpoint, `https://host:port`.
    pub endpoint: String,
    /// Lower-case hex SHA-256 of the node's certificate (DER).
    pub cert_sha256: String,
    /// The node's MLS key package (base64), empty until the node has one.
    #[serde(default)]
    pub mls_key_package: String,
}

/// Checks a node endpoint as the directory lists it: `https://host:port`,
/// a port, no path, no user part. The error names what is wrong.
pub fn check_node_endpoint(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "endpoint `{}` is not `https://host:port`",
            crate::text::shown(s, 80)
        )
    };
    let rest = s.strip_prefix("https://").ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || port.parse::<u16>().map_or(true, |p| p == 0)
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
    {
        return Err(bad());
    }
    Ok(())
}

/// The signed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipDoc {
    pub format: u32,
    pub federation: String,
    /// Strictly increasing with every change.
    pub version: u64,
    pub issued_at: i64,
    /// Lower-case hex SHA-256 of the root CA certificate (DER).
    pub root_ca_sha256: String,
    pub members: Vec<Member>,
    pub denied: Vec<Denied>,
    /// The directory's node entries (absent in documents without any, so
    /// those keep their bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeEntry>,
}

/// The envelope as stored in `membership.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedMembership {
    pub payload: String,
    pub signature: String,
}

/// Why a membership document was refused.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("membership file is not a signed envelope: {0}")]
    Envelope(String),
    #[error("membership signature does not verify against the federation root")]
    BadSignature,
    #[error("membership document is malformed: {0}")]
    Document(String),
    #[error("membership is for federation `{found}`, expected `{expected}`")]
    WrongFederation { found: String, expected: String },
    #[error("membership names root `{found}`, this node trusts root `{expected}`")]
    WrongRoot { found: String, expected: String },
    #[error("membership version {offered} is older than the trusted version {current}")]
    Rollback { offered: u64, current: u64 },
    #[error("cannot sign membership: {0}")]
    Sign(String),
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl MembershipDoc {
    /// Signs the document with the root key (PKCS#8 DER, ECDSA P-256).
    pub fn sign(&self, root_key_pkcs8: &[u8]) -> Result<SignedMembership, MembershipError> {
        let payload = serde_json::to_vec(self).map_err(|e| MembershipError::Sign(e.to_string()))?;
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, root_key_pkcs8, &rng)
            .map_err(|e| MembershipError::Sign(e.to_string()))?;
        let sig = key
            .sign(&rng, &payload)
            .map_err(|e| MembershipError::Sign(e.to_string()))?;
        Ok(SignedMembership {
            payload: B64.encode(&payload),
            signature: B64.encode(sig.as_ref()),
        })
    }

    pub(crate) fn validate(&self) -> Result<(), MembershipError> {
        let bad = |m: String| Err(MembershipError::Document(m));
        if self.format != MEMBERSHIP_FORMAT {
            return bad(format!("unsupported format `{}`", self.format));
        }
        if !valid_org_name(&self.federation) {
            return bad(format!("invalid federation name `{}`", self.federation));
        }
        let mut seen = HashMap::new();
        for m in &self.members {
            if !valid_org_name(&m.org) {
                return bad(format!("invalid organisation name `{}`", m.org));
            }
            if seen.insert(m.org.as_str(), ()).is_some() {
                return bad(format!("organisation `{}` listed twice", m.org));
            }
        }
        let mut nodes = std::collections::HashSet::new();
        for n in &self.nodes {
            if !seen.contains_key(n.org.as_str()) {
                return bad(format!("node `{}` of non-member `{}`", n.node, n.org));
            }
            if !valid_leaf_name(&n.node) || !n.endpoint.starts_with("https://") {
                return bad(format!("node entry `{}/{}` is malformed", n.org, n.node));
            }
            if !nodes.insert((n.org.as_str(), n.node.as_str())) {
                return bad(format!("node `{}/{}` listed twice", n.org, n.node));
            }
        }
        Ok(())
    }

    /// Takes organisation `org` out of the federation: its member entry and
    /// its nodes leave the document, its CA certificate and its nodes'
    /// certificates go on the deny list, the version goes up. Returns
    /// `false` (and changes nothing) when `org` is not a member.
    pub fn remove_member(&mut self, org: &str, reason: &str, now_unix: i64) -> bool {
        let Some(pos) = self.members.iter().position(|m| m.org == org) else {
            return false;
        };
        let m = self.members.remove(pos);
        let mut deny = vec![(m.ca_cert_sha256.clone(), format!("org/{org}"))];
        deny.extend(
            self.nodes
                .iter()
                .filter(|n| n.org == org)
                .map(|n| (n.cert_sha256.clone(), format!("node/{org}/{}", n.node))),
        );
        self.nodes.retain(|n| n.org != org);
        for (cert_sha256, subject) in deny {
            if !self.denied.iter().any(|d| d.cert_sha256 == cert_sha256) {
                self.denied.push(Denied {
                    cert_sha256,
                    subject,
                    reason: reason.to_owned(),
                    at: now_unix,
                });
            }
        }
        self.version += 1;
        self.issued_at = now_unix;
        true
    }

    /// The member with this organisation name.
    pub fn member(&self, org: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.org == org)
    }
}

impl SignedMembership {
    /// Parses the on-disk JSON envelope.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MembershipError> {
        serde_json::from_slice(bytes).map_err(|e| MembershipError::Envelope(e.to_string()))
    }

    /// The on-disk JSON envelope.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Verifies the signature with the root public key (uncompressed P-256
    /// point from the root certificate) and returns the document.
    pub fn verify(&self, root_public_key: &[u8]) -> Result<MembershipDoc, MembershipError> {
        let payload = B64
            .decode(&self.payload)
            .map_err(|e| MembershipError::Envelope(format!("payload: {e}")))?;
        let sig = B64
            .decode(&self.signature)
            .map_err(|e| MembershipError::Envelope(format!("signature: {e}")))?;
        ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, root_public_key)
            .verify(&payload, &sig)
            .map_err(|_| MembershipError::BadSignature)?;
        let doc: MembershipDoc = serde_json::from_slice(&payload)
            .map_err(|e| MembershipError::Document(e.to_string()))?;
        doc.validate()?;
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    fn doc() -> MembershipDoc {
        MembershipDoc {
            format: MEMBERSHIP_FORMAT,
            federation: "munich".into(),
            version: 1,
            issued_at: 0,
            root_ca_sha256: "00".into(),
            members: vec![],
            denied: vec![],
            nodes: vec![],
        }
    }

    #[test]
    fn signature_binds_every_byte() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signed = doc().sign(&kp.serialize_der()).unwrap();
        assert_eq!(signed.verify(kp.public_key_raw()).unwrap(), doc());
        let mut forged = doc();
        forged.version = 2;
        let mut tampered = signed.clone();
        tampered.payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert!(matches!(
            tampered.verify(kp.public_key_raw()),
            Err(MembershipError::BadSignature)
        ));
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert!(signed.verify(other.public_key_raw()).is_err());
    }

    fn member(org: &str) -> Member {
        Member {
            org: org.into(),
            kind: OrgKind::University,
            display_name: org.into(),
            ca_cert_pem: String::new(),
            ca_spki_sha256: format!("{org}-spki"),
            ca_cert_sha256: format!("{org}-ca"),
            added_at: 0,
        }
    }

    fn node(org: &str, name: &str) -> NodeEntry {
        NodeEntry {
            org: org.into(),
            node: name.into(),
            endpoint: "https://127.0.0.1:7401".into(),
            cert_sha256: format!("{name}-cert"),
            mls_key_package: String::new(),
        }
    }

    #[test]
    fn removing_a_member_denies_its_ca_and_nodes_and_bumps_the_version() {
        let mut d = doc();
        d.members = vec![member("tum"), member("swm")];
        d.nodes = vec![node("tum", "tum-1"), node("swm", "swm-1")];
        d.validate().unwrap();
        assert!(d.remove_member("tum", "left", 7));
        assert_eq!(d.version, 2);
        assert!(d.member("tum").is_none());
        assert_eq!(d.nodes, vec![node("swm", "swm-1")]);
        let denied: Vec<&str> = d.denied.iter().map(|x| x.cert_sha256.as_str()).collect();
        assert_eq!(denied, ["tum-ca", "tum-1-cert"]);
        assert!(!d.remove_member("tum", "again", 8));
        assert_eq!(d.version, 2);
        d.validate().unwrap();
    }

    #[test]
    fn directory_entries_are_validated() {
        let mut d = doc();
        d.members = vec![member("tum")];
        d.nodes = vec![node("swm", "swm-1")];
        assert!(d.validate().is_err(), "a node of a non-member");
        d.nodes = vec![node("tum", "tum-1"), node("tum", "tum-1")];
        assert!(d.validate().is_err(), "a node listed twice");
        let mut plain = node("tum", "tum-1");
        plain.endpoint = "http://127.0.0.1:1".into();
        d.nodes = vec![plain];
        assert!(d.validate().is_err(), "an endpoint without TLS");
        // A document without nodes keeps its bytes (no `nodes` key).
        d.nodes.clear();
        assert!(
            !String::from_utf8(serde_json::to_vec(&d).unwrap())
                .unwrap()
                .contains("nodes")
        );
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert!(SignedMembership::from_json(b"{").is_err());
        assert!(SignedMembership::from_json(br#"{"payload":"","signature":"","x":1}"#).is_err());
        let s = SignedMembership {
            payload: "!!".into(),
            signature: "AA==".into(),
        };
        assert!(s.verify(&[4; 65]).is_err());
    }
}
