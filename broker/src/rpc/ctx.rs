//! What every service of a node shares.

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::error::ApiError;
use crate::pki::Principal;
use crate::pki::Trust;
use crate::policy::PolicyPoint;
use crate::policy::{Action, Resource};
use crate::store::Store;
use std::sync::Arc;

/// The serving node's state, handed to each service.
#[derive(Debug, Clone)]
pub struct NodeCtx {
    pub trust: Arc<Trust>,
    pub audit: AuditLog,
    pub policy: Arc<PolicyPoint>,
    pub clock: SharedClock,
    pub store: Store,
    pub federation: String,
    pub organisation: String,
    pub node: String,
}

impl NodeCtx {
    /// Decides `action` on `resource` for `caller` (no purpose) through
    /// `PolicyPoint::authorize`: audited before anything happens, a deny is
    /// `PERMISSION_DENIED`. `label` names the resource in the audit entry.
    pub async fn authorize(
        &self,
        caller: &Principal,
        action: Action,
        resource: Resource,
        label: &str,
    ) -> Result<(), ApiError> {
        let request = self.policy.request(caller, action, resource, None);
        self.policy
            .authorize(&self.audit, caller, request, label)
            .await
            .map(|_| ())
    }
}
