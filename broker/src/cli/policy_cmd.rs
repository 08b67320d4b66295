//! `allmende policy …`: validate and prove offline, explain, reload, list.

use super::exit;
use super::{Answer, Failure, print_json};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub enum PolicyCmd {
    /// Validate a policy directory (schema.cedarschema + *.cedar) offline,
    /// strictly; errors name file and line. Without DIR: the bundled set.
    /// Then proves the properties (as `policy prove`; needs cvc5).
    Validate {
        dir: Option<PathBuf>,
        /// Only load and validate; do not prove the properties.
        #[arg(long)]
        no_prove: bool,
    },
    /// Prove the properties (policies/properties/*.cedar and DIR/properties/)
    /// over every request and entity store the schema allows, with Cedar's
    /// symbolic compiler and cvc5. Prints a counterexample for each property
    /// that fails; exit code 6 when one fails.
    Prove {
        /// Policy directory; default: the bundled policies.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Explain a decision. Online (default): how the profile's node decides a
    /// request by you. Offline (with `--principal`): how the policies decide
    /// a request by anyone against a world file, without a node.
    Explain {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        /// Offline: `user:ID`, `node:ID` or `public` (ids as in the world file).
        #[arg(long)]
        principal: Option<String>,
        /// Offline: entity data (TOML, see policies/README.md); default: the
        /// bundled Munich example world.
        #[arg(long)]
        world: Option<PathBuf>,
        /// Offline: policy directory; default: the bundled policies.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
        /// Offline: request time, epoch seconds; default: the world's `now`.
        #[arg(long)]
        now: Option<i64>,
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
        PolicyCmd::Validate { dir, no_prove } => {
            let (b, properties) = load_with_properties(dir.as_deref())?;
            let report = if no_prove {
                None
            } else {
                Some(prove(&b, &properties).await?)
            };
            if json {
                print_json(&serde_json::json!({
                    "valid": true,
                    "policies": b.policies().len(),
                    "policy_set_hash": b.hash(),
                    "proof": report,
                }));
            } else {
                println!(
                    "valid: {} policies, schema ok (strict), policy set {}",
                    b.policies().len(),
                    b.hash()
                );
                match &report {
                    Some(r) => print!("{r}"),
                    None => println!("properties not proved (--no-prove)"),
                }
            }
            match report {
                Some(r) if !r.holds() => Err(unproved(&r)),
                _ => Ok(()),
            }
        }
        PolicyCmd::Prove { dir } => {
            let (b, properties) = load_with_properties(dir.as_deref())?;
            let report = prove(&b, &properties).await?;
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{report}");
            }
            if report.holds() {
                Ok(())
            } else {
                Err(unproved(&report))
            }
        }
        PolicyCmd::Explain {
            principal: Some(principal),
            world,
            policy_dir,
            now,
            action,
            resource_type,
            resource,
            purpose,
            grant,
            ..
        } => explain_offline(
            principal,
            world,
            policy_dir,
            now,
            &action,
            &resource_type,
            &resource,
            &purpose,
            &grant,
            json,
        ),
        PolicyCmd::Explain {
            profile,
            action,
            resource_type,
            resource,
            purpose,
            grant,
            ..
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
                .answer()?;
            if json {
                let d = r.decision.unwrap_or_default();
                print_json(&serde_json::json!({
                    "allowed": d.allowed,
                    "deciding": d.deciding.iter().map(|p| serde_json::json!({"id": p.id, "title": p.title, "reason_de": p.reason_de, "reason_en": p.reason_en})).collect::<Vec<_>>(),
                    "errors": d.errors,
                    "policy_set_hash": d.policy_set_hash,
                }));
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
                .answer()?;
            if json {
                print_json(
                    &serde_json::json!({"previous_hash": r.previous_hash, "policy_set_hash": r.policy_set_hash, "policies": r.policies}),
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
                .answer()?;
            if json {
                print_json(&serde_json::json!({
                    "policy_set_hash": r.policy_set_hash,
                    "source": r.source,
                    "policies": r.policies.iter().map(|p| serde_json::json!({"id": p.id, "title": p.title, "effect": p.effect, "file": p.file, "line": p.line})).collect::<Vec<_>>(),
                }));
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

/// The policy set and its properties: the bundled ones, or `DIR`'s with the
/// bundled properties plus `DIR/properties/`.
fn load_with_properties(
    dir: Option<&std::path::Path>,
) -> Result<
    (
        allmende_policies::PolicyBundle,
        allmende_policies::PropertySet,
    ),
    Failure,
> {
    use allmende_policies as pol;
    let refused = |e: pol::LoadError| Failure::new(exit::INPUT, format!("policies refused:\n{e}"));
    let (bundle, properties) = match dir {
        Some(d) => (pol::load_dir(d), pol::PropertySet::for_dir(d)),
        None => (pol::load_bundled(), pol::PropertySet::bundled()),
    };
    Ok((bundle.map_err(refused)?, properties.map_err(refused)?))
}

async fn prove(
    bundle: &allmende_policies::PolicyBundle,
    properties: &allmende_policies::PropertySet,
) -> Result<allmende_policies::ProofReport, Failure> {
    use allmende_policies::ProveError;
    allmende_policies::prove(bundle, properties)
        .await
        .map_err(|e| match e {
            ProveError::Properties(_) => Failure::new(exit::INPUT, e.to_string()),
            ProveError::SolverUnavailable(_) | ProveError::Symcc(_) => {
                Failure::new(exit::FAILED, e.to_string())
            }
        })
}

fn unproved(report: &allmende_policies::ProofReport) -> Failure {
    let failed: Vec<&str> = report.failed().map(|r| r.id.as_str()).collect();
    Failure::new(
        exit::PROPERTY_BROKEN,
        format!(
            "{} of {} properties do not hold: {}",
            failed.len(),
            report.results.len(),
            failed.join(", ")
        ),
    )
}

#[allow(clippy::too_many_arguments, reason = "one CLI command's flags")]
fn explain_offline(
    principal: String,
    world: Option<PathBuf>,
    policy_dir: Option<PathBuf>,
    now: Option<i64>,
    action: &str,
    resource_type: &str,
    resource: &str,
    purpose: &str,
    grant: &str,
    json: bool,
) -> Result<(), Failure> {
    use allmende_policies as pol;
    let w = match &world {
        Some(p) => pol::World::load(p),
        None => pol::World::munich(),
    }
    .map_err(|e| Failure::new(exit::INPUT, e.to_string()))?;
    let engine = match &policy_dir {
        Some(d) => pol::Engine::from_dir(d),
        None => pol::Engine::bundled(),
    }
    .map_err(|e| Failure::new(exit::INPUT, format!("policies refused:\n{e}")))?;
    let principal = pol::parse_principal(&principal).map_err(|e| Failure::new(exit::USAGE, e))?;
    let action: pol::Action = action
        .parse()
        .map_err(|e: pol::UnknownValue| Failure::new(exit::USAGE, e.to_string()))?;
    let resource = pol::parse_resource(&format!("{}:{resource}", short_kind(resource_type)))
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let mut request = pol::DecisionRequest::new(principal, action, resource, now.unwrap_or(w.now));
    if !purpose.is_empty() {
        request.purpose = Some(
            purpose
                .parse()
                .map_err(|e: pol::UnknownValue| Failure::new(exit::USAGE, e.to_string()))?,
        );
    }
    if !grant.is_empty() {
        request.grant = Some(grant.to_owned());
    }
    let store = w.store();
    let snapshot = store
        .snapshot()
        .map_err(|e| Failure::new(exit::INPUT, format!("world: {e}")))?;
    let d = engine.decide(&request, &snapshot);
    if json {
        println!("{}", serde_json::to_string(&d).unwrap_or_default());
    } else {
        print!("{d}");
    }
    Ok(())
}

/// Maps the online resource type names to the offline `KIND:` prefixes.
fn short_kind(t: &str) -> &str {
    match t {
        "access_request" => "request",
        "data_subject" => "subject",
        "audit_log" => "audit",
        other => other,
    }
}
