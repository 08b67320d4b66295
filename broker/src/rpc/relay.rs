//! `allmende.v1.Relay`: relayed access through the city hub
//! (`docs/relay.md`). Three roles on one service: the user's own node
//! (`Fetch`: signs the on-behalf-of assertion, forwards through the hub,
//! opens the sealed stream and ends it only after its authenticated end),
//! the hub (`Forward`: audits the relay's metadata, relays the owner's
//! frames without reading them; `PublishKeyPackage`: a node's MLS key
//! package into its directory slot) and the owner (`Serve`: the hub's
//! node only; verifies the assertion, decides and audits on the user's
//! certificate identity through the ordinary release pipeline, seals every
//! message for the forwarding node).

use super::access::{BoxStream, check_request, grant_columns, release_stream};
use super::convert::relay as convert;
use super::federation::authorize_metadata;
use super::limits::check_id;
use super::principal;
use crate::access::Fetcher;
use crate::audit::{Draft, ReleaseStats};
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::federation::relay::{self as calls, RelayCallError};
use crate::pki::identity::LeafIdentity;
use crate::pki::{Principal, Subject};
use crate::relay::{Relay, RelayError, Tamper};
use allmende_audit::{EntryKind, ReleaseOutcome};
use allmende_proto::v1 as pb;
use base64::Engine;
use futures::StreamExt;
use prost::Message;
use ring::rand::SecureRandom;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Largest key package or certificate a node may publish, in bytes.
const MAX_PUBLISHED_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub struct RelayService {
    pub ctx: NodeCtx,
    pub relay: Arc<Relay>,
    pub fetcher: Arc<Fetcher>,
    pub grants: Arc<crate::grants::Grants>,
    pub directory: Arc<crate::directory::Directory>,
    /// Reaches the hub and the owner nodes (`federation::relay`).
    pub dialer: calls::Dialer,
    /// A relayed stream whose receiver takes no frame for this long ends.
    pub idle_timeout: std::time::Duration,
}

/// The leaf certificate the caller presented in its handshake.
fn peer_certificate<T>(req: &Request<T>) -> Result<Arc<Vec<u8>>, Status> {
    req.extensions()
        .get::<crate::tls::PeerInfo>()
        .map(|p| p.certificate_der.clone())
        .ok_or_else(|| Status::from(ApiError::Unauthenticated("no authenticated peer".into())))
}

/// A call to another node that failed: its status passes through as it
/// came (a refusal at the owner keeps its code, message and details);
/// not reaching the peer is `UNAVAILABLE`.
fn call_status(e: RelayCallError) -> Status {
    match e {
        RelayCallError::Status(s) => s,
        RelayCallError::NotHub(_) | RelayCallError::WrongPeer { .. } => {
            Status::from(ApiError::PermissionDenied(e.to_string()))
        }
        other => Status::from(ApiError::Unavailable(other.to_string())),
    }
}

