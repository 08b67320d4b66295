//! A PostgreSQL-backed dataset across real nodes: SWM registers a table
//! with kind `postgres` (connection string in a secret file below its
//! source roots), a TUM researcher reads it through `Access.Fetch` — decided
//! by Cedar, audited, filtered (the comparisons pushed down as bound
//! parameters, a hostile literal included) — and a registration naming a
//! host the node does not allow is refused and audited. Needs the Debian
//! `postgresql` package (scripts/test.sh installs it); fails, saying so,
//! without it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::sandbox::{SAMPLE_DATA_DIR, Sandbox, SandboxSpec};
use allmende_audit::{Decision, EntryKind};
use allmende_connectors::PostgresConfig;
use allmende_connectors::postgres::LocalServer;
use allmende_e2e::{audit_since, connect_with, material};
use allmende_proto::v1 as pb;
use arrow::array::AsArray;
use pb::access_client::AccessClient;
use std::sync::Arc;

const DATASET: &str = "air-quality-pg";
const HOSTILE: &str = "x'; DROP TABLE air_quality; --";

async fn swm_and_tum() -> Sandbox {
    let mut spec = SandboxSpec::munich();
    spec.orgs.retain(|o| o.name == "swm" || o.name == "tum");
    Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap()
}

fn description() -> allmende::catalog::DatasetDescription {
    let mut d = allmende::demo::munich::air_quality();
    d.id = DATASET.into();
    d
}

/// 5 stations × 24 hours; one station's name is hostile SQL.
fn table_sql() -> String {
    let mut sql = String::from(
        "CREATE TABLE air_quality (station_id text NOT NULL, station text NOT NULL, \
         \"timestamp\" timestamptz NOT NULL, no2 float8, pm10 numeric(6,2), pm25 real);\n",
    );
    for h in 0..24 {
        for s in 0..5 {
            let name = if s == 4 {
                HOSTILE.to_string()
            } else {
                format!("Station {s}")
            };
            sql.push_str(&format!(
                "INSERT INTO air_quality VALUES ('DEBY{s:03}', $n${name}$n$, \
                 timestamptz '2025-03-03 00:00+00' + interval '1 hour' * {h}, {}.5, {}.25, {});\n",
                10 + h,
                20 + s,
                s
            ));
        }
    }
    sql
}

async fn register(sb: &Sandbox, config: &PostgresConfig) -> Result<(), tonic::Status> {
    let p = sb.profile("swm", "steward").unwrap();
    let ch = connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap();
    pb::connectors_client::ConnectorsClient::new(ch)
        .register(pb::RegisterConnectorRequest {
            dataset_json: serde_json::to_string(&description()).unwrap(),
            kind: "postgres".into(),
            config_json: serde_json::to_string(config).unwrap(),
        })
        .await
        .map(|_| ())
}

fn cmp(column: &str, op: pb::CompareOp, value: pb::value::Kind) -> pb::Filter {
    pb::Filter {
        expr: Some(pb::filter::Expr::Comparison(pb::Comparison {
            column: column.into(),
            op: op as i32,
            value: Some(pb::Value { kind: Some(value) }),
        })),
    }
}

async fn fetch(sb: &Sandbox, filter: Option<pb::Filter>) -> Vec<arrow::record_batch::RecordBatch> {
    let p = sb.profile("tum", "alice").unwrap();
    let mut c = AccessClient::new(
        connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
            .await
            .unwrap(),
    );
    let mut s = c
        .fetch(pb::FetchRequest {
            dataset: DATASET.into(),
            purpose: "AcademicResearch".into(),
            filter,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("fetch refused: {e:?}"))
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        bytes.extend(m.arrow_ipc);
    }
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_table_is_served_through_fetch_decided_audited_and_filtered() {
    let pg_dir = tempfile::tempdir().unwrap();
    let server = LocalServer::start(&pg_dir.path().join("pg")).unwrap_or_else(|e| panic!("{e}"));
    let conn = server
        .create_reader("swm_reader", "readerPassw0rd")
        .await
        .unwrap();
    server.execute(&table_sql()).await.unwrap();

    let sb = swm_and_tum().await;
    // The secret lives below the node's source roots.
    let secrets = sb.root.join(SAMPLE_DATA_DIR).join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let secret = secrets.join("air.pgpass");
    std::fs::write(&secret, &conn).unwrap();
    let config = PostgresConfig::new(&secret, "public", "air_quality", "timestamp");
    register(&sb, &config).await.unwrap();
    // The catalog and the registration never show the secret.
    let listed = serde_json::to_string(
        &sb.node("swm-1")
            .unwrap()
            .registry
            .list()
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.dataset)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!listed.contains("readerPassw0rd"));

    let before = sb.node("swm-1").unwrap().audit.status().size;
    let all = fetch(&sb, None).await;
    assert_eq!(all.iter().map(|b| b.num_rows()).sum::<usize>(), 120);
    let entries = audit_since(&sb, "swm-1", before);
    assert!(
        entries.iter().any(|e| e.resource.ends_with(DATASET)
            && e.decision == Some(Decision::Allow)
            && e.kind == EntryKind::Decision),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| matches!(
            e.kind,
            EntryKind::ReleaseCompletion {
                rows_released: 120,
                ..
            }
        )),
        "{entries:?}"
    );

    // A filter: the hostile station's rows from 20:00 on. Its literal is bound, not run.
    let filter = pb::Filter {
        expr: Some(pb::filter::Expr::All(pb::FilterList {
            filters: vec![
                cmp(
                    "station",
                    pb::CompareOp::Eq,
                    pb::value::Kind::StringValue(HOSTILE.into()),
                ),
                cmp(
                    "timestamp",
                    pb::CompareOp::Ge,
                    pb::value::Kind::TimestampMs(1_741_032_000_000), // 2025-03-03T20:00Z
                ),
                // Not pushed down (OR): evaluated by the broker.
                pb::Filter {
                    expr: Some(pb::filter::Expr::Any(pb::FilterList {
                        filters: vec![
                            cmp("no2", pb::CompareOp::Lt, pb::value::Kind::FloatValue(32.0)),
                            cmp("no2", pb::CompareOp::Gt, pb::value::Kind::FloatValue(33.0)),
                        ],
                    })),
                },
            ],
        })),
    };
    let rows = fetch(&sb, Some(filter)).await;
    let stations: Vec<String> = rows
        .iter()
        .flat_map(|b| {
            b.column_by_name("station")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    // Hours 20..=23 have no2 30.5, 31.5, 32.5, 33.5: the OR keeps 20, 21 and 23.
    assert_eq!(stations, vec![HOSTILE.to_string(); 3]);
    // The table is still there.
    assert_eq!(
        fetch(&sb, None)
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        120
    );

    // A registration naming a host the node does not allow is refused and audited.
    let elsewhere = secrets.join("elsewhere.pgpass");
    std::fs::write(&elsewhere, "host=192.0.2.1 user=x password=y dbname=z").unwrap();
    let mut bad = config.clone();
    bad.secret_file = elsewhere;
    let before = sb.node("swm-1").unwrap().audit.status().size;
    let e = register(&sb, &bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(!e.message().contains("password"), "{e:?}");
    let refused = audit_since(&sb, "swm-1", before);
    assert!(
        refused
            .iter()
            .any(|e| e.action == allmende::registry::REFUSED_SOURCE_ACTION
                && e.policy_ids
                    == vec!["source-confinement:postgres-host-not-allowed".to_string()]),
        "{refused:?}"
    );
    sb.shutdown().await.unwrap();
    drop(server);
}
