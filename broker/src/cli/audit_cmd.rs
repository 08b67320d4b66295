//! `allmende audit …`: the DPO's tools and a citizen's own view.

use super::exit;
use super::{Answer, Failure, print_json};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Query the node's log (DPO): filters combine with AND; paged.
    Query {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        #[arg(long, default_value = "")]
        dataset: String,
        /// Requesting organisation.
        #[arg(long = "org", default_value = "")]
        organisation: String,
        /// `<org>/<user>`; matched through its keyed hash.
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long, default_value = "")]
        purpose: String,
        /// `allow` or `deny`.
        #[arg(long, default_value = "")]
        decision: String,
        /// RFC 3339 time or milliseconds since the epoch.
        #[arg(long, value_parser = parse_time)]
        from: Option<u64>,
        #[arg(long, value_parser = parse_time)]
        to: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this sequence number (printed as `next page after`).
        #[arg(long)]
        page_after: Option<u64>,
    },
    /// Export entries with checkpoint, cosignatures and proofs (DPO).
    Export {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        #[arg(long, value_parser = parse_time)]
        from: Option<u64>,
        #[arg(long, value_parser = parse_time)]
        to: Option<u64>,
        /// Write the bundle here instead of standard output.
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// Verify a bundle offline against keys you trust (no node needed).
    Verify {
        bundle: PathBuf,
        /// keys.toml: trusted log and witness keys (never taken from the bundle).
        #[arg(long)]
        trust: PathBuf,
    },
    /// Ask the node to recompute its tree from its stored entries.
    VerifyLog {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Log size, checkpoint, keys and witness findings.
    Status {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Print the node's keys as a keys.toml fragment for `audit verify`.
    Keys {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Who accessed data about me (data subjects).
    MyAccesses {
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        page_after: Option<u64>,
    },
}

fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = crate::timefmt::parse(s).map_err(|e| format!("{e}, nor milliseconds"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("`{s}` is before 1970"))
}

fn fmt_time(ms: u64) -> String {
    crate::timefmt::format_unix_ms(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn entry_json(e: &pb::AuditEntry) -> serde_json::Value {
    serde_json::json!({
        "sequence": e.sequence, "time": fmt_time(e.time_ms), "node": e.node,
        "organisation": e.organisation, "user": e.user_pseudonym, "action": e.action,
        "resource": e.resource, "purpose": e.purpose, "decision": e.decision,
        "policies": e.policy_ids, "kind": e.kind, "detail": e.detail, "subjects": e.subjects,
        "grant": e.grant_id,
    })
}

fn print_entries(r: &pb::AuditQueryResponse, json: bool) {
    if json {
        print_json(&serde_json::json!({
            "entries": r.entries.iter().map(entry_json).collect::<Vec<_>>(),
            "next_page_after": r.next_page_after,
        }));
        return;
    }
    println!(
        "{:>6} {:<20} {:<16} {:<16} {:<20} {:<24} {:<18} {:<6} POLICIES",
        "SEQ", "TIME", "ORG", "ACTION", "KIND", "RESOURCE", "PURPOSE", "RESULT"
    );
    for e in &r.entries {
        println!(
            "{:>6} {:<20} {:<16} {:<16} {:<20} {:<24} {:<18} {:<6} {}",
            e.sequence,
            fmt_time(e.time_ms).chars().take(19).collect::<String>(),
            e.organisation,
            e.action,
            e.kind,
            e.resource,
            e.purpose,
            e.decision,
            e.policy_ids.join(",")
        );
    }
    if let Some(n) = r.next_page_after {
        println!("next page after {n}: add `--page-after {n}`");
    }
}

async fn client(
    profile: Option<PathBuf>,
) -> Result<pb::audit_client::AuditClient<tonic::transport::Channel>, Failure> {
    let p = ClientProfile::resolve(profile.as_deref())?;
    Ok(pb::audit_client::AuditClient::new(p.connect().await?)
        .max_decoding_message_size(256 * 1024 * 1024))
}

async fn status(profile: Option<PathBuf>) -> Result<pb::AuditStatusResponse, Failure> {
    client(profile)
        .await?
        .status(pb::AuditStatusRequest {})
        .await
        .answer()
}

pub async fn run(cmd: AuditCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        AuditCmd::Query {
            profile,
            dataset,
            organisation,
            user,
            purpose,
            decision,
            from,
            to,
            limit,
            page_after,
        } => {
            let r = client(profile)
                .await?
                .query(pb::AuditQueryRequest {
                    dataset,
                    organisation,
                    user,
                    purpose,
                    decision,
                    from_ms: from.unwrap_or(0),
                    to_ms: to.unwrap_or(0),
                    page_after,
                    limit,
                })
                .await
                .answer()?;
            print_entries(&r, json);
            Ok(())
        }
        AuditCmd::MyAccesses {
            profile,
            limit,
            page_after,
        } => {
            let r = client(profile)
                .await?
                .my_accesses(pb::MyAccessesRequest { page_after, limit })
                .await
                .answer()?;
            print_entries(&r, json);
            Ok(())
        }
        AuditCmd::Export {
            profile,
            from,
            to,
            out,
        } => {
            let r = client(profile)
                .await?
                .export(pb::AuditExportRequest {
                    from_ms: from.unwrap_or(0),
                    to_ms: to.unwrap_or(0),
                })
                .await
                .answer()?;
            match out {
                Some(path) => {
                    std::fs::write(&path, &r.bundle).map_err(|e| {
                        Failure::new(
                            exit::FAILED,
                            format!("cannot write `{}`: {e}", path.display()),
                        )
                    })?;
                    eprintln!(
                        "exported {} entries (checkpoint size {}) to {}",
                        r.entries,
                        r.checkpoint_size,
                        path.display()
                    );
                }
                None => {
                    std::io::stdout().write_all(&r.bundle).map_err(|e| {
                        Failure::new(exit::FAILED, format!("cannot write the bundle: {e}"))
                    })?;
                }
            }
            Ok(())
        }
        AuditCmd::Verify { bundle, trust } => {
            let bytes = std::fs::read(&bundle).map_err(|e| {
                Failure::new(
                    exit::INPUT,
                    format!("cannot read bundle `{}`: {e}", bundle.display()),
                )
            })?;
            let text = std::fs::read_to_string(&trust).map_err(|e| {
                Failure::new(
                    exit::INPUT,
                    format!("cannot read trust file `{}`: {e}", trust.display()),
                )
            })?;
            let tf = allmende_audit::TrustFile::from_toml(&text).map_err(|e| {
                Failure::new(
                    exit::INPUT,
                    format!("trust file `{}`: {e}", trust.display()),
                )
            })?;
            let report = allmende_audit::verify_bundle(&bytes, &tf);
            if json {
                print_json(&serde_json::json!({
                    "ok": report.is_ok(),
                    "entries": report.entries.len(),
                    "failures": report.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                    "failed_sequences": report.failed_sequences(),
                }));
            } else if report.is_ok() {
                println!(
                    "bundle verified: {} entries, checkpoint signature and cosignatures valid",
                    report.entries.len()
                );
            } else {
                println!("bundle does NOT verify:");
                for f in &report.failures {
                    println!("  - {f}");
                }
            }
            if report.is_ok() {
                Ok(())
            } else {
                Err(Failure::new(exit::FAILED, "verification failed"))
            }
        }
        AuditCmd::VerifyLog { profile } => {
            let r = client(profile)
                .await?
                .verify_log(pb::VerifyLogRequest {})
                .await
                .answer()?;
            if json {
                print_json(
                    &serde_json::json!({"ok": r.ok, "entries_checked": r.entries_checked, "findings": r.findings, "failed_sequences": r.failed_sequences}),
                );
            } else if r.ok {
                println!(
                    "log verified: {} entries match the tree and the signed checkpoints",
                    r.entries_checked
                );
            } else {
                println!(
                    "log does NOT verify ({} entries checked):",
                    r.entries_checked
                );
                for f in &r.findings {
                    println!("  - {f}");
                }
            }
            if r.ok {
                Ok(())
            } else {
                Err(Failure::new(exit::FAILED, "the node's log does not verify"))
            }
        }
        AuditCmd::Status { profile } => {
            let r = status(profile).await?;
            if json {
                print_json(
                    &serde_json::json!({"size": r.size, "checkpoint_size": r.checkpoint_size, "indexed": r.indexed, "origin": r.origin, "log_vkey": r.log_vkey, "witness_vkey": r.witness_vkey, "cosignatures_on_latest": r.cosignatures_on_latest, "findings": r.findings}),
                );
            } else {
                println!("origin      {}", r.origin);
                println!(
                    "entries     {} (checkpoint covers {}, indexed {})",
                    r.size, r.checkpoint_size, r.indexed
                );
                println!(
                    "cosigned by {} witnesses (latest checkpoint)",
                    r.cosignatures_on_latest
                );
                println!("log key     {}", r.log_vkey);
                println!("witness key {}", r.witness_vkey);
                for f in &r.findings {
                    println!("FINDING     {f}");
                }
            }
            Ok(())
        }
        AuditCmd::Keys { profile } => {
            let r = status(profile).await?;
            // A trust file for this node's log: its log key and the witness
            // keys of the peers that cosign it (pinned by the node on first
            // use — compare them with the peers' operators before trusting).
            let mut out = format!(
                "# keys.toml for the audit log of `{}`; check the keys out of band\n",
                r.origin
            );
            if !r.peer_witness_vkeys.is_empty() {
                out.push_str(&format!(
                    "witness_quorum = {}\n",
                    r.peer_witness_vkeys.len()
                ));
            }
            out.push_str(&format!(
                "\n[[log]]\norigin = \"{}\"\nkeys = [\"{}\"]\n",
                r.origin, r.log_vkey
            ));
            for k in &r.peer_witness_vkeys {
                out.push_str(&format!("\n[[witness]]\nkey = \"{k}\"\n"));
            }
            out.push_str(&format!(
                "\n# this node as a witness of other logs:\n# [[witness]]\n# key = \"{}\"\n",
                r.witness_vkey
            ));
            print!("{out}");
            Ok(())
        }
    }
}
