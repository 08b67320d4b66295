//! Hardening properties across real nodes:
//! - every gRPC method the node serves is either decided by the policies
//!   (and audited) or listed as exempt, and every decided method refuses a
//!   caller who may not use it with `PERMISSION_DENIED` and an audit entry;
//! - a person acts as data subject S of controller C only with a citizen
//!   certificate of C for exactly S, only at C's node;
//! - the connector list's operational detail is for the owner's operators
//!   and stewards;
//! - revoking an organisation's CA refuses the next request of an open
//!   connection and ends its open streams.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::pki::{Role, ca};
use allmende::rpc::{CALLS, CallRule};
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, Entry};
use allmende_e2e::{audit_since, audit_size, connect_with, material};
use allmende_proto::v1 as pb;
use prost::Message as _;
use std::collections::BTreeSet;
use std::sync::Arc;
use tonic::transport::Channel;

const SMART_METER: &str = "smart-meter-readings";

/// Munich, plus a TUM user whose user id equals an SWM household's subject
/// id, and an SWM staff member whose user id equals another subject id.
async fn munich_with_lookalikes() -> Sandbox {
    let mut spec = SandboxSpec::munich();
    for o in &mut spec.orgs {
        match o.name.as_str() {
            "tum" => o.users.push(("HH-000001".into(), Role::Citizen)),
            "swm" => o.users.push(("HH-000005".into(), Role::Researcher)),
            // More insurer identities, so that the probes below stay under
            // one caller's budget of denials written one by one.
            "versicherung-ag" => {
                for u in ["analyst-2", "analyst-3"] {
                    o.users.push((u.into(), Role::Researcher));
                }
            }
            _ => {}
        }
    }
    let sb = Sandbox::start(spec, None, Arc::new(allmende::clock::SystemClock))
        .await
        .unwrap();
    sb.register_demo_datasets().await.unwrap();
    sb
}

async fn channel(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    let endpoint = sb.node(node).unwrap().grpc_endpoint();
    connect_with(&endpoint, &material(&p)).await.unwrap()
}

fn denied_entry(entries: &[Entry], org: &str, action: &str) -> bool {
    entries
        .iter()
        .any(|e| e.principal.org == org && e.action == action && e.decision == Some(Decision::Deny))
}

/// Every method of the services a node mounts, from their descriptor sets,
/// and Arrow Flight's (arrow-flight ships no descriptor set: its list is
/// `FLIGHT_METHODS`, each of which `tests/tests/flight.rs` calls).
fn served_methods() -> BTreeSet<String> {
    let mut out: BTreeSet<String> = allmende::rpc::limits::FLIGHT_METHODS
        .iter()
        .map(|m| (*m).to_owned())
        .collect();
    for fds in [
        allmende_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(fds).unwrap();
        for f in &set.file {
            for s in &f.service {
                for m in &s.method {
                    out.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                }
            }
        }
    }
    out
}

/// A ticket sealed by SWM's node for the smart-meter readings with purpose
/// `InsuranceUnderwriting` (a ticket is no capability: `DoGet` decides).
static DO_GET_TICKET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// A Flight descriptor asking for SWM's smart-meter data for underwriting.
fn underwriting() -> arrow_flight::FlightDescriptor {
    arrow_flight::FlightDescriptor::new_cmd(
        serde_json::json!({"dataset": SMART_METER, "purpose": "InsuranceUnderwriting"}).to_string(),
    )
}

