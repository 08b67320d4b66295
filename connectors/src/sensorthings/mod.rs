//! The OGC SensorThings API connector: observations of one or more datastreams of a
//! SensorThings API v1.1 service (FROST-style), read over HTTP or HTTPS and served as a dataset.
//!
//! A read fetches each configured datastream's entity (`Datastreams(id)?$expand=Thing,Sensor`)
//! and pages through its `Datastreams(id)/Observations` with
//! `$filter` (the time range: the resume cursor and the read's pushed-down comparisons on the
//! cursor column), `$orderby=phenomenonTime asc,@iot.id asc` and `$top`, following
//! `@iot.nextLink`. The datastreams' observations are merged by `(phenomenonTime, position of
//! the datastream in the configuration)`, so the rows come in one order and the cursor
//! (`phenomenonTime` and how many rows carried it) resumes exactly.
//!
//! Columns are mapped explicitly (`columns`: column → path): `observation.phenomenonTime`
//! (the cursor column, a timestamp; an interval counts by its start), `observation.resultTime`,
//! `observation.result`, `observation.@iot.id`, `observation.parameters.<key>`,
//! `datastream.@iot.id`, `datastream.name`, `datastream.unitOfMeasurement.symbol`,
//! `thing.name`, `thing.properties.<key>`, `sensor.name`, … (any dotted path into those
//! entities). Every declared column must be mapped and every mapping must name a declared
//! column.
//!
//! A hostile or broken server cannot make a read hang, grow without bound or leave its service:
//! - a `@iot.nextLink` to a page already read (itself included) stops the read with an error,
//!   and so does a datastream needing more than `max_pages` pages;
//! - a `@iot.nextLink` to another scheme, host, port or path is refused (it must stay on the
//!   configured service and datastream);
//! - a page larger than `max_page_bytes` is refused without reading more than that;
//! - a non-2xx answer, malformed JSON, a page without a `value` array, or observations out of
//!   `phenomenonTime` order fail the read with an error naming the datastream and the page;
//!   rows of earlier pages may have been streamed, and the release pipeline then completes the
//!   release as failed (never as complete);
//! - an observation that is not an object or whose values do not fit the declared columns (a
//!   text `result` in a `float64` column, a missing required value, an unreadable time) is a
//!   broken row: skipped, counted and reported with the datastream and the observation id.
//!
//! The host must be in the node's `sources.http_hosts` (checked by
//! [`SourceRoots::check_http_host`] before every connect); the CA file of an `https://` service
//! is read through the node's source roots.

pub mod http;
mod server;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use server::{Fault, SensorThingsServer, ServerDatastream, ServerObservation};

use self::http::{Client, HttpFailure, ServiceUrl, encode_query_value};
use crate::confine::SourceRoots;
use crate::connector::{
    BrokenRow, Connector, ConnectorDescription, Cursor, CursorValue, HealthReport, Predicate,
    PredicateOp, PredicateValue, ReadItem, ReadRequest, ReadSink, ReadStream, ReadSummary,
    spawn_reader,
};
use crate::error::{ConnectorError, snippet};
use crate::files::rows::JsonRows;
use crate::schema::{FieldSpec, FieldType, build_schema};

/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1 << 20;
/// Largest accepted `max_page_bytes`.
pub const MAX_PAGE_BYTES_LIMIT: usize = 64 << 20;
/// Largest accepted `page_size` (`$top`).
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// Largest datastream entity read (`Datastreams(id)`).
const MAX_ENTITY_BYTES: usize = 1 << 20;
/// Most datastreams per source.
pub const MAX_DATASTREAMS: usize = 256;
/// The path of the cursor column's source.
const PHENOMENON_TIME: &str = "observation.phenomenonTime";

fn default_page_size() -> u32 {
    1000
}
fn default_max_pages() -> u32 {
    100_000
}
fn default_max_page_bytes() -> usize {
    16 << 20
}
fn default_timeout() -> u64 {
    30
}

/// A datastream's `@iot.id`: a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntityId {
    /// `Datastreams(5)`.
    Int(i64),
    /// `Datastreams('abc')`.
    Text(String),
}

