//! `allmende obligations …`: a city's operators record, change and end the
//! obligations its node holds; its operators and DPO, and each obliged
//! organisation for itself, see compliance per company and window.

use super::{Answer, Failure, exit};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Which compliance windows a listing covers (`status`, `rejected`).
#[derive(Debug, Args)]
pub struct Windows {
    #[arg(long)]
    organisation: Option<String>,
    #[arg(long)]
    dataset: Option<String>,
    /// First window, a UTC hour (`2026-11-30T10`); default: 24 hours
    /// before `--to`.
    #[arg(long)]
    from: Option<String>,
    /// Windows starting before this UTC hour; default: after the
    /// current one.
    #[arg(long)]
    to: Option<String>,
}

impl Windows {
    /// The organisation, dataset, first and end hour as the requests
    /// carry them (empty: any).
    fn parts(self) -> Result<(String, String, String, String), Failure> {
        Ok((
            self.organisation.unwrap_or_default(),
            self.dataset.unwrap_or_default(),
            hour(self.from)?,
            hour(self.to)?,
        ))
    }
}

#[derive(Debug, Subcommand)]
pub enum ObligationsCmd {
    /// Oblige an organisation (a company or utility) to deliver a dataset
    /// per UTC hour within a grace period (a city's operators).
    Record {
        #[arg(long)]
        organisation: String,
        #[arg(long)]
        dataset: String,
        /// Grace period after each window's end, e.g. `15m`, `1h`, `90s`.
        #[arg(long)]
        grace: String,
        /// First window, a UTC hour (`2026-11-30T10`); default: the next.
        #[arg(long)]
        from: Option<String>,
        /// Windows starting at or after this UTC hour are not obliged.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Change an obligation's grace period or end from the next window on.
    Change {
        id: String,
        #[arg(long)]
        grace: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// End an obligation at the next window start (or at `--at`).
    End {
        id: String,
        /// Windows starting at or after this UTC hour are not obliged.
        #[arg(long)]
        at: Option<String>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// The obligations the node holds, with their history.
    List {
        #[arg(long)]
        organisation: Option<String>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Compliance per company and window: delivered, late, invalid,
    /// missing or pending.
    Status {
        #[command(flatten)]
        windows: Windows,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Rejected batches kept for inspection, with their reasons; with
    /// `--id`, one batch's raw answers (saved with `--save DIR`).
    Rejected {
        #[command(flatten)]
        windows: Windows,
        /// One kept batch, as a listing names it.
        #[arg(long)]
        id: Option<String>,
        /// Write the batch's answers as `<part>.json` into this directory
        /// (with `--id`).
        #[arg(long, requires = "id")]
        save: Option<PathBuf>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

/// Largest answer of `Rejected` the command line takes: one kept batch
/// (at most 4 MiB of answers) and its envelope.
const MAX_REJECTED_ANSWER: usize = 8 << 20;

/// Runs an obligations command and prints its output.
pub async fn run(cmd: ObligationsCmd, json: bool) -> Result<(), Failure> {
    let out = output(cmd, json).await?;
    print!("{out}");
    Ok(())
}

fn input(msg: String) -> Failure {
    Failure::new(exit::INPUT, msg)
}

/// A grace period: a whole number with `s`, `m` or `h` (or `0`).
pub fn parse_grace(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "grace `{}` is not a duration like `15m`, `1h` or `90s`",
            crate::text::shown(s, 40)
        )
    };
    if s == "0" {
        return Ok(0);
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// A UTC hour as `2026-11-30T10`, `2026-11-30T10:00` or RFC 3339.
pub fn parse_hour(s: &str) -> Result<String, String> {
    let full = match s.len() {
        13 => format!("{s}:00:00Z"),
        16 => format!("{s}:00Z"),
        _ => s.to_owned(),
    };
    crate::timefmt::parse(&full).map(|_| full).map_err(|_| {
        format!(
            "`{}` is not a UTC hour like `2026-11-30T10`",
            crate::text::shown(s, 40)
        )
    })
}

fn hour(s: Option<String>) -> Result<String, Failure> {
    s.map(|s| parse_hour(&s).map_err(input))
        .transpose()
        .map(Option::unwrap_or_default)
}

async fn client(
    profile: Option<PathBuf>,
) -> Result<pb::obligations_client::ObligationsClient<tonic::transport::Channel>, Failure> {
    let p = ClientProfile::resolve(profile.as_deref())?;
    Ok(pb::obligations_client::ObligationsClient::new(
        p.connect().await?,
    ))
}

fn grace_text(secs: u64) -> String {
    if secs.is_multiple_of(3600) && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn opt(s: &str) -> serde_json::Value {
    if s.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(s.to_owned())
    }
}

fn version_json(v: &pb::ObligationVersion) -> serde_json::Value {
    serde_json::json!({
        "id": v.id, "version": v.version, "organisation": v.organisation,
        "dataset": v.dataset, "cadence": v.cadence, "grace_seconds": v.grace_seconds,
        "from": v.from, "until": opt(&v.until), "effective_from": v.effective_from,
        "recorded_by": v.recorded_by, "recorded_at": v.recorded_at, "ended": v.ended,
    })
}

fn info_json(o: &pb::ObligationInfo) -> serde_json::Value {
    serde_json::json!({
        "current": o.current.as_ref().map(version_json),
        "history": o.history.iter().map(version_json).collect::<Vec<_>>(),
    })
}

fn version_line(v: &pb::ObligationVersion) -> String {
    format!(
        "{} v{}: `{}` delivers `{}` per {} within {} from {}{}{}",
        v.id,
        v.version,
        v.organisation,
        v.dataset,
        v.cadence,
        grace_text(v.grace_seconds),
        v.from,
        if v.until.is_empty() {
            String::new()
        } else {
            format!(" until {}", v.until)
        },
        if v.ended { " (ended)" } else { "" }
    )
}

fn window_json(w: &pb::ObligationWindow) -> serde_json::Value {
    serde_json::json!({
        "obligation": w.obligation_id, "version": w.version,
        "organisation": w.organisation, "dataset": w.dataset,
        "window_start": w.window_start, "deadline": w.deadline, "status": w.status,
        "accepted_at": opt(&w.accepted_at), "rejected_at": opt(&w.rejected_at),
        "attempts": w.attempts, "reasons": w.reasons, "flagged": opt(&w.flagged),
    })
}

fn rejected_json(b: &pb::RejectedBatch) -> serde_json::Value {
    serde_json::json!({
        "id": opt(&b.id), "organisation": b.organisation, "dataset": b.dataset,
        "window_start": b.window_start, "attempted_at": b.attempted_at,
        "reasons": b.reasons, "truncated": b.truncated,
        "answers": b.answers.iter().map(|a| serde_json::json!({
            "part": a.part, "bytes": a.bytes, "body": opt(&a.body),
        })).collect::<Vec<_>>(),
    })
}

/// The rejected batches: one block per attempt, its reasons below it.
pub fn rejected_table(r: &pb::RejectedBatchesResponse) -> String {
    if r.batches.is_empty() {
        return "no rejected batches in this range\n".into();
    }
    let mut out = format!(
        "{:<20} {:<12} {:<20} {:<24} {}\n",
        "WINDOW", "ORGANISATION", "DATASET", "ATTEMPTED", "KEPT AS"
    );
    for b in &r.batches {
        let sizes: Vec<String> = b
            .answers
            .iter()
            .map(|a| format!("{} {} B", a.part, a.bytes))
            .collect();
        out.push_str(&format!(
            "{:<20} {:<12} {:<20} {:<24} {}\n",
            b.window_start,
            crate::text::shown(&b.organisation, 12),
            crate::text::shown(&b.dataset, 20),
            b.attempted_at,
            if b.id.is_empty() { "(not kept)" } else { &b.id },
        ));
        if !sizes.is_empty() {
            out.push_str(&format!(
                "  answers: {}{}\n",
                sizes.join(", "),
                if b.truncated { " (cut when kept)" } else { "" }
            ));
        }
        for reason in &b.reasons {
            out.push_str(&format!("  - {}\n", crate::text::shown(reason, 200)));
        }
    }
    out
}

/// Writes each answer of `b` as `<part>.json` into `dir`; returns the
/// lines saying where.
fn save_answers(b: &pb::RejectedBatch, dir: &std::path::Path) -> Result<String, Failure> {
    let failed = |e: std::io::Error| {
        Failure::new(
            exit::INPUT,
            format!("cannot write into `{}`: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut out = String::new();
    for a in &b.answers {
        // Part names come from the node; keep them to a plain file name.
        let name: String = a
            .part
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, &a.body).map_err(failed)?;
        out.push_str(&format!("saved {} ({} B)\n", path.display(), a.body.len()));
    }
    Ok(out)
}

/// The status table: one block per company, one line per window.
pub fn status_table(r: &pb::ObligationStatusResponse) -> String {
    let mut out = format!("judged at {}\n", r.judged_at);
    if r.windows.is_empty() {
        out.push_str("no obliged windows in this range\n");
        return out;
    }
    let mut orgs: Vec<&str> = r.windows.iter().map(|w| w.organisation.as_str()).collect();
    orgs.sort_unstable();
    orgs.dedup();
    for org in orgs {
        out.push_str(&format!("\n{org}\n"));
        out.push_str(&format!(
            "  {:<20} {:<20} {:<9} {:<8} {:<20} {:>3}  {}\n",
            "WINDOW", "DATASET", "STATUS", "FLAGGED", "DELIVERED", "TRY", "REASONS"
        ));
        for w in r.windows.iter().filter(|w| w.organisation == org) {
            let delivered = if w.accepted_at.is_empty() {
                "-"
            } else {
                w.accepted_at.as_str()
            };
            let reasons = if w.reasons.is_empty() {
                String::from("-")
            } else {
                crate::text::shown(&w.reasons.join("; "), 60)
            };
            out.push_str(&format!(
                "  {:<20} {:<20} {:<9} {:<8} {:<20} {:>3}  {}\n",
                w.window_start,
                crate::text::shown(&w.dataset, 20),
                w.status,
                if w.flagged.is_empty() { "-" } else { "yes" },
                delivered,
                w.attempts,
                reasons
            ));
        }
    }
    out
}

/// Runs an obligations command and returns what it would print.
pub async fn output(cmd: ObligationsCmd, json: bool) -> Result<String, Failure> {
    let changed = |o: pb::ObligationInfo, verb: &str| -> String {
        if json {
            format!("{}\n", info_json(&o))
        } else {
            match o.current.as_ref() {
                Some(v) => format!("{verb} {}\n", version_line(v)),
                None => format!("{verb}\n"),
            }
        }
    };
    match cmd {
        ObligationsCmd::Record {
            organisation,
            dataset,
            grace,
            from,
            until,
            profile,
        } => {
            let req = pb::RecordObligationRequest {
                organisation,
                dataset,
                cadence: "hour".into(),
                grace_seconds: parse_grace(&grace).map_err(input)?,
                from: hour(from)?,
                until: hour(until)?,
            };
            let o = client(profile).await?.record(req).await.answer()?;
            Ok(changed(o, "recorded"))
        }
        ObligationsCmd::Change {
            id,
            grace,
            until,
            profile,
        } => {
            let req = pb::ChangeObligationRequest {
                id,
                end: false,
                grace_seconds: grace.map(|g| parse_grace(&g).map_err(input)).transpose()?,
                until: hour(until)?,
            };
            let o = client(profile).await?.change(req).await.answer()?;
            Ok(changed(o, "changed"))
        }
        ObligationsCmd::End { id, at, profile } => {
            let req = pb::ChangeObligationRequest {
                id,
                end: true,
                grace_seconds: None,
                until: hour(at)?,
            };
            let o = client(profile).await?.change(req).await.answer()?;
            Ok(changed(o, "ended"))
        }
        ObligationsCmd::List {
            organisation,
            profile,
        } => {
            let r = client(profile)
                .await?
                .list(pb::ListObligationsRequest {
                    organisation: organisation.unwrap_or_default(),
                })
                .await
                .answer()?;
            if json {
                return Ok(format!(
                    "{}\n",
                    serde_json::json!({
                        "obligations": r.obligations.iter().map(info_json).collect::<Vec<_>>()
                    })
                ));
            }
            if r.obligations.is_empty() {
                return Ok("no obligations\n".into());
            }
            let mut out = String::new();
            for o in &r.obligations {
                if let Some(v) = &o.current {
                    out.push_str(&format!("{}\n", version_line(v)));
                }
                if o.history.len() > 1 {
                    for v in &o.history[..o.history.len() - 1] {
                        out.push_str(&format!(
                            "  earlier v{}: within {}, windows from {}\n",
                            v.version,
                            grace_text(v.grace_seconds),
                            v.effective_from
                        ));
                    }
                }
            }
            Ok(out)
        }
        ObligationsCmd::Status { windows, profile } => {
            let (organisation, dataset, from, to) = windows.parts()?;
            let req = pb::ObligationStatusRequest {
                organisation,
                dataset,
                from,
                to,
            };
            let r = client(profile).await?.status(req).await.answer()?;
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "judged_at": r.judged_at,
                        "windows": r.windows.iter().map(window_json).collect::<Vec<_>>(),
                    })
                )
            } else {
                status_table(&r)
            })
        }
        ObligationsCmd::Rejected {
            windows,
            id,
            save,
            profile,
        } => {
            let (organisation, dataset, from, to) = windows.parts()?;
            let req = pb::RejectedBatchesRequest {
                organisation,
                dataset,
                from,
                to,
                id: id.unwrap_or_default(),
            };
            let r = client(profile)
                .await?
                .max_decoding_message_size(MAX_REJECTED_ANSWER)
                .rejected(req)
                .await
                .answer()?;
            let mut out = if json {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "batches": r.batches.iter().map(rejected_json).collect::<Vec<_>>(),
                    })
                )
            } else {
                rejected_table(&r)
            };
            if let (Some(dir), Some(b)) = (save, r.batches.first()) {
                let saved = save_answers(b, &dir)?;
                if !json {
                    out.push_str(&saved);
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn grace_and_hours_parse_strictly() {
        assert_eq!(parse_grace("15m"), Ok(900));
        assert_eq!(parse_grace("1h"), Ok(3600));
        assert_eq!(parse_grace("0"), Ok(0));
        for bad in ["", "15", "m", "-5m", "1.5h", "15min"] {
            assert!(parse_grace(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_hour("2026-11-30T10").unwrap(), "2026-11-30T10:00:00Z");
        assert_eq!(
            parse_hour("2026-11-30T10:00").unwrap(),
            "2026-11-30T10:00:00Z"
        );
        assert!(parse_hour("2026-11-30").is_err());
        assert_eq!(grace_text(900), "15m");
        assert_eq!(grace_text(3600), "1h");
    }

    #[test]
    fn rejected_batches_show_reasons_sizes_and_save_as_plain_names() {
        let b = pb::RejectedBatch {
            id: "mds-scooter-trips@2026-11-30T10#5".into(),
            organisation: "scooter-co".into(),
            dataset: "scooter-trips".into(),
            window_start: "2026-11-30T10:00:00Z".into(),
            attempted_at: "2026-11-30T11:01:00Z".into(),
            reasons: vec!["trip 0: `end_time` precedes `start_time`".into()],
            answers: vec![pb::RawAnswer {
                part: "../trips".into(),
                bytes: 2,
                body: "{}".into(),
            }],
            truncated: true,
        };
        let table = rejected_table(&pb::RejectedBatchesResponse {
            batches: vec![b.clone()],
        });
        assert!(
            table.contains("mds-scooter-trips@2026-11-30T10#5"),
            "{table}"
        );
        assert!(
            table.contains("  - trip 0: `end_time` precedes `start_time`"),
            "{table}"
        );
        assert!(table.contains("../trips 2 B (cut when kept)"), "{table}");
        assert_eq!(
            rejected_table(&pb::RejectedBatchesResponse::default()),
            "no rejected batches in this range\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let said = save_answers(&b, dir.path()).unwrap();
        assert!(said.contains("trips.json (2 B)"), "{said}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("trips.json")).unwrap(),
            "{}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
