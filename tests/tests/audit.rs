//! Story 8 and the audit log's guarantees across real nodes: the DPO
//! queries, exports and verifies offline against keys they trust; peers
//! cosign checkpoints; an edited byte in the store is named; nobody but the
//! DPO reads the log, and every audit read is itself audited; a decision that
//! cannot be audited fails closed; a restored old backup reports a rollback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::store::{RawTable, TableName, WriteBatch};
use allmende_audit::EntryKind;
use allmende_e2e::{connect_with, material, munich};
use allmende_proto::v1 as pb;
use pb::audit_client::AuditClient;
use std::time::Duration;

async fn audit_client(
    sb: &allmende::sandbox::Sandbox,
    org: &str,
    user: &str,
    node: &str,
) -> AuditClient<tonic::transport::Channel> {
    let p = sb.profile(org, user).unwrap();
    let endpoint = sb.node(node).unwrap().grpc_endpoint();
    AuditClient::new(connect_with(&endpoint, &material(&p)).await.unwrap())
}

fn trust_file(sb: &allmende::sandbox::Sandbox, log_node: &str) -> String {
    let log = sb.node(log_node).unwrap();
    let mut t = format!(
        "[[log]]\norigin = \"{}\"\nkeys = [\"{}\"]\n",
        log.audit.origin(),
        log.audit.log_vkey()
    );
    for n in &sb.nodes {
        if n.name != log_node {
            t.push_str(&format!(
                "\n[[witness]]\nkey = \"{}\"\n",
                n.audit.witness_vkey()
            ));
        }
    }
    t.push_str("witness_quorum = 2\n");
    // witness_quorum must come first in TOML (top-level key).
    let (body, quorum) = t.split_at(t.find("witness_quorum").unwrap());
    format!("{quorum}\n{body}")
}

use allmende_e2e::files_below;

