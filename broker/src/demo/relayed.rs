//! Stories 9 and 10, the federation's hub and its MLS groups. Both start
//! like the access-workflow stories (TUM's researcher granted SWM's
//! smart-meter readings by SWM's DPO), with every node following the
//! city's directory and each having published an MLS key package in it.
//!
//! Story 10: the researcher asks her own node, which forwards through the
//! city hub under a signed on-behalf-of assertion; SWM's node decides and
//! audits on her certificate and seals every chunk for the SWM–TUM MLS
//! group; the hub audits the relay and holds no row value in its store.
//!
//! Story 9: after such a relayed read the city's operator removes TUM from
//! the federation: within one directory refresh SWM's node refuses TUM's
//! certificates, commits TUM's removal (a new epoch of the pair's group)
//! and revokes TUM's grant; a chunk sealed afterwards cannot be opened
//! with the MLS state TUM's node kept.

use super::stories::{Granted, RESEARCH_COLUMNS, Steps, channel_at, federation, research_grant};
use super::{DemoError, StoryOutcome, check};
use crate::sandbox::Sandbox;
use allmende_proto::v1 as pb;
use std::collections::BTreeSet;
use std::time::Duration;

const OWNER: &str = "swm-1";
const READER: &str = "tum-1";
const HUB: &str = "stadt-1";
const SMART_METER: &str = "smart-meter-readings";
/// How often the nodes fetch the city's directory.
const REFRESH: Duration = Duration::from_secs(1);

pub(super) async fn run(n: u8) -> Result<StoryOutcome, DemoError> {
    let intro = match n {
        9 => {
            "story 9: TUM is removed from the federation: its certificates are refused, SWM's MLS group with TUM moves to a new epoch, and TUM cannot decrypt anything sealed afterwards"
        }
        10 => {
            "story 10: the city hub relays SWM's smart-meter rows to TUM's researcher without being able to read them"
        }
        _ => return Err(DemoError::NoSuchStory(n)),
    };
    println!("{intro}\n");
    let (sb, clock) = federation().await?;
    let result = async {
        let mut steps = Steps::start(clock.as_ref());
        steps
            .next("every node follows the city's directory and publishes an MLS key package in it");
        let version = sb.use_relay(REFRESH).await.map_err(|e| e.to_string())?;
        let published = sb
            .city_node()
            .map(|c| {
                c.trust
                    .snapshot()
                    .doc
                    .nodes
                    .iter()
                    .filter(|e| !e.mls_key_package.is_empty())
                    .count()
            })
            .unwrap_or(0);
        check(
            published >= 4,
            &format!("directory v{version}: {published} nodes with a key package"),
        )?;
        let granted = research_grant(&sb, &mut steps, 90, &format!("story-{n}")).await?;
        if n == 10 {
            story_10(&sb, &mut steps, &granted).await
        } else {
            story_9(&sb, &mut steps, &granted).await
        }
    }
    .await;
    let _ = sb.shutdown().await;
    Ok(match result {
        Ok(()) => {
            println!("\nstory {n} passed");
            StoryOutcome::Passed
        }
        Err(e) => StoryOutcome::Failed(e),
    })
}

/// What a read returned.
struct Read {
    rows: usize,
    subjects: BTreeSet<String>,
    bytes: Vec<u8>,
}

/// Collects a fetch stream: the Arrow IPC bytes, the rows and the released
/// household pseudonyms; fails unless the summary says complete.
async fn collect(mut stream: tonic::Streaming<pb::FetchResponse>) -> Result<Read, String> {
    let mut bytes = Vec::new();
    let mut complete = false;
    while let Some(m) = stream
        .message()
        .await
        .map_err(|e| format!("the read failed: {}", e.message()))?
    {
        bytes.extend_from_slice(&m.arrow_ipc);
        if let Some(s) = m.summary {
            complete = s.complete;
        }
    }
    if !complete {
        return Err("the read ended without a complete summary".into());
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&bytes), None)
        .map_err(|e| e.to_string())?;
    let mut rows = 0;
    let mut subjects = BTreeSet::new();
    for b in reader {
        let b = b.map_err(|e| e.to_string())?;
        rows += b.num_rows();
        if let Some(c) = b
            .column_by_name(RESEARCH_COLUMNS[0])
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::StringArray>())
        {
            subjects.extend(c.iter().flatten().map(str::to_owned));
        }
    }
    Ok(Read {
        rows,
        subjects,
        bytes,
    })
}

