//! The client's one error type.
//!
//! Every failure a caller can see — a broker's refusal, a connection that
//! cannot be made, a timeout, a batch that fails its checksum — becomes one
//! [`Error`] whose `Display` is a single line a person can act on. The CLI
//! prints it as it is, after `error: `.

use std::fmt;

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The broker refused the call with a gRPC status; `message` is the
    /// broker's own explanation.
    #[error("{}: {message}", code_name(*code))]
    Status { code: tonic::Code, message: String },
    /// The broker could not be reached (or the connection broke); the message
    /// names the address.
    #[error("{0}")]
    Transport(String),
    /// No answer in time; the message says to what and how long we waited.
    #[error("{0}")]
    Timeout(String),
    /// The caller asked for something impossible, caught before any request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The broker sent bytes that are not a valid record batch.
    #[error("corrupt data from the broker: {0}")]
    Corrupt(String),
    /// A batch of this partition cannot be read: it fails its checksum, or
    /// its records cannot be decoded. What came before it was returned; the
    /// consumer stays at `offset` (the first record not returned) and
    /// reports this until the application skips the batch or seeks.
    #[error(
        "cannot read {topic}-{partition} at offset {offset}: {reason}; the consumer stays at this offset \
         until the batch is skipped (skip_corrupt) or the partition is moved (seek)"
    )]
    CorruptRecord { topic: String, partition: u32, offset: i64, reason: String },
    /// A consumer's position is outside what the partition holds (deleted by
    /// retention, or not written yet).
    #[error(
        "offset {offset} is out of range for {topic}-{partition} (valid: {start}..={end}); \
         seek to an offset in that range, or start from earliest or latest"
    )]
    OffsetOutOfRange { topic: String, partition: u32, offset: i64, start: i64, end: i64 },
    /// The producer was closed (or dropped) before this record could be sent.
    #[error("the producer is closed")]
    Closed,
    /// Another process joined the consumer group with this consumer's
    /// static group instance id and took its place; this consumer cannot go
    /// on (fatal: every later call reports it too).
    #[error("{0}")]
    Fenced(String),
    /// The schema registry refused the call: its HTTP status, Confluent
    /// error code (40401 no such subject, 409 incompatible, ...) and message.
    #[error("schema registry: {message} (error {code})")]
    Registry { status: u16, code: i64, message: String },
    /// A value could not be serialized or deserialized (Avro).
    #[error("{0}")]
    Serialization(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a client does about a failed call, the one classification every
/// retry loop (producer, consumer, groups, admin) follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Retrying cannot help (bad input, unknown topic, a broker's internal
    /// error): report it at once.
    Fail,
    /// The same broker may succeed shortly (too few in-sync replicas for
    /// now, replication timed out, a leader epoch it has not caught up
    /// with, a coordinator still loading): retry after a pause.
    Retry,
    /// The leader or coordinator moved, or its broker cannot be reached:
    /// learn where to go (the leader hint, or fresh metadata) and retry
    /// there after a pause.
    Reroute,
}

/// The recovery for a per-partition (or group) outcome code; `None` for
/// NONE.
pub(crate) fn code_recovery(code: i32) -> Option<Recovery> {
    use tributary_proto::v1::ErrorCode;
    Some(match ErrorCode::try_from(code) {
        Ok(ErrorCode::None) => return None,
        Ok(ErrorCode::NotLeader | ErrorCode::LeaderNotAvailable | ErrorCode::FencedLeaderEpoch)
        | Ok(ErrorCode::NotCoordinator) => Recovery::Reroute,
        Ok(
            ErrorCode::UnknownLeaderEpoch
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::RequestTimedOut
            | ErrorCode::CoordinatorLoadInProgress,
        ) => Recovery::Retry,
        Ok(
            ErrorCode::OffsetOutOfRange
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::CorruptMessage
            | ErrorCode::StorageError
            | ErrorCode::RebalanceInProgress
            | ErrorCode::UnknownMemberId
            | ErrorCode::IllegalGeneration
            | ErrorCode::FencedInstanceId
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::InvalidProducerEpoch,
        )
        | Err(_) => Recovery::Fail,
    })
}

