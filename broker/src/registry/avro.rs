//! Avro schemas as the registry sees them: parsed (and so validated) with
//! `apache-avro`, normalized for identity, and checked for compatibility
//! with Avro's schema-resolution rules.
//!
//! ## Identity
//! Two registrations are "the same schema" when their normalized forms are
//! equal. Avro's Parsing Canonical Form is not used for that: it drops
//! defaults, docs and aliases, so a schema that adds a default would look
//! like the old one and get its id. The normalized form keeps every
//! attribute and removes only what carries no meaning: whitespace, the
//! order of object keys, and `{"type": "int"}` spelled for `"int"`.
//!
//! ## Compatibility
//! "Can a reader with schema R read data written with schema W" is
//! `apache_avro::schema_compatibility::SchemaCompatibility::can_read`
//! (fields matched by name, a reader field missing from the writer needs a
//! default, numeric promotions int → long → float → double, string ↔
//! bytes, enum symbols, union branches). The levels say which direction,
//! and whether against the latest version or all of them.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde_json::{Map, Value};

/// A subject's (or the registry's) compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl Level {
    pub const ALL: [Level; 7] = [
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
        Level::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
            Level::None => "NONE",
        }
    }

    /// Case-insensitive, as Confluent's registry accepts it.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str().eq_ignore_ascii_case(s))
    }

    fn transitive(self) -> bool {
        matches!(self, Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive)
    }

    /// New schema must read data of the old ones.
    fn backward(self) -> bool {
        matches!(self, Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive)
    }

    /// Old schemas must read data of the new one.
    fn forward(self) -> bool {
        matches!(self, Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive)
    }
}

/// A parsed, valid schema and its normalized text.
pub struct Parsed {
    pub schema: Schema,
    pub normalized: String,
}

/// Parses `text` with the schemas it references (`references`, every one
/// it needs, in dependency order: a reference's own references first).
pub fn parse(text: &str, references: &[String]) -> Result<Parsed, String> {
    let json: Value = serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
    let schema = if references.is_empty() {
        Schema::parse_str(text).map_err(|e| e.to_string())?
    } else {
        Schema::parse_str_with_list(text, references).map_err(|e| e.to_string())?.0
    };
    Ok(Parsed { schema, normalized: normalize(&json) })
}

/// The normalized text of a schema's JSON (see the module doc).
pub fn normalize(json: &Value) -> String {
    normalize_schema(json).to_string()
}

fn sorted(entries: impl Iterator<Item = (String, Value)>) -> Map<String, Value> {
    let mut v: Vec<(String, Value)> = entries.collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().collect()
}

/// Normalizes a value in a schema position (a type). Values elsewhere
/// (defaults, docs, custom attributes) are data and stay as they are.
fn normalize_schema(v: &Value) -> Value {
    match v {
        Value::Array(union) => Value::Array(union.iter().map(normalize_schema).collect()),
        Value::Object(o) => {
            let out = sorted(o.iter().map(|(k, val)| {
                let val = match k.as_str() {
                    "type" | "items" | "values" => normalize_schema(val),
                    "fields" => normalize_fields(val),
                    _ => val.clone(),
                };
                (k.clone(), val)
            }));
            match (out.len(), out.get("type")) {
                (1, Some(Value::String(s))) => Value::String(s.clone()),
                _ => Value::Object(out),
            }
        }
        other => other.clone(),
    }
}

fn normalize_fields(v: &Value) -> Value {
    let Value::Array(fields) = v else { return v.clone() };
    Value::Array(
        fields
            .iter()
            .map(|f| match f {
                Value::Object(o) => Value::Object(sorted(o.iter().map(|(k, val)| {
                    let val = if k == "type" { normalize_schema(val) } else { val.clone() };
                    (k.clone(), val)
                }))),
                other => other.clone(),
            })
            .collect(),
    )
}

/// Whether a reader with `reader` reads data written with `writer`; the
/// error says why not.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    SchemaCompatibility::can_read(writer, reader).map_err(|e| e.to_string())
}

