//! Typed errors of the connector framework.
//!
//! Every failure is a value of [`ConnectorError`]; nothing in this crate panics on bad source data.
//! User-controlled values (paths, column names, cell values) appear in backticks.

/// Everything that can go wrong when building, checking or reading a connector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The connector configuration is invalid (before any data is looked at).
    #[error("invalid connector config: {0}")]
    Config(String),
    /// The source cannot be reached: missing path, no permission, no matching files.
    #[error("source `{path}` is unreachable: {reason}")]
    Unreachable {
        /// The configured path.
        path: String,
        /// Why it cannot be reached.
        reason: String,
    },
    /// The declared schema disagrees with the data (or with a dataset's declared schema).
    #[error("schema mismatch in `{file}`: column `{column}`: {reason}")]
    SchemaMismatch {
        /// The file (relative to the source) or schema the mismatch was found in.
        file: String,
        /// The column concerned.
        column: String,
        /// Expected versus found.
        reason: String,
    },
    /// The path is outside the directories the node allows for sources, or is one of the node's
    /// own files (see [`crate::confine::SourceRoots`]).
    #[error("source `{path}` is refused: {reason}")]
    Confined {
        /// The path as given (or the file relative to the source).
        path: String,
        /// Why.
        reason: crate::confine::Refusal,
    },
    /// The source cannot be read: corrupt or truncated file, broken structure, I/O failure.
    #[error("cannot read `{file}`: {reason}")]
    Source {
        /// The file (relative to the source) that failed.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// A file cannot be written (sample data, exports).
    #[error("cannot write `{file}`: {reason}")]
    Write {
        /// The file.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// The read request is invalid (unknown column, batch size out of range).
    #[error("invalid read request: {0}")]
    InvalidRequest(String),
    /// The resume cursor is malformed, belongs to another source or mode, or points past the
    /// end of a file that has since been rewritten.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    /// The reader stopped without finishing (an internal failure such as a panicking decoder).
    #[error("connector reader failed: {0}")]
    Internal(String),
}

impl ConnectorError {
    pub(crate) fn source(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Source {
            file: file.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn mismatch(
        file: impl Into<String>,
        column: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::SchemaMismatch {
            file: file.into(),
            column: column.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unreachable(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Unreachable {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Turns a caught panic payload into a readable message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f`, converting a panic inside a third-party decoder into [`ConnectorError::Internal`].
pub(crate) fn guard<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, ConnectorError>,
) -> Result<T, ConnectorError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(ConnectorError::Internal(format!(
            "{what} panicked: {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// Shortens a user value for an error message.
pub(crate) fn snippet(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}
