//! The gRPC server: the authentication layer in front of every service, the
//! service implementations, health and reflection. It turns requests into
//! calls on domain types and domain errors into status via
//! `error::ApiError` (mapped to a status in `status`). Calls this node makes to other nodes are
//! `federation`'s; this module may use `federation`, never the reverse, and
//! only `node` (the server assembly) uses this module (`tidy.rs`).

mod access;
mod audit;
pub mod catalog;
mod connectors;
mod consent;
pub mod convert;
mod federation;
mod flight;
mod grants;
mod layer;
pub mod limits;
mod obligations;
mod opendata;
mod policy;
mod recheck;
mod relay;
pub mod status;

pub use access::AccessService;
pub use audit::AuditService;
pub use catalog::CatalogService;
pub use connectors::ConnectorsService;
pub use consent::ConsentService;
pub use federation::FederationService;
pub use flight::FlightFace;
pub use grants::GrantsService;
pub use obligations::ObligationsService;
pub use opendata::OpenDataService;
pub use policy::{PolicyService, parse_action, parse_purpose, parse_resource};
pub use relay::RelayService;

use crate::error::ApiError;
use crate::metrics::{NodeMetrics, RpcLabels};
use crate::pki::{Principal, Trust};
use crate::policy::Action;
use crate::tls::{Peer, PeerInfo};
use std::sync::Arc;
use tracing::Instrument;

/// How a gRPC method is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallRule {
    /// Decided by `PolicyPoint::authorize` (Cedar, error = deny) with this
    /// action, and audited before anything is read or changed.
    Decided(Action),
    /// The witness protocol between nodes: decided by Cedar with this action
    /// on every call; allowed calls are not written one by one (each entry
    /// would need a new checkpoint to be witnessed, and the log would never
    /// come to rest); denials are audited. People calling it are decided and
    /// audited like `Decided`.
    Witness(Action),
    /// Not decided by the policies, for the reason given. These calls read
    /// nothing personal and change nothing.
    Exempt(&'static str),
}

