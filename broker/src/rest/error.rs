//! The REST proxy's errors, with the HTTP status and the `error_code`
//! Confluent's REST Proxy answers for them (clients branch on the code:
//! 40401 is "no such topic", 42202 "a value schema is missing", ...).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error_code: u32,
    message: &'a str,
}

pub type Result<T, E = RestError> = std::result::Result<T, E>;

impl RestError {
    pub fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        RestError { status, code, message: message.into() }
    }

    pub fn body(&self) -> String {
        serde_json::to_string(&Body { error_code: self.code, message: &self.message }).unwrap_or_default()
    }

    /// The answer, with the content type of the API version that failed.
    pub fn response(&self, content_type: &'static str) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [(header::CONTENT_TYPE, content_type)], self.body()).into_response()
    }

    pub fn topic_not_found(topic: &str) -> Self {
        Self::new(404, 40401, format!("Topic {topic} not found."))
    }
    pub fn partition_not_found(topic: &str, partition: i64) -> Self {
        Self::new(404, 40402, format!("Partition {partition} of topic {topic} not found."))
    }
    pub fn schema_not_found(id: u32) -> Self {
        Self::new(404, 40403, format!("Schema {id} not found."))
    }
    pub fn cluster_not_found(id: &str) -> Self {
        Self::new(404, 404, format!("Cluster {id} cannot be found."))
    }
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        Self::new(415, 415, format!("HTTP 415 Unsupported Media Type: {}", got.unwrap_or("no Content-Type")))
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(413, 413, format!("The request body is larger than the limit of {limit} bytes."))
    }
    /// Not JSON at all.
    pub fn malformed(why: impl std::fmt::Display) -> Self {
        Self::new(400, 400, format!("Malformed request body: {why}"))
    }
    /// JSON, but not a request this API takes.
    pub fn unprocessable(why: impl Into<String>) -> Self {
        Self::new(422, 422, why)
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
    pub fn invalid_schema(why: impl std::fmt::Display) -> Self {
        Self::new(422, 42205, format!("Invalid schema: {why}"))
    }
    pub fn too_many_records(n: usize, limit: usize) -> Self {
        Self::new(422, 422, format!("The request holds {n} records; at most {limit} are taken per request."))
    }
    /// The producer could not be started, or the cluster could not be asked.
    pub fn unavailable(why: impl std::fmt::Display) -> Self {
        Self::new(500, 50002, format!("Kafka error: {why}"))
    }
}

impl From<crate::registry::error::RegistryError> for RestError {
    fn from(e: crate::registry::error::RegistryError) -> Self {
        RestError { status: e.status, code: e.code, message: e.message }
    }
}
