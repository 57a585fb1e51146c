//! Confluent REST Proxy v3 produce:
//! `POST /v3/clusters/{cluster_id}/topics/{topic}/records` with one JSON
//! record, or the streaming form (several records one after another in one
//! body, as Confluent's clients send them chunked), answered with each
//! record's partition, offset, timestamp and key/value sizes, one answer
//! per line in record order. The cluster id is the quorum's
//! (`DescribeCluster`). The body is read whole (at most 8 MiB) before the
//! records are produced: answers come when the request is complete, not
//! while it still streams.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tributary_client::ProducerRecord;

use crate::confluent_error::{ConfluentError, Result};
use crate::BrokerState;

pub const CONTENT_TYPE: &str = "application/json";

#[derive(Debug, Deserialize)]
pub struct RecordRequest {
    #[serde(default)]
    pub partition_id: Option<i64>,
    #[serde(default)]
    pub key: Option<Data>,
    #[serde(default)]
    pub value: Option<Data>,
}

#[derive(Debug, Deserialize)]
pub struct Data {
    /// JSON (the default), BINARY (base64) or STRING.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
}

impl Data {
    /// The type's name as answered, and the bytes to store (none for null data).
    pub fn encode(&self, what: &str) -> Result<(&'static str, Option<Bytes>)> {
        let kind = self.kind.as_deref().unwrap_or("JSON").to_ascii_uppercase();
        let Some(data) = self.data.as_ref().filter(|d| !d.is_null()) else {
            return Ok((kind_name(&kind)?, None));
        };
        let bytes = match kind.as_str() {
            "JSON" => Bytes::from(data.to_string()),
            "BINARY" => super::decode_base64(data, what)?,
            "STRING" => Bytes::from(
                data.as_str()
                    .ok_or_else(|| bad_request(format!("{what}: STRING data must be a string")))?
                    .to_string(),
            ),
            _ => return Err(bad_request(format!("{what}: unsupported type {kind}"))),
        };
        Ok((kind_name(&kind)?, Some(bytes)))
    }
}

fn kind_name(kind: &str) -> Result<&'static str> {
    match kind {
        "JSON" => Ok("JSON"),
        "BINARY" => Ok("BINARY"),
        "STRING" => Ok("STRING"),
        other => Err(bad_request(format!("unsupported type {other}: use JSON, BINARY or STRING"))),
    }
}

fn bad_request(why: impl Into<String>) -> ConfluentError {
    ConfluentError::new(400, 400, why)
}

pub async fn produce(
    State(b): State<Arc<BrokerState>>,
    Path((cluster, topic)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match produce_all(&b, &cluster, &topic, &headers, body).await {
        Ok(answers) => {
            let text: Vec<String> = answers.iter().map(Value::to_string).collect();
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], text.join("\n")).into_response()
        }
        Err(e) => e.response(CONTENT_TYPE),
    }
}