fn request(grant: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        dataset: SMART_METER.into(),
        purpose: "AcademicResearch".into(),
        grant_id: grant.into(),
        ..Default::default()
    }
}

/// `alice` reads directly from SWM's node.
async fn direct(sb: &Sandbox, grant: &str) -> Result<Read, String> {
    let mut c = pb::access_client::AccessClient::new(channel_at(sb, OWNER, "tum", "alice").await?);
    let s = c
        .fetch(request(grant))
        .await
        .map_err(|e| format!("direct read refused: {}", e.message()))?;
    collect(s.into_inner()).await
}

/// `alice` asks her own node, which reads from SWM's node through the hub.
async fn relayed(sb: &Sandbox, grant: &str) -> Result<Read, String> {
    let mut c = pb::relay_client::RelayClient::new(channel_at(sb, READER, "tum", "alice").await?);
    let s = c
        .fetch(pb::RelayFetchRequest {
            owner_organisation: "swm".into(),
            owner_node: OWNER.into(),
            request: Some(request(grant)),
        })
        .await
        .map_err(|e| format!("relayed read refused: {}", e.message()))?;
    collect(s.into_inner()).await
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file below `dir`.
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The relayed read: the same rows as a direct one, audited at the owner
/// for the researcher via the hub, at the hub as metadata; the pair's
/// group is shared by SWM and TUM only. Returns the read.
async fn relayed_read(sb: &Sandbox, steps: &mut Steps, grant: &str) -> Result<Read, String> {
    let (swm0, hub0) = (
        sb.node(OWNER).map(|n| n.audit.status().size).unwrap_or(0),
        sb.node(HUB).map(|n| n.audit.status().size).unwrap_or(0),
    );
    steps.next(
        "`alice` asks TUM's node for SWM's rows; it forwards through the city hub under a signed on-behalf-of assertion addressed to SWM's node",
    );
    let via_hub = relayed(sb, grant).await?;
    let straight = direct(sb, grant).await?;
    println!(
        "        relayed: {} rows, {} households; direct: {} rows",
        via_hub.rows,
        via_hub.subjects.len(),
        straight.rows
    );
    check(
        via_hub.rows > 0 && via_hub.rows == straight.rows && via_hub.subjects == straight.subjects,
        "the relayed read returns the same rows as a direct read (the same pseudonyms)",
    )?;

    steps.next(
        "SWM's node decided and audited the read for `alice` (from her certificate), naming TUM's node and the hub",
    );
    let owner = super::audit_entries(sb, OWNER, swm0)?;
    let alice = sb
        .node(OWNER)
        .map(|n| n.audit.pseudonym("tum", "alice"))
        .unwrap_or_default();
    let release = owner.iter().find(|e| {
        e.kind == allmende_audit::EntryKind::ReleaseIntent
            && e.resource == SMART_METER
            && e.peer_node.as_deref() == Some("tum/tum-1 via stadt/stadt-1")
    });
    if let Some(e) = release {
        println!(
            "        #{} release intent: {}/{}, peer {}",
            e.sequence,
            e.principal.org,
            e.principal.user.as_deref().unwrap_or("-"),
            e.peer_node.as_deref().unwrap_or("-")
        );
    }
    check(
        release.is_some_and(|e| {
            e.principal.org == "tum" && e.principal.user.as_deref() == Some(alice.as_str())
        }),
        "SWM's release entry is `alice`'s (as a pseudonym), via `tum/tum-1` and `stadt/stadt-1`",
    )?;

    steps.next("the hub audited the relay as metadata only, and holds no row value in its store");
    let hub = super::audit_entries(sb, HUB, hub0)?;
    let relays: Vec<_> = hub.iter().filter(|e| e.action == "relay").collect();
    for e in &relays {
        println!(
            "        #{} {} {} {}",
            e.sequence,
            e.action,
            e.resource,
            e.peer_node.as_deref().unwrap_or("-")
        );
    }
    check(
        relays
            .iter()
            .any(|e| e.peer_node.as_deref() == Some("tum/tum-1 to swm/swm-1")),
        "the hub's relay entry names the two nodes and the dataset",
    )?;
    let marker = straight
        .subjects
        .iter()
        .find(|s| s.len() >= 8)
        .ok_or("no household pseudonym in the rows")?
        .clone();
    check(
        contains(&straight.bytes, marker.as_bytes()),
        &format!("the marker `{marker}` (a released household pseudonym) is in the rows"),
    )?;
    let city = sb.node(HUB).ok_or("the hub is not running")?;
    let files = files_below(city.store.path());
    let mut leaked = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        if contains(&bytes, marker.as_bytes()) {
            leaked.push(f.display().to_string());
        }
    }
    check(
        !files.is_empty() && leaked.is_empty(),
        &format!(
            "none of the {} files of the hub's store holds the marker{}",
            files.len(),
            if leaked.is_empty() {
                String::new()
            } else {
                format!(": {}", leaked.join(", "))
            }
        ),
    )?;
    check(
        !hub.iter()
            .any(|e| format!("{e:?}").contains(marker.as_str())),
        "no entry of the hub's audit log holds it",
    )?;
    Ok(via_hub)
}

