//! `allmende access …`: ask a dataset's owner node for access, and, as the
//! owner's DPO or steward, see what waits, approve or reject it by the hash
//! of what was shown, list and revoke grants.
//!
//! Each command talks to the node of your profile, or to `--endpoint` (the
//! owner's node: a request goes to the node that holds the data).

use super::exit;
use super::{Answer, Failure};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where to connect.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Client profile (TOML: endpoint, root_ca, cert, key).
    #[arg(long, env = "ALLMENDE_PROFILE")]
    pub profile: Option<PathBuf>,
    /// The owner's node (`https://host:port`) instead of the profile's.
    #[arg(long)]
    pub endpoint: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AccessCmd {
    /// Ask the owner's node for access to a dataset for a purpose.
    Request {
        #[arg(long)]
        dataset: String,
        /// A purpose of the closed vocabulary (e.g. `AcademicResearch`).
        #[arg(long)]
        purpose: String,
        /// How long the grant should last.
        #[arg(long)]
        days: u32,
        /// Columns asked for, comma-separated (default: every column).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// Why you need the data (shown to the approver).
        #[arg(long, default_value = "")]
        justification: String,
        /// Repeat a request safely: the same key gives the same request
        /// (default: a new random key).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Requests waiting for a decision, with what a grant would allow.
    Pending {
        /// Every request, whatever its state.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// One request.
    Show {
        request_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Approve a request: shows what it asks for and approves exactly that
    /// (by its hash); a request changed since is refused.
    Approve {
        request_id: String,
        #[arg(long, default_value = "")]
        note: String,
        /// When the grantee must have deleted the data (RFC 3339 or
        /// YYYY-MM-DD; default: the grant's end, and not before it).
        #[arg(long)]
        delete_after: Option<String>,
        /// Every release under the grant also notifies this node's DPO.
        #[arg(long)]
        notify_on_use: bool,
        /// Raw reads under the grant are refused (aggregates only).
        #[arg(long)]
        aggregate_only: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Reject a pending request.
    Reject {
        request_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a grant; effective for the next read, and reads running
    /// under it end.
    Revoke {
        grant_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// Grants of this node.
    Grants {
        /// Only grants in this state: active, revoked or expired.
        #[arg(long, default_value = "")]
        state: String,
        #[command(flatten)]
        target: Target,
    },
    /// Access notices of this node: sent (with their delivery state),
    /// received from owners' nodes, or kept for its own DPO (DPO only).
    Notices {
        /// Only one direction: sent, received or own.
        #[arg(long, default_value = "")]
        direction: String,
        #[command(flatten)]
        target: Target,
    },
    /// Deletion duties kept at the owner's node: open, overdue, attested.
    Duties {
        /// Only the duties of this organisation.
        #[arg(long, default_value = "")]
        org: String,
        #[command(flatten)]
        target: Target,
    },
    /// Attest, at the owner's node, that your organisation deleted what it
    /// received under a grant, or a data subject's rows after an erasure.
    AttestDeletion {
        /// The grant, or the duty id (`--duty`, e.g. an erasure's duty).
        #[arg(long, alias = "duty")]
        grant: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs an access command and prints its output.
pub async fn run(cmd: AccessCmd, json: bool) -> Result<(), Failure> {
    let out = output(cmd, json).await?;
    print!("{out}");
    Ok(())
}

async fn client(t: &Target) -> Result<Client, Failure> {
    let mut p = ClientProfile::resolve(t.profile.as_deref())?;
    if let Some(e) = &t.endpoint {
        p.endpoint = e.clone();
    }
    Ok(pb::grants_client::GrantsClient::new(p.connect().await?))
}

type Client = pb::grants_client::GrantsClient<tonic::transport::Channel>;

/// The client and request `id` as the node shows it now (what a decision
/// on it approves or rejects, by its hash).
async fn shown(t: &Target, id: &str) -> Result<(Client, pb::AccessRequestView), Failure> {
    let mut c = client(t).await?;
    let r = c
        .get_request(pb::GetRequestRequest {
            request_id: id.to_owned(),
        })
        .await
        .answer()?;
    Ok((c, r))
}

fn fmt_secs(s: i64) -> String {
    crate::consent::format_time(s)
}

fn new_key() -> Result<String, Failure> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Failure::new(exit::FAILED, "no random idempotency key".to_owned()))?;
    Ok(hex::encode(b))
}

fn request_json(r: &pb::AccessRequestView) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "state": r.state, "request_hash": r.request_hash,
        "owner": r.owner, "dataset": r.dataset, "purpose": r.purpose,
        "columns": r.columns, "days": r.days, "justification": r.justification,
        "requester": r.requester, "requested_at": fmt_secs(r.requested_at_unix),
        "decided_by": r.decided_by, "grant_id": r.grant_id,
        "explanation": r.explanation.as_ref().map(|x| serde_json::json!({
            "approver": x.approver, "may_approve": x.may_approve,
            "grant_would_allow": x.grant_would_allow,
            "policies": x.policies.iter().map(|p| serde_json::json!({
                "id": p.id, "reason_en": p.reason_en, "reason_de": p.reason_de,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn grant_json(g: &pb::GrantView) -> serde_json::Value {
    serde_json::json!({
        "id": g.id, "state": g.state, "request_id": g.request_id,
        "dataset": g.dataset, "owner": g.owner, "purpose": g.purpose,
        "columns": g.columns, "grantee_org": g.grantee_org,
        "grantee_user": g.grantee_user,
        "not_before": fmt_secs(g.not_before_unix), "not_after": fmt_secs(g.not_after_unix),
        "approved_by": g.approved_by, "approval_signature": g.approval_signature,
        "signer_public_key": g.signer_public_key,
        "delete_after": fmt_secs(g.delete_after_unix), "notify_on_use": g.notify_on_use,
        "aggregate_only": g.aggregate_only,
    })
}

/// A request in words.
pub fn render_request(r: &pb::AccessRequestView) -> String {
    let columns = if r.columns.is_empty() {
        "every column".to_owned()
    } else {
        r.columns.join(", ")
    };
    let mut out = format!(
        "request {}  ({})\n  {} asks `{}` for `{}` for {}, {} days\n  columns: {columns}\n  justification: {}\n  requested at {}\n  hash {}\n",
        r.id,
        r.state,
        r.requester,
        r.owner,
        r.dataset,
        r.purpose,
        r.days,
        if r.justification.is_empty() {
            "-"
        } else {
            &r.justification
        },
        fmt_secs(r.requested_at_unix),
        r.request_hash,
    );
    if !r.grant_id.is_empty() {
        out.push_str(&format!("  grant {}\n", r.grant_id));
    }
    if let Some(x) = &r.explanation {
        out.push_str(&format!("  to be approved by {}\n", x.approver));
        out.push_str(&format!(
            "  the grant would allow: {}\n",
            x.grant_would_allow
        ));
        out.push_str(&format!(
            "  you {} approve it:\n",
            if x.may_approve { "may" } else { "may not" }
        ));
        for p in &x.policies {
            out.push_str(&format!("    {}: {}\n", p.id, p.reason_en));
        }
    }
    out
}

/// A grant in words.
pub fn render_grant(g: &pb::GrantView) -> String {
    format!(
        "grant {}  ({})\n  `{}` ({}) may read `{}` of `{}` for {}, columns: {}\n  from {} until {}\n  approved by {}, signed by the owner node\n  obligations: delete by {}{}{}\n",
        g.id,
        g.state,
        g.grantee_org,
        g.grantee_user,
        g.dataset,
        g.owner,
        g.purpose,
        if g.columns.is_empty() {
            "every column".to_owned()
        } else {
            g.columns.join(", ")
        },
        fmt_secs(g.not_before_unix),
        fmt_secs(g.not_after_unix),
        g.approved_by,
        fmt_secs(g.delete_after_unix),
        if g.notify_on_use {
            ", notify the owner's DPO on use"
        } else {
            ""
        },
        if g.aggregate_only {
            ", aggregates only"
        } else {
            ""
        },
    )
}

fn line(v: &serde_json::Value) -> String {
    format!("{v}\n")
}

/// Runs an access command and returns what it would print.
pub async fn output(cmd: AccessCmd, json: bool) -> Result<String, Failure> {
    match cmd {
        AccessCmd::Request {
            dataset,
            purpose,
            days,
            columns,
            justification,
            idempotency_key,
            target,
        } => {
            let key = match idempotency_key {
                Some(k) => k,
                None => new_key()?,
            };
            let r = client(&target)
                .await?
                .request_access(pb::RequestAccessRequest {
                    dataset,
                    purpose,
                    columns,
                    days,
                    justification,
                    idempotency_key: key,
                })
                .await
                .answer()?;
            Ok(if json {
                line(&request_json(&r))
            } else {
                format!(
                    "{}the owner's DPO or steward decides on it\n",
                    render_request(&r)
                )
            })
        }
        AccessCmd::Pending { all, target } => {
            let list = client(&target)
                .await?
                .list_requests(pb::ListRequestsRequest {
                    state: if all { String::new() } else { "pending".into() },
                })
                .await
                .answer()?
                .requests;
            Ok(if json {
                line(&serde_json::json!({
                    "requests": list.iter().map(request_json).collect::<Vec<_>>()
                }))
            } else if list.is_empty() {
                "no requests wait for a decision\n".to_owned()
            } else {
                list.iter()
                    .map(render_request)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        AccessCmd::Show { request_id, target } => {
            let r = client(&target)
                .await?
                .get_request(pb::GetRequestRequest { request_id })
                .await
                .answer()?;
            Ok(if json {
                line(&request_json(&r))
            } else {
                render_request(&r)
            })
        }
        AccessCmd::Approve {
            request_id,
            note,
            delete_after,
            notify_on_use,
            aggregate_only,
            target,
        } => {
            let delete_after_unix = match delete_after {
                None => 0,
                Some(s) => parse_date(&s)?,
            };
            let (mut c, r) = shown(&target, &request_id).await?;
            let g = c
                .approve(pb::ApproveRequest {
                    request_id,
                    request_hash: r.request_hash.clone(),
                    note,
                    delete_after_unix,
                    notify_on_use,
                    aggregate_only,
                })
                .await
                .answer()?;
            Ok(if json {
                line(&serde_json::json!({
                    "approved": request_json(&r), "grant": grant_json(&g)
                }))
            } else {
                format!("approved:\n{}\n{}", render_request(&r), render_grant(&g))
            })
        }
        AccessCmd::Reject {
            request_id,
            reason,
            target,
        } => {
            let (mut c, r) = shown(&target, &request_id).await?;
            let out = c
                .reject(pb::RejectRequest {
                    request_id,
                    request_hash: r.request_hash,
                    reason,
                })
                .await
                .answer()?;
            Ok(if json {
                line(&request_json(&out))
            } else {
                format!("rejected:\n{}", render_request(&out))
            })
        }
        AccessCmd::Revoke {
            grant_id,
            reason,
            target,
        } => {
            let g = client(&target)
                .await?
                .revoke(pb::RevokeRequest { grant_id, reason })
                .await
                .answer()?;
            Ok(if json {
                line(&grant_json(&g))
            } else {
                format!("revoked:\n{}", render_grant(&g))
            })
        }
        AccessCmd::Grants { state, target } => {
            let list = client(&target)
                .await?
                .list_grants(pb::ListGrantsRequest { state })
                .await
                .answer()?
                .grants;
            Ok(if json {
                line(&serde_json::json!({
                    "grants": list.iter().map(grant_json).collect::<Vec<_>>()
                }))
            } else if list.is_empty() {
                "no grants\n".to_owned()
            } else {
                list.iter().map(render_grant).collect::<Vec<_>>().join("\n")
            })
        }
        AccessCmd::Notices { direction, target } => {
            let list = client(&target)
                .await?
                .list_notices(pb::ListNoticesRequest { direction })
                .await
                .answer()?
                .notices;
            Ok(if json {
                line(&serde_json::json!({
                    "notices": list.iter().map(notice_json).collect::<Vec<_>>()
                }))
            } else if list.is_empty() {
                "no access notices\n".to_owned()
            } else {
                list.iter().map(render_notice).collect::<String>()
            })
        }
        AccessCmd::Duties { org, target } => {
            let list = client(&target)
                .await?
                .list_duties(pb::ListDutiesRequest { org })
                .await
                .answer()?
                .duties;
            Ok(if json {
                line(&serde_json::json!({
                    "duties": list.iter().map(duty_json).collect::<Vec<_>>()
                }))
            } else if list.is_empty() {
                "no deletion duties\n".to_owned()
            } else {
                list.iter().map(render_duty).collect::<String>()
            })
        }
        AccessCmd::AttestDeletion {
            grant,
            note,
            target,
        } => {
            let d = client(&target)
                .await?
                .attest_deletion(pb::AttestDeletionRequest {
                    duty_id: grant,
                    note,
                })
                .await
                .answer()?;
            Ok(if json {
                line(&duty_json(&d))
            } else {
                format!("deletion attested:\n{}", render_duty(&d))
            })
        }
    }
}

/// A date (`YYYY-MM-DD`, midnight UTC) or RFC 3339 time, in epoch seconds.
fn parse_date(s: &str) -> Result<i64, Failure> {
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    crate::timefmt::parse(&full)
        .map(|t| t.unix_timestamp())
        .map_err(|e| Failure::new(exit::USAGE, format!("--delete-after `{s}`: {e}")))
}

fn notice_json(n: &pb::NoticeView) -> serde_json::Value {
    serde_json::json!({
        "id": n.id, "direction": n.direction, "state": n.state, "kind": n.kind,
        "owner": n.owner, "recipient": n.recipient, "grant_id": n.grant_id,
        "dataset": n.dataset, "purpose": n.purpose, "grantee_user": n.grantee_user,
        "at": fmt_secs(n.at_unix), "rows": n.rows, "columns": n.columns,
        "outcome": n.outcome, "audit_sequence": n.audit_sequence, "reason": n.reason,
        "attempts": n.attempts, "last_error": n.last_error, "from_node": n.from_node,
    })
}

/// A notice in words.
pub fn render_notice(n: &pb::NoticeView) -> String {
    let what = match n.kind.as_str() {
        "data_released" => format!(
            "released {} rows ({}) of `{}`, {}, owner's audit entry {}",
            n.rows,
            n.columns.join(", "),
            n.dataset,
            n.outcome,
            n.audit_sequence
        ),
        "grant_revoked" => format!("revoked the grant on `{}`: {}", n.dataset, n.reason),
        other => format!("{other} on `{}`", n.dataset),
    };
    let mut out = format!(
        "notice {}  ({} {}, {})\n  `{}` → `{}` at {}: {what}\n  grant {} for {}, grantee {}\n",
        n.id,
        n.direction,
        n.kind,
        n.state,
        n.owner,
        n.recipient,
        fmt_secs(n.at_unix),
        n.grant_id,
        n.purpose,
        n.grantee_user,
    );
    if !n.last_error.is_empty() {
        out.push_str(&format!(
            "  {} failed attempts, last: {}\n",
            n.attempts, n.last_error
        ));
    }
    out
}

fn duty_json(d: &pb::DutyView) -> serde_json::Value {
    serde_json::json!({
        "id": d.id, "org": d.org, "dataset": d.dataset, "reason": d.reason,
        "grant_id": d.grant_id, "due": fmt_secs(d.due_unix), "state": d.state,
        "attested_by": d.attested_by, "note": d.note,
    })
}

/// A duty in words.
pub fn render_duty(d: &pb::DutyView) -> String {
    let mut out = format!(
        "duty {}  ({})\n  `{}` deletes `{}` ({}{}) by {}\n",
        d.id,
        d.state,
        d.org,
        d.dataset,
        d.reason,
        if d.grant_id.is_empty() {
            String::new()
        } else {
            format!(" {}", d.grant_id)
        },
        fmt_secs(d.due_unix),
    );
    if !d.attested_by.is_empty() {
        out.push_str(&format!(
            "  attested by {} at {}\n",
            d.attested_by,
            fmt_secs(d.attested_at_unix)
        ));
    }
    out
}
