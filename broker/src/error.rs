//! The broker's request errors and their one mapping to gRPC status.
//!
//! Architecture invariant: `tonic::Status` is built from an [`ApiError`] here
//! and nowhere else in the broker's services.

use crate::store::StoreError;

/// A policy that decided a denied request, with its plain-language texts
/// (the policy engine's own type, not a copy of it).
pub use allmende_policies::DecidingPolicy;

/// What a denied caller learns: the deciding policies and their reasons,
/// evaluation errors, and the policy set's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyDetails {
    pub allowed: bool,
    pub policies: Vec<DecidingPolicy>,
    pub errors: Vec<String>,
    pub policy_set_hash: String,
}

/// Why a request failed, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Denied by the policies; carries the deciding policies and reasons.
    #[error("denied: {}", .0.policies.iter().map(|p| p.reason_en.as_str()).collect::<Vec<_>>().join("; "))]
    Denied(Box<DenyDetails>),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency the request needs (store, audit log) is not available;
    /// nothing was done.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected state; details go to the log, not the caller.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } | StoreError::Encode { .. } => {
                ApiError::Internal(e.to_string())
            }
            _ => ApiError::Unavailable(format!("store unavailable: {e}")),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        use tonic::Code;
        if let ApiError::Denied(d) = &e {
            // The reasons in the message for humans, the structured decision
            // (`allmende.v1.DecisionDetails`) in the status details.
            let msg = e.to_string();
            let details = crate::rpc::convert::decision_details_bytes(d);
            return tonic::Status::with_details(Code::PermissionDenied, msg, details.into());
        }
        let (code, msg) = match e {
            ApiError::Unauthenticated(m) => (Code::Unauthenticated, m),
            ApiError::PermissionDenied(m) => (Code::PermissionDenied, m),
            ApiError::Denied(_) => (Code::PermissionDenied, "denied".to_owned()),
            ApiError::InvalidArgument(m) => (Code::InvalidArgument, m),
            ApiError::NotFound(m) => (Code::NotFound, m),
            ApiError::FailedPrecondition(m) => (Code::FailedPrecondition, m),
            ApiError::ResourceExhausted(m) => (Code::ResourceExhausted, m),
            ApiError::Unavailable(m) => {
                tracing::warn!(error = %m, "request failed: unavailable");
                (Code::Unavailable, m)
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                (
                    Code::Internal,
                    "internal error; see the node log".to_owned(),
                )
            }
        };
        tonic::Status::new(code, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_do_not_reach_the_caller() {
        let s: tonic::Status = ApiError::Internal("secret path /x".into()).into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("secret"));
        let s: tonic::Status =
            ApiError::from(StoreError::Io(sled::Error::Unsupported("x".into()))).into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
