//! Kafka error codes for the broker's errors, with the meaning Kafka gives
//! them, so Kafka clients' retry logic (retriable vs fatal, refresh
//! metadata or not) works unchanged. One place, like `error.rs` for gRPC.

use tributary_proto::batch::BatchError;
use tributary_proto::v1;

use crate::error::Error;

pub const NONE: i16 = 0;
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
pub const CORRUPT_MESSAGE: i16 = 2;
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub const NOT_COORDINATOR: i16 = 16;
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
pub const ILLEGAL_GENERATION: i16 = 22;
pub const UNKNOWN_MEMBER_ID: i16 = 25;
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
pub const REBALANCE_IN_PROGRESS: i16 = 27;
pub const UNSUPPORTED_VERSION: i16 = 35;
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
pub const INVALID_PARTITIONS: i16 = 37;
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
pub const INVALID_CONFIG: i16 = 40;
pub const NOT_CONTROLLER: i16 = 41;
pub const INVALID_REQUEST: i16 = 42;
pub const POLICY_VIOLATION: i16 = 44;
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
pub const KAFKA_STORAGE_ERROR: i16 = 56;
pub const NON_EMPTY_GROUP: i16 = 68;
pub const GROUP_ID_NOT_FOUND: i16 = 69;
pub const FENCED_LEADER_EPOCH: i16 = 74;
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
pub const FENCED_INSTANCE_ID: i16 = 82;
/// OffsetDelete of a topic a live member of the group subscribes to.
pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
pub const INVALID_RECORD: i16 = 87;
pub const UNKNOWN_TOPIC_ID: i16 = 100;
pub const UNSUPPORTED_ENDPOINT_TYPE: i16 = 119;

/// The Kafka code for a broker error.
pub fn code(e: &Error) -> i16 {
    match e {
        Error::InvalidTopicName { .. } => INVALID_TOPIC_EXCEPTION,
        Error::TopicExists(_) => TOPIC_ALREADY_EXISTS,
        Error::UnknownTopic(_) | Error::UnknownPartition { .. } => UNKNOWN_TOPIC_OR_PARTITION,
        Error::InvalidConfigValue { .. } | Error::UnknownConfig(_) => INVALID_CONFIG,
        Error::InvalidPartitions(_) => INVALID_PARTITIONS,
        Error::InvalidReplicationFactor(_) => INVALID_REPLICATION_FACTOR,
        Error::RecordTooLarge { .. } => MESSAGE_TOO_LARGE,
        Error::CorruptBatch { source: BatchError::UnsupportedCompression(_), .. } => {
            UNSUPPORTED_COMPRESSION_TYPE
        }
        Error::CorruptBatch { .. } => CORRUPT_MESSAGE,
        Error::InvalidRequest(_) => INVALID_REQUEST,
        Error::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        Error::OutOfOrderSequence { .. } => OUT_OF_ORDER_SEQUENCE_NUMBER,
        Error::InvalidProducerEpoch { .. } => INVALID_PRODUCER_EPOCH,
        Error::UnknownGroup(_) => GROUP_ID_NOT_FOUND,
        Error::GroupNotEmpty(..) => NON_EMPTY_GROUP,
        Error::CommitRejected(reason, _) => commit_code(*reason),
        Error::Precondition(_) => POLICY_VIOLATION,
        Error::Storage(_) | Error::DiskFull(_) | Error::LogOffline { .. } => KAFKA_STORAGE_ERROR,
        Error::ReplicaAppendRefused { .. } => UNKNOWN_SERVER_ERROR,
        // Kafka refuses client writes to internal topics as an invalid topic.
        Error::InternalTopic(_) => INVALID_TOPIC_EXCEPTION,
        Error::ShuttingDown => NOT_LEADER_OR_FOLLOWER,
        Error::NotController { .. } => NOT_CONTROLLER,
        Error::Unavailable(_) => LEADER_NOT_AVAILABLE,
        Error::NotLeader { .. } => NOT_LEADER_OR_FOLLOWER,
        Error::NotCoordinator { .. } => NOT_COORDINATOR,
        Error::Forwarded(status) => status_code(status),
        // Mirror links are not managed over the Kafka protocol.
        Error::MirrorLinkExists(_) | Error::UnknownMirrorLink(_) => INVALID_REQUEST,
    }
}

