//! `allmende.v1.Access` messages: fetch requests parsed strictly into
//! [`FetchParams`](crate::access::FetchParams), fetch messages into
//! responses.

use crate::access::fetch::FetchMessage;
use crate::error::ApiError;
use allmende_proto::v1 as pb;

/// A fetch request from the wire, parsed strictly.
pub fn fetch_params(r: pb::FetchRequest) -> Result<crate::access::FetchParams, ApiError> {
    let filter = match r.filter {
        None => None,
        Some(f) => Some(filter(f, 0)?),
    };
    if r.dataset.is_empty() {
        return Err(ApiError::InvalidArgument("`dataset` is empty".into()));
    }
    if r.columns.len() > 1000 {
        return Err(ApiError::InvalidArgument("too many columns".into()));
    }
    Ok(crate::access::FetchParams {
        dataset: r.dataset,
        purpose: crate::rpc::parse_purpose(&r.purpose)?,
        columns: r.columns,
        filter,
        resume_cursor: (!r.resume_cursor.is_empty()).then_some(r.resume_cursor),
        max_rows: r.max_rows,
        grant_id: (!r.grant_id.is_empty()).then_some(r.grant_id),
        request_id: (!r.request_id.is_empty()).then(|| crate::text::shown(&r.request_id, 128)),
    })
}

fn filter(f: pb::Filter, depth: usize) -> Result<crate::access::Filter, ApiError> {
    use crate::access::{CompareOp, Filter, FilterValue};
    if depth > 16 {
        return Err(ApiError::InvalidArgument(
            "filter is nested too deeply".into(),
        ));
    }
    Ok(match f.expr {
        None => return Err(ApiError::InvalidArgument("empty filter".into())),
        Some(pb::filter::Expr::All(l)) => Filter::All(
            l.filters
                .into_iter()
                .map(|f| filter(f, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(pb::filter::Expr::Any(l)) => Filter::Any(
            l.filters
                .into_iter()
                .map(|f| filter(f, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(pb::filter::Expr::Comparison(c)) => {
            let op = match pb::CompareOp::try_from(c.op) {
                Ok(pb::CompareOp::Eq) => CompareOp::Eq,
                Ok(pb::CompareOp::Ne) => CompareOp::Ne,
                Ok(pb::CompareOp::Lt) => CompareOp::Lt,
                Ok(pb::CompareOp::Le) => CompareOp::Le,
                Ok(pb::CompareOp::Gt) => CompareOp::Gt,
                Ok(pb::CompareOp::Ge) => CompareOp::Ge,
                _ => {
                    return Err(ApiError::InvalidArgument(
                        "comparison without operator".into(),
                    ));
                }
            };
            let value = match c.value.and_then(|v| v.kind) {
                Some(pb::value::Kind::StringValue(s)) => FilterValue::String(s),
                Some(pb::value::Kind::IntValue(i)) => FilterValue::Int(i),
                Some(pb::value::Kind::FloatValue(x)) => FilterValue::Float(x),
                Some(pb::value::Kind::BoolValue(b)) => FilterValue::Bool(b),
                Some(pb::value::Kind::TimestampMs(t)) => FilterValue::TimestampMs(t),
                None => return Err(ApiError::InvalidArgument("comparison without value".into())),
            };
            Filter::Compare {
                column: c.column,
                op,
                value,
            }
        }
    })
}

/// One message of a fetch stream on the wire (a failure becomes the
/// stream's error).
pub fn fetch_response(m: FetchMessage) -> Result<pb::FetchResponse, ApiError> {
    match m {
        FetchMessage::Ipc(bytes) => Ok(pb::FetchResponse {
            arrow_ipc: bytes,
            summary: None,
        }),
        FetchMessage::Done {
            ipc,
            rows,
            next_cursor,
            complete,
            audit_sequence,
        } => Ok(pb::FetchResponse {
            arrow_ipc: ipc,
            summary: Some(pb::FetchSummary {
                rows,
                next_cursor: next_cursor.unwrap_or_default(),
                complete,
                audit_sequence,
            }),
        }),
        FetchMessage::Failed(e) => Err(e.into()),
    }
}