/// The response stream fed by a relay task through `rx`.
fn streamed<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> Response<BoxStream<T>> {
    Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// `org/node` of a node principal.
fn node_label(p: &Principal) -> String {
    match &p.subject {
        Subject::Node(n) => format!("{}/{n}", p.organisation),
        Subject::User(_) => p.organisation.clone(),
    }
}

impl RelayService {
    /// Writes a refused relay step to the audit log (no data follows).
    async fn refuse(
        &self,
        who: &Principal,
        resource: &str,
        reason: &str,
        peer: Option<String>,
    ) -> Result<(), Status> {
        let mut d = Draft::by(who, "read", resource, EntryKind::Decision);
        d.decision = Some(allmende_audit::Decision::Deny);
        d.policy_ids = vec![reason.to_owned()];
        if peer.is_some() {
            d.peer_node = peer;
        }
        self.ctx
            .audit
            .append(d)
            .await
            .map_err(|e| Status::from(ApiError::from(e)))?;
        Ok(())
    }

    /// A node-to-node relay call: decided as `exchange_metadata` (nodes
    /// only, audited), then its caller and request.
    async fn node_call<T>(&self, req: Request<T>) -> Result<(Arc<Principal>, T), Status> {
        let p = principal(&req)?;
        authorize_metadata(&self.ctx, &p, "relay").await?;
        Ok((p, req.into_inner()))
    }

    /// Whether `p` is a node the directory lists with this certificate.
    fn listed(&self, p: &Principal) -> bool {
        let Subject::Node(node) = &p.subject else {
            return false;
        };
        self.ctx.trust.snapshot().doc.nodes.iter().any(|n| {
            n.org == p.organisation && &n.node == node && n.cert_sha256 == p.certificate_sha256
        })
    }

    /// Whether `p` is the hub: a listed node of the city organisation.
    fn is_hub(&self, p: &Principal) -> bool {
        p.organisation_kind == crate::pki::OrgKind::City && self.listed(p)
    }

    fn own_uri(&self, org: &str, node: &str) -> String {
        LeafIdentity {
            federation: self.ctx.federation.clone(),
            organisation: org.to_owned(),
            subject: Subject::Node(node.to_owned()),
        }
        .uri()
    }
}

#[tonic::async_trait]
impl pb::relay_server::Relay for RelayService {
    type FetchStream = BoxStream<pb::FetchResponse>;
    type ForwardStream = BoxStream<pb::RelayFrame>;
    type ServeStream = BoxStream<pb::RelayFrame>;

    async fn fetch(
        &self,
        req: Request<pb::RelayFetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let p = principal(&req)?;
        let user_cert = peer_certificate(&req)?;
        let r = req.into_inner();
        let fr = r.request.unwrap_or_default();
        check_request(&fr)?;
        check_id("owner_organisation", &r.owner_organisation)?;
        check_id("owner_node", &r.owner_node)?;
        let owner = format!("{}/{}", r.owner_organisation, r.owner_node);
        // Only users of this node's own organisation.
        if !matches!(p.subject, Subject::User(_)) || p.organisation != self.ctx.organisation {
            self.refuse(&p, &fr.dataset, "relay-not-own-user", Some(owner))
                .await?;
            return Err(
                ApiError::from(RelayError::NotOwnUser(self.ctx.organisation.clone())).into(),
            );
        }
        let listed = self
            .ctx
            .trust
            .snapshot()
            .doc
            .nodes
            .iter()
            .any(|n| n.org == r.owner_organisation && n.node == r.owner_node);
        if !listed {
            return Err(ApiError::from(RelayError::UnknownNode {
                org: r.owner_organisation,
                node: r.owner_node,
            })
            .into());
        }
        let hub = self.relay.hub().map_err(ApiError::from)?;
        let request = fr.encode_to_vec();
        let audience = self.own_uri(&r.owner_organisation, &r.owner_node);
        let now = self.ctx.clock.now_unix_secs();
        let signer = self.relay.signer();
        let assertion = signer
            .assertion(&user_cert, &audience, &request, now)
            .and_then(|a| signer.sign(&a))
            .map_err(|e| ApiError::from(RelayError::from(e)))?;
        // The forward is audited here before anything leaves; the owner
        // decides and audits the read.
        let mut d = Draft::by(&p, "read", &fr.dataset, EntryKind::Decision);
        d.decision = Some(allmende_audit::Decision::Allow);
        d.policy_ids = vec!["relay-forwarded".into()];
        d.purpose = Some(fr.purpose.clone()).filter(|s| !s.is_empty());
        d.peer_node = Some(owner);
        self.ctx.audit.append(d).await.map_err(ApiError::from)?;
        let upstream = self
            .dialer
            .forward(
                &hub,
                convert::relayed_request(&r.owner_organisation, &r.owner_node, assertion, request),
            )
            .await
            .map_err(call_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let opened = Opened {
            relay: self.relay.clone(),
            dialer: self.dialer.clone(),
            org: r.owner_organisation,
            node: r.owner_node,
            dataset: fr.dataset,
            idle: self.idle_timeout,
        };
        tokio::spawn(async move {
            if let Err(e) = opened.run(upstream, &tx).await {
                let _ = tokio::time::timeout(opened.idle, tx.send(Err(e))).await;
            }
        });
        Ok(streamed(rx))
    }

    async fn forward(
        &self,
        req: Request<pb::RelayedRequest>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let (p, r) = self.node_call(req).await?;
        check_id("target_organisation", &r.target_organisation)?;
        check_id("target_node", &r.target_node)?;
        let target = format!("{}/{}", r.target_organisation, r.target_node);
        if !self.listed(&p) {
            self.refuse(&p, "relay", "relay-not-a-listed-node", Some(target))
                .await?;
            return Err(ApiError::from(RelayError::NotListedNode).into());
        }
        let Some(entry) = self
            .ctx
            .trust
            .snapshot()
            .doc
            .nodes
            .iter()
            .find(|n| n.org == r.target_organisation && n.node == r.target_node)
            .cloned()
        else {
            self.refuse(&p, "relay", "relay-unknown-target", Some(target))
                .await?;
            return Err(ApiError::from(RelayError::UnknownNode {
                org: r.target_organisation,
                node: r.target_node,
            })
            .into());
        };
        // Metadata only: who to whom, which dataset.
        let dataset = pb::FetchRequest::decode(r.request.as_slice())
            .map(|f| f.dataset)
            .map_err(|_| ApiError::InvalidArgument("relayed request is malformed".into()))?;
        check_id("dataset", &dataset)?;
        let mut d = Draft::by(&p, "relay", &dataset, EntryKind::ReleaseIntent);
        d.decision = Some(allmende_audit::Decision::Allow);
        d.peer_node = Some(format!("{} to {target}", node_label(&p)));
        let guard = self
            .ctx
            .audit
            .begin_release(d)
            .await
            .map_err(ApiError::from)?;
        let upstream = match self
            .dialer
            .serve_at_owner(&entry.endpoint, &entry.org, &entry.node, r)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                let _ = guard
                    .complete(ReleaseStats::default(), ReleaseOutcome::Failed)
                    .await;
                return Err(call_status(e));
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let tap = self.relay.tap();
        let idle = self.idle_timeout;
        tokio::spawn(async move {
            let (stats, outcome) = relay_frames(upstream, &tx, tap, idle).await;
            if let Err(e) = guard.complete(stats, outcome).await {
                tracing::warn!(error = %e, "relay completion not audited");
            }
        });
        Ok(streamed(rx))
    }

    async fn serve(
        &self,
        req: Request<pb::RelayedRequest>,
    ) -> Result<Response<Self::ServeStream>, Status> {
        let (p, r) = self.node_call(req).await?;
        if !self.is_hub(&p) {
            self.refuse(&p, "relay", "relay-not-the-hub", None).await?;
            return Err(ApiError::from(RelayError::NotHub).into());
        }
        let Ok(fr) = pb::FetchRequest::decode(r.request.as_slice()) else {
            self.refuse(&p, "relay", "relay-malformed-request", None)
                .await?;
            return Err(ApiError::InvalidArgument("relayed request is malformed".into()).into());
        };
        check_request(&fr)?;
        let v = match self.relay.accept(&r.assertion, &r.request).await {
            Ok(v) => v,
            Err(e) => {
                let reason = match &e {
                    RelayError::Assertion(a) => a.label(),
                    _ => "relay-assertion-unavailable",
                };
                self.refuse(&p, &fr.dataset, reason, None).await?;
                return Err(ApiError::from(e).into());
            }
        };
        let (group, welcome) = match self.relay.owner_group(&v).await {
            Ok(g) => g,
            Err(e) => {
                let who = v.issuer_uri.clone();
                self.refuse(&v.user, &fr.dataset, "relay-key-package", Some(who))
                    .await?;
                return Err(ApiError::from(e).into());
            }
        };
        let mut params = super::convert::fetch_params(fr)?;
        grant_columns(&self.grants, &self.fetcher, &v.user, &mut params).await?;
        let dataset = params.dataset.clone();
        let grant = params.grant_id.clone();
        let via = format!("{} via {}", node_label(&v.issuer), node_label(&p));
        let rx = self
            .fetcher
            .start_relayed(&v.user, params, via)
            .await
            .map_err(ApiError::from)?;
        let plain = release_stream(
            rx,
            self.idle_timeout,
            grant.map(|g| (self.grants.clone(), g)),
            super::convert::access::fetch_response,
        );
        let mut id = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| ApiError::Internal("no randomness".into()))?;
        let stream_id = hex::encode(id);
        let sealer = self
            .relay
            .sealer(&group, &dataset, &stream_id)
            .await
            .map_err(ApiError::from)?;
        let header = convert::FrameHeader {
            welcome,
            owner_certificate: self.relay.signer().certificate_der().to_vec(),
            group_id: group.as_bytes().to_vec(),
            stream_id,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let idle = self.idle_timeout;
        tokio::spawn(seal_frames(plain, sealer, header, tx, idle));
        Ok(streamed(rx))
    }

    async fn publish_key_package(
        &self,
        req: Request<pb::PublishKeyPackageRequest>,
    ) -> Result<Response<pb::PublishKeyPackageResponse>, Status> {
        let p = principal(&req)?;
        authorize_metadata(&self.ctx, &p, "publish-key-package").await?;
        if !self.directory.holds_root() {
            return Err(ApiError::from(crate::directory::DirectoryError::NotRoot).into());
        }
        let r = req.into_inner();
        if r.key_package.len() > MAX_PUBLISHED_BYTES || r.certificate.len() > MAX_PUBLISHED_BYTES {
            return Err(ApiError::InvalidArgument(format!(
                "key package and certificate take at most `{MAX_PUBLISHED_BYTES}` bytes each"
            ))
            .into());
        }
        let presented = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&r.certificate));
        let Subject::Node(node) = &p.subject else {
            return Err(ApiError::from(RelayError::NotListedNode).into());
        };
        let entry = self
            .ctx
            .trust
            .snapshot()
            .doc
            .nodes
            .iter()
            .find(|n| n.org == p.organisation && &n.node == node)
            .cloned();
        let Some(mut entry) = entry
            .filter(|e| presented == p.certificate_sha256 && e.cert_sha256 == p.certificate_sha256)
        else {
            self.refuse(&p, "relay", "relay-publish-not-listed", None)
                .await?;
            return Err(ApiError::from(RelayError::NotListedNode).into());
        };
        if let Err(e) = self
            .relay
            .check_key_package(&r.key_package, &r.certificate)
            .await
        {
            self.refuse(&p, "relay", "relay-publish-unbound-key-package", None)
                .await?;
            return Err(ApiError::PermissionDenied(format!(
                "key package is not bound to the caller's certificate: {e}"
            ))
            .into());
        }
        entry.mls_key_package = base64::engine::general_purpose::STANDARD.encode(&r.key_package);
        let version = self
            .directory
            .set_nodes(&[entry])
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::published(version)))
    }
}