impl EntityId {
    /// The id as written in a resource path.
    fn key(&self) -> String {
        match self {
            EntityId::Int(v) => v.to_string(),
            EntityId::Text(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }

    fn check(&self) -> Result<(), ConnectorError> {
        match self {
            EntityId::Int(_) => Ok(()),
            EntityId::Text(s)
                if !s.is_empty()
                    && s.len() <= 256
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
            {
                Ok(())
            }
            EntityId::Text(s) => Err(ConnectorError::Config(format!(
                "datastream id `{}` must be a number or 1 to 256 of `A-Za-z0-9-_.:`",
                snippet(s)
            ))),
        }
    }
}

/// Configuration of a SensorThings source (JSON in a registration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorThingsConfig {
    /// The service root, e.g. `https://sta.swm.example/FROST-Server/v1.1`; the host must be in
    /// the node's `sources.http_hosts`.
    pub service: String,
    /// The datastreams read (their `@iot.id`s), merged into one dataset.
    pub datastreams: Vec<EntityId>,
    /// Column → source path (see the module docs); every declared column, explicitly.
    pub columns: BTreeMap<String, String>,
    /// CA certificates (PEM) an `https://` service is verified against, read through the node's
    /// source roots (required with `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Observations per page (`$top`).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Most pages read per datastream and read; a server linking on and on is stopped there.
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
    /// Largest page (response body) accepted, in bytes.
    #[serde(default = "default_max_page_bytes")]
    pub max_page_bytes: usize,
    /// Longest wait for one page, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Declared columns (the dataset's, by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// Column holding the data-subject id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_column: Option<String>,
    /// Other identifying columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier_columns: Vec<String>,
    /// The timestamp column mapped to `observation.phenomenonTime`; reads are ordered and
    /// resumed by it.
    pub cursor_column: Option<String>,
}

impl SensorThingsConfig {
    /// A configuration reading `datastreams` of `service` into `columns` (cursor on
    /// `cursor_column`).
    pub fn new(
        service: &str,
        datastreams: Vec<EntityId>,
        columns: BTreeMap<String, String>,
        cursor_column: &str,
    ) -> Self {
        Self {
            service: service.into(),
            datastreams,
            columns,
            ca_file: None,
            page_size: default_page_size(),
            max_pages: default_max_pages(),
            max_page_bytes: default_max_page_bytes(),
            timeout_secs: default_timeout(),
            schema: None,
            subject_column: None,
            identifier_columns: Vec::new(),
            cursor_column: Some(cursor_column.into()),
        }
    }

    /// Checks what can be checked without the network; returns the service root.
    pub fn check(&self, roots: &SourceRoots) -> Result<ServiceUrl, ConnectorError> {
        let service = ServiceUrl::parse(&self.service).map_err(|why| {
            ConnectorError::Config(format!("service `{}` {why}", snippet(&self.service)))
        })?;
        if service.query.is_some() {
            return Err(ConnectorError::Config(format!(
                "service `{}` must not carry a query",
                snippet(&self.service)
            )));
        }
        roots.check_http_host(&service.host)?;
        if self.datastreams.is_empty() || self.datastreams.len() > MAX_DATASTREAMS {
            return Err(ConnectorError::Config(format!(
                "a sensorthings source reads 1 to {MAX_DATASTREAMS} datastreams"
            )));
        }
        let mut seen = HashSet::new();
        for d in &self.datastreams {
            d.check()?;
            if !seen.insert(d.key()) {
                return Err(ConnectorError::Config(format!(
                    "datastream `{}` is named twice",
                    d.key()
                )));
            }
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            return Err(ConnectorError::Config(format!(
                "`page_size` must be between 1 and {MAX_PAGE_SIZE}, not {}",
                self.page_size
            )));
        }
        if self.max_pages == 0 {
            return Err(ConnectorError::Config(
                "`max_pages` must be at least 1".into(),
            ));
        }
        if self.max_page_bytes < 1024 || self.max_page_bytes > MAX_PAGE_BYTES_LIMIT {
            return Err(ConnectorError::Config(format!(
                "`max_page_bytes` must be between 1024 and {MAX_PAGE_BYTES_LIMIT}, not {}",
                self.max_page_bytes
            )));
        }
        if self.timeout_secs == 0 || self.timeout_secs > 600 {
            return Err(ConnectorError::Config(
                "`timeout_secs` must be between 1 and 600".into(),
            ));
        }
        if service.tls && self.ca_file.is_none() {
            return Err(ConnectorError::Config(
                "an `https://` service needs `ca_file`".into(),
            ));
        }
        if !service.tls && self.ca_file.is_some() {
            return Err(ConnectorError::Config(
                "`ca_file` is only used with an `https://` service".into(),
            ));
        }
        Ok(service)
    }

