//! The PostgreSQL connector against a real PostgreSQL (the Debian packages' binaries, started on
//! loopback for each test): the conformance suite, type mapping, pushdown with bound
//! parameters, resume by the cursor column, broken rows, a server killed mid-stream, a wrong
//! password, and confinement (hosts and the secret file). Fails, naming the package, when
//! PostgreSQL is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use allmende_connectors::conformance::{Expectations, run_all};
use allmende_connectors::postgres::LocalServer;
use allmende_connectors::{
    Connector, ConnectorError, FieldSpec, FieldType, PostgresConfig, PostgresConnector, Predicate,
    PredicateOp, PredicateValue, ReadItem, ReadRequest, Refusal, SourceRoots,
};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use futures::StreamExt;
use tempfile::TempDir;

const PASSWORD: &str = "s3cretPassw0rd";

/// A server, the reader's secret file and the roots that allow both.
struct Fixture {
    server: LocalServer,
    _dir: TempDir,
    secrets: TempDir,
    secret: PathBuf,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = match LocalServer::start(&dir.path().join("pg")) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let conn = server.create_reader("reader", PASSWORD).await.unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let secret = secrets.path().join("pg.secret");
        std::fs::write(&secret, format!("{conn}\n")).unwrap();
        Self {
            server,
            _dir: dir,
            secrets,
            secret,
        }
    }

    fn roots(&self) -> SourceRoots {
        SourceRoots::new([self.secrets.path()]).allow_postgres_hosts(["127.0.0.1"])
    }

    fn config(&self, relation: &str, cursor: &str) -> PostgresConfig {
        PostgresConfig::new(&self.secret, "public", relation, cursor)
    }

    async fn open(&self, config: PostgresConfig) -> PostgresConnector {
        match PostgresConnector::open(config, self.roots()).await {
            Ok(c) => c,
            Err(e) => panic!("connector refused: {e}"),
        }
    }
}

/// Smart-meter readings: 4 households share each timestamp (ties in the cursor column).
fn readings_sql(rows: usize) -> String {
    let mut sql = String::from(
        "CREATE TABLE readings (household_id text NOT NULL, meter_id varchar(32) NOT NULL, \
         ts timestamptz NOT NULL, kwh numeric(10,3));\n",
    );
    for i in 0..rows {
        sql.push_str(&format!(
            "INSERT INTO readings VALUES ('HH-{:06}', '1EMH{:010}', \
             timestamptz '2025-03-03 00:00:00+00' + interval '15 minutes' * {}, {}.{:03});\n",
            i % 4 + 1,
            i % 4 + 1,
            i / 4,
            i % 5,
            i % 1000
        ));
    }
    sql
}

fn readings_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("household_id", FieldType::String),
        FieldSpec::required("meter_id", FieldType::String),
        FieldSpec::required("ts", FieldType::Timestamp),
        FieldSpec::new("kwh", FieldType::Float64),
    ]
}

fn readings_config(f: &Fixture, relation: &str) -> PostgresConfig {
    let mut c = f.config(relation, "ts");
    c.schema = Some(readings_fields());
    c.subject_column = Some("household_id".into());
    c.identifier_columns = vec!["meter_id".into()];
    c
}

