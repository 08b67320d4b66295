//! Story 7, obligations: `scooter-co` delivers its hourly MDS batches to
//! the city; a missed delivery shows up as non-compliant; the city reads
//! the delivered data. Every step talks to the nodes as the parties would:
//! the city's operator records the obligation over gRPC, the city's
//! steward registers the `mds` source, the city's node pulls scooter-co's
//! provider endpoint (mTLS, bearer token, decided and audited at
//! scooter-co), the city's DPO reads the compliance status and the audit
//! log, the steward reads the delivered trips. Time passes on the
//! federation's manual clock, four hours in four steps; one hour's batch
//! file is missing at the company (its export failed).

use super::scooter::{
    CITY_NODE, DELIVERED, GRACE_SECS, OBLIGED, SCOOTER_NODE, batch_dir, record_obligation,
    register_source, serve_provider, write_batch,
};
use super::stories::channel_at;
use super::{DemoError, StoryOutcome, check};
use crate::clock::{Clock, ManualClock};
use crate::sandbox::{Sandbox, SandboxSpec};
use allmende_connectors::mds::HOUR_MS;
use allmende_connectors::mds::sample::batch_file_name;
use allmende_proto::v1 as pb;
use std::time::Duration;

pub(super) async fn run() -> Result<StoryOutcome, DemoError> {
    println!(
        "story 7: `scooter-co` delivers its hourly MDS batch; a missed delivery shows up as non-compliant; the city reads the delivered data\n"
    );
    let clock = ManualClock::starting_now();
    let mut sb = Sandbox::start(SandboxSpec::munich(), None, clock.clone()).await?;
    if let Err(e) = sb.register_demo_datasets().await {
        let _ = sb.shutdown().await;
        return Err(e.into());
    }
    let result = steps(&mut sb, &clock).await;
    let _ = sb.shutdown().await;
    Ok(match result {
        Ok(()) => StoryOutcome::Passed,
        Err(e) => StoryOutcome::Failed(e),
    })
}

fn rfc(ms: i64) -> String {
    crate::timefmt::format_unix_ms(ms)
}

/// Writes scooter-co's hourly batch files for `hours` except `missed`, and
/// returns the number of trips in each written hour.
fn write_batches(
    dir: &std::path::Path,
    hours: &[i64],
    missed: i64,
) -> Result<Vec<(i64, usize)>, String> {
    hours
        .iter()
        .copied()
        .filter(|h| *h != missed)
        .map(|h| Ok((h, write_batch(dir, h)?)))
        .collect()
}

