//! The access-workflow stories of the brief (2, 3, 4 and 6), each on a
//! fresh Munich federation with a manual clock: every step talks to the
//! nodes over mTLS with the users' own certificates, prints what it did,
//! each decision with its deciding policies and their plain-language reasons
//! (German and English, from the policies' annotations), and the entries
//! the owner node's audit log holds about it, as its DPO queries them. A step
//! passes only if its checks hold.
//!
//! The grantee's home node learns of grants and releases through the
//! owner's signed access notices: stories 2 and 4 show TUM's side too, the
//! notices TUM's DPO lists and TUM's audit entries of their receipt
//! ([`grantee_side`]).
//!
//! The e2e tests (`tests/tests/stories.rs`) run the same functions and then
//! assert the audit entries from the nodes' logs themselves.

use super::{DemoError, StoryOutcome, check, step};
use crate::clock::{Clock, ManualClock};
use crate::sandbox::{Sandbox, SandboxSpec};
use allmende_proto::v1 as pb;
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::transport::Channel;

/// The personal dataset the stories are about.
pub const SMART_METER: &str = "smart-meter-readings";
/// Another personal dataset of SWM (last year's readings), for story 3.
pub const ARCHIVE: &str = "smart-meter-readings-2024";
/// The owner of [`SMART_METER`] and its node.
pub const OWNER: &str = "swm";
const OWNER_NODE: &str = "swm-1";
/// The columns the researcher asks for.
pub const RESEARCH_COLUMNS: [&str; 3] = ["household_id", "kwh", "timestamp"];
/// The household (a citizen certificate of SWM) of story 4.
pub const HOUSEHOLD: &str = "HH-000001";
/// The non-use policy that forbids insurance underwriting on personal data.
pub const INSURANCE_NON_USE: &str = "nonuse-insurance-risk-scoring";

/// The first day of [`ARCHIVE`]'s sample data: 2024-03-04, a Monday.
const ARCHIVE_START: i64 = 1_709_510_400;

/// Starts the Munich federation for the access-workflow stories: a manual
/// clock starting now, the brief's datasets registered and SWM's
/// households' consent records imported.
pub async fn federation() -> Result<(Sandbox, Arc<ManualClock>), DemoError> {
    let clock = ManualClock::starting_now();
    let mut spec = SandboxSpec::munich();
    spec.postgres_smart_meter = true;
    let sb = Sandbox::start(spec, None, clock.clone()).await?;
    if let Err(e) = sb.register_demo_datasets().await {
        let _ = sb.shutdown().await;
        return Err(e.into());
    }
    Ok((sb, clock))
}

/// Runs story `n` (2, 3, 4 or 6) on a fresh federation.
pub(super) async fn run(n: u8) -> Result<StoryOutcome, DemoError> {
    let intro = match n {
        2 => {
            "story 2: a TUM researcher requests access to SWM's smart-meter readings for AcademicResearch, 90 days; SWM's DPO approves; the researcher reads only consenting households' rows, pseudonymised per grant; both nodes audit it"
        }
        3 => {
            "story 3: the same researcher reads for Marketing, after the grant expired, and another dataset: each denied with the deciding policies and their reasons; audited"
        }
        4 => {
            "story 4: a household withdraws its consent: the next read excludes its rows; the household lists every past access that included its data"
        }
        6 => {
            "story 6: versicherung-ag asks for smart-meter data for InsuranceUnderwriting: forbidden by the non-use policy, even if someone created a grant"
        }
        _ => return Err(DemoError::NoSuchStory(n)),
    };
    println!("{intro}\n");
    let (sb, clock) = federation().await?;
    print!("{}", super::smart_meter_backend_line(&sb));
    let result = match n {
        2 => story_2(&sb, &clock).await.map(|_| ()),
        3 => story_3(&sb, &clock).await.map(|_| ()),
        4 => story_4(&sb, &clock).await.map(|_| ()),
        _ => story_6(&sb, &clock).await.map(|_| ()),
    };
    let _ = sb.shutdown().await;
    Ok(match result {
        Ok(()) => {
            println!("\nstory {n} passed");
            StoryOutcome::Passed
        }
        Err(e) => StoryOutcome::Failed(e),
    })
}

/// A story's numbered steps, and when it began (node clock, ms: its audit
/// entries are those from then on).
#[derive(Debug)]
pub(super) struct Steps {
    done: u32,
    from_ms: u64,
}

impl Steps {
    pub(super) fn start(clock: &dyn Clock) -> Self {
        Self {
            done: 0,
            from_ms: u64::try_from(clock.now_unix_ms()).unwrap_or(0),
        }
    }

    pub(super) fn next(&mut self, text: &str) {
        self.done += 1;
        step(self.done, text);
    }
}

