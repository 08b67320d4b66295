//! `allmende federation …`: the federation's membership, run against the
//! city node (it holds the root and signs the directory).

use super::{Answer, Failure, print_json};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum FederationCmd {
    /// Take an organisation out of the federation (city operators, at the
    /// city node; decided by Cedar and audited). Its CA and node
    /// certificates go on the deny list of a re-signed directory; every
    /// node refuses them, ends their streams and revokes their grants
    /// within one directory refresh.
    Remove {
        /// The organisation to remove.
        #[arg(long)]
        organisation: String,
        /// Recorded with the deny-list entries.
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// The directory the node holds: version, members, nodes, deny list.
    Show {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

pub async fn run(cmd: FederationCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        FederationCmd::Remove {
            organisation,
            reason,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::federation_client::FederationClient::new(p.connect().await?)
                .remove_member(pb::RemoveMemberRequest {
                    organisation,
                    reason,
                })
                .await
                .answer()?;
            if json {
                print_json(
                    &serde_json::json!({"organisation": r.organisation, "version": r.version}),
                );
            } else {
                println!(
                    "removed `{}`; directory version {}",
                    r.organisation, r.version
                );
            }
            Ok(())
        }
        FederationCmd::Show { profile } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::federation_client::FederationClient::new(p.connect().await?)
                .get_membership(pb::GetMembershipRequest {})
                .await
                .answer()?;
            let doc = crate::pki::membership::SignedMembership::from_json(&r.signed_membership)
                .ok()
                .and_then(|s| {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(&s.payload)
                        .ok()
                })
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .unwrap_or(serde_json::Value::Null);
            if json {
                print_json(&doc);
            } else {
                println!("directory version {}", r.version);
                let rows = [
                    ("member", "members", ["org", "kind", "display_name"]),
                    ("node", "nodes", ["org", "node", "endpoint"]),
                    ("denied", "denied", ["subject", "reason", "at"]),
                ];
                for (label, key, fields) in rows {
                    for item in doc[key].as_array().into_iter().flatten() {
                        let cols: Vec<String> = fields
                            .iter()
                            .map(|f| match &item[*f] {
                                serde_json::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect();
                        println!("{label} {}", cols.join(" "));
                    }
                }
            }
            Ok(())
        }
    }
}
