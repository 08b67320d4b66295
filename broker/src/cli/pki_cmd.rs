//! `allmende pki …`: the onboarding flow on the command line.

use super::{Failure, exit};
use crate::pki::ca::{self, FederationDir, OrgCa, PkiError};
use crate::pki::{OrgKind, Role};
use clap::Subcommand;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PkiCmd {
    /// (city) Create the federation root CA and an empty signed membership.
    InitFederation {
        #[arg(long)]
        federation: String,
        /// Directory for root-ca.key (0600), root-ca.crt, membership.json.
        #[arg(long)]
        dir: PathBuf,
    },
    /// (organisation) Create the organisation CA key locally and a signing request.
    OrgRequest {
        #[arg(long)]
        federation: String,
        #[arg(long)]
        org: String,
        /// Directory for org-ca.key (0600) and org-ca.csr.
        #[arg(long)]
        dir: PathBuf,
    },
    /// (city) Sign an organisation's request and add it, with its kind, to the membership.
    OrgSign {
        #[arg(long)]
        federation_dir: PathBuf,
        #[arg(long)]
        csr: PathBuf,
        /// city, utility, university, company or public.
        #[arg(long, value_parser = parse_kind)]
        kind: OrgKind,
        #[arg(long)]
        display_name: String,
        /// Where to write the organisation CA certificate.
        #[arg(long)]
        out: PathBuf,
    },
    /// (organisation) Issue a node certificate (node.key, node.crt).
    IssueNode {
        #[arg(long)]
        org_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// DNS names for standard clients' hostname checks.
        #[arg(long = "dns", default_value = "localhost")]
        dns: Vec<String>,
        /// IP addresses for standard clients' hostname checks.
        #[arg(long = "ip", default_value = "127.0.0.1")]
        ips: Vec<IpAddr>,
        #[arg(long, default_value_t = ca::NODE_DAYS)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// (organisation) Issue a user certificate (<id>.key, <id>.crt) with a role.
    IssueUser {
        #[arg(long)]
        org_dir: PathBuf,
        #[arg(long)]
        id: String,
        /// dpo, steward, researcher, citizen or operator.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, default_value_t = ca::USER_DAYS)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// (organisation, controller) Issue a data subject's credential: a
    /// citizen certificate whose user id is the subject id the controller
    /// keeps their records under (e.g. a household's meter id). With it the
    /// subject gives, withdraws and lists their consent and sees who
    /// accessed their data, at this organisation's node only.
    IssueCitizen {
        #[arg(long)]
        org_dir: PathBuf,
        /// The subject id (`[A-Za-z0-9._-]{1,64}`).
        #[arg(long)]
        subject: String,
        #[arg(long, default_value_t = ca::USER_DAYS)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// (organisation) Renew a user certificate: new key, same identity and role.
    RenewUser {
        #[arg(long)]
        org_dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long, default_value_t = ca::USER_DAYS)]
        days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// (city) Put a certificate on the federation's deny list.
    Revoke {
        #[arg(long)]
        federation_dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        reason: String,
    },
    /// Show the signed membership: members, kinds, deny list.
    Membership {
        #[arg(long)]
        federation_dir: PathBuf,
    },
}

fn parse_kind(s: &str) -> Result<OrgKind, allmende_vocab::UnknownValue> {
    s.parse()
}

fn parse_role(s: &str) -> Result<Role, allmende_vocab::UnknownValue> {
    s.parse()
}

fn fail(e: PkiError) -> Failure {
    let code = match e {
        PkiError::Rcgen(_) => exit::FAILED,
        _ => exit::INPUT,
    };
    Failure::new(code, e.to_string())
}

pub fn run(cmd: PkiCmd, json: bool, now: i64) -> Result<(), Failure> {
    let out = |v: serde_json::Value, human: String| {
        if json {
            println!("{v}");
        } else {
            println!("{human}");
        }
    };
    match cmd {
        PkiCmd::InitFederation { federation, dir } => {
            let fed = ca::init_federation(&dir, &federation, now).map_err(fail)?;
            out(
                serde_json::json!({"federation": federation, "root_cert": fed.root_cert(), "membership": fed.membership()}),
                format!(
                    "federation `{federation}` created: root {} (key 0600 beside it), membership {}",
                    fed.root_cert().display(),
                    fed.membership().display()
                ),
            );
        }
        PkiCmd::OrgRequest {
            federation,
            org,
            dir,
        } => {
            let csr = ca::org_request(&dir, &federation, &org).map_err(fail)?;
            out(
                serde_json::json!({"csr": csr}),
                format!(
                    "organisation CA key created in {}; send {} to the city",
                    dir.display(),
                    csr.display()
                ),
            );
        }
        PkiCmd::OrgSign {
            federation_dir,
            csr,
            kind,
            display_name,
            out: cert,
        } => {
            let m = ca::org_sign(
                &FederationDir(federation_dir),
                &csr,
                kind,
                &display_name,
                &cert,
                now,
            )
            .map_err(fail)?;
            out(
                serde_json::json!({"org": m.org, "kind": m.kind, "cert": cert, "ca_cert_sha256": m.ca_cert_sha256}),
                format!(
                    "`{}` ({}) added to the membership; certificate {}",
                    m.org,
                    m.kind,
                    cert.display()
                ),
            );
        }
        PkiCmd::IssueNode {
            org_dir,
            name,
            dns,
            ips,
            days,
            out: dir,
        } => {
            let o = OrgCa::load(&org_dir).map_err(fail)?;
            let f = o
                .issue_node(&name, &dns, &ips, days, &dir, now)
                .map_err(fail)?;
            out(
                serde_json::json!({"key": f.key, "cert": f.chain}),
                format!(
                    "node `{name}` of `{}`: {} and {}",
                    o.org,
                    f.chain.display(),
                    f.key.display()
                ),
            );
        }
        PkiCmd::IssueCitizen {
            org_dir,
            subject,
            days,
            out: dir,
        } => {
            if !crate::consent::valid_subject_id(&subject) {
                return Err(Failure::new(
                    exit::INPUT,
                    format!(
                        "subject id `{}` must match [A-Za-z0-9._-]{{1,64}}",
                        crate::text::shown(&subject, 80)
                    ),
                ));
            }
            let o = OrgCa::load(&org_dir).map_err(fail)?;
            let f = o
                .issue_user(&subject, Role::Citizen, days, &dir, now)
                .map_err(fail)?;
            out(
                serde_json::json!({"key": f.key, "cert": f.chain, "role": Role::Citizen, "subject": subject}),
                format!(
                    "subject credential for `{subject}` of controller `{}`, valid {days} days: {}",
                    o.org,
                    f.chain.display()
                ),
            );
        }
        PkiCmd::IssueUser {
            org_dir,
            id,
            role,
            days,
            out: dir,
        } => {
            let o = OrgCa::load(&org_dir).map_err(fail)?;
            let f = o.issue_user(&id, role, days, &dir, now).map_err(fail)?;
            out(
                serde_json::json!({"key": f.key, "cert": f.chain, "role": role}),
                format!(
                    "user `{id}` ({role}) of `{}`, valid {days} days: {}",
                    o.org,
                    f.chain.display()
                ),
            );
        }
        PkiCmd::RenewUser {
            org_dir,
            cert,
            days,
            out: dir,
        } => {
            let o = OrgCa::load(&org_dir).map_err(fail)?;
            let f = o.renew_user(&cert, days, &dir, now).map_err(fail)?;
            out(
                serde_json::json!({"key": f.key, "cert": f.chain}),
                format!("renewed for {days} days: {}", f.chain.display()),
            );
        }
        PkiCmd::Revoke {
            federation_dir,
            cert,
            reason,
        } => {
            let d =
                ca::revoke(&FederationDir(federation_dir), &cert, &reason, now).map_err(fail)?;
            out(
                serde_json::json!({"cert_sha256": d.cert_sha256, "subject": d.subject}),
                format!(
                    "revoked {} ({}); distribute the new membership.json to every node",
                    d.subject, d.cert_sha256
                ),
            );
        }
        PkiCmd::Membership { federation_dir } => {
            let doc = FederationDir(federation_dir)
                .load_membership()
                .map_err(fail)?;
            if json {
                println!("{}", serde_json::to_string(&doc).unwrap_or_default());
            } else {
                println!(
                    "federation `{}` membership version {}",
                    doc.federation, doc.version
                );
                println!("{:<18} {:<11} NAME", "ORGANISATION", "KIND");
                for m in &doc.members {
                    println!("{:<18} {:<11} {}", m.org, m.kind, m.display_name);
                }
                if !doc.denied.is_empty() {
                    println!("\ndeny list:");
                    for d in &doc.denied {
                        println!("  {} {} ({})", d.cert_sha256, d.subject, d.reason);
                    }
                }
            }
        }
    }
    Ok(())
}
