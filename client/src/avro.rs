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

/// A JSON value as a datum of `schema` (records from objects, ints widened
/// where the schema says long). A union's value may be given plain
/// (`"x"`: the branch it fits is taken) or in Avro's JSON encoding, which
/// Confluent's tools write (`{"string": "x"}`, `{"com.acme.User": {...}}`).
pub fn json_to_avro(json: &JsonValue, schema: &Schema) -> Result<AvroValue> {
    let mut names = HashMap::new();
    collect_names(schema, &mut names);
    AvroValue::from(unwrap_unions(json, schema, &names))
        .resolve(schema)
        .map_err(|e| serialization(format!("{json} does not fit the schema: {e}")))
}

/// Every named type of `schema` by full name (what `Ref`s point at).
fn collect_names<'a>(schema: &'a Schema, names: &mut HashMap<String, &'a Schema>) {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.fullname(None), schema);
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.fullname(None), schema);
        }
        Schema::Fixed(f) => {
            names.insert(f.name.fullname(None), schema);
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

/// The name a union branch has in Avro's JSON encoding.
fn branch_name(schema: &Schema) -> Option<String> {
    Some(
        match schema {
            Schema::Null => "null",
            Schema::Boolean => "boolean",
            Schema::Int | Schema::Date | Schema::TimeMillis => "int",
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => "long",
            Schema::Float => "float",
            Schema::Double => "double",
            Schema::Bytes | Schema::BigDecimal => "bytes",
            Schema::String | Schema::Uuid => "string",
            Schema::Array(_) => "array",
            Schema::Map(_) => "map",
            Schema::Record(r) => return Some(r.name.fullname(None)),
            Schema::Enum(e) => return Some(e.name.fullname(None)),
            Schema::Fixed(f) => return Some(f.name.fullname(None)),
            Schema::Ref { name } => return Some(name.fullname(None)),
            Schema::Decimal(d) => return branch_name(&d.inner),
            _ => return None,
        }
        .to_string(),
    )
}

/// `json` with every union value in Avro's JSON encoding replaced by the
/// plain value; plain values are left as they are.
fn unwrap_unions<'a>(json: &JsonValue, schema: &'a Schema, names: &HashMap<String, &'a Schema>) -> JsonValue {
    match (schema, json) {
        (Schema::Ref { name }, _) => match names.get(&name.fullname(None)) {
            Some(s) => unwrap_unions(json, s, names),
            None => json.clone(),
        },
        (Schema::Record(r), JsonValue::Object(o)) => {
            let mut out = o.clone();
            for f in &r.fields {
                if let Some(v) = o.get(&f.name) {
                    out.insert(f.name.clone(), unwrap_unions(v, &f.schema, names));
                }
            }
            JsonValue::Object(out)
        }
        (Schema::Array(a), JsonValue::Array(items)) => {
            JsonValue::Array(items.iter().map(|v| unwrap_unions(v, &a.items, names)).collect())
        }
        (Schema::Map(m), JsonValue::Object(o)) => {
            JsonValue::Object(o.iter().map(|(k, v)| (k.clone(), unwrap_unions(v, &m.types, names))).collect())
        }
        (Schema::Union(u), JsonValue::Object(o)) if o.len() == 1 => {
            let (k, inner) = o.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", json));
            let named =
                |v: &&Schema| branch_name(v).is_some_and(|n| n == k || n.rsplit('.').next() == Some(k));
            match u.variants().iter().find(named) {
                Some(branch) => unwrap_unions(inner, branch, names),
                // A plain record or map value of one field.
                None => plain_union(json, u.variants(), names),
            }
        }
        (Schema::Union(u), _) => plain_union(json, u.variants(), names),
        _ => json.clone(),
    }
}

/// A plain (unwrapped) union value: unions nested in a record or array
/// branch are unwrapped through the first branch of the value's shape.
fn plain_union<'a>(
    json: &JsonValue,
    variants: &'a [Schema],
    names: &HashMap<String, &'a Schema>,
) -> JsonValue {
    let resolve = |v: &'a Schema| -> Option<&'a Schema> {
        match v {
            Schema::Ref { name } => names.get(&name.fullname(None)).copied(),
            other => Some(other),
        }
    };
    let shaped = variants.iter().filter_map(resolve).find(|v| {
        matches!(
            (v, json),
            (Schema::Record(_) | Schema::Map(_), JsonValue::Object(_))
                | (Schema::Array(_), JsonValue::Array(_))
        )
    });
    match shaped {
        Some(v) => unwrap_unions(json, v, names),
        None => json.clone(),
    }
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

    #[test]
    fn unions_take_avros_json_encoding_and_the_plain_value_alike() {
        let s = parse_schema(USER).unwrap();
        let encode = |j: JsonValue| apache_avro::to_avro_datum(&s, json_to_avro(&j, &s).unwrap()).unwrap();
        let wrapped = encode(json!({"name": "ada", "age": 36, "nick": {"string": "countess"}}));
        assert_eq!(wrapped, encode(json!({"name": "ada", "age": 36, "nick": "countess"})));
        assert_eq!(
            encode(json!({"name": "ada", "age": 36, "nick": {"null": null}})),
            encode(json!({"name": "ada", "age": 36, "nick": null}))
        );
        // Named branches by full name, nested in arrays, and through refs.
        let nested = parse_schema(
            r#"{"type": "record", "name": "Box", "namespace": "n", "fields": [
                {"name": "first", "type": ["null", {"type": "record", "name": "Item",
                    "fields": [{"name": "tag", "type": ["null", "string"]}]}]},
                {"name": "more", "type": {"type": "array", "items": ["null", "Item"]}}]}"#,
        )
        .unwrap();
        let wrapped = json!({"first": {"n.Item": {"tag": {"string": "a"}}},
                             "more": [{"n.Item": {"tag": null}}, null, {"Item": {"tag": {"string": "b"}}}]});
        let plain = json!({"first": {"tag": "a"}, "more": [{"tag": null}, null, {"tag": "b"}]});
        let datum =
            |j: &JsonValue| json_to_avro(j, &nested).map(|v| apache_avro::to_avro_datum(&nested, v).unwrap());
        assert_eq!(datum(&wrapped).unwrap(), datum(&plain).unwrap());
        // A wrapper naming no branch is refused, not guessed at.
        assert!(json_to_avro(&json!({"name": "a", "age": 1, "nick": {"int": 3}}), &s).is_err());
    }
}
