//! Confluent REST Proxy v2 consumer API: `POST /consumers/{group}` creates
//! an instance ([`super::instances`]), and every request under
//! `/consumers/{group}/instances/{instance}` is answered by the broker the
//! instance lives on:
//!
//! | request                                   | does                                   |
//! |-------------------------------------------|----------------------------------------|
//! | `DELETE .../instances/{i}`                | closes it (commits with auto-commit)   |
//! | `POST/GET/DELETE .../subscription`        | subscribe (topics or pattern) / show / leave |
//! | `GET .../records?timeout=&max_bytes=`     | records in the instance's format       |
//! | `POST .../offsets`                        | commit (given offsets, or all returned)|
//! | `GET .../offsets`                         | the group's committed offsets          |
//! | `POST .../positions[/beginning\|/end]`    | seek assigned partitions               |
//! | `GET .../assignments`                     | the partitions the group gave it       |
//!
//! A request for an instance this broker does not hold goes to the broker
//! that answered for it last, else to every other broker in turn (marked
//! [`FORWARDED`], so it is never forwarded twice); only the holder answers
//! anything but "instance not found". Manual assignment (`POST
//! .../assignments`) is refused: an instance is always a group member.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use tributary_client::{Admin, ConsumerRecord, OffsetReset, OffsetSpec, TopicPartition};

use super::instances::{client_error, Instance, Settings, Subscription, MAX_POLL_WAIT};
use super::v2::{Format, CONTENT_TYPE};
use crate::confluent_error::{ConfluentError, Result};
use crate::BrokerState;

/// Marks a request one broker sent on to another.
pub const FORWARDED: &str = "x-tributary-forwarded";

/// Records one answer carries at most, in bytes of keys and values
/// (Confluent's `consumer.request.max.bytes`).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

type S = State<Arc<BrokerState>>;

/// What a request under an instance asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Delete,
    Subscribe,
    Subscription,
    Unsubscribe,
    Records,
    Commit,
    Committed,
    Seek,
    SeekTo(OffsetSpec),
    Assignments,
    Assign,
}

impl Op {
    fn parse(method: &Method, path: &str) -> Option<Op> {
        Some(match (method.as_str(), path.trim_end_matches('/')) {
            ("DELETE", "") => Op::Delete,
            ("POST", "subscription") => Op::Subscribe,
            ("GET", "subscription") => Op::Subscription,
            ("DELETE", "subscription") => Op::Unsubscribe,
            ("GET", "records") => Op::Records,
            ("POST", "offsets") => Op::Commit,
            ("GET", "offsets") => Op::Committed,
            ("POST", "positions") => Op::Seek,
            ("POST", "positions/beginning") => Op::SeekTo(OffsetSpec::Earliest),
            ("POST", "positions/end") => Op::SeekTo(OffsetSpec::Latest),
            ("GET", "assignments") => Op::Assignments,
            ("POST", "assignments") => Op::Assign,
            _ => return None,
        })
    }
}

/// An answer that is not an error.
enum Reply {
    Json(Value),
    Records(Format, Value),
    /// 200 or 204 with no body.
    Empty(StatusCode),
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Json(v) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response(),
            Reply::Records(f, v) => {
                ([(header::CONTENT_TYPE, f.content_type())], v.to_string()).into_response()
            }
            Reply::Empty(status) => status.into_response(),
        }
    }
}

fn answer(r: Result<Reply>) -> Response {
    r.map_or_else(|e| e.response(CONTENT_TYPE), IntoResponse::into_response)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default, rename = "auto.offset.reset")]
    auto_offset_reset: Option<String>,
    /// `"true"`/`"false"` as Confluent documents it; JSON booleans too.
    #[serde(default, rename = "auto.commit.enable")]
    auto_commit_enable: Option<Value>,
    /// Accepted for compatibility; fetches already return what arrived.
    #[serde(default, rename = "fetch.min.bytes")]
    _fetch_min_bytes: Option<Value>,
    #[serde(default, rename = "consumer.request.timeout.ms")]
    request_timeout_ms: Option<Value>,
}

