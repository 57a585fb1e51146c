//! Confluent Schema Registry's REST API, on the broker's HTTP port.
//!
//! Reads are answered from this broker's replayed state, after it has
//! caught up with what the leader of `__schemas` committed
//! ([`super::sync_with_leader`]), so a read on any broker sees every
//! write acknowledged before it. Every change
//! (register, delete, config) goes through [`change`], the one place where
//! the authorization check of the security work goes: it either commits
//! the change here (this broker leads `__schemas`) or forwards the request
//! to the leader.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::avro::Level;
use super::store::{self, SchemaRequest, VersionSpec, WriteOp};
use super::{Route, OFFSET_HEADER};
use crate::confluent_error::{ConfluentError, Result};
use crate::forward;
use crate::BrokerState;

pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Largest request body: a schema with its envelope.
pub const MAX_BODY: usize = 2 << 20;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

type S = State<Arc<BrokerState>>;
type Q = Query<HashMap<String, String>>;

pub fn routes() -> Router<Arc<BrokerState>> {
    Router::new()
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(list_versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(get_version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(get_version_schema))
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_schema_text))
        .route("/schemas/ids/{id}/versions", get(get_schema_versions))
        .route("/schemas/ids/{id}/subjects", get(get_schema_subjects))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route("/compatibility/subjects/{subject}/versions", post(check_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(check_version))
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config).put(put_subject_config).delete(delete_subject_config),
        )
}

fn ok(v: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response()
}

fn fail(e: ConfluentError) -> Response {
    e.response(CONTENT_TYPE)
}

fn reply(r: Result<Value>) -> Response {
    r.map_or_else(fail, ok)
}

/// Any route this router does not know, as Confluent answers it.
pub async fn not_found() -> Response {
    fail(ConfluentError::not_found_route())
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn read_body(body: Body) -> Result<Bytes> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| ConfluentError::too_large(MAX_BODY))
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ConfluentError::unprocessable(format!("Unrecognized request body: {e}")))
}

fn parse_id(id: &str) -> Result<u32> {
    id.parse().map_err(|_| ConfluentError::schema_not_found(id))
}

/// The request as it came, for forwarding.
pub struct Raw {
    method: Method,
    uri: Uri,
    content_type: Option<String>,
    body: Bytes,
}

impl Raw {
    fn new(method: Method, uri: Uri, headers: &HeaderMap, body: Bytes) -> Raw {
        let content_type =
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        Raw { method, uri, content_type, body }
    }
}

/// Every write and delete of the registry: authorize (the security work
/// adds its check here), then commit on the leader of `__schemas` or
/// forward to it. A forwarded write is answered once this broker has
/// replayed it, so the caller's next read here sees it.
pub async fn change(state: &Arc<BrokerState>, op: WriteOp, raw: Raw) -> Response {
    // Authorization goes here, before anything is routed or written: every
    // registry change passes through this function, forwarded or not.
    let route = match super::route(state).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match route {
        Route::Here => match super::commit(state, op).await {
            Ok((answer, offset)) => {
                let mut r = ok(answer);
                if let Ok(v) = offset.to_string().parse() {
                    r.headers_mut().insert(OFFSET_HEADER, v);
                }
                r
            }
            Err(e) => fail(e),
        },
        Route::Forward(addr) => {
            let path = raw.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let headers: Vec<(&str, &str)> =
                raw.content_type.as_deref().map(|ct| ("content-type", ct)).into_iter().collect();
            let sent = forward::send(&addr, raw.method, path, &headers, raw.body, FORWARD_TIMEOUT).await;
            match sent {
                Err(e) => fail(ConfluentError::forwarding(&e)),
                Ok(a) => {
                    // The leader's `__schemas` offset after the write: read
                    // here only once this broker has replayed that far.
                    if let Some(offset) = a.header(OFFSET_HEADER).and_then(|v| v.parse().ok()) {
                        state.registry.wait_applied(offset, FORWARD_TIMEOUT).await;
                    }
                    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    let ct = a.content_type().unwrap_or_else(|| CONTENT_TYPE.to_string());
                    (status, [(header::CONTENT_TYPE, ct)], a.body).into_response()
                }
            }
        }
    }
}

