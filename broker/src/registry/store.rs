//! The registry's state and the records of `__schemas` it is built from.
//!
//! Every broker replays `__schemas` (to its high watermark, in offset
//! order) into a [`State`]; the leader of `__schemas` also plans writes
//! against it ([`State::plan`]): a plan is the records to append and the
//! answer the caller gets once they are committed. Planning is pure, so
//! the rules (what is refused, which id a schema gets) are tested here
//! without a broker.
//!
//! Records are JSON keys and values shaped like Confluent's `_schemas`
//! topic, so compaction keeps the latest of each key:
//! - `{"keytype":"SCHEMA","subject":S,"version":V}` → the version (id,
//!   schema, references, soft-deleted flag); a tombstone deletes it for good;
//! - `{"keytype":"CONFIG","subject":S|null}` → a compatibility level;
//! - `{"keytype":"MAX_ID"}` → the largest id ever given. Written with every
//!   new id, so ids are never reused even after the versions holding the
//!   largest one were deleted permanently and compacted away;
//! - `{"keytype":"LEADER"}` → the HTTP address of the leader of
//!   `__schemas` (where the other brokers forward writes).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::avro::{self, Level};
use crate::confluent_error::{ConfluentError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype")]
pub enum Key {
    #[serde(rename = "SCHEMA")]
    Schema { subject: String, version: u32 },
    #[serde(rename = "CONFIG")]
    Config { subject: Option<String> },
    #[serde(rename = "MAX_ID")]
    MaxId,
    #[serde(rename = "LEADER")]
    Leader,
}

impl Key {
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A schema reference: a named type defined by `subject` version `version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(rename = "schemaType", default = "avro_type")]
    pub schema_type: String,
    #[serde(default)]
    pub references: Vec<Reference>,
    #[serde(default)]
    pub deleted: bool,
}

fn avro_type() -> String {
    "AVRO".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MaxIdValue {
    max_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderValue {
    pub node_id: i32,
    pub epoch: i32,
    pub http: String,
}

/// A record to append: key, and value (None: a tombstone).
pub type RecordBytes = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionEntry {
    pub id: u32,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub struct StoredSchema {
    pub schema: String,
    pub schema_type: String,
    pub references: Vec<Reference>,
}

/// Which version a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(u32),
}

impl VersionSpec {
    /// `latest`, `-1`, or 1..2^31-1.
    pub fn parse(s: &str) -> Result<VersionSpec> {
        if s == "latest" || s == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<u32>() {
            Ok(v) if v >= 1 && v <= i32::MAX as u32 => Ok(VersionSpec::Number(v)),
            _ => Err(ConfluentError::invalid_version(s)),
        }
    }
}

/// A schema as a request gives it (register, look up, check).
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaRequest {
    pub schema: String,
    #[serde(rename = "schemaType", default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    pub references: Option<Vec<Reference>>,
}

/// A change a caller asks for.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Register {
        subject: String,
        request: SchemaRequest,
    },
    DeleteSubject {
        subject: String,
        permanent: bool,
    },
    DeleteVersion {
        subject: String,
        version: VersionSpec,
        permanent: bool,
    },
    SetConfig {
        subject: Option<String>,
        level: Level,
    },
    DeleteConfig {
        subject: String,
    },
    /// The leader of `__schemas` announces where it takes writes.
    Announce(LeaderValue),
}

/// What a write appends, and what its caller is answered once committed.
#[derive(Debug)]
pub struct Plan {
    pub records: Vec<RecordBytes>,
    pub answer: Value,
}

/// A schema checked and ready: normalized text and the parsed form.
struct Checked {
    parsed: avro::Parsed,
    schema_type: String,
    references: Vec<Reference>,
}

impl Checked {
    fn identity(&self) -> String {
        identity(&self.schema_type, &self.parsed.normalized, &self.references)
    }
}

fn identity(schema_type: &str, normalized: &str, references: &[Reference]) -> String {
    format!("{schema_type}\n{normalized}\n{}", serde_json::to_string(references).unwrap_or_default())
}

#[derive(Default)]
pub struct State {
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    schemas: BTreeMap<u32, StoredSchema>,
    identities: HashMap<String, u32>,
    configs: BTreeMap<String, Level>,
    global: Option<Level>,
    max_id: u32,
    pub leader: Option<LeaderValue>,
    /// Records applied so far: the next offset to replay.
    pub next_offset: i64,
}

impl State {
    /// Applies one record of `__schemas`. An unreadable record is skipped
    /// (the error says why): bad bytes never stop a broker.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        let key: Key = serde_json::from_slice(key).map_err(|e| format!("unreadable key: {e}"))?;
        match (key, value) {
            (Key::Schema { subject, version }, Some(v)) => {
                let v: SchemaValue =
                    serde_json::from_slice(v).map_err(|e| format!("unreadable schema: {e}"))?;
                self.max_id = self.max_id.max(v.id);
                self.identities.insert(identity(&v.schema_type, &v.schema, &v.references), v.id);
                self.schemas.entry(v.id).or_insert(StoredSchema {
                    schema: v.schema,
                    schema_type: v.schema_type,
                    references: v.references,
                });
                self.subjects
                    .entry(subject)
                    .or_default()
                    .insert(version, VersionEntry { id: v.id, deleted: v.deleted });
            }
            (Key::Schema { subject, version }, None) => {
                let gone = self.subjects.get_mut(&subject).and_then(|vs| vs.remove(&version));
                if self.subjects.get(&subject).is_some_and(|vs| vs.is_empty()) {
                    self.subjects.remove(&subject);
                }
                if let Some(e) = gone {
                    self.forget_if_unused(e.id);
                }
            }
            (Key::Config { subject }, value) => {
                let level = match value {
                    Some(v) => {
                        let c: ConfigValue =
                            serde_json::from_slice(v).map_err(|e| format!("unreadable config: {e}"))?;
                        Some(Level::parse(&c.compatibility_level).ok_or("unknown compatibility level")?)
                    }
                    None => None,
                };
                match (subject, level) {
                    (None, l) => self.global = l,
                    (Some(s), Some(l)) => {
                        self.configs.insert(s, l);
                    }
                    (Some(s), None) => {
                        self.configs.remove(&s);
                    }
                }
            }
            (Key::MaxId, Some(v)) => {
                let m: MaxIdValue =
                    serde_json::from_slice(v).map_err(|e| format!("unreadable max id: {e}"))?;
                self.max_id = self.max_id.max(m.max_id);
            }
            (Key::Leader, Some(v)) => {
                self.leader = Some(serde_json::from_slice(v).map_err(|e| format!("unreadable leader: {e}"))?);
            }
            (Key::MaxId | Key::Leader, None) => {}
        }
        Ok(())
    }

    /// A schema no version holds any more is gone (a later registration
    /// of the same text gets a new id: ids are never handed out twice).
    fn forget_if_unused(&mut self, id: u32) {
        if self.subjects.values().any(|vs| vs.values().any(|e| e.id == id)) {
            return;
        }
        if let Some(s) = self.schemas.remove(&id) {
            self.identities.remove(&identity(&s.schema_type, &s.schema, &s.references));
        }
    }

    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    // ---- reads ----

    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| deleted || vs.values().any(|e| !e.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn live_versions(&self, subject: &str) -> impl Iterator<Item = (u32, VersionEntry)> + '_ {
        self.subjects
            .get(subject)
            .into_iter()
            .flat_map(|vs| vs.iter().filter(|(_, e)| !e.deleted))
            .map(|(v, e)| (*v, *e))
    }

    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>> {
        let vs: Vec<u32> = match self.subjects.get(subject) {
            Some(vs) => vs.iter().filter(|(_, e)| deleted || !e.deleted).map(|(v, _)| *v).collect(),
            None => Vec::new(),
        };
        if vs.is_empty() {
            return Err(ConfluentError::subject_not_found(subject));
        }
        Ok(vs)
    }

    /// The version `spec` names (soft-deleted ones only when `deleted`).
    pub fn version(&self, subject: &str, spec: VersionSpec, deleted: bool) -> Result<(u32, VersionEntry)> {
        let Some(vs) = self.subjects.get(subject) else {
            return Err(ConfluentError::subject_not_found(subject));
        };
        let found = match spec {
            VersionSpec::Latest => {
                vs.iter().rev().find(|(_, e)| deleted || !e.deleted).map(|(v, e)| (*v, *e))
            }
            VersionSpec::Number(n) => vs.get(&n).filter(|e| deleted || !e.deleted).map(|e| (n, *e)),
        };
        match (found, spec) {
            (Some(f), _) => Ok(f),
            (None, _) if !vs.values().any(|e| !e.deleted) && !deleted => {
                Err(ConfluentError::subject_not_found(subject))
            }
            (None, VersionSpec::Latest) => Err(ConfluentError::version_not_found(subject, "latest")),
            (None, VersionSpec::Number(n)) => Err(ConfluentError::version_not_found(subject, &n.to_string())),
        }
    }

    pub fn schema(&self, id: u32) -> Result<&StoredSchema> {
        self.schemas.get(&id).ok_or_else(|| ConfluentError::schema_not_found(&id.to_string()))
    }

    /// Every (subject, version) holding schema `id`.
    pub fn id_versions(&self, id: u32, deleted: bool) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (s, vs) in &self.subjects {
            for (v, e) in vs {
                if e.id == id && (deleted || !e.deleted) {
                    out.push((s.clone(), *v));
                }
            }
        }
        out
    }

    pub fn global_level(&self) -> Level {
        self.global.unwrap_or(Level::Backward)
    }

    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.configs.get(subject).copied()
    }

    fn effective_level(&self, subject: &str) -> Level {
        self.subject_level(subject).unwrap_or_else(|| self.global_level())
    }

    /// The JSON Confluent answers for one version of a subject.
    pub fn version_json(&self, subject: &str, version: u32, entry: VersionEntry) -> Value {
        let mut v = json!({"subject": subject, "version": version, "id": entry.id});
        if let Ok(s) = self.schema(entry.id) {
            decorate(&mut v, s);
        }
        v
    }

    /// Looks `request` up under `subject`: the live version holding it.
    pub fn lookup(&self, subject: &str, request: &SchemaRequest, deleted: bool) -> Result<Value> {
        if self.subjects.get(subject).is_none_or(|vs| vs.values().all(|e| e.deleted && !deleted)) {
            return Err(ConfluentError::subject_not_found(subject));
        }
        let checked = self.check_schema(request)?;
        let want = self.identities.get(&checked.identity());
        let vs = &self.subjects[subject];
        match vs.iter().find(|(_, e)| Some(&e.id) == want && (deleted || !e.deleted)) {
            Some((v, e)) => Ok(self.version_json(subject, *v, *e)),
            None => Err(ConfluentError::schema_not_found("")),
        }
    }

    /// Whether `request` may become the next version of `subject` (against
    /// `spec`, or every live version when None).
    pub fn compatibility(
        &self,
        subject: &str,
        spec: Option<VersionSpec>,
        request: &SchemaRequest,
    ) -> Result<Vec<String>> {
        let checked = self.check_schema(request)?;
        let against: Vec<(u32, VersionEntry)> = match spec {
            Some(spec) => vec![self.version(subject, spec, false)?],
            None => self.live_versions(subject).collect(),
        };
        let level = self.effective_level(subject);
        // One version named: checked at the level's direction against it alone.
        let previous = self.parsed_versions(&against)?;
        let refs: Vec<(u32, &apache_avro::Schema)> = previous.iter().map(|(v, p)| (*v, &p.schema)).collect();
        let level = match (spec, level) {
            (Some(_), Level::BackwardTransitive) => Level::Backward,
            (Some(_), Level::ForwardTransitive) => Level::Forward,
            (Some(_), Level::FullTransitive) => Level::Full,
            (_, l) => l,
        };
        Ok(avro::check(level, &checked.parsed.schema, &refs).err().unwrap_or_default())
    }

    // ---- checking ----

    /// The text of every schema `references` needs, dependencies first.
    fn resolve_references(
        &self,
        references: &[Reference],
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if depth > 32 {
            return Err(ConfluentError::invalid_schema("references nest deeper than 32 levels"));
        }
        for r in references {
            let spec = if r.version == -1 {
                VersionSpec::Latest
            } else {
                u32::try_from(r.version).ok().filter(|v| *v >= 1).map(VersionSpec::Number).ok_or_else(
                    || {
                        ConfluentError::invalid_schema(&format!(
                            "reference '{}' has version {}",
                            r.name, r.version
                        ))
                    },
                )?
            };
            let (_, e) = self.version(&r.subject, spec, false).map_err(|_| {
                ConfluentError::invalid_schema(&format!(
                    "reference '{}' names subject '{}' version {}, which does not exist",
                    r.name, r.subject, r.version
                ))
            })?;
            let s = self.schema(e.id)?;
            self.resolve_references(&s.references, out, depth + 1)?;
            if !out.contains(&s.schema) {
                out.push(s.schema.clone());
            }
        }
        Ok(())
    }

    fn check_schema(&self, request: &SchemaRequest) -> Result<Checked> {
        let schema_type = request.schema_type.clone().unwrap_or_else(avro_type).to_ascii_uppercase();
        if schema_type != "AVRO" {
            return Err(ConfluentError::invalid_schema(&format!(
                "schema type {schema_type} is not supported (this registry holds AVRO schemas)"
            )));
        }
        let references = request.references.clone().unwrap_or_default();
        let mut texts = Vec::new();
        self.resolve_references(&references, &mut texts, 0)?;
        let parsed = avro::parse(&request.schema, &texts).map_err(|e| ConfluentError::invalid_schema(&e))?;
        Ok(Checked { parsed, schema_type, references })
    }

    fn parsed_versions(&self, versions: &[(u32, VersionEntry)]) -> Result<Vec<(u32, avro::Parsed)>> {
        let mut out = Vec::new();
        for (v, e) in versions {
            let s = self.schema(e.id)?;
            let mut texts = Vec::new();
            self.resolve_references(&s.references, &mut texts, 0)?;
            let id = e.id;
            let p = avro::parse(&s.schema, &texts)
                .map_err(|why| ConfluentError::store(&format!("stored schema {id}: {why}")))?;
            out.push((*v, p));
        }
        Ok(out)
    }

    // ---- planning writes ----

    pub fn plan(&self, op: &WriteOp) -> Result<Plan> {
        match op {
            WriteOp::Register { subject, request } => self.plan_register(subject, request),
            WriteOp::DeleteSubject { subject, permanent } => self.plan_delete_subject(subject, *permanent),
            WriteOp::DeleteVersion { subject, version, permanent } => {
                self.plan_delete_version(subject, *version, *permanent)
            }
            WriteOp::SetConfig { subject, level } => Ok(Plan {
                records: vec![config_record(subject.clone(), Some(*level))],
                answer: json!({"compatibility": level.as_str()}),
            }),
            WriteOp::DeleteConfig { subject } => match self.subject_level(subject) {
                None => Err(ConfluentError::subject_level_not_configured(subject)),
                Some(old) => Ok(Plan {
                    records: vec![config_record(Some(subject.clone()), None)],
                    answer: json!({"compatibilityLevel": old.as_str()}),
                }),
            },
            WriteOp::Announce(l) => Ok(Plan {
                records: vec![(Key::Leader.bytes(), Some(serde_json::to_vec(l).unwrap_or_default()))],
                answer: Value::Null,
            }),
        }
    }

    fn plan_register(&self, subject: &str, request: &SchemaRequest) -> Result<Plan> {
        if subject.is_empty() || subject.chars().any(char::is_control) {
            return Err(ConfluentError::unprocessable("the subject name must be non-empty printable text"));
        }
        let checked = self.check_schema(request)?;
        let identity = checked.identity();
        let known = self.identities.get(&identity).copied();
        let live: Vec<(u32, VersionEntry)> = self.live_versions(subject).collect();
        if let Some(id) = known {
            if let Some((v, _)) = live.iter().find(|(_, e)| e.id == id) {
                // Registered already: the same id, nothing written.
                return Ok(Plan { records: Vec::new(), answer: json!({"id": id, "version": v}) });
            }
        }
        let previous = self.parsed_versions(&live)?;
        let prev: Vec<(u32, &apache_avro::Schema)> = previous.iter().map(|(v, p)| (*v, &p.schema)).collect();
        avro::check(self.effective_level(subject), &checked.parsed.schema, &prev)
            .map_err(|m| ConfluentError::incompatible(&m))?;
        let version =
            self.subjects.get(subject).and_then(|vs| vs.keys().next_back().copied()).unwrap_or(0) + 1;
        let mut records = Vec::new();
        let id = match known {
            Some(id) => id,
            None => {
                let id = self
                    .max_id
                    .checked_add(1)
                    .ok_or_else(|| ConfluentError::store("schema ids are exhausted"))?;
                records.push((
                    Key::MaxId.bytes(),
                    Some(serde_json::to_vec(&MaxIdValue { max_id: id }).unwrap_or_default()),
                ));
                id
            }
        };
        let value = SchemaValue {
            subject: subject.to_string(),
            version,
            id,
            schema: checked.parsed.normalized,
            schema_type: checked.schema_type,
            references: checked.references,
            deleted: false,
        };
        records.insert(0, schema_record(&value));
        Ok(Plan { records, answer: json!({"id": id, "version": version}) })
    }

    fn plan_delete_subject(&self, subject: &str, permanent: bool) -> Result<Plan> {
        let Some(vs) = self.subjects.get(subject) else {
            return Err(ConfluentError::subject_not_found(subject));
        };
        let live: Vec<u32> = vs.iter().filter(|(_, e)| !e.deleted).map(|(v, _)| *v).collect();
        let mut records = Vec::new();
        let versions: Vec<u32> = if permanent {
            if !live.is_empty() {
                return Err(ConfluentError::subject_not_soft_deleted(subject));
            }
            for v in vs.keys() {
                records.push((Key::Schema { subject: subject.to_string(), version: *v }.bytes(), None));
            }
            vs.keys().copied().collect()
        } else {
            if live.is_empty() {
                return Err(ConfluentError::subject_soft_deleted(subject));
            }
            for v in &live {
                records.push(self.soft_deleted_record(subject, *v, vs[v])?);
            }
            live
        };
        Ok(Plan { records, answer: json!(versions) })
    }

    fn plan_delete_version(&self, subject: &str, spec: VersionSpec, permanent: bool) -> Result<Plan> {
        let (v, e) = self.version(subject, spec, permanent)?;
        let record = if permanent {
            if !e.deleted {
                return Err(ConfluentError::version_not_soft_deleted(subject, v));
            }
            (Key::Schema { subject: subject.to_string(), version: v }.bytes(), None)
        } else {
            if e.deleted {
                return Err(ConfluentError::version_soft_deleted(subject, v));
            }
            self.soft_deleted_record(subject, v, e)?
        };
        Ok(Plan { records: vec![record], answer: json!(v) })
    }

    fn soft_deleted_record(&self, subject: &str, version: u32, e: VersionEntry) -> Result<RecordBytes> {
        let s = self.schema(e.id)?;
        Ok(schema_record(&SchemaValue {
            subject: subject.to_string(),
            version,
            id: e.id,
            schema: s.schema.clone(),
            schema_type: s.schema_type.clone(),
            references: s.references.clone(),
            deleted: true,
        }))
    }
}

/// Adds a schema's text, and its type and references when they are not
/// the defaults (Confluent leaves those out for plain Avro).
pub fn decorate(v: &mut Value, s: &StoredSchema) {
    v["schema"] = json!(s.schema);
    if s.schema_type != "AVRO" {
        v["schemaType"] = json!(s.schema_type);
    }
    if !s.references.is_empty() {
        v["references"] = json!(s.references);
    }
}

fn schema_record(v: &SchemaValue) -> RecordBytes {
    (
        Key::Schema { subject: v.subject.clone(), version: v.version }.bytes(),
        Some(serde_json::to_vec(v).unwrap_or_default()),
    )
}

fn config_record(subject: Option<String>, level: Option<Level>) -> RecordBytes {
    (
        Key::Config { subject }.bytes(),
        level.map(|l| {
            serde_json::to_vec(&ConfigValue { compatibility_level: l.as_str().into() }).unwrap_or_default()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;
    const V2: &str = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int","default":0}]}"#;
    const BAD: &str = r#"{"type":"record","name":"User","fields":[{"name":"age","type":"int"}]}"#;

    fn req(schema: &str) -> SchemaRequest {
        SchemaRequest { schema: schema.into(), schema_type: None, references: None }
    }

    /// Plans and applies, as the leader does after the append commits.
    fn write(s: &mut State, op: WriteOp) -> Result<Value> {
        let plan = s.plan(&op)?;
        for (k, v) in &plan.records {
            s.apply(k, v.as_deref()).expect("own records apply");
        }
        Ok(plan.answer)
    }

    fn register(s: &mut State, subject: &str, schema: &str) -> Result<Value> {
        write(s, WriteOp::Register { subject: subject.into(), request: req(schema) })
    }

    #[test]
    fn same_schema_same_id_everywhere() {
        let mut s = State::default();
        assert_eq!(register(&mut s, "a-value", V1).unwrap()["id"], 1);
        let again = s.plan(&WriteOp::Register { subject: "a-value".into(), request: req(V1) }).unwrap();
        assert!(again.records.is_empty(), "a repeat registration writes nothing");
        assert_eq!(again.answer["id"], 1);
        // Spelled differently, under another subject: the same schema.
        let spaced = V1.replace(',', " , ");
        assert_eq!(register(&mut s, "b-value", &spaced).unwrap()["id"], 1);
        assert_eq!(register(&mut s, "a-value", V2).unwrap(), json!({"id": 2, "version": 2}));
        assert_eq!(s.id_versions(1, false), vec![("a-value".into(), 1), ("b-value".into(), 1)]);
    }

    #[test]
    fn incompatible_and_malformed_are_refused_and_nothing_is_planned() {
        let mut s = State::default();
        register(&mut s, "t", V1).unwrap();
        let e = register(&mut s, "t", BAD).unwrap_err();
        assert_eq!((e.status, e.code), (409, 409));
        let e = register(&mut s, "t", "{not json").unwrap_err();
        assert_eq!((e.status, e.code), (422, 42201));
        let e = write(
            &mut s,
            WriteOp::Register {
                subject: "t".into(),
                request: SchemaRequest {
                    schema: V1.into(),
                    schema_type: Some("PROTOBUF".into()),
                    references: None,
                },
            },
        )
        .unwrap_err();
        assert_eq!(e.code, 42201);
        assert_eq!(s.versions("t", true).unwrap(), vec![1]);
        // With NONE the same change goes in.
        write(&mut s, WriteOp::SetConfig { subject: Some("t".into()), level: Level::None }).unwrap();
        assert_eq!(register(&mut s, "t", BAD).unwrap()["version"], 2);
    }

    #[test]
    fn deletes_soft_then_permanent_and_ids_are_never_reused() {
        let mut s = State::default();
        register(&mut s, "t", V1).unwrap();
        register(&mut s, "t", V2).unwrap();
        let permanent_first = write(&mut s, WriteOp::DeleteSubject { subject: "t".into(), permanent: true });
        assert_eq!(permanent_first.unwrap_err().code, 40405);
        assert_eq!(
            write(&mut s, WriteOp::DeleteSubject { subject: "t".into(), permanent: false }).unwrap(),
            json!([1, 2])
        );
        assert_eq!(s.version("t", VersionSpec::Latest, false).unwrap_err().code, 40401);
        assert_eq!(
            write(&mut s, WriteOp::DeleteSubject { subject: "t".into(), permanent: false }).unwrap_err().code,
            40404
        );
        write(&mut s, WriteOp::DeleteSubject { subject: "t".into(), permanent: true }).unwrap();
        assert_eq!(s.schema(2).unwrap_err().code, 40403);
        // The text of a deleted schema comes back with a new id.
        assert_eq!(register(&mut s, "t", V2).unwrap()["id"], 3);
    }

    #[test]
    fn the_max_id_record_outlives_compaction_of_the_schemas() {
        // What a compacted __schemas may hold after permanent deletes: no
        // SCHEMA record for id 7, only the MAX_ID record.
        let mut s = State::default();
        s.apply(&Key::MaxId.bytes(), Some(br#"{"max_id":7}"#)).unwrap();
        assert_eq!(register(&mut s, "t", V1).unwrap()["id"], 8);
    }

    #[test]
    fn version_deletes() {
        let mut s = State::default();
        register(&mut s, "t", V1).unwrap();
        register(&mut s, "t", V2).unwrap();
        let del = |s: &mut State, v, permanent| {
            write(
                s,
                WriteOp::DeleteVersion { subject: "t".into(), version: VersionSpec::Number(v), permanent },
            )
        };
        assert_eq!(del(&mut s, 1, true).unwrap_err().code, 40407);
        assert_eq!(del(&mut s, 1, false).unwrap(), json!(1));
        assert_eq!(del(&mut s, 1, false).unwrap_err().code, 40402);
        assert_eq!(s.versions("t", false).unwrap(), vec![2]);
        assert_eq!(s.versions("t", true).unwrap(), vec![1, 2]);
        del(&mut s, 1, true).unwrap();
        assert_eq!(s.versions("t", true).unwrap(), vec![2]);
        assert_eq!(s.schema(1).unwrap_err().code, 40403);
        // The next version number continues after the highest one.
        let v3 = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},{"name":"age","type":"int","default":1}]}"#;
        assert_eq!(register(&mut s, "t", v3).unwrap()["version"], 3);
    }

    #[test]
    fn references_must_exist_and_take_part_in_identity() {
        let mut s = State::default();
        let address = r#"{"type":"record","name":"Address","fields":[{"name":"city","type":"string"}]}"#;
        let user = r#"{"type":"record","name":"User","fields":[{"name":"home","type":"Address"}]}"#;
        let with_ref = |version| SchemaRequest {
            schema: user.into(),
            schema_type: Some("AVRO".into()),
            references: Some(vec![Reference { name: "Address".into(), subject: "address".into(), version }]),
        };
        let e =
            write(&mut s, WriteOp::Register { subject: "user".into(), request: with_ref(1) }).unwrap_err();
        assert_eq!(e.code, 42201, "{e}");
        register(&mut s, "address", address).unwrap();
        let a = write(&mut s, WriteOp::Register { subject: "user".into(), request: with_ref(1) }).unwrap();
        assert_eq!(a["id"], 2);
        let stored = s.version_json("user", 1, s.version("user", VersionSpec::Latest, false).unwrap().1);
        assert_eq!(stored["references"][0]["subject"], "address");
        assert_eq!(s.lookup("user", &with_ref(1), false).unwrap()["version"], 1);
    }

    #[test]
    fn compatibility_endpoint_answers_without_writing() {
        let mut s = State::default();
        register(&mut s, "t", V1).unwrap();
        assert!(s.compatibility("t", Some(VersionSpec::Latest), &req(V2)).unwrap().is_empty());
        assert!(!s.compatibility("t", Some(VersionSpec::Latest), &req(BAD)).unwrap().is_empty());
        assert_eq!(s.compatibility("nope", Some(VersionSpec::Latest), &req(V2)).unwrap_err().code, 40401);
        assert_eq!(s.versions("t", true).unwrap(), vec![1]);
    }

    #[test]
    fn unreadable_records_are_skipped() {
        let mut s = State::default();
        assert!(s.apply(b"garbage", Some(b"x")).is_err());
        assert!(s.apply(&Key::Schema { subject: "t".into(), version: 1 }.bytes(), Some(b"{")).is_err());
        assert!(s.subjects(true).is_empty());
    }

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(VersionSpec::parse("latest").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("-1").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("3").unwrap(), VersionSpec::Number(3));
        for bad in ["0", "x", "-2", "4294967295"] {
            assert_eq!(VersionSpec::parse(bad).unwrap_err().code, 42202, "{bad}");
        }
    }
}
