//! On-behalf-of assertions: a forwarding node vouches, for one owner node
//! and one request, that one of its own organisation's users asked
//! (`docs/relay.md`).
//!
//! The assertion is a JSON payload signed (ECDSA P-256, SHA-256, the key of
//! the forwarding node's certificate — the key its TLS uses) over a domain
//! label and the payload bytes. It carries the issuer's and the user's
//! certificates (DER), the audience (the owner node's identity URI), the
//! SHA-256 of the request bytes, a random 128-bit nonce and a short
//! validity. [`verify`] checks everything but the nonce's freshness, which
//! the owner records durably (`super::Relay::accept`).

use crate::pki::{AuthError, Principal, Subject, Trust};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SecureRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The assertion format's version.
pub const VERSION: u32 = 1;
/// How long an assertion is valid.
pub const LIFETIME_SECS: i64 = 60;
/// The longest validity an owner accepts (a forwarding node's clock may
/// differ a little, its assertions may not live long).
pub const MAX_LIFETIME_SECS: i64 = 120;
/// How far in the future an assertion may have been issued (clock skew).
pub const SKEW_SECS: i64 = 30;
/// What the signature covers before the payload.
const DOMAIN: &[u8] = b"allmende on-behalf-of v1\0";

/// The signed statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub version: u32,
    /// The forwarding node's identity URI.
    pub issuer: String,
    /// The forwarding node's certificate (DER, base64).
    pub issuer_certificate: String,
    /// The user's certificate as presented in its TLS handshake (DER,
    /// base64).
    pub user_certificate: String,
    /// The owner node's identity URI.
    pub audience: String,
    /// Lower-case hex SHA-256 of the request bytes.
    pub request_sha256: String,
    /// 128 random bits, lower-case hex.
    pub nonce: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    payload: String,
    signature: String,
}

/// Why an assertion was refused. [`AssertionError::label`] is the reason
/// recorded in the owner's audit entry.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("on-behalf-of assertion is malformed: {0}")]
    Malformed(String),
    #[error("on-behalf-of assertion has version `{0}`")]
    Version(u32),
    #[error("on-behalf-of assertion issuer is not trusted: {0}")]
    IssuerUntrusted(AuthError),
    #[error("on-behalf-of assertion issuer is not a node certificate")]
    IssuerNotNode,
    #[error("on-behalf-of assertion issuer `{0}` does not match its certificate")]
    IssuerMismatch(String),
    #[error("on-behalf-of assertion issuer `{0}` is not the node the directory lists")]
    IssuerNotInDirectory(String),
    #[error("on-behalf-of assertion signature does not verify")]
    Signature,
    #[error("on-behalf-of assertion user is not trusted: {0}")]
    UserUntrusted(AuthError),
    #[error("on-behalf-of assertion names a node, not a user")]
    UserNotUser,
    #[error("a node of `{issuer}` cannot act for a user of `{user}`")]
    OtherOrganisation { issuer: String, user: String },
    #[error("on-behalf-of assertion is addressed to `{0}`, not this node")]
    Audience(String),
    #[error("on-behalf-of assertion has expired")]
    Expired,
    #[error("on-behalf-of assertion is issued in the future")]
    NotYetValid,
    #[error("on-behalf-of assertion is valid for too long")]
    Lifetime,
    #[error("on-behalf-of assertion is for another request")]
    Digest,
    #[error("on-behalf-of assertion was already used")]
    Replayed,
    #[error("cannot sign an on-behalf-of assertion: {0}")]
    Sign(String),
}

