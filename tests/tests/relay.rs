//! Relayed access through the city hub (`docs/relay.md`): a TUM researcher
//! fetches SWM's smart-meter readings through TUM's node and the city hub;
//! the owner decides and audits on the researcher's certificate, the hub
//! audits metadata and relays ciphertext only; on-behalf-of assertions
//! replayed, re-addressed, expired, for another organisation's user, signed
//! by a non-node certificate or for another request are refused and
//! audited; a hub that truncates or reorders is detected, one that
//! substitutes a key package too; removing an organisation moves the pair's
//! MLS epoch beyond its saved state.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::pki::Subject;
use allmende::pki::identity::LeafIdentity;
use allmende::relay::assertion::{Assertion, AssertionSigner};
use allmende::relay::{HubTap, Tamper};
use allmende::sandbox::Sandbox;
use allmende::tls::TlsMaterial;
use allmende_audit::{Decision, Entry, EntryKind};
use allmende_e2e::{audit_since, audit_size, connect_with, files_below, material, munich};
use allmende_proto::v1 as pb;
use pb::access_client::AccessClient;
use pb::relay_client::RelayClient;
use prost::Message;
use std::time::Duration;
use tonic::transport::Channel;

const REFRESH: Duration = Duration::from_secs(1);
const SMART_METER: &str = "smart-meter-readings";

async fn federation() -> Sandbox {
    let sb = munich().await;
    sb.register_demo_datasets().await.unwrap();
    grant_tum_research(&sb, "g-1");
    sb.use_relay(REFRESH).await.unwrap();
    sb
}

fn grant_tum_research(sb: &Sandbox, id: &str) {
    let now = allmende_e2e::unix_now();
    sb.node("swm-1").unwrap().policy.with_entities(|e| {
        e.upsert_grant(allmende_policies::Grant {
            id: id.into(),
            grantee: "tum".into(),
            dataset: SMART_METER.into(),
            purpose: allmende_policies::Purpose::AcademicResearch,
            not_before: now - 60,
            not_after: Some(now + 90 * 86_400),
            state: allmende_policies::GrantState::Active,
            aggregate_only: false,
        })
    });
}

fn smart_meter() -> pb::FetchRequest {
    pb::FetchRequest {
        dataset: SMART_METER.into(),
        purpose: "AcademicResearch".into(),
        grant_id: "g-1".into(),
        ..Default::default()
    }
}

async fn channel(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

fn node_dir(sb: &Sandbox, org: &str, node: &str) -> std::path::PathBuf {
    sb.root.join(org).join("nodes").join(node)
}

/// A node's own TLS material (a test playing that node).
fn node_material(sb: &Sandbox, org: &str, node: &str) -> TlsMaterial {
    let d = node_dir(sb, org, node);
    TlsMaterial::load(
        &d.join("node.crt"),
        &d.join("node.key"),
        &d.join("root-ca.crt"),
    )
    .unwrap()
}

fn node_uri(sb: &Sandbox, org: &str, node: &str) -> String {
    LeafIdentity {
        federation: sb.spec.federation.clone(),
        organisation: org.into(),
        subject: Subject::Node(node.into()),
    }
    .uri()
}

struct Fetched {
    ipc: Vec<u8>,
    batches: Vec<arrow::record_batch::RecordBatch>,
    summary: pb::FetchSummary,
}

async fn collect(mut s: tonic::Streaming<pb::FetchResponse>) -> Result<Fetched, tonic::Status> {
    let mut ipc = Vec::new();
    let mut summary = None;
    while let Some(m) = s.message().await? {
        ipc.extend(m.arrow_ipc);
        if m.summary.is_some() {
            summary = m.summary;
        }
    }
    let batches =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc.clone()), None)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
    Ok(Fetched {
        ipc,
        batches,
        summary: summary.unwrap_or_default(),
    })
}

