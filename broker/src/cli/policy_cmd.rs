//! `allmende policy …`: validate offline, explain, reload, list.

use super::{Failure, status_failure};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy directory (schema.cedarschema + *.cedar) offline,
    /// strictly; errors name file and line. Without DIR: the bundled set.
    Validate { dir: Option<PathBuf> },
    /// How a node would decide a request by you (what-if; grants nothing).
    Explain {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        /// Cedar action, e.g. `read`, `read_audit`, `approve_request`.
        #[arg(long)]
        action: String,
        /// dataset, grant, access_request, data_subject, obligation, audit_log, federation.
        #[arg(long, default_value = "dataset")]
        resource_type: String,
        /// Resource id, e.g. `smart-meter-readings`.
        #[arg(long, default_value = "")]
        resource: String,
        /// Declared purpose, spelled exactly as in DPV, e.g. `AcademicResearch`.
        #[arg(long, default_value = "")]
        purpose: String,
        #[arg(long, default_value = "")]
        grant: String,
    },
    /// Ask a node to re-read its policies (Cedar: federation operators).
    Reload {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// The policies a node enforces.
    List {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

pub async fn run(cmd: PolicyCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        PolicyCmd::Validate { dir } => {
            let result = match &dir {
                Some(d) => allmende_policies::load_dir(d),
                None => allmende_policies::load_bundled(),
            };
            match result {
                Ok(b) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": true, "policies": b.policies().len(), "policy_set_hash": b.hash()})
                        );
                    } else {
                        println!(
                            "valid: {} policies, schema ok (strict), policy set {}",
                            b.policies().len(),
                            b.hash()
                        );
                    }
                    Ok(())
                }
                Err(e) => Err(Failure::new(3, format!("policies refused:\n{e}"))),
            }
        }
        PolicyCmd::Explain {
            profile,
            action,
            resource_type,
            resource,
            purpose,
            grant,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::policy_client::PolicyClient::new(p.connect().await?)
                .explain(pb::ExplainRequest {
                    action,
                    resource_type,
                    resource_id: resource,
                    purpose,
                    grant_id: grant,
                })
                .await
                .map_err(|s| status_failure(&s))?
                .into_inner();
            if json {
                let d = r.decision.unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({
                        "allowed": d.allowed,
                        "deciding": d.deciding.iter().map(|p| serde_json::json!({"id": p.id, "title": p.title, "reason_de": p.reason_de, "reason_en": p.reason_en})).collect::<Vec<_>>(),
                        "errors": d.errors,
                        "policy_set_hash": d.policy_set_hash,
                    })
                );
            } else {
                print!("{}", r.text);
            }
            Ok(())
        }
        PolicyCmd::Reload { profile } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::policy_client::PolicyClient::new(p.connect().await?)
                .reload(pb::ReloadRequest {})
                .await
                .map_err(|s| status_failure(&s))?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"previous_hash": r.previous_hash, "policy_set_hash": r.policy_set_hash, "policies": r.policies})
                );
            } else {
                println!(
                    "reloaded {} policies: {} -> {}",
                    r.policies, r.previous_hash, r.policy_set_hash
                );
            }
            Ok(())
        }
        PolicyCmd::List { profile } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::policy_client::PolicyClient::new(p.connect().await?)
                .get_policy_set(pb::GetPolicySetRequest {})
                .await
                .map_err(|s| status_failure(&s))?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "policy_set_hash": r.policy_set_hash,
                        "source": r.source,
                        "policies": r.policies.iter().map(|p| serde_json::json!({"id": p.id, "title": p.title, "effect": p.effect, "file": p.file, "line": p.line})).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!("policy set {} ({})", r.policy_set_hash, r.source);
                println!("{:<44} {:<8} TITLE", "ID", "EFFECT");
                for p in r.policies {
                    println!("{:<44} {:<8} {}", p.id, p.effect, p.title);
                }
            }
            Ok(())
        }
    }
}