/// Every method the node serves (`/package.Service/Method`) and how it is
/// decided. `tests/tests/hardening.rs` compares this table with the
/// services' descriptor set and probes every decided method with a caller
/// who must be refused, expecting `PERMISSION_DENIED` and an audit entry;
/// `ARCHITECTURE.md` lists the exemptions.
pub const CALLS: &[(&str, CallRule)] = &[
    ("/allmende.v1.Access/Fetch", CallRule::Decided(Action::Read)),
    (
        "/allmende.v1.Audit/Query",
        CallRule::Decided(Action::ReadAudit),
    ),
    (
        "/allmende.v1.Audit/MyAccesses",
        CallRule::Decided(Action::ReadAudit),
    ),
    (
        "/allmende.v1.Audit/Export",
        CallRule::Decided(Action::ExportAudit),
    ),
    (
        "/allmende.v1.Audit/Status",
        CallRule::Witness(Action::VerifyAudit),
    ),
    (
        "/allmende.v1.Audit/VerifyLog",
        CallRule::Decided(Action::VerifyAudit),
    ),
    (
        "/allmende.v1.Audit/GetCheckpoint",
        CallRule::Witness(Action::VerifyAudit),
    ),
    (
        "/allmende.v1.Audit/AddCosignature",
        CallRule::Witness(Action::CosignCheckpoint),
    ),
    (
        "/allmende.v1.Audit/GetWitnessed",
        CallRule::Witness(Action::VerifyAudit),
    ),
    (
        "/allmende.v1.Catalog/List",
        CallRule::Exempt(
            "catalog metadata is federated to every member by design; no rows, no personal data",
        ),
    ),
    (
        "/allmende.v1.Catalog/Notify",
        CallRule::Decided(Action::ExchangeMetadata),
    ),
    (
        "/allmende.v1.Catalog/Search",
        CallRule::Exempt("searches the federated catalog's public metadata"),
    ),
    (
        "/allmende.v1.Catalog/Get",
        CallRule::Exempt("reads one entry of the federated catalog's public metadata"),
    ),
    (
        "/allmende.v1.Catalog/Export",
        CallRule::Exempt(
            "exports the federated catalog's public metadata, exactly what an unfiltered search shows",
        ),
    ),
    (
        "/allmende.v1.Connectors/Register",
        CallRule::Decided(Action::RegisterConnector),
    ),
    (
        "/allmende.v1.Connectors/SetEnabled",
        CallRule::Decided(Action::RegisterConnector),
    ),
    (
        "/allmende.v1.Connectors/Remove",
        CallRule::Decided(Action::RegisterConnector),
    ),
    (
        "/allmende.v1.Connectors/List",
        CallRule::Decided(Action::ListConnectors),
    ),
    (
        "/allmende.v1.Consent/Import",
        CallRule::Decided(Action::ImportConsent),
    ),
    (
        "/allmende.v1.Consent/Withdraw",
        CallRule::Decided(Action::RecordConsent),
    ),
    (
        "/allmende.v1.Consent/Get",
        CallRule::Decided(Action::ReadConsent),
    ),
    (
        "/allmende.v1.Consent/Give",
        CallRule::Decided(Action::RecordConsent),
    ),
    (
        "/allmende.v1.Consent/Erase",
        CallRule::Decided(Action::EraseSubject),
    ),
    (
        "/allmende.v1.Consent/WhoAccessed",
        CallRule::Decided(Action::ReadAudit),
    ),
    (
        "/allmende.v1.Federation/WhoAmI",
        CallRule::Exempt("echoes the caller's own certificate identity"),
    ),
    (
        "/allmende.v1.Federation/Hello",
        CallRule::Decided(Action::ExchangeMetadata),
    ),
    (
        "/allmende.v1.Federation/ListPeers",
        CallRule::Exempt("lists member nodes this node has met: federation metadata"),
    ),
    (
        "/allmende.v1.Federation/GetMembership",
        CallRule::Exempt("the root-signed membership document every member holds"),
    ),
    (
        "/allmende.v1.Federation/RemoveMember",
        CallRule::Decided(Action::ManageFederation),
    ),
    (
        "/allmende.v1.Federation/Invite",
        CallRule::Decided(Action::ManageFederation),
    ),
    (
        "/allmende.v1.Federation/Join",
        CallRule::Decided(Action::ManageFederation),
    ),
    (
        "/allmende.v1.Federation/RegisterNode",
        CallRule::Decided(Action::ExchangeMetadata),
    ),
    (
        "/allmende.v1.Grants/RequestAccess",
        CallRule::Decided(Action::RequestAccess),
    ),
    (
        "/allmende.v1.Grants/ListRequests",
        CallRule::Decided(Action::ViewRequest),
    ),
    (
        "/allmende.v1.Grants/GetRequest",
        CallRule::Decided(Action::ViewRequest),
    ),
    (
        "/allmende.v1.Grants/Approve",
        CallRule::Decided(Action::ApproveRequest),
    ),
    (
        "/allmende.v1.Grants/Reject",
        CallRule::Decided(Action::ApproveRequest),
    ),
    (
        "/allmende.v1.Grants/Revoke",
        CallRule::Decided(Action::Revoke),
    ),
    (
        "/allmende.v1.Grants/ListGrants",
        CallRule::Decided(Action::ReadAudit),
    ),
    (
        "/allmende.v1.Grants/ListNotices",
        CallRule::Decided(Action::ReadAudit),
    ),
    (
        "/allmende.v1.Grants/DeliverNotice",
        CallRule::Decided(Action::ExchangeMetadata),
    ),
    (
        "/allmende.v1.Grants/ListDuties",
        CallRule::Decided(Action::ReadAudit),
    ),
    (
        "/allmende.v1.Grants/AttestDeletion",
        CallRule::Decided(Action::AttestDeletion),
    ),
    (
        "/allmende.v1.OpenData/Publish",
        CallRule::Decided(Action::PublishOpenData),
    ),
    (
        "/allmende.v1.OpenData/ListReleases",
        CallRule::Exempt(
            "lists the published open-data releases: public by design, the open-data API serves the same manifests to anyone",
        ),
    ),
    (
        "/allmende.v1.OpenData/Budget",
        CallRule::Decided(Action::PublishOpenData),
    ),
    (
        "/allmende.v1.Obligations/Record",
        CallRule::Decided(Action::ManageObligations),
    ),
    (
        "/allmende.v1.Obligations/Change",
        CallRule::Decided(Action::ManageObligations),
    ),
    (
        "/allmende.v1.Obligations/List",
        CallRule::Decided(Action::ReadCompliance),
    ),
    (
        "/allmende.v1.Obligations/Status",
        CallRule::Decided(Action::ReadCompliance),
    ),
    (
        "/allmende.v1.Obligations/Rejected",
        CallRule::Decided(Action::ReadCompliance),
    ),
    (
        "/arrow.flight.protocol.FlightService/GetFlightInfo",
        CallRule::Decided(Action::Read),
    ),
    (
        "/arrow.flight.protocol.FlightService/GetSchema",
        CallRule::Decided(Action::Read),
    ),
    (
        "/arrow.flight.protocol.FlightService/DoGet",
        CallRule::Decided(Action::Read),
    ),
    (
        "/arrow.flight.protocol.FlightService/ListFlights",
        CallRule::Exempt(
            "lists the datasets the caller may read with their schema: catalog metadata, each decided by the read rules without auditing; no row is read",
        ),
    ),
    (
        "/arrow.flight.protocol.FlightService/Handshake",
        CallRule::Exempt("refused with UNIMPLEMENTED; reads and changes nothing"),
    ),
    (
        "/arrow.flight.protocol.FlightService/PollFlightInfo",
        CallRule::Exempt("refused with UNIMPLEMENTED; reads and changes nothing"),
    ),
    (
        "/arrow.flight.protocol.FlightService/DoPut",
        CallRule::Exempt("refused with UNIMPLEMENTED; reads and changes nothing"),
    ),
    (
        "/arrow.flight.protocol.FlightService/DoExchange",
        CallRule::Exempt("refused with UNIMPLEMENTED; reads and changes nothing"),
    ),
    (
        "/arrow.flight.protocol.FlightService/DoAction",
        CallRule::Exempt("refused with UNIMPLEMENTED; reads and changes nothing"),
    ),
    (
        "/arrow.flight.protocol.FlightService/ListActions",
        CallRule::Exempt("refused with UNIMPLEMENTED; reads and changes nothing"),
    ),
    (
        "/allmende.v1.Policy/Explain",
        CallRule::Exempt(
            "a what-if for the caller's own request; decides nothing, changes nothing",
        ),
    ),
    (
        "/allmende.v1.Policy/Reload",
        CallRule::Decided(Action::ManageFederation),
    ),
    (
        "/allmende.v1.Policy/GetPolicySet",
        CallRule::Exempt("the policies in force are public by design (transparent decisions)"),
    ),
    (
        "/allmende.v1.Relay/Fetch",
        // Decided by the owner node on the user's certificate identity
        // (Cedar `read`); the forwarding node admits only users of its own
        // organisation, its refusals audited as `read` denials.
        CallRule::Decided(Action::Read),
    ),
    (
        "/allmende.v1.Relay/Forward",
        CallRule::Decided(Action::ExchangeMetadata),
    ),
    (
        "/allmende.v1.Relay/Serve",
        CallRule::Decided(Action::ExchangeMetadata),
    ),
    (
        "/allmende.v1.Relay/PublishKeyPackage",
        CallRule::Decided(Action::ExchangeMetadata),
    ),
    (
        "/grpc.health.v1.Health/Check",
        CallRule::Exempt("standard health check"),
    ),
    (
        "/grpc.health.v1.Health/Watch",
        CallRule::Exempt("standard health check"),
    ),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        CallRule::Exempt("standard reflection: the public wire contract"),
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        CallRule::Exempt("standard reflection: the public wire contract"),
    ),
];

