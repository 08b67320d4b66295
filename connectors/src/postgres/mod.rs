//! The PostgreSQL connector: one table or view, read in a read-only transaction through a
//! portal, `batch_size` rows per round trip (bounded memory), ordered by a cursor column
//! (keyset resume: `WHERE col >= $1 ORDER BY col, …`, skipping the rows of the cursor's value
//! already read).
//!
//! The connection string comes from a secret file, opened through the node's [`SourceRoots`]
//! like any local source; every host it names must be one the node allows
//! (`sources.postgres_hosts`). The secret never appears in an error, a log line or the
//! description. TLS is optional; `verify-full` verifies the server against a CA file (read
//! through the roots too) and its host name, with rustls and ring.
//!
//! Types: `int2`/`int4`/`int8` → int64; `float4`/`float8` → float64; `numeric` → float64 (read as
//! `float8`: exact to 15 significant digits); `text`/`varchar` → string; `bool` → bool;
//! `timestamptz` → timestamp; `timestamp` (taken as UTC) → timestamp; `date` → timestamp at
//! midnight UTC. Other types are refused at registration, naming the column. A value that
//! cannot be read (a `NULL` in a required column, an infinite timestamp) makes its row a
//! broken row: reported, counted, skipped.
//!
//! Pushed-down comparisons ([`ReadRequest::pushdown`]) on columns whose type takes the literal
//! become `"col" op $n` with bound parameters; the rest are left to the caller.

mod server;
pub mod sql;
pub(crate) mod tls;

use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, PrimitiveDateTime};
use tokio_postgres::config::Host;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

pub use server::{BIN_ROOT, LocalServer, find_binaries};

use crate::confine::SourceRoots;
use crate::connector::{
    BrokenRow, Connector, ConnectorDescription, Cursor, CursorValue, HealthReport, ReadItem,
    ReadRequest, ReadSink, ReadStream, ReadSummary, spawn_reader,
};
use crate::error::{ConnectorError, snippet};
use crate::schema::{FieldSpec, FieldType, TIMESTAMP_TIMEZONE, build_schema};
use sql::{SqlColumn, SqlParam, check_identifier, quote};

/// Largest secret file read.
const MAX_SECRET_BYTES: u64 = 64 << 10;
/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1 << 20;
/// Connect timeout unless the connection string sets one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether and how connections use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP or a unix socket (loopback, trusted networks).
    #[default]
    Disable,
    /// TLS required; the server's certificate must chain to `ca_file` and name the host.
    VerifyFull,
}

fn default_namespace() -> String {
    "public".into()
}

/// Configuration of a [`PostgresConnector`] (JSON in a registration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// File holding the connection string (`host=… port=… user=… password=… dbname=…` or a
    /// `postgresql://` URL). Read through the node's source roots; never shown.
    pub secret_file: PathBuf,
    /// The SQL schema of the relation.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The table or view.
    pub relation: String,
    /// TLS mode.
    #[serde(default)]
    pub tls: TlsMode,
    /// CA certificates (PEM) the server is verified against with `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Declared columns (the dataset's, by default): only these are read, with these types.
    /// `None` exposes every column of the relation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// Column holding the data-subject id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_column: Option<String>,
    /// Other identifying columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier_columns: Vec<String>,
    /// The column reads are ordered and resumed by (int64, timestamp or string); required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_column: Option<String>,
}

impl PostgresConfig {
    /// A configuration for `namespace.relation` with the connection string in `secret_file`,
    /// resumed by `cursor_column`.
    pub fn new(
        secret_file: impl Into<PathBuf>,
        namespace: &str,
        relation: &str,
        cursor_column: &str,
    ) -> Self {
        Self {
            secret_file: secret_file.into(),
            namespace: namespace.into(),
            relation: relation.into(),
            tls: TlsMode::Disable,
            ca_file: None,
            schema: None,
            subject_column: None,
            identifier_columns: Vec::new(),
            cursor_column: Some(cursor_column.into()),
        }
    }
}

/// How a column's values are read from a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    I16,
    I32,
    I64,
    F32,
    F64,
    Text,
    Bool,
    Timestamp,
    TimestampTz,
    Date,
}