#[tokio::test]
async fn a_table_and_a_view_conform() {
    let f = Fixture::start().await;
    f.server
        .execute(&format!(
            "{}\nCREATE VIEW recent AS SELECT * FROM readings WHERE ts >= '2025-03-03 06:00+00';",
            readings_sql(203)
        ))
        .await
        .unwrap();
    let c = f.open(readings_config(&f, "readings")).await;
    assert_eq!(c.describe().kind, "postgres");
    assert!(!c.describe().source.contains(PASSWORD));
    let report = run_all(
        &c,
        &Expectations {
            rows: Some(203),
            broken: Some(0),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.passed.len(), 8, "{report:?}");

    let v = f.open(readings_config(&f, "recent")).await;
    let report = run_all(
        &v,
        &Expectations {
            rows: Some(203 - 24 * 4),
            broken: Some(0),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.passed.len(), 8, "{report:?}");
}

#[tokio::test]
async fn broken_rows_are_reported_counted_and_skipped() {
    let f = Fixture::start().await;
    // Nullable in the table, required by the declared schema; and timestamps the connector
    // cannot represent.
    f.server
        .execute(
            "CREATE TABLE m (id int8 NOT NULL, household_id text, at timestamp, kwh float8);\n\
             INSERT INTO m SELECT g, 'HH-' || (g % 5), timestamp '2025-01-01' + g * interval '1 hour', g * 0.5 \
             FROM generate_series(1, 150) g;\n\
             UPDATE m SET household_id = NULL WHERE id IN (10, 80);\n\
             UPDATE m SET at = 'infinity' WHERE id = 120;",
        )
        .await
        .unwrap();
    let mut config = f.config("m", "id");
    config.schema = Some(vec![
        FieldSpec::required("id", FieldType::Int64),
        FieldSpec::required("household_id", FieldType::String),
        FieldSpec::new("at", FieldType::Timestamp),
        FieldSpec::new("kwh", FieldType::Float64),
    ]);
    config.subject_column = Some("household_id".into());
    let c = f.open(config).await;
    let report = run_all(
        &c,
        &Expectations {
            rows: Some(147),
            broken: Some(3),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.passed.len(), 8, "{report:?}");
    let read = common::read_all(&c, ReadRequest::new()).await;
    let reasons: Vec<&str> = read.broken.iter().map(|b| b.reason.as_str()).collect();
    assert!(
        reasons[0].contains("column `household_id` is empty") && reasons[0].contains("`id` = `10`"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("column `at`"), "{reasons:?}");
}

#[tokio::test]
async fn types_map_to_arrow_and_unsupported_ones_are_named() {
    let f = Fixture::start().await;
    f.server
        .execute(
            "CREATE TABLE t (a int2, b int4, c int8 NOT NULL, d float4, e float8, n numeric, \
             s text, v varchar(10), ok bool, ts timestamp, tz timestamptz, day date);\n\
             INSERT INTO t VALUES (-2, 40000, 9000000000, 1.5, 2.25, 12.345, 'text', 'var', true, \
             '2025-03-03 12:00:00.123456', '2025-03-03 12:00:00+02', '2025-03-04');\n\
             INSERT INTO t (c) VALUES (2);\n\
             CREATE TABLE odd (id int8, span interval);",
        )
        .await
        .unwrap();
    let c = f.open(f.config("t", "c")).await;
    let schema = c.describe().schema.clone();
    let types: Vec<DataType> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    assert_eq!(
        types,
        vec![
            DataType::Int64,
            DataType::Int64,
            DataType::Int64,
            DataType::Float64,
            DataType::Float64,
            DataType::Float64,
            DataType::Utf8,
            DataType::Utf8,
            DataType::Boolean,
            ts.clone(),
            ts.clone(),
            ts,
        ]
    );
    let read = common::read_all(&c, ReadRequest::new()).await;
    let b = read.concat().unwrap();
    assert_eq!(b.num_rows(), 2);
    // Ordered by the cursor column `c`: the row with c = 2 first.
    assert!(b.column(0).is_null(0));
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(1), -2);
    assert_eq!(b.column(1).as_primitive::<Int64Type>().value(1), 40000);
    assert_eq!(
        b.column(2).as_primitive::<Int64Type>().value(1),
        9_000_000_000
    );
    let floats = |i: usize| {
        b.column(i)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(1)
    };
    assert_eq!((floats(3), floats(4), floats(5)), (1.5, 2.25, 12.345));
    assert_eq!(b.column(6).as_string::<i32>().value(1), "text");
    assert_eq!(b.column(7).as_string::<i32>().value(1), "var");
    assert!(b.column(8).as_boolean().value(1));
    let micros = |i: usize| {
        b.column(i)
            .as_primitive::<TimestampMicrosecondType>()
            .value(1)
    };
    // 2025-03-03T12:00:00.123456Z, 2025-03-03T10:00:00Z, 2025-03-04T00:00:00Z.
    assert_eq!(micros(9), 1_741_003_200_123_456);
    assert_eq!(micros(10), 1_740_996_000_000_000);
    assert_eq!(micros(11), 1_741_046_400_000_000);

    let e = PostgresConnector::open(f.config("odd", "id"), f.roots())
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(
        matches!(e, ConnectorError::Config(_))
            && m.contains("column `span`")
            && m.contains("interval"),
        "{m}"
    );
    // A declared type that disagrees with the relation's is named too.
    let mut wrong = f.config("t", "c");
    wrong.schema = Some(vec![
        FieldSpec::required("c", FieldType::Int64),
        FieldSpec::new("s", FieldType::Float64),
    ]);
    let e = PostgresConnector::open(wrong, f.roots()).await.unwrap_err();
    assert!(
        matches!(&e, ConnectorError::SchemaMismatch { column, .. } if column == "s"),
        "{e}"
    );
    // Identifiers are checked, never put into SQL as given.
    let e = PostgresConnector::open(f.config("t; DROP TABLE t", "c"), f.roots())
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Config(_)), "{e}");
}

#[tokio::test]
async fn pushdown_binds_a_hostile_literal_and_rows_match() {
    let f = Fixture::start().await;
    let hostile = "x'; DROP TABLE t; --";
    f.server
        .execute(&format!(
            "CREATE TABLE t (id int8 NOT NULL, name text, kwh float8);\n\
             INSERT INTO t SELECT g, 'n' || (g % 3), g FROM generate_series(1, 30) g;\n\
             INSERT INTO t VALUES (31, $lit${hostile}$lit$, 31);"
        ))
        .await
        .unwrap();
    let c = f.open(f.config("t", "id")).await;
    let eq = |column: &str, value: PredicateValue, op: PredicateOp| Predicate {
        column: column.into(),
        op,
        value,
    };
    let request = ReadRequest::new().pushdown(vec![eq(
        "name",
        PredicateValue::Text(hostile.into()),
        PredicateOp::Eq,
    )]);
    let statement = c.statement(&request).unwrap();
    assert!(statement.sql.contains("= $1::text"), "{}", statement.sql);
    assert!(!statement.sql.contains("DROP"), "{}", statement.sql);
    let read = common::read_all(&c, request).await;
    let b = read.concat().unwrap();
    assert_eq!(b.num_rows(), 1);
    assert_eq!(b.column(1).as_string::<i32>().value(0), hostile);
    // The table is still there, whole.
    assert_eq!(
        common::read_all(&c, ReadRequest::new()).await.num_rows(),
        31
    );

    // AND of two pushed comparisons, and one it cannot bind (a text literal for a float
    // column) left to the caller: more rows than the full filter, never fewer.
    let request = ReadRequest::new().pushdown(vec![
        eq("name", PredicateValue::Text("n1".into()), PredicateOp::Eq),
        eq("id", PredicateValue::Int(10), PredicateOp::Gt),
        eq("kwh", PredicateValue::Text("1".into()), PredicateOp::Lt),
    ]);
    assert_eq!(c.statement(&request).unwrap().pushed, 2);
    let b = common::read_all(&c, request).await.concat().unwrap();
    let ids: Vec<i64> = b.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(ids, vec![13, 16, 19, 22, 25, 28]);
}

#[tokio::test]
async fn reads_resume_by_the_cursor_column() {
    let f = Fixture::start().await;
    f.server.execute(&readings_sql(40)).await.unwrap();
    let c = f.open(readings_config(&f, "readings")).await;
    // Stop inside a run of equal timestamps and resume: no row twice, none lost.
    let first = c
        .read(ReadRequest::new().batch_size(6).max_rows(6))
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let summary = first.summary.clone().unwrap();
    assert!(!summary.complete);
    let cursor = summary.cursor.clone().unwrap();
    match &cursor {
        allmende_connectors::Cursor::Column { column, count, .. } => {
            assert_eq!((column.as_str(), *count), ("ts", 2));
        }
        other => panic!("{other:?}"),
    }
    let statement = c
        .statement(&ReadRequest::new().since(Some(cursor.clone())))
        .unwrap();
    assert!(
        statement.sql.contains("\"ts\" >= $1::timestamptz"),
        "{}",
        statement.sql
    );
    let rest = common::read_all(&c, ReadRequest::new().since(Some(cursor))).await;
    let mut all = vec![first.concat().unwrap()];
    all.push(rest.concat().unwrap());
    let joined = arrow::compute::concat_batches(&all[0].schema(), &all).unwrap();
    let full = common::read_all(&c, ReadRequest::new())
        .await
        .concat()
        .unwrap();
    assert_eq!(joined, full);
    assert_eq!(full.num_rows(), 40);
}

#[tokio::test]
async fn a_server_killed_mid_stream_ends_the_read_with_a_clear_error() {
    let mut f = Fixture::start().await;
    f.server
        .execute(
            "CREATE TABLE big (id int8 NOT NULL, pad text);\n\
             INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let c = f.open(f.config("big", "id")).await;
    let mut stream = c.read(ReadRequest::new().batch_size(100)).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, ReadItem::Batch { .. }));
    f.server.kill().unwrap();
    let mut error = None;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            error = Some(e);
            break;
        }
    }
    let e = error.expect("the read must fail once the server is gone");
    assert!(
        matches!(&e, ConnectorError::Source { reason, .. } if reason.contains("the read broke off")),
        "{e}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_without_the_secret() {
    let f = Fixture::start().await;
    f.server
        .execute("CREATE TABLE t (id int8 NOT NULL);")
        .await
        .unwrap();
    let wrong = f
        .server
        .tcp_connection_string("reader", "wrongPassw0rd", "postgres");
    std::fs::write(&f.secret, &wrong).unwrap();
    let e = PostgresConnector::open(f.config("t", "id"), f.roots())
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, ConnectorError::Unreachable { .. }), "{m}");
    assert!(m.contains("password authentication failed"), "{m}");
    assert!(!m.contains("wrongPassw0rd"), "{m}");
    assert!(!m.contains(&wrong), "{m}");
    assert!(!m.contains(&f.secret.display().to_string()), "{m}");

    // A malformed connection string is refused without quoting it.
    std::fs::write(
        &f.secret,
        "host=127.0.0.1 password=leakyPassw0rd port=notaport",
    )
    .unwrap();
    let e = PostgresConnector::open(f.config("t", "id"), f.roots())
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("leakyPassw0rd"), "{e}");
}

