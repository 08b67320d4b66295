//! Who is calling: the federation trust state and the rustls client
//! certificate verifier built on it.
//!
//! A client certificate is accepted only if
//! 1. it chains (webpki) to the federation root through exactly one
//!    organisation CA listed in the signed membership,
//! 2. it is valid at the node clock's current time,
//! 3. its SAN URI parses as `allmende://<federation>/<org>/node|user/<name>`,
//!    names this federation and the organisation of the issuing CA,
//! 4. user certificates carry a known role,
//! 5. neither the leaf nor its CA is on the membership's deny list.
//!
//! The membership (and so the deny list) is swapped atomically at run time;
//! new handshakes and every request on an existing connection see the change.

use super::ca::cert_facts;
use super::identity::{LeafIdentity, Principal, Role, Subject};
use super::membership::{Member, MembershipDoc, MembershipError, SignedMembership, sha256_hex};
use super::onboarding::{Onboarding, parse_onboarding_uri};
use crate::clock::SharedClock;
use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Why a certificate was refused. The variant name is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("certificate is not valid yet")]
    NotYetValid,
    #[error("certificate has expired")]
    Expired,
    #[error("certificate does not chain to the federation root: {0}")]
    UnknownIssuer(String),
    #[error("certificate is not issued by a member organisation's CA")]
    NotAMemberCa,
    #[error("certificate identity is unparsable: {0}")]
    BadIdentity(String),
    #[error("certificate names organisation `{claimed}` but was issued by the CA of `{issuer}`")]
    OrgMismatch { claimed: String, issuer: String },
    #[error("certificate names federation `{0}`")]
    WrongFederation(String),
    #[error("certificate is on the federation's deny list")]
    Revoked,
    #[error("no client certificate")]
    NoCertificate,
    #[error("the organisation's kind changed in the membership; reconnect")]
    KindChanged,
}

impl AuthError {
    /// A short stable label for metrics and aggregated audit entries.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Expired => "expired",
            AuthError::UnknownIssuer(_) => "unknown_issuer",
            AuthError::NotAMemberCa => "not_a_member_ca",
            AuthError::BadIdentity(_) => "bad_identity",
            AuthError::OrgMismatch { .. } => "org_mismatch",
            AuthError::WrongFederation(_) => "wrong_federation",
            AuthError::Revoked => "revoked",
            AuthError::NoCertificate => "no_certificate",
            AuthError::KindChanged => "kind_changed",
        }
    }
}

/// One consistent view of the federation: membership indexed for lookups.
#[derive(Debug)]
pub struct TrustSnapshot {
    pub doc: MembershipDoc,
    /// The signed bytes as received (served by `Federation.GetMembership`).
    pub signed_json: Vec<u8>,
    by_ca_spki: HashMap<String, Member>,
    denied: std::collections::HashSet<String>,
}

impl TrustSnapshot {
    fn new(doc: MembershipDoc, signed_json: Vec<u8>) -> Self {
        let by_ca_spki = doc
            .members
            .iter()
            .map(|m| (m.ca_spki_sha256.clone(), m.clone()))
            .collect();
        let denied = doc.denied.iter().map(|d| d.cert_sha256.clone()).collect();
        Self {
            doc,
            signed_json,
            by_ca_spki,
            denied,
        }
    }

    /// True when a certificate fingerprint is on the deny list.
    pub fn is_denied(&self, cert_sha256: &str) -> bool {
        self.denied.contains(cert_sha256)
    }
}

/// The federation trust state of one node.
#[derive(Debug)]
pub struct Trust {
    root_der: CertificateDer<'static>,
    root_public_key: Vec<u8>,
    root_sha256: String,
    snapshot: ArcSwap<TrustSnapshot>,
    clock: SharedClock,
    algs: WebPkiSupportedAlgorithms,
    /// The installed membership version, for open streams to re-check on
    /// every change.
    changes: tokio::sync::watch::Sender<u64>,
}

/// Errors building the trust state.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("root certificate: {0}")]
    Root(String),
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

