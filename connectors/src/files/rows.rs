//! Row-level conversion shared by the text formats: typing CSV strings with Arrow's cast
//! kernels, typing JSON values strictly, null checks and cursor values.

use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Array, Int64Builder, RecordBatch,
    StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::compute::kernels::cast_utils::string_to_datetime;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Schema};
use serde_json::{Map, Value};

use super::Layout;
use crate::connector::CursorValue;
use crate::error::{ConnectorError, snippet};
use crate::schema::{FieldSpec, FieldType, TIMESTAMP_TIMEZONE};

/// Sampled JSON objects, each with where it was found (`line 3`, `feature 7`).
pub(crate) type JsonSample = Vec<(String, Map<String, Value>)>;

/// For each row, why it lacks a required value (`None` if it has them all).
pub(crate) fn missing_required(batch: &RecordBatch, layout: &Layout) -> Vec<Option<String>> {
    let mut out = vec![None; batch.num_rows()];
    for &col in &layout.required {
        let array = batch.column(col);
        if array.null_count() == 0 {
            continue;
        }
        let name = &layout.fields[col].name;
        let is_subject = layout
            .schema
            .field(col)
            .metadata()
            .get(crate::schema::ROLE_METADATA_KEY)
            .is_some_and(|r| r == crate::schema::ROLE_SUBJECT);
        for (row, slot) in out.iter_mut().enumerate() {
            if slot.is_none() && array.is_null(row) {
                *slot = Some(if is_subject {
                    format!("data-subject column `{name}` is empty")
                } else {
                    format!("required column `{name}` is empty")
                });
            }
        }
    }
    out
}

/// The cursor value of a row (`None` if empty or of a type cursors do not follow).
pub(crate) fn cursor_value(array: &dyn Array, row: usize) -> Option<CursorValue> {
    if array.is_null(row) {
        return None;
    }
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        return Some(CursorValue::Int(a.value(row)));
    }
    if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
        return Some(CursorValue::Int(a.value(row)));
    }
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Some(CursorValue::Text(a.value(row).to_string()));
    }
    None
}

fn utc() -> Result<Tz, ConnectorError> {
    TIMESTAMP_TIMEZONE
        .parse::<Tz>()
        .map_err(|e| ConnectorError::Internal(format!("utc time zone: {e}")))
}

/// Converts a column of strings to `ty` with Arrow's cast kernels. Returns the typed column and,
/// per row, whether a present value failed to convert.
pub(crate) fn cast_strings(
    strings: &StringArray,
    ty: FieldType,
) -> Result<(ArrayRef, Vec<bool>), ConnectorError> {
    let target = ty.data_type();
    let typed: ArrayRef = if target == DataType::Utf8 {
        Arc::new(strings.clone())
    } else {
        let options = CastOptions {
            safe: true,
            ..Default::default()
        };
        cast_with_options(strings, &target, &options)
            .map_err(|e| ConnectorError::Internal(format!("cast to {ty}: {e}")))?
    };
    let failed = (0..strings.len())
        .map(|i| strings.is_valid(i) && typed.is_null(i))
        .collect();
    Ok((typed, failed))
}

/// How many of `values` do not convert to `ty`, and the index of the first that does not.
pub(crate) fn count_failures(
    values: &[&str],
    ty: FieldType,
) -> Result<(usize, Option<usize>), ConnectorError> {
    let array = StringArray::from(values.to_vec());
    let (_, failed) = cast_strings(&array, ty)?;
    let count = failed.iter().filter(|f| **f).count();
    Ok((count, failed.iter().position(|f| *f)))
}

/// Picks a type for sampled text values: the first of int64, float64, bool, timestamp that every
/// value converts to; failing that, the first that at most 1 % of values miss (those rows will
/// be reported broken); otherwise string.
pub(crate) fn infer_text_type(values: &[&str]) -> Result<FieldType, ConnectorError> {
    if values.is_empty() {
        return Ok(FieldType::String);
    }
    let candidates = [
        FieldType::Int64,
        FieldType::Float64,
        FieldType::Bool,
        FieldType::Timestamp,
    ];
    let mut counts = Vec::with_capacity(candidates.len());
    for ty in candidates {
        let (failures, _) = count_failures(values, ty)?;
        if failures == 0 {
            return Ok(ty);
        }
        counts.push((ty, failures));
    }
    Ok(counts
        .into_iter()
        .find(|(_, failures)| failures * 100 <= values.len())
        .map(|(ty, _)| ty)
        .unwrap_or(FieldType::String))
}

/// Describes a JSON value for an error message.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn json_snippet(v: &Value) -> String {
    snippet(&v.to_string())
}

/// One converted JSON value.
enum Cell<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Micros(i64),
}

