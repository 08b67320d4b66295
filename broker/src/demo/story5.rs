//! Story 5, open data: anyone without a certificate-bound grant reads the
//! city's `air-quality` (public space) — allowed and audited under a
//! pseudonym —, and `scooter-trips` only as the anonymised aggregate its
//! owner published from the release spec in its node config (cells under
//! k = 10 suppressed). Every step talks to the nodes as the caller would:
//! HTTPS without a client certificate to the open-data listeners, gRPC with
//! a public-tier certificate, gRPC with scooter-co's steward's certificate.

use super::stories::{audit_at, channel_at, denied_by};
use super::{DemoError, StoryOutcome, check, https};
use crate::clock::{Clock, SystemClock};
use crate::sandbox::{PUBLIC_TIER_ORG, PUBLIC_TIER_USER, Sandbox, SandboxSpec};
use allmende_proto::v1 as pb;
use std::sync::Arc;

const AIR: &str = "air-quality";
const CITY_NODE: &str = "stadt-1";
const SCOOTER: &str = "scooter-trips";
const SCOOTER_NODE: &str = "scooter-co-1";
/// The policy that keeps raw personal data from public callers.
const NO_RAW: &str = "public-no-raw-personal-data";

pub(super) async fn run() -> Result<StoryOutcome, DemoError> {
    println!(
        "story 5: anyone without a certificate-bound grant reads `air-quality` (public space): allowed, audited; reads `scooter-trips`: only the anonymised aggregate (cells under k=10 suppressed)\n"
    );
    let sb = Sandbox::start(SandboxSpec::munich(), None, Arc::new(SystemClock)).await?;
    if let Err(e) = sb.register_demo_datasets().await {
        let _ = sb.shutdown().await;
        return Err(e.into());
    }
    let result = steps(&sb).await;
    let _ = sb.shutdown().await;
    Ok(match result {
        Ok(()) => StoryOutcome::Passed,
        Err(e) => StoryOutcome::Failed(e),
    })
}

/// `GET target` at `node`'s open-data listener, without a certificate.
async fn get(sb: &Sandbox, node: &str, target: &str) -> Result<https::Answer, String> {
    let addr = sb
        .node(node)
        .and_then(|n| n.opendata_addr)
        .ok_or_else(|| format!("{node} has no open-data listener"))?;
    println!("        GET https://{addr}{target}");
    https::get(&sb.federation.root_cert(), addr, target).await
}

/// The audit entries by public callers (organisation `public`).
fn by_public(entries: &[pb::AuditEntry]) -> Vec<&pb::AuditEntry> {
    entries
        .iter()
        .filter(|e| e.organisation == "public")
        .collect()
}