/// Relays the owner's frames to the forwarding node as they come (the hub
/// cannot open them); counts chunks and bytes for the relay's audit
/// entry. A test tap records and may tamper.
async fn relay_frames(
    mut upstream: tonic::Streaming<pb::RelayFrame>,
    tx: &tokio::sync::mpsc::Sender<Result<pb::RelayFrame, Status>>,
    tap: Option<Arc<crate::relay::HubTap>>,
    idle: std::time::Duration,
) -> (ReleaseStats, ReleaseOutcome) {
    let mut stats = ReleaseStats::default();
    let tamper = tap.as_ref().map_or(Tamper::None, |t| t.tamper);
    let mut held: Option<pb::RelayFrame> = None;
    let send =
        |item| async move { matches!(tokio::time::timeout(idle, tx.send(item)).await, Ok(Ok(()))) };
    loop {
        let f = match upstream.message().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(s) => {
                let _ = send(Err(s)).await;
                return (stats, ReleaseOutcome::Failed);
            }
        };
        stats.rows_released += 1;
        stats.bytes += f.sealed.len() as u64;
        if let Some(t) = &tap {
            t.observe(&f.encode_to_vec());
        }
        let out = match tamper {
            Tamper::None => Some(f),
            // Hold one back; the one held at the end is dropped.
            Tamper::DropLast => held.replace(f),
            Tamper::Reorder if stats.rows_released == 2 => {
                held = Some(f);
                None
            }
            Tamper::Reorder => {
                if !send(Ok(f)).await {
                    return (stats, ReleaseOutcome::Aborted);
                }
                held.take()
            }
        };
        if let Some(o) = out
            && !send(Ok(o)).await
        {
            return (stats, ReleaseOutcome::Aborted);
        }
    }
    if tamper == Tamper::Reorder
        && let Some(h) = held.take()
        && !send(Ok(h)).await
    {
        return (stats, ReleaseOutcome::Aborted);
    }
    (stats, ReleaseOutcome::Completed)
}