/// Registers `schema` under `subject` for the REST proxy's Avro produce,
/// through [`change`] like any registration (authorized, forwarded to the
/// leader of `__schemas`); the schema's id.
pub async fn register_for_proxy(state: &Arc<BrokerState>, subject: &str, schema: &str) -> Result<u32> {
    let request = SchemaRequest { schema: schema.to_string(), schema_type: None, references: None };
    let body = Bytes::from(json!({ "schema": schema }).to_string());
    let uri: Uri = format!("/subjects/{subject}/versions")
        .parse()
        .map_err(|_| ConfluentError::unprocessable(format!("'{subject}' cannot be a subject in a path")))?;
    let raw = Raw { method: Method::POST, uri, content_type: Some(CONTENT_TYPE.to_string()), body };
    let answer = change(state, WriteOp::Register { subject: subject.to_string(), request }, raw).await;
    let status = answer.status();
    let bytes = axum::body::to_bytes(answer.into_body(), MAX_BODY)
        .await
        .map_err(|e| ConfluentError::store(&format!("reading the registry's answer: {e}")))?;
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        let id = v["id"].as_u64().and_then(|id| u32::try_from(id).ok());
        return id.ok_or_else(|| ConfluentError::store(&format!("the registry answered without an id: {v}")));
    }
    Err(ConfluentError {
        status: status.as_u16(),
        code: v["error_code"].as_u64().and_then(|c| u32::try_from(c).ok()).unwrap_or(50001),
        message: v["message"].as_str().unwrap_or("schema registration failed").to_string(),
    })
}

// ---- subjects and versions ----

async fn list_subjects(State(b): S, Query(q): Q) -> Response {
    super::sync_with_leader(&b).await;
    ok(json!(b.registry.read(|s| s.subjects(flag(&q, "deleted")))))
}

async fn list_versions(State(b): S, Path(subject): Path<String>, Query(q): Q) -> Response {
    super::sync_with_leader(&b).await;
    reply(b.registry.read(|s| s.versions(&subject, flag(&q, "deleted")).map(|v| json!(v))))
}

fn version_json(b: &BrokerState, subject: &str, version: &str, deleted: bool) -> Result<Value> {
    let spec = VersionSpec::parse(version)?;
    b.registry.read(|s| {
        let (v, e) = s.version(subject, spec, deleted)?;
        Ok(s.version_json(subject, v, e))
    })
}

async fn get_version(State(b): S, Path((subject, version)): Path<(String, String)>, Query(q): Q) -> Response {
    super::sync_with_leader(&b).await;
    reply(version_json(&b, &subject, &version, flag(&q, "deleted")))
}

async fn get_version_schema(
    State(b): S,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    super::sync_with_leader(&b).await;
    match version_json(&b, &subject, &version, flag(&q, "deleted")) {
        Ok(v) => raw_schema(&v),
        Err(e) => fail(e),
    }
}