async fn steps(sb: &mut Sandbox, clock: &ManualClock) -> Result<(), String> {
    let mut n = 0;
    let mut step = |text: &str| {
        n += 1;
        super::step(n, text);
    };
    // The four hours: the one now running and the next three.
    let first = clock.now_unix_ms().div_euclid(HOUR_MS) * HOUR_MS;
    let hours: Vec<i64> = (0..4).map(|i| first + i * HOUR_MS).collect();
    let missed = hours[2];

    step(
        "scooter-co exports an MDS 2.0 batch per UTC hour and serves them on its provider endpoint (mTLS + bearer token); its export of one hour fails",
    );
    let written = write_batches(&batch_dir(sb), &hours, missed)?;
    for (h, trips) in &written {
        println!(
            "        {}: {trips} trips",
            batch_file_name(*h).unwrap_or_default()
        );
    }
    println!(
        "        {}: not written (the export failed)",
        batch_file_name(missed).unwrap_or_default()
    );
    let listen = "127.0.0.1:0".parse().map_err(|_| "address")?;
    let provider = serve_provider(sb, listen).await?;
    println!("        provider endpoint: https://{provider}");
    let scooter_before = sb
        .node(SCOOTER_NODE)
        .map(|n| n.audit.status().size)
        .unwrap_or(0);
    let city_before = sb
        .node(CITY_NODE)
        .map(|n| n.audit.status().size)
        .unwrap_or(0);

    step(
        "the city's operator records the obligation: scooter-co delivers `scooter-trips` per UTC hour, 15 minutes grace",
    );
    let recorded = record_obligation(sb, first).await?;
    if let Some(v) = &recorded.current {
        println!(
            "        obligation `{}` v{}: {} delivers `{}` per {}, {} s grace, from {}, recorded by {}",
            v.id,
            v.version,
            v.organisation,
            v.dataset,
            v.cadence,
            v.grace_seconds,
            v.from,
            v.recorded_by
        );
    }
    check(
        recorded
            .current
            .as_ref()
            .is_some_and(|v| v.organisation == "scooter-co" && v.grace_seconds == GRACE_SECS),
        "the obligation is recorded at the city's node",
    )?;
    // Nobody else may: scooter-co's operator is refused (and audited).
    let mut theirs = pb::obligations_client::ObligationsClient::new(
        channel_at(sb, CITY_NODE, "scooter-co", "operator").await?,
    );
    let refused = theirs
        .record(pb::RecordObligationRequest {
            organisation: "scooter-co".into(),
            dataset: OBLIGED.into(),
            cadence: "hour".into(),
            grace_seconds: 7 * 86_400,
            from: rfc(first),
            until: String::new(),
        })
        .await;
    check(
        matches!(&refused, Err(e) if e.code() == tonic::Code::PermissionDenied),
        "scooter-co's operator cannot record or soften obligations at the city's node",
    )?;

    step(
        "the city's steward registers the `mds` source: the city's node pulls each ended hour from scooter-co's endpoint",
    );
    register_source(sb, provider, first, 1).await?;
    check(
        true,
        "source registered as `mds-scooter-trips` at the city's node",
    )?;

    let obligations = sb
        .node(CITY_NODE)
        .map(|n| n.obligations.clone())
        .ok_or("the city's node is not running")?;
    for (i, h) in hours.iter().enumerate() {
        step(&format!(
            "{} ends; one minute later the city's node pulls it",
            rfc(*h)
        ));
        clock.set_unix_ms(h + HOUR_MS + 60_000);
        obligations.nudge();
        let want_accepted = *h != missed;
        let got = wait_for_attempt(sb, *h, want_accepted).await?;
        println!("        {got}");
        if i == hours.len() - 1 {
            break;
        }
    }
    // Past the missed hour's deadline (its end + 15 minutes).
    clock.set_unix_ms(hours[3] + HOUR_MS + GRACE_SECS as i64 * 1000 + 60_000);
    obligations.nudge();

    step(
        "the city's DPO reads the compliance status: three hours delivered, the missed one non-compliant",
    );
    let mut dpo = pb::obligations_client::ObligationsClient::new(
        channel_at(sb, CITY_NODE, "stadt", "dpo").await?,
    );
    let windows = wait_for_flag(&mut dpo, first, missed).await?;
    for w in &windows {
        println!(
            "        {:<20} {:<10} accepted {:<20} flagged {}  {}",
            w.window_start,
            w.status,
            if w.accepted_at.is_empty() {
                "-"
            } else {
                &w.accepted_at
            },
            if w.flagged.is_empty() {
                "-"
            } else {
                &w.flagged
            },
            w.reasons.join("; ")
        );
    }
    let status_of = |h: i64| {
        windows
            .iter()
            .find(|w| w.window_start == rfc(h))
            .map(|w| (w.status.as_str(), w.flagged.as_str()))
    };
    for h in &hours {
        if *h == missed {
            check(
                status_of(*h) == Some(("missing", "missing")),
                &format!("{} is missing and flagged non-compliant", rfc(*h)),
            )?;
        } else {
            check(
                status_of(*h) == Some(("delivered", "")),
                &format!("{} was delivered in time", rfc(*h)),
            )?;
        }
    }

    step(
        "both nodes audited it: scooter-co each answer it gave the city's node, the city each delivery and the flag",
    );
    let scooter = super::audit_entries(sb, SCOOTER_NODE, scooter_before)?;
    let answers = scooter
        .iter()
        .filter(|e| e.action == "deliver_obligation")
        .count();
    check(
        answers >= 3 * 3,
        &format!(
            "scooter-co audited {answers} answers to the city's node (3 parts × 3 hours, and the asks for the missed one)"
        ),
    )?;
    let city = super::audit_entries(sb, CITY_NODE, city_before)?;
    for e in city
        .iter()
        .filter(|e| e.action == "mds_delivery" || e.action == "flag_obligation")
    {
        println!("        {} {} {:?}", e.action, e.resource, e.policy_ids);
    }
    let deliveries = city.iter().filter(|e| e.action == "mds_delivery").count();
    check(
        deliveries == 3,
        "the city audited three accepted deliveries",
    )?;
    let flags: Vec<_> = city
        .iter()
        .filter(|e| e.action == "flag_obligation")
        .collect();
    check(
        flags.len() == 1
            && flags[0].resource.contains(&rfc(missed))
            && flags[0].policy_ids.iter().any(|p| p == "status:missing"),
        "the city audited exactly one flag: the missed hour, status missing",
    )?;

    step(
        "the city's steward reads the delivered trips (PublicInterest), decided and audited at the city's node",
    );
    let rows = read_delivered(sb).await?;
    let want: usize = written.iter().map(|(_, t)| t).sum();
    check(
        rows == want,
        &format!("{rows} trips read = the three delivered hours' {want}"),
    )?;
    println!("\nstory 7 passed");
    Ok(())
}

