//! Open data: the public tier's published releases (anonymised aggregates
//! made from a release spec) and the open-data API that serves them.
//! `releases` is the on-disk release directory both sides share;
//! `publish` makes releases from the specs in the node config, debiting
//! `ledger`, the per-dataset ε budget.

pub mod http;
pub mod ledger;
pub mod publish;
pub mod releases;
