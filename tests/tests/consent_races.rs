//! Consent withdrawal racing a fetch, observed at the stream (`Access.Fetch`
//! rows) and in the audit log: a fetch releases either every row of the
//! household of the consent snapshot it was decided with or none of them,
//! never a part; its completion entry names the household (as a keyed hash)
//! exactly when its rows left; and a fetch started after the withdrawal
//! returned never contains them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Entry, EntryKind};
use allmende_e2e::{connect_with, material};
use allmende_proto::v1 as pb;
use pb::access_client::AccessClient;
use pb::consent_client::ConsentClient;
use pb::grants_client::GrantsClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const DS: &str = "smart-meter-readings";
const SUBJECT: &str = "HH-000001";

async fn channel(sb: &Sandbox, org: &str, user: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

/// Rows of one fetch under `grant` (retried while the caller's rate budget
/// refills).
async fn fetch_rows(ch: Channel, grant: &str) -> usize {
    loop {
        let req = pb::FetchRequest {
            dataset: DS.into(),
            purpose: "AcademicResearch".into(),
            grant_id: grant.into(),
            ..Default::default()
        };
        let mut s = match AccessClient::new(ch.clone()).fetch(req).await {
            Ok(s) => s.into_inner(),
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(e) => panic!("fetch refused: {e:?}"),
        };
        let mut bytes = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            bytes.extend(m.arrow_ipc);
        }
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        return reader.map(|b| b.unwrap().num_rows()).sum();
    }
}

/// The release completions after sequence `from`, waiting (up to about
/// 5 s) until `n` are there.
async fn completions(sb: &Sandbox, from: u64, n: usize) -> Vec<Entry> {
    let log = &sb.node("swm-1").unwrap().audit;
    for _ in 0..100 {
        let found: Vec<Entry> = (from..log.status().size)
            .filter_map(|s| log.entry_bytes(s).unwrap())
            .map(|b| Entry::decode(&b).unwrap())
            .filter(|e| matches!(e.kind, EntryKind::ReleaseCompletion { .. }))
            .collect();
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no release completion audited after {from}");
}

fn released(e: &Entry) -> u64 {
    match e.kind {
        EntryKind::ReleaseCompletion { rows_released, .. } => rows_released,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withdrawal_racing_a_fetch_is_all_or_nothing_and_next_fetch_excludes() {
    let sb = Sandbox::start(SandboxSpec::munich(), None, Arc::new(SystemClock))
        .await
        .unwrap();
    sb.register_demo_datasets().await.unwrap();
    let swm = sb.node("swm-1").unwrap();
    let hash = swm.audit.subject_hash(SUBJECT);

    // A research grant for TUM's researcher.
    let r = GrantsClient::new(channel(&sb, "tum", "alice").await)
        .request_access(pb::RequestAccessRequest {
            dataset: DS.into(),
            purpose: "AcademicResearch".into(),
            columns: vec!["household_id".into(), "kwh".into(), "timestamp".into()],
            days: 30,
            justification: "consent race".into(),
            idempotency_key: "race-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let g = GrantsClient::new(channel(&sb, "swm", "dpo").await)
        .approve(pb::ApproveRequest {
            request_id: r.id.clone(),
            request_hash: r.request_hash.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let alice = channel(&sb, "tum", "alice").await;
    let mut household = ConsentClient::new(channel(&sb, "swm", SUBJECT).await);
    let give = pb::GiveConsentRequest {
        subject_id: SUBJECT.into(),
        dataset: DS.into(),
        purposes: vec!["AcademicResearch".into()],
        expires_at_unix: 0,
    };
    let withdraw = pb::WithdrawConsentRequest {
        subject_id: SUBJECT.into(),
        dataset: DS.into(),
        purpose: String::new(),
    };

    // With and without the household's consent: its rows are the difference.
    household.give(give.clone()).await.unwrap();
    let with = fetch_rows(alice.clone(), &g.id).await;
    household.withdraw(withdraw.clone()).await.unwrap();
    let without = fetch_rows(alice.clone(), &g.id).await;
    assert!(
        with > without,
        "the household has rows: {with} vs {without}"
    );

    let (mut included, mut excluded) = (0, 0);
    for i in 0..16u64 {
        household.give(give.clone()).await.unwrap();
        let from = swm.audit.status().size;
        // Even rounds withdraw first and fetch a little later, odd rounds
        // the other way round, by a growing delay: both orders occur.
        let delay = Duration::from_millis(2 * i);
        let (wd, fd) = if i % 2 == 0 {
            (Duration::ZERO, delay)
        } else {
            (delay, Duration::ZERO)
        };
        let fetch = tokio::spawn({
            let alice = alice.clone();
            let grant = g.id.clone();
            async move {
                tokio::time::sleep(fd).await;
                fetch_rows(alice, &grant).await
            }
        });
        tokio::time::sleep(wd).await;
        let w = household
            .withdraw(withdraw.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(w.records_changed, 1);
        let rows = fetch.await.unwrap();

        // All or nothing of the household's rows, and the audit says which.
        let done = completions(&sb, from, 1).await;
        assert_eq!(done.len(), 1, "one fetch, one completion");
        assert_eq!(released(&done[0]), rows as u64);
        assert_eq!(
            done[0].grant_id.as_deref(),
            Some(g.id.as_str()),
            "the release names its grant"
        );
        let names = done[0].subjects.contains(&hash);
        if rows == with {
            assert!(
                names,
                "round {i}: rows released, audit does not name the household"
            );
            included += 1;
        } else {
            assert_eq!(
                rows, without,
                "round {i}: a half state ({rows} of {with}/{without})"
            );
            assert!(
                !names,
                "round {i}: audit names a household whose rows did not leave"
            );
            excluded += 1;
        }

        // The next fetch, after the withdrawal returned, leaves them out.
        let from = swm.audit.status().size;
        assert_eq!(fetch_rows(alice.clone(), &g.id).await, without, "round {i}");
        let next = completions(&sb, from, 1).await;
        assert!(!next[0].subjects.contains(&hash));
    }
    assert!(
        included > 0 && excluded > 0,
        "both orders occur: {included} included, {excluded} excluded"
    );
    sb.shutdown().await.unwrap();
}
