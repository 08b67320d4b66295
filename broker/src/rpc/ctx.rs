//! What every service of a node shares.

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::pki::Trust;
use crate::policy::PolicyPoint;
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
