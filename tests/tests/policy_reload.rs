//! `Policy.Reload` proves a policy directory before swapping it in: a set
//! that breaks a property (here: today's-`main` owner rule, which lets an
//! SWM-issued citizen certificate read other households' rows) is refused
//! with FAILED_PRECONDITION naming the property, and the old set keeps
//! serving. Needs cvc5 (scripts/test.sh installs it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende_e2e::{connect_with, material, munich};
use allmende_proto::v1 as pb;
use pb::policy_client::PolicyClient;
use std::path::Path;

fn copy_policies(dest: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    std::fs::create_dir_all(dest.join("policies")).unwrap();
    std::fs::copy(
        src.join("schema.cedarschema"),
        dest.join("schema.cedarschema"),
    )
    .unwrap();
    for e in std::fs::read_dir(src.join("policies")).unwrap().flatten() {
        std::fs::copy(e.path(), dest.join("policies").join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_refuses_a_set_that_breaks_a_property() {
    let mut sb = munich().await;
    // stadt-1 serves its policies from a directory its operator edits.
    let pdir = tempfile::tempdir().unwrap();
    copy_policies(pdir.path());
    sb.stop_node("stadt-1").await.unwrap();
    let cfg = sb.node_config_path("stadt-1").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[policy]\ndir = \"{}\"\n",
        pdir.path().display()
    ));
    std::fs::write(&cfg, text).unwrap();
    sb.start_node("stadt-1").await.unwrap();

    let p = sb.profile("stadt", "operator").unwrap();
    let endpoint = sb.node("stadt-1").unwrap().grpc_endpoint();
    let mut c = PolicyClient::new(connect_with(&endpoint, &material(&p)).await.unwrap());
    let before = c
        .get_policy_set(pb::GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy_set_hash;

    std::fs::write(
        pdir.path().join("policies/research-access.cedar"),
        include_str!("../../policies/tests/fixtures/research-access-before-roles.cedar"),
    )
    .unwrap();
    let err = c.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let msg = err.message();
    assert!(msg.contains("never-citizen-reads-personal-rows"), "{msg}");
    assert!(msg.contains("owner-uses-own-data (permit)"), "{msg}");
    assert!(msg.contains("the old one keeps serving"), "{msg}");
    let after = c
        .get_policy_set(pb::GetPolicySetRequest {})
        .await
        .unwrap()
        .into_inner()
        .policy_set_hash;
    assert_eq!(after, before);
    sb.shutdown().await.unwrap();
}