/// `POST /consumers/{group}`.
pub async fn create(State(b): S, Path(group): Path<String>, headers: HeaderMap, body: Body) -> Response {
    answer(create_instance(&b, &group, &headers, body).await)
}

async fn create_instance(
    b: &Arc<BrokerState>,
    group: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Reply> {
    check_content_type(headers)?;
    let body = super::read_body(body).await?;
    let req: CreateRequest =
        if body.iter().all(u8::is_ascii_whitespace) { CreateRequest::default() } else { parse(&body)? };
    check_name("group", group)?;
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    let settings = settings(&req)?;
    let instance = b.rest_instances.create(b, group, req.name, settings)?;
    let base_uri = format!(
        "http://{}/consumers/{}/instances/{}",
        b.config.http_advertised(),
        encode_segment(group),
        encode_segment(&instance.id)
    );
    Ok(Reply::Json(json!({"instance_id": instance.id, "base_uri": base_uri})))
}

fn settings(req: &CreateRequest) -> Result<Settings> {
    let mut s = Settings::default();
    if let Some(f) = &req.format {
        s.format = Format::from_name(f).ok_or_else(|| {
            ConfluentError::unprocessable(format!("unknown format '{f}': use binary, json or avro"))
        })?;
    }
    if let Some(r) = &req.auto_offset_reset {
        s.auto_offset_reset = r.parse::<OffsetReset>().map_err(ConfluentError::unprocessable)?;
    }
    if let Some(v) = &req.auto_commit_enable {
        s.auto_commit = match v {
            Value::Bool(b) => *b,
            Value::String(t) if t.eq_ignore_ascii_case("true") => true,
            Value::String(t) if t.eq_ignore_ascii_case("false") => false,
            other => {
                return Err(ConfluentError::unprocessable(format!(
                    "auto.commit.enable must be \"true\" or \"false\", not {other}"
                )))
            }
        };
    }
    if let Some(v) = &req.request_timeout_ms {
        s.request_timeout =
            Duration::from_millis(number(v, "consumer.request.timeout.ms")?).min(MAX_POLL_WAIT);
    }
    Ok(s)
}

/// A JSON number, or a string holding one (Confluent's configs are strings).
fn number(v: &Value, what: &str) -> Result<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|t| t.trim().parse().ok())).ok_or_else(|| {
        ConfluentError::unprocessable(format!("{what} must be a non-negative number, not {v}"))
    })
}