#[tokio::test]
async fn hosts_and_the_secret_file_are_confined() {
    let f = Fixture::start().await;
    f.server
        .execute("CREATE TABLE t (id int8 NOT NULL);")
        .await
        .unwrap();
    // A host the node does not allow.
    let only_other = SourceRoots::new([f.secrets.path()]).allow_postgres_hosts(["db.internal"]);
    let e = PostgresConnector::open(f.config("t", "id"), only_other)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ConnectorError::Confined {
                reason: Refusal::HostNotAllowed,
                ..
            }
        ),
        "{e}"
    );
    // No host allowed at all (a node's default).
    let none = SourceRoots::new([f.secrets.path()]);
    let e = PostgresConnector::open(f.config("t", "id"), none)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Confined { .. }), "{e}");
    // A secret file outside the roots (say, the node's key) is never read.
    let elsewhere = tempfile::tempdir().unwrap();
    let key = elsewhere.path().join("node.key");
    std::fs::write(&key, "host=127.0.0.1 user=x").unwrap();
    let mut config = f.config("t", "id");
    config.secret_file = key;
    let e = PostgresConnector::open(config, f.roots())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ConnectorError::Confined {
                reason: Refusal::OutsideRoots,
                ..
            }
        ),
        "{e}"
    );
    // The allowed host works.
    f.open(f.config("t", "id")).await;
}

