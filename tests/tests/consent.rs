//! The consent store across a real node: a CSV with broken rows is refused
//! with every bad line named and nothing stored; a good one is imported; a
//! household withdraws its own consent and the very next query leaves it out;
//! who may import, withdraw and read is enforced from the certificate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::catalog::Purpose;
use allmende::cli::consent_cmd::{self, ConsentCmd};
use allmende::sandbox::Sandbox;
use allmende_e2e::unix_now as now;
use allmende_e2e::{connect_with, material, munich, register_sample_dataset};
use allmende_proto::v1 as pb;
use pb::consent_client::ConsentClient;
use std::collections::HashSet;

const DS: &str = "smart-meter-readings";
const HEADER: &str =
    "subject_id,controller,dataset,purposes,status,given_at,withdrawn_at,expires_at\n";

async fn client(
    sb: &Sandbox,
    org: &str,
    user: &str,
    node: &str,
) -> ConsentClient<tonic::transport::Channel> {
    let p = sb.profile(org, user).unwrap();
    let endpoint = sb.node(node).unwrap().grpc_endpoint();
    ConsentClient::new(connect_with(&endpoint, &material(&p)).await.unwrap())
}

fn good_csv() -> String {
    format!(
        "{HEADER}\
HH-000001,swm,{DS},AcademicResearch,given,2025-03-01T10:00:00+00:00,,\n\
HH-000002,swm,{DS},AcademicResearch,refused,2025-03-01T10:00:00+00:00,,\n\
HH-000003,swm,{DS},AcademicResearch,withdrawn,2025-01-01T10:00:00+00:00,2025-02-01T10:00:00+00:00,\n\
HH-000005,swm,{DS},AcademicResearch;ServiceProvision,given,2025-03-01T10:00:00+00:00,,2099-01-01T00:00:00+00:00\n\
HH-000006,swm,{DS},AcademicResearch,given,2024-01-01T10:00:00+00:00,,2024-06-01T00:00:00+00:00\n"
    )
}