/// SWM's group with TUM and its epoch.
async fn pair_group(
    swm: &crate::node::NodeHandle,
) -> Result<(allmende_mls::MlsGroupId, u64), String> {
    let group = swm
        .relay
        .group_with("tum")
        .map_err(|e| e.to_string())?
        .ok_or("SWM's node has no group with TUM")?;
    let epoch = epoch_of(swm, &group).await?;
    Ok((group, epoch))
}

async fn epoch_of(
    node: &crate::node::NodeHandle,
    group: &allmende_mls::MlsGroupId,
) -> Result<u64, String> {
    node.relay
        .mls()
        .lock()
        .await
        .epoch(group)
        .map_err(|e| e.to_string())
}

async fn story_10(sb: &Sandbox, steps: &mut Steps, granted: &Granted) -> Result<(), String> {
    relayed_read(sb, steps, &granted.grant.id).await?;
    steps.next("SWM's and TUM's nodes share one MLS group; the hub is not in it");
    let swm = sb.node(OWNER).ok_or("SWM's node is not running")?;
    let tum = sb.node(READER).ok_or("TUM's node is not running")?;
    let hub = sb.node(HUB).ok_or("the hub is not running")?;
    let (group, epoch) = pair_group(swm).await?;
    println!("        the SWM–TUM group at epoch {epoch}");
    check(
        tum.relay.group_with("swm").map_err(|e| e.to_string())? == Some(group.clone())
            && hub
                .relay
                .group_with("swm")
                .map_err(|e| e.to_string())?
                .is_none()
            && hub
                .relay
                .group_with("tum")
                .map_err(|e| e.to_string())?
                .is_none(),
        "TUM's node is in SWM's group; the hub holds no group with either",
    )
}

