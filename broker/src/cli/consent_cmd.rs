//! `allmende consent …`: import a utility's consent CSV, give and withdraw
//! consent (with signed receipts), list a subject's records, verify a
//! receipt offline, see who accessed a subject's data.

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
        /// A directory to save the signed receipts in (one
        /// `<record id>.json` per changed record).
        #[arg(long)]
        receipt_dir: Option<PathBuf>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Give consent for one dataset (the record then holds exactly these
    /// purposes); prints the record and saves the node's signed receipt.
    Give {
        /// The data subject (a citizen's own user id).
        #[arg(long)]
        subject: String,
        #[arg(long)]
        dataset: String,
        /// Purposes, comma separated (e.g. `AcademicResearch`).
        #[arg(long, value_delimiter = ',', required = true)]
        purpose: Vec<String>,
        /// Consent ends after this many days (default: until withdrawn).
        #[arg(long)]
        days: Option<u32>,
        /// Where to save the signed receipt (JSON).
        #[arg(long)]
        receipt: Option<PathBuf>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Erase a data subject (GDPR Art. 17): excluded from every later
    /// release for good; each organisation that received the subject's
    /// rows gets a signed erasure notice and a deletion duty.
    Erase {
        /// The data subject (a citizen's own user id).
        #[arg(long)]
        subject: String,
        /// Only this dataset (default: every dataset).
        #[arg(long, default_value = "")]
        dataset: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Show a subject's consent records and erasures.
    #[command(name = "list", aliases = ["show", "get"])]
    Show {
        /// The data subject.
        #[arg(long)]
        subject: String,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Verify a consent receipt offline: signed by a node of the controller
    /// it names, whose certificate chains to the federation root.
    ReceiptVerify {
        /// The receipt file (JSON).
        #[arg(long)]
        receipt: PathBuf,
        /// The federation root certificate (PEM).
        #[arg(long)]
        federation_root: PathBuf,
    },
    /// Who accessed data about me: every audited release that included the
    /// subject's rows (when, organisation, purpose, grant, rows) and every
    /// consent change (give, withdraw, erase), in time order.
    WhoAccessed {
        /// The data subject (default: the profile's own user id, for a
        /// citizen certificate).
        #[arg(long)]
        subject: Option<String>,
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
            receipt_dir,
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
            let mut saved = Vec::new();
            if let Some(dir) = &receipt_dir {
                for rc in &r.receipts {
                    let path = dir.join(format!("{}.json", file_safe(&rc.record_id)));
                    write_receipt(&path, &rc.json)?;
                    saved.push(path.display().to_string());
                }
            }
            Ok(if json {
                json_line(&serde_json::json!({
                    "subject": subject, "records_changed": r.records_changed,
                    "withdrawn_at": fmt_secs(r.withdrawn_at_unix),
                    "record_ids": r.receipts.iter().map(|x| x.record_id.clone()).collect::<Vec<_>>(),
                    "receipts_saved": saved,
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
        ConsentCmd::Give {
            subject,
            dataset,
            purpose,
            days,
            receipt,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let expires_at_unix = match days {
                None => 0,
                Some(d) => {
                    crate::clock::Clock::now_unix_secs(&crate::clock::SystemClock)
                        + i64::from(d) * 86_400
                }
            };
            let r = pb::consent_client::ConsentClient::new(p.connect().await?)
                .give(pb::GiveConsentRequest {
                    subject_id: subject.clone(),
                    dataset: dataset.clone(),
                    purposes: purpose,
                    expires_at_unix,
                })
                .await
                .answer()?;
            let rc = r.receipt.unwrap_or_default();
            if let Some(path) = &receipt {
                write_receipt(path, &rc.json)?;
            }
            let records: Vec<pb::ConsentRecord> = r.record.into_iter().collect();
            Ok(if json {
                json_line(&serde_json::json!({
                    "subject": subject, "dataset": dataset, "record_id": rc.record_id,
                    "receipt": serde_json::from_str::<serde_json::Value>(&rc.json).ok(),
                }))
            } else {
                let mut out = format!(
                    "consent of `{subject}` for `{dataset}` recorded (record {})\n",
                    rc.record_id
                );
                out.push_str(&render_records(&subject, &records, false));
                if let Some(path) = &receipt {
                    out.push_str(&format!("receipt saved to `{}`\n", path.display()));
                }
                out
            })
        }
        ConsentCmd::ReceiptVerify {
            receipt,
            federation_root,
        } => {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|e| {
                    Failure::new(
                        exit::INPUT,
                        format!("cannot read `{}`: {e}", path.display()),
                    )
                })
            };
            let bytes = read(&receipt)?;
            let root = String::from_utf8_lossy(&read(&federation_root)?).into_owned();
            let v = crate::consent::receipt::verify(&bytes, &root).map_err(|e| match e {
                crate::consent::ReceiptError::Root(_) => Failure::new(exit::INPUT, e.to_string()),
                other => Failure::new(
                    exit::FAILED,
                    format!("`{}` does not verify: {other}", receipt.display()),
                ),
            })?;
            let p = &v.payload;
            Ok(if json {
                json_line(&serde_json::json!({
                    "valid": true, "node": v.node.uri(),
                    "payload": serde_json::to_value(p).unwrap_or_default(),
                }))
            } else {
                format!(
                    "receipt `{}` is valid: signed by `{}` for controller `{}`\n\
                     record {} of `{}` for `{}`: {} ({}) at {}; purposes {}; collected by {}\n",
                    p.receipt_id,
                    v.node.uri(),
                    p.controller,
                    p.record_id,
                    p.subject,
                    p.dataset,
                    p.status,
                    p.event,
                    p.issued_at,
                    p.purposes
                        .iter()
                        .map(|x| x.purpose.clone())
                        .collect::<Vec<_>>()
                        .join(","),
                    p.collection_method
                )
            })
        }
        ConsentCmd::WhoAccessed { subject, profile } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let ch = p.connect().await?;
            let subject = match subject {
                Some(s) => s,
                None => pb::federation_client::FederationClient::new(ch.clone())
                    .who_am_i(pb::WhoAmIRequest::default())
                    .await
                    .answer()?
                    .principal
                    .map(|p| p.name)
                    .unwrap_or_default(),
            };
            let r = pb::consent_client::ConsentClient::new(ch)
                .who_accessed(pb::WhoAccessedRequest {
                    subject_id: subject.clone(),
                })
                .await
                .answer()?;
            Ok(render_history(&subject, &r.events, json))
        }
        ConsentCmd::Show { subject, profile } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::consent_client::ConsentClient::new(p.connect().await?)
                .get(pb::GetConsentRequest {
                    subject_id: subject.clone(),
                })
                .await
                .answer()?;
            if json {
                return Ok(json_line(&serde_json::json!({
                    "subject": subject,
                    "records": serde_json::from_str::<serde_json::Value>(
                        render_records(&subject, &r.records, true).trim()
                    ).ok().and_then(|v| v.get("records").cloned()),
                    "erasures": r.erasures.iter().map(erasure_json).collect::<Vec<_>>(),
                })));
            }
            let mut out = render_records(&subject, &r.records, false);
            for e in &r.erasures {
                out.push_str(&render_erasure(e));
            }
            Ok(out)
        }
        ConsentCmd::Erase {
            subject,
            dataset,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let r = pb::consent_client::ConsentClient::new(p.connect().await?)
                .erase(pb::EraseSubjectRequest {
                    subject_id: subject,
                    dataset,
                })
                .await
                .answer()?;
            let e = r.erasure.unwrap_or_default();
            Ok(if json {
                json_line(&erasure_json(&e))
            } else {
                render_erasure(&e)
            })
        }
    }
}

/// A subject's history as a table (or JSON).
pub fn render_history(subject: &str, events: &[pb::SubjectEvent], json: bool) -> String {
    let when = |ms: u64| fmt_secs(i64::try_from(ms / 1000).unwrap_or(i64::MAX));
    if json {
        let v: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "at": when(e.time_ms), "audit_sequence": e.audit_sequence, "kind": e.kind,
                    "org": e.org, "dataset": e.dataset, "purpose": e.purpose,
                    "grant_id": e.grant_id, "rows": e.rows, "outcome": e.outcome,
                })
            })
            .collect();
        return json_line(&serde_json::json!({ "subject": subject, "events": v }));
    }
    if events.is_empty() {
        return format!(
            "no release included `{subject}`'s rows and no consent change is recorded\n"
        );
    }
    let mut out = format!(
        "{:<21} {:<9} {:<14} {:<24} {:<20} {:<34} {}\n",
        "WHEN", "EVENT", "ORGANISATION", "DATASET", "PURPOSE", "GRANT", "ROWS"
    );
    for e in events {
        out.push_str(&format!(
            "{:<21} {:<9} {:<14} {:<24} {:<20} {:<34} {}\n",
            when(e.time_ms),
            e.kind,
            e.org,
            e.dataset,
            dash(&e.purpose),
            dash(&e.grant_id),
            if e.kind == "release" {
                e.rows.to_string()
            } else {
                "-".to_owned()
            }
        ));
    }
    out
}