/// Waits (up to 30 s of real time) for the city's first attempt at `hour`:
/// accepted when `accepted`, else unavailable; describes it.
async fn wait_for_attempt(sb: &Sandbox, hour: i64, accepted: bool) -> Result<String, String> {
    use crate::obligations::Outcome;
    let node = sb.node(CITY_NODE).ok_or("the city's node is not running")?;
    let deliveries = node.obligations.deliveries();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempts = deliveries
            .window("scooter-co", OBLIGED, hour)
            .map_err(|e| e.to_string())?;
        let found = attempts.iter().find(|d| match &d.outcome {
            Outcome::Accepted { .. } => accepted,
            Outcome::Unavailable { .. } => !accepted,
            Outcome::Rejected { .. } => false,
        });
        if let Some(d) = found {
            let what = match &d.outcome {
                Outcome::Accepted { rows } => format!(
                    "accepted: {}",
                    rows.iter()
                        .map(|(p, n)| format!("{n} {p}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Outcome::Unavailable { reason } => format!("unavailable: {reason}"),
                Outcome::Rejected { reasons, .. } => format!("rejected: {}", reasons.join("; ")),
            };
            check(
                true,
                &format!(
                    "{} {}",
                    rfc(hour),
                    if accepted {
                        "delivered"
                    } else {
                        "not delivered"
                    }
                ),
            )?;
            return Ok(what);
        }
        if let Some(r) = attempts.iter().find_map(|d| match &d.outcome {
            Outcome::Rejected { reasons, .. } => Some(reasons.join("; ")),
            _ => None,
        }) {
            return Err(format!("{} was rejected: {r}", rfc(hour)));
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "no {} attempt for {} within 30 s: {attempts:?}",
                if accepted { "accepted" } else { "unavailable" },
                rfc(hour)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The four windows' status, once the missed one is flagged (up to 30 s).
async fn wait_for_flag(
    dpo: &mut pb::obligations_client::ObligationsClient<tonic::transport::Channel>,
    first: i64,
    missed: i64,
) -> Result<Vec<pb::ObligationWindow>, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = dpo
            .status(pb::ObligationStatusRequest {
                organisation: "scooter-co".into(),
                dataset: OBLIGED.into(),
                from: rfc(first),
                to: rfc(first + 4 * HOUR_MS),
            })
            .await
            .map_err(|e| format!("compliance status: {}", e.message()))?
            .into_inner();
        let flagged = status
            .windows
            .iter()
            .any(|w| w.window_start == rfc(missed) && !w.flagged.is_empty());
        if flagged || std::time::Instant::now() > deadline {
            return Ok(status.windows);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of the delivered dataset the city's steward reads.
async fn read_delivered(sb: &Sandbox) -> Result<usize, String> {
    let mut access =
        pb::access_client::AccessClient::new(channel_at(sb, CITY_NODE, "stadt", "steward").await?);
    let mut stream = access
        .fetch(pb::FetchRequest {
            dataset: DELIVERED.into(),
            purpose: "PublicInterest".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("fetch refused: {}", e.message()))?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = stream
        .message()
        .await
        .map_err(|e| format!("fetch failed: {}", e.message()))?
    {
        bytes.extend(m.arrow_ipc);
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| e.to_string())?;
    let mut rows = 0;
    for b in reader {
        rows += b.map_err(|e| e.to_string())?.num_rows();
    }
    Ok(rows)
}