/// Calls `method` with a well-formed request naming SWM's data; returns the
/// call's status (for a stream: the first message's).
async fn probe(method: &str, ch: Channel) -> Result<(), tonic::Status> {
    use pb::audit_client::AuditClient;
    use pb::connectors_client::ConnectorsClient;
    use pb::consent_client::ConsentClient;
    use pb::grants_client::GrantsClient;
    let desc = allmende::demo::munich::datasets()
        .into_iter()
        .find(|(_, d)| d.id == SMART_METER)
        .unwrap()
        .1;
    match method {
        "/allmende.v1.Access/Fetch" => {
            let mut s = pb::access_client::AccessClient::new(ch)
                .fetch(pb::FetchRequest {
                    dataset: SMART_METER.into(),
                    purpose: "InsuranceUnderwriting".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            s.message().await.map(|_| ())
        }
        "/allmende.v1.Audit/Query" => AuditClient::new(ch)
            .query(pb::AuditQueryRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Audit/MyAccesses" => AuditClient::new(ch)
            .my_accesses(pb::MyAccessesRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Audit/Export" => AuditClient::new(ch)
            .export(pb::AuditExportRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Audit/Status" => AuditClient::new(ch)
            .status(pb::AuditStatusRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Audit/VerifyLog" => AuditClient::new(ch)
            .verify_log(pb::VerifyLogRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Audit/GetCheckpoint" => AuditClient::new(ch)
            .get_checkpoint(pb::GetCheckpointRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Audit/AddCosignature" => AuditClient::new(ch)
            .add_cosignature(pb::AddCosignatureRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Audit/GetWitnessed" => AuditClient::new(ch)
            .get_witnessed(pb::GetWitnessedRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Catalog/Notify" => pb::catalog_client::CatalogClient::new(ch)
            .notify(pb::NotifyCatalogRequest { catalog_version: 7 })
            .await
            .map(|_| ()),
        "/allmende.v1.Connectors/Register" => ConnectorsClient::new(ch)
            .register(pb::RegisterConnectorRequest {
                dataset_json: serde_json::to_string(&desc).unwrap(),
                kind: "files".into(),
                config_json: r#"{"path":"/etc/hostname","format":"csv"}"#.into(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Connectors/SetEnabled" => ConnectorsClient::new(ch)
            .set_enabled(pb::SetConnectorEnabledRequest {
                dataset: SMART_METER.into(),
                enabled: false,
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Connectors/Remove" => ConnectorsClient::new(ch)
            .remove(pb::RemoveConnectorRequest {
                dataset: SMART_METER.into(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Connectors/List" => ConnectorsClient::new(ch)
            .list(pb::ListConnectorsRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Consent/Import" => ConsentClient::new(ch)
            .import(pb::ImportConsentRequest {
                dataset: SMART_METER.into(),
                csv: b"subject_id,controller,dataset,purposes,status,given_at,withdrawn_at,expires_at\n".to_vec(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Consent/Withdraw" => ConsentClient::new(ch)
            .withdraw(pb::WithdrawConsentRequest {
                subject_id: "HH-000002".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Consent/Get" => ConsentClient::new(ch)
            .get(pb::GetConsentRequest {
                subject_id: "HH-000002".into(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Consent/Give" => ConsentClient::new(ch)
            .give(pb::GiveConsentRequest {
                subject_id: "HH-000002".into(),
                dataset: SMART_METER.into(),
                purposes: vec!["AcademicResearch".into()],
                expires_at_unix: 0,
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Consent/WhoAccessed" => ConsentClient::new(ch)
            .who_accessed(pb::WhoAccessedRequest {
                subject_id: "HH-000002".into(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Consent/Erase" => ConsentClient::new(ch)
            .erase(pb::EraseSubjectRequest {
                subject_id: "HH-000002".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Federation/Hello" => pb::federation_client::FederationClient::new(ch)
            .hello(pb::HelloRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Federation/RemoveMember" => {
            pb::federation_client::FederationClient::new(ch)
                .remove_member(pb::RemoveMemberRequest {
                    organisation: "versicherung-ag".into(),
                    reason: String::new(),
                })
                .await
                .map(|_| ())
        }
        "/allmende.v1.Federation/Invite" => pb::federation_client::FederationClient::new(ch)
            .invite(pb::InviteRequest {
                organisation: "fz".into(),
                kind: "company".into(),
                display_name: "Forschungszentrum".into(),
                valid_secs: 0,
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Federation/Join" => pb::federation_client::FederationClient::new(ch)
            .join(pb::JoinRequest {
                secret: "guess".into(),
                csr_pem: String::new(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Federation/RegisterNode" => {
            pb::federation_client::FederationClient::new(ch)
                .register_node(pb::RegisterNodeRequest {
                    endpoint: "https://127.0.0.1:1".into(),
                })
                .await
                .map(|_| ())
        }
        "/allmende.v1.Grants/RequestAccess" => GrantsClient::new(ch)
            .request_access(pb::RequestAccessRequest {
                dataset: SMART_METER.into(),
                purpose: "InsuranceUnderwriting".into(),
                days: 30,
                idempotency_key: "probe".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/ListRequests" => GrantsClient::new(ch)
            .list_requests(pb::ListRequestsRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/GetRequest" => GrantsClient::new(ch)
            .get_request(pb::GetRequestRequest {
                request_id: "00".repeat(16),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/Approve" => GrantsClient::new(ch)
            .approve(pb::ApproveRequest {
                request_id: "00".repeat(16),
                request_hash: "00".repeat(32),
                note: String::new(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/Reject" => GrantsClient::new(ch)
            .reject(pb::RejectRequest {
                request_id: "00".repeat(16),
                request_hash: "00".repeat(32),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/Revoke" => GrantsClient::new(ch)
            .revoke(pb::RevokeRequest {
                grant_id: "00".repeat(16),
                reason: String::new(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/ListGrants" => GrantsClient::new(ch)
            .list_grants(pb::ListGrantsRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/ListNotices" => GrantsClient::new(ch)
            .list_notices(pb::ListNoticesRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/DeliverNotice" => GrantsClient::new(ch)
            .deliver_notice(pb::DeliverNoticeRequest {
                body: b"{}".to_vec(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/ListDuties" => GrantsClient::new(ch)
            .list_duties(pb::ListDutiesRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Grants/AttestDeletion" => GrantsClient::new(ch)
            .attest_deletion(pb::AttestDeletionRequest {
                duty_id: "00".repeat(16),
                note: String::new(),
            })
            .await
            .map(|_| ()),
        "/arrow.flight.protocol.FlightService/GetFlightInfo" => {
            arrow_flight::flight_service_client::FlightServiceClient::new(ch)
                .get_flight_info(underwriting())
                .await
                .map(|_| ())
        }
        "/arrow.flight.protocol.FlightService/GetSchema" => {
            arrow_flight::flight_service_client::FlightServiceClient::new(ch)
                .get_schema(underwriting())
                .await
                .map(|_| ())
        }
        "/arrow.flight.protocol.FlightService/DoGet" => {
            let ticket = DO_GET_TICKET.get().expect("a ticket sealed by SWM's node");
            let mut s = arrow_flight::flight_service_client::FlightServiceClient::new(ch)
                .do_get(arrow_flight::Ticket::new(ticket.clone()))
                .await?
                .into_inner();
            s.message().await.map(|_| ())
        }
        "/allmende.v1.OpenData/Publish" => pb::open_data_client::OpenDataClient::new(ch)
            .publish(pb::PublishReleaseRequest {
                dataset: SMART_METER.into(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.OpenData/Budget" => pb::open_data_client::OpenDataClient::new(ch)
            .budget(pb::ReleaseBudgetRequest {
                dataset: SMART_METER.into(),
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Obligations/Record" => pb::obligations_client::ObligationsClient::new(ch)
            .record(pb::RecordObligationRequest {
                organisation: "versicherung-ag".into(),
                dataset: SMART_METER.into(),
                grace_seconds: 900,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Obligations/Change" => pb::obligations_client::ObligationsClient::new(ch)
            .change(pb::ChangeObligationRequest {
                id: "obl-1".into(),
                end: true,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Obligations/List" => pb::obligations_client::ObligationsClient::new(ch)
            .list(pb::ListObligationsRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Obligations/Status" => pb::obligations_client::ObligationsClient::new(ch)
            .status(pb::ObligationStatusRequest {
                organisation: "swm".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Obligations/Rejected" => pb::obligations_client::ObligationsClient::new(ch)
            .rejected(pb::RejectedBatchesRequest {
                organisation: "swm".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        "/allmende.v1.Policy/Reload" => pb::policy_client::PolicyClient::new(ch)
            .reload(pb::ReloadRequest::default())
            .await
            .map(|_| ()),
        "/allmende.v1.Relay/Fetch" => {
            let mut s = pb::relay_client::RelayClient::new(ch)
                .fetch(pb::RelayFetchRequest {
                    owner_organisation: "swm".into(),
                    owner_node: "swm-1".into(),
                    request: Some(pb::FetchRequest {
                        dataset: SMART_METER.into(),
                        purpose: "InsuranceUnderwriting".into(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            s.message().await.map(|_| ())
        }
        "/allmende.v1.Relay/Forward" | "/allmende.v1.Relay/Serve" => {
            let mut c = pb::relay_client::RelayClient::new(ch);
            let req = pb::RelayedRequest {
                target_organisation: "swm".into(),
                target_node: "swm-1".into(),
                ..Default::default()
            };
            let mut s = if method.ends_with("Forward") {
                c.forward(req).await?
            } else {
                c.serve(req).await?
            }
            .into_inner();
            s.message().await.map(|_| ())
        }
        "/allmende.v1.Relay/PublishKeyPackage" => pb::relay_client::RelayClient::new(ch)
            .publish_key_package(pb::PublishKeyPackageRequest::default())
            .await
            .map(|_| ()),
        other => panic!(
            "no probe for decided method `{other}`: add one to `probe` in tests/tests/hardening.rs"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_is_decided_and_audited_or_listed_as_exempt() {
    // The table and the descriptor sets name the same methods.
    let served = served_methods();
    let listed: BTreeSet<String> = CALLS.iter().map(|(m, _)| (*m).to_owned()).collect();
    let undecided: Vec<_> = served.difference(&listed).collect();
    assert!(
        undecided.is_empty(),
        "methods neither decided nor listed as exempt in `allmende::rpc::CALLS`: {undecided:?}"
    );
    let stale: Vec<_> = listed.difference(&served).collect();
    assert!(
        stale.is_empty(),
        "`CALLS` lists methods nobody serves: {stale:?}"
    );
    // ARCHITECTURE.md names every exemption.
    let arch = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md"),
    )
    .unwrap();
    for (m, rule) in CALLS {
        if let CallRule::Exempt(_) = rule {
            assert!(
                arch.contains(&format!("`{m}`")),
                "ARCHITECTURE.md does not list the exempt method `{m}`"
            );
        }
    }

    // Every decided method refuses an insurer's analyst at SWM's node with
    // PERMISSION_DENIED, and the refusal is in SWM's audit log.
    let sb = munich_with_lookalikes().await;
    let ticket = sb
        .node("swm-1")
        .unwrap()
        .fetcher
        .seal_ticket(&allmende::access::FetchParams {
            dataset: SMART_METER.into(),
            purpose: Some("InsuranceUnderwriting".parse().unwrap()),
            ..Default::default()
        })
        .unwrap();
    DO_GET_TICKET.set(ticket).unwrap();
    let mut callers = Vec::new();
    for u in ["analyst", "analyst-2", "analyst-3"] {
        callers.push(channel(&sb, "versicherung-ag", u, "swm-1").await);
    }
    for (i, (method, rule)) in CALLS.iter().enumerate() {
        let ch = callers[i % callers.len()].clone();
        let action = match rule {
            CallRule::Decided(a) | CallRule::Witness(a) => *a,
            CallRule::Exempt(_) => continue,
        };
        let before = audit_size(&sb, "swm-1");
        let err = probe(method, ch)
            .await
            .expect_err(&format!("`{method}` served an insurer's analyst"));
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "`{method}`: {}",
            err.message()
        );
        assert!(
            denied_entry(
                &audit_since(&sb, "swm-1", before),
                "versicherung-ag",
                action.as_str()
            ),
            "`{method}`: no audited denial of `{action}`"
        );
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_subject_is_bound_to_its_controller() {
    use pb::audit_client::AuditClient;
    use pb::consent_client::ConsentClient;
    let sb = munich_with_lookalikes().await;
    let swm = sb.node("swm-1").unwrap();

    // The household with SWM's citizen certificate sees its history and its
    // consent at SWM's node.
    let own = channel(&sb, "swm", "HH-000001", "swm-1").await;
    AuditClient::new(own.clone())
        .my_accesses(pb::MyAccessesRequest::default())
        .await
        .unwrap();
    let mine = ConsentClient::new(own)
        .get(pb::GetConsentRequest {
            subject_id: "HH-000001".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(!mine.is_empty());

    // A TUM certificate with the same user id learns nothing about the
    // household, changes nothing, and every refusal is audited.
    let before = audit_size(&sb, "swm-1");
    let consent_before = swm.consent.records_of("HH-000001").unwrap();
    let foreign = channel(&sb, "tum", "HH-000001", "swm-1").await;
    let err = AuditClient::new(foreign.clone())
        .my_accesses(pb::MyAccessesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );
    let err = ConsentClient::new(foreign.clone())
        .get(pb::GetConsentRequest {
            subject_id: "HH-000001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = ConsentClient::new(foreign)
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: "HH-000001".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(swm.consent.records_of("HH-000001").unwrap(), consent_before);
    let entries = audit_since(&sb, "swm-1", before);
    for action in ["read_audit", "read_consent", "record_consent"] {
        assert!(
            denied_entry(&entries, "tum", action),
            "no audited denial of `{action}`"
        );
    }

    // SWM staff whose user id equals a subject id are not that subject.
    let staff = channel(&sb, "swm", "HH-000005", "swm-1").await;
    let err = AuditClient::new(staff)
        .my_accesses(pb::MyAccessesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // The household's own certificate acts for it only at its controller's
    // node: at the city's node it is nobody's data subject.
    let elsewhere = channel(&sb, "swm", "HH-000001", "stadt-1").await;
    let err = AuditClient::new(elsewhere)
        .my_accesses(pb::MyAccessesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Reading one's consent is itself audited.
    let before = audit_size(&sb, "swm-1");
    let own = channel(&sb, "swm", "HH-000001", "swm-1").await;
    ConsentClient::new(own)
        .get(pb::GetConsentRequest {
            subject_id: "HH-000001".into(),
        })
        .await
        .unwrap();
    assert!(
        audit_since(&sb, "swm-1", before)
            .iter()
            .any(|e| e.action == "read_consent" && e.decision == Some(Decision::Allow)),
        "a consent read left no audit entry"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_detail_is_for_the_owners_operators_and_stewards() {
    use pb::connectors_client::ConnectorsClient;
    let sb = munich_with_lookalikes().await;
    let list = |ch: Channel| async move {
        ConnectorsClient::new(ch)
            .list(pb::ListConnectorsRequest::default())
            .await
    };
    let steward = list(channel(&sb, "swm", "steward", "swm-1").await)
        .await
        .unwrap()
        .into_inner();
    assert!(steward.connectors.iter().any(|c| c.dataset == SMART_METER));
    for (org, user) in [("swm", "dpo"), ("swm", "HH-000001"), ("tum", "alice")] {
        let err = list(channel(&sb, org, user, "swm-1").await)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{org}/{user} listed SWM's connectors"
        );
    }
    sb.shutdown().await.unwrap();
}

/// A directory with `copies` copies of the demo air-quality CSV (1 200
/// rows each), registered by the city's steward as `air-quality-large`.
async fn register_large_public_dataset(sb: &Sandbox, copies: usize) -> String {
    let dir = sb.root.join("sample-data/air-quality-large");
    let tmp = tempfile::tempdir().unwrap();
    let spec = allmende_connectors::sample::SampleSpec {
        days: 10,
        ..Default::default()
    };
    let files = allmende_connectors::sample::write_demo_data(tmp.path(), &spec).unwrap();
    let air = files
        .datasets
        .iter()
        .find(|d| d.name == "air-quality")
        .unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..copies {
        std::fs::copy(&air.config.path, dir.join(format!("part-{i:03}.csv"))).unwrap();
    }
    let mut config = air.config.clone();
    config.path = dir;
    let mut desc = allmende::demo::munich::datasets()
        .into_iter()
        .find(|(_, d)| d.id == "air-quality")
        .unwrap()
        .1;
    desc.id = "air-quality-large".into();
    sb.register_dataset("stadt", "steward", &desc, &config)
        .await
        .unwrap();
    desc.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_organisation_ca_ends_open_connections_and_streams() {
    use pb::federation_client::FederationClient;
    let sb = allmende_e2e::munich().await;
    let dataset = register_large_public_dataset(&sb, 100).await;
    let alice = channel(&sb, "tum", "alice", "stadt-1").await;
    FederationClient::new(alice.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    // An open fetch of open data, read slowly.
    let mut stream = pb::access_client::AccessClient::new(alice.clone())
        .fetch(pb::FetchRequest {
            dataset: dataset.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.summary.is_none(), "the dataset fits one message");

    // The city revokes TUM's organisation CA (not Alice's own certificate).
    ca::revoke(
        &sb.federation,
        &sb.org_dir("tum").join(ca::ORG_CERT),
        "left the federation",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
    .unwrap();
    sb.publish_membership().unwrap();

    // The open stream ends with an error instead of delivering the rest.
    let e = loop {
        match stream.message().await {
            Ok(Some(m)) => {
                assert!(
                    m.summary.is_none(),
                    "the whole dataset was delivered after revocation"
                );
            }
            Ok(None) => panic!("the stream ended without an error after revocation"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{}", e.message());
    // The open connection is refused on its next request.
    let err = FederationClient::new(alice)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    sb.shutdown().await.unwrap();
}