    /// The TLS client configuration (ring), if the service is `https://`.
    fn tls(
        &self,
        roots: &SourceRoots,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, ConnectorError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let file = roots.open(path, &path.display().to_string())?;
        let mut pem = Vec::new();
        file.take(MAX_CA_BYTES + 1)
            .read_to_end(&mut pem)
            .map_err(|e| ConnectorError::Config(format!("cannot read the CA file: {e}")))?;
        if pem.len() as u64 > MAX_CA_BYTES {
            return Err(ConnectorError::Config(format!(
                "the CA file is larger than {MAX_CA_BYTES} bytes"
            )));
        }
        crate::postgres::tls::client_config(&pem).map(Some)
    }
}

/// Which entity a column's path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entity {
    Observation,
    Datastream,
    Thing,
    Sensor,
}

/// One mapped column.
#[derive(Debug, Clone)]
struct Column {
    entity: Entity,
    /// The path's segments inside the entity (`@iot.id` is one segment).
    path: Vec<String>,
    /// `observation.phenomenonTime` (an interval is read as its start).
    phenomenon: bool,
}

fn parse_path(column: &str, path: &str) -> Result<Column, ConnectorError> {
    let bad = |why: &str| {
        ConnectorError::Config(format!(
            "column `{}`: path `{}` {why}",
            snippet(column),
            snippet(path)
        ))
    };
    let (head, rest) = path
        .split_once('.')
        .ok_or_else(|| bad("must name an entity and a property"))?;
    let entity = match head {
        "observation" => Entity::Observation,
        "datastream" => Entity::Datastream,
        "thing" => Entity::Thing,
        "sensor" => Entity::Sensor,
        _ => {
            return Err(bad(
                "must start with `observation.`, `datastream.`, `thing.` or `sensor.`",
            ));
        }
    };
    let mut segments = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let (seg, after) = if let Some(after) = rest.strip_prefix("@iot.id") {
            ("@iot.id", after)
        } else {
            match rest.find('.') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            }
        };
        if seg.is_empty() || seg.len() > 128 {
            return Err(bad("has an empty or overlong segment"));
        }
        segments.push(seg.to_owned());
        rest = match after.strip_prefix('.') {
            Some(r) if !r.is_empty() => r,
            Some(_) => return Err(bad("ends with `.`")),
            None if after.is_empty() => "",
            None => return Err(bad("is malformed")),
        };
    }
    if segments.is_empty() {
        return Err(bad("must name an entity and a property"));
    }
    if segments.len() > 8 {
        return Err(bad("is deeper than 8 segments"));
    }
    Ok(Column {
        entity,
        phenomenon: path == PHENOMENON_TIME,
        path: segments,
    })
}

fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Option<&'a Value> {
    for seg in path {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

/// A SensorThings service's observations as a [`Connector`].
#[derive(Clone)]
pub struct SensorThingsConnector {
    inner: Arc<Inner>,
}

struct Inner {
    description: ConnectorDescription,
    config: SensorThingsConfig,
    service: ServiceUrl,
    client: Client,
    fields: Vec<FieldSpec>,
    columns: Vec<Column>,
    /// Index of the cursor column in the schema.
    cursor: usize,
}

impl std::fmt::Debug for SensorThingsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensorThingsConnector")
            .field("service", &self.inner.service.to_string())
            .finish_non_exhaustive()
    }
}

impl SensorThingsConnector {
    /// Checks `config` (host allowed, CA file readable through `roots`, columns mapped against
    /// the declared schema) and fetches every datastream once (reachable, exists).
    pub async fn open(
        config: SensorThingsConfig,
        roots: SourceRoots,
    ) -> Result<Self, ConnectorError> {
        let connector = Self::configure(config, roots)?;
        connector.fetch_datastreams().await?;
        Ok(connector)
    }