/// The exposed type, how values are read, and the cast in the select list, of a PostgreSQL type.
fn map_type(t: &Type) -> Option<(FieldType, Kind, Option<&'static str>)> {
    Some(match *t {
        Type::INT2 => (FieldType::Int64, Kind::I16, None),
        Type::INT4 => (FieldType::Int64, Kind::I32, None),
        Type::INT8 => (FieldType::Int64, Kind::I64, None),
        Type::FLOAT4 => (FieldType::Float64, Kind::F32, None),
        Type::FLOAT8 => (FieldType::Float64, Kind::F64, None),
        Type::NUMERIC => (FieldType::Float64, Kind::F64, Some("float8")),
        Type::TEXT | Type::VARCHAR => (FieldType::String, Kind::Text, None),
        Type::BOOL => (FieldType::Bool, Kind::Bool, None),
        Type::TIMESTAMP => (FieldType::Timestamp, Kind::Timestamp, None),
        Type::TIMESTAMPTZ => (FieldType::Timestamp, Kind::TimestampTz, None),
        Type::DATE => (FieldType::Timestamp, Kind::Date, None),
        _ => return None,
    })
}

/// A column as read.
#[derive(Debug, Clone)]
struct Column {
    sql: SqlColumn,
    kind: Kind,
    nullable: bool,
    /// The column's type in the read statement (after its cast).
    read_type: Type,
}

#[derive(Debug)]
struct Inner {
    config: PostgresConfig,
    roots: SourceRoots,
    description: ConnectorDescription,
    columns: Vec<Column>,
    cursor: usize,
    /// `"namespace"."relation"`, for messages and broken-row locations.
    label: String,
}

/// A PostgreSQL table or view as a [`Connector`].
#[derive(Debug, Clone)]
pub struct PostgresConnector {
    inner: Arc<Inner>,
}

/// An open connection and the task driving it.
struct Connection {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a small file through the roots.
fn read_confined(
    roots: &SourceRoots,
    path: &std::path::Path,
    what: &str,
    max: u64,
) -> Result<Vec<u8>, ConnectorError> {
    let file = roots.open(path, what)?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| ConnectorError::unreachable(what, format!("cannot read the file: {e}")))?;
    if out.len() as u64 > max {
        return Err(ConnectorError::Config(format!(
            "the {what} is larger than {max} bytes"
        )));
    }
    Ok(out)
}

/// Removes the secret (and its password) from a message.
fn scrub(message: &str, secret: &str, password: Option<&str>) -> String {
    let mut out = message.to_owned();
    for s in [Some(secret.trim()), password].into_iter().flatten() {
        if s.len() >= 3 {
            out = out.replace(s, "***");
        }
    }
    out
}

/// Opens a connection: the secret file and CA file through the roots, every host checked,
/// TLS as configured, the session set to UTC.
async fn connect(
    config: &PostgresConfig,
    roots: &SourceRoots,
    label: &str,
) -> Result<Connection, ConnectorError> {
    let secret_bytes = read_confined(
        roots,
        &config.secret_file,
        "connection secret file",
        MAX_SECRET_BYTES,
    )?;
    let secret = String::from_utf8(secret_bytes).map_err(|_| {
        ConnectorError::Config("the connection secret file is not UTF-8 text".into())
    })?;
    let mut pg = tokio_postgres::Config::from_str(secret.trim()).map_err(|_| {
        // The parser's message may quote the string: say only that it is malformed.
        ConnectorError::Config("the connection string in the secret file is malformed".into())
    })?;
    let hosts = pg.get_hosts().to_vec();
    let addrs = pg.get_hostaddrs().to_vec();
    if hosts.is_empty() && addrs.is_empty() {
        return Err(ConnectorError::Config(
            "the connection string names no host".into(),
        ));
    }
    for h in &hosts {
        match h {
            Host::Tcp(name) => roots.check_postgres_host(name)?,
            Host::Unix(dir) => roots.check_postgres_host(&dir.display().to_string())?,
        }
    }
    for a in &addrs {
        roots.check_postgres_host(&a.to_string())?;
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    pg.application_name("allmende");
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let unreachable = |e: tokio_postgres::Error| {
        ConnectorError::unreachable(label, scrub(&describe(&e), &secret, password.as_deref()))
    };
    let (client, task) = match config.tls {
        TlsMode::Disable => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) = pg.connect(NoTls).await.map_err(unreachable)?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgresql connection ended");
                }
            });
            (client, task)
        }
        TlsMode::VerifyFull => {
            let ca_file = config.ca_file.as_ref().ok_or_else(|| {
                ConnectorError::Config("`tls = verify-full` needs a `ca_file`".into())
            })?;
            let ca = read_confined(roots, ca_file, "CA file", MAX_CA_BYTES)?;
            let tls = tls::MakeRustls::new(tls::client_config(&ca)?);
            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = pg.connect(tls).await.map_err(unreachable)?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgresql connection ended");
                }
            });
            (client, task)
        }
    };
    let conn = Connection { client, task };
    conn.client
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .map_err(unreachable)?;
    Ok(conn)
}

