//! MDS (Mobility Data Specification 2.0) at a node, both sides of an obligation:
//! - [`provider`]: the obliged company's endpoint (`[mds_provider]`), answering the MDS
//!   provider API from its hourly batch files to the recipients' nodes, each answer decided
//!   (`deliver_obligation`) and audited before it leaves;
//! - [`puller`]: the receiving node's background task of an `mds` source, taking each ended
//!   UTC hour, validating it whole and recording the attempt as a delivery
//!   (`crate::obligations::deliveries`);
//! - [`batches`]: what was taken, in the `mds_batches` table: the imported trips (served as
//!   the dataset through `allmende_connectors::mds::open_connector`), the accepted hours and
//!   the rejected batches kept for inspection.
//!
//! `docs/mds.md` describes configuration, validation and inspection.

pub mod batches;
pub mod provider;
pub mod puller;

pub use batches::{DatasetBatches, Imported, Kept, MdsBatches};
pub use puller::{PullHandle, Pulls};
