//! Confluent REST Proxy v2: topic listing and description, and produce to
//! a topic or one partition in the `json`, `binary` (base64) and `avro`
//! embedded formats, answered with each record's partition and offset (or
//! error) in request order.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tributary_client::ProducerRecord;

use super::schemas::{self, Writer};
use crate::confluent_error::{ConfluentError, Result};
use crate::BrokerState;

/// The content type of v2 answers.
pub const CONTENT_TYPE: &str = "application/vnd.kafka.v2+json";

type S = State<Arc<BrokerState>>;

/// The embedded format of a produce request, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Binary,
    Avro,
}

impl Format {
    pub fn from_headers(headers: &HeaderMap) -> Result<Format> {
        let media = super::media_type(headers);
        [Format::Json, Format::Binary, Format::Avro]
            .into_iter()
            .find(|f| media.as_deref() == Some(f.content_type()))
            .ok_or_else(|| ConfluentError::unsupported_media_type(media.as_deref()))
    }

    /// As consumer instances name it (`"format": "binary"`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Binary => "binary",
            Format::Avro => "avro",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        [Format::Json, Format::Binary, Format::Avro]
            .into_iter()
            .find(|f| f.name() == name.to_ascii_lowercase())
    }

    /// The content type of records in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/vnd.kafka.json.v2+json",
            Format::Binary => "application/vnd.kafka.binary.v2+json",
            Format::Avro => "application/vnd.kafka.avro.v2+json",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProduceRequest {
    pub records: Vec<RecordIn>,
    #[serde(default)]
    pub key_schema: Option<String>,
    #[serde(default)]
    pub key_schema_id: Option<u32>,
    #[serde(default)]
    pub value_schema: Option<String>,
    #[serde(default)]
    pub value_schema_id: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    #[serde(default)]
    pub key: Option<Value>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub partition: Option<i64>,
}

/// Not JSON: 400; JSON but not a produce request: 422 (as Confluent).
pub fn parse_request(body: &[u8]) -> Result<ProduceRequest> {
    let v: Value = serde_json::from_slice(body).map_err(ConfluentError::malformed)?;
    let req: ProduceRequest = serde_json::from_value(v)
        .map_err(|e| ConfluentError::unprocessable(format!("Unrecognized request: {e}")))?;
    if req.records.len() > super::MAX_RECORDS {
        return Err(ConfluentError::too_many_records(req.records.len(), super::MAX_RECORDS));
    }
    Ok(req)
}

fn ok(v: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], v.to_string()).into_response()
}

fn reply(r: Result<Value>) -> Response {
    r.map_or_else(|e| e.response(CONTENT_TYPE), ok)
}

pub async fn list_topics(State(b): S) -> Response {
    let md = b.cluster.metadata();
    let names: Vec<&String> = md.topics.keys().filter(|t| !crate::topics::is_internal(t)).collect();
    ok(json!(names))
}

pub async fn get_topic(State(b): S, Path(topic): Path<String>) -> Response {
    reply(describe(&b, &topic))
}

/// A topic as Confluent's `GET /topics/{t}` shows it.
fn describe(b: &BrokerState, topic: &str) -> Result<Value> {
    super::partition_count(b, topic)?;
    let md = b.cluster.metadata();
    let t = md.topics.get(topic).ok_or_else(|| ConfluentError::topic_not_found(topic))?;
    let partitions: Vec<Value> = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let replicas: Vec<Value> = p
                .replicas
                .iter()
                .map(|r| json!({"broker": r, "leader": *r == p.leader, "in_sync": p.isr.contains(r)}))
                .collect();
            json!({"partition": i, "leader": p.leader, "replicas": replicas})
        })
        .collect();
    Ok(json!({"name": topic, "configs": t.configs, "partitions": partitions}))
}

pub async fn produce_to_topic(
    State(b): S,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    reply(produce(&b, &topic, None, &headers, body).await)
}

pub async fn produce_to_partition(
    State(b): S,
    Path((topic, partition)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let count = super::partition_count(&b, &topic)?;
        let p = partition.parse::<i64>().map_err(|_| ConfluentError::partition_not_found(&topic, -1))?;
        let p = super::check_partition(&topic, Some(p), count)?;
        produce(&b, &topic, p, &headers, body).await
    };
    reply(r.await)
}

