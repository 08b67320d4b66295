//! A small typed row filter (column, comparison, value; AND/OR), evaluated
//! with Arrow compute kernels. Filters on identifying columns are refused:
//! they would single people out.

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, Scalar, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::kernels::cmp;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;

/// Comparison operators (in a Flight ticket and command: `eq`, `ne`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal to compare with (in a Flight ticket and command:
/// `{"string": "x"}`, `{"int": 3}`, …).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterValue {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    TimestampMs(i64),
}

/// A filter expression (in a Flight ticket and command:
/// `{"compare": {"column": …, "op": …, "value": …}}`, `{"all": […]}`,
/// `{"any": […]}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    Compare {
        column: String,
        op: CompareOp,
        value: FilterValue,
    },
    All(Vec<Filter>),
    Any(Vec<Filter>),
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter names column `{0}`, which the dataset does not have")]
    UnknownColumn(String),
    #[error("filter on identifying column `{0}` refused: it would single people out")]
    IdentifyingColumn(String),
    #[error("filter compares column `{column}` of type {column_type} with a {value} value")]
    TypeMismatch {
        column: String,
        column_type: String,
        value: &'static str,
    },
    #[error("filter is nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("filter has more than {0} comparisons")]
    TooLarge(usize),
    #[error("filter evaluation failed: {0}")]
    Eval(String),
}

const MAX_DEPTH: usize = 8;
const MAX_TERMS: usize = 64;

impl FilterValue {
    fn kind(&self) -> &'static str {
        match self {
            FilterValue::String(_) => "string",
            FilterValue::Int(_) => "integer",
            FilterValue::Float(_) => "float",
            FilterValue::Bool(_) => "boolean",
            FilterValue::TimestampMs(_) => "timestamp",
        }
    }
}

impl Filter {
    /// Checks the filter against a schema before anything is read.
    pub fn check(&self, schema: &Schema, identifying: &[String]) -> Result<(), FilterError> {
        let mut terms = 0;
        self.check_inner(schema, identifying, 0, &mut terms)
    }

    fn check_inner(
        &self,
        schema: &Schema,
        identifying: &[String],
        depth: usize,
        terms: &mut usize,
    ) -> Result<(), FilterError> {
        if depth > MAX_DEPTH {
            return Err(FilterError::TooDeep(MAX_DEPTH));
        }
        match self {
            Filter::Compare { column, value, .. } => {
                *terms += 1;
                if *terms > MAX_TERMS {
                    return Err(FilterError::TooLarge(MAX_TERMS));
                }
                let short: String = crate::text::shown(column, 100);
                let field = schema
                    .field_with_name(column)
                    .map_err(|_| FilterError::UnknownColumn(short.clone()))?;
                if identifying.iter().any(|c| c == column) {
                    return Err(FilterError::IdentifyingColumn(short));
                }
                let ok = matches!(
                    (field.data_type(), value),
                    (DataType::Utf8 | DataType::LargeUtf8, FilterValue::String(_))
                        | (DataType::Int64, FilterValue::Int(_))
                        | (
                            DataType::Float64,
                            FilterValue::Float(_) | FilterValue::Int(_)
                        )
                        | (DataType::Boolean, FilterValue::Bool(_))
                        | (
                            DataType::Timestamp(..),
                            FilterValue::TimestampMs(_) | FilterValue::String(_)
                        )
                );
                if !ok {
                    return Err(FilterError::TypeMismatch {
                        column: short,
                        column_type: field.data_type().to_string(),
                        value: value.kind(),
                    });
                }
                Ok(())
            }
            Filter::All(fs) | Filter::Any(fs) => {
                for f in fs {
                    f.check_inner(schema, identifying, depth + 1, terms)?;
                }
                Ok(())
            }
        }
    }

    /// Every column the filter names, each once, in order of appearance.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        let mut stack = vec![self];
        while let Some(f) = stack.pop() {
            match f {
                Filter::Compare { column, .. } => {
                    if !out.contains(&column.as_str()) {
                        out.push(column);
                    }
                }
                Filter::All(fs) | Filter::Any(fs) => stack.extend(fs.iter().rev()),
            }
        }
        out
    }

    /// Evaluates the filter: a mask where `true` keeps the row (nulls drop it).
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, FilterError> {
        let eval = |e: arrow::error::ArrowError| FilterError::Eval(e.to_string());
        match self {
            Filter::Compare { column, op, value } => {
                let col = batch
                    .column_by_name(column)
                    .ok_or_else(|| FilterError::UnknownColumn(column.clone()))?;
                let scalar = literal(col, value)?;
                let s = Scalar::new(scalar);
                let r = match op {
                    CompareOp::Eq => cmp::eq(col, &s),
                    CompareOp::Ne => cmp::neq(col, &s),
                    CompareOp::Lt => cmp::lt(col, &s),
                    CompareOp::Le => cmp::lt_eq(col, &s),
                    CompareOp::Gt => cmp::gt(col, &s),
                    CompareOp::Ge => cmp::gt_eq(col, &s),
                }
                .map_err(eval)?;
                Ok(r)
            }
            Filter::All(fs) => {
                let mut acc = BooleanArray::from(vec![true; batch.num_rows()]);
                for f in fs {
                    acc = arrow::compute::and_kleene(&acc, &f.evaluate(batch)?).map_err(eval)?;
                }
                Ok(acc)
            }
            Filter::Any(fs) => {
                let mut acc = BooleanArray::from(vec![false; batch.num_rows()]);
                for f in fs {
                    acc = arrow::compute::or_kleene(&acc, &f.evaluate(batch)?).map_err(eval)?;
                }
                Ok(acc)
            }
        }
    }
}