impl AssertionError {
    /// The short reason recorded in the audit entry of a refusal.
    pub fn label(&self) -> &'static str {
        match self {
            AssertionError::Malformed(_) => "relay-assertion-malformed",
            AssertionError::Version(_) => "relay-assertion-version",
            AssertionError::IssuerUntrusted(_) => "relay-assertion-issuer-untrusted",
            AssertionError::IssuerNotNode => "relay-assertion-issuer-not-a-node",
            AssertionError::IssuerMismatch(_) => "relay-assertion-issuer-mismatch",
            AssertionError::IssuerNotInDirectory(_) => "relay-assertion-issuer-not-in-directory",
            AssertionError::Signature => "relay-assertion-signature",
            AssertionError::UserUntrusted(_) => "relay-assertion-user-untrusted",
            AssertionError::UserNotUser => "relay-assertion-user-not-a-user",
            AssertionError::OtherOrganisation { .. } => "relay-assertion-other-organisation",
            AssertionError::Audience(_) => "relay-assertion-audience",
            AssertionError::Expired => "relay-assertion-expired",
            AssertionError::NotYetValid => "relay-assertion-not-yet-valid",
            AssertionError::Lifetime => "relay-assertion-lifetime",
            AssertionError::Digest => "relay-assertion-digest",
            AssertionError::Replayed => "relay-assertion-replayed",
            AssertionError::Sign(_) => "relay-assertion-sign",
        }
    }
}

/// The SHA-256 of request bytes, lower-case hex.
pub fn request_digest(request: &[u8]) -> String {
    hex::encode(Sha256::digest(request))
}

/// Signs assertions with the node certificate's key.
pub struct AssertionSigner {
    key: EcdsaKeyPair,
    certificate_der: Vec<u8>,
    uri: String,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// The signer of the node whose certificate is `certificate_der` and
    /// key `key_pkcs8_der` (ECDSA P-256, PKCS#8).
    pub fn new(certificate_der: &[u8], key_pkcs8_der: &[u8]) -> Result<Self, AssertionError> {
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8_der, &rng)
            .map_err(|e| AssertionError::Sign(format!("node key is not ECDSA P-256: {e}")))?;
        let facts = crate::pki::ca::cert_facts(certificate_der).map_err(AssertionError::Sign)?;
        let [uri] = facts.uris.as_slice() else {
            return Err(AssertionError::Sign(
                "node certificate has not exactly one identity URI".into(),
            ));
        };
        Ok(Self {
            key,
            certificate_der: certificate_der.to_vec(),
            uri: uri.clone(),
            rng,
        })
    }

    /// [`AssertionSigner::new`] from PEM: a certificate chain (the leaf
    /// first) and its PKCS#8 key. Returns the signer and the key (DER).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<(Self, Vec<u8>), AssertionError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str| AssertionError::Sign(what.to_owned());
        let cert = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| bad("no certificate"))?;
        let PrivateKeyDer::Pkcs8(key) =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| bad("no key"))?
        else {
            return Err(bad("key is not PKCS#8"));
        };
        let key = key.secret_pkcs8_der().to_vec();
        Ok((Self::new(cert.as_ref(), &key)?, key))
    }

    /// This node's identity URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// This node's certificate (DER).
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// A fresh assertion for `user_certificate_der` towards `audience`
    /// about `request`, issued at `now`.
    pub fn assertion(
        &self,
        user_certificate_der: &[u8],
        audience: &str,
        request: &[u8],
        now: i64,
    ) -> Result<Assertion, AssertionError> {
        let mut nonce = [0u8; 16];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| AssertionError::Sign("no randomness".into()))?;
        Ok(Assertion {
            version: VERSION,
            issuer: self.uri.clone(),
            issuer_certificate: B64.encode(&self.certificate_der),
            user_certificate: B64.encode(user_certificate_der),
            audience: audience.to_owned(),
            request_sha256: request_digest(request),
            nonce: hex::encode(nonce),
            issued_at: now,
            expires_at: now + LIFETIME_SECS,
        })
    }

    /// Signs `assertion` (any content: tests craft bad ones) into its wire
    /// bytes.
    pub fn sign(&self, assertion: &Assertion) -> Result<Vec<u8>, AssertionError> {
        let payload =
            serde_json::to_vec(assertion).map_err(|e| AssertionError::Sign(e.to_string()))?;
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(&payload);
        let sig = self
            .key
            .sign(&self.rng, &msg)
            .map_err(|_| AssertionError::Sign("signature failed".into()))?;
        serde_json::to_vec(&Envelope {
            payload: B64.encode(&payload),
            signature: B64.encode(sig.as_ref()),
        })
        .map_err(|e| AssertionError::Sign(e.to_string()))
    }
}

