//! The broker's one error type and its mapping to gRPC status codes.
//!
//! Every message says what was wrong and, where there is one, what to do; the
//! CLI prints it as it is.

use tributary_proto::batch::BatchError;

/// Why the coordinator refused a commit: Kafka clients react to each
/// differently (rejoin with a new member id, rejoin keeping it, stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A commit from outside the membership while the group has members.
    GroupHasMembers,
    UnknownMember,
    /// A static member replaced by a newer instance with its id.
    FencedInstance,
    StaleGeneration,
    /// A partition the member does not own in this generation.
    NotAssigned,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("unknown partition {partition} of topic '{topic}' (it has {count} partitions: 0..{count})")]
    UnknownPartition { topic: String, partition: u32, count: u32 },
    #[error("invalid value '{value}' for config '{key}': {reason}")]
    InvalidConfigValue { key: String, value: String, reason: String },
    #[error("unknown config '{0}' (see `tributary topic describe` for the supported keys)")]
    UnknownConfig(String),
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid replication factor: {0}")]
    InvalidReplicationFactor(String),
    #[error("batch of {size} bytes for {topic}-{partition} is larger than max.message.bytes ({max}); raise the topic's max.message.bytes or send smaller batches")]
    RecordTooLarge { topic: String, partition: u32, size: usize, max: i64 },
    #[error("corrupt record batch for {topic}-{partition}: {source}")]
    CorruptBatch { topic: String, partition: u32, source: BatchError },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("offset {offset} is out of range for {topic}-{partition} (valid: {start}..={end})")]
    OffsetOutOfRange { topic: String, partition: u32, offset: i64, start: i64, end: i64 },
    #[error("out of order sequence from producer {producer_id} on {topic}-{partition}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence { topic: String, partition: u32, producer_id: i64, expected: i32, got: i32 },
    #[error("producer {producer_id} is fenced on {topic}-{partition}: its epoch {got} is older than the current {current_epoch}")]
    InvalidProducerEpoch { topic: String, partition: u32, producer_id: i64, current_epoch: i16, got: i16 },
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    #[error("group '{0}' has {1} active member(s); stop its consumers first")]
    GroupNotEmpty(String, usize),
    #[error("{1}")]
    CommitRejected(Rejection, String),
    /// The cluster is not in the state the call needs (a broker still
    /// hosting replicas cannot be removed).
    #[error("{0}")]
    Precondition(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("disk full: {0}; free space by deleting topics or lowering retention")]
    DiskFull(String),
    #[error("partition {partition} is offline: {reason}; nothing more is acknowledged or served from it until the broker restarts and re-verifies its log")]
    LogOffline { partition: String, reason: String },
    #[error("replicated append to {partition} refused: {reason}; reconcile with the leader (OffsetForLeaderEpoch, truncate) and fetch again from the log end")]
    ReplicaAppendRefused { partition: String, reason: String },
    #[error("topic '{0}' is internal: only the brokers write, alter or delete it")]
    InternalTopic(String),
    #[error("broker is shutting down")]
    ShuttingDown,
    #[error("this broker is not the controller{}", match .controller { Some(c) => format!(" (broker {c} is)"), None => " and no controller is elected right now".to_string() })]
    NotController { controller: Option<i32> },
    #[error("{0}")]
    Unavailable(String),
    #[error("broker {node} does not lead {topic}-{partition}{}", match .leader { Some(l) => format!(" (broker {l} does)"), None => String::new() })]
    NotLeader { node: i32, topic: String, partition: u32, leader: Option<i32> },
    #[error("this broker does not coordinate group '{group}'{}; ask FindCoordinator", match .coordinator { Some(c) => format!(" (broker {c} does)"), None => " (its coordinator is being elected)".to_string() })]
    NotCoordinator { group: String, coordinator: Option<i32> },
    #[error("mirror link '{0}' already exists (use `mirror create --update` to change it)")]
    MirrorLinkExists(String),
    #[error("unknown mirror link '{0}' (see `tributary mirror list`)")]
    UnknownMirrorLink(String),
    /// The controller's answer to a forwarded admin call, passed on as is.
    #[error("{}", .0.message())]
    Forwarded(tonic::Status),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done; a full disk says so.
    pub fn from_io(context: &str, e: std::io::Error) -> Error {
        if crate::log::fs::is_disk_full(&e) {
            Error::DiskFull(format!("{context}: {e}"))
        } else {
            Error::Storage(format!("{context}: {e}"))
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull(_))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if crate::log::fs::is_disk_full(&e) {
            Error::DiskFull(e.to_string())
        } else {
            Error::Storage(e.to_string())
        }
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        let text = e.to_string();
        if text.contains("No space left on device") {
            Error::DiskFull(format!("rocksdb: {text}"))
        } else {
            Error::Storage(format!("rocksdb: {text}"))
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        if let Error::Forwarded(status) = e {
            return status;
        }
        let code = match &e {
            Error::InvalidTopicName { .. }
            | Error::InvalidConfigValue { .. }
            | Error::UnknownConfig(_)
            | Error::InvalidPartitions(_)
            | Error::InvalidReplicationFactor(_)
            | Error::RecordTooLarge { .. }
            | Error::CorruptBatch { .. }
            | Error::InvalidRequest(_) => Code::InvalidArgument,
            Error::TopicExists(_) | Error::MirrorLinkExists(_) => Code::AlreadyExists,
            Error::UnknownMirrorLink(_) => Code::NotFound,
            Error::UnknownTopic(_) | Error::UnknownPartition { .. } | Error::UnknownGroup(_) => {
                Code::NotFound
            }
            Error::GroupNotEmpty(..) | Error::CommitRejected(..) | Error::Precondition(_) => {
                Code::FailedPrecondition
            }
            Error::OffsetOutOfRange { .. } => Code::OutOfRange,
            Error::OutOfOrderSequence { .. }
            | Error::InvalidProducerEpoch { .. }
            | Error::ReplicaAppendRefused { .. } => Code::FailedPrecondition,
            Error::Storage(_) => Code::Internal,
            Error::DiskFull(_) => Code::ResourceExhausted,
            Error::LogOffline { .. } => Code::Unavailable,
            Error::InternalTopic(_) => Code::PermissionDenied,
            Error::ShuttingDown => Code::Unavailable,
            Error::NotController { .. } | Error::Unavailable(_) | Error::NotLeader { .. } => {
                Code::Unavailable
            }
            Error::Forwarded(s) => s.code(),
            Error::NotCoordinator { .. } => Code::Unavailable,
        };
        tonic::Status::new(code, e.to_string())
    }
}
