//! `allmende obligations …`: a city's operators record, change and end the
//! obligations its node holds; its operators and DPO, and each obliged
//! organisation for itself, see compliance per company and window.

use super::{Answer, Failure, exit};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::Subcommand;
use std::path::PathBuf;

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
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

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
        ObligationsCmd::Status {
            organisation,
            dataset,
            from,
            to,
            profile,
        } => {
            let req = pb::ObligationStatusRequest {
                organisation: organisation.unwrap_or_default(),
                dataset: dataset.unwrap_or_default(),
                from: hour(from)?,
                to: hour(to)?,
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
}
