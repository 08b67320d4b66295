//! Anonymised open-data releases of a dataset's Arrow record batches.
//!
//! A [`ReleaseSpec`] (the owner's `[[opendata.release]]` config table) names the privacy unit,
//! the group-by columns with their generalisation (time buckets, EPSG:3035 grid cells, regions,
//! bands, categories) and the measures. [`Releaser`] streams batches into a [`Release`]: either
//! k-anonymity (k distinct units per cell, primary and secondary suppression) or differential
//! privacy (contribution bounding, exact discrete Laplace or Gaussian noise from OpenDP over
//! OpenSSL's CSPRNG, cells released only when their noisy distinct-unit count reaches a
//! threshold). The crate reads no clock and does no I/O but writing outputs and reading a
//! regions GeoJSON file. Design and formulas: `docs/opendata.md`.

pub mod dp;
pub mod engine;
pub mod error;
pub mod generalise;
pub mod geo;
pub mod noise;
pub mod output;
pub mod spec;
pub mod suppress;

pub use dp::NoisyQuantity;
pub use engine::{Diagnostics, DpReport, Release, ReleaseReport, Releaser};
pub use error::{ReleaseError, SpecError};
pub use generalise::STAR_LABEL;
pub use geo::{Laea, OUTSIDE, Regions};
pub use noise::{Noise, NoiseError, OpenDpNoise};
pub use output::{write_csv, write_parquet, write_report};
pub use spec::{
    BudgetPeriod, BudgetSpec, CountOf, DpSpec, GroupBy, GroupKind, Measure, MeasureKind, Mechanism,
    ReleaseSpec, SUPPRESSED_COLUMN, TimeBucket,
};