impl Error {
    /// True when trying the same call again later may succeed: the broker is
    /// unavailable or restarting, the leader or coordinator moved, the
    /// connection broke, or a deadline passed. Bad input, unknown topics and
    /// internal broker errors are not retried.
    pub fn is_retriable(&self) -> bool {
        self.recovery() != Recovery::Fail
    }

    /// What a client does about this failure (see [`Recovery`]).
    pub(crate) fn recovery(&self) -> Recovery {
        match self {
            // The broker may be gone: ask the cluster where to go now.
            Error::Transport(_) | Error::Timeout(_) => Recovery::Reroute,
            Error::Status { code, .. } => match code {
                // What leadership, coordinator and shutdown codes map to.
                tonic::Code::Unavailable => Recovery::Reroute,
                tonic::Code::DeadlineExceeded | tonic::Code::Aborted => Recovery::Retry,
                _ => Recovery::Fail,
            },
            Error::InvalidArgument(_)
            | Error::Corrupt(_)
            | Error::CorruptRecord { .. }
            | Error::OffsetOutOfRange { .. }
            | Error::Closed
            | Error::Fenced(_)
            | Error::Registry { .. }
            | Error::Serialization(_) => Recovery::Fail,
        }
    }

    /// Whether the connection itself failed (rather than the broker
    /// answering with a refusal): the connection is dropped and made again.
    pub(crate) fn is_transport(&self) -> bool {
        matches!(self, Error::Transport(_) | Error::Timeout(_))
    }

    /// Converts a gRPC status from a call to the broker at `addr`.
    ///
    /// A status the broker sent carries only its message; one that tonic made
    /// up on this side from an I/O or HTTP/2 error has a source chain, and is
    /// reported as a transport problem naming the address.
    pub(crate) fn from_status(status: tonic::Status, addr: &str) -> Error {
        use std::error::Error as _;
        if status.source().is_some() {
            let mut text = one_line(status.message());
            append_sources(&mut text, status.source());
            return Error::Transport(format!("cannot reach the broker at {addr}: {text}"));
        }
        Error::Status { code: status.code(), message: one_line(status.message()) }
    }

    /// A `Status` with a given code, for conditions the broker reports inside
    /// a successful response (per-partition error codes).
    pub(crate) fn status(code: tonic::Code, message: impl fmt::Display) -> Error {
        Error::Status { code, message: one_line(&message.to_string()) }
    }
}

/// A per-partition error code in a response, or `None` for `NONE`.
pub(crate) fn partition_error(e: Option<&tributary_proto::v1::PartitionError>) -> Option<Error> {
    use tonic::Code;
    use tributary_proto::v1::ErrorCode;
    let e = e?;
    let code = match ErrorCode::try_from(e.code) {
        Ok(ErrorCode::None) => return None,
        Ok(ErrorCode::OffsetOutOfRange) => Code::OutOfRange,
        // Leadership moves are transient: go where the leader is now, retry.
        Ok(
            ErrorCode::NotLeader
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::LeaderNotAvailable
            | ErrorCode::NotCoordinator,
        ) => Code::Unavailable,
        // The same broker will do, shortly.
        Ok(
            ErrorCode::NotEnoughReplicas
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::UnknownLeaderEpoch
            | ErrorCode::CoordinatorLoadInProgress,
        ) => Code::Aborted,
        Ok(ErrorCode::RequestTimedOut) => Code::DeadlineExceeded,
        Ok(ErrorCode::UnknownTopicOrPartition) => Code::NotFound,
        Ok(ErrorCode::CorruptMessage) => Code::DataLoss,
        Ok(ErrorCode::StorageError) => Code::Internal,
        // Group and producer-state outcomes are handled where they occur
        // (group membership, the producer's sender); should one reach here
        // it is a refusal, not something to retry as is.
        Ok(
            ErrorCode::RebalanceInProgress
            | ErrorCode::UnknownMemberId
            | ErrorCode::IllegalGeneration
            | ErrorCode::FencedInstanceId
            | ErrorCode::OutOfOrderSequence
            | ErrorCode::InvalidProducerEpoch,
        ) => Code::FailedPrecondition,
        Err(_) => Code::Unknown,
    };
    let name = ErrorCode::try_from(e.code)
        .map_or_else(|_| format!("error code {}", e.code), |c| c.as_str_name().to_string());
    let message = if e.message.is_empty() { name } else { e.message.clone() };
    Some(Error::status(code, message))
}

