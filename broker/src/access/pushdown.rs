//! The part of a request's filter a connector may apply at the source: the
//! comparisons the whole filter requires (its top-level conjunction; no
//! `Any`), as connector [`Predicate`]s. An optimisation only — the release
//! pipeline evaluates the whole filter on what the connector returns, so a
//! connector that applies fewer (the file connectors apply none) or more
//! rows changes nothing that is released. Every predicate handed down must
//! therefore keep at least the rows the broker's filter keeps: float
//! comparisons other than `=` stay with the broker (Arrow orders floats by
//! IEEE total order, SQL does not: `-0.0`, `NaN`).

use std::sync::Arc;

use allmende_connectors::{
    Connector, ConnectorDescription, ConnectorError, HealthReport, Predicate, PredicateOp,
    PredicateValue, ReadRequest, ReadStream,
};
use futures::future::BoxFuture;

use super::filter::{CompareOp, Filter, FilterValue};

/// The comparisons every row the filter keeps satisfies.
pub fn predicates(filter: &Filter) -> Vec<Predicate> {
    let mut out = Vec::new();
    collect(filter, &mut out);
    out
}

fn collect(filter: &Filter, out: &mut Vec<Predicate>) {
    match filter {
        Filter::Compare { column, op, value } => {
            if let Some(p) = predicate(column, *op, value) {
                out.push(p);
            }
        }
        Filter::All(fs) => fs.iter().for_each(|f| collect(f, out)),
        // A disjunction requires none of its parts.
        Filter::Any(_) => {}
    }
}

fn predicate(column: &str, op: CompareOp, value: &FilterValue) -> Option<Predicate> {
    let op = match op {
        CompareOp::Eq => PredicateOp::Eq,
        CompareOp::Ne => PredicateOp::Ne,
        CompareOp::Lt => PredicateOp::Lt,
        CompareOp::Le => PredicateOp::Le,
        CompareOp::Gt => PredicateOp::Gt,
        CompareOp::Ge => PredicateOp::Ge,
    };
    let value = match value {
        FilterValue::String(s) => PredicateValue::Text(s.clone()),
        FilterValue::Int(i) => PredicateValue::Int(*i),
        FilterValue::Float(f) if op == PredicateOp::Eq => PredicateValue::Float(*f),
        FilterValue::Float(_) => return None,
        FilterValue::Bool(b) => PredicateValue::Bool(*b),
        FilterValue::TimestampMs(ms) => PredicateValue::TimestampMicros(ms.checked_mul(1000)?),
    };
    Some(Predicate {
        column: column.to_owned(),
        op,
        value,
    })
}

/// A connector that offers the filter's predicates with every read (the
/// first read of a page and the re-read that finds its resume point alike).
struct PushedDown {
    inner: Arc<dyn Connector>,
    predicates: Vec<Predicate>,
}

impl Connector for PushedDown {
    fn describe(&self) -> &ConnectorDescription {
        self.inner.describe()
    }

    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<ReadStream, ConnectorError>> {
        let mut all = self.predicates.clone();
        all.extend(request.pushdown.iter().cloned());
        self.inner.read(request.pushdown(all))
    }

    fn health(&self) -> BoxFuture<'_, Result<HealthReport, ConnectorError>> {
        self.inner.health()
    }
}

/// `connector`, offering `filter`'s predicates with every read.
pub fn with_filter(connector: Arc<dyn Connector>, filter: Option<&Filter>) -> Arc<dyn Connector> {
    let predicates = filter.map(predicates).unwrap_or_default();
    if predicates.is_empty() {
        return connector;
    }
    Arc::new(PushedDown {
        inner: connector,
        predicates,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    fn cmp(column: &str, op: CompareOp, value: FilterValue) -> Filter {
        Filter::Compare {
            column: column.into(),
            op,
            value,
        }
    }

    #[test]
    fn only_what_every_kept_row_satisfies_goes_down() {
        let f = Filter::All(vec![
            cmp(
                "district",
                CompareOp::Eq,
                FilterValue::String("x'; --".into()),
            ),
            Filter::Any(vec![
                cmp("kwh", CompareOp::Gt, FilterValue::Int(1)),
                cmp("kwh", CompareOp::Lt, FilterValue::Int(0)),
            ]),
            Filter::All(vec![cmp(
                "ts",
                CompareOp::Ge,
                FilterValue::TimestampMs(1_700_000_000_000),
            )]),
            cmp("kwh", CompareOp::Lt, FilterValue::Float(2.5)),
            cmp("kwh", CompareOp::Eq, FilterValue::Float(2.5)),
            cmp("ts", CompareOp::Lt, FilterValue::TimestampMs(i64::MAX)),
        ]);
        let p = predicates(&f);
        assert_eq!(
            p,
            vec![
                Predicate {
                    column: "district".into(),
                    op: PredicateOp::Eq,
                    value: PredicateValue::Text("x'; --".into()),
                },
                Predicate {
                    column: "ts".into(),
                    op: PredicateOp::Ge,
                    value: PredicateValue::TimestampMicros(1_700_000_000_000_000),
                },
                Predicate {
                    column: "kwh".into(),
                    op: PredicateOp::Eq,
                    value: PredicateValue::Float(2.5),
                },
            ]
        );
        let any = Filter::Any(vec![cmp("a", CompareOp::Eq, FilterValue::Int(1))]);
        assert!(predicates(&any).is_empty());
    }
}