/// Converts a JSON value to a column type, strictly: no number is truncated, no string is
/// reinterpreted as a number, timestamps must be text.
fn convert<'a>(value: &'a Value, ty: FieldType, tz: &Tz) -> Result<Cell<'a>, String> {
    let mismatch = || {
        format!(
            "expected {ty}, found {} `{}`",
            json_kind(value),
            json_snippet(value)
        )
    };
    match (ty, value) {
        (_, Value::Null) => Ok(Cell::Null),
        (FieldType::String, Value::String(s)) => Ok(Cell::Str(s)),
        (FieldType::Int64, Value::Number(n)) => match n.as_i64() {
            Some(v) => Ok(Cell::Int(v)),
            None if n.is_u64() => Err(format!("`{n}` does not fit int64")),
            None => Err(mismatch()),
        },
        (FieldType::Float64, Value::Number(n)) => n.as_f64().map(Cell::Float).ok_or_else(mismatch),
        (FieldType::Bool, Value::Bool(b)) => Ok(Cell::Bool(*b)),
        (FieldType::Timestamp, Value::String(s)) => string_to_datetime(tz, s)
            .map(|dt| Cell::Micros(dt.timestamp_micros()))
            .map_err(|_| format!("`{}` is not a timestamp", snippet(s))),
        _ => Err(mismatch()),
    }
}

enum ColumnBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Time(TimestampMicrosecondBuilder),
}

/// Builds a batch from JSON objects, one validated row at a time.
pub(crate) struct JsonRows {
    fields: Vec<FieldSpec>,
    columns: Vec<ColumnBuilder>,
    tz: Tz,
    len: usize,
}

impl JsonRows {
    pub fn new(fields: &[FieldSpec]) -> Result<Self, ConnectorError> {
        let mut rows = Self {
            fields: fields.to_vec(),
            columns: Vec::new(),
            tz: utc()?,
            len: 0,
        };
        rows.reset();
        Ok(rows)
    }

    fn reset(&mut self) {
        self.columns = self
            .fields
            .iter()
            .map(|f| match f.field_type {
                FieldType::String => ColumnBuilder::Str(StringBuilder::new()),
                FieldType::Int64 => ColumnBuilder::Int(Int64Builder::new()),
                FieldType::Float64 => ColumnBuilder::Float(Float64Builder::new()),
                FieldType::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
                FieldType::Timestamp => ColumnBuilder::Time(
                    TimestampMicrosecondBuilder::new().with_timezone(TIMESTAMP_TIMEZONE),
                ),
            })
            .collect();
        self.len = 0;
    }

    /// Rows pushed since the last batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row was pushed since the last batch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks a whole row, then appends it; a row with any bad value is not appended.
    pub fn push(&mut self, object: &Map<String, Value>) -> Result<(), String> {
        static NULL: Value = Value::Null;
        let mut cells = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let value = object.get(&f.name).unwrap_or(&NULL);
            let cell = convert(value, f.field_type, &self.tz)
                .map_err(|reason| format!("column `{}`: {reason}", f.name))?;
            cells.push(cell);
        }
        for (builder, cell) in self.columns.iter_mut().zip(cells) {
            match (builder, cell) {
                (ColumnBuilder::Str(b), Cell::Str(v)) => b.append_value(v),
                (ColumnBuilder::Str(b), _) => b.append_null(),
                (ColumnBuilder::Int(b), Cell::Int(v)) => b.append_value(v),
                (ColumnBuilder::Int(b), _) => b.append_null(),
                (ColumnBuilder::Float(b), Cell::Float(v)) => b.append_value(v),
                (ColumnBuilder::Float(b), _) => b.append_null(),
                (ColumnBuilder::Bool(b), Cell::Bool(v)) => b.append_value(v),
                (ColumnBuilder::Bool(b), _) => b.append_null(),
                (ColumnBuilder::Time(b), Cell::Micros(v)) => b.append_value(v),
                (ColumnBuilder::Time(b), _) => b.append_null(),
            }
        }
        self.len += 1;
        Ok(())
    }

    /// Takes the rows pushed so far as a batch of `schema` (all-nullable work schema).
    pub fn finish(&mut self, schema: &Arc<Schema>) -> Result<RecordBatch, ConnectorError> {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    ColumnBuilder::Str(b) => Arc::new(b.finish()),
                    ColumnBuilder::Int(b) => Arc::new(b.finish()),
                    ColumnBuilder::Float(b) => Arc::new(b.finish()),
                    ColumnBuilder::Bool(b) => Arc::new(b.finish()),
                    ColumnBuilder::Time(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.len = 0;
        RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| ConnectorError::Internal(format!("cannot build a batch: {e}")))
    }
}

