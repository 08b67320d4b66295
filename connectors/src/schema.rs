//! The column types a connector exposes and how they map to Arrow.
//!
//! Connectors expose a small, closed set of column types ([`FieldType`]); every batch a connector
//! yields uses exactly these Arrow types, whatever the source stored (Parquet `Int32` becomes
//! `Int64`, dictionary strings become `Utf8`, any timestamp becomes microseconds in UTC).
//! The data-subject column and identifier columns carry a role in their Arrow field metadata
//! under [`ROLE_METADATA_KEY`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::ConnectorError;

/// Arrow field-metadata key carrying a column's role.
pub const ROLE_METADATA_KEY: &str = "allmende.role";
/// Role value of the data-subject column.
pub const ROLE_SUBJECT: &str = "subject";
/// Role value of other identifier columns (meter id, device id, …).
pub const ROLE_IDENTIFIER: &str = "identifier";
/// Time zone of every timestamp column (a fixed offset, so no time-zone database is needed).
pub const TIMESTAMP_TIMEZONE: &str = "+00:00";

/// A column type a connector can expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 text (`Utf8`).
    String,
    /// 64-bit signed integer (`Int64`).
    Int64,
    /// 64-bit float (`Float64`).
    Float64,
    /// Boolean (`Boolean`).
    Bool,
    /// Instant in time, microseconds since the epoch in UTC (`Timestamp(Microsecond, "+00:00")`).
    Timestamp,
}

impl FieldType {
    /// All types, in the order used for inference.
    pub const ALL: [FieldType; 5] = [
        FieldType::String,
        FieldType::Int64,
        FieldType::Float64,
        FieldType::Bool,
        FieldType::Timestamp,
    ];

    /// The Arrow type batches carry for this column type.
    pub fn data_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(TIMESTAMP_TIMEZONE)))
            }
        }
    }

    /// The connector type whose Arrow type is exactly `data_type`.
    pub fn from_data_type(data_type: &DataType) -> Option<FieldType> {
        FieldType::ALL
            .into_iter()
            .find(|t| &t.data_type() == data_type)
    }

    /// The connector type a stored Arrow type converts to without losing meaning (used for
    /// Parquet and inferred schemas): narrower integers widen to `int64`, dictionary and large
    /// strings become `string`, every timestamp unit becomes `timestamp`.
    pub fn canonical_for(data_type: &DataType) -> Option<FieldType> {
        match data_type {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(FieldType::String),
            DataType::Dictionary(_, value) => match Self::canonical_for(value) {
                Some(FieldType::String) => Some(FieldType::String),
                _ => None,
            },
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(FieldType::Int64),
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Some(FieldType::Float64),
            DataType::Boolean => Some(FieldType::Bool),
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
                Some(FieldType::Timestamp)
            }
            _ => None,
        }
    }

    /// Whether a stored Arrow type can be read as this connector type.
    pub fn accepts(self, stored: &DataType) -> bool {
        match (self, Self::canonical_for(stored)) {
            (want, Some(found)) if want == found => true,
            // Integers stored in a float column are exact up to 2^53 and read fine as float64.
            (FieldType::Float64, Some(FieldType::Int64)) => !matches!(stored, DataType::Int64),
            _ => false,
        }
    }

    /// The lowercase name used in configs (`string`, `int64`, …).
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn yes() -> bool {
    true
}

/// One declared column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Column name, as in the source (CSV header, JSON key, Parquet column).
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether empty values are allowed; a null in a non-nullable column makes the row broken.
    #[serde(default = "yes")]
    pub nullable: bool,
}

impl FieldSpec {
    /// A nullable column.
    pub fn new(name: impl Into<String>, field_type: FieldType) -> Self {
        Self {
            name: name.into(),
            field_type,
            nullable: true,
        }
    }

    /// A non-nullable column.
    pub fn required(name: impl Into<String>, field_type: FieldType) -> Self {
        Self {
            name: name.into(),
            field_type,
            nullable: false,
        }
    }
}

/// Builds the Arrow schema a connector exposes: the declared columns in order, the subject
/// column and identifier columns tagged with their role.
pub fn build_schema(
    fields: &[FieldSpec],
    subject_column: Option<&str>,
    identifier_columns: &[String],
) -> Result<SchemaRef, ConnectorError> {
    if fields.is_empty() {
        return Err(ConnectorError::Config("the schema has no columns".into()));
    }
    let mut seen = HashSet::new();
    for f in fields {
        if f.name.is_empty() {
            return Err(ConnectorError::Config("a column has an empty name".into()));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(ConnectorError::Config(format!(
                "column `{}` is declared twice",
                f.name
            )));
        }
    }
    let check_role_column = |name: &str, role: &str| -> Result<(), ConnectorError> {
        match fields.iter().find(|f| f.name == name) {
            None => Err(ConnectorError::Config(format!(
                "{role} column `{name}` is not in the schema"
            ))),
            Some(f) if !matches!(f.field_type, FieldType::String | FieldType::Int64) => {
                Err(ConnectorError::Config(format!(
                    "{role} column `{name}` must be string or int64, not {}",
                    f.field_type
                )))
            }
            Some(_) => Ok(()),
        }
    };
    if let Some(s) = subject_column {
        check_role_column(s, "data-subject")?;
    }
    let mut ids = HashSet::new();
    for id in identifier_columns {
        check_role_column(id, "identifier")?;
        if Some(id.as_str()) == subject_column {
            return Err(ConnectorError::Config(format!(
                "column `{id}` is both the data-subject column and an identifier column"
            )));
        }
        if !ids.insert(id.as_str()) {
            return Err(ConnectorError::Config(format!(
                "identifier column `{id}` is listed twice"
            )));
        }
    }
    let arrow_fields: Vec<Field> = fields
        .iter()
        .map(|f| {
            let field = Field::new(&f.name, f.field_type.data_type(), f.nullable);
            let role = if Some(f.name.as_str()) == subject_column {
                Some(ROLE_SUBJECT)
            } else if ids.contains(f.name.as_str()) {
                Some(ROLE_IDENTIFIER)
            } else {
                None
            };
            match role {
                Some(role) => field.with_metadata(HashMap::from([(
                    ROLE_METADATA_KEY.to_string(),
                    role.to_string(),
                )])),
                None => field,
            }
        })
        .collect();
    Ok(Arc::new(Schema::new(arrow_fields)))
}