/// `-` for an empty cell.
fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// An erasure as JSON.
fn erasure_json(e: &pb::ErasureRecord) -> serde_json::Value {
    serde_json::json!({
        "record_id": e.record_id, "subject": e.subject_id,
        "dataset": if e.dataset.is_empty() { "*" } else { e.dataset.as_str() },
        "requested_at": fmt_secs(e.requested_at_unix), "requested_by": e.requested_by,
        "recipients": e.recipients.iter().map(|r| serde_json::json!({
            "org": r.org, "grant_id": r.grant_id, "dataset": r.dataset,
            "duty_id": r.duty_id, "due": fmt_secs(r.due_unix), "notice_id": r.notice_id,
        })).collect::<Vec<_>>(),
    })
}

/// An erasure with its recipients, as text.
fn render_erasure(e: &pb::ErasureRecord) -> String {
    let mut out = format!(
        "erasure {} of `{}` for {} at {} by `{}`: excluded from every later release\n",
        e.record_id,
        e.subject_id,
        if e.dataset.is_empty() {
            "every dataset".to_owned()
        } else {
            format!("`{}`", e.dataset)
        },
        fmt_secs(e.requested_at_unix),
        e.requested_by
    );
    if e.recipients.is_empty() {
        out.push_str("  no organisation received the subject's rows\n");
    }
    for r in &e.recipients {
        out.push_str(&format!(
            "  recipient `{}` (grant {}, `{}`): erasure notice {}, deletion duty {} due {}\n",
            r.org,
            r.grant_id,
            r.dataset,
            r.notice_id,
            r.duty_id,
            fmt_secs(r.due_unix)
        ));
    }
    out
}

/// A subject's records as a table (or JSON).
pub fn render_records(subject: &str, records: &[pb::ConsentRecord], json: bool) -> String {
    if json {
        let v: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "record_id": r.record_id, "collection_method": r.collection_method,
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

/// A record id as a file name (ids are hex; anything else is replaced).
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn write_receipt(path: &std::path::Path, json: &str) -> Result<(), Failure> {
    std::fs::write(path, json).map_err(|e| {
        Failure::new(
            exit::INPUT,
            format!("cannot write the receipt to `{}`: {e}", path.display()),
        )
    })
}

/// One JSON value as a line of `--json` output.
fn json_line(value: &serde_json::Value) -> String {
    format!("{value}\n")
}
