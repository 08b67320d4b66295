//! Credentials bound to a node's certificate.
//!
//! A node's MLS leaf credential is a basic credential whose identity bytes
//! are a [`Claim`]: the node's federation identity URI (the certificate's one
//! URI SAN), the SHA-256 fingerprint of its certificate's
//! SubjectPublicKeyInfo, and a signature made with the certificate's private
//! key over the URI and the node's MLS signature key. Whoever sees a
//! member's certificate in a TLS handshake (verified by the federation's
//! certificate verifier) checks the member's leaf with [`verify`]: the URI
//! and fingerprint must name that certificate and the signature must cover
//! the leaf's MLS signature key. A key package that a hub substituted —
//! another node's, or one with the right identity but the hub's own
//! signature key — fails the check, because the hub does not hold the
//! node's certificate key.

use ring::rand::SystemRandom;
use ring::signature::{
    self, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1,
    ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Domain separation of the binding signature.
const BINDING_DOMAIN: &[u8] = b"allmende mls credential binding v1\0";

/// Errors of credential binding.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("cannot parse the certificate: {0}")]
    Certificate(String),
    #[error("the certificate carries {0} URI SANs; exactly one identity URI is required")]
    IdentityUri(usize),
    #[error("unsupported certificate key algorithm `{0}`")]
    UnsupportedKey(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error("cannot sign the credential binding")]
    Sign,
    #[error("not an allmende node credential: {0}")]
    Credential(String),
    #[error("credential names `{claimed}` but the certificate names `{certificate}`")]
    IdentityMismatch {
        claimed: String,
        certificate: String,
    },
    #[error("credential of `{uri}` names another certificate key than the one presented")]
    CertificateMismatch { uri: String },
    #[error("the MLS signature key of `{uri}` is not bound to its certificate")]
    SignatureKeyNotBound { uri: String },
}

/// What a credential claims (the identity bytes of the basic credential).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Format version, 1.
    pub v: u8,
    /// The node's federation identity URI.
    pub uri: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, lowercase hex.
    pub spki_sha256: String,
    /// The certificate key's signature over the URI and the MLS signature
    /// key, lowercase hex.
    pub binding: String,
}

impl Claim {
    /// Encodes the claim as credential identity bytes.
    pub fn encode(&self) -> Result<Vec<u8>, BindingError> {
        serde_json::to_vec(self).map_err(|e| BindingError::Credential(e.to_string()))
    }

    /// Decodes credential identity bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BindingError> {
        let claim: Claim =
            serde_json::from_slice(bytes).map_err(|e| BindingError::Credential(e.to_string()))?;
        if claim.v != 1 {
            return Err(BindingError::Credential(format!(
                "unknown version `{}`",
                claim.v
            )));
        }
        Ok(claim)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyAlg {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

/// What the binding needs from a certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertFacts {
    pub(crate) uri: String,
    pub(crate) spki_sha256: String,
    alg: KeyAlg,
    key: Vec<u8>,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The facts of a DER certificate: identity URI, SPKI fingerprint, key.
pub(crate) fn cert_facts(der: &[u8]) -> Result<CertFacts, BindingError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| BindingError::Certificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(BindingError::Certificate("trailing bytes".into()));
    }
    let uris: Vec<String> = match cert
        .subject_alternative_name()
        .map_err(|e| BindingError::Certificate(e.to_string()))?
    {
        None => Vec::new(),
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_string()),
                _ => None,
            })
            .collect(),
    };
    let [uri] = uris.as_slice() else {
        return Err(BindingError::IdentityUri(uris.len()));
    };
    let spki = cert.public_key();
    let alg_oid = spki.algorithm.algorithm.to_id_string();
    let alg = match alg_oid.as_str() {
        "1.3.101.112" => KeyAlg::Ed25519,
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => KeyAlg::EcdsaP256,
                "1.3.132.0.34" => KeyAlg::EcdsaP384,
                other => return Err(BindingError::UnsupportedKey(format!("ec {other}"))),
            }
        }
        other => return Err(BindingError::UnsupportedKey(other.to_string())),
    };
    Ok(CertFacts {
        uri: uri.clone(),
        spki_sha256: hex(&Sha256::digest(spki.raw)),
        alg,
        key: spki.subject_public_key.data.to_vec(),
    })
}

fn binding_message(uri: &str, mls_signature_key: &[u8]) -> Vec<u8> {
    let mut m = BINDING_DOMAIN.to_vec();
    m.extend_from_slice(&(uri.len() as u64).to_be_bytes());
    m.extend_from_slice(uri.as_bytes());
    m.extend_from_slice(&(mls_signature_key.len() as u64).to_be_bytes());
    m.extend_from_slice(mls_signature_key);
    m
}

