//! The APIs and versions the Kafka listener serves, and ApiVersions, which
//! tells clients exactly that: an API absent here is absent from the
//! answer, and its requests close the connection (see `frame`).
//!
//! The ranges stop before versions whose meaning the broker does not have:
//! Produce 13 and Fetch 13 name topics by id only; ListOffsets 7 asks for
//! the max-timestamp offset; InitProducerId 5 is KIP-890's transactions;
//! OffsetCommit 9 and OffsetFetch 8 are KIP-848's (batched groups);
//! JoinGroup 9 is KIP-848's server-side assignment.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use super::errors;

/// (API, lowest version, highest version) served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 8),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::InitProducerId, 0, 4),
    // v5 adds KIP-848's group types filter.
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    // v2 adds KIP-1073's fenced brokers; v1's endpoint type is served.
    (ApiKey::DescribeCluster, 0, 1),
    // v6 (KIP-1043) answers GROUP_ID_NOT_FOUND for an unknown group.
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::OffsetDelete, 0, 0),
    // v0 and v1 have no current leader epoch to fence with (and the
    // message types start at v2).
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
];

/// The served API with this key.
pub fn served(key: i16) -> Option<ApiKey> {
    SERVED.iter().find(|(api, _, _)| *api as i16 == key).map(|(api, _, _)| *api)
}

/// The versions served of `api`.
pub fn range(api: ApiKey) -> Option<(i16, i16)> {
    SERVED.iter().find(|(a, _, _)| *a == api).map(|(_, min, max)| (*min, *max))
}

/// The ApiVersions answer; `error` is UNSUPPORTED_VERSION when the client
/// asked in a version newer than this broker's (it then retries in one the
/// list allows).
pub fn api_versions(error: i16) -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = error;
    resp.api_keys = SERVED
        .iter()
        .map(|(api, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = *api as i16;
            v.min_version = *min;
            v.max_version = *max;
            v
        })
        .collect();
    resp
}

/// ApiVersions for a version the broker knows (it may ask in any).
pub fn ok() -> ApiVersionsResponse {
    api_versions(errors::NONE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_one_the_message_types_can_encode() {
        for (api, min, max) in SERVED {
            let valid = api.valid_versions();
            assert!(valid.min <= *min && *max <= valid.max, "{api:?} {min}..={max} outside {valid:?}");
        }
    }
}
