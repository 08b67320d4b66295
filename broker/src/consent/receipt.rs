//! Consent receipts: a self-contained JSON document the controller's node
//! signs for every consent given or withdrawn, returned to the data subject
//! and verifiable offline with nothing but the federation root certificate.
//!
//! - The payload (ISO/IEC TS 27560-style fields, purposes with their W3C DPV
//!   IRIs) is signed with the node's Ed25519 key
//!   (`NodeSigner::sign_detached`) under [`RECEIPT_DOMAIN`]; the exact
//!   payload bytes are kept as a string, so nothing is re-encoded before
//!   verifying.
//! - That Ed25519 key is tied to the federation by a key binding: the node's
//!   TLS key (certified by its organisation's CA, which the federation root
//!   certified) signs the node's identity URI and the Ed25519 public key
//!   under [`BINDING_DOMAIN`]. The receipt carries the node certificate and
//!   the organisation CA certificate.
//! - [`verify`] checks the chain up to the root (at the receipt's issue
//!   time), that the CA is the controller organisation's own CA, that the
//!   leaf is a node of that organisation, the binding, the receipt
//!   signature, and that the payload names that controller and node. A key
//!   an attacker made, a certificate of another organisation or of a
//!   citizen, or one edited byte, do not verify.
//!
//! Not covered offline: a node certificate revoked after the receipt was
//! issued (the deny list lives in the signed membership).

use super::{CollectionMethod, ConsentRecord, ConsentStatus};
use crate::catalog::Catalog;
use crate::pki::ca::cert_facts;
use crate::pki::identity::{LeafIdentity, Subject, org_uri};
use allmende_policies::Purpose;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair, UnparsedPublicKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Domain prefix of a receipt's signed message.
pub const RECEIPT_DOMAIN: &[u8] = b"allmende consent receipt v1\n";
/// Domain prefix of the key binding a node's TLS key signs.
pub const BINDING_DOMAIN: &[u8] = b"allmende node key binding v1\n";
/// The payload's schema name.
pub const SCHEMA: &str = "allmende-consent-receipt/1";
/// The legal basis of every consent record (`dpv:Consent`).
pub const LEGAL_BASIS_IRI: &str = "https://w3id.org/dpv#Consent";

/// The W3C DPV IRI a purpose is recorded as in receipts (`docs/citizens.md`).
pub fn dpv_purpose_iri(p: Purpose) -> &'static str {
    match p {
        Purpose::AcademicResearch => "https://w3id.org/dpv#AcademicResearch",
        Purpose::CommercialResearch => "https://w3id.org/dpv#CommercialResearch",
        Purpose::ServiceProvision => "https://w3id.org/dpv#ServiceProvision",
        Purpose::PublicInterest => "https://w3id.org/dpv#PublicInterest",
        Purpose::Marketing => "https://w3id.org/dpv#Marketing",
        Purpose::InsuranceUnderwriting => "https://w3id.org/dpv#InsuranceUnderwriting",
        Purpose::RiskScoring => "https://w3id.org/dpv#CreditChecking",
    }
}

/// The W3C DPV IRI of a consent status.
pub fn dpv_status_iri(s: ConsentStatus) -> &'static str {
    match s {
        ConsentStatus::Given => "https://w3id.org/dpv#ConsentGiven",
        ConsentStatus::Refused => "https://w3id.org/dpv#ConsentRefused",
        ConsentStatus::Withdrawn => "https://w3id.org/dpv#ConsentWithdrawn",
    }
}

/// Why a receipt could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt is not readable: {0}")]
    Malformed(String),
    #[error("receipt's certificate chain does not lead to the federation root: {0}")]
    Chain(String),
    #[error("receipt's signer is not a node of controller `{controller}`: {reason}")]
    NotController { controller: String, reason: String },
    #[error("receipt's signing key is not bound to its node certificate")]
    Binding,
    #[error("receipt signature does not verify (the receipt was changed or signed by another key)")]
    Signature,
    #[error("federation root certificate is unusable: {0}")]
    Root(String),
    #[error("cannot sign receipts: {0}")]
    Signing(String),
}

/// One purpose as a receipt states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptPurpose {
    pub purpose: String,
    pub dpv: String,
}

/// The signed content of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptPayload {
    pub schema: String,
    /// This receipt (128 random bits, hex).
    pub receipt_id: String,
    /// `consent-given` or `consent-withdrawn`.
    pub event: String,
    pub issued_at_unix: i64,
    pub issued_at: String,
    pub federation: String,
    /// The controller organisation.
    pub controller: String,
    /// The signing node's identity URI.
    pub controller_node: String,
    pub record_id: String,
    pub subject: String,
    pub dataset: String,
    pub purposes: Vec<ReceiptPurpose>,
    pub status: String,
    pub status_dpv: String,
    pub legal_basis: String,
    pub given_at_unix: i64,
    pub withdrawn_at_unix: Option<i64>,
    pub expires_at_unix: Option<i64>,
    pub collection_method: String,
}