enum CertKey {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A node's identity for MLS: its certificate and the certificate's private
/// key, used only to sign credential bindings.
pub struct NodeIdentity {
    facts: CertFacts,
    certificate_der: Vec<u8>,
    key: CertKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("uri", &self.facts.uri)
            .field("spki_sha256", &self.facts.spki_sha256)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The identity of the node holding `certificate_der` (DER) and its
    /// private key `private_key_pkcs8_der` (PKCS#8 DER). Refuses a key that
    /// does not match the certificate.
    pub fn new(certificate_der: &[u8], private_key_pkcs8_der: &[u8]) -> Result<Self, BindingError> {
        let facts = cert_facts(certificate_der)?;
        let rng = SystemRandom::new();
        let key = match facts.alg {
            KeyAlg::EcdsaP256 | KeyAlg::EcdsaP384 => {
                let alg = if facts.alg == KeyAlg::EcdsaP256 {
                    &ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &ECDSA_P384_SHA384_ASN1_SIGNING
                };
                CertKey::Ecdsa(
                    EcdsaKeyPair::from_pkcs8(alg, private_key_pkcs8_der, &rng)
                        .map_err(|_| BindingError::KeyMismatch)?,
                )
            }
            KeyAlg::Ed25519 => CertKey::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(private_key_pkcs8_der)
                    .map_err(|_| BindingError::KeyMismatch)?,
            ),
        };
        let public = match &key {
            CertKey::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            CertKey::Ed25519(k) => k.public_key().as_ref().to_vec(),
        };
        if public != facts.key {
            return Err(BindingError::KeyMismatch);
        }
        Ok(Self {
            facts,
            certificate_der: certificate_der.to_vec(),
            key,
            rng,
        })
    }

    /// The node's federation identity URI.
    pub fn uri(&self) -> &str {
        &self.facts.uri
    }

    /// The node's certificate (DER).
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// A claim binding `mls_signature_key` to this node's certificate.
    pub(crate) fn claim(&self, mls_signature_key: &[u8]) -> Result<Claim, BindingError> {
        let msg = binding_message(&self.facts.uri, mls_signature_key);
        let sig = match &self.key {
            CertKey::Ecdsa(k) => k
                .sign(&self.rng, &msg)
                .map_err(|_| BindingError::Sign)?
                .as_ref()
                .to_vec(),
            CertKey::Ed25519(k) => k.sign(&msg).as_ref().to_vec(),
        };
        Ok(Claim {
            v: 1,
            uri: self.facts.uri.clone(),
            spki_sha256: self.facts.spki_sha256.clone(),
            binding: hex(&sig),
        })
    }

    /// True when `claim` was made for this certificate and MLS key.
    pub(crate) fn owns(&self, claim: &Claim, mls_signature_key: &[u8]) -> bool {
        verify_claim(claim, mls_signature_key, &self.facts).is_ok()
    }
}

/// Checks credential identity bytes and the leaf's MLS signature key
/// against a certificate seen in a TLS handshake; returns the member's URI.
pub fn verify(
    credential_identity: &[u8],
    mls_signature_key: &[u8],
    certificate_der: &[u8],
) -> Result<String, BindingError> {
    let claim = Claim::decode(credential_identity)?;
    let facts = cert_facts(certificate_der)?;
    verify_claim(&claim, mls_signature_key, &facts)?;
    Ok(claim.uri)
}

fn verify_claim(
    claim: &Claim,
    mls_signature_key: &[u8],
    facts: &CertFacts,
) -> Result<(), BindingError> {
    if claim.uri != facts.uri {
        return Err(BindingError::IdentityMismatch {
            claimed: claim.uri.clone(),
            certificate: facts.uri.clone(),
        });
    }
    if claim.spki_sha256 != facts.spki_sha256 {
        return Err(BindingError::CertificateMismatch {
            uri: claim.uri.clone(),
        });
    }
    let not_bound = || BindingError::SignatureKeyNotBound {
        uri: claim.uri.clone(),
    };
    let sig = unhex(&claim.binding).ok_or_else(not_bound)?;
    let alg: &dyn signature::VerificationAlgorithm = match facts.alg {
        KeyAlg::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
        KeyAlg::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
        KeyAlg::Ed25519 => &signature::ED25519,
    };
    UnparsedPublicKey::new(alg, &facts.key)
        .verify(&binding_message(&claim.uri, mls_signature_key), &sig)
        .map_err(|_| not_bound())
}