/// The one method a connection made with an invitation's onboarding
/// certificate may call (`pki::onboarding`).
pub const JOIN_METHOD: &str = "/allmende.v1.Federation/Join";

/// The caller of a request, as bound by [`AuthLayer`] (or, on a server
/// without it, by the accept loop). An onboarding connection has none.
pub fn principal<T>(req: &tonic::Request<T>) -> Result<Arc<Principal>, tonic::Status> {
    let ext = req.extensions();
    ext.get::<PeerInfo>()
        .map(|p| p.principal.clone())
        .or_else(|| match ext.get::<Peer>() {
            Some(Peer::Member(p)) => Some(p.principal.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            tonic::Status::from(ApiError::Unauthenticated("no authenticated peer".into()))
        })
}

/// Tower layer run for every request: re-checks the connection's principal
/// against the current deny list and clock, opens the request span (org,
/// user, and empty `dataset`/`purpose` fields that handlers record), and
/// counts the request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    pub trust: Arc<Trust>,
    pub metrics: Arc<NodeMetrics>,
    /// Where an onboarding connection's refused calls are audited.
    pub audit: crate::audit::AuditLog,
    /// Refused calls audited so far per onboarding certificate.
    pub onboarding_refusals: OnboardingRefusals,
}

/// How many refused calls of one onboarding certificate are audited one by
/// one; later ones are refused alike and only counted
/// (`allmende_tls_handshakes_refused_total{reason="onboarding_scope"}`), so
/// an invitation's holder cannot grow the audit log without bound.
pub const ONBOARDING_AUDITED_REFUSALS: u32 = 16;

