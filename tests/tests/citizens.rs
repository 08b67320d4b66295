//! Citizens at their controller's node: a household gives consent with its
//! subject credential and gets a receipt signed by SWM's node, which
//! verifies offline against the federation root; an edited receipt, a key
//! an attacker made, a receipt of another organisation's node and one
//! signed with a citizen's own certificate do not verify as SWM's; one
//! household cannot read, give or withdraw another's consent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::cli::consent_cmd::{self, ConsentCmd};
use allmende::clock::SystemClock;
use allmende::consent::receipt::{self, ReceiptPayload};
use allmende::consent::{Receipt, ReceiptError, ReceiptSigner};
use allmende::pki::Role;
use allmende::pki::identity::{LeafIdentity, Subject};
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_e2e::{connect_with, material};
use allmende_proto::v1 as pb;
use pb::consent_client::ConsentClient;
use std::sync::Arc;
use tonic::transport::Channel;

const DS: &str = "smart-meter-readings";

async fn federation() -> Sandbox {
    let mut spec = SandboxSpec::munich();
    for o in &mut spec.orgs {
        if o.name == "swm" {
            o.users.push(("HH-000002".into(), Role::Citizen));
        }
    }
    let sb = Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap();
    sb.register_demo_datasets().await.unwrap();
    sb
}