/// One record checked and encoded, with what its answer reports of it.
struct Prepared {
    record: ProducerRecord,
    key: Option<(&'static str, Option<Bytes>)>,
    value: Option<(&'static str, Option<Bytes>)>,
}

/// The request's records in order: one JSON object, or the streaming form
/// (several objects one after another in one body). Each gets its own
/// answer, in order: a record that fails its checks is answered with its
/// error and not produced, and the others are. A body with one record
/// that fails is answered with that error alone, as Confluent does.
async fn produce_all(
    b: &Arc<BrokerState>,
    cluster: &str,
    topic: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<Value>> {
    let cluster_id = b.cluster.metadata().cluster_id.clone();
    if cluster_id.is_empty() || cluster != cluster_id {
        return Err(ConfluentError::cluster_not_found(cluster));
    }
    if super::media_type(headers).as_deref() != Some(CONTENT_TYPE) {
        return Err(ConfluentError::unsupported_media_type(
            headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        ));
    }
    let count = super::partition_count(b, topic)
        .map_err(|_| ConfluentError::new(404, 40403, format!("This server does not host topic {topic}.")))?;
    let bytes = super::read_body(body).await?;
    let checked = parse_stream(&bytes, topic, count)?;
    if let [Err(e)] = checked.as_slice() {
        return Err(e.clone());
    }
    let mut records = Vec::new();
    let mut sizes = Vec::new();
    for p in checked.iter().flatten() {
        records.push(p.record.clone());
        sizes.push((size(&p.key), size(&p.value)));
    }
    let mut outcomes = super::produce(b, records).await?.into_iter().zip(sizes);
    let answers = checked
        .iter()
        .map(|c| match c {
            Err(e) => json!({"error_code": e.status, "message": e.message}),
            Ok(_) => match outcomes.next() {
                Some((Ok(md), (key, value))) => json!({
                    "error_code": 200,
                    "cluster_id": cluster_id,
                    "topic_name": topic,
                    "partition_id": md.partition,
                    "offset": md.offset,
                    "timestamp": iso8601(md.timestamp),
                    "key": key,
                    "value": value,
                }),
                Some((Err(e), _)) => {
                    let e = ConfluentError::unavailable(e);
                    json!({"error_code": e.status, "message": e.message})
                }
                None => json!({"error_code": 500, "message": "the producer gave no outcome"}),
            },
        })
        .collect();
    Ok(answers)
}

/// Most records one streaming request may carry.
pub const MAX_STREAM_RECORDS: usize = super::MAX_RECORDS;

/// Every JSON object of the body, checked. Text that is not JSON ends the
/// stream with its error (what came before it still counts).
fn parse_stream(bytes: &[u8], topic: &str, count: u32) -> Result<Vec<Result<Prepared>>> {
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_slice(bytes).into_iter::<Value>() {
        if out.len() == MAX_STREAM_RECORDS {
            return Err(ConfluentError::too_many_records(MAX_STREAM_RECORDS + 1, MAX_STREAM_RECORDS));
        }
        match v {
            Ok(v) => out.push(prepare(v, topic, count)),
            Err(e) => {
                out.push(Err(bad_request(format!("{e}"))));
                break;
            }
        }
    }
    if out.is_empty() {
        return Err(bad_request("the request holds no record"));
    }
    Ok(out)
}

fn prepare(v: Value, topic: &str, count: u32) -> Result<Prepared> {
    let req: RecordRequest = serde_json::from_value(v).map_err(|e| bad_request(format!("{e}")))?;
    let partition = super::check_partition(topic, req.partition_id, count)?;
    let key = req.key.as_ref().map(|k| k.encode("key")).transpose()?;
    let value = req.value.as_ref().map(|v| v.encode("value")).transpose()?;
    let record = ProducerRecord {
        topic: topic.to_string(),
        partition,
        key: key.as_ref().and_then(|(_, b)| b.clone()),
        value: value.as_ref().and_then(|(_, b)| b.clone()),
        headers: Vec::new(),
        timestamp: None,
    };
    Ok(Prepared { record, key, value })
}

fn size(d: &Option<(&'static str, Option<Bytes>)>) -> Option<Value> {
    d.as_ref().map(|(kind, b)| json!({"type": kind, "size": b.as_ref().map_or(0, Bytes::len)}))
}

/// ms since the epoch as `2021-02-05T19:14:42.000Z` (UTC), the v3 form.
pub fn iso8601(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_612_552_482_123), "2021-02-05T19:14:42.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_stream_is_checked_record_by_record_and_ends_at_text_that_is_not_json() {
        let body = br#"{"value": {"data": 1}} {"partition_id": 9, "value": {"data": 2}}
            {"value": {"type": "STRING", "data": "x"}} {"val"#;
        let checked = parse_stream(body, "t", 2).unwrap();
        let codes: Vec<Option<u32>> = checked.iter().map(|c| c.as_ref().err().map(|e| e.code)).collect();
        assert_eq!(codes, vec![None, Some(40402), None, Some(400)]);
        assert_eq!(parse_stream(b"  ", "t", 2).map(|_| ()).map_err(|e| e.status), Err(400));
    }

    #[test]
    fn data_types_encode_as_confluent_describes() {
        let d = |kind: &str, data: Value| Data { kind: Some(kind.into()), data: Some(data) };
        assert_eq!(d("JSON", json!({"a": 1})).encode("v"), Ok(("JSON", Some(Bytes::from(r#"{"a":1}"#)))));
        assert_eq!(d("BINARY", json!("aGk=")).encode("v"), Ok(("BINARY", Some(Bytes::from("hi")))));
        assert_eq!(d("STRING", json!("hi")).encode("v"), Ok(("STRING", Some(Bytes::from("hi")))));
        assert_eq!(d("AVRO", json!(1)).encode("v").map_err(|e| e.status), Err(400));
        assert_eq!(d("STRING", json!(1)).encode("v").map_err(|e| e.status), Err(400));
    }
}