/// A verified assertion: who forwarded, for whom.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The forwarding node, from its verified certificate.
    pub issuer: Principal,
    pub issuer_uri: String,
    pub issuer_certificate_der: Vec<u8>,
    /// The user, from its verified certificate.
    pub user: Principal,
    pub nonce: String,
    pub expires_at: i64,
}

/// Verifies an assertion for the request bytes `request` at the node
/// `own_uri` at time `now`: the issuer's and the user's certificates
/// against the federation trust (the verifier's own checks), the issuer a
/// node whose certificate the directory lists, its signature, the user of
/// the issuer's organisation, the audience, the validity and the request
/// digest. The nonce's freshness is the caller's to check.
pub fn verify(
    bytes: &[u8],
    request: &[u8],
    trust: &Trust,
    own_uri: &str,
    now: i64,
) -> Result<Verified, AssertionError> {
    let bad = |what: &str| AssertionError::Malformed(what.to_owned());
    let env: Envelope = serde_json::from_slice(bytes).map_err(|_| bad("envelope"))?;
    let payload = B64.decode(&env.payload).map_err(|_| bad("payload"))?;
    let signature = B64.decode(&env.signature).map_err(|_| bad("signature"))?;
    let a: Assertion = serde_json::from_slice(&payload).map_err(|_| bad("payload"))?;
    if a.version != VERSION {
        return Err(AssertionError::Version(a.version));
    }
    let issuer_der = B64
        .decode(&a.issuer_certificate)
        .map_err(|_| bad("issuer certificate"))?;
    let user_der = B64
        .decode(&a.user_certificate)
        .map_err(|_| bad("user certificate"))?;
    // The issuer: a node certificate the federation trusts, the one the
    // directory lists for that node, whose key signed.
    let issuer = trust
        .authenticate_leaf(&issuer_der)
        .map_err(AssertionError::IssuerUntrusted)?;
    let Subject::Node(issuer_node) = &issuer.subject else {
        return Err(AssertionError::IssuerNotNode);
    };
    let facts = crate::pki::ca::cert_facts(&issuer_der).map_err(|_| bad("issuer certificate"))?;
    if facts.uris.as_slice() != [a.issuer.clone()] {
        return Err(AssertionError::IssuerMismatch(crate::text::shown(
            &a.issuer, 200,
        )));
    }
    let listed = trust.snapshot().doc.nodes.iter().any(|n| {
        n.org == issuer.organisation && &n.node == issuer_node && n.cert_sha256 == facts.sha256
    });
    if !listed {
        return Err(AssertionError::IssuerNotInDirectory(a.issuer.clone()));
    }
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(&payload);
    ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &facts.public_key)
        .verify(&msg, &signature)
        .map_err(|_| AssertionError::Signature)?;
    // The user: a user certificate the federation trusts, of the issuer's
    // organisation.
    let user = trust
        .authenticate_leaf(&user_der)
        .map_err(AssertionError::UserUntrusted)?;
    if !matches!(user.subject, Subject::User(_)) {
        return Err(AssertionError::UserNotUser);
    }
    if user.organisation != issuer.organisation {
        return Err(AssertionError::OtherOrganisation {
            issuer: issuer.organisation.clone(),
            user: user.organisation.clone(),
        });
    }
    if a.audience != own_uri {
        return Err(AssertionError::Audience(crate::text::shown(
            &a.audience,
            200,
        )));
    }
    if a.expires_at - a.issued_at > MAX_LIFETIME_SECS || a.expires_at < a.issued_at {
        return Err(AssertionError::Lifetime);
    }
    if a.issued_at > now + SKEW_SECS {
        return Err(AssertionError::NotYetValid);
    }
    if now > a.expires_at {
        return Err(AssertionError::Expired);
    }
    if a.request_sha256 != request_digest(request) {
        return Err(AssertionError::Digest);
    }
    if a.nonce.len() != 32 || hex::decode(&a.nonce).is_err() {
        return Err(bad("nonce"));
    }
    Ok(Verified {
        issuer_uri: a.issuer,
        issuer,
        issuer_certificate_der: issuer_der,
        user,
        nonce: a.nonce,
        expires_at: a.expires_at,
    })
}
