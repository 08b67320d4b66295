//! `allmende.v1.Policy` messages: explanations, reload reports, the policy
//! set in force.

use crate::policy::PolicyOrigin;
use allmende_policies as pol;
use allmende_proto::v1 as pb;

/// A what-if decision, structured and in words.
pub fn explain_response(d: &pol::Decision) -> pb::ExplainResponse {
    pb::ExplainResponse {
        decision: Some(super::decision_details(d)),
        text: d.to_string(),
    }
}

/// What a reload changed.
pub fn reload_response(report: pol::ReloadReport) -> pb::ReloadResponse {
    pb::ReloadResponse {
        previous_hash: report.previous_hash,
        policy_set_hash: report.hash,
        policies: u32::try_from(report.policies).unwrap_or(u32::MAX),
    }
}

/// The policies in force and where they came from.
pub fn policy_set_response(
    bundle: &pol::PolicyBundle,
    origin: &PolicyOrigin,
) -> pb::GetPolicySetResponse {
    pb::GetPolicySetResponse {
        policy_set_hash: bundle.hash().to_owned(),
        policies: bundle
            .policies()
            .iter()
            .map(|i| pb::PolicyInfo {
                id: i.id.clone(),
                title: i.title.clone(),
                effect: format!("{:?}", i.effect).to_lowercase(),
                file: i.file.clone(),
                line: u32::try_from(i.line).unwrap_or(0),
            })
            .collect(),
        source: match origin {
            PolicyOrigin::Bundled => "bundled".into(),
            PolicyOrigin::Dir(d) => d.display().to_string(),
        },
    }
}
