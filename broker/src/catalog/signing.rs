//! Catalog records signed by their owner node (Ed25519, `ring`).
//!
//! A node signs the exact bytes it serves: the canonical JSON of a
//! [`SignedPayload`] prefixed with [`SIGNING_DOMAIN`]. Receivers verify those
//! bytes and parse them strictly; nothing is re-encoded before verifying, so
//! the encoding never has to be reproduced byte for byte elsewhere.

use super::entry::CatalogEntry;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Domain separation for catalog signatures.
pub const SIGNING_DOMAIN: &[u8] = b"allmende catalog record v1\n";

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// What an owner node signs: an entry, or the removal of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SignedPayload {
    /// A new or changed entry.
    Entry(Box<CatalogEntry>),
    /// The owner removed the dataset from its catalog.
    Removed {
        owner: String,
        owner_node: String,
        dataset: String,
        version: u64,
        updated_at_ms: i64,
    },
}

impl SignedPayload {
    /// Owner organisation.
    pub fn owner(&self) -> &str {
        match self {
            SignedPayload::Entry(e) => &e.owner,
            SignedPayload::Removed { owner, .. } => owner,
        }
    }

    /// Owner node.
    pub fn owner_node(&self) -> &str {
        match self {
            SignedPayload::Entry(e) => &e.owner_node,
            SignedPayload::Removed { owner_node, .. } => owner_node,
        }
    }

    /// Dataset id.
    pub fn dataset(&self) -> &str {
        match self {
            SignedPayload::Entry(e) => &e.dataset.id,
            SignedPayload::Removed { dataset, .. } => dataset,
        }
    }

    /// The owner's catalog version of this change.
    pub fn version(&self) -> u64 {
        match self {
            SignedPayload::Entry(e) => e.version,
            SignedPayload::Removed { version, .. } => *version,
        }
    }

    /// When the owner made this change (ms since the epoch).
    pub fn updated_at_ms(&self) -> i64 {
        match self {
            SignedPayload::Entry(e) => e.updated_at_ms,
            SignedPayload::Removed { updated_at_ms, .. } => *updated_at_ms,
        }
    }

    /// The entry, unless this is a removal.
    pub fn entry(&self) -> Option<&CatalogEntry> {
        match self {
            SignedPayload::Entry(e) => Some(e.as_ref()),
            SignedPayload::Removed { .. } => None,
        }
    }
}

/// Canonical payload bytes and the owner node's signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRecord {
    /// Canonical JSON of a [`SignedPayload`], exactly as signed.
    pub payload: String,
    /// Hex Ed25519 signature over [`SIGNING_DOMAIN`] ‖ payload.
    pub signature: String,
}

/// Why a record did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("node key is not a {PUBLIC_KEY_LEN}-byte Ed25519 public key")]
    BadKey,
    #[error("signature is not valid hex")]
    SignatureEncoding,
    #[error("signature does not verify with the owner node's key")]
    BadSignature,
    #[error("payload is not a catalog record: {0}")]
    Payload(String),
}

fn message(payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_DOMAIN.len() + payload.len());
    m.extend_from_slice(SIGNING_DOMAIN);
    m.extend_from_slice(payload);
    m
}

/// A node's catalog signing key.
pub struct NodeSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSigner")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

/// Why a signing key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[error("catalog signing key: {0}")]
pub struct KeyError(pub String);

impl NodeSigner {
    /// A fresh key; returns it with its PKCS#8 document for storage.
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| KeyError("key generation failed".into()))?;
        let signer = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    /// Loads a stored key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|key| Self { key })
            .map_err(|e| KeyError(format!("stored key is unusable: {e}")))
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs `message` of another protocol with the same node key (e.g. a
    /// grant approval). The message must begin with that protocol's own
    /// domain string, so that it is never a catalog record's message.
    pub fn sign_detached(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        if message.starts_with(SIGNING_DOMAIN) {
            return Err(KeyError(
                "refusing to sign a message in the catalog record domain".into(),
            ));
        }
        Ok(self.key.sign(message).as_ref().to_vec())
    }

    /// Signs a payload: canonical JSON, then the signature over it.
    pub fn sign(&self, payload: &SignedPayload) -> Result<SignedRecord, KeyError> {
        let text = serde_json::to_string(payload)
            .map_err(|e| KeyError(format!("cannot encode payload: {e}")))?;
        let sig = self.key.sign(&message(text.as_bytes()));
        Ok(SignedRecord {
            payload: text,
            signature: hex::encode(sig.as_ref()),
        })
    }
}

impl SignedRecord {
    /// Verifies the signature with `public_key` and parses the payload.
    pub fn verify(&self, public_key: &[u8]) -> Result<SignedPayload, VerifyError> {
        if public_key.len() != PUBLIC_KEY_LEN {
            return Err(VerifyError::BadKey);
        }
        let sig = hex::decode(&self.signature).map_err(|_| VerifyError::SignatureEncoding)?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&message(self.payload.as_bytes()), &sig)
            .map_err(|_| VerifyError::BadSignature)?;
        serde_json::from_str(&self.payload).map_err(|e| VerifyError::Payload(e.to_string()))
    }

    /// Parses the payload without verifying (for records this node signed
    /// itself and read back from its own store).
    pub fn payload_unverified(&self) -> Result<SignedPayload, VerifyError> {
        serde_json::from_str(&self.payload).map_err(|e| VerifyError::Payload(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;

    fn removed(owner: &str) -> SignedPayload {
        SignedPayload::Removed {
            owner: owner.into(),
            owner_node: "swm-1".into(),
            dataset: "x".into(),
            version: 3,
            updated_at_ms: 7,
        }
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let (signer, pkcs8) = NodeSigner::generate().unwrap();
        let again = NodeSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(signer.public_key(), again.public_key());
        let rec = signer.sign(&removed("swm")).unwrap();
        assert_eq!(rec.verify(signer.public_key()).unwrap(), removed("swm"));

        // Another organisation's name in the same signed bytes.
        let mut forged = rec.clone();
        forged.payload = forged.payload.replace("\"swm\"", "\"stadt\"");
        assert_ne!(forged.payload, rec.payload);
        assert_eq!(
            forged.verify(signer.public_key()),
            Err(VerifyError::BadSignature)
        );
        // Another key.
        let (other, _) = NodeSigner::generate().unwrap();
        assert_eq!(
            rec.verify(other.public_key()),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(rec.verify(&[0; 5]), Err(VerifyError::BadKey));
        let mut garbled = rec.clone();
        garbled.signature = "zz".into();
        assert_eq!(
            garbled.verify(signer.public_key()),
            Err(VerifyError::SignatureEncoding)
        );
    }

    #[test]
    fn unknown_payload_fields_are_refused_even_when_signed() {
        let (signer, _) = NodeSigner::generate().unwrap();
        let text = r#"{"kind":"removed","owner":"swm","owner_node":"swm-1","dataset":"x","version":1,"updated_at_ms":0,"extra":1}"#;
        let sig = signer.key.sign(&message(text.as_bytes()));
        let rec = SignedRecord {
            payload: text.into(),
            signature: hex::encode(sig.as_ref()),
        };
        assert!(matches!(
            rec.verify(signer.public_key()),
            Err(VerifyError::Payload(_))
        ));
    }
}