/// Checks `new` against a subject's live versions (oldest first) at
/// `level`. The error lists what is incompatible, with which version.
pub fn check(level: Level, new: &Schema, previous: &[(u32, &Schema)]) -> Result<(), Vec<String>> {
    if level == Level::None || previous.is_empty() {
        return Ok(());
    }
    let against: &[(u32, &Schema)] =
        if level.transitive() { previous } else { &previous[previous.len() - 1..] };
    let mut problems = Vec::new();
    for (version, old) in against {
        if level.backward() {
            if let Err(e) = can_read(old, new) {
                problems.push(format!("the new schema cannot read data written with version {version}: {e}"));
            }
        }
        if level.forward() {
            if let Err(e) = can_read(new, old) {
                problems.push(format!("version {version} cannot read data written with the new schema: {e}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Schema {
        parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}")).schema
    }

    fn record(fields: &str) -> String {
        format!(r#"{{"type":"record","name":"User","namespace":"t","fields":[{fields}]}}"#)
    }

    const NAME: &str = r#"{"name":"name","type":"string"}"#;
    const AGE_INT: &str = r#"{"name":"age","type":"int"}"#;
    const AGE_LONG: &str = r#"{"name":"age","type":"long"}"#;
    const AGE_DEFAULT: &str = r#"{"name":"age","type":"int","default":0}"#;
    const NICK_NULLABLE: &str = r#"{"name":"nick","type":["null","string"],"default":null}"#;

    /// Avro's resolution rules, one row each: (writer, reader, readable).
    #[test]
    fn resolution_rules() {
        let rows: Vec<(&str, String, String, bool)> = vec![
            ("same schema", record(NAME), record(NAME), true),
            ("reader adds a field with a default", record(NAME), record(&format!("{NAME},{AGE_DEFAULT}")), true),
            ("reader adds a field without a default", record(NAME), record(&format!("{NAME},{AGE_INT}")), false),
            ("reader drops a field", record(&format!("{NAME},{AGE_INT}")), record(NAME), true),
            ("int promotes to long", record(AGE_INT), record(AGE_LONG), true),
            ("long does not narrow to int", record(AGE_LONG), record(AGE_INT), false),
            ("reader adds a nullable field", record(NAME), record(&format!("{NAME},{NICK_NULLABLE}")), true),
            ("string to int", r#""string""#.into(), r#""int""#.into(), false),
            ("int to double", r#""int""#.into(), r#""double""#.into(), true),
            ("string to bytes", r#""string""#.into(), r#""bytes""#.into(), true),
            (
                "reader's enum has more symbols",
                r#"{"type":"enum","name":"E","symbols":["A"]}"#.into(),
                r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(),
                true,
            ),
            (
                "writer's enum has a symbol the reader lacks",
                r#"{"type":"enum","name":"E","symbols":["A","B"]}"#.into(),
                r#"{"type":"enum","name":"E","symbols":["A"]}"#.into(),
                false,
            ),
            ("a branch reads into a union holding it", r#""string""#.into(), r#"["null","string"]"#.into(), true),
            ("a union does not read into one of its branches' absence", r#"["null","string"]"#.into(), r#""int""#.into(), false),
            (
                "record renamed",
                record(NAME),
                r#"{"type":"record","name":"Other","namespace":"t","fields":[{"name":"name","type":"string"}]}"#
                    .into(),
                false,
            ),
        ];
        for (what, writer, reader, readable) in rows {
            let r = can_read(&schema(&writer), &schema(&reader));
            assert_eq!(r.is_ok(), readable, "{what}: {r:?}");
        }
    }

    /// Levels: which direction, and latest vs every version.
    #[test]
    fn levels() {
        let v1 = schema(&record(NAME));
        let v2 = schema(&record(&format!("{NAME},{AGE_DEFAULT}")));
        // Adds a required field: new readers cannot read v1 data.
        let required = schema(&record(&format!("{NAME},{AGE_INT}")));
        // Drops `name`: v1 readers cannot read its data (no default).
        let dropped = schema(&record(AGE_DEFAULT));
        let prev = [(1, &v1)];
        assert!(check(Level::Backward, &v2, &prev).is_ok());
        assert!(check(Level::Backward, &required, &prev).is_err());
        assert!(check(Level::Forward, &required, &prev).is_ok(), "v1 readers ignore the new field");
        assert!(check(Level::Forward, &dropped, &prev).is_err());
        assert!(check(Level::Backward, &dropped, &prev).is_ok());
        assert!(check(Level::Full, &v2, &prev).is_ok());
        assert!(check(Level::Full, &required, &prev).is_err());
        assert!(check(Level::None, &schema(r#""int""#), &prev).is_ok());

        // Transitive levels look past the latest version: v3 reads v2's data
        // (age has a default there too) but not v1's (no age, no default).
        let v2b = schema(&record(&format!("{NAME},{AGE_INT}")));
        let v3 = schema(&record(AGE_INT));
        let history = [(1, &v1), (2, &v2b)];
        assert!(check(Level::Backward, &v3, &history).is_ok());
        let e = check(Level::BackwardTransitive, &v3, &history).unwrap_err();
        assert!(e.iter().any(|m| m.contains("version 1")), "{e:?}");
    }

    #[test]
    fn normalized_form_keeps_defaults_and_ignores_spelling() {
        let a = r#"{"type":"record","name":"U","fields":[{"name":"a","type":{"type":"int"},"default":1}]}"#;
        let b =
            r#"{ "fields": [ {"default": 1, "type": "int", "name": "a"} ], "name": "U", "type": "record" }"#;
        let c = r#"{"type":"record","name":"U","fields":[{"name":"a","type":"int","default":2}]}"#;
        let n = |t: &str| parse(t, &[]).unwrap().normalized;
        assert_eq!(n(a), n(b));
        assert_ne!(n(a), n(c), "a different default is a different schema");
        assert_eq!(n(r#"{"type":"string"}"#), r#""string""#);
    }

    #[test]
    fn malformed_schemas_are_refused() {
        for bad in [
            "",
            "{",
            r#"{"type":"recrod","name":"x","fields":[]}"#,
            r#"{"type":"record","fields":[]}"#,
            r#""nosuchtype""#,
        ] {
            assert!(parse(bad, &[]).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn references_resolve_named_types() {
        let address = r#"{"type":"record","name":"Address","namespace":"t","fields":[{"name":"city","type":"string"}]}"#;
        let user = r#"{"type":"record","name":"User","namespace":"t","fields":[{"name":"home","type":"t.Address"}]}"#;
        assert!(parse(user, &[]).is_err(), "an unknown named type is an error");
        assert!(parse(user, &[address.to_string()]).is_ok());
    }

    #[test]
    fn level_names() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.as_str()), Some(l));
        }
        assert_eq!(Level::parse("full_transitive"), Some(Level::FullTransitive));
        assert_eq!(Level::parse("SIDEWAYS"), None);
    }
}