impl From<tributary_proto::batch::BatchError> for Error {
    fn from(e: tributary_proto::batch::BatchError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

/// Appends an error's causes as ": cause: deeper cause", skipping repeats.
pub(crate) fn append_sources(text: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(s) = source {
        let part = one_line(&s.to_string());
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
}

/// Collapses whitespace runs (newlines included) to single spaces: every
/// message ends up on one terminal line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Short lower-case names, so a message reads "not found: unknown topic 'x'".
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "broker error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_status_shows_code_name_and_message() {
        let e = Error::from_status(tonic::Status::not_found("unknown topic 'x'"), "127.0.0.1:7070");
        assert_eq!(e.to_string(), "not found: unknown topic 'x'");
        assert!(!e.is_retriable());
    }

    #[test]
    fn retriable_codes() {
        assert!(Error::status(tonic::Code::Unavailable, "shutting down").is_retriable());
        assert!(Error::status(tonic::Code::DeadlineExceeded, "late").is_retriable());
        assert!(!Error::status(tonic::Code::Internal, "disk").is_retriable());
        assert!(!Error::status(tonic::Code::InvalidArgument, "bad").is_retriable());
        assert!(Error::Transport("x".into()).is_retriable());
        assert!(Error::Timeout("x".into()).is_retriable());
    }

    fn code_error(code: tributary_proto::v1::ErrorCode) -> Error {
        let e = tributary_proto::v1::PartitionError { code: code as i32, ..Default::default() };
        partition_error(Some(&e)).unwrap()
    }

    #[test]
    fn leadership_codes_reroute_and_replication_codes_retry() {
        use tributary_proto::v1::ErrorCode as C;
        for code in [C::NotLeader, C::LeaderNotAvailable, C::FencedLeaderEpoch, C::NotCoordinator] {
            assert_eq!(code_recovery(code as i32), Some(Recovery::Reroute), "{code:?}");
            assert_eq!(code_error(code).recovery(), Recovery::Reroute, "{code:?}");
        }
        for code in [
            C::UnknownLeaderEpoch,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::RequestTimedOut,
            C::CoordinatorLoadInProgress,
        ] {
            assert_eq!(code_recovery(code as i32), Some(Recovery::Retry), "{code:?}");
            assert_eq!(code_error(code).recovery(), Recovery::Retry, "{code:?}");
            assert!(code_error(code).is_retriable());
        }
        for code in [
            C::OffsetOutOfRange,
            C::UnknownTopicOrPartition,
            C::CorruptMessage,
            C::StorageError,
            C::OutOfOrderSequence,
            C::InvalidProducerEpoch,
            C::FencedInstanceId,
        ] {
            assert_eq!(code_recovery(code as i32), Some(Recovery::Fail), "{code:?}");
            assert!(!code_error(code).is_retriable(), "{code:?}");
        }
        assert_eq!(code_recovery(C::None as i32), None);
        assert_eq!(code_recovery(999), Some(Recovery::Fail));
        // A code without a message still says which it was.
        assert!(code_error(C::NotEnoughReplicas).to_string().contains("NOT_ENOUGH_REPLICAS"));
    }

    #[test]
    fn broken_connections_reroute() {
        assert_eq!(Error::Transport("cut".into()).recovery(), Recovery::Reroute);
        assert_eq!(Error::Timeout("slow".into()).recovery(), Recovery::Reroute);
        assert!(Error::Timeout("slow".into()).is_transport());
        assert!(!Error::status(tonic::Code::Unavailable, "moved").is_transport());
        assert_eq!(Error::status(tonic::Code::Unavailable, "shutting down").recovery(), Recovery::Reroute);
        assert_eq!(Error::status(tonic::Code::NotFound, "unknown topic").recovery(), Recovery::Fail);
        assert_eq!(Error::Closed.recovery(), Recovery::Fail);
    }

    #[test]
    fn messages_are_one_line() {
        let e = Error::status(tonic::Code::Internal, "a\nb\n");
        assert_eq!(e.to_string(), "broker error: a b");
    }
}