/// The owner's side: seals every message of the release for the pair's
/// group, holding one back so that the last one is sealed as the
/// stream's authenticated end.
async fn seal_frames(
    mut plain: BoxStream<pb::FetchResponse>,
    mut sealer: allmende_mls::Sealer,
    header: convert::FrameHeader,
    tx: tokio::sync::mpsc::Sender<Result<pb::RelayFrame, Status>>,
    idle: std::time::Duration,
) {
    let mut header = Some(header);
    let mut prev: Option<Vec<u8>> = None;
    let send =
        |item| async { matches!(tokio::time::timeout(idle, tx.send(item)).await, Ok(Ok(()))) };
    let sealed_err = |e: allmende_mls::SealError| {
        Status::from(ApiError::from(RelayError::Mls(
            allmende_mls::MlsError::Seal(e),
        )))
    };
    while let Some(item) = plain.next().await {
        match item {
            Ok(m) => {
                if let Some(p) = prev.replace(m.encode_to_vec()) {
                    let frame = sealer
                        .seal(&p)
                        .map(|c| convert::frame(c, header.take()))
                        .map_err(sealed_err);
                    if !send(frame).await {
                        return;
                    }
                }
            }
            Err(s) => {
                let _ = send(Err(s)).await;
                return;
            }
        }
    }
    let last = prev.unwrap_or_default();
    let frame = sealer
        .finish(&last)
        .map(|c| convert::frame(c, header.take()))
        .map_err(sealed_err);
    let _ = send(frame).await;
}