impl Trust {
    /// Builds the trust state from the root certificate (DER) and a signed
    /// membership file.
    pub fn new(
        root_der: Vec<u8>,
        signed_membership_json: &[u8],
        clock: SharedClock,
    ) -> Result<Arc<Self>, TrustError> {
        let facts = cert_facts(&root_der).map_err(TrustError::Root)?;
        let root_der = CertificateDer::from(root_der);
        webpki::anchor_from_trusted_cert(&root_der).map_err(|e| TrustError::Root(e.to_string()))?;
        let doc = SignedMembership::from_json(signed_membership_json)?.verify(&facts.public_key)?;
        if doc.root_ca_sha256 != facts.sha256 {
            return Err(MembershipError::WrongRoot {
                found: doc.root_ca_sha256,
                expected: facts.sha256,
            }
            .into());
        }
        Ok(Arc::new(Self {
            root_der,
            root_public_key: facts.public_key,
            root_sha256: facts.sha256,
            snapshot: ArcSwap::from_pointee(TrustSnapshot::new(
                doc,
                signed_membership_json.to_vec(),
            )),
            clock,
            algs: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            changes: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Notices of membership changes (the installed version).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The current view.
    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.snapshot.load_full()
    }

    /// The federation name.
    pub fn federation(&self) -> String {
        self.snapshot.load().doc.federation.clone()
    }

    /// The root certificate (DER).
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// Verifies and installs a newer signed membership. Returns the new
    /// version; the same version again is a no-op; an older one is refused.
    pub fn install_membership(&self, signed_json: &[u8]) -> Result<u64, MembershipError> {
        let doc = SignedMembership::from_json(signed_json)?.verify(&self.root_public_key)?;
        let current = self.snapshot.load();
        if doc.federation != current.doc.federation {
            return Err(MembershipError::WrongFederation {
                found: doc.federation,
                expected: current.doc.federation.clone(),
            });
        }
        if doc.root_ca_sha256 != self.root_sha256 {
            return Err(MembershipError::WrongRoot {
                found: doc.root_ca_sha256,
                expected: self.root_sha256.clone(),
            });
        }
        if doc.version < current.doc.version {
            return Err(MembershipError::Rollback {
                offered: doc.version,
                current: current.doc.version,
            });
        }
        if doc.version == current.doc.version {
            return Ok(doc.version);
        }
        let v = doc.version;
        self.snapshot
            .store(Arc::new(TrustSnapshot::new(doc, signed_json.to_vec())));
        self.changes.send_replace(v);
        tracing::info!(version = v, "membership installed");
        Ok(v)
    }

    /// Authenticates a certificate chain (leaf first, then intermediates) at
    /// the node clock's time and binds it to a [`Principal`].
    pub fn authenticate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Principal, AuthError> {
        let now = UnixTime::since_unix_epoch(self.clock.since_epoch());
        self.authenticate_at(end_entity, intermediates, now)
    }

    fn authenticate_at(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Principal, AuthError> {
        let snap = self.snapshot.load();
        let issuer_spki = self.client_path(end_entity, intermediates, now)?;
        let member = snap
            .by_ca_spki
            .get(&issuer_spki)
            .ok_or(AuthError::NotAMemberCa)?;
        let facts = cert_facts(end_entity.as_ref()).map_err(AuthError::BadIdentity)?;
        if snap.is_denied(&facts.sha256) || snap.is_denied(&member.ca_cert_sha256) {
            return Err(AuthError::Revoked);
        }
        let [uri] = facts.uris.as_slice() else {
            return Err(AuthError::BadIdentity(format!(
                "expected exactly one identity URI, found {}",
                facts.uris.len()
            )));
        };
        let id: LeafIdentity = uri
            .parse()
            .map_err(|e: super::identity::IdentityError| AuthError::BadIdentity(e.to_string()))?;
        if id.federation != snap.doc.federation {
            return Err(AuthError::WrongFederation(id.federation));
        }
        if id.organisation != member.org {
            return Err(AuthError::OrgMismatch {
                claimed: id.organisation,
                issuer: member.org.clone(),
            });
        }
        let role = match &id.subject {
            Subject::Node(_) => None,
            Subject::User(_) => {
                let [ou] = facts.org_units.as_slice() else {
                    return Err(AuthError::BadIdentity(
                        "user certificate without one role".into(),
                    ));
                };
                Some(
                    ou.parse::<Role>()
                        .map_err(|e| AuthError::BadIdentity(e.to_string()))?,
                )
            }
        };
        Ok(Principal {
            federation: id.federation,
            organisation: id.organisation,
            organisation_kind: member.kind,
            subject: id.subject,
            role,
            certificate_sha256: facts.sha256,
            not_after: facts.not_after,
            issuer_ca_spki_sha256: issuer_spki,
        })
    }

    /// Verifies a client certificate's path (webpki, client-auth usage) to
    /// the root at `now` through `intermediates`; returns the lower-case
    /// hex SHA-256 of the issuing certificate's SPKI.
    fn client_path(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, AuthError> {
        let anchor = webpki::anchor_from_trusted_cert(&self.root_der)
            .map_err(|e| AuthError::UnknownIssuer(e.to_string()))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| AuthError::BadIdentity(e.to_string()))?;
        let anchors = [anchor];
        let path = ee
            .verify_for_usage(
                self.algs.all,
                &anchors,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| match e {
                webpki::Error::CertExpired { .. } => AuthError::Expired,
                webpki::Error::CertNotValidYet { .. } => AuthError::NotYetValid,
                other => AuthError::UnknownIssuer(format!("{other:?}")),
            })?;
        Ok(sha256_hex(path.issuer_spki().as_ref()))
    }

    /// Authenticates an invitation's onboarding certificate
    /// (`pki::onboarding`): issued directly by the federation root (the
    /// presented intermediates are ignored), valid now, client-auth usage,
    /// exactly one onboarding URI of this federation, not on the deny list.
    /// Whether its invitation is still good is the join's check (so a
    /// replay is refused with its reason and audited). The verifier accepts it only
    /// at a node that holds the root, and the auth layer only for the join
    /// call.
    pub fn authenticate_onboarding(
        &self,
        end_entity: &CertificateDer<'_>,
    ) -> Result<Onboarding, AuthError> {
        let now = UnixTime::since_unix_epoch(self.clock.since_epoch());
        let snap = self.snapshot.load();
        // No intermediates: only a certificate the root signed itself.
        self.client_path(end_entity, &[], now)?;
        let facts = cert_facts(end_entity.as_ref()).map_err(AuthError::BadIdentity)?;
        if snap.is_denied(&facts.sha256) {
            return Err(AuthError::Revoked);
        }
        let [uri] = facts.uris.as_slice() else {
            return Err(AuthError::BadIdentity(format!(
                "expected exactly one identity URI, found {}",
                facts.uris.len()
            )));
        };
        let (federation, organisation, invitation) =
            parse_onboarding_uri(uri).map_err(|e| AuthError::BadIdentity(e.to_string()))?;
        if federation != snap.doc.federation {
            return Err(AuthError::WrongFederation(federation));
        }
        Ok(Onboarding {
            federation,
            organisation,
            invitation,
            certificate_sha256: facts.sha256,
            not_after: facts.not_after,
        })
    }

    /// Re-checks an onboarding connection for a request: not denied, not
    /// expired.
    pub fn recheck_onboarding(&self, o: &Onboarding) -> Result<(), AuthError> {
        let snap = self.snapshot.load();
        if snap.is_denied(&o.certificate_sha256) {
            return Err(AuthError::Revoked);
        }
        if self.clock.now_unix_secs() > o.not_after {
            return Err(AuthError::Expired);
        }
        Ok(())
    }

    /// Authenticates a leaf certificate (DER) that was not presented in
    /// this node's own handshake — the issuer and the user certificate of
    /// an on-behalf-of assertion relayed through the hub (`docs/relay.md`)
    /// — exactly as [`Trust::authenticate`] does a handshake's chain, with
    /// the member organisations' CA certificates of the signed membership
    /// as the possible intermediates. The one other way a [`Principal`] is
    /// built.
    pub fn authenticate_leaf(&self, leaf_der: &[u8]) -> Result<Principal, AuthError> {
        use rustls::pki_types::pem::PemObject;
        let cas: Vec<CertificateDer<'static>> = self
            .snapshot
            .load()
            .doc
            .members
            .iter()
            .filter_map(|m| CertificateDer::from_pem_slice(m.ca_cert_pem.as_bytes()).ok())
            .collect();
        self.authenticate(&CertificateDer::from(leaf_der), &cas)
    }

    /// Re-checks a bound principal for a request (or the next message of a
    /// stream) on an existing connection, against the current membership:
    /// the leaf or its issuing CA revoked, the organisation removed from the
    /// membership or its CA replaced, its kind changed, or the certificate
    /// expired since the handshake ⇒ refused.
    pub fn recheck(&self, p: &Principal) -> Result<(), AuthError> {
        let snap = self.snapshot.load();
        let member = snap
            .by_ca_spki
            .get(&p.issuer_ca_spki_sha256)
            .ok_or(AuthError::NotAMemberCa)?;
        if member.org != p.organisation {
            return Err(AuthError::OrgMismatch {
                claimed: p.organisation.clone(),
                issuer: member.org.clone(),
            });
        }
        if member.kind != p.organisation_kind {
            return Err(AuthError::KindChanged);
        }
        if snap.is_denied(&p.certificate_sha256) || snap.is_denied(&member.ca_cert_sha256) {
            return Err(AuthError::Revoked);
        }
        if self.clock.now_unix_secs() > p.not_after {
            return Err(AuthError::Expired);
        }
        Ok(())
    }
}

/// Counts refused handshakes by reason.
pub trait RefusalSink: Send + Sync + std::fmt::Debug {
    fn refused(&self, reason: &AuthError);
}

/// The rustls verifier: mandatory client certificates checked by [`Trust`].
#[derive(Debug)]
pub struct FederationClientVerifier {
    trust: Arc<Trust>,
    sink: Arc<dyn RefusalSink>,
    hints: Vec<DistinguishedName>,
    /// Also accept invitations' onboarding certificates (a node holding
    /// the root only; [`Trust::authenticate_onboarding`]).
    onboarding: bool,
}

impl FederationClientVerifier {
    pub fn new(trust: Arc<Trust>, sink: Arc<dyn RefusalSink>) -> Self {
        Self {
            trust,
            sink,
            hints: Vec::new(),
            onboarding: false,
        }
    }

    /// Accepts onboarding certificates too (the node holding the root).
    #[must_use]
    pub fn with_onboarding(mut self, accept: bool) -> Self {
        self.onboarding = accept;
        self
    }
}

impl ClientCertVerifier for FederationClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bound = match self.trust.authenticate(end_entity, intermediates) {
            // Not a member's certificate: at the root's node, perhaps an
            // invitation's onboarding certificate; the member refusal is
            // what is counted otherwise.
            Err(AuthError::NotAMemberCa) if self.onboarding => self
                .trust
                .authenticate_onboarding(end_entity)
                .map(|_| ())
                .map_err(|_| AuthError::NotAMemberCa),
            other => other.map(|_| ()),
        };
        match bound {
            Ok(()) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                self.sink.refused(&e);
                tracing::debug!(reason = e.label(), error = %e, "client certificate refused");
                Err(match e {
                    AuthError::Expired => {
                        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                    }
                    AuthError::NotYetValid => {
                        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
                    }
                    AuthError::Revoked => {
                        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
                    }
                    AuthError::UnknownIssuer(_) | AuthError::NotAMemberCa => {
                        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                    }
                    _ => rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure,
                    ),
                })
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.trust.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.trust.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.algs.supported_schemes()
    }
}

/// How long a node waits between checks of its membership file.
pub const MEMBERSHIP_POLL: Duration = Duration::from_secs(1);