/// An error with its causes (tokio-postgres shows the server's message only as a cause).
fn describe(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn db_error(label: &str, e: &tokio_postgres::Error) -> ConnectorError {
    ConnectorError::source(label, describe(e))
}

impl PostgresConnector {
    /// Connects, checks the relation (a table, view or materialised view), maps its columns and
    /// builds the schema. Unsupported column types are refused, naming the column.
    pub async fn open(config: PostgresConfig, roots: SourceRoots) -> Result<Self, ConnectorError> {
        check_identifier("schema", &config.namespace)?;
        check_identifier("relation", &config.relation)?;
        let cursor_name = config.cursor_column.clone().ok_or_else(|| {
            ConnectorError::Config(
                "a postgres source needs a `cursor_column` to order and resume reads by".into(),
            )
        })?;
        check_identifier("cursor column", &cursor_name)?;
        if let Some(declared) = &config.schema {
            for f in declared {
                check_identifier("column", &f.name)?;
            }
        }
        let label = format!("{}.{}", quote(&config.namespace), quote(&config.relation));
        let conn = connect(&config, &roots, &label).await?;
        let kind = conn
            .client
            .query_opt(
                "SELECT c.relkind::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&config.namespace, &config.relation],
            )
            .await
            .map_err(|e| db_error(&label, &e))?;
        let relkind: String = match kind {
            None => {
                return Err(ConnectorError::unreachable(
                    &label,
                    "no such table or view (or not visible to this user)",
                ));
            }
            Some(row) => row.try_get(0).map_err(|e| db_error(&label, &e))?,
        };
        if !matches!(relkind.as_str(), "r" | "p" | "v" | "m" | "f") {
            return Err(ConnectorError::Config(format!(
                "{label} is not a table or view"
            )));
        }
        let probe = conn
            .client
            .prepare(&format!("SELECT * FROM {label}"))
            .await
            .map_err(|e| db_error(&label, &e))?;
        let found: Vec<(String, Type)> = probe
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_().clone()))
            .collect();
        drop(conn);
        let mapped = |name: &str, t: &Type| {
            map_type(t).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "column `{}` of {label} has PostgreSQL type `{}`, which the connector cannot \
                     expose (supported: int2, int4, int8, float4, float8, numeric, text, varchar, \
                     bool, timestamp, timestamptz, date)",
                    snippet(name),
                    t.name()
                ))
            })
        };
        let mut columns = Vec::new();
        match &config.schema {
            Some(declared) => {
                for f in declared {
                    let Some((_, t)) = found.iter().find(|(n, _)| n == &f.name) else {
                        return Err(ConnectorError::mismatch(
                            &label,
                            &f.name,
                            "declared, but the relation has no such column",
                        ));
                    };
                    let (field_type, kind, cast) = mapped(&f.name, t)?;
                    if field_type != f.field_type {
                        return Err(ConnectorError::mismatch(
                            &label,
                            &f.name,
                            format!(
                                "declared {}, the relation has `{}` ({field_type})",
                                f.field_type,
                                t.name()
                            ),
                        ));
                    }
                    columns.push(Column {
                        sql: SqlColumn {
                            name: f.name.clone(),
                            field_type,
                            cast,
                        },
                        kind,
                        nullable: f.nullable,
                        read_type: if cast.is_some() {
                            Type::FLOAT8
                        } else {
                            t.clone()
                        },
                    });
                }
            }
            None => {
                for (name, t) in &found {
                    check_identifier("column", name)?;
                    let (field_type, kind, cast) = mapped(name, t)?;
                    columns.push(Column {
                        sql: SqlColumn {
                            name: name.clone(),
                            field_type,
                            cast,
                        },
                        kind,
                        nullable: true,
                        read_type: if cast.is_some() {
                            Type::FLOAT8
                        } else {
                            t.clone()
                        },
                    });
                }
            }
        }
        let Some(cursor) = columns.iter().position(|c| c.sql.name == cursor_name) else {
            return Err(ConnectorError::Config(format!(
                "cursor column `{cursor_name}` is not in the schema"
            )));
        };
        if !matches!(
            columns[cursor].sql.field_type,
            FieldType::Int64 | FieldType::Timestamp | FieldType::String
        ) {
            return Err(ConnectorError::Config(format!(
                "cursor column `{cursor_name}` must be int64, timestamp or string"
            )));
        }
        let specs: Vec<FieldSpec> = columns
            .iter()
            .map(|c| FieldSpec {
                name: c.sql.name.clone(),
                field_type: c.sql.field_type,
                nullable: c.nullable,
            })
            .collect();
        let schema = build_schema(
            &specs,
            config.subject_column.as_deref(),
            &config.identifier_columns,
        )?;
        let description = ConnectorDescription {
            kind: "postgres".into(),
            source: format!("postgresql relation {label}"),
            schema,
            subject_column: config.subject_column.clone(),
            identifier_columns: config.identifier_columns.clone(),
            cursor_column: Some(cursor_name),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                roots,
                description,
                columns,
                cursor,
                label,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The statement a read of `request` sends (for tests and diagnostics).
    pub fn statement(&self, request: &ReadRequest) -> Result<sql::Statement, ConnectorError> {
        let from = self.inner.from(request.since.as_ref())?;
        Ok(self.inner.statement(from.as_ref().map(|f| &f.0), request))
    }
}