/// Refused calls audited per onboarding certificate (one small entry per
/// invitation the city issued).
#[derive(Debug, Clone, Default)]
pub struct OnboardingRefusals(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

impl OnboardingRefusals {
    /// Whether the next refusal of certificate `sha256` is audited one by
    /// one (a poisoned count audits: better one entry too many).
    fn audit_next(&self, sha256: &str) -> bool {
        match crate::locks::lock(&self.0, "onboarding refusals") {
            Ok(mut m) => {
                let n = m.entry(sha256.to_owned()).or_insert(0);
                *n = n.saturating_add(1);
                *n <= ONBOARDING_AUDITED_REFUSALS
            }
            Err(_) => true,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        layer::Layered {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`AuthLayer`].
pub type AuthService<S> = layer::Layered<S, AuthLayer>;

impl<S: layer::Inner<B>, B: Send + 'static> layer::Around<S, B> for AuthLayer {
    fn around(
        &self,
        mut inner: S,
        mut req: http::Request<B>,
    ) -> layer::BoxFut<S::Response, S::Error> {
        let method = req.uri().path().to_owned();
        let peer = match req.extensions().get::<Peer>().cloned() {
            Some(Peer::Onboarding(o)) => return self.onboarding(inner, req, o, method),
            Some(Peer::Member(p)) => {
                req.extensions_mut().insert(p.clone());
                Some(p)
            }
            None => req.extensions().get::<PeerInfo>().cloned(),
        };
        let layer = self.clone();
        Box::pin(async move {
            let refusal = match &peer {
                None => Some(ApiError::Unauthenticated("no authenticated peer".into())),
                Some(p) => layer.trust.recheck(&p.principal).err().map(|e| {
                    layer.metrics.refuse(e.label());
                    ApiError::Unauthenticated(e.to_string())
                }),
            };
            if let Some(e) = refusal {
                let status = tonic::Status::from(e);
                count(&layer.metrics, &method, status.code());
                return Ok(status.into_http());
            }
            let (org, user) = peer
                .as_ref()
                .map(|p| {
                    (
                        p.principal.organisation.clone(),
                        p.principal.subject.name().to_owned(),
                    )
                })
                .unwrap_or_default();
            let span = tracing::info_span!(
                "rpc",
                %method,
                org = %org,
                user = %user,
                dataset = tracing::field::Empty,
                purpose = tracing::field::Empty,
            );
            let resp = inner.call(req).instrument(span).await?;
            // Streams end when the caller stops being trusted mid-response.
            let resp = match peer {
                Some(p) => resp.map(|body| {
                    tonic::body::Body::new(recheck::RecheckBody::new(
                        body,
                        layer.trust.clone(),
                        p.principal,
                    ))
                }),
                None => resp,
            };
            count(&layer.metrics, &method, response_code(&resp));
            Ok(resp)
        })
    }
}

impl AuthLayer {
    /// A request on a connection made with an invitation's onboarding
    /// certificate: re-checked (still not a member, not denied, not
    /// expired), and passed on only for [`JOIN_METHOD`]; any other call is
    /// refused with `PERMISSION_DENIED` and audited.
    fn onboarding<S: layer::Inner<B>, B: Send + 'static>(
        &self,
        mut inner: S,
        mut req: http::Request<B>,
        peer: crate::tls::OnboardingPeer,
        method: String,
    ) -> layer::BoxFut<S::Response, S::Error> {
        let layer = self.clone();
        Box::pin(async move {
            let o = peer.onboarding.clone();
            let refusal = match layer.trust.recheck_onboarding(&o) {
                Err(e) => {
                    layer.metrics.refuse(e.label());
                    Some(ApiError::Unauthenticated(e.to_string()))
                }
                Ok(()) if method != JOIN_METHOD => {
                    let shown = limits::method_label(&method);
                    let resource = format!(
                        "{}/onboarding{shown}",
                        crate::invitations::join_label(&o.federation, &o.organisation)
                    );
                    let draft = crate::invitations::onboarding_draft(
                        &o,
                        &resource,
                        false,
                        "onboarding:join-only",
                    );
                    if layer.onboarding_refusals.audit_next(&o.certificate_sha256) {
                        if let Err(e) = layer.audit.append(draft).await {
                            tracing::warn!(error = %e, "refused onboarding call not audited");
                        }
                    } else {
                        layer.metrics.refuse("onboarding_scope");
                    }
                    Some(ApiError::PermissionDenied(format!(
                        "an invitation's onboarding certificate is accepted for `Federation.Join` only, not for `{shown}`"
                    )))
                }
                Ok(()) => None,
            };
            if let Some(e) = refusal {
                let status = tonic::Status::from(e);
                count(&layer.metrics, &method, status.code());
                return Ok(status.into_http());
            }
            req.extensions_mut().insert(peer);
            let span =
                tracing::info_span!("rpc", %method, org = %o.organisation, user = "onboarding");
            let resp = inner.call(req).instrument(span).await?;
            count(&layer.metrics, &method, response_code(&resp));
            Ok(resp)
        })
    }
}

/// The gRPC status code a response carries in its headers (`OK` when it
/// has none there: a stream's status comes in its trailers).
fn response_code<T>(resp: &http::Response<T>) -> tonic::Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

fn count(metrics: &NodeMetrics, method: &str, code: tonic::Code) {
    metrics
        .rpc_requests
        .get_or_create(&RpcLabels {
            // Only served methods get a label of their own: a caller
            // cannot grow the metrics with made-up paths.
            method: limits::method_label(method),
            code: format!("{code:?}"),
        })
        .inc();
}

/// The facts a node states about itself, from its own bound identity.
pub fn federation_facts(own: &Principal) -> federation::ServerFacts {
    federation::ServerFacts {
        federation: own.federation.clone(),
        organisation: own.organisation.clone(),
        node: own.subject.name().to_owned(),
    }
}
