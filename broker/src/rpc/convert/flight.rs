//! Arrow Flight ⇄ domain: a descriptor's command or path as release
//! parameters, `ListFlights` criteria, `FlightInfo` and `SchemaResult` for a
//! decided schema, and the Flight face's encoder of released batches
//! (`FlightData`, encoded once by arrow-ipc's `IpcDataGenerator`, no copy of
//! the buffers).

use crate::access::fetch::FetchMessage;
use crate::access::pipeline::{Encode, PipelineError};
use crate::access::{FetchParams, Filter};
use crate::error::ApiError;
use crate::policy::Purpose;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow::record_batch::RecordBatch;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::{
    Criteria, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, SchemaAsIpc, SchemaResult,
    Ticket,
};

/// Longest descriptor command or criteria expression (bytes), checked
/// before it is parsed.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// A descriptor's command: JSON naming the request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    dataset: String,
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    filter: Option<Filter>,
    #[serde(default)]
    grant: Option<String>,
}

/// `ListFlights` criteria: JSON with the purpose and grant to decide for.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListCriteria {
    #[serde(default)]
    purpose: Option<String>,
    #[serde(default)]
    grant: Option<String>,
}

const COMMAND_SHAPE: &str =
    "a JSON object with `dataset` and optionally `purpose`, `columns`, `filter`, `grant`";

fn json<'a, T: serde::Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, ApiError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "{what} is {} bytes long, at most {MAX_COMMAND_BYTES} are allowed",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::InvalidArgument(format!(
            "{what} is not {COMMAND_SHAPE}: {}",
            crate::text::shown(&e.to_string(), 200)
        ))
    })
}

fn optional(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// The release parameters a descriptor names: a command (JSON, see
/// `docs/flight.md`) or a path of one element, the dataset (all columns,
/// no purpose, no grant).
pub fn descriptor_params(d: &FlightDescriptor) -> Result<FetchParams, ApiError> {
    use super::super::limits::{check_id, check_ids};
    let kind = DescriptorType::try_from(d.r#type).unwrap_or(DescriptorType::Unknown);
    let params = match kind {
        DescriptorType::Cmd => {
            let c: Command = json("flight descriptor command", &d.cmd)?;
            let purpose = optional(c.purpose).unwrap_or_default();
            check_id("purpose", &purpose)?;
            let grant = optional(c.grant);
            check_id("grant", grant.as_deref().unwrap_or_default())?;
            check_ids("columns", &c.columns)?;
            FetchParams {
                purpose: crate::rpc::parse_purpose(&purpose)?,
                dataset: c.dataset,
                columns: c.columns,
                filter: c.filter,
                grant_id: grant,
                ..FetchParams::default()
            }
        }
        DescriptorType::Path => match d.path.as_slice() {
            [dataset] => FetchParams {
                dataset: dataset.clone(),
                ..FetchParams::default()
            },
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "flight descriptor path has {} elements; name one, the dataset (or send a command: {COMMAND_SHAPE})",
                    d.path.len()
                )));
            }
        },
        DescriptorType::Unknown => {
            return Err(ApiError::InvalidArgument(format!(
                "flight descriptor has no type; send a path of one element (the dataset) or a command: {COMMAND_SHAPE}"
            )));
        }
    };
    check_id("dataset", &params.dataset)?;
    if params.dataset.is_empty() {
        return Err(ApiError::InvalidArgument("`dataset` is empty".into()));
    }
    Ok(params)
}

/// The purpose and grant `ListFlights` decides for: empty criteria (none),
/// or JSON `{"purpose": …, "grant": …}`.
pub fn criteria(c: &Criteria) -> Result<(Option<Purpose>, Option<String>), ApiError> {
    use super::super::limits::check_id;
    if c.expression.is_empty() {
        return Ok((None, None));
    }
    let l: ListCriteria = json("list criteria", &c.expression)?;
    let purpose = optional(l.purpose).unwrap_or_default();
    check_id("purpose", &purpose)?;
    let grant = optional(l.grant);
    check_id("grant", grant.as_deref().unwrap_or_default())?;
    Ok((crate::rpc::parse_purpose(&purpose)?, grant))
}

/// The descriptor `ListFlights` names a dataset with: its path.
pub fn dataset_descriptor(dataset: &str) -> FlightDescriptor {
    FlightDescriptor::new_path(vec![dataset.to_owned()])
}

/// A `FlightInfo` with the decided schema and one endpoint (this server:
/// no location) whose ticket is the sealed `ticket`.
pub fn flight_info(
    descriptor: FlightDescriptor,
    schema: &Schema,
    ticket: Vec<u8>,
) -> Result<FlightInfo, ApiError> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| ApiError::Internal(format!("flight schema not encoded: {e}")))?;
    Ok(info
        .with_descriptor(descriptor)
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_total_records(-1)
        .with_total_bytes(-1))
}

/// `GetSchema`'s answer for a decided schema.
pub fn schema_result(schema: &Schema) -> Result<SchemaResult, ApiError> {
    let options = IpcWriteOptions::default();
    SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e| ApiError::Internal(format!("flight schema not encoded: {e}")))
}

/// The messages of one release message on the Flight face (the summary of
/// `Access.Fetch` has no place in Flight and is left out).
pub fn flight_data(m: FetchMessage<Vec<FlightData>>) -> Result<Vec<FlightData>, ApiError> {
    match m {
        FetchMessage::Ipc(d) | FetchMessage::Done { ipc: d, .. } => Ok(d),
        FetchMessage::Failed(e) => Err(e.into()),
    }
}

/// Encodes released batches as `FlightData`: the schema message first, then
/// each batch (after any dictionaries it needs), each encoded once.
pub struct FlightEncoder {
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    context: IpcWriteContext,
}

impl std::fmt::Debug for FlightEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightEncoder").finish_non_exhaustive()
    }
}

impl Encode for FlightEncoder {
    type Out = Vec<FlightData>;
    const PAGED: bool = false;

    fn start(schema: &SchemaRef, out: &mut Vec<FlightData>) -> Result<Self, PipelineError> {
        let mut enc = Self {
            generator: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            options: IpcWriteOptions::default(),
            context: IpcWriteContext::default(),
        };
        let header = enc.generator.schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut enc.tracker,
            &enc.options,
        );
        out.push(header.into());
        Ok(enc)
    }

    fn write(
        &mut self,
        batch: &RecordBatch,
        out: &mut Vec<FlightData>,
    ) -> Result<(), PipelineError> {
        let (dictionaries, data) = self
            .generator
            .encode(batch, &mut self.tracker, &self.options, &mut self.context)
            .map_err(|e| PipelineError::Arrow(e.to_string()))?;
        out.extend(dictionaries.into_iter().map(FlightData::from));
        out.push(data.into());
        Ok(())
    }

    fn finish(&mut self, _out: &mut Vec<FlightData>) -> Result<(), PipelineError> {
        // A Flight stream ends with the call, without an IPC end marker.
        Ok(())
    }

    fn size(out: &Vec<FlightData>) -> u64 {
        out.iter()
            .map(|d| (d.data_header.len() + d.data_body.len()) as u64)
            .sum()
    }
}