async fn channel(sb: &Sandbox, org: &str, user: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

fn root_pem(sb: &Sandbox) -> String {
    material(&sb.profile("swm", "HH-000001").unwrap()).root_pem
}

fn give(subject: &str) -> pb::GiveConsentRequest {
    pb::GiveConsentRequest {
        subject_id: subject.into(),
        dataset: DS.into(),
        purposes: vec!["AcademicResearch".into()],
        expires_at_unix: 0,
    }
}

fn payload(r: &Receipt) -> ReceiptPayload {
    serde_json::from_str(&r.payload).unwrap()
}

/// `r` with its payload replaced and signed by `signer`'s Ed25519 key.
fn resigned(
    r: &Receipt,
    payload: &ReceiptPayload,
    signer: &allmende::catalog::NodeSigner,
) -> Receipt {
    let text = serde_json::to_string(payload).unwrap();
    let mut msg = receipt::RECEIPT_DOMAIN.to_vec();
    msg.extend_from_slice(text.as_bytes());
    Receipt {
        payload: text,
        signature: hex::encode(signer.sign_detached(&msg).unwrap()),
        ..r.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_verify_offline_and_forgeries_do_not() {
    let sb = federation().await;
    let swm = sb.node("swm-1").unwrap();
    let root = root_pem(&sb);
    let mut household = ConsentClient::new(channel(&sb, "swm", "HH-000002").await);

    // Given with the subject credential: a record with an unguessable id
    // and a receipt signed by SWM's node.
    let r = household
        .give(give("HH-000002"))
        .await
        .unwrap()
        .into_inner();
    let rec = r.record.unwrap();
    assert_eq!(rec.record_id.len(), 32, "128 bits, hex");
    assert!(rec.record_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(rec.collection_method, "citizen-self-service");
    assert_eq!(rec.status, "given");
    let rc = r.receipt.unwrap();
    assert_eq!(rc.record_id, rec.record_id);
    let v = receipt::verify(rc.json.as_bytes(), &root).unwrap();
    assert_eq!(v.node.uri(), "allmende://munich/swm/node/swm-1");
    assert_eq!(v.payload.controller, "swm");
    assert_eq!(v.payload.subject, "HH-000002");
    assert_eq!(v.payload.record_id, rec.record_id);
    assert_eq!(v.payload.event, "consent-given");
    assert_eq!(v.payload.legal_basis, "https://w3id.org/dpv#Consent");
    assert_eq!(
        v.payload.purposes[0].dpv,
        "https://w3id.org/dpv#AcademicResearch"
    );
    assert!(swm.consent.is_permitted(
        DS,
        "HH-000002",
        allmende::catalog::Purpose::AcademicResearch,
        allmende_e2e::unix_now()
    ));

    // The CLI verifies the file offline, and refuses an edited one with
    // exit code 1.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receipt.json");
    let root_file = dir.path().join("root.pem");
    std::fs::write(&file, &rc.json).unwrap();
    std::fs::write(&root_file, &root).unwrap();
    let out = consent_cmd::output(
        ConsentCmd::ReceiptVerify {
            receipt: file.clone(),
            federation_root: root_file.clone(),
        },
        false,
    )
    .await
    .unwrap();
    assert!(
        out.contains("is valid: signed by `allmende://munich/swm/node/swm-1`"),
        "{out}"
    );

    let original: Receipt = serde_json::from_str(&rc.json).unwrap();

    // One edited byte of the payload.
    let mut edited = original.clone();
    edited.payload = edited.payload.replacen("HH-000002", "HH-000003", 1);
    assert!(matches!(
        receipt::verify(serde_json::to_string(&edited).unwrap().as_bytes(), &root),
        Err(ReceiptError::Signature)
    ));
    std::fs::write(&file, serde_json::to_string(&edited).unwrap()).unwrap();
    let err = consent_cmd::output(
        ConsentCmd::ReceiptVerify {
            receipt: file.clone(),
            federation_root: root_file.clone(),
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, 1, "{}", err.message);
    assert!(err.message.contains("does not verify"), "{}", err.message);
    // Every single byte of the signature matters.
    let mut sig = original.clone();
    let flipped = if sig.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    sig.signature.replace_range(0..1, flipped);
    assert!(receipt::verify(serde_json::to_string(&sig).unwrap().as_bytes(), &root).is_err());

    // An attacker's own key signing a receipt "of SWM": the key is not
    // bound to SWM's node certificate.
    let (attacker, _) = allmende::catalog::NodeSigner::generate().unwrap();
    let mut forged = resigned(&original, &payload(&original), &attacker);
    forged.signer_public_key = hex::encode(attacker.public_key());
    assert!(matches!(
        receipt::verify(serde_json::to_string(&forged).unwrap().as_bytes(), &root),
        Err(ReceiptError::Binding)
    ));

    // TUM's node signs a receipt of its own, then claims SWM as the
    // controller: its certificate is TUM's.
    let tum = sb.node("tum-1").unwrap();
    let tum_receipt = tum
        .receipts
        .issue(
            &swm.consent.record(DS, "HH-000002").unwrap(),
            "consent-given",
            allmende_e2e::unix_now(),
        )
        .unwrap();
    let own = receipt::verify(tum_receipt.to_json().as_bytes(), &root).unwrap();
    assert_eq!(own.payload.controller, "tum", "a genuine TUM receipt");
    let mut claimed = payload(&tum_receipt);
    claimed.controller = "swm".into();
    claimed.controller_node = "allmende://munich/swm/node/swm-1".into();
    let mut as_swm = resigned(&tum_receipt, &claimed, tum.catalog.signer());
    as_swm.node = claimed.controller_node.clone();
    let err =
        receipt::verify(serde_json::to_string(&as_swm).unwrap().as_bytes(), &root).unwrap_err();
    assert!(matches!(err, ReceiptError::NotController { .. }), "{err}");

    // A household's own citizen certificate (issued by SWM's CA) binding a
    // key to its identity and signing a receipt: the certificate is not a
    // node's.
    let hh = material(&sb.profile("swm", "HH-000002").unwrap());
    let fake_node = LeafIdentity {
        federation: "munich".into(),
        organisation: "swm".into(),
        subject: Subject::Node("swm-1".into()),
    };
    let citizen = LeafIdentity {
        subject: Subject::User("HH-000002".into()),
        ..fake_node.clone()
    };
    let citizen_signer =
        ReceiptSigner::new(tum.catalog.clone(), &citizen, &hh.key_pem, &hh.chain_pem).unwrap();
    let by_citizen = citizen_signer
        .issue(
            &swm.consent.record(DS, "HH-000002").unwrap(),
            "consent-given",
            allmende_e2e::unix_now(),
        )
        .unwrap();
    let err = receipt::verify(by_citizen.to_json().as_bytes(), &root).unwrap_err();
    assert!(matches!(err, ReceiptError::NotController { .. }), "{err}");

    // TUM's organisation CA issuing a node certificate that claims SWM's
    // node identity: the issuing CA is not SWM's.
    let mut tum_ca = allmende::pki::ca::OrgCa::load(&sb.org_dir("tum")).unwrap();
    tum_ca.org = "swm".into();
    let lie = tum_ca
        .issue_node(
            "swm-1",
            &[],
            &[],
            30,
            &dir.path().join("lie"),
            allmende_e2e::unix_now(),
        )
        .unwrap();
    let lie_signer = ReceiptSigner::new(
        tum.catalog.clone(),
        &fake_node,
        &std::fs::read_to_string(&lie.key).unwrap(),
        &std::fs::read_to_string(&lie.chain).unwrap(),
    )
    .unwrap();
    let by_lie = lie_signer
        .issue(
            &swm.consent.record(DS, "HH-000002").unwrap(),
            "consent-given",
            allmende_e2e::unix_now(),
        )
        .unwrap();
    let err = receipt::verify(by_lie.to_json().as_bytes(), &root).unwrap_err();
    assert!(
        matches!(&err, ReceiptError::NotController { reason, .. } if reason.contains("another organisation's")),
        "{err}"
    );

    // Against another federation's root nothing verifies.
    let other = Sandbox::start(SandboxSpec::munich(), None, Arc::new(SystemClock))
        .await
        .unwrap();
    let other_root = root_pem(&other);
    let err = receipt::verify(rc.json.as_bytes(), &other_root).unwrap_err();
    assert!(matches!(err, ReceiptError::Chain(_)), "{err}");
    other.shutdown().await.unwrap();

    // Withdrawal: one receipt per changed record, with the same record id.
    let w = household
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: "HH-000002".into(),
            dataset: DS.into(),
            purpose: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.records_changed, 1);
    assert_eq!(w.receipts.len(), 1);
    assert_eq!(w.receipts[0].record_id, rec.record_id);
    let v = receipt::verify(w.receipts[0].json.as_bytes(), &root).unwrap();
    assert_eq!(
        (v.payload.status.as_str(), v.payload.event.as_str()),
        ("withdrawn", "consent-withdrawn")
    );
    assert_eq!(
        v.payload.status_dpv,
        "https://w3id.org/dpv#ConsentWithdrawn"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_household_cannot_act_for_another() {
    let sb = federation().await;
    let swm = sb.node("swm-1").unwrap();
    let before = swm.consent.records_of("HH-000001").unwrap();
    assert!(!before.is_empty());
    let own_before = swm.consent.records_of("HH-000002").unwrap();
    let mut other = ConsentClient::new(channel(&sb, "swm", "HH-000002").await);
    let denied = [
        other
            .get(pb::GetConsentRequest {
                subject_id: "HH-000001".into(),
            })
            .await
            .map(|_| ()),
        other
            .withdraw(pb::WithdrawConsentRequest {
                subject_id: "HH-000001".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other.give(give("HH-000001")).await.map(|_| ()),
    ];
    for d in denied {
        assert_eq!(d.unwrap_err().code(), tonic::Code::PermissionDenied);
    }
    assert_eq!(swm.consent.records_of("HH-000001").unwrap(), before);

    // Giving consent for a dataset that is not SWM's consent-based one is
    // refused before anything is stored.
    let err = other
        .give(pb::GiveConsentRequest {
            dataset: "no-such-dataset".into(),
            ..give("HH-000002")
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    let err = other
        .give(pb::GiveConsentRequest {
            purposes: vec![],
            ..give("HH-000002")
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    assert_eq!(swm.consent.records_of("HH-000002").unwrap(), own_before);
    sb.shutdown().await.unwrap();
}