/// Reads the declared columns back from a connector schema.
pub fn field_specs(schema: &Schema) -> Result<Vec<FieldSpec>, ConnectorError> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let field_type = FieldType::from_data_type(f.data_type()).ok_or_else(|| {
                ConnectorError::Config(format!(
                    "column `{}` has type {} which connectors do not expose",
                    f.name(),
                    f.data_type()
                ))
            })?;
            Ok(FieldSpec {
                name: f.name().clone(),
                field_type,
                nullable: f.is_nullable(),
            })
        })
        .collect()
}

/// Checks a connector's schema against a dataset's declared schema (used at registration).
///
/// Every declared column must exist with the same type; the connector must not expose columns the
/// dataset does not declare; a column the dataset declares non-nullable must be non-nullable in
/// the connector too.
pub fn check_declared_schema(
    declared: &[FieldSpec],
    actual: &Schema,
) -> Result<(), ConnectorError> {
    const WHERE: &str = "dataset schema";
    for d in declared {
        let Ok(found) = actual.field_with_name(&d.name) else {
            return Err(ConnectorError::mismatch(
                WHERE,
                &d.name,
                format!(
                    "declared {}, but the connector has no such column",
                    d.field_type
                ),
            ));
        };
        if found.data_type() != &d.field_type.data_type() {
            let found_type = FieldType::from_data_type(found.data_type())
                .map(|t| t.to_string())
                .unwrap_or_else(|| found.data_type().to_string());
            return Err(ConnectorError::mismatch(
                WHERE,
                &d.name,
                format!("declared {}, connector has {found_type}", d.field_type),
            ));
        }
        if !d.nullable && found.is_nullable() {
            return Err(ConnectorError::mismatch(
                WHERE,
                &d.name,
                "declared non-nullable, but the connector may yield empty values",
            ));
        }
    }
    for f in actual.fields() {
        if !declared.iter().any(|d| &d.name == f.name()) {
            return Err(ConnectorError::mismatch(
                WHERE,
                f.name(),
                "the connector has this column but the dataset does not declare it",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_tagged_and_validated() {
        let fields = vec![
            FieldSpec::required("household_id", FieldType::String),
            FieldSpec::new("meter_id", FieldType::String),
            FieldSpec::new("kwh", FieldType::Float64),
        ];
        let schema = build_schema(&fields, Some("household_id"), &["meter_id".into()])
            .expect("valid schema");
        let role = |n: &str| {
            schema
                .field_with_name(n)
                .expect("field")
                .metadata()
                .get(ROLE_METADATA_KEY)
                .cloned()
        };
        assert_eq!(role("household_id").as_deref(), Some(ROLE_SUBJECT));
        assert_eq!(role("meter_id").as_deref(), Some(ROLE_IDENTIFIER));
        assert_eq!(role("kwh"), None);
        assert_eq!(field_specs(&schema).expect("specs"), fields);

        let err = build_schema(&fields, Some("nope"), &[]).expect_err("missing subject");
        assert!(err.to_string().contains("`nope`"), "{err}");
        let err = build_schema(&fields, Some("kwh"), &[]).expect_err("float subject");
        assert!(err.to_string().contains("string or int64"), "{err}");
        let dup = vec![
            FieldSpec::new("a", FieldType::Bool),
            FieldSpec::new("a", FieldType::Bool),
        ];
        assert!(build_schema(&dup, None, &[]).is_err());
    }

    #[test]
    fn declared_schema_check_names_the_column() {
        let fields = vec![
            FieldSpec::required("id", FieldType::String),
            FieldSpec::new("v", FieldType::Float64),
        ];
        let schema = build_schema(&fields, None, &[]).expect("schema");
        assert!(check_declared_schema(&fields, &schema).is_ok());
        let wrong = vec![
            FieldSpec::required("id", FieldType::String),
            FieldSpec::new("v", FieldType::Int64),
        ];
        let err = check_declared_schema(&wrong, &schema).expect_err("type differs");
        assert_eq!(
            err.to_string(),
            "schema mismatch in `dataset schema`: column `v`: declared int64, connector has float64"
        );
        let fewer = vec![FieldSpec::required("id", FieldType::String)];
        let err = check_declared_schema(&fewer, &schema).expect_err("extra column");
        assert!(err.to_string().contains("`v`"), "{err}");
    }

    #[test]
    fn stored_types_map_to_connector_types() {
        assert!(FieldType::Int64.accepts(&DataType::Int32));
        assert!(FieldType::Float64.accepts(&DataType::Int32));
        assert!(!FieldType::Float64.accepts(&DataType::Int64));
        assert!(!FieldType::Int64.accepts(&DataType::Float64));
        assert!(FieldType::String.accepts(&DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Utf8)
        )));
        assert!(FieldType::Timestamp.accepts(&DataType::Timestamp(TimeUnit::Nanosecond, None)));
        assert!(!FieldType::String.accepts(&DataType::Int64));
    }
}
