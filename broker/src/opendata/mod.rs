//! Open data: the public tier's published releases (anonymised aggregates
//! made from a release spec) and the open-data API that serves them.
//! `releases` is the on-disk release directory both sides share.

pub mod http;
pub mod releases;
