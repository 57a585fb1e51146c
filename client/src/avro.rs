//! Avro record values in Confluent's wire format, with a schema registry:
//! what Confluent's serializers write and read, so Tributary's producers
//! and consumers interoperate with theirs.
//!
//! The wire format: byte 0 (the magic byte), the writer schema's registry
//! id as 4 bytes big-endian, then the Avro binary encoding of the datum.
//!
//! [`AvroSerializer`] registers its schema once (under the subject its
//! [`SubjectStrategy`] names) and frames every value with the id;
//! [`AvroDeserializer`] reads the id, fetches that writer schema once,
//! and decodes (optionally resolving to a reader schema).

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use parking_lot::Mutex;
use serde_json::Value as JsonValue;

use crate::error::{Error, Result};
use crate::registry::RegistryClient;

pub const MAGIC: u8 = 0;

/// How a serializer names the subject it registers under (Confluent's
/// `TopicNameStrategy`, `RecordNameStrategy`, `TopicRecordNameStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubjectStrategy {
    /// `<topic>-value` / `<topic>-key`.
    #[default]
    Topic,
    /// The record's full name.
    Record,
    /// `<topic>-<record full name>`.
    TopicRecord,
}

impl SubjectStrategy {
    /// The subject for `schema` written to `topic` (as a key or a value).
    pub fn subject(self, topic: &str, is_key: bool, schema: &Schema) -> Result<String> {
        let record = || {
            schema.name().map(|n| n.fullname(None)).ok_or_else(|| {
                Error::InvalidArgument(
                    "the record and topic-record subject strategies need a named schema".into(),
                )
            })
        };
        Ok(match self {
            SubjectStrategy::Topic => format!("{topic}-{}", if is_key { "key" } else { "value" }),
            SubjectStrategy::Record => record()?,
            SubjectStrategy::TopicRecord => format!("{topic}-{}", record()?),
        })
    }
}

/// Frames an Avro body with the schema id.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The schema id and the Avro body of a framed value.
pub fn unframe(data: &[u8]) -> Result<(u32, &[u8])> {
    match data {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [m, ..] if *m != MAGIC => {
            Err(serialization(format!("unknown magic byte {m} (not Confluent's Avro wire format)")))
        }
        _ => {
            Err(serialization(format!("{} bytes is too short for Confluent's Avro wire format", data.len())))
        }
    }
}

fn serialization(why: impl std::fmt::Display) -> Error {
    Error::Serialization(why.to_string())
}

/// Parses an Avro schema (`.avsc` text).
pub fn parse_schema(text: &str) -> Result<Schema> {
    Schema::parse_str(text).map_err(|e| serialization(format!("invalid Avro schema: {e}")))
}

/// A JSON value as a datum of `schema` (records from objects, unions by
/// the branch the value fits, ints widened where the schema says long).
pub fn json_to_avro(json: &JsonValue, schema: &Schema) -> Result<AvroValue> {
    AvroValue::from(json.clone())
        .resolve(schema)
        .map_err(|e| serialization(format!("{json} does not fit the schema: {e}")))
}

/// A datum as JSON (records and maps as objects, unions as their value).
pub fn avro_to_json(value: AvroValue) -> Result<JsonValue> {
    JsonValue::try_from(value).map_err(|e| serialization(format!("cannot show the datum as JSON: {e}")))
}

pub struct AvroSerializer {
    registry: Arc<RegistryClient>,
    schema: Schema,
    text: String,
    strategy: SubjectStrategy,
    is_key: bool,
    /// Ids by subject: registered once each.
    ids: Mutex<HashMap<String, u32>>,
}

impl AvroSerializer {
    /// A serializer of values with `schema_text` (Avro JSON).
    pub fn new(registry: Arc<RegistryClient>, schema_text: &str, strategy: SubjectStrategy) -> Result<Self> {
        let schema = parse_schema(schema_text)?;
        Ok(AvroSerializer {
            registry,
            schema,
            text: schema_text.to_string(),
            strategy,
            is_key: false,
            ids: Mutex::default(),
        })
    }