/// A CA and a server certificate for 127.0.0.1 signed by it (PEM).
fn ca_and_server_cert() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(Vec::<String>::new()).unwrap();
    server.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn verify_full_needs_the_right_ca() {
    let f = Fixture::start().await;
    f.server
        .execute("CREATE TABLE t (id int8 NOT NULL);\nINSERT INTO t SELECT generate_series(1, 10);")
        .await
        .unwrap();
    let (ca, cert, key) = ca_and_server_cert();
    f.server.enable_tls(&cert, &key).await.unwrap();
    let ca_file = f.secrets.path().join("db-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let mut config = f.config("t", "id");
    config.tls = allmende_connectors::TlsMode::VerifyFull;
    config.ca_file = Some(ca_file.clone());
    let c = f.open(config.clone()).await;
    assert_eq!(
        common::read_all(&c, ReadRequest::new()).await.num_rows(),
        10
    );

    // Another CA: the server is not trusted.
    let (other_ca, _, _) = ca_and_server_cert();
    std::fs::write(&ca_file, &other_ca).unwrap();
    let e = PostgresConnector::open(config.clone(), f.roots())
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Unreachable { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");

    // verify-full without a CA file is a configuration error.
    config.ca_file = None;
    let e = PostgresConnector::open(config, f.roots())
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Config(_)), "{e}");
}
