use std::sync::Arc;

use uuid::Uuid;

use crate::ExpectedRevision;

/// An I/O error kept whole (its kind, message and the error itself) and shared, so that
/// [`Error`] stays `Clone`. Two are equal when their kinds and messages are.
#[derive(Debug, Clone)]
pub struct IoError(Arc<std::io::Error>);

impl IoError {
    pub fn new(e: std::io::Error) -> Self {
        IoError(Arc::new(e))
    }

    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }

    /// The error as the system reported it.
    pub fn get(&self) -> &std::io::Error {
        &self.0
    }
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for IoError {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoError {}

/// Every way an Annal operation can fail, shared by all backends.
///
/// Conflicts ([`WrongExpectedRevision`](Error::WrongExpectedRevision),
/// [`ConditionFailed`](Error::ConditionFailed)) are outcomes the caller handles; the rest are
/// failures. Messages are lowercase and carry the values involved.
///
/// Every variant crosses the wire (`annal-proto` maps each one to a status and back), so a
/// new variant is added there too; the enum is matched exhaustively to make sure of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("wrong expected revision on stream '{stream}': expected {expected}, actual {}", actual.map_or_else(|| "no stream".to_string(), |r| format!("revision {r}")))]
    WrongExpectedRevision {
        stream: String,
        expected: ExpectedRevision,
        /// The stream's last revision; `None` when the stream does not exist.
        actual: Option<u64>,
    },

    #[error("append condition failed: event at position {position} matches the query{}", after.map_or_else(String::new, |a| format!(" after position {a}")))]
    ConditionFailed {
        /// The first matching event found.
        position: u64,
        after: Option<u64>,
    },

    #[error("event id {event_id} is already used by the event at position {position} in stream '{stream}': {problem}")]
    EventIdConflict {
        event_id: Uuid,
        stream: String,
        position: u64,
        problem: String,
    },

    #[error("invalid {field}: {problem}")]
    InvalidArgument { field: String, problem: String },

    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },

    #[error("the store refuses writes after an earlier failure ({cause}); reopen it to recover")]
    Poisoned { cause: String },

    #[error("the disk is full: {message}; writes are refused until space is freed and the store is reopened")]
    DiskFull { message: String },

    #[error("i/o error while {op}: {error}")]
    Io { op: String, error: IoError },

    #[error("corruption in {file} at offset {offset}: {problem}")]
    Corruption {
        file: String,
        offset: u64,
        problem: String,
    },

    #[error("{path} has format version {found}, but this build reads version {supported}")]
    UnsupportedFormat {
        path: String,
        found: u32,
        supported: u32,
    },

    #[error("the store is closed")]
    Closed,

    #[error("not found: {0}")]
    NotFound(String),

    #[error("unavailable: {0}")]
    Unavailable(String),

    /// A server refused the request for want of a valid token.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),

    /// A server refused the request: the token does not allow it.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// An I/O error, classified: a full disk becomes [`Error::DiskFull`].
    pub fn io(op: impl Into<String>, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            Error::DiskFull {
                message: format!("{} failed: {e}", op.into()),
            }
        } else {
            Error::Io {
                op: op.into(),
                error: IoError::new(e),
            }
        }
    }

    /// True for the outcomes of a lost optimistic-concurrency race.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::WrongExpectedRevision { .. } | Error::ConditionFailed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_values() {
        let e = Error::WrongExpectedRevision {
            stream: "account-1".into(),
            expected: ExpectedRevision::Exact(3),
            actual: Some(5),
        };
        assert_eq!(
            e.to_string(),
            "wrong expected revision on stream 'account-1': expected revision 3, actual revision 5"
        );
        let e = Error::WrongExpectedRevision {
            stream: "a".into(),
            expected: ExpectedRevision::StreamExists,
            actual: None,
        };
        assert!(e
            .to_string()
            .ends_with("expected stream exists, actual no stream"));
        let full = Error::io("fsync", std::io::Error::from_raw_os_error(28));
        assert!(matches!(full, Error::DiskFull { .. }), "{full:?}");
    }
}
