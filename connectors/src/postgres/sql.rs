//! The SQL the PostgreSQL connector sends: identifiers validated strictly and quoted, every value
//! a bound parameter (`$n`), never text built from a value.
//!
//! A read is one statement: `SELECT <columns> FROM "<namespace>"."<relation>" WHERE <cursor and
//! pushed-down comparisons> ORDER BY <cursor column>, <every other column>`. The order is total
//! (ties of the cursor column broken by the other columns, text in byte order), so a resumed
//! read skips exactly the rows of the cursor's value it has seen.

use std::error::Error;

use bytes::BytesMut;
use time::OffsetDateTime;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::connector::{Predicate, PredicateOp, PredicateValue};
use crate::error::{ConnectorError, snippet};
use crate::schema::FieldType;

/// Longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER: usize = 63;

/// Checks an identifier (schema, relation or column name): ASCII letter or `_` first, then
/// letters, digits or `_`, at most 63 bytes. Nothing else is ever put into SQL text.
pub fn check_identifier(what: &str, name: &str) -> Result<(), ConnectorError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if first_ok && rest_ok && name.len() <= MAX_IDENTIFIER {
        Ok(())
    } else {
        Err(ConnectorError::Config(format!(
            "{what} `{}` is not a plain identifier (letters, digits and `_`, not starting with a digit, at most {MAX_IDENTIFIER} bytes)",
            snippet(name)
        )))
    }
}

/// Quotes a checked identifier.
pub fn quote(name: &str) -> String {
    // `check_identifier` admits no `"`, so quoting cannot be escaped.
    format!("\"{name}\"")
}

/// How a source column is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlColumn {
    /// Column name (checked).
    pub name: String,
    /// The type the connector exposes.
    pub field_type: FieldType,
    /// A cast applied in the select list (`numeric` is read as `float8`).
    pub cast: Option<&'static str>,
}

impl SqlColumn {
    /// The column as an expression: quoted, cast if needed.
    fn expr(&self) -> String {
        match self.cast {
            Some(cast) => format!("{}::{cast}", quote(&self.name)),
            None => quote(&self.name),
        }
    }

    /// The expression ordered or compared by: text in byte order.
    fn ordered(&self) -> String {
        match self.field_type {
            FieldType::String => format!("{} COLLATE \"C\"", self.expr()),
            _ => self.expr(),
        }
    }
}

/// A bound parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// `int8`
    Int(i64),
    /// `float8`
    Float(f64),
    /// `text`
    Text(String),
    /// `bool`
    Bool(bool),
    /// `timestamptz`
    Timestamp(OffsetDateTime),
}

impl SqlParam {
    /// The cast that fixes the parameter's type in the statement.
    fn cast(&self) -> &'static str {
        match self {
            SqlParam::Int(_) => "int8",
            SqlParam::Float(_) => "float8",
            SqlParam::Text(_) => "text",
            SqlParam::Bool(_) => "bool",
            SqlParam::Timestamp(_) => "timestamptz",
        }
    }

    /// A timestamp parameter from microseconds since the epoch.
    pub fn timestamp_micros(micros: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
            .ok()
            .map(SqlParam::Timestamp)
    }
}

impl ToSql for SqlParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            SqlParam::Int(v) => v.to_sql_checked(ty, out),
            SqlParam::Float(v) => v.to_sql_checked(ty, out),
            SqlParam::Text(v) => v.to_sql_checked(ty, out),
            SqlParam::Bool(v) => v.to_sql_checked(ty, out),
            SqlParam::Timestamp(v) => v.to_sql_checked(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT8,
            Type::FLOAT8,
            Type::TEXT,
            Type::BOOL,
            Type::TIMESTAMPTZ,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

/// Where a resumed read starts: rows whose cursor column is at least `value` (the caller skips
/// the rows of `value` it has seen).
#[derive(Debug, Clone, PartialEq)]
pub struct From {
    /// Index of the cursor column in the columns.
    pub column: usize,
    /// Its value.
    pub value: SqlParam,
}

/// A built statement: SQL text and its parameters, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The text, with `$1`, `$2`, … for the values.
    pub sql: String,
    /// The values.
    pub params: Vec<SqlParam>,
    /// The pushed-down predicates that were applied (the rest were left to the caller).
    pub pushed: usize,
}

/// The parameter a predicate's literal binds as, if the column's type takes it.
fn predicate_param(column: &SqlColumn, value: &PredicateValue) -> Option<SqlParam> {
    match (column.field_type, value) {
        (FieldType::Int64, PredicateValue::Int(v)) => Some(SqlParam::Int(*v)),
        (FieldType::Float64, PredicateValue::Float(v)) => Some(SqlParam::Float(*v)),
        (FieldType::String, PredicateValue::Text(v)) => Some(SqlParam::Text(v.clone())),
        (FieldType::Bool, PredicateValue::Bool(v)) => Some(SqlParam::Bool(*v)),
        (FieldType::Timestamp, PredicateValue::TimestampMicros(v)) => {
            SqlParam::timestamp_micros(*v)
        }
        _ => None,
    }
}

fn operator(op: PredicateOp) -> &'static str {
    match op {
        PredicateOp::Eq => "=",
        // A missing value counts as different, as the broker's filter may count it.
        PredicateOp::Ne => "IS DISTINCT FROM",
        PredicateOp::Lt => "<",
        PredicateOp::Le => "<=",
        PredicateOp::Gt => ">",
        PredicateOp::Ge => ">=",
    }
}