/// The forwarding node's side of one relayed stream.
struct Opened {
    relay: Arc<Relay>,
    dialer: calls::Dialer,
    org: String,
    node: String,
    dataset: String,
    idle: std::time::Duration,
}

impl Opened {
    /// Opens the owner's sealed frames in order and hands the user each
    /// message; the stream's end reaches the user only after the
    /// authenticated last chunk was opened and the opener finished.
    async fn run(
        &self,
        mut upstream: tonic::Streaming<pb::RelayFrame>,
        tx: &tokio::sync::mpsc::Sender<Result<pb::FetchResponse, Status>>,
    ) -> Result<(), Status> {
        let refused = |e: RelayError| Status::from(ApiError::from(e));
        let Some(first) = upstream.message().await? else {
            return Err(refused(RelayError::Truncated));
        };
        let welcome = (!first.welcome.is_empty()).then_some(first.welcome.as_slice());
        let group = allmende_mls::MlsGroupId::from_bytes(&first.group_id);
        let (mut opener, fresh) = self
            .relay
            .reader_open(&crate::relay::StreamStart {
                org: &self.org,
                node: &self.node,
                owner_certificate_der: &first.owner_certificate,
                welcome,
                group: &group,
                dataset: &self.dataset,
                stream_id: &first.stream_id,
            })
            .await
            .map_err(refused)?;
        if fresh.is_some() {
            // The welcome consumed the published key package: publish a
            // fresh one.
            let (relay, dialer) = (self.relay.clone(), self.dialer.clone());
            tokio::spawn(async move {
                if let Err(e) = dialer.replenish(&relay).await {
                    tracing::warn!(error = %e, "mls key package not replenished");
                }
            });
        }
        let mut frame = Some(first);
        loop {
            let Some(f) = frame.take() else {
                match upstream.message().await? {
                    Some(f) => {
                        frame = Some(f);
                        continue;
                    }
                    None => return Err(refused(RelayError::Truncated)),
                }
            };
            let chunk = opener
                .open(&f.sealed)
                .map_err(|e| refused(RelayError::Stream(e.to_string())))?;
            let msg = if chunk.data.is_empty() && chunk.last {
                None
            } else {
                Some(
                    pb::FetchResponse::decode(chunk.data.as_slice())
                        .map_err(|_| refused(RelayError::Stream("malformed message".into())))?,
                )
            };
            if chunk.last {
                opener
                    .finish()
                    .map_err(|e| refused(RelayError::Stream(e.to_string())))?;
                if let Some(m) = msg {
                    let _ = tokio::time::timeout(self.idle, tx.send(Ok(m))).await;
                }
                return Ok(());
            }
            if let Some(m) = msg
                && !matches!(
                    tokio::time::timeout(self.idle, tx.send(Ok(m))).await,
                    Ok(Ok(()))
                )
            {
                return Ok(());
            }
        }
    }
}