fn broken_csv() -> String {
    format!(
        "{HEADER}\
HH-000001,swm,{DS},AcademicResearch,given,2025-03-01T10:00:00+00:00,,\n\
HH-000002,swm,{DS},GridOperations,given,2025-03-01T10:00:00+00:00,,\n\
HH-000003,swm,{DS},AcademicResearch,given,03/01/2025,,\n\
HH-000004,tum,{DS},AcademicResearch,given,2025-03-01T10:00:00+00:00,,\n\
HH-000005,swm,{DS},AcademicResearch,given,2025-03-01T10:00:00+00:00,,\n"
    )
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_withdraw_and_who_may_do_what() {
    let sb = munich().await;
    register_sample_dataset(&sb, DS).await;
    let swm = sb.node("swm-1").unwrap();
    let mut steward = client(&sb, "swm", "steward", "swm-1").await;

    // Broken rows: refused, every bad line named, nothing stored.
    let err = steward
        .import(pb::ImportConsentRequest {
            dataset: DS.into(),
            csv: broken_csv().into_bytes(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let m = err.message();
    assert!(m.contains("nothing was stored: 3 bad row(s)"), "{m}");
    assert!(
        m.contains("line 3: unknown purpose `GridOperations`"),
        "{m}"
    );
    assert!(
        m.contains("line 4: given_at: `03/01/2025` is not an RFC 3339 time"),
        "{m}"
    );
    assert!(
        m.contains("line 5: controller `tum` is not this node's organisation `swm`"),
        "{m}"
    );
    assert!(!m.contains("line 2:") && !m.contains("line 6:"), "{m}");
    assert_eq!(swm.consent.count(DS), 0, "nothing half-imported");

    // A good file.
    let r = steward
        .import(pb::ImportConsentRequest {
            dataset: DS.into(),
            csv: good_csv().into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.rows, r.stored), (5, 5));
    assert_eq!(
        swm.consent
            .permitted_subjects(DS, Purpose::AcademicResearch, now()),
        set(&["HH-000001", "HH-000005"])
    );

    // The household reads and withdraws its own consent.
    let mut household = client(&sb, "swm", "HH-000001", "swm-1").await;
    let mine = household
        .get(pb::GetConsentRequest {
            subject_id: "HH-000001".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].status, "given");
    for denied in [
        household
            .get(pb::GetConsentRequest {
                subject_id: "HH-000005".into(),
            })
            .await
            .map(|_| ()),
        household
            .withdraw(pb::WithdrawConsentRequest {
                subject_id: "HH-000005".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        household
            .import(pb::ImportConsentRequest {
                dataset: DS.into(),
                csv: good_csv().into_bytes(),
            })
            .await
            .map(|_| ()),
    ] {
        assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
    }
    let w = household
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: "HH-000001".into(),
            dataset: DS.into(),
            purpose: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.records_changed, 1);
    // Effective on the very next query.
    assert!(
        !swm.consent
            .is_permitted(DS, "HH-000001", Purpose::AcademicResearch, now())
    );
    assert_eq!(
        swm.consent
            .permitted_subjects(DS, Purpose::AcademicResearch, now()),
        set(&["HH-000005"])
    );

    // A steward withdraws one purpose of another household.
    let w = steward
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: "HH-000005".into(),
            dataset: String::new(),
            purpose: "ServiceProvision".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.records_changed, 1);
    assert!(
        swm.consent
            .is_permitted(DS, "HH-000005", Purpose::AcademicResearch, now())
    );
    assert!(
        !swm.consent
            .is_permitted(DS, "HH-000005", Purpose::ServiceProvision, now())
    );
    let err = steward
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: "HH-000005".into(),
            dataset: String::new(),
            purpose: "serviceprovision".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Re-importing the old file does not bring the withdrawn consent back.
    let r = steward
        .import(pb::ImportConsentRequest {
            dataset: DS.into(),
            csv: good_csv().into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.superseded, r.unchanged), (2, 3));
    assert_eq!(
        swm.consent
            .permitted_subjects(DS, Purpose::AcademicResearch, now()),
        set(&["HH-000005"])
    );

    // Others may not import: another organisation's researcher, and swm's
    // steward at a node of another controller.
    let mut alice = client(&sb, "tum", "alice", "swm-1").await;
    let err = alice
        .import(pb::ImportConsentRequest {
            dataset: DS.into(),
            csv: good_csv().into_bytes(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut at_stadt = client(&sb, "swm", "steward", "stadt-1").await;
    let err = at_stadt
        .import(pb::ImportConsentRequest {
            dataset: DS.into(),
            csv: good_csv().into_bytes(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(sb.node("stadt-1").unwrap().consent.count(DS), 0);

    // The DPO reads any subject.
    let mut dpo = client(&sb, "swm", "dpo", "swm-1").await;
    let recs = dpo
        .get(pb::GetConsentRequest {
            subject_id: "HH-000001".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(recs[0].status, "withdrawn");
    assert!(recs[0].withdrawn_at_unix.is_some());
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_imports_withdraws_and_shows() {
    let sb = munich().await;
    register_sample_dataset(&sb, DS).await;
    let dir = tempfile::tempdir().unwrap();
    let steward = Some(sb.root.join("swm/users/steward.profile.toml"));
    let household = Some(sb.root.join("swm/users/HH-000001.profile.toml"));

    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, broken_csv()).unwrap();
    let f = consent_cmd::output(
        ConsentCmd::Import {
            file: bad,
            dataset: DS.into(),
            profile: steward.clone(),
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(f.code, 3, "{}", f.message);
    assert!(
        f.message.contains("line 3: unknown purpose"),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("line 5: controller `tum`"),
        "{}",
        f.message
    );

    let good = dir.path().join("good.csv");
    std::fs::write(&good, good_csv()).unwrap();
    let out = consent_cmd::output(
        ConsentCmd::Import {
            file: good,
            dataset: DS.into(),
            profile: steward.clone(),
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        format!("imported 5 row(s) for `{DS}`: 5 stored, 0 unchanged, 0 kept a newer decision\n")
    );
    let out = consent_cmd::output(
        ConsentCmd::Withdraw {
            subject: "HH-000001".into(),
            dataset: String::new(),
            purpose: String::new(),
            receipt_dir: None,
            profile: household.clone(),
        },
        false,
    )
    .await
    .unwrap();
    assert!(
        out.starts_with("withdrew 1 consent record(s) of `HH-000001` at "),
        "{out}"
    );
    let shown = consent_cmd::output(
        ConsentCmd::Show {
            subject: "HH-000001".into(),
            profile: household.clone(),
        },
        true,
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["records"][0]["status"], "withdrawn");
    let denied = consent_cmd::output(
        ConsentCmd::Show {
            subject: "HH-000005".into(),
            profile: household,
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code, 5, "{}", denied.message);
    let missing = consent_cmd::output(
        ConsentCmd::Import {
            file: dir.path().join("nope.csv"),
            dataset: DS.into(),
            profile: steward,
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code, 3);
    sb.shutdown().await.unwrap();
}
