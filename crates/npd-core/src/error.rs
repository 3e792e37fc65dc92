//! Error types shared by the npd crates.

use std::path::PathBuf;

/// Result with the npd [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors any npd stage can report. Every variant names what was wrong and
/// where (file, field, sample or tensor) so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The run configuration is malformed or out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An input value (sample, prompt, tensor shape...) does not meet the
    /// contract of the stage receiving it.
    #[error("{what}: {message}")]
    InvalidInput {
        /// What was wrong, e.g. `sample 17` or `tensor model.norm.weight`.
        what: String,
        /// What was expected and what was found.
        message: String,
    },
    /// Work that has no checkpoint of its own (preparing models, say) was
    /// asked to stop (e.g. Ctrl-C) and stopped between two of its steps.
    #[error("stopped on request while {what}")]
    Interrupted {
        /// What was being done.
        what: String,
    },
    /// A backend (model code, tokenizer, transport) failed.
    #[error("{context}: {cause}")]
    Backend {
        /// What was being done.
        context: String,
        /// The backend's error (written into this error's message, so it
        /// is not repeated as its source).
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Errors in a run configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read configuration: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key,
    /// wrong type). The message carries the line, column and key.
    #[error("{origin}: {message}")]
    Parse {
        /// The file name, or `<string>` for in-memory text.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is well-formed but out of its allowed range.
    #[error("{origin}: `{key}` = {got}: expected {expected}")]
    Invalid {
        /// The file name, or `<string>` for in-memory text.
        origin: String,
        /// Dotted key, e.g. `train.lr`.
        key: String,
        /// The allowed range or form.
        expected: String,
        /// The value found.
        got: String,
    },
}
