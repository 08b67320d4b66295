//! `allmende federation …`: the federation's membership, run against the
//! city node (it holds the root and signs the directory).

use super::{Answer, Failure, exit, print_json};
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
    /// Invite a new organisation (city operators, at the city node; decided
    /// by Cedar and audited). Writes the invitation file (mode 0600: it
    /// holds a one-time secret and an onboarding key) to give to the new
    /// organisation only. The kind is yours to set; the joiner cannot.
    Invite {
        #[arg(long)]
        organisation: String,
        /// city, utility, university, company or public.
        #[arg(long)]
        kind: String,
        /// The organisation's display name.
        #[arg(long)]
        name: String,
        /// Hours the invitation stays valid (default 24).
        #[arg(long, default_value_t = 24)]
        valid_hours: u64,
        /// Where to write the invitation file.
        #[arg(long)]
        out: PathBuf,
        /// The city node's endpoint as the new organisation reaches it
        /// (default: the profile's).
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Join the federation with an invitation (the new organisation): the
    /// organisation CA key is made in `--dir` and never leaves it; the city
    /// signs the request over mTLS. With `--node` and `--endpoint`, also
    /// issue that node's certificate and record its directory entry.
    Join {
        /// The invitation file the city's operator gave you
        /// (`federation invite`).
        #[arg(long)]
        invitation: PathBuf,
        /// The organisation directory (org-ca.key, org-ca.crt, root-ca.crt,
        /// membership.json; nodes/<name>/ for the node).
        #[arg(long)]
        dir: PathBuf,
        /// Name of this organisation's first node (its certificate goes to
        /// `<dir>/nodes/<name>/`).
        #[arg(long, requires = "endpoint")]
        node: Option<String>,
        /// The node's gRPC endpoint, `https://host:port`.
        #[arg(long, requires = "node")]
        endpoint: Option<String>,
        /// DNS names of the node certificate.
        #[arg(long = "dns", default_value = "localhost")]
        dns: Vec<String>,
        /// IP addresses of the node certificate.
        #[arg(long = "ip", default_value = "127.0.0.1")]
        ips: Vec<std::net::IpAddr>,
    },
    /// The directory the node holds: version, members, nodes, deny list.
    Show {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

pub async fn run(cmd: FederationCmd, json: bool, now: i64) -> Result<(), Failure> {
    match cmd {
        FederationCmd::Invite {
            organisation,
            kind,
            name,
            valid_hours,
            out,
            endpoint,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::federation_client::FederationClient::new(p.connect().await?)
                .invite(pb::InviteRequest {
                    organisation,
                    kind,
                    display_name: name,
                    valid_secs: valid_hours.saturating_mul(3600),
                })
                .await
                .answer()?;
            let mut file: crate::invitations::InvitationFile =
                serde_json::from_slice(&r.invitation).map_err(|e| {
                    Failure::new(
                        exit::FAILED,
                        format!("the node's invitation is unreadable: {e}"),
                    )
                })?;
            file.city_endpoint = endpoint.unwrap_or(p.endpoint);
            let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
            crate::pki::ca::write_secret(&out, &bytes)
                .map_err(|e| Failure::new(exit::INPUT, e.to_string()))?;
            if json {
                print_json(&serde_json::json!({
                    "invitation": r.invitation_id,
                    "organisation": r.organisation,
                    "kind": file.kind,
                    "expires_unix": r.expires_unix,
                    "file": out,
                }));
            } else {
                println!(
                    "invited `{}` ({}) until {}; give {} (mode 0600) to the organisation only",
                    r.organisation,
                    file.kind,
                    crate::timefmt::format_unix_secs(r.expires_unix),
                    out.display()
                );
            }
            Ok(())
        }
        FederationCmd::Join {
            invitation,
            dir,
            node,
            endpoint,
            dns,
            ips,
        } => {
            let file = super::join::read_invitation(&invitation)?;
            let node = match (node, endpoint) {
                (Some(name), Some(endpoint)) => Some(super::join::NodeRequest {
                    name,
                    endpoint,
                    dns,
                    ips,
                }),
                _ => None,
            };
            let j = super::join::join(&file, &dir, node.as_ref(), now).await?;
            if json {
                print_json(&serde_json::json!({
                    "organisation": j.organisation,
                    "kind": j.kind,
                    "version": j.version,
                    "dir": j.org_dir,
                    "node_dir": j.node.as_ref().map(|n| &n.0),
                }));
            } else {
                println!(
                    "joined as `{}` ({}); directory version {}; organisation CA in {}",
                    j.organisation,
                    j.kind,
                    j.version,
                    j.org_dir.display()
                );
                if let Some((nd, v)) = &j.node {
                    println!(
                        "node certificate in {}; its directory entry recorded (version {v})",
                        nd.display()
                    );
                }
            }
            Ok(())
        }
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
