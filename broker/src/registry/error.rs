//! The registry's errors, with the HTTP status and the `error_code` that
//! Confluent's Schema Registry answers for them (clients branch on the
//! code: 40401 means "no such subject", 409 "incompatible", and so on).

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error_code: u32,
    message: &'a str,
}

impl RegistryError {
    fn new(status: u16, code: u32, message: impl Into<String>) -> Self {
        RegistryError { status, code, message: message.into() }
    }

    pub fn body(&self) -> String {
        serde_json::to_string(&Body { error_code: self.code, message: &self.message }).unwrap_or_default()
    }

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
    pub fn unprocessable(why: &str) -> Self {
        Self::new(422, 422, why.to_string())
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

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