async fn wait_cosigned(sb: &allmende::sandbox::Sandbox, node: &str, min: usize) {
    let n = sb.node(node).unwrap();
    for _ in 0..100 {
        if let Ok(Some(c)) = n.audit.latest_checkpoint()
            && c.cosignatures.len() >= min
            && c.size == n.audit.size()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("checkpoint of {node} not cosigned by {min} peers within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_8_dpo_queries_exports_and_verifies_offline() {
    let sb = munich().await;
    let swm = sb.node("swm-1").unwrap();
    // Some history: decisions on smart-meter data by TUM.
    for i in 0..5 {
        let mut d =
            allmende::audit::Draft::new("tum", "read", "smart-meter-readings", EntryKind::Decision);
        d.user = Some("alice".into());
        d.purpose = Some(
            if i == 4 {
                "Marketing"
            } else {
                "AcademicResearch"
            }
            .into(),
        );
        d.decision = Some(if i == 4 {
            allmende_audit::Decision::Deny
        } else {
            allmende_audit::Decision::Allow
        });
        d.subjects = vec![format!("HH-00000{i}")];
        swm.audit.append(d).await.unwrap();
    }
    let mut dpo = audit_client(&sb, "swm", "dpo", "swm-1").await;
    let r = dpo
        .query(pb::AuditQueryRequest {
            dataset: "smart-meter-readings".into(),
            organisation: "tum".into(),
            user: "tum/alice".into(),
            purpose: "AcademicResearch".into(),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.entries.len(), 2);
    assert!(
        r.entries
            .iter()
            .all(|e| e.purpose == "AcademicResearch" && e.organisation == "tum")
    );
    assert!(
        !r.entries[0].user_pseudonym.contains("alice"),
        "user ids are pseudonymous"
    );
    let page2 = dpo
        .query(pb::AuditQueryRequest {
            dataset: "smart-meter-readings".into(),
            purpose: "AcademicResearch".into(),
            page_after: r.next_page_after,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.entries.len(), 2, "4 allowed reads in two pages");
    let denied = dpo
        .query(pb::AuditQueryRequest {
            decision: "deny".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied.entries.len(), 1);

    // Peers cosign; the export verifies offline against keys the DPO trusts.
    wait_cosigned(&sb, "swm-1", 4).await;
    let bundle = dpo
        .export(pb::AuditExportRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(bundle.entries >= 5);
    let trust = allmende_audit::TrustFile::from_toml(&trust_file(&sb, "swm-1")).unwrap();
    let report = allmende_audit::verify_bundle(&bundle.bundle, &trust);
    assert!(report.is_ok(), "{:?}", report.failures);
    assert!(report.cosignatures.len() >= 2);
    // The node itself offers the keys for a trust file: its log key and the
    // witness keys it pinned for its peers; they match the peers' own keys.
    let st = dpo
        .status(pb::AuditStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut peers: Vec<String> = sb
        .nodes
        .iter()
        .filter(|n| n.name != "swm-1")
        .map(|n| n.audit.witness_vkey())
        .collect();
    peers.sort();
    let mut pinned = st.peer_witness_vkeys.clone();
    pinned.sort();
    assert_eq!(pinned, peers);
    let mut t = format!(
        "witness_quorum = {}\n[[log]]\norigin = \"{}\"\nkeys = [\"{}\"]\n",
        pinned.len(),
        st.origin,
        st.log_vkey
    );
    for k in &pinned {
        t.push_str(&format!("[[witness]]\nkey = \"{k}\"\n"));
    }
    let from_node = allmende_audit::TrustFile::from_toml(&t).unwrap();
    assert!(allmende_audit::verify_bundle(&bundle.bundle, &from_node).is_ok());
    // One edited byte in an entry of the bundle is detected and named.
    let needle = b"smart-meter-readings";
    let pos = bundle
        .bundle
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut forged = bundle.bundle.clone();
    forged[pos] ^= 0x20;
    let report = allmende_audit::verify_bundle(&forged, &trust);
    assert!(!report.is_ok());
    assert_eq!(report.failed_sequences().len(), 1, "{:?}", report.failures);
    // Keys from the bundle are never trusted: another log key fails.
    let wrong = trust_file(&sb, "swm-1").replace(
        &swm.audit.log_vkey(),
        &sb.node("tum-1").unwrap().audit.log_vkey(),
    );
    let wrong = allmende_audit::TrustFile::from_toml(
        &wrong.replace(swm.audit.origin(), sb.node("tum-1").unwrap().audit.origin()),
    )
    .unwrap();
    assert!(!allmende_audit::verify_bundle(&bundle.bundle, &wrong).is_ok());

    // The clear user id and the subject ids given to the log are nowhere in
    // the node's store (entries, index, blobs): only keyed hashes are kept.
    let files = files_below(swm.store.path());
    assert!(files.len() > 1, "{files:?}");
    for needle in [&b"alice"[..], b"HH-00000"] {
        let hits: Vec<_> = files
            .iter()
            .filter(|f| {
                let b = std::fs::read(f).unwrap();
                b.windows(needle.len()).any(|w| w == needle)
            })
            .collect();
        assert!(
            hits.is_empty(),
            "`{}` in clear in {hits:?}",
            String::from_utf8_lossy(needle)
        );
    }

    // An edited byte in the node's store is named by VerifyLog.
    let entries: RawTable<u64> = swm.store.raw_table(TableName::AuditEntries).unwrap();
    let (seq, mut bytes) = (0..swm.audit.size())
        .map(|s| (s, entries.get(&s).unwrap().unwrap()))
        .find(|(_, b)| {
            let e = allmende_audit::Entry::decode(b).unwrap();
            e.action == "read" && e.resource == "smart-meter-readings"
        })
        .unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at] ^= 0x01;
    let mut b = WriteBatch::new();
    b.put_raw(&entries, &seq, bytes);
    swm.store.commit_durable(b).await.unwrap();
    let v = dpo
        .verify_log(pb::VerifyLogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!v.ok);
    assert_eq!(v.failed_sequences, vec![seq], "{:?}", v.findings);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_dpo_reads_the_log_and_every_read_is_audited() {
    let sb = munich().await;
    let mut alice = audit_client(&sb, "tum", "alice", "swm-1").await;
    let err = alice
        .query(pb::AuditQueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let details: pb::DecisionDetails = prost::Message::decode(err.details()).unwrap();
    assert!(!details.allowed);
    assert!(
        details
            .deciding
            .iter()
            .any(|p| p.id == "audit-log-dpo-only"),
        "{details:?}"
    );
    assert!(
        details
            .deciding
            .iter()
            .all(|p| !p.reason_de.is_empty() && !p.reason_en.is_empty())
    );
    // The DPO of another organisation is refused too.
    let mut stadt_dpo = audit_client(&sb, "stadt", "dpo", "swm-1").await;
    assert_eq!(
        stadt_dpo
            .query(pb::AuditQueryRequest::default())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    // swm's DPO sees both refusals and their own read.
    let mut dpo = audit_client(&sb, "swm", "dpo", "swm-1").await;
    let r = dpo
        .query(pb::AuditQueryRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let reads: Vec<_> = r
        .entries
        .iter()
        .filter(|e| e.action == "read_audit")
        .collect();
    assert_eq!(reads.len(), 3, "{reads:?}");
    assert_eq!(reads.iter().filter(|e| e.decision == "deny").count(), 2);
    assert!(reads.iter().any(
        |e| e.organisation == "tum" && e.policy_ids.contains(&"audit-log-dpo-only".to_owned())
    ));
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citizens_see_only_accesses_to_their_own_data() {
    let sb = munich().await;
    let swm = sb.node("swm-1").unwrap();
    for subject in ["HH-000001", "HH-000002", "HH-000001"] {
        let mut d = allmende::audit::Draft::new(
            "tum",
            "read",
            "smart-meter-readings",
            EntryKind::ReleaseIntent,
        );
        d.purpose = Some("AcademicResearch".into());
        d.subjects = vec![subject.into(), "HH-000009".into()];
        swm.audit.append(d).await.unwrap();
    }
    let mut me = audit_client(&sb, "swm", "HH-000001", "swm-1").await;
    let r = me
        .my_accesses(pb::MyAccessesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.entries.len(), 2);
    assert!(
        r.entries
            .iter()
            .all(|e| e.organisation == "tum" && e.purpose == "AcademicResearch")
    );
    // The household cannot read the whole log.
    assert_eq!(
        me.query(pb::AuditQueryRequest::default())
            .await
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_cannot_be_audited_fails_closed() {
    let sb = munich().await;
    let swm = sb.node("swm-1").unwrap();
    let mut dpo = audit_client(&sb, "swm", "dpo", "swm-1").await;
    dpo.query(pb::AuditQueryRequest::default()).await.unwrap();
    swm.store.fail_writes(true);
    let err = dpo
        .query(pb::AuditQueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    swm.store.fail_writes(false);
    dpo.query(pb::AuditQueryRequest::default()).await.unwrap();
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_old_backup_is_reported_as_rollback() {
    let mut sb = munich().await;
    let append = |sb: &allmende::sandbox::Sandbox, n: usize| {
        let log = sb.node("swm-1").unwrap().audit.clone();
        async move {
            for _ in 0..n {
                log.append(allmende::audit::Draft::new(
                    "swm",
                    "read",
                    "x",
                    EntryKind::Decision,
                ))
                .await
                .unwrap();
            }
        }
    };
    append(&sb, 3).await;
    wait_cosigned(&sb, "swm-1", 4).await;
    sb.stop_node("swm-1").await.unwrap();
    let cfg = allmende::config::NodeConfig::load(&sb.node_config_path("swm-1").unwrap()).unwrap();
    let store_dir = cfg.data_dir.join("store");
    let backup = sb.root.join("swm-backup.bin");
    {
        let s = allmende::store::Store::open(&store_dir, &allmende::store::StoreOptions::default())
            .unwrap();
        s.backup_to(&backup).unwrap();
    }
    sb.start_node("swm-1").await.unwrap();
    append(&sb, 5).await;
    wait_cosigned(&sb, "swm-1", 4).await;
    sb.stop_node("swm-1").await.unwrap();
    std::fs::remove_dir_all(&store_dir).unwrap();
    allmende::store::Store::restore_from(
        &backup,
        &store_dir,
        &allmende::store::StoreOptions::default(),
        allmende::audit::STORE_MIGRATIONS,
    )
    .unwrap();
    let node = sb.start_node("swm-1").await.unwrap();
    let mut found = Vec::new();
    for _ in 0..60 {
        found = node.audit.findings().unwrap();
        if found.iter().any(|f| f.contains("rollback")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found
            .iter()
            .any(|f| f.contains("rollback") && f.contains("Behind")),
        "{found:?}"
    );
    sb.shutdown().await.unwrap();
}