/// A one-element array of the column's type holding the literal.
fn literal(col: &ArrayRef, value: &FilterValue) -> Result<ArrayRef, FilterError> {
    let eval = |e: arrow::error::ArrowError| FilterError::Eval(e.to_string());
    let arr: ArrayRef = match value {
        FilterValue::String(s) => std::sync::Arc::new(StringArray::from(vec![s.as_str()])),
        FilterValue::Int(i) => std::sync::Arc::new(Int64Array::from(vec![*i])),
        FilterValue::Float(f) => std::sync::Arc::new(Float64Array::from(vec![*f])),
        FilterValue::Bool(b) => std::sync::Arc::new(BooleanArray::from(vec![*b])),
        FilterValue::TimestampMs(t) => {
            std::sync::Arc::new(TimestampMillisecondArray::from(vec![*t]))
        }
    };
    if arr.data_type() == col.data_type() {
        return Ok(arr);
    }
    // Strings to timestamps, ints to floats, ms to the column's unit and zone.
    arrow::compute::cast(&arr, col.data_type())
        .map_err(eval)
        .and_then(|a| {
            if a.null_count() > 0 {
                Err(FilterError::Eval(format!(
                    "value cannot be read as {}",
                    col.data_type()
                )))
            } else {
                Ok(a)
            }
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("household_id", DataType::Utf8, false),
            Field::new("kwh", DataType::Float64, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
                Arc::new(Float64Array::from(vec![
                    Some(0.5),
                    Some(2.0),
                    None,
                    Some(3.5),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap()
    }

    fn cmp_(column: &str, op: CompareOp, value: FilterValue) -> Filter {
        Filter::Compare {
            column: column.into(),
            op,
            value,
        }
    }

    #[test]
    fn and_or_with_nulls() {
        let b = batch();
        let f = Filter::Any(vec![
            cmp_("kwh", CompareOp::Gt, FilterValue::Float(1.0)),
            cmp_("n", CompareOp::Eq, FilterValue::Int(1)),
        ]);
        f.check(&b.schema(), &["household_id".into()]).unwrap();
        let m = f.evaluate(&b).unwrap();
        let kept = arrow::compute::filter_record_batch(&b, &m).unwrap();
        assert_eq!(
            kept.num_rows(),
            3,
            "rows a, b, d; the null kwh row is dropped"
        );
        let f = Filter::All(vec![
            cmp_("kwh", CompareOp::Ge, FilterValue::Int(2)),
            cmp_("n", CompareOp::Lt, FilterValue::Int(4)),
        ]);
        let m = f.evaluate(&b).unwrap();
        assert_eq!(
            arrow::compute::filter_record_batch(&b, &m)
                .unwrap()
                .num_rows(),
            1
        );
    }

    #[test]
    fn every_named_column_is_found_however_deep() {
        let f = Filter::All(vec![
            cmp_("kwh", CompareOp::Gt, FilterValue::Float(1.0)),
            Filter::Any(vec![
                Filter::All(vec![cmp_(
                    "district",
                    CompareOp::Eq,
                    FilterValue::String("x".into()),
                )]),
                cmp_("kwh", CompareOp::Lt, FilterValue::Float(9.0)),
            ]),
        ]);
        assert_eq!(f.columns(), vec!["kwh", "district"]);
    }

    #[test]
    fn hostile_filters_are_refused_before_reading() {
        let s = batch().schema();
        let id = vec!["household_id".to_owned()];
        assert!(matches!(
            cmp_(
                "household_id",
                CompareOp::Eq,
                FilterValue::String("a".into())
            )
            .check(&s, &id),
            Err(FilterError::IdentifyingColumn(_))
        ));
        assert!(matches!(
            cmp_("nope", CompareOp::Eq, FilterValue::Int(1)).check(&s, &id),
            Err(FilterError::UnknownColumn(_))
        ));
        assert!(matches!(
            cmp_("kwh", CompareOp::Eq, FilterValue::String("x".into())).check(&s, &id),
            Err(FilterError::TypeMismatch { .. })
        ));
        let mut deep = cmp_("n", CompareOp::Eq, FilterValue::Int(1));
        for _ in 0..20 {
            deep = Filter::All(vec![deep]);
        }
        assert!(matches!(deep.check(&s, &id), Err(FilterError::TooDeep(_))));
        let wide = Filter::Any(vec![cmp_("n", CompareOp::Eq, FilterValue::Int(1)); 100]);
        assert!(matches!(wide.check(&s, &id), Err(FilterError::TooLarge(_))));
    }
}
