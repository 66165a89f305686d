//! What can go wrong in the toolkit. A command's own refusal (its domain error) is kept apart
//! from technical failures, so that a caller can answer "no" without treating it as a fault.

/// An event that could not be turned into JSON or back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event type '{event_type}'{}: {problem}", at.as_ref().map_or_else(String::new, |a| format!(" at {a}")))]
pub struct CodecError {
    pub event_type: String,
    /// Where the event is stored (`stream-1@3, position 17`), when it was read.
    pub at: Option<String>,
    pub problem: String,
}

impl CodecError {
    pub fn new(event_type: &str, problem: impl Into<String>) -> Self {
        CodecError {
            event_type: event_type.to_string(),
            at: None,
            problem: problem.into(),
        }
    }

    /// Names where the event is stored.
    pub fn at(mut self, stream_id: &str, revision: u64, position: u64) -> Self {
        self.at = Some(format!("{stream_id}@{revision}, position {position}"));
        self
    }
}

/// Why loading state failed: the store's error, or an event that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] annal_core::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError<E> {
    /// The decision refused the command (the domain's own error); nothing was written.
    #[error("the command was refused: {0}")]
    Rejected(E),
    /// Every attempt lost the race to a concurrent writer; nothing was written.
    #[error("gave up after {attempts} attempts, each in conflict with a concurrent writer (the last: {last})")]
    Contended {
        attempts: u32,
        last: annal_core::Error,
    },
    /// The store failed; whether the events were written is as the error says (an
    /// [`annal_core::Error::Unavailable`] after the last retry leaves it unknown).
    #[error(transparent)]
    Store(annal_core::Error),
    /// An event does not decode or encode.
    #[error(transparent)]
    Codec(CodecError),
}

impl<E> From<LoadError> for CommandError<E> {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Store(e) => CommandError::Store(e),
            LoadError::Codec(e) => CommandError::Codec(e),
        }
    }
}

impl<E> From<CodecError> for CommandError<E> {
    fn from(e: CodecError) -> Self {
        CommandError::Codec(e)
    }
}