/// Group and instance names go into URIs: letters, digits, `.`, `_`, `-`.
fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfluentError::unprocessable(format!(
            "invalid consumer {what} '{name}': use 1 to 255 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The checked names need no escaping; anything else is percent-encoded.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Requests with a body of the consumer API are plain v2 JSON.
fn check_content_type(headers: &HeaderMap) -> Result<()> {
    match super::media_type(headers).as_deref() {
        Some("application/vnd.kafka.v2+json" | "application/vnd.kafka+json" | "application/json") => Ok(()),
        other => Err(ConfluentError::unsupported_media_type(other)),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let v: Value = serde_json::from_slice(body).map_err(ConfluentError::malformed)?;
    serde_json::from_value(v).map_err(|e| ConfluentError::unprocessable(format!("Unrecognized request: {e}")))
}

/// `/consumers/{group}/instances/{instance}`.
pub async fn instance_root(
    State(b): S,
    Path((group, id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(&b, &group, &id, "", method, &uri, &headers, body).await
}

/// `/consumers/{group}/instances/{instance}/{*op}`.
pub async fn instance_op(
    State(b): S,
    Path((group, id, op)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(&b, &group, &id, &op, method, &uri, &headers, body).await
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    b: &Arc<BrokerState>,
    group: &str,
    id: &str,
    op: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(op) = Op::parse(&method, op) else {
        return ConfluentError::not_found_route().response(CONTENT_TYPE);
    };
    let body = match super::read_body(body).await {
        Ok(body) => body,
        Err(e) => return e.response(CONTENT_TYPE),
    };
    match b.rest_instances.get(group, id) {
        Some(instance) => answer(run(b, &instance, op, uri, headers, &body).await),
        None => forward(b, group, id, method, uri, headers, body).await,
    }
}

async fn run(
    b: &Arc<BrokerState>,
    instance: &Instance,
    op: Op,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply> {
    match op {
        Op::Delete => {
            b.rest_instances.delete(&instance.group, &instance.id).await;
            Ok(Reply::Empty(StatusCode::NO_CONTENT))
        }
        Op::Subscribe => {
            check_content_type(headers)?;
            instance.subscribe(b, subscription(body)?).await?;
            Ok(Reply::Empty(StatusCode::NO_CONTENT))
        }
        Op::Subscription => {
            let topics = match instance.subscription().await {
                Some(Subscription::Topics(t)) => t,
                // A pattern: the topics it matched that the group assigned here.
                Some(Subscription::Pattern(_)) => {
                    let mut t: Vec<String> =
                        instance.assignment().await.into_iter().map(|tp| tp.topic).collect();
                    t.dedup();
                    t
                }
                None => Vec::new(),
            };
            Ok(Reply::Json(json!({"topics": topics})))
        }
        Op::Unsubscribe => {
            instance.unsubscribe().await?;
            Ok(Reply::Empty(StatusCode::NO_CONTENT))
        }
        Op::Records => records(b, instance, uri, headers).await,
        Op::Commit => {
            let offsets = commit_offsets(body)?;
            instance.commit(offsets).await?;
            Ok(Reply::Empty(StatusCode::OK))
        }
        Op::Committed => committed(b, instance, body).await,
        Op::Seek => {
            check_content_type(headers)?;
            let req: OffsetsRequest = parse(body)?;
            let offsets: Vec<(TopicPartition, i64)> = req
                .offsets
                .into_iter()
                .map(|o| (TopicPartition::new(o.topic, o.partition), o.offset))
                .collect();
            if let Some((tp, o)) = offsets.iter().find(|(_, o)| *o < 0) {
                return Err(ConfluentError::unprocessable(format!("offset {o} for {tp} is negative")));
            }
            instance.seek(&offsets).await?;
            Ok(Reply::Empty(StatusCode::NO_CONTENT))
        }
        Op::SeekTo(spec) => {
            check_content_type(headers)?;
            let req: PartitionsRequest = parse(body)?;
            let admin = admin(b).await?;
            let mut offsets = Vec::with_capacity(req.partitions.len());
            for p in req.partitions {
                let offset = admin.list_offsets(&p.topic, p.partition, spec).await.map_err(client_error)?;
                offsets.push((TopicPartition::new(p.topic, p.partition), offset));
            }
            instance.seek(&offsets).await?;
            Ok(Reply::Empty(StatusCode::NO_CONTENT))
        }
        Op::Assignments => {
            let partitions: Vec<Value> = instance
                .assignment()
                .await
                .into_iter()
                .map(|tp| json!({"topic": tp.topic, "partition": tp.partition}))
                .collect();
            Ok(Reply::Json(json!({"partitions": partitions})))
        }
        Op::Assign => Err(ConfluentError::illegal_state(
            "manual partition assignment is not supported: REST consumer instances are group members; \
             subscribe instead",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    #[serde(default)]
    topics: Option<Vec<String>>,
    #[serde(default)]
    topic_pattern: Option<String>,
}

fn subscription(body: &[u8]) -> Result<Subscription> {
    let req: SubscribeRequest = parse(body)?;
    match (req.topics, req.topic_pattern) {
        (Some(t), None) if !t.is_empty() => Ok(Subscription::Topics(t)),
        (None, Some(p)) => Ok(Subscription::Pattern(p)),
        _ => Err(ConfluentError::unprocessable(
            "a subscription needs either a non-empty \"topics\" list or a \"topic_pattern\", not both",
        )),
    }
}

#[derive(Deserialize)]
struct PartitionOffset {
    topic: String,
    partition: u32,
    offset: i64,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetsRequest {
    offsets: Vec<PartitionOffset>,
}

#[derive(Deserialize)]
struct PartitionRef {
    topic: String,
    partition: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionsRequest {
    partitions: Vec<PartitionRef>,
}

/// A commit request's offsets: none (an empty body) commits everything
/// returned; given ones name the last record consumed, as in Confluent's
/// proxy, so what is committed is the next one (`offset + 1`).
fn commit_offsets(body: &[u8]) -> Result<Option<Vec<(TopicPartition, i64)>>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let req: OffsetsRequest = parse(body)?;
    if req.offsets.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(req.offsets.len());
    for o in req.offsets {
        if o.offset < 0 {
            return Err(ConfluentError::unprocessable(format!(
                "offset {} for {}-{} is negative",
                o.offset, o.topic, o.partition
            )));
        }
        out.push((TopicPartition::new(o.topic, o.partition), o.offset + 1));
    }
    Ok(Some(out))
}

async fn admin(b: &BrokerState) -> Result<Admin> {
    Admin::connect(&super::own_grpc_address(b)).await.map_err(client_error)
}

/// The group's committed offsets of the asked partitions (an empty body:
/// of the instance's assignment).
async fn committed(b: &Arc<BrokerState>, instance: &Instance, body: &[u8]) -> Result<Reply> {
    let wanted: Vec<TopicPartition> = if body.iter().all(u8::is_ascii_whitespace) {
        instance.assignment().await
    } else {
        let req: PartitionsRequest = parse(body)?;
        req.partitions.into_iter().map(|p| TopicPartition::new(p.topic, p.partition)).collect()
    };
    let stored = admin(b).await?.fetch_offsets(&instance.group).await.map_err(client_error)?;
    let offsets: Vec<Value> = wanted
        .iter()
        .filter_map(|tp| {
            stored.iter().find(|e| e.topic == tp.topic && e.partition == tp.partition).map(|e| {
                json!({"topic": e.topic, "partition": e.partition, "offset": e.offset, "metadata": e.metadata})
            })
        })
        .collect();
    Ok(Reply::Json(json!({"offsets": offsets})))
}

/// `GET .../records`: the `Accept` header must allow the instance's format.
async fn records(b: &Arc<BrokerState>, instance: &Instance, uri: &Uri, headers: &HeaderMap) -> Result<Reply> {
    let format = instance.settings.format;
    check_accept(headers, format)?;
    let query = query_params(uri);
    let timeout = match query.get("timeout") {
        Some(v) => Duration::from_millis(number(&json!(v), "timeout")?),
        None => instance.settings.request_timeout,
    };
    let max_bytes = match query.get("max_bytes") {
        Some(v) => (number(&json!(v), "max_bytes")? as usize).min(MAX_RESPONSE_BYTES),
        None => MAX_RESPONSE_BYTES,
    };
    let polled = instance.poll(timeout, max_bytes).await?;
    let mut schemas = HashMap::new();
    let mut out = Vec::with_capacity(polled.len());
    for r in &polled {
        match show(b, format, r, &mut schemas).await {
            Ok(v) => out.push(v),
            Err(e) => {
                // Nothing of this answer is given: every partition goes
                // back to its first record polled, so none is skipped.
                instance.seek(&first_offsets(&polled)).await?;
                return Err(e);
            }
        }
    }
    Ok(Reply::Records(format, Value::Array(out)))
}

fn first_offsets(records: &[ConsumerRecord]) -> Vec<(TopicPartition, i64)> {
    let mut firsts: Vec<(TopicPartition, i64)> = Vec::new();
    for r in records {
        if !firsts.iter().any(|(tp, _)| tp.topic == r.topic && tp.partition == r.partition) {
            firsts.push((TopicPartition::new(r.topic.clone(), r.partition), r.offset));
        }
    }
    firsts
}

fn query_params(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Accepts no `Accept`, wildcards, plain v2 JSON, or the instance's own
/// embedded format; another embedded format is Confluent's 40601.
fn check_accept(headers: &HeaderMap, format: Format) -> Result<()> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let types: Vec<String> = accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .collect();
    let fits = |t: &str| {
        matches!(t, "*/*" | "application/*" | "application/json" | "application/vnd.kafka.v2+json")
            || t == format.content_type()
    };
    if types.iter().any(|t| fits(t)) {
        Ok(())
    } else {
        Err(ConfluentError::format_mismatch(format.name(), accept))
    }
}

/// One record as the REST proxy shows it.
async fn show(
    b: &Arc<BrokerState>,
    format: Format,
    r: &ConsumerRecord,
    schemas: &mut HashMap<u32, Schema>,
) -> Result<Value> {
    let key = show_bytes(b, format, r, r.key.as_ref(), schemas).await?;
    let value = show_bytes(b, format, r, r.value.as_ref(), schemas).await?;
    Ok(json!({"topic": r.topic, "key": key, "value": value, "partition": r.partition, "offset": r.offset}))
}

async fn show_bytes(
    b: &Arc<BrokerState>,
    format: Format,
    r: &ConsumerRecord,
    data: Option<&Bytes>,
    schemas: &mut HashMap<u32, Schema>,
) -> Result<Value> {
    let Some(data) = data else { return Ok(Value::Null) };
    let fail =
        |why: String| ConfluentError::record_not_shown(format.name(), &r.topic, r.partition, r.offset, why);
    match format {
        Format::Binary => {
            use base64::Engine;
            Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(data)))
        }
        Format::Json => serde_json::from_slice(data).map_err(|e| fail(format!("not JSON: {e}"))),
        Format::Avro => {
            let (id, mut body) = tributary_client::avro::unframe(data).map_err(|e| fail(e.to_string()))?;
            let schema = match schemas.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(writer_schema(b, id).await.map_err(|e| fail(e.message))?)
                }
            };
            let datum =
                apache_avro::from_avro_datum(schema, &mut body, None).map_err(|e| fail(e.to_string()))?;
            tributary_client::avro::avro_to_json(datum).map_err(|e| fail(e.to_string()))
        }
    }
}

/// The schema with `id`, from the embedded registry.
async fn writer_schema(b: &Arc<BrokerState>, id: u32) -> Result<Schema> {
    let find = || b.registry.read(|s| s.schema(id).map(|st| st.schema.clone()).ok());
    let text = match find() {
        Some(t) => t,
        None => {
            // Registered moments ago on the leader of `__schemas`.
            crate::registry::sync_with_leader(b).await;
            find().ok_or_else(|| ConfluentError::schema_not_found(&id.to_string()))?
        }
    };
    Schema::parse_str(&text).map_err(ConfluentError::proxy_invalid_schema)
}

/// Sends a request for an instance this broker does not hold to the one
/// that does; "not found" only when no broker holds it.
async fn forward(
    b: &Arc<BrokerState>,
    group: &str,
    id: &str,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if headers.contains_key(FORWARDED) {
        return ConfluentError::instance_not_found().response(CONTENT_TYPE);
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut pass: Vec<(&str, &str)> = vec![(FORWARDED, "1")];
    for name in ["content-type", "accept"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            pass.push((name, v));
        }
    }
    // A records request may wait its whole timeout on the other broker.
    let timeout = MAX_POLL_WAIT + Duration::from_secs(10);
    let mut unreachable = Vec::new();
    for addr in candidates(b, group, id) {
        match crate::forward::send(&addr, method.clone(), path, &pass, body.clone(), timeout).await {
            Ok(a) if a.status == 404 && is_instance_not_found(&a.body) => continue,
            Ok(a) => {
                b.rest_instances.set_owner(group, id, Some(addr));
                let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
                let ct = a.content_type().unwrap_or_else(|| CONTENT_TYPE.to_string());
                return (status, [(header::CONTENT_TYPE, ct)], a.body).into_response();
            }
            Err(e) => unreachable.push(e),
        }
    }
    b.rest_instances.set_owner(group, id, None);
    if unreachable.is_empty() {
        ConfluentError::instance_not_found().response(CONTENT_TYPE)
    } else {
        // It may live on a broker that did not answer: not "not found".
        ConfluentError::unavailable(format!(
            "consumer instance {id} is not on this broker, and brokers that may hold it did not answer: {}",
            unreachable.join("; ")
        ))
        .response(CONTENT_TYPE)
    }
}

/// Other brokers' HTTP addresses, the one that answered last time first.
fn candidates(b: &BrokerState, group: &str, id: &str) -> Vec<String> {
    let me = b.config.http_advertised();
    let md = b.cluster.metadata();
    let mut out: Vec<String> = b.rest_instances.owner(group, id).into_iter().collect();
    for broker in md.brokers.values() {
        let a = &broker.http_address;
        if !broker.fenced && !a.is_empty() && *a != me && !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

fn is_instance_not_found(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("error_code")?.as_u64()) == Some(40403)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_requests_map_to_their_operations() {
        assert_eq!(Op::parse(&Method::DELETE, ""), Some(Op::Delete));
        assert_eq!(Op::parse(&Method::GET, "records"), Some(Op::Records));
        assert_eq!(Op::parse(&Method::POST, "positions/end"), Some(Op::SeekTo(OffsetSpec::Latest)));
        assert_eq!(Op::parse(&Method::POST, "records"), None);
        assert_eq!(Op::parse(&Method::GET, "nothing"), None);
    }

    #[test]
    fn committed_offsets_are_the_record_after_the_one_named() {
        let body = br#"{"offsets": [{"topic": "t", "partition": 1, "offset": 41}]}"#;
        assert_eq!(commit_offsets(body), Ok(Some(vec![(TopicPartition::new("t", 1), 42)])));
        assert_eq!(commit_offsets(b""), Ok(None));
        let negative = br#"{"offsets": [{"topic": "t", "partition": 0, "offset": -1}]}"#;
        assert_eq!(commit_offsets(negative).map_err(|e| e.code), Err(422));
        assert_eq!(commit_offsets(b"{nope").map_err(|e| e.code), Err(400));
    }

    #[test]
    fn creation_settings_take_confluents_spellings_and_refuse_the_rest() {
        let req: CreateRequest =
            parse(br#"{"format": "json", "auto.offset.reset": "earliest", "auto.commit.enable": "false"}"#)
                .unwrap();
        let s = settings(&req).unwrap();
        assert_eq!(
            (s.format, s.auto_offset_reset, s.auto_commit),
            (Format::Json, OffsetReset::Earliest, false)
        );
        let bad: CreateRequest = parse(br#"{"format": "protobuf"}"#).unwrap();
        assert_eq!(settings(&bad).map_err(|e| e.code).err(), Some(422));
        assert_eq!(parse::<CreateRequest>(br#"{"colour": "blue"}"#).map_err(|e| e.code).err(), Some(422));
        assert!(check_name("name", "my_consumer-1.a").is_ok());
        assert_eq!(check_name("name", "a/b").map_err(|e| e.code), Err(422));
        assert_eq!(check_name("group", "").map_err(|e| e.code), Err(422));
    }

    #[test]
    fn a_subscription_is_topics_or_a_pattern() {
        assert_eq!(
            subscription(br#"{"topics": ["a", "b"]}"#),
            Ok(Subscription::Topics(vec!["a".into(), "b".into()]))
        );
        assert_eq!(subscription(br#"{"topic_pattern": "a.*"}"#), Ok(Subscription::Pattern("a.*".into())));
        assert_eq!(subscription(br#"{"topics": []}"#).map_err(|e| e.code), Err(422));
        assert_eq!(subscription(br#"{"topics": ["a"], "topic_pattern": "b"}"#).map_err(|e| e.code), Err(422));
    }

    #[test]
    fn the_accept_header_must_allow_the_instances_format() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            h
        };
        assert!(check_accept(&HeaderMap::new(), Format::Binary).is_ok());
        assert!(check_accept(&with("application/vnd.kafka.binary.v2+json"), Format::Binary).is_ok());
        assert!(check_accept(&with("*/*"), Format::Avro).is_ok());
        let e = check_accept(&with("application/vnd.kafka.json.v2+json"), Format::Binary).unwrap_err();
        assert_eq!((e.status, e.code), (406, 40601));
    }
}