/// A receipt as handed to the subject (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The exact signed JSON of a [`ReceiptPayload`].
    pub payload: String,
    /// Ed25519 over [`RECEIPT_DOMAIN`] + `payload`, hex.
    pub signature: String,
    /// The node's Ed25519 public key, hex.
    pub signer_public_key: String,
    /// The node's identity URI.
    pub node: String,
    /// The node's TLS key's signature over [`BINDING_DOMAIN`] + node URI +
    /// `\n` + `signer_public_key` (ECDSA P-256 SHA-256, ASN.1), hex.
    pub key_binding_signature: String,
    /// The node certificate, then its organisation CA certificate (PEM).
    pub certificate_chain_pem: String,
}

impl Receipt {
    /// The receipt as a JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn binding_message(node_uri: &str, public_key_hex: &str) -> Vec<u8> {
    let mut m = BINDING_DOMAIN.to_vec();
    m.extend_from_slice(node_uri.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(public_key_hex.as_bytes());
    m
}

fn receipt_message(payload: &str) -> Vec<u8> {
    let mut m = RECEIPT_DOMAIN.to_vec();
    m.extend_from_slice(payload.as_bytes());
    m
}

/// Signs receipts with the node's key (the catalog's Ed25519 key), bound to
/// the node certificate once at start.
pub struct ReceiptSigner {
    catalog: Arc<Catalog>,
    federation: String,
    controller: String,
    node_uri: String,
    public_key_hex: String,
    binding_hex: String,
    chain_pem: String,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("node", &self.node_uri)
            .finish_non_exhaustive()
    }
}

impl ReceiptSigner {
    /// A signer for node `node` (its identity) whose TLS key and chain are
    /// `key_pem` and `chain_pem` (leaf first, then the organisation CA).
    pub fn new(
        catalog: Arc<Catalog>,
        node: &LeafIdentity,
        key_pem: &str,
        chain_pem: &str,
    ) -> Result<Self, ReceiptError> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ReceiptError::Signing(format!("node key: {e}")))?;
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(ReceiptError::Signing("node key is not PKCS#8".into()));
        };
        let rng = ring::rand::SystemRandom::new();
        let tls_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| ReceiptError::Signing(format!("node key is not ECDSA P-256: {e}")))?;
        let node_uri = node.uri();
        let public_key_hex = hex::encode(catalog.signer().public_key());
        let binding = tls_key
            .sign(&rng, &binding_message(&node_uri, &public_key_hex))
            .map_err(|_| ReceiptError::Signing("binding signature failed".into()))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
        if chain.len() < 2 {
            return Err(ReceiptError::Signing(
                "node certificate file must hold the node and its organisation CA certificate"
                    .into(),
            ));
        }
        Ok(Self {
            catalog,
            federation: node.federation.clone(),
            controller: node.organisation.clone(),
            node_uri,
            public_key_hex,
            binding_hex: hex::encode(binding.as_ref()),
            chain_pem: chain_pem.to_owned(),
        })
    }

    /// The receipt for `record` after `event` (`consent-given`,
    /// `consent-withdrawn`), issued at `now` (Unix seconds).
    pub fn issue(
        &self,
        record: &ConsentRecord,
        event: &str,
        now: i64,
    ) -> Result<Receipt, ReceiptError> {
        let payload = ReceiptPayload {
            schema: SCHEMA.into(),
            receipt_id: super::new_record_id().map_err(|e| ReceiptError::Signing(e.to_string()))?,
            event: event.into(),
            issued_at_unix: now,
            issued_at: super::format_time(now),
            federation: self.federation.clone(),
            controller: self.controller.clone(),
            controller_node: self.node_uri.clone(),
            record_id: record.record_id.clone(),
            subject: record.subject_id.clone(),
            dataset: record.dataset.clone(),
            purposes: record
                .purposes
                .iter()
                .map(|p| ReceiptPurpose {
                    purpose: p.as_str().into(),
                    dpv: dpv_purpose_iri(*p).into(),
                })
                .collect(),
            status: record.status.as_str().into(),
            status_dpv: dpv_status_iri(record.status).into(),
            legal_basis: LEGAL_BASIS_IRI.into(),
            given_at_unix: record.given_at,
            withdrawn_at_unix: record.withdrawn_at,
            expires_at_unix: record.expires_at,
            collection_method: record.collection_method.as_str().into(),
        };
        let text = serde_json::to_string(&payload)
            .map_err(|e| ReceiptError::Signing(format!("cannot encode receipt: {e}")))?;
        let sig = self
            .catalog
            .signer()
            .sign_detached(&receipt_message(&text))
            .map_err(|e| ReceiptError::Signing(e.to_string()))?;
        Ok(Receipt {
            payload: text,
            signature: hex::encode(sig),
            signer_public_key: self.public_key_hex.clone(),
            node: self.node_uri.clone(),
            key_binding_signature: self.binding_hex.clone(),
            certificate_chain_pem: self.chain_pem.clone(),
        })
    }
}

