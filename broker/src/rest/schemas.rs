//! Avro for the REST proxy: the schema a request names (by id, or by text
//! registered under `{topic}-key` / `{topic}-value` in the embedded
//! registry, as Confluent's proxy does) and the encoding of a JSON datum
//! in Confluent's wire format (magic 0, 4-byte big-endian id, Avro body).

use std::sync::Arc;

use apache_avro::Schema;
use bytes::Bytes;
use serde_json::Value;

use crate::confluent_error::{ConfluentError, Result};
use crate::BrokerState;

/// A schema with its registry id, ready to encode with.
pub struct Writer {
    pub id: u32,
    schema: Schema,
}

impl Writer {
    /// `json` as a datum of the schema, framed with its id.
    pub fn encode(&self, json: &Value) -> Result<Bytes> {
        let datum = tributary_client::avro::json_to_avro(json, &self.schema)
            .map_err(ConfluentError::avro_conversion)?;
        let body =
            apache_avro::to_avro_datum(&self.schema, datum).map_err(ConfluentError::avro_conversion)?;
        Ok(Bytes::from(tributary_client::avro::frame(self.id, &body)))
    }
}

/// The schema a request names for `subject`: by `id` when given (it must
/// exist), else `text` registered under `subject` (the same schema again
/// keeps its id); `None` when the request names none.
pub async fn resolve(
    state: &Arc<BrokerState>,
    subject: &str,
    text: Option<&str>,
    id: Option<u32>,
) -> Result<Option<Writer>> {
    if let Some(id) = id {
        crate::registry::sync_with_leader(state).await;
        let stored =
            state.registry.read(|s| s.schema(id).map(|st| (st.schema.clone(), st.references.is_empty())));
        let (text, plain) = stored.map_err(|_| ConfluentError::schema_not_found(&id.to_string()))?;
        if !plain {
            return Err(ConfluentError::proxy_invalid_schema(format!(
                "schema {id} has references, which the REST proxy does not resolve"
            )));
        }
        return Ok(Some(Writer { id, schema: parse(&text)? }));
    }
    let Some(text) = text else { return Ok(None) };
    // Parsed first: a schema that is not Avro is refused before anything
    // is registered.
    let schema = parse(text)?;
    let id = crate::registry::api::register_for_proxy(state, subject, text).await?;
    Ok(Some(Writer { id, schema }))
}

fn parse(text: &str) -> Result<Schema> {
    Schema::parse_str(text).map_err(ConfluentError::proxy_invalid_schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_datum_is_framed_in_confluents_wire_format() {
        let schema =
            parse(r#"{"type":"record","name":"U","fields":[{"name":"n","type":"string"}]}"#).unwrap();
        let w = Writer { id: 7, schema };
        let bytes = w.encode(&json!({"n": "ab"})).unwrap();
        // Magic 0, id 7 big-endian, then the string: zigzag length 2 = 4, "ab".
        assert_eq!(bytes.as_ref(), &[0, 0, 0, 0, 7, 4, b'a', b'b']);
        assert_eq!(w.encode(&json!({"m": 1})).map_err(|e| e.code), Err(42203));
    }
}