fn fail(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// A channel to `node` as `org`/`user` (the user's own certificate).
pub async fn channel_at(
    sb: &Sandbox,
    node: &str,
    org: &str,
    user: &str,
) -> Result<Channel, String> {
    let mut p = sb.profile(org, user).map_err(|e| fail(&e))?;
    p.endpoint = sb
        .node(node)
        .map(|n| n.grpc_endpoint())
        .ok_or_else(|| format!("{node} is not running"))?;
    p.connect().await.map_err(|e| fail(&e))
}

async fn at_owner(sb: &Sandbox, org: &str, user: &str) -> Result<Channel, String> {
    channel_at(sb, OWNER_NODE, org, user).await
}

/// A granted request: what was asked and the grant the approval created.
#[derive(Debug, Clone)]
pub struct Granted {
    pub request: pb::AccessRequestView,
    pub grant: pb::GrantView,
}

/// The researcher's request for [`SMART_METER`].
fn research_request(days: u32, key: &str) -> pb::RequestAccessRequest {
    pb::RequestAccessRequest {
        dataset: SMART_METER.into(),
        purpose: "AcademicResearch".into(),
        columns: RESEARCH_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        days,
        justification: "load profiles of consenting households for a study on heat pumps".into(),
        idempotency_key: key.into(),
    }
}

/// `alice` of TUM asks SWM's node for [`SMART_METER`] for
/// `AcademicResearch`, `days` days; SWM's DPO lists what waits (with the
/// explanation of what the grant would allow) and approves it by its hash.
pub(super) async fn research_grant(
    sb: &Sandbox,
    steps: &mut Steps,
    days: u32,
    key: &str,
) -> Result<Granted, String> {
    steps.next(&format!(
        "TUM researcher `alice` asks SWM's node for `{SMART_METER}` for AcademicResearch, {days} day{}, columns {}",
        if days == 1 { "" } else { "s" },
        RESEARCH_COLUMNS.join(", ")
    ));
    let req = research_request(days, key);
    let asked = pb::grants_client::GrantsClient::new(at_owner(sb, "tum", "alice").await?)
        .request_access(req.clone())
        .await
        .map_err(|e| fail(&e.message()))?
        .into_inner();
    check(
        asked.state == "pending"
            && asked.request_hash.len() == 64
            && asked.requester == "allmende://munich/tum/user/alice",
        &format!(
            "request {} stored pending, hash {}",
            asked.id, asked.request_hash
        ),
    )?;

    steps.next("SWM's DPO lists the pending requests, with what the grant would allow");
    let mut dpo = pb::grants_client::GrantsClient::new(at_owner(sb, OWNER, "dpo").await?);
    let pending = dpo
        .list_requests(pb::ListRequestsRequest {
            state: "pending".into(),
        })
        .await
        .map_err(|e| fail(&e.message()))?
        .into_inner()
        .requests;
    let shown = pending
        .iter()
        .find(|r| r.id == asked.id)
        .ok_or("the request is not listed as pending")?;
    for line in crate::cli::access_cmd::render_request(shown).lines() {
        println!("        {line}");
    }
    let x = shown
        .explanation
        .as_ref()
        .ok_or("the request shows no explanation")?;
    for p in &x.policies {
        println!("        policy {}", p.id);
        println!("          de: {}", p.reason_de);
        println!("          en: {}", p.reason_en);
    }
    check(
        shown.request_hash == asked.request_hash
            && x.may_approve
            && x.approver.contains("data protection officer of `swm`")
            && x.policies
                .iter()
                .any(|p| p.id == "dpo-approves-own-org-requests" && !p.reason_de.is_empty()),
        "personal data: SWM's DPO must approve, and may (dpo-approves-own-org-requests)",
    )?;

    steps.next("SWM's DPO approves the request by the hash it was shown");
    let grant = dpo
        .approve(pb::ApproveRequest {
            request_id: shown.id.clone(),
            request_hash: shown.request_hash.clone(),
            note: "approved for the study".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e.message()))?
        .into_inner();
    for line in crate::cli::access_cmd::render_grant(&grant).lines() {
        println!("        {line}");
    }
    let owner_key = sb
        .node(OWNER_NODE)
        .map(|n| hex::encode(n.catalog.public_key()))
        .unwrap_or_default();
    check(
        grant.state == "active"
            && grant.grantee_org == "tum"
            && grant.dataset == SMART_METER
            && grant.purpose == "AcademicResearch"
            && grant.columns == req.columns
            && grant.not_after_unix - grant.not_before_unix == i64::from(days) * 86_400
            && grant.signer_public_key == owner_key
            && approval_signed(&grant),
        &format!(
            "grant {} for `tum`, {days} day{}, signed by SWM's node",
            grant.id,
            if days == 1 { "" } else { "s" }
        ),
    )?;
    Ok(Granted {
        request: asked,
        grant,
    })
}

/// Whether the grant's approval signature verifies with the key it names.
fn approval_signed(g: &pb::GrantView) -> bool {
    let (Ok(key), Ok(sig)) = (
        hex::decode(&g.signer_public_key),
        hex::decode(&g.approval_signature),
    ) else {
        return false;
    };
    // A grant approved today carries its obligations in the signed bytes.
    let obligations = crate::grants::Obligations {
        delete_after: g.delete_after_unix,
        notify_on_use: g.notify_on_use,
        aggregate_only: g.aggregate_only,
    };
    let msg = crate::grants::approval_message_v2(
        &g.request_hash,
        &g.approved_by,
        g.approved_at_unix,
        &obligations,
    );
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&msg, &sig)
        .is_ok()
}

