//! The release pipeline: the one way rows leave a node.
//!
//! `Access.Fetch` (and every later way out: Arrow Flight, open data, relay)
//! runs: Cedar decision (audited) → durable release intent (fail closed) →
//! read via the connector → row filter → consent filter → pseudonymise →
//! project → Arrow IPC → stream (backpressure) → release completion.
//!
//! Architecture invariant: the stages in [`pipeline`] are pure functions over
//! record batches; [`fetch`] is the only code that sends rows, and it obtains
//! them only after holding a `ReleaseGuard`.

pub mod caller;
pub mod cursor;
pub mod error;
pub mod fetch;
pub mod filter;
pub mod pipeline;
pub mod pushdown;
pub mod ratelimit;
pub mod seal;
pub mod ticket;

pub use caller::{Caller, PublicCaller};
pub use error::FetchError;
pub use fetch::{FetchLimits, FetchParams, Fetcher};
pub use filter::{CompareOp, Filter, FilterValue};