async fn story_9(sb: &Sandbox, steps: &mut Steps, granted: &Granted) -> Result<(), String> {
    relayed_read(sb, steps, &granted.grant.id).await?;
    let swm = sb.node(OWNER).ok_or("SWM's node is not running")?;
    let tum = sb.node(READER).ok_or("TUM's node is not running")?;
    let (group, before) = pair_group(swm).await?;

    steps.next(
        "TUM's node stops following the directory: it keeps the MLS state it has now, as a removed node would",
    );
    tum.set_directory_source(None, REFRESH);
    check(
        tum.relay.group_with("swm").map_err(|e| e.to_string())? == Some(group.clone()),
        &format!("TUM's node holds the SWM–TUM group at epoch {before}"),
    )?;

    steps.next("the city's operator removes TUM from the federation");
    let swm0 = swm.audit.status().size;
    let mut fed = pb::federation_client::FederationClient::new(
        channel_at(sb, HUB, "stadt", "operator").await?,
    );
    let removed = fed
        .remove_member(pb::RemoveMemberRequest {
            organisation: "tum".into(),
            reason: "story 9: left the federation".into(),
        })
        .await
        .map_err(|e| format!("removal refused: {}", e.message()))?
        .into_inner();
    check(
        removed.organisation == "tum",
        &format!("directory v{} signed without TUM", removed.version),
    )?;

    steps.next("within one refresh SWM's node takes the directory and commits TUM's removal in the pair's group");
    let deadline = std::time::Instant::now() + REFRESH * 10;
    loop {
        let taken = swm.trust.snapshot().doc.version >= removed.version;
        let committed = swm
            .relay
            .group_with("tum")
            .map_err(|e| e.to_string())?
            .is_none();
        if taken && committed {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "SWM's node did not follow the removal within {:?} (directory taken: {taken}, removal committed: {committed})",
                REFRESH * 10
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let after = epoch_of(swm, &group).await?;
    check(
        after > before,
        &format!("the group moved from epoch {before} to {after}"),
    )?;

    steps.next("SWM's node refuses TUM's certificates: the researcher's and the node's");
    let as_alice = channel_at(sb, OWNER, "tum", "alice").await;
    let alice_refused = match as_alice {
        Err(_) => true,
        Ok(ch) => pb::federation_client::FederationClient::new(ch)
            .who_am_i(pb::WhoAmIRequest::default())
            .await
            .is_err(),
    };
    check(alice_refused, "`alice`'s certificate is refused")?;
    let node_profile = sb.node_profile(
        "tum",
        READER,
        &sb.node(OWNER)
            .map(|n| n.grpc_endpoint())
            .unwrap_or_default(),
    );
    let node_refused = match node_profile.connect().await {
        Err(_) => true,
        Ok(ch) => pb::federation_client::FederationClient::new(ch)
            .who_am_i(pb::WhoAmIRequest::default())
            .await
            .is_err(),
    };
    check(node_refused, "TUM's node certificate is refused")?;

    steps.next("a chunk SWM's node seals now cannot be opened with the state TUM's node kept");
    let mut sealer = swm
        .relay
        .sealer(&group, SMART_METER, "story-9-after")
        .await
        .map_err(|e| e.to_string())?;
    let chunk = sealer
        .finish(b"sealed after TUM's removal")
        .map_err(|e| e.to_string())?;
    let opened = tum
        .relay
        .mls()
        .lock()
        .await
        .open_stream(&group, SMART_METER, "story-9-after")
        .map_err(|e| e.to_string())
        .and_then(|mut o| o.open(&chunk).map(|_| ()).map_err(|e| e.to_string()));
    if let Err(e) = &opened {
        println!("        TUM's node: {e}");
    }
    check(opened.is_err(), "TUM's saved state does not open it")?;

    steps.next("SWM's node revoked TUM's grant and audited it");
    let entries = super::audit_entries(sb, OWNER, swm0)?;
    let revoked = entries.iter().find(|e| {
        e.action == "revoke"
            && e.grant_id.as_deref() == Some(granted.grant.id.as_str())
            && matches!(
                e.kind,
                allmende_audit::EntryKind::GrantChange {
                    op: allmende_audit::GrantOp::Revoked
                }
            )
    });
    if let Some(e) = revoked {
        println!(
            "        #{} {} {} grant {}",
            e.sequence,
            e.action,
            e.resource,
            e.grant_id.as_deref().unwrap_or("-")
        );
    }
    check(
        revoked.is_some(),
        &format!(
            "grant {} revoked at SWM's node, audited there",
            granted.grant.id
        ),
    )
}