async fn direct(sb: &Sandbox) -> Fetched {
    let mut c = AccessClient::new(channel(sb, "tum", "alice", "swm-1").await);
    collect(c.fetch(smart_meter()).await.unwrap().into_inner())
        .await
        .unwrap()
}

async fn relayed(sb: &Sandbox) -> Result<Fetched, tonic::Status> {
    let mut c = RelayClient::new(channel(sb, "tum", "alice", "tum-1").await);
    let s = c
        .fetch(pb::RelayFetchRequest {
            owner_organisation: "swm".into(),
            owner_node: "swm-1".into(),
            request: Some(smart_meter()),
        })
        .await?
        .into_inner();
    collect(s).await
}

/// A string value of the released rows at least 8 bytes long.
fn marker(f: &Fetched) -> Vec<u8> {
    for b in &f.batches {
        for col in b.columns() {
            if let Some(s) = col.as_any().downcast_ref::<arrow::array::StringArray>()
                && let Some(v) = s.iter().flatten().find(|v| v.len() >= 8)
            {
                return v.as_bytes().to_vec();
            }
        }
    }
    panic!("no string value in the released rows");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn denied_with(entries: &[Entry], reason: &str) -> bool {
    entries
        .iter()
        .any(|e| e.decision == Some(Decision::Deny) && e.policy_ids.iter().any(|p| p == reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relayed_fetch_returns_the_direct_rows_audited_at_the_owner_and_the_hub_sees_no_row() {
    let sb = federation().await;
    let d = direct(&sb).await;
    assert!(d.summary.rows > 0);
    let (swm0, city0, tum0) = (
        audit_size(&sb, "swm-1"),
        audit_size(&sb, "stadt-1"),
        audit_size(&sb, "tum-1"),
    );
    let tap = HubTap::new(Tamper::None);
    sb.city_node().unwrap().relay.set_tap(Some(tap.clone()));
    let r = relayed(&sb).await.unwrap();
    // The same rows as the direct fetch (same caller, same grant: the same
    // pseudonyms).
    assert_eq!(r.batches, d.batches);
    assert_eq!(r.summary.rows, d.summary.rows);
    assert!(r.summary.complete);

    // The owner decided and audited for alice (from her certificate),
    // naming the forwarding node and the hub.
    let alice = sb.node("swm-1").unwrap().audit.pseudonym("tum", "alice");
    let owner = audit_since(&sb, "swm-1", swm0);
    let intent = owner
        .iter()
        .find(|e| e.kind == EntryKind::ReleaseIntent && e.resource == SMART_METER)
        .expect("a release intent at the owner");
    assert_eq!(intent.principal.org, "tum");
    assert_eq!(intent.principal.user.as_deref(), Some(alice.as_str()));
    assert_eq!(
        intent.peer_node.as_deref(),
        Some("tum/tum-1 via stadt/stadt-1")
    );
    assert!(
        owner
            .iter()
            .any(|e| matches!(e.kind, EntryKind::ReleaseCompletion { .. }))
    );
    // The forwarding node audited the forward.
    let fwd = audit_since(&sb, "tum-1", tum0);
    assert!(
        fwd.iter()
            .any(|e| e.policy_ids.iter().any(|p| p == "relay-forwarded"))
    );
    // The hub audited the relay, metadata only.
    let hub = audit_since(&sb, "stadt-1", city0);
    let relay = hub
        .iter()
        .find(|e| e.action == "relay" && e.kind == EntryKind::ReleaseIntent)
        .expect("a relay entry at the hub");
    assert_eq!(relay.resource, SMART_METER);
    assert_eq!(relay.peer_node.as_deref(), Some("tum/tum-1 to swm/swm-1"));
    assert!(hub.iter().any(|e| matches!(
        e.kind,
        EntryKind::ReleaseCompletion {
            outcome: allmende_audit::ReleaseOutcome::Completed,
            ..
        }
    )));

    // Hub blindness: a value of the released rows is in the direct
    // stream (the search finds it), never in what the hub relayed nor in
    // any file of the hub's store.
    let m = marker(&d);
    assert!(contains(&d.ipc, &m), "the marker is in the released bytes");
    let frames = tap.seen();
    assert!(frames.len() >= 2, "{} frames relayed", frames.len());
    for f in &frames {
        assert!(!contains(f, &m), "the hub relayed a plaintext row value");
    }
    let city = sb.city_node().unwrap();
    for f in files_below(city.store.path()) {
        let b = std::fs::read(&f).unwrap();
        assert!(!contains(&b, &m), "`{}` holds a row value", f.display());
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_dropping_the_last_chunk_or_reordering_fails_the_fetch() {
    let sb = federation().await;
    let city = sb.city_node().unwrap();
    assert!(relayed(&sb).await.is_ok(), "an honest hub serves");
    for t in [Tamper::DropLast, Tamper::Reorder] {
        city.relay.set_tap(Some(HubTap::new(t)));
        let err = relayed(&sb)
            .await
            .err()
            .unwrap_or_else(|| panic!("{t:?}: a tampered stream was taken as complete"));
        assert!(
            err.message().contains("relayed stream"),
            "{t:?}: {}",
            err.message()
        );
    }
    city.relay.set_tap(None);
    assert!(relayed(&sb).await.is_ok(), "an honest hub serves again");
    sb.shutdown().await.unwrap();
}

/// The hub's call to the owner, played by a test holding the hub's node
/// certificate.
async fn serve_as(
    sb: &Sandbox,
    caller: TlsMaterial,
    assertion: Vec<u8>,
    request: Vec<u8>,
) -> Result<Vec<pb::RelayFrame>, tonic::Status> {
    let ch = connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &caller)
        .await
        .unwrap();
    let mut s = RelayClient::new(ch)
        .serve(pb::RelayedRequest {
            target_organisation: "swm".into(),
            target_node: "swm-1".into(),
            assertion,
            request,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(f) = s.message().await? {
        out.push(f);
    }
    Ok(out)
}

fn signer_of(m: &TlsMaterial) -> AssertionSigner {
    AssertionSigner::from_pem(&m.chain_pem, &m.key_pem)
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_replayed_and_misaddressed_assertions_are_refused_and_audited_at_the_owner() {
    let sb = federation().await;
    let hub = node_material(&sb, "stadt", "stadt-1");
    let tum = signer_of(&node_material(&sb, "tum", "tum-1"));
    let alice = material(&sb.profile("tum", "alice").unwrap());
    let alice_signer = signer_of(&alice);
    let alice_der = alice_signer.certificate_der().to_vec();
    let swm_user = signer_of(&material(&sb.profile("swm", "steward").unwrap()));
    let swm_uri = node_uri(&sb, "swm", "swm-1");
    let request = smart_meter().encode_to_vec();
    let now = allmende_e2e::unix_now();
    let fresh = |signer: &AssertionSigner, user: &[u8], audience: &str| -> Assertion {
        signer.assertion(user, audience, &request, now).unwrap()
    };

    // A valid assertion is served once; the same again is a replay.
    let good = tum.sign(&fresh(&tum, &alice_der, &swm_uri)).unwrap();
    let frames = serve_as(&sb, hub.clone(), good.clone(), request.clone())
        .await
        .unwrap();
    assert!(!frames.is_empty());

    let expired = {
        let mut a = fresh(&tum, &alice_der, &swm_uri);
        a.issued_at = now - 200;
        a.expires_at = now - 140;
        tum.sign(&a).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("relay-assertion-replayed", good, request.clone()),
        (
            "relay-assertion-audience",
            tum.sign(&fresh(
                &tum,
                &alice_der,
                &node_uri(&sb, "scooter-co", "scooter-co-1"),
            ))
            .unwrap(),
            request.clone(),
        ),
        ("relay-assertion-expired", expired, request.clone()),
        (
            "relay-assertion-other-organisation",
            tum.sign(&fresh(&tum, swm_user.certificate_der(), &swm_uri))
                .unwrap(),
            request.clone(),
        ),
        (
            "relay-assertion-issuer-not-a-node",
            alice_signer
                .sign(&fresh(&alice_signer, &alice_der, &swm_uri))
                .unwrap(),
            request.clone(),
        ),
        (
            "relay-assertion-digest",
            tum.sign(&fresh(&tum, &alice_der, &swm_uri)).unwrap(),
            pb::FetchRequest {
                columns: vec!["household_id".into()],
                ..smart_meter()
            }
            .encode_to_vec(),
        ),
    ];
    for (reason, assertion, req) in cases {
        let before = audit_size(&sb, "swm-1");
        let err = serve_as(&sb, hub.clone(), assertion, req)
            .await
            .err()
            .unwrap_or_else(|| panic!("{reason}: served"));
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{reason}: {err:?}"
        );
        let entries = audit_since(&sb, "swm-1", before);
        assert!(denied_with(&entries, reason), "{reason}: not audited");
        assert!(
            !entries.iter().any(|e| e.kind == EntryKind::ReleaseIntent),
            "{reason}: a release started"
        );
    }

    // Only the hub may call the owner: TUM's node itself is refused.
    let before = audit_size(&sb, "swm-1");
    let direct_node = serve_as(
        &sb,
        node_material(&sb, "tum", "tum-1"),
        tum.sign(&fresh(&tum, &alice_der, &swm_uri)).unwrap(),
        request.clone(),
    )
    .await
    .expect_err("a node other than the hub was served");
    assert_eq!(direct_node.code(), tonic::Code::PermissionDenied);
    assert!(denied_with(
        &audit_since(&sb, "swm-1", before),
        "relay-not-the-hub"
    ));
    // A user cannot ask the hub to relay.
    let err = RelayClient::new(channel(&sb, "tum", "alice", "stadt-1").await)
        .forward(pb::RelayedRequest {
            target_organisation: "swm".into(),
            target_node: "swm-1".into(),
            assertion: Vec::new(),
            request: request.clone(),
        })
        .await
        .expect_err("a user was relayed");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // A user of another organisation cannot fetch through TUM's node.
    let err = RelayClient::new(channel(&sb, "swm", "steward", "tum-1").await)
        .fetch(pb::RelayFetchRequest {
            owner_organisation: "swm".into(),
            owner_node: "swm-1".into(),
            request: Some(smart_meter()),
        })
        .await
        .expect_err("another organisation's user was forwarded");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_package_the_hub_substituted_is_refused() {
    let sb = federation().await;
    let tum_node = sb.node("tum-1").unwrap();
    // TUM's node stops following the city (it would publish its own key
    // package again at once).
    tum_node.set_directory_source(None, REFRESH);
    let city = sb.city_node().unwrap();
    let doc = city.trust.snapshot().doc.clone();
    let scooter_kp = doc
        .nodes
        .iter()
        .find(|n| n.node == "scooter-co-1")
        .unwrap()
        .mls_key_package
        .clone();
    let mut entry = doc
        .nodes
        .iter()
        .find(|n| n.node == "tum-1")
        .unwrap()
        .clone();
    assert!(!scooter_kp.is_empty() && scooter_kp != entry.mls_key_package);
    entry.mls_key_package = scooter_kp;
    let v = city.directory.set_nodes(&[entry]).await.unwrap();
    let swm = sb.node("swm-1").unwrap();
    for _ in 0..200 {
        if swm.trust.snapshot().doc.version >= v {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(swm.trust.snapshot().doc.version >= v);

    let hub = node_material(&sb, "stadt", "stadt-1");
    let tum = signer_of(&node_material(&sb, "tum", "tum-1"));
    let alice = signer_of(&material(&sb.profile("tum", "alice").unwrap()));
    let request = smart_meter().encode_to_vec();
    let a = tum
        .assertion(
            alice.certificate_der(),
            &node_uri(&sb, "swm", "swm-1"),
            &request,
            allmende_e2e::unix_now(),
        )
        .unwrap();
    let before = audit_size(&sb, "swm-1");
    let err = serve_as(&sb, hub, tum.sign(&a).unwrap(), request)
        .await
        .expect_err("a substituted key package was used");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("not bound"), "{}", err.message());
    let entries = audit_since(&sb, "swm-1", before);
    assert!(denied_with(&entries, "relay-key-package"));
    assert!(!entries.iter().any(|e| e.kind == EntryKind::ReleaseIntent));
    assert!(swm.relay.group_with("tum").unwrap().is_none());
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_an_organisation_moves_the_pairs_epoch_beyond_its_saved_state() {
    let sb = federation().await;
    relayed(&sb).await.unwrap();
    let swm = sb.node("swm-1").unwrap();
    let tum = sb.node("tum-1").unwrap();
    let group = swm
        .relay
        .group_with("tum")
        .unwrap()
        .expect("the pair's group");
    assert_eq!(tum.relay.group_with("swm").unwrap().as_ref(), Some(&group));
    let before = swm.relay.mls().lock().await.epoch(&group).unwrap();
    // TUM's node keeps its state as it is now (its saved state).
    tum.set_directory_source(None, REFRESH);

    let city = sb.city_node().unwrap();
    let v = city.directory.remove_member("tum", "left").await.unwrap();
    let mut moved = false;
    for _ in 0..400 {
        if swm.trust.snapshot().doc.version >= v && swm.relay.group_with("tum").unwrap().is_none() {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(moved, "the owner committed no removal");
    let after = swm.relay.mls().lock().await.epoch(&group).unwrap();
    assert!(after > before, "epoch {before} → {after}");
    // Sealed after the removal: TUM's saved state cannot open it.
    let mut sealer = swm
        .relay
        .sealer(&group, SMART_METER, "after")
        .await
        .unwrap();
    let chunk = sealer.finish(b"sealed after the removal").unwrap();
    let opened = tum
        .relay
        .mls()
        .lock()
        .await
        .open_stream(&group, SMART_METER, "after")
        .map_err(|e| e.to_string())
        .and_then(|mut o| o.open(&chunk).map_err(|e| e.to_string()));
    assert!(
        opened.is_err(),
        "the removed node opened a chunk sealed after"
    );
    sb.shutdown().await.unwrap();
}

/// Load generator, not run in CI: `cargo nextest run -p allmende-e2e
/// --test relay --run-ignored only relayed_vs_direct --no-capture`.
/// Fetches the same dataset directly and relayed, alternately, and prints
/// rows/s of each and the ratio (`docs/benchmarks.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "load generator: prints throughput figures"]
async fn relayed_vs_direct_throughput() {
    let sb = federation().await;
    let rounds = 10;
    let (mut d_rows, mut r_rows) = (0u64, 0u64);
    let (mut d_time, mut r_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = std::time::Instant::now();
        d_rows += direct(&sb).await.summary.rows;
        d_time += t.elapsed();
        let t = std::time::Instant::now();
        r_rows += relayed(&sb).await.unwrap().summary.rows;
        r_time += t.elapsed();
        // Stay under the per-caller fetch rate.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let d = d_rows as f64 / d_time.as_secs_f64();
    let r = r_rows as f64 / r_time.as_secs_f64();
    println!(
        "direct: {d_rows} rows in {d_time:?} = {d:.0} rows/s; relayed: {r_rows} rows in {r_time:?} = {r:.0} rows/s; ratio {:.1} %",
        100.0 * r / d
    );
    sb.shutdown().await.unwrap();
}