/// The code Kafka answers a refused commit with: an unknown member rejoins
/// with a new id, a stale generation rejoins keeping its id, a fenced
/// static member stops.
pub fn commit_code(reason: crate::error::Rejection) -> i16 {
    use crate::error::Rejection as R;
    match reason {
        R::GroupHasMembers | R::UnknownMember => UNKNOWN_MEMBER_ID,
        R::FencedInstance => FENCED_INSTANCE_ID,
        R::StaleGeneration | R::NotAssigned => ILLEGAL_GENERATION,
    }
}

/// The code for the controller's answer to a forwarded admin call.
fn status_code(status: &tonic::Status) -> i16 {
    use tonic::Code;
    let message = status.message();
    match status.code() {
        Code::AlreadyExists => TOPIC_ALREADY_EXISTS,
        Code::NotFound => UNKNOWN_TOPIC_OR_PARTITION,
        Code::InvalidArgument if message.contains("replication factor") => INVALID_REPLICATION_FACTOR,
        Code::InvalidArgument if message.contains("partition") => INVALID_PARTITIONS,
        Code::InvalidArgument if message.contains("config") => INVALID_CONFIG,
        Code::InvalidArgument if message.contains("topic name") => INVALID_TOPIC_EXCEPTION,
        Code::InvalidArgument => INVALID_REQUEST,
        Code::PermissionDenied => INVALID_TOPIC_EXCEPTION,
        Code::FailedPrecondition => POLICY_VIOLATION,
        Code::Unavailable | Code::DeadlineExceeded => NOT_CONTROLLER,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// The Kafka code for a per-partition error of the shared handlers.
pub fn partition_code(e: &v1::PartitionError) -> i16 {
    use v1::ErrorCode as C;
    match C::try_from(e.code).unwrap_or(C::StorageError) {
        C::None => NONE,
        C::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        C::NotLeader => NOT_LEADER_OR_FOLLOWER,
        C::UnknownTopicOrPartition => UNKNOWN_TOPIC_OR_PARTITION,
        C::CorruptMessage => CORRUPT_MESSAGE,
        C::StorageError => KAFKA_STORAGE_ERROR,
        C::NotEnoughReplicas => NOT_ENOUGH_REPLICAS,
        C::NotEnoughReplicasAfterAppend => NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        C::FencedLeaderEpoch => FENCED_LEADER_EPOCH,
        C::UnknownLeaderEpoch => UNKNOWN_LEADER_EPOCH,
        C::LeaderNotAvailable => LEADER_NOT_AVAILABLE,
        C::RequestTimedOut => REQUEST_TIMED_OUT,
        C::NotCoordinator => NOT_COORDINATOR,
        C::CoordinatorLoadInProgress => COORDINATOR_LOAD_IN_PROGRESS,
        C::RebalanceInProgress => REBALANCE_IN_PROGRESS,
        C::UnknownMemberId => UNKNOWN_MEMBER_ID,
        C::IllegalGeneration => ILLEGAL_GENERATION,
        C::FencedInstanceId => FENCED_INSTANCE_ID,
        C::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        C::InvalidProducerEpoch => INVALID_PRODUCER_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_kafkas_meaning() {
        let cases = [
            (Error::UnknownTopic("t".into()), UNKNOWN_TOPIC_OR_PARTITION),
            (Error::RecordTooLarge { topic: "t".into(), partition: 0, size: 9, max: 1 }, MESSAGE_TOO_LARGE),
            (
                Error::CorruptBatch {
                    topic: "t".into(),
                    partition: 0,
                    source: BatchError::UnsupportedCompression(6),
                },
                UNSUPPORTED_COMPRESSION_TYPE,
            ),
            (
                Error::OutOfOrderSequence {
                    topic: "t".into(),
                    partition: 0,
                    producer_id: 1,
                    expected: 2,
                    got: 4,
                },
                OUT_OF_ORDER_SEQUENCE_NUMBER,
            ),
            (Error::TopicExists("t".into()), TOPIC_ALREADY_EXISTS),
            (
                Error::NotLeader { node: 0, topic: "t".into(), partition: 0, leader: Some(1) },
                NOT_LEADER_OR_FOLLOWER,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(code(&e), want, "{e}");
        }
        let refused =
            v1::PartitionError { code: v1::ErrorCode::NotEnoughReplicas as i32, ..Default::default() };
        assert_eq!(partition_code(&refused), NOT_ENOUGH_REPLICAS);
        let forwarded = Error::Forwarded(tonic::Status::already_exists("topic 't' already exists"));
        assert_eq!(code(&forwarded), TOPIC_ALREADY_EXISTS);
    }
}
