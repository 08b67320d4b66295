//! `allmende.v1.Federation`.

use super::convert::federation as convert;
use super::limits::check_id;
use super::principal;
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::federation::peers::Peers;
use crate::pki::Principal;
use crate::pki::Trust;
use crate::policy::{Action, Resource};
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Decides (and audits) a node-to-node metadata call: `exchange_metadata`
/// on the federation. `call` names the call in the audit entry's resource.
pub(super) async fn authorize_metadata(
    ctx: &NodeCtx,
    p: &Principal,
    call: &str,
) -> Result<(), ApiError> {
    ctx.authorize(
        p,
        Action::ExchangeMetadata,
        Resource::Federation(ctx.federation.clone()),
        &format!("federation/{}/{call}", ctx.federation),
    )
    .await
}

/// Facts about the serving node.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub federation: String,
    pub organisation: String,
    pub node: String,
}

#[derive(Debug)]
pub struct FederationService {
    pub ctx: NodeCtx,
    pub trust: Arc<Trust>,
    pub peers: Arc<Peers>,
    pub facts: ServerFacts,
    /// The directory this node holds (and, at the city node, signs).
    pub directory: Arc<crate::directory::Directory>,
    /// Invitations to join (kept at the city node).
    pub invitations: Arc<crate::invitations::Invitations>,
}

impl FederationService {
    /// Decides (and audits) `manage_federation` on the federation for
    /// `p`; `what` names the change in the audit entry's resource.
    async fn manage(&self, p: &Principal, what: &str) -> Result<(), ApiError> {
        self.ctx
            .authorize(
                p,
                Action::ManageFederation,
                Resource::Federation(self.ctx.federation.clone()),
                &format!("federation/{}/{what}", self.ctx.federation),
            )
            .await
    }

    fn node_info(&self) -> pb::NodeInfo {
        convert::node_info(&self.facts, self.trust.snapshot().doc.version)
    }
}

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let p = principal(&req)?;
        Ok(Response::new(convert::who_am_i_response(
            &p,
            self.node_info(),
        )))
    }

    async fn hello(
        &self,
        req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let p = principal(&req)?;
        let body = req.into_inner();
        check_id("claimed_organisation", &body.claimed_organisation)?;
        check_id("claimed_node", &body.claimed_node)?;
        check_id("software_version", &body.software_version)?;
        authorize_metadata(&self.ctx, &p, "hello").await?;
        // Identity comes from the certificate; a body that claims otherwise
        // is noted and ignored.
        if (!body.claimed_organisation.is_empty() && body.claimed_organisation != p.organisation)
            || (!body.claimed_node.is_empty() && body.claimed_node != p.subject.name())
        {
            tracing::warn!(
                cert_org = %p.organisation,
                cert_node = %p.subject.name(),
                claimed_org = %crate::text::shown(&body.claimed_organisation, 64),
                "hello claims another identity than its certificate; using the certificate"
            );
        }
        let rec = self
            .peers
            .record_hello(&p, &body.software_version)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::Internal("node principal without node name".into()))?;
        Ok(Response::new(convert::hello_response(
            &p,
            self.node_info(),
            rec.hellos,
        )))
    }

    async fn list_peers(
        &self,
        req: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        let _p = principal(&req)?;
        let peers = self.peers.list().map_err(ApiError::from)?;
        Ok(Response::new(convert::list_peers_response(&peers)))
    }

    async fn get_membership(
        &self,
        req: Request<pb::GetMembershipRequest>,
    ) -> Result<Response<pb::GetMembershipResponse>, Status> {
        let _p = principal(&req)?;
        let snap = self.trust.snapshot();
        Ok(Response::new(convert::membership_response(
            &snap.signed_json,
            snap.doc.version,
        )))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let p = principal(&req)?;
        let body = req.into_inner();
        check_id("organisation", &body.organisation)?;
        check_id("reason", &body.reason)?;
        self.manage(&p, &format!("remove/{}", body.organisation))
            .await?;
        if body.organisation.is_empty() {
            return Err(
                ApiError::InvalidArgument("name the `organisation` to remove".into()).into(),
            );
        }
        let reason = if body.reason.is_empty() {
            "removed from the federation"
        } else {
            body.reason.as_str()
        };
        let version = self
            .directory
            .remove_member(&body.organisation, reason)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(org = %body.organisation, version, "member removed from the federation");
        Ok(Response::new(convert::remove_member_response(
            &body.organisation,
            version,
        )))
    }

    async fn invite(
        &self,
        req: Request<pb::InviteRequest>,
    ) -> Result<Response<pb::InviteResponse>, Status> {
        let p = principal(&req)?;
        let body = req.into_inner();
        check_id("organisation", &body.organisation)?;
        check_id("kind", &body.kind)?;
        check_id("display_name", &body.display_name)?;
        self.manage(&p, &format!("invite/{}", body.organisation))
            .await?;
        let kind: crate::pki::OrgKind = body
            .kind
            .parse()
            .map_err(|e: allmende_vocab::UnknownValue| ApiError::InvalidArgument(e.to_string()))?;
        let file = self
            .invitations
            .invite(
                &body.organisation,
                kind,
                &body.display_name,
                body.valid_secs,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::invite_response(&file)?))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let onboarding = req
            .extensions()
            .get::<crate::tls::OnboardingPeer>()
            .map(|o| o.onboarding.clone());
        let Some(o) = onboarding else {
            // A member: decided (only the root's operators manage the
            // federation) and audited; even they cannot join again.
            let p = principal(&req)?;
            self.manage(&p, "join").await?;
            return Err(ApiError::FailedPrecondition(
                "`Federation.Join` takes the onboarding certificate of an invitation; a member certificate cannot join".into(),
            )
            .into());
        };
        let body = req.into_inner();
        check_id("secret", &body.secret)?;
        if body.csr_pem.len() > MAX_CSR_BYTES {
            return Err(ApiError::InvalidArgument(format!(
                "the signing request is longer than {MAX_CSR_BYTES} bytes"
            ))
            .into());
        }
        let joined = self
            .invitations
            .join(&o, &body.secret, &body.csr_pem)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::join_response(&joined)))
    }

    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        let p = principal(&req)?;
        let body = req.into_inner();
        check_id("endpoint", &body.endpoint)?;
        self.ctx
            .authorize(
                &p,
                Action::ExchangeMetadata,
                Resource::Federation(self.ctx.federation.clone()),
                &format!(
                    "federation/{}/nodes/{}/{}",
                    self.ctx.federation,
                    p.organisation,
                    p.subject.name()
                ),
            )
            .await?;
        if !p.is_node() {
            return Err(ApiError::PermissionDenied(
                "only a node records its own directory entry, with its node certificate".into(),
            )
            .into());
        }
        let entry = crate::pki::membership::NodeEntry {
            org: p.organisation.clone(),
            node: p.subject.name().to_owned(),
            endpoint: valid_endpoint(&body.endpoint)?,
            cert_sha256: p.certificate_sha256.clone(),
            mls_key_package: String::new(),
        };
        let version = self
            .directory
            .upsert_node(&entry)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(org = %entry.org, node = %entry.node, version, "node entry recorded");
        Ok(Response::new(convert::register_node_response(
            &entry, version,
        )))
    }
}

/// Longest organisation CA signing request accepted by `Federation.Join`.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// A node endpoint as the directory lists it (`check_node_endpoint`).
fn valid_endpoint(s: &str) -> Result<String, ApiError> {
    crate::pki::membership::check_node_endpoint(s).map_err(ApiError::InvalidArgument)?;
    Ok(s.to_owned())
}
