//! Connector sources are confined: a node reads local files only below the
//! directories its operator allowed (`sources.roots`), never its own key,
//! store or config directories, not through `..` or a symbolic link out of a
//! root, and not through a link swapped in after registration. Every refusal
//! is a clear `PERMISSION_DENIED` (or a failed read) and is in the node's
//! audit log, without the path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::sandbox::{SAMPLE_DATA_DIR, Sandbox, SandboxSpec};
use allmende_audit::{Decision, Entry};
use allmende_connectors::FileConnectorConfig;
use allmende_e2e::{connect_with, material};
use allmende_proto::v1 as pb;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// SWM and TUM only: enough for a steward, a researcher and a fetch.
async fn swm_and_tum() -> Sandbox {
    let mut spec = SandboxSpec::munich();
    spec.orgs.retain(|o| o.name == "swm" || o.name == "tum");
    Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap()
}

fn node_dir(sb: &Sandbox) -> PathBuf {
    sb.node_config_path("swm-1")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The audit entries of `swm-1` recording a refused source, with their raw bytes.
fn refusals(sb: &Sandbox) -> Vec<(Entry, Vec<u8>)> {
    let log = &sb.node("swm-1").unwrap().audit;
    log.entry_range(0, log.size())
        .unwrap()
        .into_iter()
        .map(|(_, b)| (Entry::decode(&b).unwrap(), b))
        .filter(|(e, _)| e.action == allmende::registry::REFUSED_SOURCE_ACTION)
        .collect()
}

async fn register(
    sb: &Sandbox,
    dataset: &str,
    config: &FileConnectorConfig,
) -> Result<(), tonic::Status> {
    let desc = allmende::demo::munich::datasets()
        .into_iter()
        .find(|(_, d)| d.id == dataset)
        .unwrap()
        .1;
    let p = sb.profile("swm", "steward").unwrap();
    let ch = connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap();
    pb::connectors_client::ConnectorsClient::new(ch)
        .register(pb::RegisterConnectorRequest {
            dataset_json: serde_json::to_string(&desc).unwrap(),
            kind: "files".into(),
            config_json: serde_json::to_string(config).unwrap(),
        })
        .await
        .map(|_| ())
}

fn with_path(config: &FileConnectorConfig, path: &Path) -> FileConnectorConfig {
    let mut c = config.clone();
    c.path = path.to_path_buf();
    c
}

/// A refused registration: `PERMISSION_DENIED`, the path in backticks, the reason.
fn assert_refused(r: Result<(), tonic::Status>, path: &Path, reason: &str) {
    let err = r.expect_err("the source must be refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let m = err.message();
    assert!(
        m.contains(&format!("`{}`", path.display())),
        "names the path: {m}"
    );
    assert!(m.contains(reason), "says why ({reason}): {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_outside_the_roots_or_in_the_nodes_own_places_are_refused_and_audited() {
    let mut sb = swm_and_tum().await;
    let nd = node_dir(&sb);
    // The operator allows the whole sandbox directory: it contains the node's
    // key, config and store, which must stay unreadable all the same.
    sb.stop_node("swm-1").await.unwrap();
    let cfg = sb.node_config_path("swm-1").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text[..text.find("\n[sources]").unwrap()].to_owned()
        + &allmende::config::NodeConfig::render_sources(std::slice::from_ref(&sb.root));
    std::fs::write(&cfg, text).unwrap();
    sb.start_node("swm-1").await.unwrap();

    let files = allmende_connectors::sample::write_demo_data(
        &sb.root.join(SAMPLE_DATA_DIR),
        &allmende_connectors::sample::SampleSpec::default(),
    )
    .unwrap();
    let air = files.dataset("air-quality").unwrap().config.clone();
    let csv = std::fs::read(&air.path).unwrap();
    let before = refusals(&sb).len();

    // 1. The node's key file (a key, not CSV — but it is never even opened).
    let key = nd.join("node.key");
    assert_refused(
        register(&sb, "air-quality", &with_path(&air, &key)).await,
        &key,
        "key file",
    );
    // 2. `..` out of the data directory to the key.
    let dotdot = sb
        .root
        .join(SAMPLE_DATA_DIR)
        .join("..")
        .join(key.strip_prefix(&sb.root).unwrap());
    assert_refused(
        register(&sb, "air-quality", &with_path(&air, &dotdot)).await,
        &dotdot,
        "`..`",
    );
    // 3. A link inside the root to a valid CSV outside it.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("air.csv"), &csv).unwrap();
    let link = sb.root.join(SAMPLE_DATA_DIR).join("link.csv");
    symlink(outside.path().join("air.csv"), &link).unwrap();
    assert_refused(
        register(&sb, "air-quality", &with_path(&air, &link)).await,
        &link,
        "symbolic link",
    );
    // 4. A valid CSV inside the root that lies in the node's own key/config
    //    directory, and one in its store directory.
    let in_key_dir = nd.join("air.csv");
    std::fs::write(&in_key_dir, &csv).unwrap();
    assert_refused(
        register(&sb, "air-quality", &with_path(&air, &in_key_dir)).await,
        &in_key_dir,
        "directory",
    );
    let in_store = nd.join("data").join("store").join("air.csv");
    std::fs::write(&in_store, &csv).unwrap();
    assert_refused(
        register(&sb, "air-quality", &with_path(&air, &in_store)).await,
        &in_store,
        "store directory",
    );
    // A link in the data directory to the key is refused as the key.
    let key_link = sb.root.join(SAMPLE_DATA_DIR).join("key.csv");
    symlink(&key, &key_link).unwrap();
    assert_refused(
        register(&sb, "air-quality", &with_path(&air, &key_link)).await,
        &key_link,
        "key",
    );

    // Every refusal is in the audit log: a deny by the steward (pseudonymous),
    // the dataset and the reason code, and no path.
    let found = refusals(&sb);
    assert_eq!(found.len() - before, 6, "{found:?}");
    let mut codes: Vec<String> = Vec::new();
    for (e, bytes) in &found[before..] {
        assert_eq!(e.decision, Some(Decision::Deny));
        assert_eq!(e.resource, "air-quality");
        assert_eq!(e.principal.org, "swm");
        let user = e.principal.user.as_deref().unwrap();
        assert!(!user.contains("steward"), "pseudonymous: {user}");
        codes.extend(e.policy_ids.iter().cloned());
        for secret in [
            sb.root.display().to_string(),
            "node.key".into(),
            "-----BEGIN".into(),
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the audit entry names `{secret}`"
            );
        }
    }
    codes.sort();
    assert_eq!(
        codes,
        [
            "source-confinement:link-escapes-roots",
            "source-confinement:node-own-files",
            "source-confinement:node-own-files",
            "source-confinement:node-own-files",
            "source-confinement:node-own-files",
            "source-confinement:parent-component",
        ]
    );
    // Nothing was registered; the same CSV inside the root is accepted.
    assert!(
        sb.node("swm-1")
            .unwrap()
            .registry
            .registration("air-quality")
            .unwrap()
            .is_none()
    );
    register(&sb, "air-quality", &air).await.unwrap();
    assert_eq!(refusals(&sb).len(), found.len());
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outside_the_allowed_roots_is_refused() {
    let sb = swm_and_tum().await;
    let files = allmende_connectors::sample::write_demo_data(
        &sb.root.join("elsewhere"),
        &allmende_connectors::sample::SampleSpec::default(),
    )
    .unwrap();
    let air = files.dataset("air-quality").unwrap().config.clone();
    assert_refused(
        register(&sb, "air-quality", &air).await,
        &air.path,
        "not below a directory the node's operator allowed",
    );
    let r = refusals(&sb);
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0].0.policy_ids,
        ["source-confinement:outside-roots".to_owned()]
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_swapped_in_after_registration_is_refused_on_read_and_on_restart() {
    let mut sb = swm_and_tum().await;
    sb.register_demo_datasets().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sb.node("swm-1").unwrap().policy.with_entities(|e| {
        e.upsert_grant(allmende_policies::Grant {
            id: "g-1".into(),
            grantee: "tum".into(),
            dataset: "smart-meter-readings".into(),
            purpose: allmende_policies::Purpose::AcademicResearch,
            not_before: now - 60,
            not_after: Some(now + 86_400),
            state: allmende_policies::GrantState::Active,
            aggregate_only: false,
        })
    });
    let fetch = |sb: &Sandbox| {
        let p = sb.profile("tum", "alice").unwrap();
        let endpoint = sb.node("swm-1").unwrap().grpc_endpoint();
        async move {
            let ch = connect_with(&endpoint, &material(&p)).await.unwrap();
            let mut s = pb::access_client::AccessClient::new(ch)
                .fetch(pb::FetchRequest {
                    dataset: "smart-meter-readings".into(),
                    purpose: "AcademicResearch".into(),
                    grant_id: "g-1".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut bytes = 0;
            while let Some(m) = s.message().await? {
                bytes += m.arrow_ipc.len();
            }
            Ok::<usize, tonic::Status>(bytes)
        }
    };
    assert!(fetch(&sb).await.unwrap() > 0);
    assert!(refusals(&sb).is_empty());

    // One day's file becomes a link to an identical copy outside the root.
    let dir = sb.root.join(SAMPLE_DATA_DIR).join("smart-meter-readings");
    let day = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .unwrap();
    let outside = tempfile::tempdir().unwrap();
    let copy = outside.path().join("day.parquet");
    std::fs::copy(&day, &copy).unwrap();
    std::fs::remove_file(&day).unwrap();
    symlink(&copy, &day).unwrap();

    let err = fetch(&sb).await.unwrap_err();
    assert!(
        err.message().contains("symbolic link"),
        "the read is refused: {err:?}"
    );
    assert!(
        !err.message().contains(&sb.root.display().to_string()),
        "a reader of another organisation learns no path: {err:?}"
    );
    let r = refusals(&sb);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0.resource, "smart-meter-readings");
    assert_eq!(r[0].0.decision, Some(Decision::Deny));
    assert_eq!(
        r[0].0.peer_node.as_deref(),
        Some("swm-1"),
        "the node refused"
    );
    assert_eq!(
        r[0].0.policy_ids,
        ["source-confinement:link-escapes-roots".to_owned()]
    );

    // Reopened at start: refused again, audited, not served, listed as a problem.
    sb.stop_node("swm-1").await.unwrap();
    sb.start_node("swm-1").await.unwrap();
    assert_eq!(refusals(&sb).len(), 2);
    let swm = sb.node("swm-1").unwrap();
    assert!(swm.registry.served("smart-meter-readings").is_err());
    let (_, problem) = swm
        .registry
        .list()
        .unwrap()
        .into_iter()
        .find(|(r, _)| r.dataset.id == "smart-meter-readings")
        .unwrap();
    assert!(
        problem.as_deref().is_some_and(|p| p.contains("refused")),
        "{problem:?}"
    );
    sb.shutdown().await.unwrap();
}