    /// Serializes keys instead of values (the `-key` subject).
    pub fn for_keys(mut self) -> Self {
        self.is_key = true;
        self
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The schema's id for `topic`, registering it the first time.
    pub async fn id(&self, topic: &str) -> Result<u32> {
        let subject = self.strategy.subject(topic, self.is_key, &self.schema)?;
        if let Some(id) = self.ids.lock().get(&subject) {
            return Ok(*id);
        }
        let id = self.registry.register(&subject, &self.text).await?;
        self.ids.lock().insert(subject, id);
        Ok(id)
    }

    pub async fn serialize(&self, topic: &str, value: AvroValue) -> Result<Vec<u8>> {
        let id = self.id(topic).await?;
        let body =
            apache_avro::to_avro_datum(&self.schema, value).map_err(|e| serialization(format!("{e}")))?;
        Ok(frame(id, &body))
    }

    pub async fn serialize_json(&self, topic: &str, json: &JsonValue) -> Result<Vec<u8>> {
        let value = json_to_avro(json, &self.schema)?;
        self.serialize(topic, value).await
    }
}

pub struct AvroDeserializer {
    registry: Arc<RegistryClient>,
    reader: Option<Schema>,
    writers: Mutex<HashMap<u32, Arc<Schema>>>,
}

impl AvroDeserializer {
    /// Decodes with each value's writer schema as it is.
    pub fn new(registry: Arc<RegistryClient>) -> Self {
        AvroDeserializer { registry, reader: None, writers: Mutex::default() }
    }

    /// Decodes into `reader` (Avro schema resolution from each writer schema).
    pub fn with_reader_schema(registry: Arc<RegistryClient>, reader: Schema) -> Self {
        AvroDeserializer { registry, reader: Some(reader), writers: Mutex::default() }
    }

    async fn writer(&self, id: u32) -> Result<Arc<Schema>> {
        if let Some(s) = self.writers.lock().get(&id) {
            return Ok(s.clone());
        }
        let text = self.registry.schema(id).await?;
        let schema = Arc::new(parse_schema(&text)?);
        self.writers.lock().insert(id, schema.clone());
        Ok(schema)
    }

    pub async fn deserialize(&self, data: &[u8]) -> Result<AvroValue> {
        let (id, mut body) = unframe(data)?;
        let writer = self.writer(id).await?;
        apache_avro::from_avro_datum(&writer, &mut body, self.reader.as_ref())
            .map_err(|e| serialization(format!("cannot decode with schema {id}: {e}")))
    }

    pub async fn deserialize_json(&self, data: &[u8]) -> Result<JsonValue> {
        avro_to_json(self.deserialize(data).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const USER: &str = r#"{"type":"record","name":"User","namespace":"t","fields":[
        {"name":"name","type":"string"},{"name":"age","type":"long"},
        {"name":"nick","type":["null","string"],"default":null}]}"#;

    #[test]
    fn the_frame_is_magic_then_the_id_big_endian() {
        let f = frame(0x0102_0304, b"xy");
        assert_eq!(f, [0, 1, 2, 3, 4, b'x', b'y']);
        assert_eq!(unframe(&f).unwrap(), (0x0102_0304, &b"xy"[..]));
        assert!(unframe(&[1, 0, 0, 0, 1]).is_err());
        assert!(unframe(&[0, 0, 0]).is_err());
    }

    #[test]
    fn subject_names() {
        let s = parse_schema(USER).unwrap();
        assert_eq!(SubjectStrategy::Topic.subject("orders", false, &s).unwrap(), "orders-value");
        assert_eq!(SubjectStrategy::Topic.subject("orders", true, &s).unwrap(), "orders-key");
        assert_eq!(SubjectStrategy::Record.subject("orders", false, &s).unwrap(), "t.User");
        assert_eq!(SubjectStrategy::TopicRecord.subject("orders", false, &s).unwrap(), "orders-t.User");
        assert!(SubjectStrategy::Record.subject("o", false, &parse_schema(r#""int""#).unwrap()).is_err());
    }

    #[test]
    fn json_round_trips_through_avro_binary() {
        let s = parse_schema(USER).unwrap();
        let input = json!({"name": "ada", "age": 36, "nick": "countess"});
        let body = apache_avro::to_avro_datum(&s, json_to_avro(&input, &s).unwrap()).unwrap();
        // The Avro binary encoding: "ada" (len 3 zigzag = 6), 36 (zigzag 72), branch 1, "countess".
        assert_eq!(&body[..5], &[6, b'a', b'd', b'a', 72]);
        let back = apache_avro::from_avro_datum(&s, &mut &body[..], None).unwrap();
        assert_eq!(avro_to_json(back).unwrap(), input);
        let e = json_to_avro(&json!({"name": 1}), &s).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
