//! The crate's errors: an invalid release spec ([`SpecError`], naming release, key and column)
//! and failures while releasing ([`ReleaseError`]).

use thiserror::Error;

/// A release spec that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("release `{release}`: `{key}`: {message}")]
pub struct SpecError {
    /// The release's dataset.
    pub release: String,
    /// The spec key at fault (`group_by[1].columns`, `dp.epsilon`, …).
    pub key: String,
    /// What is wrong, naming the column in backticks where there is one.
    pub message: String,
}

impl SpecError {
    /// A new error for `release` at `key`.
    pub fn new(release: &str, key: String, message: String) -> SpecError {
        SpecError {
            release: release.to_string(),
            key,
            message,
        }
    }

    /// Drops a trailing `.` from the key (for errors about a whole entry).
    pub(crate) fn trim_key(mut self) -> SpecError {
        if self.key.ends_with('.') {
            self.key.pop();
        }
        self
    }
}

/// A failure while computing a release.
#[derive(Debug, Error)]
pub enum ReleaseError {
    /// The spec does not fit the data.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A regions file could not be read or parsed.
    #[error("regions file `{file}`: {message}")]
    Regions {
        /// The file as named in the spec.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// A batch does not have the schema the releaser was built for.
    #[error("batch does not match the dataset schema: {0}")]
    Batch(String),
    /// The noise source failed (no entropy); nothing is released.
    #[error("noise source failed: {0}")]
    Noise(String),
    /// Building or writing the output failed.
    #[error("output: {0}")]
    Output(String),
}

impl From<arrow::error::ArrowError> for ReleaseError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ReleaseError::Output(e.to_string())
    }
}

impl From<parquet::errors::ParquetError> for ReleaseError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        ReleaseError::Output(e.to_string())
    }
}