/// Where a resumed read starts, and how many rows of that value it skips.
type Resume = (sql::From, CursorValue, u64);

impl Inner {
    fn sql_columns(&self) -> Vec<SqlColumn> {
        self.columns.iter().map(|c| c.sql.clone()).collect()
    }

    fn statement(&self, from: Option<&sql::From>, request: &ReadRequest) -> sql::Statement {
        sql::select(
            &self.config.namespace,
            &self.config.relation,
            &self.sql_columns(),
            self.cursor,
            from,
            &request.pushdown,
        )
    }

    /// The resume point of a cursor of this source.
    fn from(&self, since: Option<&Cursor>) -> Result<Option<Resume>, ConnectorError> {
        let Some(since) = since else { return Ok(None) };
        let c = &self.columns[self.cursor];
        let Cursor::Column {
            column,
            value,
            count,
        } = since
        else {
            return Err(ConnectorError::InvalidCursor(format!(
                "{} is resumed by column `{}`, not by position",
                self.label, c.sql.name
            )));
        };
        if column != &c.sql.name {
            return Err(ConnectorError::InvalidCursor(format!(
                "the cursor follows column `{}`, this source follows `{}`",
                snippet(column),
                c.sql.name
            )));
        }
        let param = match (c.sql.field_type, value) {
            (FieldType::Int64, CursorValue::Int(v)) => Some(SqlParam::Int(*v)),
            (FieldType::Timestamp, CursorValue::Int(v)) => SqlParam::timestamp_micros(*v),
            (FieldType::String, CursorValue::Text(v)) => Some(SqlParam::Text(v.clone())),
            _ => None,
        };
        let Some(param) = param else {
            return Err(ConnectorError::InvalidCursor(format!(
                "the cursor's value does not fit column `{}`",
                c.sql.name
            )));
        };
        Ok(Some((
            sql::From {
                column: self.cursor,
                value: param,
            },
            value.clone(),
            *count,
        )))
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Micros(i64),
}

fn micros(t: OffsetDateTime) -> Option<i64> {
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// Reads one value; `Err` names why it cannot be read.
fn cell(row: &Row, i: usize, kind: Kind) -> Result<Cell, String> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        i: usize,
    ) -> Result<Option<T>, String> {
        row.try_get::<_, Option<T>>(i).map_err(|e| {
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string())
        })
    }
    let cell = match kind {
        Kind::I16 => get::<i16>(row, i)?.map(|v| Cell::Int(v.into())),
        Kind::I32 => get::<i32>(row, i)?.map(|v| Cell::Int(v.into())),
        Kind::I64 => get::<i64>(row, i)?.map(Cell::Int),
        Kind::F32 => get::<f32>(row, i)?.map(|v| Cell::Float(v.into())),
        Kind::F64 => get::<f64>(row, i)?.map(Cell::Float),
        Kind::Text => get::<&str>(row, i)?.map(|v| Cell::Text(v.to_owned())),
        Kind::Bool => get::<bool>(row, i)?.map(Cell::Bool),
        Kind::Timestamp => match get::<PrimitiveDateTime>(row, i)? {
            None => None,
            Some(t) => Some(Cell::Micros(
                micros(t.assume_utc()).ok_or("the timestamp is out of range")?,
            )),
        },
        Kind::TimestampTz => match get::<OffsetDateTime>(row, i)? {
            None => None,
            Some(t) => Some(Cell::Micros(
                micros(t).ok_or("the timestamp is out of range")?,
            )),
        },
        Kind::Date => match get::<Date>(row, i)? {
            None => None,
            Some(d) => Some(Cell::Micros(
                micros(d.midnight().assume_utc()).ok_or("the date is out of range")?,
            )),
        },
    };
    Ok(cell.unwrap_or(Cell::Null))
}