/// A receipt that verified, with what it states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    pub payload: ReceiptPayload,
    /// The signing node (from its certificate).
    pub node: LeafIdentity,
}

/// Verifies a receipt offline against the federation root certificate
/// (`root_pem`). See the module documentation for what is checked.
pub fn verify(receipt_json: &[u8], root_pem: &str) -> Result<VerifiedReceipt, ReceiptError> {
    let receipt: Receipt =
        serde_json::from_slice(receipt_json).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    // Read (unverified) for the issue time and the claimed controller; every
    // field is checked against the signature below before it is returned.
    let claimed: ReceiptPayload = serde_json::from_str(&receipt.payload)
        .map_err(|e| ReceiptError::Malformed(format!("payload: {e}")))?;
    let not_controller = |reason: String| ReceiptError::NotController {
        controller: crate::text::shown(&claimed.controller, 80),
        reason,
    };

    // The chain: node certificate, organisation CA, to the root.
    let root = CertificateDer::from_pem_slice(root_pem.as_bytes())
        .map_err(|e| ReceiptError::Root(e.to_string()))?;
    let anchor =
        webpki::anchor_from_trusted_cert(&root).map_err(|e| ReceiptError::Root(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(receipt.certificate_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ReceiptError::Malformed(format!("certificate chain: {e}")))?;
    let [leaf, ca] = chain.as_slice() else {
        return Err(ReceiptError::Malformed(
            "certificate chain must hold the node and its organisation CA certificate".into(),
        ));
    };
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| ReceiptError::Chain(format!("node certificate: {e}")))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(claimed.issued_at_unix).unwrap_or(0),
    ));
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let anchors = [anchor];
    let path = ee
        .verify_for_usage(
            algs.all,
            &anchors,
            std::slice::from_ref(ca),
            at,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| ReceiptError::Chain(format!("{e:?}")))?;

    // The CA is the controller's own organisation CA, and the leaf one of
    // its nodes.
    let ca_facts = cert_facts(ca.as_ref()).map_err(ReceiptError::Malformed)?;
    let issuer_spki = crate::pki::membership::sha256_hex(path.issuer_spki().as_ref());
    if issuer_spki != ca_facts.spki_sha256 {
        return Err(ReceiptError::Chain(
            "node certificate is not issued by the included CA".into(),
        ));
    }
    if ca_facts.uris != [org_uri(&claimed.federation, &claimed.controller)] {
        return Err(not_controller(
            "the issuing CA is another organisation's".into(),
        ));
    }
    let leaf_facts = cert_facts(leaf.as_ref()).map_err(ReceiptError::Malformed)?;
    let [uri] = leaf_facts.uris.as_slice() else {
        return Err(not_controller(
            "node certificate has no single identity".into(),
        ));
    };
    let node: LeafIdentity = uri
        .parse()
        .map_err(|e: crate::pki::identity::IdentityError| not_controller(e.to_string()))?;
    if !matches!(node.subject, Subject::Node(_))
        || node.organisation != claimed.controller
        || node.federation != claimed.federation
    {
        return Err(not_controller(format!(
            "certificate identifies `{}`",
            crate::text::shown(&node.uri(), 200)
        )));
    }
    if receipt.node != node.uri() || claimed.controller_node != node.uri() {
        return Err(not_controller(
            "receipt names another node than its certificate".into(),
        ));
    }

    // The Ed25519 key is bound to that node certificate.
    let binding = hex::decode(&receipt.key_binding_signature).map_err(|_| ReceiptError::Binding)?;
    ee.verify_signature(
        webpki::ring::ECDSA_P256_SHA256,
        &binding_message(&receipt.node, &receipt.signer_public_key),
        &binding,
    )
    .map_err(|_| ReceiptError::Binding)?;

    // The receipt itself.
    let key = hex::decode(&receipt.signer_public_key).map_err(|_| ReceiptError::Signature)?;
    let sig = hex::decode(&receipt.signature).map_err(|_| ReceiptError::Signature)?;
    UnparsedPublicKey::new(&ED25519, &key)
        .verify(&receipt_message(&receipt.payload), &sig)
        .map_err(|_| ReceiptError::Signature)?;
    if claimed.schema != SCHEMA {
        return Err(ReceiptError::Malformed(format!(
            "schema `{}` is not `{SCHEMA}`",
            crate::text::shown(&claimed.schema, 80)
        )));
    }
    Ok(VerifiedReceipt {
        payload: claimed,
        node,
    })
}

/// The collection method a caller's change is recorded with: the subject
/// themself, or the controller's officer for them.
pub fn method_for(acting_as_subject: bool) -> CollectionMethod {
    if acting_as_subject {
        CollectionMethod::CitizenSelfService
    } else {
        CollectionMethod::RecordedByController
    }
}