/// What one read released.
#[derive(Debug, Clone)]
pub struct Release {
    pub rows: usize,
    /// Distinct values of the subject column as released.
    pub subjects: BTreeSet<String>,
    pub columns: Vec<String>,
    /// The Arrow IPC bytes as received.
    pub bytes: Vec<u8>,
    /// The release's entry in the owner's audit log.
    pub audit_sequence: u64,
}

/// Reads `req` from SWM's node as `org`/`user`, following resume cursors to
/// the end. `Ok(Err(status))`: the node refused.
pub async fn read(
    sb: &Sandbox,
    org: &str,
    user: &str,
    mut req: pb::FetchRequest,
) -> Result<Result<Release, tonic::Status>, String> {
    let mut client = pb::access_client::AccessClient::new(at_owner(sb, org, user).await?);
    let mut out = Release {
        rows: 0,
        subjects: BTreeSet::new(),
        columns: Vec::new(),
        bytes: Vec::new(),
        audit_sequence: 0,
    };
    for _ in 0..10_000 {
        let mut stream = match client.fetch(req.clone()).await {
            Ok(s) => s.into_inner(),
            Err(e) => return Ok(Err(e)),
        };
        let mut bytes = Vec::new();
        let mut summary = None;
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    bytes.extend_from_slice(&m.arrow_ipc);
                    if m.summary.is_some() {
                        summary = m.summary;
                    }
                }
                Ok(None) => break,
                Err(e) => return Ok(Err(e)),
            }
        }
        let summary = summary.ok_or("the stream ended without a summary")?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&bytes), None)
            .map_err(|e| fail(&e))?;
        out.columns = reader
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for b in reader {
            let b = b.map_err(|e| fail(&e))?;
            out.rows += b.num_rows();
            if let Some(c) = b
                .column_by_name("household_id")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
            {
                out.subjects.extend(c.iter().flatten().map(str::to_owned));
            }
        }
        out.bytes.extend(bytes);
        out.audit_sequence = summary.audit_sequence;
        if summary.complete || summary.next_cursor.is_empty() {
            return Ok(Ok(out));
        }
        req.resume_cursor = summary.next_cursor;
    }
    Err("the read did not end after 10000 pages".into())
}

/// A read of [`SMART_METER`] under `grant` for `purpose`.
pub fn under(grant: &str, purpose: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        dataset: SMART_METER.into(),
        purpose: purpose.into(),
        grant_id: grant.into(),
        ..Default::default()
    }
}

/// Prints a refusal's deciding policies with their reasons in German and
/// English; returns their ids. Passes only if the refusal is
/// `PERMISSION_DENIED` naming `policy`, with both reasons given.
pub(super) fn denied_by<T>(
    r: Result<T, tonic::Status>,
    policy: &str,
    what: &str,
) -> Result<(), String> {
    use prost::Message as _;
    let e = match r {
        Ok(_) => return Err(format!("{what}: allowed")),
        Err(e) => e,
    };
    println!("        refused ({:?}): {}", e.code(), e.message());
    let details = pb::DecisionDetails::decode(e.details()).unwrap_or_default();
    for p in &details.deciding {
        println!("        policy {}: {}", p.id, p.title);
        println!("          de: {}", p.reason_de);
        println!("          en: {}", p.reason_en);
    }
    check(
        e.code() == tonic::Code::PermissionDenied
            && !details.allowed
            && details
                .deciding
                .iter()
                .any(|p| p.id == policy && !p.reason_de.is_empty() && !p.reason_en.is_empty()),
        &format!("{what}: denied by `{policy}`, with its reasons in German and English"),
    )
}