/// Column builders of one batch.
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
    Bool(BooleanBuilder),
    Micros(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(t: FieldType) -> Self {
        match t {
            FieldType::Int64 => Builder::Int(Int64Builder::new()),
            FieldType::Float64 => Builder::Float(Float64Builder::new()),
            FieldType::String => Builder::Text(StringBuilder::new()),
            FieldType::Bool => Builder::Bool(BooleanBuilder::new()),
            FieldType::Timestamp => Builder::Micros(
                TimestampMicrosecondBuilder::new().with_timezone(TIMESTAMP_TIMEZONE),
            ),
        }
    }

    /// Appends a checked value (its variant fits the column's type).
    fn push(&mut self, c: Cell) {
        match (self, c) {
            (Builder::Int(b), Cell::Int(v)) => b.append_value(v),
            (Builder::Float(b), Cell::Float(v)) => b.append_value(v),
            (Builder::Text(b), Cell::Text(v)) => b.append_value(v),
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Builder::Micros(b), Cell::Micros(v)) => b.append_value(v),
            (Builder::Int(b), _) => b.append_null(),
            (Builder::Float(b), _) => b.append_null(),
            (Builder::Text(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
            (Builder::Micros(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Micros(b) => Arc::new(b.finish()),
        }
    }
}

/// The rows of the batch being built and the cursor after them.
struct Batcher {
    schema: SchemaRef,
    projected: SchemaRef,
    indices: Vec<usize>,
    builders: Vec<Builder>,
    rows: usize,
}

impl Batcher {
    fn new(inner: &Inner, projected: SchemaRef, indices: Vec<usize>) -> Self {
        Self {
            schema: inner.description.schema.clone(),
            projected,
            indices,
            builders: inner
                .columns
                .iter()
                .map(|c| Builder::new(c.sql.field_type))
                .collect(),
            rows: 0,
        }
    }

    fn push(&mut self, cells: Vec<Cell>) {
        for (b, c) in self.builders.iter_mut().zip(cells) {
            b.push(c);
        }
        self.rows += 1;
    }

    /// The rows so far as a projected batch, if any.
    fn take(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let full = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| ConnectorError::Internal(format!("cannot build a batch: {e}")))?;
        let projected = full
            .project(&self.indices)
            .map_err(|e| ConnectorError::Internal(format!("cannot project a batch: {e}")))?;
        RecordBatch::try_new(self.projected.clone(), projected.columns().to_vec())
            .map(Some)
            .map_err(|e| ConnectorError::Internal(format!("cannot build a batch: {e}")))
    }
}

/// The cursor column's greatest value so far and how many rows carried it.
#[derive(Debug, Clone)]
struct Position {
    column: String,
    value: Option<(CursorValue, u64)>,
}

impl Position {
    fn advance(&mut self, v: CursorValue) {
        match &mut self.value {
            Some((cur, count)) if *cur == v => *count += 1,
            _ => self.value = Some((v, 1)),
        }
    }

    fn cursor(&self) -> Option<Cursor> {
        self.value.as_ref().map(|(value, count)| Cursor::Column {
            column: self.column.clone(),
            value: value.clone(),
            count: *count,
        })
    }
}

fn cursor_value(c: &Cell) -> Option<CursorValue> {
    match c {
        Cell::Int(v) | Cell::Micros(v) => Some(CursorValue::Int(*v)),
        Cell::Text(v) => Some(CursorValue::Text(v.clone())),
        _ => None,
    }
}

/// What the reader thread holds once the source is open.
struct Open {
    conn: Connection,
    statement: tokio_postgres::Statement,
    params: Vec<SqlParam>,
    resume: Option<(CursorValue, u64)>,
}

impl Inner {
    /// Checks a row: every value readable, required columns filled.
    fn row_cells(&self, row: &Row) -> (Vec<Cell>, Option<String>) {
        let mut cells = Vec::with_capacity(self.columns.len());
        let mut problem = None;
        for (i, c) in self.columns.iter().enumerate() {
            let value = match cell(row, i, c.kind) {
                Ok(v) => v,
                Err(reason) => {
                    problem.get_or_insert_with(|| {
                        format!("column `{}`: cannot read the value: {reason}", c.sql.name)
                    });
                    Cell::Null
                }
            };
            let required =
                !c.nullable || self.description.subject_column.as_deref() == Some(&c.sql.name);
            if value == Cell::Null && required && problem.is_none() {
                problem = Some(format!("column `{}` is empty", c.sql.name));
            }
            cells.push(value);
        }
        (cells, problem)
    }

    fn run(
        &self,
        rt: &tokio::runtime::Handle,
        open: Open,
        request: &ReadRequest,
        projected: SchemaRef,
        indices: Vec<usize>,
        sink: &ReadSink,
    ) -> Result<ReadSummary, ConnectorError> {
        let label = &self.label;
        let fetch = i32::try_from(request.batch_size).unwrap_or(i32::MAX);
        let Open {
            mut conn,
            statement,
            params,
            resume,
        } = open;
        let tx = rt
            .block_on(conn.client.build_transaction().read_only(true).start())
            .map_err(|e| db_error(label, &e))?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let portal = rt
            .block_on(tx.bind(&statement, &refs))
            .map_err(|e| db_error(label, &e))?;
        let mut position = Position {
            column: self.columns[self.cursor].sql.name.clone(),
            value: resume.clone(),
        };
        let (mut skip_value, mut skip) = match resume {
            Some((v, n)) => (Some(v), n),
            None => (None, 0),
        };
        let mut batcher = Batcher::new(self, projected, indices);
        let (mut rows_read, mut rows_broken, mut ordinal) = (0u64, 0u64, 0u64);
        let mut complete = true;
        'fetch: loop {
            if sink.is_cancelled() {
                complete = false;
                break;
            }
            let rows = rt.block_on(tx.query_portal(&portal, fetch)).map_err(|e| {
                ConnectorError::source(label, format!("the read broke off: {}", describe(&e)))
            })?;
            sink.progress().add_scanned(rows.len() as u64);
            let exhausted = rows.len() < request.batch_size;
            let n = rows.len();
            for (k, row) in rows.into_iter().enumerate() {
                let (cells, problem) = self.row_cells(&row);
                let value = cursor_value(&cells[self.cursor]);
                if skip > 0 {
                    if value.is_some() && value == skip_value {
                        skip -= 1;
                        continue;
                    }
                    skip = 0;
                    skip_value = None;
                }
                if problem.is_none() && request.max_rows.is_some_and(|m| rows_read >= m) {
                    complete = false;
                    break 'fetch;
                }
                ordinal += 1;
                match problem {
                    Some(reason) => {
                        // The rows before the broken one go out first, with the cursor before it.
                        if let Some(batch) = batcher.take()?
                            && let Some(cursor) = position.cursor()
                        {
                            rows_read += batch.num_rows() as u64;
                            if sink.send(ReadItem::Batch { batch, cursor }).is_err() {
                                return Ok(summary(rows_read, rows_broken, &position, false));
                            }
                        }
                        let at = value
                            .as_ref()
                            .map(|v| format!(" (`{}` = `{v}`)", position.column))
                            .unwrap_or_default();
                        if let Some(v) = value {
                            position.advance(v);
                        }
                        rows_broken += 1;
                        let broken = BrokenRow {
                            file: label.clone(),
                            row: ordinal,
                            line: None,
                            reason: format!("{reason}{at}"),
                        };
                        if sink.send(ReadItem::Broken(broken)).is_err() {
                            return Ok(summary(rows_read, rows_broken, &position, false));
                        }
                    }
                    None => {
                        if let Some(v) = value {
                            position.advance(v);
                        }
                        batcher.push(cells);
                        let full = batcher.rows >= request.batch_size;
                        let capped = request
                            .max_rows
                            .is_some_and(|m| rows_read + batcher.rows as u64 >= m);
                        if (full || capped)
                            && let Some(batch) = batcher.take()?
                            && let Some(cursor) = position.cursor()
                        {
                            rows_read += batch.num_rows() as u64;
                            if sink.send(ReadItem::Batch { batch, cursor }).is_err() {
                                return Ok(summary(rows_read, rows_broken, &position, false));
                            }
                            if capped {
                                // More rows may follow unless this was the source's last.
                                complete = exhausted && k + 1 == n;
                                break 'fetch;
                            }
                        }
                    }
                }
            }
            if exhausted {
                break;
            }
        }
        if let Some(batch) = batcher.take()?
            && let Some(cursor) = position.cursor()
        {
            rows_read += batch.num_rows() as u64;
            if sink.send(ReadItem::Batch { batch, cursor }).is_err() {
                return Ok(summary(rows_read, rows_broken, &position, false));
            }
        }
        // Read-only: nothing to keep. Closing the portal with the transaction.
        let _ = rt.block_on(tx.rollback());
        conn.task.abort();
        Ok(summary(rows_read, rows_broken, &position, complete))
    }
}

fn summary(rows_read: u64, rows_broken: u64, position: &Position, complete: bool) -> ReadSummary {
    ReadSummary {
        rows_read,
        rows_broken,
        cursor: position.cursor(),
        complete,
    }
}

impl Connector for PostgresConnector {
    fn describe(&self) -> &ConnectorDescription {
        &self.inner.description
    }

    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<ReadStream, ConnectorError>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            let (projected, indices) = request.resolve(&inner.description.schema)?;
            let resume = inner.from(request.since.as_ref())?;
            let statement = inner.statement(resume.as_ref().map(|r| &r.0), &request);
            let rt = tokio::runtime::Handle::current();
            let conn = connect(&inner.config, &inner.roots, &inner.label).await?;
            let prepared = conn
                .client
                .prepare(&statement.sql)
                .await
                .map_err(|e| db_error(&inner.label, &e))?;
            for (c, col) in prepared.columns().iter().zip(&inner.columns) {
                if c.type_() != &col.read_type {
                    return Err(ConnectorError::mismatch(
                        &inner.label,
                        &col.sql.name,
                        format!(
                            "the relation changed: the column is now `{}`",
                            c.type_().name()
                        ),
                    ));
                }
            }
            let open = Open {
                conn,
                statement: prepared,
                params: statement.params,
                resume: resume.map(|(_, v, n)| (v, n)),
            };
            let reader = inner.clone();
            spawn_reader(
                projected.clone(),
                move |_| Ok(open),
                move |open, sink| reader.run(&rt, open, &request, projected, indices, sink),
            )
            .await
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<HealthReport, ConnectorError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let conn = connect(&inner.config, &inner.roots, &inner.label).await?;
            let statement = inner.statement(None, &ReadRequest::new());
            let prepared = conn
                .client
                .prepare(&statement.sql)
                .await
                .map_err(|e| db_error(&inner.label, &e))?;
            for (c, col) in prepared.columns().iter().zip(&inner.columns) {
                if c.type_() != &col.read_type {
                    return Err(ConnectorError::mismatch(
                        &inner.label,
                        &col.sql.name,
                        format!("the column is now `{}`", c.type_().name()),
                    ));
                }
            }
            Ok(HealthReport {
                detail: format!(
                    "postgresql relation {}, {} columns",
                    inner.label,
                    inner.columns.len()
                ),
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_scrubbed_from_messages() {
        let secret = "host=db user=u password=hunter2 dbname=x";
        let m = scrub(
            &format!("failed: {secret} and hunter2"),
            secret,
            Some("hunter2"),
        );
        assert!(!m.contains("hunter2"), "{m}");
        assert_eq!(m, "failed: *** and ***");
    }

    #[test]
    fn config_json_round_trips_and_refuses_unknown_fields() {
        let c = PostgresConfig::new("/srv/s/pg.secret", "public", "readings", "id");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<PostgresConfig>(&json).unwrap(), c);
        let bad = r#"{"secret_file":"/a","relation":"r","password":"x"}"#;
        assert!(serde_json::from_str::<PostgresConfig>(bad).is_err());
        let tls: PostgresConfig = serde_json::from_str(
            r#"{"secret_file":"/a","relation":"r","tls":"verify-full","ca_file":"/ca.pem"}"#,
        )
        .unwrap();
        assert_eq!(tls.tls, TlsMode::VerifyFull);
        assert_eq!(tls.namespace, "public");
    }
}