/// Checks and encodes the whole request, then produces it: any error
/// before [`super::produce`] leaves the topic as it was.
async fn produce(
    b: &Arc<BrokerState>,
    topic: &str,
    partition: Option<u32>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value> {
    let format = Format::from_headers(headers)?;
    let count = super::partition_count(b, topic)?;
    let req = parse_request(&super::read_body(body).await?)?;
    for r in &req.records {
        super::check_partition(topic, r.partition, count)?;
    }
    let (key_writer, value_writer) =
        if format == Format::Avro { avro_writers(b, topic, &req).await? } else { (None, None) };
    let mut records = Vec::with_capacity(req.records.len());
    for r in &req.records {
        let key = encode(format, key_writer.as_ref(), r.key.as_ref(), "key")?;
        let value = encode(format, value_writer.as_ref(), r.value.as_ref(), "value")?;
        let partition = partition.or(super::check_partition(topic, r.partition, count)?);
        records.push(ProducerRecord {
            topic: topic.to_string(),
            partition,
            key,
            value,
            headers: Vec::new(),
            timestamp: None,
        });
    }
    let outcomes = super::produce(b, records).await?;
    let offsets: Vec<Value> = outcomes
        .into_iter()
        .map(|o| match o {
            Ok(md) => {
                json!({"partition": md.partition, "offset": md.offset, "error_code": null, "error": null})
            }
            // Confluent's codes: 2 a retriable Kafka error, 1 any other.
            Err(e) => json!({
                "partition": null,
                "offset": null,
                "error_code": if e.is_retriable() { 2 } else { 1 },
                "error": e.to_string(),
            }),
        })
        .collect();
    Ok(json!({
        "key_schema_id": key_writer.map(|w| w.id),
        "value_schema_id": value_writer.map(|w| w.id),
        "offsets": offsets,
    }))
}

/// The Avro schemas of the request's keys and values; one is required as
/// soon as any record has a key (or a value).
async fn avro_writers(
    b: &Arc<BrokerState>,
    topic: &str,
    req: &ProduceRequest,
) -> Result<(Option<Writer>, Option<Writer>)> {
    let has_keys = req.records.iter().any(|r| r.key.is_some());
    let has_values = req.records.iter().any(|r| r.value.is_some());
    // Both are checked before either is registered.
    if has_keys && req.key_schema.is_none() && req.key_schema_id.is_none() {
        return Err(ConfluentError::key_schema_missing());
    }
    if has_values && req.value_schema.is_none() && req.value_schema_id.is_none() {
        return Err(ConfluentError::value_schema_missing());
    }
    let key =
        schemas::resolve(b, &format!("{topic}-key"), req.key_schema.as_deref(), req.key_schema_id).await?;
    let value =
        schemas::resolve(b, &format!("{topic}-value"), req.value_schema.as_deref(), req.value_schema_id)
            .await?;
    Ok((key, value))
}

/// A key or value as the bytes to store; JSON `null` (or none) is none.
fn encode(format: Format, writer: Option<&Writer>, v: Option<&Value>, what: &str) -> Result<Option<Bytes>> {
    let Some(v) = v else { return Ok(None) };
    match format {
        Format::Json => Ok(Some(Bytes::from(v.to_string()))),
        Format::Binary => super::decode_base64(v, what).map(Some),
        Format::Avro => match writer {
            Some(w) => w.encode(v).map(Some),
            None => Err(ConfluentError::value_schema_missing()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    }

    #[test]
    fn the_content_type_names_the_format() {
        assert_eq!(Format::from_headers(&headers("application/vnd.kafka.json.v2+json")), Ok(Format::Json));
        assert_eq!(
            Format::from_headers(&headers("application/vnd.kafka.binary.v2+json; charset=utf-8")),
            Ok(Format::Binary)
        );
        assert_eq!(Format::from_headers(&headers("application/vnd.kafka.avro.v2+json")), Ok(Format::Avro));
        for bad in ["application/json", "text/plain", "application/vnd.kafka.protobuf.v2+json"] {
            assert_eq!(Format::from_headers(&headers(bad)).map_err(|e| (e.status, e.code)), Err((415, 415)));
        }
        assert_eq!(Format::from_headers(&HeaderMap::new()).map_err(|e| e.code), Err(415));
    }

    #[test]
    fn malformed_bodies_are_400_and_wrong_shapes_422() {
        assert_eq!(parse_request(b"{not json").map_err(|e| (e.status, e.code)).err(), Some((400, 400)));
        assert_eq!(parse_request(br#"{"recs": []}"#).map_err(|e| e.code).err(), Some(422));
        assert_eq!(parse_request(br#"{"records": [{"valu": 1}]}"#).map_err(|e| e.code).err(), Some(422));
        let many = format!(
            r#"{{"records": [{}]}}"#,
            vec![r#"{"value": 1}"#; super::super::MAX_RECORDS + 1].join(",")
        );
        assert_eq!(parse_request(many.as_bytes()).map_err(|e| e.code).err(), Some(422));
        let r = parse_request(br#"{"records": [{"key": "k", "value": {"a": 1}, "partition": 2}]}"#).unwrap();
        assert_eq!((r.records[0].partition, r.records[0].key.clone()), (Some(2), Some(json!("k"))));
    }

    #[test]
    fn json_values_are_stored_as_their_text_and_null_as_none() {
        let v = json!({"a": [1, "x"]});
        assert_eq!(encode(Format::Json, None, Some(&v), "value"), Ok(Some(Bytes::from(r#"{"a":[1,"x"]}"#))));
        assert_eq!(encode(Format::Json, None, None, "value"), Ok(None));
    }
}
