//! `allmende consent …`: import a utility's consent CSV, withdraw consent,
//! show a subject's records.

use super::exit;
use super::{Answer, Failure};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum ConsentCmd {
    /// Import consent records (CSV: subject_id, controller, dataset, purposes,
    /// status, given_at, withdrawn_at, expires_at). All rows or none; every
    /// bad row is reported with its line number.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// The dataset the records are for (every row must name it).
        #[arg(long)]
        dataset: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Withdraw consent; effective for the next request.
    Withdraw {
        /// The data subject (a citizen's own user id).
        #[arg(long)]
        subject: String,
        /// Only this dataset (default: every dataset).
        #[arg(long, default_value = "")]
        dataset: String,
        /// Only this purpose (default: every purpose).
        #[arg(long, default_value = "")]
        purpose: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Show a subject's consent records.
    #[command(alias = "get")]
    Show {
        /// The data subject.
        #[arg(long)]
        subject: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

/// Runs a consent command and prints its output.
pub async fn run(cmd: ConsentCmd, json: bool) -> Result<(), Failure> {
    let out = output(cmd, json).await?;
    print!("{out}");
    Ok(())
}

fn fmt_secs(s: i64) -> String {
    crate::consent::format_time(s)
}

/// Runs a consent command and returns what it would print.
pub async fn output(cmd: ConsentCmd, json: bool) -> Result<String, Failure> {
    match cmd {
        ConsentCmd::Import {
            file,
            dataset,
            profile,
        } => {
            let csv = std::fs::read(&file).map_err(|e| {
                Failure::new(
                    exit::INPUT,
                    format!("cannot read `{}`: {e}", file.display()),
                )
            })?;
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::consent_client::ConsentClient::new(p.connect().await?)
                .max_encoding_message_size(64 * 1024 * 1024)
                .import(pb::ImportConsentRequest {
                    dataset: dataset.clone(),
                    csv,
                })
                .await
                .answer()?;
            Ok(if json {
                json_line(&serde_json::json!({
                    "dataset": dataset, "rows": r.rows, "stored": r.stored,
                    "unchanged": r.unchanged, "superseded": r.superseded,
                }))
            } else {
                format!(
                    "imported {} row(s) for `{dataset}`: {} stored, {} unchanged, {} kept a newer decision\n",
                    r.rows, r.stored, r.unchanged, r.superseded
                )
            })
        }
        ConsentCmd::Withdraw {
            subject,
            dataset,
            purpose,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::consent_client::ConsentClient::new(p.connect().await?)
                .withdraw(pb::WithdrawConsentRequest {
                    subject_id: subject.clone(),
                    dataset,
                    purpose,
                })
                .await
                .answer()?;
            Ok(if json {
                json_line(&serde_json::json!({
                    "subject": subject, "records_changed": r.records_changed,
                    "withdrawn_at": fmt_secs(r.withdrawn_at_unix),
                }))
            } else if r.records_changed == 0 {
                format!("no given consent of `{subject}` matched; nothing changed\n")
            } else {
                format!(
                    "withdrew {} consent record(s) of `{subject}` at {}\n",
                    r.records_changed,
                    fmt_secs(r.withdrawn_at_unix)
                )
            })
        }
        ConsentCmd::Show { subject, profile } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::consent_client::ConsentClient::new(p.connect().await?)
                .get(pb::GetConsentRequest {
                    subject_id: subject.clone(),
                })
                .await
                .answer()?;
            Ok(render_records(&subject, &r.records, json))
        }
    }
}

/// A subject's records as a table (or JSON).
pub fn render_records(subject: &str, records: &[pb::ConsentRecord], json: bool) -> String {
    if json {
        let v: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "subject": r.subject_id, "controller": r.controller, "dataset": r.dataset,
                    "purposes": r.purposes, "status": r.status,
                    "given_at": fmt_secs(r.given_at_unix),
                    "withdrawn_at": r.withdrawn_at_unix.map(fmt_secs),
                    "expires_at": r.expires_at_unix.map(fmt_secs),
                    "withdrawn_purposes": r.withdrawn_purposes.iter().map(|w| serde_json::json!({
                        "purpose": w.purpose, "withdrawn_at": fmt_secs(w.withdrawn_at_unix),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return json_line(&serde_json::json!({ "subject": subject, "records": v }));
    }
    if records.is_empty() {
        return format!("no consent records for `{subject}`\n");
    }
    let mut out = format!(
        "{:<24} {:<10} {:<34} {:<21} {}\n",
        "DATASET", "STATUS", "PURPOSES", "SINCE", "EXPIRES"
    );
    for r in records {
        let since = match r.withdrawn_at_unix {
            Some(w) if r.status == "withdrawn" => fmt_secs(w),
            _ => fmt_secs(r.given_at_unix),
        };
        out.push_str(&format!(
            "{:<24} {:<10} {:<34} {:<21} {}\n",
            r.dataset,
            r.status,
            r.purposes.join(","),
            since,
            r.expires_at_unix.map_or_else(|| "-".to_owned(), fmt_secs)
        ));
    }
    out
}

/// One JSON value as a line of `--json` output.
fn json_line(value: &serde_json::Value) -> String {
    format!("{value}\n")
}