/// The schema text alone, as Confluent's `/schema` routes answer it.
fn raw_schema(v: &Value) -> Response {
    let text = v["schema"].as_str().unwrap_or_default().to_string();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

async fn register(
    State(b): S,
    Path(subject): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let request: SchemaRequest = match parse_json(&bytes) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let raw = Raw::new(method, uri, &headers, bytes);
    change(&b, WriteOp::Register { subject, request }, raw).await
}

async fn lookup(State(b): S, Path(subject): Path<String>, Query(q): Q, body: Body) -> Response {
    super::sync_with_leader(&b).await;
    let r = async {
        let request: SchemaRequest = parse_json(&read_body(body).await?)?;
        b.registry.read(|s| s.lookup(&subject, &request, flag(&q, "deleted")))
    };
    reply(r.await)
}

async fn delete_subject(
    State(b): S,
    Path(subject): Path<String>,
    Query(q): Q,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let op = WriteOp::DeleteSubject { subject, permanent: flag(&q, "permanent") };
    change(&b, op, Raw::new(method, uri, &headers, Bytes::new())).await
}

async fn delete_version(
    State(b): S,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Q,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let version = match VersionSpec::parse(&version) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let op = WriteOp::DeleteVersion { subject, version, permanent: flag(&q, "permanent") };
    change(&b, op, Raw::new(method, uri, &headers, Bytes::new())).await
}

// ---- schemas by id ----

fn schema_json(b: &BrokerState, id: &str) -> Result<Value> {
    let id = parse_id(id)?;
    b.registry.read(|s| {
        let stored = s.schema(id)?;
        let mut v = json!({});
        store::decorate(&mut v, stored);
        Ok(v)
    })
}

async fn get_schema(State(b): S, Path(id): Path<String>) -> Response {
    super::sync_with_leader(&b).await;
    reply(schema_json(&b, &id))
}

async fn get_schema_text(State(b): S, Path(id): Path<String>) -> Response {
    super::sync_with_leader(&b).await;
    match schema_json(&b, &id) {
        Ok(v) => raw_schema(&v),
        Err(e) => fail(e),
    }
}

async fn get_schema_versions(State(b): S, Path(id): Path<String>, Query(q): Q) -> Response {
    super::sync_with_leader(&b).await;
    let r = parse_id(&id).and_then(|id| {
        b.registry.read(|s| {
            s.schema(id)?;
            let versions = s.id_versions(id, flag(&q, "deleted"));
            Ok(json!(versions
                .into_iter()
                .map(|(subject, version)| json!({"subject": subject, "version": version}))
                .collect::<Vec<_>>()))
        })
    });
    reply(r)
}

async fn get_schema_subjects(State(b): S, Path(id): Path<String>, Query(q): Q) -> Response {
    super::sync_with_leader(&b).await;
    let r = parse_id(&id).and_then(|id| {
        b.registry.read(|s| {
            s.schema(id)?;
            let mut subjects: Vec<String> =
                s.id_versions(id, flag(&q, "deleted")).into_iter().map(|(subject, _)| subject).collect();
            subjects.dedup();
            Ok(json!(subjects))
        })
    });
    reply(r)
}

// ---- compatibility ----

async fn check(
    b: &BrokerState,
    subject: &str,
    version: Option<&str>,
    q: &HashMap<String, String>,
    body: Body,
) -> Response {
    let r = async {
        let spec = version.map(VersionSpec::parse).transpose()?;
        let request: SchemaRequest = parse_json(&read_body(body).await?)?;
        let problems = b.registry.read(|s| s.compatibility(subject, spec, &request))?;
        let mut v = json!({"is_compatible": problems.is_empty()});
        if flag(q, "verbose") {
            v["messages"] = json!(problems);
        }
        Ok(v)
    };
    reply(r.await)
}

async fn check_version(
    State(b): S,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Q,
    body: Body,
) -> Response {
    super::sync_with_leader(&b).await;
    check(&b, &subject, Some(&version), &q, body).await
}

async fn check_all(State(b): S, Path(subject): Path<String>, Query(q): Q, body: Body) -> Response {
    super::sync_with_leader(&b).await;
    check(&b, &subject, None, &q, body).await
}

// ---- config ----

#[derive(serde::Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

async fn get_global_config(State(b): S) -> Response {
    super::sync_with_leader(&b).await;
    ok(json!({"compatibilityLevel": b.registry.read(|s| s.global_level()).as_str()}))
}

async fn get_subject_config(State(b): S, Path(subject): Path<String>, Query(q): Q) -> Response {
    super::sync_with_leader(&b).await;
    let level = b.registry.read(|s| {
        s.subject_level(&subject).or_else(|| flag(&q, "defaultToGlobal").then(|| s.global_level()))
    });
    match level {
        Some(l) => ok(json!({"compatibilityLevel": l.as_str()})),
        None => fail(ConfluentError::subject_level_not_configured(&subject)),
    }
}

async fn put_config(
    b: &Arc<BrokerState>,
    subject: Option<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let bytes = read_body(body).await?;
        let req: ConfigRequest = parse_json(&bytes)?;
        let level = Level::parse(&req.compatibility)
            .ok_or_else(|| ConfluentError::invalid_level(&req.compatibility))?;
        Ok((level, bytes))
    };
    match r.await {
        Ok((level, bytes)) => {
            change(b, WriteOp::SetConfig { subject, level }, Raw::new(method, uri, &headers, bytes)).await
        }
        Err(e) => fail(e),
    }
}

async fn put_global_config(
    State(b): S,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    put_config(&b, None, method, uri, headers, body).await
}

async fn put_subject_config(
    State(b): S,
    Path(subject): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    put_config(&b, Some(subject), method, uri, headers, body).await
}

async fn delete_subject_config(
    State(b): S,
    Path(subject): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    change(&b, WriteOp::DeleteConfig { subject }, Raw::new(method, uri, &headers, Bytes::new())).await
}