/// Checks sampled JSON objects against the declared fields: a non-nullable field must appear,
/// most present values must fit the declared type, and undeclared keys are refused unless
/// `ignore_extra` is set.
pub(crate) fn check_json_sample(
    file: &str,
    fields: &[FieldSpec],
    sample: &[(String, Map<String, Value>)],
    ignore_extra: bool,
) -> Result<(), ConnectorError> {
    if sample.is_empty() {
        return Ok(());
    }
    let tz = utc()?;
    for f in fields {
        let mut present = 0usize;
        let mut failures = 0usize;
        let mut example: Option<(String, String)> = None;
        for (place, object) in sample {
            match object.get(&f.name) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    present += 1;
                    if let Err(reason) = convert(v, f.field_type, &tz) {
                        failures += 1;
                        if example.is_none() {
                            example = Some((place.clone(), reason));
                        }
                    }
                }
            }
        }
        if present == 0 && !f.nullable {
            return Err(ConnectorError::mismatch(
                file,
                &f.name,
                format!(
                    "declared non-nullable {}, but none of the first {} records has it",
                    f.field_type,
                    sample.len()
                ),
            ));
        }
        if failures * 2 > present {
            let (place, reason) = example.unwrap_or_default();
            return Err(ConnectorError::mismatch(
                file,
                &f.name,
                format!(
                    "declared {}, but {failures} of {present} sampled values do not fit ({reason} at {place})",
                    f.field_type
                ),
            ));
        }
    }
    if !ignore_extra {
        for (place, object) in sample {
            if let Some(key) = object
                .keys()
                .find(|k| !fields.iter().any(|f| &f.name == *k))
            {
                return Err(ConnectorError::mismatch(
                    file,
                    key,
                    format!(
                        "found at {place} but not declared (set `ignore_extra_columns` to skip it)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Infers columns from sampled JSON objects with arrow-json's inference, mapped to connector
/// types; nested values are refused.
pub(crate) fn infer_json_fields(
    file: &str,
    sample: &[(String, Map<String, Value>)],
) -> Result<Vec<FieldSpec>, ConnectorError> {
    if sample.is_empty() {
        return Err(ConnectorError::source(
            file,
            "no records to infer the schema from; declare the schema",
        ));
    }
    let values: Vec<Value> = sample
        .iter()
        .map(|(_, o)| Value::Object(o.clone()))
        .collect();
    let schema = arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
        .map_err(|e| ConnectorError::source(file, format!("cannot infer a schema: {e}")))?;
    schema
        .fields()
        .iter()
        .map(|f| {
            let field_type = match f.data_type() {
                DataType::Null => Some(FieldType::String),
                other => FieldType::canonical_for(other),
            };
            match field_type {
                Some(t) => Ok(FieldSpec::new(f.name().clone(), t)),
                None => Err(ConnectorError::mismatch(
                    file,
                    f.name(),
                    format!(
                        "holds {} values, which connectors do not expose; declare the schema or flatten the data",
                        f.data_type()
                    ),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn text_inference_prefers_exact_then_tolerant_types() {
        assert_eq!(
            infer_text_type(&["1", "2", "-3"]).unwrap(),
            FieldType::Int64
        );
        assert_eq!(infer_text_type(&["1", "2.5"]).unwrap(), FieldType::Float64);
        assert_eq!(
            infer_text_type(&["true", "false"]).unwrap(),
            FieldType::Bool
        );
        assert_eq!(
            infer_text_type(&["2025-01-06T00:00:00Z", "2025-01-06 00:15:00"]).unwrap(),
            FieldType::Timestamp
        );
        assert_eq!(
            infer_text_type(&["HH-1", "HH-2"]).unwrap(),
            FieldType::String
        );
        let mut mostly_ints: Vec<&str> = vec!["7"; 200];
        mostly_ints.push("abc");
        assert_eq!(infer_text_type(&mostly_ints).unwrap(), FieldType::Int64);
        let mut half: Vec<&str> = vec!["7"; 10];
        half.extend(["x"; 10]);
        assert_eq!(infer_text_type(&half).unwrap(), FieldType::String);
    }

    #[test]
    fn casting_never_truncates() {
        let (count, first) = count_failures(&["1", "1.5", "2"], FieldType::Int64).unwrap();
        assert_eq!((count, first), (1, Some(1)));
    }

    #[test]
    fn json_conversion_is_strict() {
        let fields = vec![
            FieldSpec::new("i", FieldType::Int64),
            FieldSpec::new("t", FieldType::Timestamp),
        ];
        let mut rows = JsonRows::new(&fields).unwrap();
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert!(
            rows.push(&obj(
                serde_json::json!({"i": 3, "t": "2025-01-06T00:00:00Z"})
            ))
            .is_ok()
        );
        let err = rows.push(&obj(serde_json::json!({"i": 1.5}))).unwrap_err();
        assert_eq!(err, "column `i`: expected int64, found number `1.5`");
        let err = rows.push(&obj(serde_json::json!({"i": "3"}))).unwrap_err();
        assert!(err.contains("found string"), "{err}");
        let err = rows
            .push(&obj(serde_json::json!({"t": "yesterday"})))
            .unwrap_err();
        assert!(err.contains("`yesterday` is not a timestamp"), "{err}");
        let err = rows
            .push(&obj(serde_json::json!({"i": 18446744073709551615u64})))
            .unwrap_err();
        assert!(err.contains("does not fit int64"), "{err}");
        assert_eq!(rows.len(), 1);
    }
}
