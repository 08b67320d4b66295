//! The one mapping of an [`ApiError`] to a gRPC [`tonic::Status`].
//!
//! Domain errors are classified into [`ApiError`] in `crate::error`; this
//! file turns the classification into a status code, a message for the
//! caller and, for a policy denial, the structured
//! `allmende.v1.DecisionDetails`. Handlers build a `tonic::Status` only
//! through this conversion (`broker/tests/tidy.rs`).

use crate::error::ApiError;

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        use tonic::Code;
        if let ApiError::Denied(d) = &e {
            // The reasons in the message for humans, the structured decision
            // (`allmende.v1.DecisionDetails`) in the status details.
            let msg = e.to_string();
            let details = super::convert::decision_details_bytes(d);
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
            ApiError::Unimplemented(m) => (Code::Unimplemented, m),
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
    use crate::store::StoreError;

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
