//! Errors.

/// What went wrong while writing or reading an audit trail (tampering found by the
/// verifier is not an error: it is a [`crate::Problem`] in the [`crate::Report`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read or written.
    #[error("audit log I/O: {0}")]
    Io(String),
    /// The database cannot be reached or did not answer.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// Anything else the database reported.
    #[error("audit store: {0}")]
    Backend(String),
    /// The existing trail cannot be continued: its last record does not verify.
    #[error("audit log corrupt: {0}")]
    Corrupt(String),
    /// Bad input (the message says which).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A key could not be used.
    #[error("key: {0}")]
    Key(String),
    /// The writer has stopped (after [`crate::AuditLog::shutdown`]).
    #[error("the audit writer has stopped")]
    Closed,
}

impl From<oba_httpsig::Error> for AuditError {
    fn from(e: oba_httpsig::Error) -> Self {
        AuditError::Key(e.to_string())
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, AuditError>;