/// The entries of `org`'s audit log at `<org>-1` about `datasets` from
/// `from_ms` on, as `org`'s DPO queries them; printed one a line.
pub async fn audit_at(
    sb: &Sandbox,
    org: &str,
    datasets: &[&str],
    from_ms: u64,
) -> Result<Vec<pb::AuditEntry>, String> {
    let node = format!("{org}-1");
    let mut dpo = pb::audit_client::AuditClient::new(channel_at(sb, &node, org, "dpo").await?);
    let mut all = Vec::new();
    for dataset in datasets {
        let mut after = None;
        loop {
            let page = dpo
                .query(pb::AuditQueryRequest {
                    dataset: (*dataset).to_owned(),
                    from_ms,
                    page_after: after,
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .map_err(|e| fail(&e.message()))?
                .into_inner();
            all.extend(page.entries);
            match page.next_page_after {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    all.sort_by_key(|e| e.sequence);
    println!("        audit log of {node}, as {org}'s DPO reads it:");
    for e in &all {
        println!("          {}", entry_line(e));
    }
    Ok(all)
}

/// What the grantee's home node recorded: the access notices its DPO lists
/// (waited for until `kinds` have all arrived, one each per kind listed)
/// and its audit entries of their receipt.
#[derive(Debug, Clone)]
pub struct GranteeSide {
    pub notices: Vec<pb::NoticeView>,
    pub audit: Vec<pb::AuditEntry>,
}

/// TUM's DPO lists the notices received for grant `grant` until each of
/// `kinds` is there (as many times as listed), then reads TUM's audit log.
pub async fn grantee_side(
    sb: &Sandbox,
    grant: &str,
    kinds: &[&str],
    from_ms: u64,
) -> Result<GranteeSide, String> {
    let mut dpo =
        pb::grants_client::GrantsClient::new(channel_at(sb, "tum-1", "tum", "dpo").await?);
    let mut notices = Vec::new();
    // Delivery is asynchronous with retries; on loopback it takes
    // milliseconds, the bound only keeps a broken run from hanging.
    for _ in 0..300 {
        notices = dpo
            .list_notices(pb::ListNoticesRequest {
                direction: "received".into(),
            })
            .await
            .map_err(|e| fail(&e.message()))?
            .into_inner()
            .notices;
        notices.retain(|n| n.grant_id == grant);
        let all_in = kinds.iter().all(|k| {
            let want = kinds.iter().filter(|x| *x == k).count();
            notices.iter().filter(|n| n.kind == *k).count() >= want
        });
        if all_in {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("        access notices TUM's node received, as TUM's DPO lists them:");
    for n in &notices {
        let rows = if n.kind == "data_released" {
            format!(
                " rows={} outcome={} owner-audit-seq={}",
                n.rows, n.outcome, n.audit_sequence
            )
        } else {
            String::new()
        };
        println!(
            "          {} from {} ({}) grant={} dataset={} purpose={}{rows}",
            n.kind, n.owner, n.from_node, n.grant_id, n.dataset, n.purpose
        );
    }
    let audit = audit_at(sb, "tum", &[SMART_METER], from_ms).await?;
    Ok(GranteeSide { notices, audit })
}

/// Checks that TUM's node received and audited one notice of each of
/// `kinds` for grant `grant`.
fn check_grantee_side(side: &GranteeSide, grant: &str, kinds: &[&str]) -> Result<(), String> {
    let distinct: BTreeSet<&str> = kinds.iter().copied().collect();
    for k in distinct {
        let want = kinds.iter().filter(|x| **x == k).count();
        check(
            side.notices
                .iter()
                .filter(|n| n.kind == k && n.owner == OWNER)
                .count()
                == want,
            &format!("TUM's node received {want} `{k}` notice(s) from SWM for the grant"),
        )?;
    }
    let received = side
        .audit
        .iter()
        .filter(|e| e.kind == "grant_change" && e.detail == "NoticeReceived" && e.grant_id == grant)
        .count();
    check(
        received == side.notices.len() && received == kinds.len(),
        &format!("TUM's audit log records the receipt of each notice ({received})"),
    )
}

/// One audit entry in a line.
pub fn entry_line(e: &pb::AuditEntry) -> String {
    let secs = i64::try_from(e.time_ms / 1000).unwrap_or(i64::MAX);
    let mut s = format!(
        "#{} {} {}{} {} `{}` by {}",
        e.sequence,
        crate::consent::format_time(secs),
        e.kind,
        if e.kind == "grant_change" {
            format!("/{}", e.detail)
        } else {
            String::new()
        },
        e.action,
        e.resource,
        e.organisation,
    );
    if !e.decision.is_empty() {
        s.push_str(&format!(" -> {} [{}]", e.decision, e.policy_ids.join(", ")));
    }
    if !e.purpose.is_empty() {
        s.push_str(&format!(" purpose {}", e.purpose));
    }
    if !e.grant_id.is_empty() {
        s.push_str(&format!(" grant {}", e.grant_id));
    }
    if e.kind == "release_completion" {
        s.push_str(&format!(" ({}, {} subjects)", e.detail, e.subjects));
    }
    s
}

fn grant_change<'a>(
    entries: &'a [pb::AuditEntry],
    op: &str,
    grant_or_request: &str,
) -> Option<&'a pb::AuditEntry> {
    entries.iter().find(|e| {
        e.kind == "grant_change"
            && e.detail == op
            && (e.grant_id == grant_or_request || e.request_id == grant_or_request)
    })
}

fn denial_audited(entries: &[pb::AuditEntry], org: &str, grant: &str, policy: &str) -> bool {
    entries.iter().any(|e| {
        e.organisation == org
            && e.decision == "deny"
            && e.grant_id == grant
            && e.policy_ids.iter().any(|p| p == policy)
    })
}

/// Rows of the sample smart-meter data and households whose consent, in
/// the sample consent records, permits `AcademicResearch` at `now` (Unix
/// seconds): what a read for research may release.
#[derive(Debug, Clone)]
pub struct ConsentingSample {
    pub households: BTreeSet<String>,
    /// Rows of those households in the sample readings.
    pub rows: usize,
    /// Rows of each household in the sample readings.
    pub rows_per_household: usize,
}

/// Computes [`ConsentingSample`] from the bundled sample data (the same
/// generator the sandbox wrote SWM's source and consent CSV with).
pub fn consenting_sample(now: i64) -> Result<ConsentingSample, String> {
    use allmende_connectors::sample;
    use arrow::array::{Array, StringArray, TimestampMicrosecondArray};
    let spec = sample::SampleSpec::default();
    let records = sample::consent_records(&spec).map_err(|e| fail(&e))?;
    let text = |name: &str| {
        records
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| format!("consent records have no text column `{name}`"))
    };
    let time = |name: &str| {
        records
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| format!("consent records have no time column `{name}`"))
    };
    let (subject, purposes, status) = (text("subject_id")?, text("purposes")?, text("status")?);
    let (given, expires) = (time("given_at")?, time("expires_at")?);
    let now_us = now.saturating_mul(1_000_000);
    let households: BTreeSet<String> = (0..records.num_rows())
        .filter(|&i| {
            status.value(i) == "given"
                && purposes
                    .value(i)
                    .split(';')
                    .any(|p| p == "AcademicResearch")
                && given.value(i) <= now_us
                && (expires.is_null(i) || now_us < expires.value(i))
        })
        .map(|i| subject.value(i).to_owned())
        .collect();
    let mut rows = 0;
    let mut rows_per_household = 0;
    for day in 0..spec.days {
        let b = sample::smart_meter_readings_day(&spec, day).map_err(|e| fail(&e))?;
        let ids = b
            .column_by_name("household_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or("sample readings have no household ids")?;
        rows += ids
            .iter()
            .flatten()
            .filter(|h| households.contains(*h))
            .count();
        rows_per_household += ids.iter().flatten().filter(|h| *h == HOUSEHOLD).count();
    }
    Ok(ConsentingSample {
        households,
        rows,
        rows_per_household,
    })
}

/// What story 2 did, for the tests' own assertions.
#[derive(Debug, Clone)]
pub struct Story2 {
    pub granted: Granted,
    pub release: Release,
    pub expected: ConsentingSample,
    /// TUM's side: the notices received and TUM's audit entries.
    pub tum: GranteeSide,
}

/// Story 2: request, DPO approval by hash, a read under the grant of
/// consenting households' rows only, pseudonymised; SWM audits it all.
pub async fn story_2(sb: &Sandbox, clock: &ManualClock) -> Result<Story2, String> {
    let mut steps = Steps::start(clock);
    let granted = research_grant(sb, &mut steps, 90, "story-2").await?;
    let g = &granted.grant;

    steps.next("alice reads the dataset under the grant");
    let release = read(sb, "tum", "alice", under(&g.id, "AcademicResearch"))
        .await?
        .map_err(|e| format!("the read under the grant was refused: {}", e.message()))?;
    let expected = consenting_sample(clock.now_unix_secs())?;
    println!(
        "        {} rows, {} distinct households, columns {}",
        release.rows,
        release.subjects.len(),
        release.columns.join(", ")
    );
    check(
        release.rows > 0
            && release.rows == expected.rows
            && release.subjects.len() == expected.households.len(),
        &format!(
            "only the {} households that consented to AcademicResearch in SWM's consent records: {} rows",
            expected.households.len(),
            expected.rows
        ),
    )?;
    check(
        release.columns == RESEARCH_COLUMNS,
        "only the granted columns (no meter id, no district)",
    )?;
    let clear_id =
        |b: &[u8]| b.windows(3).any(|w| w == b"HH-") || b.windows(4).any(|w| w == b"1EMH");
    check(
        release
            .subjects
            .iter()
            .all(|s| s.starts_with("p-") && !clear_id(s.as_bytes()))
            && !clear_id(&release.bytes),
        "household ids pseudonymised per grant: no household or meter id in clear in the bytes received",
    )?;

    steps.next("SWM's DPO reads SWM's audit log: the request, the approval and the release");
    let swm_audit = audit_at(sb, OWNER, &[SMART_METER], steps.from_ms).await?;
    check(
        grant_change(&swm_audit, "Requested", &granted.request.id)
            .is_some_and(|e| e.organisation == "tum"),
        "the request, by `tum`",
    )?;
    check(
        grant_change(&swm_audit, "Approved", &g.id).is_some_and(|e| e.organisation == OWNER),
        "the approval, by SWM",
    )?;
    let released = swm_audit
        .iter()
        .find(|e| e.kind == "release_completion" && e.grant_id == g.id && e.organisation == "tum");
    check(
        released.is_some_and(|e| {
            e.detail
                .contains(&format!("rows_released={} ", release.rows))
                && e.purpose == "AcademicResearch"
        }) && swm_audit
            .iter()
            .any(|e| e.kind == "release_intent" && e.grant_id == g.id && e.decision == "allow"),
        "the release to `tum` under the grant, decided and completed with its row count",
    )?;

    steps.next("TUM's DPO sees what TUM's researcher received: SWM's signed access notices, audited at TUM");
    let tum = grantee_side(
        sb,
        &g.id,
        &["grant_created", "data_released"],
        steps.from_ms,
    )
    .await?;
    check_grantee_side(&tum, &g.id, &["grant_created", "data_released"])?;
    check(
        tum.notices.iter().any(|n| {
            n.kind == "data_released"
                && n.rows == release.rows as u64
                && released.is_some_and(|e| e.sequence == n.audit_sequence)
        }),
        "the release notice names the rows released and the completion entry in SWM's log",
    )?;
    Ok(Story2 {
        granted,
        release,
        expected,
        tum,
    })
}

/// Story 3: under a granted research access, reads for another purpose,
/// of another dataset and after the grant's end are denied, each with its
/// deciding policies and reasons; the denials and the expiry are audited.
pub async fn story_3(sb: &Sandbox, clock: &ManualClock) -> Result<Granted, String> {
    let mut steps = Steps::start(clock);
    steps.next(&format!(
        "SWM's steward also serves last year's readings as `{ARCHIVE}` (personal data)"
    ));
    register_archive(sb).await?;
    check(true, &format!("`{ARCHIVE}` registered at {OWNER_NODE}"))?;

    let granted = research_grant(sb, &mut steps, 1, "story-3").await?;
    let g = &granted.grant;
    steps.next("alice reads under the grant, for its purpose");
    let first = read(sb, "tum", "alice", under(&g.id, "AcademicResearch"))
        .await?
        .map_err(|e| format!("the read under the grant was refused: {}", e.message()))?;
    check(first.rows > 0, &format!("{} rows released", first.rows))?;

    steps.next("alice reads under the grant for Marketing");
    denied_by(
        read(sb, "tum", "alice", under(&g.id, "Marketing")).await?,
        "purpose-grant-mismatch",
        "another purpose than the grant's",
    )?;

    steps.next(&format!("alice reads `{ARCHIVE}` under the grant"));
    let mut other = under(&g.id, "AcademicResearch");
    other.dataset = ARCHIVE.into();
    denied_by(
        read(sb, "tum", "alice", other).await?,
        "grant-other-dataset",
        "another dataset than the grant's",
    )?;

    steps.next("a day later (the node clock moves past the grant's end), alice reads again");
    clock.advance(std::time::Duration::from_secs(86_400 + 60));
    denied_by(
        read(sb, "tum", "alice", under(&g.id, "AcademicResearch")).await?,
        "grant-expired",
        "after the grant's end",
    )?;
    // The expiry timer sleeps until the next grant's end by the real time;
    // the manual clock jumped, so wake it.
    if let Some(n) = sb.node(OWNER_NODE) {
        n.grants.nudge();
    }
    let mut expired = None;
    for _ in 0..100 {
        expired = expiry_of(sb, &g.id).await?;
        if expired.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    check(
        expired.is_some(),
        "SWM's node records the grant's expiry (audited)",
    )?;

    steps.next("SWM's DPO reads SWM's audit log: the three denials and the expiry");
    let swm_audit = audit_at(sb, OWNER, &[SMART_METER, ARCHIVE], steps.from_ms).await?;
    for policy in [
        "purpose-grant-mismatch",
        "grant-other-dataset",
        "grant-expired",
    ] {
        check(
            denial_audited(&swm_audit, "tum", &g.id, policy),
            &format!("the denial by `{policy}` of `tum`'s read"),
        )?;
    }
    check(
        grant_change(&swm_audit, "Expired", &g.id).is_some(),
        "the grant's expiry",
    )?;
    Ok(granted)
}

/// The grant's expiry as recorded in SWM's node (`None`: not yet).
async fn expiry_of(sb: &Sandbox, grant: &str) -> Result<Option<i64>, String> {
    let grants = pb::grants_client::GrantsClient::new(at_owner(sb, OWNER, "dpo").await?)
        .list_grants(pb::ListGrantsRequest::default())
        .await
        .map_err(|e| fail(&e.message()))?
        .into_inner()
        .grants;
    Ok(grants
        .iter()
        .find(|x| x.id == grant && x.expired_at_unix > 0)
        .map(|x| x.expired_at_unix))
}

/// Registers [`ARCHIVE`]: SWM's smart-meter readings of a year earlier.
async fn register_archive(sb: &Sandbox) -> Result<(), String> {
    let spec = allmende_connectors::sample::SampleSpec {
        start: ARCHIVE_START,
        ..Default::default()
    };
    let files = allmende_connectors::sample::write_demo_data(
        &sb.root.join(crate::sandbox::SAMPLE_DATA_DIR).join(ARCHIVE),
        &spec,
    )
    .map_err(|e| fail(&e))?;
    let config = files
        .dataset(SMART_METER)
        .ok_or("no sample readings")?
        .config
        .clone();
    let mut desc = crate::demo::munich::smart_meter_readings();
    desc.id = ARCHIVE.into();
    desc.title = "Smart-Meter-Messwerte der Haushalte 2024".into();
    desc.temporal = None;
    sb.register_dataset(OWNER, "steward", &desc, &config)
        .await
        .map(|_| ())
        .map_err(|e| fail(&e))
}

/// What story 4 did, for the tests' own assertions.
#[derive(Debug, Clone)]
pub struct Story4 {
    pub granted: Granted,
    pub before: Release,
    pub after: Release,
    /// The household's own list of accesses to its data.
    pub history: Vec<pb::AuditEntry>,
}

/// Story 4: a household withdraws consent for research; the next read
/// under the same grant excludes exactly its rows; the household lists the
/// earlier release that included its data (and not the later one).
pub async fn story_4(sb: &Sandbox, clock: &ManualClock) -> Result<Story4, String> {
    let mut steps = Steps::start(clock);
    let expected = consenting_sample(clock.now_unix_secs())?;
    let granted = research_grant(sb, &mut steps, 90, "story-4").await?;
    let g = &granted.grant;

    steps.next(&format!(
        "alice reads under the grant; household `{HOUSEHOLD}` has consented to research"
    ));
    let before = read(sb, "tum", "alice", under(&g.id, "AcademicResearch"))
        .await?
        .map_err(|e| format!("the read under the grant was refused: {}", e.message()))?;
    check(
        expected.households.contains(HOUSEHOLD)
            && before.rows == expected.rows
            && before.subjects.len() == expected.households.len(),
        &format!(
            "{} rows of {} households, `{HOUSEHOLD}`'s among them",
            before.rows,
            before.subjects.len()
        ),
    )?;

    steps.next(&format!(
        "household `{HOUSEHOLD}`, with the citizen certificate SWM issued it, withdraws its consent to AcademicResearch"
    ));
    let mut consent = pb::consent_client::ConsentClient::new(at_owner(sb, OWNER, HOUSEHOLD).await?);
    let other = consent
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: "HH-000006".into(),
            dataset: SMART_METER.into(),
            purpose: "AcademicResearch".into(),
        })
        .await;
    check(
        other
            .as_ref()
            .is_err_and(|e| e.code() == tonic::Code::PermissionDenied),
        "it cannot withdraw another household's consent",
    )?;
    let w = consent
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: HOUSEHOLD.into(),
            dataset: SMART_METER.into(),
            purpose: "AcademicResearch".into(),
        })
        .await
        .map_err(|e| fail(&e.message()))?
        .into_inner();
    check(
        w.records_changed >= 1,
        &format!(
            "withdrawn at {} ({} record(s) changed)",
            crate::consent::format_time(w.withdrawn_at_unix),
            w.records_changed
        ),
    )?;

    steps.next("alice reads again under the same grant");
    let after = read(sb, "tum", "alice", under(&g.id, "AcademicResearch"))
        .await?
        .map_err(|e| format!("the read under the grant was refused: {}", e.message()))?;
    let gone: Vec<&String> = before.subjects.difference(&after.subjects).collect();
    check(
        after.subjects.is_subset(&before.subjects)
            && gone.len() == 1
            && before.rows - after.rows == expected.rows_per_household,
        &format!(
            "one pseudonym fewer ({} households), {} rows fewer: the household's rows are excluded",
            after.subjects.len(),
            before.rows.saturating_sub(after.rows)
        ),
    )?;

    steps.next(&format!(
        "household `{HOUSEHOLD}` lists every access to its data at SWM"
    ));
    let history = pb::audit_client::AuditClient::new(at_owner(sb, OWNER, HOUSEHOLD).await?)
        .my_accesses(pb::MyAccessesRequest {
            page_after: None,
            limit: 1000,
        })
        .await
        .map_err(|e| fail(&e.message()))?
        .into_inner()
        .entries;
    for e in &history {
        println!("          {}", entry_line(e));
    }
    let releases: Vec<&pb::AuditEntry> = history
        .iter()
        .filter(|e| e.kind.starts_with("release") && e.grant_id == g.id)
        .collect();
    check(
        releases
            .iter()
            .any(|e| e.organisation == "tum" && e.purpose == "AcademicResearch" && e.time_ms > 0),
        "the earlier release to `tum` for AcademicResearch under the grant is listed, with its time",
    )?;
    check(
        releases.iter().all(|e| e.sequence < after.audit_sequence),
        "the read after the withdrawal, which excluded its rows, is not",
    )?;

    steps.next("SWM's DPO reads SWM's audit log: the two releases under the grant");
    let swm_audit = audit_at(sb, OWNER, &[SMART_METER], steps.from_ms).await?;
    let completions = swm_audit
        .iter()
        .filter(|e| e.kind == "release_completion" && e.grant_id == g.id)
        .count();
    check(completions == 2, "both releases are audited")?;

    steps.next("TUM's DPO sees both releases in SWM's notices, audited at TUM");
    let kinds = ["grant_created", "data_released", "data_released"];
    let tum = grantee_side(sb, &g.id, &kinds, steps.from_ms).await?;
    check_grantee_side(&tum, &g.id, &kinds)?;
    Ok(Story4 {
        granted,
        before,
        after,
        history,
    })
}

/// Story 6: the insurer's request for underwriting is refused and nothing
/// is stored; a grant put into SWM's policy data by hand (no approval could
/// create it) does not help: the read is forbidden by the non-use policy.
/// Returns the id of the grant put in by hand.
pub async fn story_6(sb: &Sandbox, clock: &ManualClock) -> Result<String, String> {
    let mut steps = Steps::start(clock);
    steps.next(&format!(
        "versicherung-ag's analyst asks SWM's node for `{SMART_METER}` for InsuranceUnderwriting, 30 days"
    ));
    let mut req = research_request(30, "story-6");
    req.purpose = "InsuranceUnderwriting".into();
    req.justification = "risk scoring of household contracts".into();
    let asked =
        pb::grants_client::GrantsClient::new(at_owner(sb, "versicherung-ag", "analyst").await?)
            .request_access(req)
            .await;
    denied_by(asked, INSURANCE_NON_USE, "the request")?;
    let stored = pb::grants_client::GrantsClient::new(at_owner(sb, OWNER, "dpo").await?)
        .list_requests(pb::ListRequestsRequest::default())
        .await
        .map_err(|e| fail(&e.message()))?
        .into_inner()
        .requests;
    check(
        stored.iter().all(|r| r.requester_org != "versicherung-ag"),
        "no request was stored: SWM's DPO has nothing to approve",
    )?;

    steps.next(
        "someone puts a grant for the insurer into SWM's policy data anyway (bypassing any approval)",
    );
    let now = clock.now_unix_secs();
    let forced_grant = "forced-insurance-grant".to_owned();
    let put = sb.node(OWNER_NODE).and_then(|n| {
        n.policy.with_entities(|e| {
            e.upsert_grant(allmende_policies::Grant {
                id: forced_grant.clone(),
                grantee: "versicherung-ag".into(),
                dataset: SMART_METER.into(),
                purpose: allmende_policies::Purpose::InsuranceUnderwriting,
                not_before: now - 60,
                not_after: Some(now + 30 * 86_400),
                state: allmende_policies::GrantState::Active,
                aggregate_only: false,
            })
        })
    });
    check(
        put.is_some(),
        &format!("grant `{forced_grant}`: `versicherung-ag`, InsuranceUnderwriting, 30 days"),
    )?;

    steps.next("the analyst reads the dataset with that grant, for InsuranceUnderwriting");
    denied_by(
        read(
            sb,
            "versicherung-ag",
            "analyst",
            under(&forced_grant, "InsuranceUnderwriting"),
        )
        .await?,
        INSURANCE_NON_USE,
        "the read with a grant",
    )?;

    steps.next("SWM's DPO reads SWM's audit log: both refusals");
    let swm_audit = audit_at(sb, OWNER, &[SMART_METER], steps.from_ms).await?;
    check(
        denial_audited(&swm_audit, "versicherung-ag", "", INSURANCE_NON_USE),
        "the refused request, by the non-use policy",
    )?;
    check(
        denial_audited(
            &swm_audit,
            "versicherung-ag",
            &forced_grant,
            INSURANCE_NON_USE,
        ),
        "the refused read with the grant, by the non-use policy",
    )?;
    check(
        !swm_audit
            .iter()
            .any(|e| e.organisation == "versicherung-ag" && e.kind.starts_with("release")),
        "nothing was released to the insurer",
    )?;
    Ok(forced_grant)
}