async fn steps(sb: &Sandbox) -> Result<(), String> {
    let from_ms = u64::try_from(SystemClock.now_unix_ms()).unwrap_or(0);
    let mut n = 0;
    let mut step = |text: &str| {
        n += 1;
        super::step(n, text);
    };

    step(
        "an anonymous caller (no client certificate) lists the city's open data through the CKAN API",
    );
    let list = get(sb, CITY_NODE, "/api/3/action/package_list")
        .await?
        .ckan_result()?;
    println!("        package_list: {list}");
    check(
        list.as_array().is_some_and(|l| l.iter().any(|p| p == AIR)),
        "`air-quality` is listed",
    )?;
    let show = get(
        sb,
        CITY_NODE,
        &format!("/api/3/action/package_show?id={AIR}"),
    )
    .await?
    .ckan_result()?;
    let url = show["resources"][0]["url"].as_str().unwrap_or_default();
    println!("        resource: {url}");
    let target = url
        .find("/download/")
        .map(|i| url[i..].to_owned())
        .ok_or("the package names no download")?;

    step("the anonymous caller downloads `air-quality` as CSV: allowed without a grant");
    let csv = get(sb, CITY_NODE, &target).await?;
    let text = String::from_utf8_lossy(&csv.body);
    let rows = text.lines().count().saturating_sub(1);
    println!(
        "        {} {}, {rows} rows; header: {}",
        csv.status,
        if csv.status == 200 { "OK" } else { "refused" },
        text.lines().next().unwrap_or_default()
    );
    check(csv.status == 200 && rows > 0, "the rows come")?;

    step("a public-tier certificate (no grant) reads `air-quality` over gRPC");
    let mut access = pb::access_client::AccessClient::new(
        channel_at(sb, CITY_NODE, PUBLIC_TIER_ORG, PUBLIC_TIER_USER).await?,
    );
    let grpc_rows = fetch_rows(&mut access, AIR).await?;
    println!("        {grpc_rows:?} rows");
    check(
        grpc_rows.as_ref().is_ok_and(|r| *r == rows),
        "allowed: the same rows as the download",
    )?;

    step("the city's DPO finds both reads in the audit log, the callers only as pseudonyms");
    let entries = audit_at(sb, "stadt", &[AIR], from_ms).await?;
    let public = by_public(&entries);
    let callers: std::collections::BTreeSet<_> =
        public.iter().map(|e| e.user_pseudonym.as_str()).collect();
    check(
        public
            .iter()
            .filter(|e| e.kind == "release_completion")
            .count()
            >= 2,
        "two completed releases to public callers are audited",
    )?;
    check(
        callers.len() >= 2
            && !entries.iter().any(|e| {
                let line = format!("{e:?}");
                line.contains(PUBLIC_TIER_ORG)
                    || line.contains(PUBLIC_TIER_USER)
                    || line.contains("127.0.0.1")
            }),
        "two distinct pseudonyms; no IP address, certificate organisation or user in clear",
    )?;

    step("the public-tier certificate asks scooter-co's node for the raw `scooter-trips`");
    let mut access = pb::access_client::AccessClient::new(
        channel_at(sb, SCOOTER_NODE, PUBLIC_TIER_ORG, PUBLIC_TIER_USER).await?,
    );
    denied_by(
        fetch_rows(&mut access, SCOOTER).await?,
        NO_RAW,
        "the raw read",
    )?;

    step("the anonymous caller tries the raw download of `scooter-trips`");
    let raw = get(
        sb,
        SCOOTER_NODE,
        &format!("/download/dataset/{SCOOTER}.csv"),
    )
    .await?;
    let message = raw.ckan_error().unwrap_or_default();
    println!("        {}: {message}", raw.status);
    check(
        raw.status == 403 && message.contains("certificate-bound grant"),
        "refused (403) with the policy's reason",
    )?;

    step(
        "scooter-co's data steward publishes the anonymised release from the spec in scooter-co's node config",
    );
    let mut od = pb::open_data_client::OpenDataClient::new(
        channel_at(sb, SCOOTER_NODE, "scooter-co", "steward").await?,
    );
    let published = od
        .publish(pb::PublishReleaseRequest {
            dataset: SCOOTER.into(),
        })
        .await
        .map_err(|e| format!("publish refused: {}", e.message()))?
        .into_inner();
    let release = published.release.clone().unwrap_or_default();
    let budget = published.budget.clone().unwrap_or_default();
    let eps = |micro: u64| micro as f64 / 1e6;
    println!(
        "        release `{}`: {} rows read, {} cells released, {} suppressed (primary), {} suppressed (secondary), k = {}",
        release.id,
        published.rows_read,
        published.cells_released,
        published.cells_suppressed_primary,
        published.cells_suppressed_secondary,
        published.k
    );
    println!(
        "        ε spent {} per {}, {} of {} left this {} ({})",
        eps(published.epsilon_spent_micro),
        budget.unit,
        eps(budget.remaining_micro),
        eps(budget.budget_micro),
        budget.period,
        budget.window
    );
    check(
        published.k == 10 && published.cells_released > 0,
        "released with k = 10",
    )?;
    check(
        published.cells_suppressed_primary > 0,
        "cells under the threshold are suppressed",
    )?;

    step("the anonymous caller finds the release in scooter-co's CKAN API and downloads it");
    let found = get(
        sb,
        SCOOTER_NODE,
        &format!("/api/3/action/package_show?id={}", release.id),
    )
    .await?
    .ckan_result()?;
    let csv_url = found["resources"]
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["format"].as_str() == Some("CSV"))
                .and_then(|r| r["url"].as_str())
        })
        .ok_or("the release has no CSV resource")?;
    let target = csv_url
        .find("/download/")
        .map(|i| csv_url[i..].to_owned())
        .ok_or("the CSV resource has no download path")?;
    let data = get(sb, SCOOTER_NODE, &target).await?;
    let text = String::from_utf8_lossy(&data.body).into_owned();
    for line in text.lines().take(6) {
        println!("          {line}");
    }
    check(data.status == 200, "the aggregate comes")?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    check(
        !header
            .iter()
            .any(|c| c.contains("device") || c.contains("trip_id")),
        "no vehicle or trip identifier in it",
    )?;
    let vehicles = header
        .iter()
        .position(|c| *c == "vehicles")
        .ok_or("the release has no `vehicles` column")?;
    let counts: Vec<i64> = lines
        .filter_map(|l| l.split(',').nth(vehicles))
        .filter_map(|v| v.parse().ok())
        .collect();
    check(
        counts.len() as u64 == published.cells_released && counts.iter().all(|c| *c >= 10),
        "every released cell counts at least k = 10 vehicles (noisy counts, thresholded)",
    )?;

    step("scooter-co's DPO finds the refusals, the release and the download in the audit log");
    let entries = audit_at(sb, "scooter-co", &[SCOOTER], from_ms).await?;
    let public = by_public(&entries);
    check(
        public
            .iter()
            .filter(|e| e.decision == "deny" && e.policy_ids.iter().any(|p| p == NO_RAW))
            .count()
            >= 2,
        "both raw reads denied and audited",
    )?;
    check(
        public
            .iter()
            .any(|e| e.decision == "allow" && e.action == "read_aggregate"),
        "the download of the aggregate audited",
    )?;
    println!("\nstory 5 passed");
    Ok(())
}

/// Reads `dataset` without purpose or grant; the number of rows, or the
/// node's refusal.
async fn fetch_rows(
    c: &mut pb::access_client::AccessClient<tonic::transport::Channel>,
    dataset: &str,
) -> Result<Result<usize, tonic::Status>, String> {
    let mut s = match c
        .fetch(pb::FetchRequest {
            dataset: dataset.into(),
            ..Default::default()
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return Ok(Err(e)),
    };
    let mut bytes = Vec::new();
    loop {
        match s.message().await {
            Ok(Some(m)) => bytes.extend(m.arrow_ipc),
            Ok(None) => break,
            Err(e) => return Ok(Err(e)),
        }
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| e.to_string())?;
    let mut rows = 0;
    for b in reader {
        rows += b.map_err(|e| e.to_string())?.num_rows();
    }
    Ok(Ok(rows))
}
