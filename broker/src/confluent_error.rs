//! The one error type of the broker's Confluent-compatible HTTP APIs (the
//! schema registry and the REST proxy): an HTTP status and the
//! `error_code` Confluent's services answer, since clients branch on the
//! code (40401 is "no such subject" in the registry and "no such topic" in
//! the proxy, 409 "incompatible", 42202 "a value schema is missing", ...).
//! Both APIs answer the same body shape, `{"error_code": N, "message": S}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfluentError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error_code: u32,
    message: &'a str,
}

pub type Result<T, E = ConfluentError> = std::result::Result<T, E>;

impl ConfluentError {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        ConfluentError { status, code, message: message.into() }
    }

    pub fn body(&self) -> String {
        serde_json::to_string(&Body { error_code: self.code, message: &self.message }).unwrap_or_default()
    }

    /// The answer, with the content type of the API that failed.
    pub fn response(&self, content_type: &'static str) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [(header::CONTENT_TYPE, content_type)], self.body()).into_response()
    }
}

impl std::fmt::Display for ConfluentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// The schema registry's errors.
impl ConfluentError {
    pub fn subject_not_found(subject: &str) -> Self {
        Self::new(404, 40401, format!("Subject '{subject}' not found."))
    }
    pub fn version_not_found(subject: &str, version: &str) -> Self {
        Self::new(404, 40402, format!("Version {version} not found for subject '{subject}'."))
    }
    pub fn schema_not_found(what: &str) -> Self {
        Self::new(404, 40403, format!("Schema {what} not found."))
    }
    pub fn subject_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40404,
            format!("Subject '{subject}' was soft deleted. Set permanent=true to delete permanently."),
        )
    }
    pub fn subject_not_soft_deleted(subject: &str) -> Self {
        Self::new(
            404,
            40405,
            format!("Subject '{subject}' was not deleted first before being permanently deleted."),
        )
    }
    pub fn version_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            404,
            40406,
            format!(
                "Version {version} of subject '{subject}' was soft deleted. Set permanent=true to delete permanently."
            ),
        )
    }
    pub fn version_not_soft_deleted(subject: &str, version: u32) -> Self {
        Self::new(
            404,
            40407,
            format!("Version {version} of subject '{subject}' was not deleted first before being permanently deleted."),
        )
    }
    pub fn subject_level_not_configured(subject: &str) -> Self {
        Self::new(
            404,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )
    }
    pub fn incompatible(messages: &[String]) -> Self {
        Self::new(
            409,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema: {}",
                messages.join("; ")
            ),
        )
    }
    pub fn invalid_schema(why: &str) -> Self {
        Self::new(422, 42201, format!("Invalid schema: {why}"))
    }
    pub fn invalid_version(version: &str) -> Self {
        Self::new(
            422,
            42202,
            format!("The specified version '{version}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""),
        )
    }
    pub fn invalid_level(level: &str) -> Self {
        Self::new(
            422,
            42203,
            format!("Invalid compatibility level '{level}'. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"),
        )
    }
    /// JSON, but not a request this API takes.
    pub fn unprocessable(why: impl Into<String>) -> Self {
        Self::new(422, 422, why)
    }
    pub fn bad_request(why: &str) -> Self {
        Self::new(400, 400, why.to_string())
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, 413, format!("The request body is larger than {limit} bytes."))
    }
    pub fn store(why: &str) -> Self {
        Self::new(500, 50001, format!("Error in the backend data store: {why}"))
    }
    pub fn timeout(why: &str) -> Self {
        Self::new(500, 50002, format!("Operation timed out: {why}"))
    }
    pub fn forwarding(why: &str) -> Self {
        Self::new(500, 50003, format!("Error while forwarding the request to the leader: {why}"))
    }
    pub fn not_found_route() -> Self {
        Self::new(404, 404, "HTTP 404 Not Found")
    }
}

/// The REST proxy's errors.
impl ConfluentError {
    pub fn topic_not_found(topic: &str) -> Self {
        Self::new(404, 40401, format!("Topic {topic} not found."))
    }
    pub fn partition_not_found(topic: &str, partition: i64) -> Self {
        Self::new(404, 40402, format!("Partition {partition} of topic {topic} not found."))
    }
    pub fn cluster_not_found(id: &str) -> Self {
        Self::new(404, 404, format!("Cluster {id} cannot be found."))
    }
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        Self::new(415, 415, format!("HTTP 415 Unsupported Media Type: {}", got.unwrap_or("no Content-Type")))
    }
    /// Not JSON at all.
    pub fn malformed(why: impl std::fmt::Display) -> Self {
        Self::new(400, 400, format!("Malformed request body: {why}"))
    }
    pub fn key_schema_missing() -> Self {
        Self::new(
            422,
            42201,
            "Request includes keys and uses a format that requires schemas, but does not include the \
             key_schema or key_schema_id fields",
        )
    }
    pub fn value_schema_missing() -> Self {
        Self::new(
            422,
            42202,
            "Request includes values and uses a format that requires schemas, but does not include the \
             value_schema or value_schema_id fields",
        )
    }
    pub fn avro_conversion(why: impl std::fmt::Display) -> Self {
        Self::new(422, 42203, format!("Conversion of JSON to Avro failed: {why}"))
    }
    pub fn proxy_invalid_schema(why: impl std::fmt::Display) -> Self {
        Self::new(422, 42205, format!("Invalid schema: {why}"))
    }
    pub fn too_many_records(n: usize, limit: usize) -> Self {
        Self::new(422, 422, format!("The request holds {n} records; at most {limit} are taken per request."))
    }
    /// The producer could not be started, or the cluster could not be asked.
    pub fn unavailable(why: impl std::fmt::Display) -> Self {
        Self::new(500, 50002, format!("Kafka error: {why}"))
    }
    pub fn instance_not_found() -> Self {
        Self::new(404, 40403, "Consumer instance not found.")
    }
    pub fn instance_exists(group: &str, id: &str) -> Self {
        Self::new(
            409,
            40902,
            format!("Consumer instance with the specified name already exists in group {group}: {id}"),
        )
    }
    /// A consumer instance asked to do what its state does not allow.
    pub fn illegal_state(why: impl std::fmt::Display) -> Self {
        Self::new(409, 40903, format!("Illegal state: {why}"))
    }
    pub fn format_mismatch(instance: &str, asked: &str) -> Self {
        Self::new(
            406,
            40601,
            format!(
                "The requested embedded data format does not match the deserializer for this consumer \
                 instance: it was created with format {instance}, the request accepts {asked}"
            ),
        )
    }
    pub fn too_many_instances(limit: usize) -> Self {
        Self::new(
            429,
            42901,
            format!(
                "This broker already holds {limit} REST consumer instances: delete unused ones, or create \
                 the instance on another broker"
            ),
        )
    }
    pub fn record_not_shown(
        format: &str,
        topic: &str,
        partition: u32,
        offset: i64,
        why: impl std::fmt::Display,
    ) -> Self {
        Self::new(
            500,
            50002,
            format!(
                "Kafka error: record {topic}-{partition}@{offset} cannot be shown as {format}: {why}; the \
                 instance stays at it"
            ),
        )
    }
}