/// Builds the read statement. `columns` are all columns of the source as exposed (checked
/// names); `cursor` the index of the cursor column; predicates on unknown columns or with a
/// literal of another type are left out (the caller evaluates them).
pub fn select(
    namespace: &str,
    relation: &str,
    columns: &[SqlColumn],
    cursor: usize,
    from: Option<&From>,
    pushdown: &[Predicate],
) -> Statement {
    let list: Vec<String> = columns
        .iter()
        .map(|c| match c.cast {
            Some(_) => format!("{} AS {}", c.expr(), quote(&c.name)),
            None => c.expr(),
        })
        .collect();
    let mut sql = format!(
        "SELECT {} FROM {}.{}",
        list.join(", "),
        quote(namespace),
        quote(relation)
    );
    let mut params = Vec::new();
    let mut conditions = Vec::new();
    if let Some(from) = from
        && let Some(c) = columns.get(from.column)
    {
        params.push(from.value.clone());
        conditions.push(format!(
            "{} >= ${}::{}",
            c.ordered(),
            params.len(),
            from.value.cast()
        ));
    }
    let mut pushed = 0;
    for p in pushdown {
        let Some(c) = columns.iter().find(|c| c.name == p.column) else {
            continue;
        };
        let Some(param) = predicate_param(c, &p.value) else {
            continue;
        };
        let cast = param.cast();
        params.push(param);
        conditions.push(format!(
            "{} {} ${}::{cast}",
            c.ordered(),
            operator(p.op),
            params.len()
        ));
        pushed += 1;
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let mut order = Vec::with_capacity(columns.len());
    if let Some(c) = columns.get(cursor) {
        order.push(format!("{} NULLS LAST", c.ordered()));
    }
    for (i, c) in columns.iter().enumerate() {
        if i != cursor {
            order.push(format!("{} NULLS LAST", c.ordered()));
        }
    }
    sql.push_str(" ORDER BY ");
    sql.push_str(&order.join(", "));
    Statement {
        sql,
        params,
        pushed,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn columns() -> Vec<SqlColumn> {
        vec![
            SqlColumn {
                name: "id".into(),
                field_type: FieldType::Int64,
                cast: None,
            },
            SqlColumn {
                name: "name".into(),
                field_type: FieldType::String,
                cast: None,
            },
            SqlColumn {
                name: "kwh".into(),
                field_type: FieldType::Float64,
                cast: Some("float8"),
            },
        ]
    }

    #[test]
    fn identifiers_are_strict() {
        for good in ["readings", "_x", "A1_b", &"a".repeat(63)] {
            check_identifier("relation", good).unwrap();
        }
        for bad in [
            "",
            "1a",
            "a b",
            "a\"b",
            "a;drop",
            "ä",
            "a-b",
            "a.b",
            &"a".repeat(64),
        ] {
            let e = check_identifier("relation", bad).unwrap_err();
            assert!(matches!(e, ConnectorError::Config(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn a_hostile_literal_is_bound_never_written_into_the_sql() {
        let hostile = "x'; DROP TABLE t; --";
        let p = vec![
            Predicate {
                column: "name".into(),
                op: PredicateOp::Eq,
                value: PredicateValue::Text(hostile.into()),
            },
            Predicate {
                column: "id".into(),
                op: PredicateOp::Ge,
                value: PredicateValue::Int(7),
            },
        ];
        let s = select("public", "t", &columns(), 0, None, &p);
        assert!(!s.sql.contains(hostile), "{}", s.sql);
        assert!(!s.sql.contains("DROP"), "{}", s.sql);
        assert!(!s.sql.contains('7'), "{}", s.sql);
        assert_eq!(
            s.sql,
            "SELECT \"id\", \"name\", \"kwh\"::float8 AS \"kwh\" FROM \"public\".\"t\" \
             WHERE \"name\" COLLATE \"C\" = $1::text AND \"id\" >= $2::int8 \
             ORDER BY \"id\" NULLS LAST, \"name\" COLLATE \"C\" NULLS LAST, \"kwh\"::float8 NULLS LAST"
        );
        assert_eq!(
            s.params,
            vec![SqlParam::Text(hostile.into()), SqlParam::Int(7)]
        );
        assert_eq!(s.pushed, 2);
    }

    #[test]
    fn predicates_it_cannot_bind_are_left_to_the_caller() {
        let p = vec![
            // Unknown column.
            Predicate {
                column: "nope".into(),
                op: PredicateOp::Eq,
                value: PredicateValue::Int(1),
            },
            // A text literal for an integer column.
            Predicate {
                column: "id".into(),
                op: PredicateOp::Eq,
                value: PredicateValue::Text("1".into()),
            },
            Predicate {
                column: "kwh".into(),
                op: PredicateOp::Ne,
                value: PredicateValue::Float(1.5),
            },
        ];
        let from = From {
            column: 0,
            value: SqlParam::Int(40),
        };
        let s = select("public", "t", &columns(), 0, Some(&from), &p);
        assert_eq!(s.pushed, 1);
        assert!(
            s.sql.contains(
                "WHERE \"id\" >= $1::int8 AND \"kwh\"::float8 IS DISTINCT FROM $2::float8 ORDER BY"
            ),
            "{}",
            s.sql
        );
        assert_eq!(s.params, vec![SqlParam::Int(40), SqlParam::Float(1.5)]);
    }
}