    /// Checks `config` without the network.
    pub fn configure(
        config: SensorThingsConfig,
        roots: SourceRoots,
    ) -> Result<Self, ConnectorError> {
        let service = config.check(&roots)?;
        let tls = config.tls(&roots)?;
        let fields = config.schema.clone().ok_or_else(|| {
            ConnectorError::Config("a sensorthings source needs its declared schema".into())
        })?;
        let cursor_column = config.cursor_column.clone().ok_or_else(|| {
            ConnectorError::Config(
                "a sensorthings source needs its cursor column (`cursor_column`, mapped to \
                 `observation.phenomenonTime`)"
                    .into(),
            )
        })?;
        let mut columns = Vec::with_capacity(fields.len());
        for f in &fields {
            let path = config.columns.get(&f.name).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "declared column `{}` is not mapped (`columns`)",
                    snippet(&f.name)
                ))
            })?;
            columns.push(parse_path(&f.name, path)?);
        }
        if let Some(extra) = config
            .columns
            .keys()
            .find(|k| !fields.iter().any(|f| &f.name == *k))
        {
            return Err(ConnectorError::Config(format!(
                "mapped column `{}` is not declared",
                snippet(extra)
            )));
        }
        let cursor = fields
            .iter()
            .position(|f| f.name == cursor_column)
            .ok_or_else(|| {
                ConnectorError::Config(format!(
                    "cursor column `{}` is not declared",
                    snippet(&cursor_column)
                ))
            })?;
        if !columns[cursor].phenomenon || fields[cursor].field_type != FieldType::Timestamp {
            return Err(ConnectorError::Config(format!(
                "cursor column `{cursor_column}` must be a timestamp mapped to \
                 `{PHENOMENON_TIME}`"
            )));
        }
        if config.subject_column.as_deref() == Some(cursor_column.as_str())
            || config.identifier_columns.contains(&cursor_column)
        {
            return Err(ConnectorError::Config(format!(
                "cursor column `{cursor_column}` cannot identify anyone"
            )));
        }
        let schema = build_schema(
            &fields,
            config.subject_column.as_deref(),
            &config.identifier_columns,
        )?;
        let client = Client::new(roots, tls, Duration::from_secs(config.timeout_secs));
        Ok(Self {
            inner: Arc::new(Inner {
                description: ConnectorDescription {
                    kind: "sensorthings".into(),
                    source: format!(
                        "sensorthings `{service}` ({} datastreams)",
                        config.datastreams.len()
                    ),
                    schema,
                    subject_column: config.subject_column.clone(),
                    identifier_columns: config.identifier_columns.clone(),
                    cursor_column: Some(cursor_column),
                },
                service,
                client,
                fields,
                columns,
                cursor,
                config,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SensorThingsConfig {
        &self.inner.config
    }

    /// Every datastream's entity with its Thing and Sensor.
    async fn fetch_datastreams(&self) -> Result<Vec<Value>, ConnectorError> {
        let inner = &self.inner;
        let mut out = Vec::with_capacity(inner.config.datastreams.len());
        for d in &inner.config.datastreams {
            let label = format!("Datastreams({})", d.key());
            let url = ServiceUrl {
                path: format!("{}/{label}", inner.service.path.trim_end_matches('/')),
                query: Some(format!("$expand={}", encode_query_value("Thing,Sensor"))),
                ..inner.service.clone()
            };
            let body = inner.page(&url, &label, MAX_ENTITY_BYTES).await?;
            let entity: Value = serde_json::from_slice(&body).map_err(|e| {
                ConnectorError::source(&label, format!("the entity is not JSON: {e}"))
            })?;
            if !entity.is_object() {
                return Err(ConnectorError::source(
                    &label,
                    "the entity is not an object",
                ));
            }
            out.push(entity);
        }
        Ok(out)
    }
}

impl Inner {
    /// GETs one page; non-2xx answers and transport failures name `what`.
    async fn page(
        &self,
        url: &ServiceUrl,
        what: &str,
        limit: usize,
    ) -> Result<bytes::Bytes, ConnectorError> {
        match self.client.get(url, limit).await {
            Ok(r) if (200..300).contains(&r.status) => Ok(r.body),
            Ok(r) => Err(ConnectorError::source(
                what,
                format!("the service answered {} {}", r.status, r.reason),
            )),
            Err(HttpFailure::Refused(e)) => Err(e),
            Err(HttpFailure::TooLarge(n)) => Err(ConnectorError::source(
                what,
                format!("the answer is larger than {n} bytes (`max_page_bytes`); refused"),
            )),
            Err(HttpFailure::Transport(why)) => Err(ConnectorError::unreachable(
                format!("{} {what}", self.service),
                why,
            )),
        }
    }

    /// The `$filter` of a read: from the resume point and the pushed-down comparisons on the
    /// cursor column.
    fn filter(&self, from: Option<i64>, pushdown: &[Predicate]) -> Option<String> {
        let column = &self.fields[self.cursor].name;
        let mut terms = Vec::new();
        if let Some(t) = from {
            terms.push(format!("phenomenonTime ge {}", iso(t)));
        }
        for p in pushdown.iter().filter(|p| &p.column == column) {
            let PredicateValue::TimestampMicros(t) = p.value else {
                continue;
            };
            let op = match p.op {
                PredicateOp::Gt => "gt",
                PredicateOp::Ge => "ge",
                PredicateOp::Lt => "lt",
                PredicateOp::Le => "le",
                PredicateOp::Eq => "eq",
                PredicateOp::Ne => continue,
            };
            terms.push(format!("phenomenonTime {op} {}", iso(t)));
        }
        (!terms.is_empty()).then(|| terms.join(" and "))
    }

    /// The first page of a datastream's observations.
    fn first_page(&self, datastream: &EntityId, filter: Option<&str>) -> ServiceUrl {
        let mut query = Vec::new();
        if let Some(f) = filter {
            query.push(format!("$filter={}", encode_query_value(f)));
        }
        query.push(format!(
            "$orderby={}",
            encode_query_value("phenomenonTime asc,@iot.id asc")
        ));
        query.push(format!("$top={}", self.config.page_size));
        ServiceUrl {
            path: format!(
                "{}/Datastreams({})/Observations",
                self.service.path.trim_end_matches('/'),
                datastream.key()
            ),
            query: Some(query.join("&")),
            ..self.service.clone()
        }
    }

    /// The resume point of `since`: the cursor column's value and how many rows carried it.
    fn resume(&self, since: Option<&Cursor>) -> Result<Option<(i64, u64)>, ConnectorError> {
        let column = &self.fields[self.cursor].name;
        match since {
            None => Ok(None),
            Some(Cursor::Column {
                column: c,
                value: CursorValue::Int(v),
                count,
            }) if c == column => Ok(Some((*v, *count))),
            Some(other) => Err(ConnectorError::InvalidCursor(format!(
                "`{}` is not a cursor of this sensorthings source (it resumes by `{column}`)",
                snippet(&other.to_string())
            ))),
        }
    }
}

/// Formats microseconds since the epoch as RFC 3339 UTC.
fn iso(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Parses an RFC 3339 time (or the start of an interval `start/end`) into microseconds.
fn micros_of(s: &str) -> Option<i64> {
    let start = s.split_once('/').map_or(s, |(a, _)| a);
    let t = OffsetDateTime::parse(start, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// One observation of a page, with its merge key.
struct Pending {
    /// `phenomenonTime` in microseconds; `None` if unreadable (a broken row then).
    time: Option<i64>,
    /// Merge key: `time`, or the previous observation's time of the same datastream.
    key: i64,
    value: Value,
}

/// Pages through one datastream's observations.
struct Pager {
    /// `Datastreams(id)`.
    label: String,
    /// The datastream's entity (with Thing and Sensor).
    entity: Value,
    /// The path every page must stay on.
    path: ServiceUrl,
    next: Option<ServiceUrl>,
    seen: HashSet<String>,
    pages: u32,
    buffer: VecDeque<Pending>,
    last_key: i64,
}

impl Pager {
    /// Makes sure an observation is buffered if the datastream has one more; returns its key.
    fn peek(
        &mut self,
        inner: &Inner,
        rt: &tokio::runtime::Handle,
        sink: &ReadSink,
    ) -> Result<Option<i64>, ConnectorError> {
        while self.buffer.is_empty() {
            let Some(url) = self.next.take() else {
                return Ok(None);
            };
            self.load(inner, rt, sink, url)?;
        }
        Ok(self.buffer.front().map(|p| p.key))
    }

    fn load(
        &mut self,
        inner: &Inner,
        rt: &tokio::runtime::Handle,
        sink: &ReadSink,
        url: ServiceUrl,
    ) -> Result<(), ConnectorError> {
        self.pages += 1;
        let what = format!("{}/Observations page {}", self.label, self.pages);
        if self.pages > inner.config.max_pages {
            return Err(ConnectorError::source(
                &self.label,
                format!(
                    "the service links on past {} pages (`max_pages`); stopped",
                    inner.config.max_pages
                ),
            ));
        }
        if !self.seen.insert(url.to_string()) {
            return Err(ConnectorError::source(
                &what,
                format!(
                    "the next link leads to a page already read (`{}`); stopped",
                    snippet(&url.to_string())
                ),
            ));
        }
        let body = rt.block_on(inner.page(&url, &what, inner.config.max_page_bytes))?;
        let page: Value = serde_json::from_slice(&body)
            .map_err(|e| ConnectorError::source(&what, format!("the page is not JSON: {e}")))?;
        drop(body);
        let Value::Object(mut page) = page else {
            return Err(ConnectorError::source(
                &what,
                "the page is not a JSON object",
            ));
        };
        let Some(Value::Array(values)) = page.remove("value") else {
            return Err(ConnectorError::source(
                &what,
                "the page has no `value` array",
            ));
        };
        self.next = match page.remove("@iot.nextLink") {
            None | Some(Value::Null) => None,
            Some(Value::String(link)) => Some(self.follow(&what, &link)?),
            Some(_) => {
                return Err(ConnectorError::source(
                    &what,
                    "`@iot.nextLink` is not a string",
                ));
            }
        };
        sink.progress().add_scanned(values.len() as u64);
        for value in values {
            let time = value
                .get("phenomenonTime")
                .and_then(Value::as_str)
                .and_then(micros_of);
            if let Some(t) = time {
                if t < self.last_key {
                    return Err(ConnectorError::source(
                        &what,
                        format!(
                            "observations are out of `phenomenonTime` order (`{}` after `{}`)",
                            iso(t),
                            iso(self.last_key)
                        ),
                    ));
                }
                self.last_key = t;
            }
            self.buffer.push_back(Pending {
                time,
                key: self.last_key,
                value,
            });
        }
        Ok(())
    }

    /// Checks a next link: absolute, same scheme, host, port and path as the first page.
    fn follow(&self, what: &str, link: &str) -> Result<ServiceUrl, ConnectorError> {
        let url = ServiceUrl::parse(link).map_err(|why| {
            ConnectorError::source(what, format!("the next link `{}` {why}", snippet(link)))
        })?;
        if !url.same_origin(&self.path) || url.path != self.path.path {
            return Err(ConnectorError::source(
                what,
                format!(
                    "the next link `{}` leaves the configured service and datastream; refused",
                    snippet(link)
                ),
            ));
        }
        Ok(url)
    }
}

/// The rows of a read being built.
struct Rows {
    builder: JsonRows,
    full: SchemaRef,
    projected: SchemaRef,
    indices: Vec<usize>,
}

impl Rows {
    fn take(&mut self) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.builder.is_empty() {
            return Ok(None);
        }
        let full = self.builder.finish(&self.full)?;
        let projected = full
            .project(&self.indices)
            .map_err(|e| ConnectorError::Internal(format!("cannot project a batch: {e}")))?;
        RecordBatch::try_new(self.projected.clone(), projected.columns().to_vec())
            .map(Some)
            .map_err(|e| ConnectorError::Internal(format!("cannot build a batch: {e}")))
    }
}

/// The cursor column's greatest value so far and how many rows carried it.
struct Position {
    column: String,
    value: Option<(i64, u64)>,
}

impl Position {
    fn advance(&mut self, t: i64) {
        match &mut self.value {
            Some((v, n)) if *v == t => *n += 1,
            _ => self.value = Some((t, 1)),
        }
    }

    fn cursor(&self) -> Option<Cursor> {
        self.value.map(|(v, n)| Cursor::Column {
            column: self.column.clone(),
            value: CursorValue::Int(v),
            count: n,
        })
    }

    fn summary(&self, rows_read: u64, rows_broken: u64, complete: bool) -> ReadSummary {
        ReadSummary {
            rows_read,
            rows_broken,
            cursor: self.cursor(),
            complete,
        }
    }
}

impl Inner {
    /// The row of `observation` of datastream `entity`, or why it is broken.
    fn row(&self, entity: &Value, p: &Pending) -> Result<Map<String, Value>, String> {
        if !p.value.is_object() {
            return Err("the observation is not a JSON object".into());
        }
        let mut row = Map::new();
        for (f, c) in self.fields.iter().zip(&self.columns) {
            let source = match c.entity {
                Entity::Observation => lookup(&p.value, &c.path),
                Entity::Datastream => lookup(entity, &c.path),
                Entity::Thing => entity.get("Thing").and_then(|t| lookup(t, &c.path)),
                Entity::Sensor => entity.get("Sensor").and_then(|s| lookup(s, &c.path)),
            };
            let value = match source {
                Some(Value::String(s)) if c.phenomenon => {
                    if p.time.is_none() {
                        return Err(format!(
                            "column `{}`: `{}` is not an RFC 3339 time",
                            f.name,
                            snippet(s)
                        ));
                    }
                    Value::String(s.split_once('/').map_or(s.as_str(), |(a, _)| a).to_owned())
                }
                Some(v) => v.clone(),
                None => Value::Null,
            };
            let required = !f.nullable || self.description.subject_column.as_ref() == Some(&f.name);
            if value.is_null() && required {
                return Err(format!("column `{}` has no value", f.name));
            }
            row.insert(f.name.clone(), value);
        }
        Ok(row)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        rt: &tokio::runtime::Handle,
        mut pagers: Vec<Pager>,
        resume: Option<(i64, u64)>,
        request: &ReadRequest,
        projected: SchemaRef,
        indices: Vec<usize>,
        sink: &ReadSink,
    ) -> Result<ReadSummary, ConnectorError> {
        let mut position = Position {
            column: self.fields[self.cursor].name.clone(),
            value: resume,
        };
        let (mut skip_time, mut skip) = match resume {
            Some((t, n)) => (Some(t), n),
            None => (None, 0),
        };
        let mut rows = Rows {
            builder: JsonRows::new(&self.fields)?,
            full: self.description.schema.clone(),
            projected,
            indices,
        };
        let (mut rows_read, mut rows_broken, mut ordinal) = (0u64, 0u64, 0u64);
        let cancelled = |rows_read, rows_broken, position: &Position| {
            Ok(position.summary(rows_read, rows_broken, false))
        };
        loop {
            if sink.is_cancelled() {
                return cancelled(rows_read, rows_broken, &position);
            }
            // The datastream whose next observation comes first (ties: configuration order).
            let mut best: Option<(i64, usize)> = None;
            for (i, pager) in pagers.iter_mut().enumerate() {
                if let Some(key) = pager.peek(self, rt, sink)?
                    && best.is_none_or(|(k, _)| key < k)
                {
                    best = Some((key, i));
                }
            }
            let Some((_, i)) = best else {
                break;
            };
            let pager = &mut pagers[i];
            let Some(p) = pager.buffer.pop_front() else {
                break;
            };
            if skip > 0 {
                if p.time.is_some() && p.time == skip_time {
                    skip -= 1;
                    continue;
                }
                skip = 0;
                skip_time = None;
            }
            let row = self.row(&pager.entity, &p);
            if row.is_ok() && request.max_rows.is_some_and(|m| rows_read >= m) {
                // Put it back: a later read starts here.
                pager.buffer.push_front(p);
                return Ok(position.summary(rows_read, rows_broken, false));
            }
            ordinal += 1;
            let pushed = match row {
                Ok(row) => rows.builder.push(&row),
                Err(e) => Err(e),
            };
            match pushed {
                Ok(()) => {
                    if let Some(t) = p.time {
                        position.advance(t);
                    }
                    let full = rows.builder.len() >= request.batch_size;
                    let capped = request
                        .max_rows
                        .is_some_and(|m| rows_read + rows.builder.len() as u64 >= m);
                    if (full || capped)
                        && let Some(batch) = rows.take()?
                        && let Some(cursor) = position.cursor()
                    {
                        rows_read += batch.num_rows() as u64;
                        if sink.send(ReadItem::Batch { batch, cursor }).is_err() {
                            return cancelled(rows_read, rows_broken, &position);
                        }
                    }
                }
                Err(reason) => {
                    // The rows before the broken one go out first, with the cursor before it.
                    if let Some(batch) = rows.take()?
                        && let Some(cursor) = position.cursor()
                    {
                        rows_read += batch.num_rows() as u64;
                        if sink.send(ReadItem::Batch { batch, cursor }).is_err() {
                            return cancelled(rows_read, rows_broken, &position);
                        }
                    }
                    if let Some(t) = p.time {
                        position.advance(t);
                    }
                    rows_broken += 1;
                    let id = p
                        .value
                        .get("@iot.id")
                        .map(|v| format!(" (observation `{}`)", snippet(&v.to_string())))
                        .unwrap_or_default();
                    let broken = BrokenRow {
                        file: pager.label.clone(),
                        row: ordinal,
                        line: None,
                        reason: format!("{reason}{id}"),
                    };
                    if sink.send(ReadItem::Broken(broken)).is_err() {
                        return cancelled(rows_read, rows_broken, &position);
                    }
                }
            }
        }
        if let Some(batch) = rows.take()?
            && let Some(cursor) = position.cursor()
        {
            rows_read += batch.num_rows() as u64;
            if sink.send(ReadItem::Batch { batch, cursor }).is_err() {
                return cancelled(rows_read, rows_broken, &position);
            }
        }
        Ok(position.summary(rows_read, rows_broken, true))
    }
}

impl Connector for SensorThingsConnector {
    fn describe(&self) -> &ConnectorDescription {
        &self.inner.description
    }

    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<ReadStream, ConnectorError>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            let (projected, indices) = request.resolve(&inner.description.schema)?;
            let resume = inner.resume(request.since.as_ref())?;
            let entities = self.fetch_datastreams().await?;
            let filter = inner.filter(resume.map(|(t, _)| t), &request.pushdown);
            let pagers: Vec<Pager> = inner
                .config
                .datastreams
                .iter()
                .zip(entities)
                .map(|(d, entity)| {
                    let first = inner.first_page(d, filter.as_deref());
                    Pager {
                        label: format!("Datastreams({})", d.key()),
                        entity,
                        path: first.clone(),
                        next: Some(first),
                        seen: HashSet::new(),
                        pages: 0,
                        buffer: VecDeque::new(),
                        last_key: i64::MIN,
                    }
                })
                .collect();
            let rt = tokio::runtime::Handle::current();
            let reader = inner.clone();
            spawn_reader(
                projected.clone(),
                move |_| Ok(pagers),
                move |pagers, sink| {
                    reader.run(&rt, pagers, resume, &request, projected, indices, sink)
                },
            )
            .await
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<HealthReport, ConnectorError>> {
        Box::pin(async move {
            let n = self.fetch_datastreams().await?.len();
            Ok(HealthReport {
                detail: format!("{n} datastreams reachable at `{}`", self.inner.service),
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_parsed() {
        let c = parse_path("id", "observation.@iot.id").unwrap();
        assert_eq!(
            (c.entity, c.path.clone()),
            (Entity::Observation, vec!["@iot.id".to_string()])
        );
        let c = parse_path("u", "datastream.unitOfMeasurement.symbol").unwrap();
        assert_eq!(c.path, vec!["unitOfMeasurement", "symbol"]);
        let c = parse_path("x", "thing.properties.@iot.id.y").unwrap();
        assert_eq!(c.path, vec!["properties", "@iot.id", "y"]);
        assert!(parse_path("t", PHENOMENON_TIME).unwrap().phenomenon);
        for bad in ["observation", "foo.bar", "thing.", "thing..x", "sensor.a."] {
            assert!(parse_path("c", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_read_and_written_in_rfc3339() {
        let t = micros_of("2025-03-03T01:02:03.5Z").unwrap();
        assert_eq!(micros_of(&iso(t)), Some(t));
        assert_eq!(
            micros_of("2025-03-03T01:02:03Z/2025-03-03T02:00:00Z"),
            micros_of("2025-03-03T01:02:03Z")
        );
        assert!(micros_of("yesterday").is_none());
    }

    #[test]
    fn ids_are_quoted_in_paths() {
        assert_eq!(EntityId::Int(7).key(), "7");
        assert_eq!(EntityId::Text("a-b".into()).key(), "'a-b'");
        assert!(EntityId::Text("a'b".into()).check().is_err());
        assert!(EntityId::Text(String::new()).check().is_err());
    }
}
