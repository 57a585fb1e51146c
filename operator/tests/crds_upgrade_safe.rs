//! The CRDs stay upgrade-safe: objects stored under the released schema
//! (`crds/baseline/`) must still be valid, and still mean the same, under
//! the current one. So, walking every schema node of the baseline: the node
//! still exists with the same type, no field became required, no enum value
//! went away, no minimum rose, no maximum or maximum length fell, and a
//! changed pattern is one of the listed widenings (a regex cannot be compared
//! mechanically, so each is named here with why it accepts more).

use std::path::Path;

use serde_json::Value;

/// Patterns that changed on purpose, each accepting everything the old one did.
const WIDENED_PATTERNS: &[(&str, &str)] = &[(
    // One `host:port` became a comma-separated list of them.
    r"^[A-Za-z0-9.-]+:[0-9]{1,5}$",
    r"^[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*$",
)];

fn schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

fn check(path: &str, old: &Value, new: &Value, problems: &mut Vec<String>) {
    if new.is_null() {
        problems.push(format!("{path}: removed"));
        return;
    }
    if old.get("type") != new.get("type") {
        problems.push(format!("{path}: type {} became {}", old["type"], new["type"]));
    }
    let set = |v: &Value, key: &str| -> Vec<Value> { v[key].as_array().cloned().unwrap_or_default() };
    for r in set(new, "required") {
        if !set(old, "required").contains(&r) {
            problems.push(format!("{path}: {r} became required"));
        }
    }
    if old.get("enum").is_some() {
        for e in set(old, "enum") {
            if !set(new, "enum").contains(&e) {
                problems.push(format!("{path}: enum value {e} removed"));
            }
        }
    }
    let num = |v: &Value, key: &str| v.get(key).and_then(Value::as_f64);
    for key in ["minimum", "minLength", "minItems", "minProperties"] {
        if let (o, Some(n)) = (num(old, key), num(new, key)) {
            if o.is_none_or(|o| n > o) {
                problems.push(format!("{path}: {key} tightened to {n}"));
            }
        }
    }
    for key in ["maximum", "maxLength", "maxItems", "maxProperties"] {
        if let (o, Some(n)) = (num(old, key), num(new, key)) {
            if o.is_none_or(|o| n < o) {
                problems.push(format!("{path}: {key} tightened to {n}"));
            }
        }
    }
    if let (Some(o), n) = (old["pattern"].as_str(), new["pattern"].as_str()) {
        if Some(o) != n && !WIDENED_PATTERNS.contains(&(o, n.unwrap_or_default())) {
            problems.push(format!("{path}: pattern {o:?} became {n:?}"));
        }
    }
    if old.get("pattern").is_none() && new.get("pattern").is_some() {
        problems.push(format!("{path}: a pattern was added"));
    }
    if let Some(props) = old["properties"].as_object() {
        for (k, v) in props {
            check(&format!("{path}.{k}"), v, &new["properties"][k], problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if old[key].is_object() {
            check(&format!("{path}[{key}]"), &old[key], &new[key], problems);
        }
    }
}

#[test]
fn current_crds_only_add_to_the_released_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/baseline");
    let mut problems = Vec::new();
    let current = tributary_crds::all_crds();
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).expect("crds/baseline") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let old: Value = serde_norway::from_str(&std::fs::read_to_string(&path).expect("read baseline"))
            .expect("baseline YAML");
        let name = old["metadata"]["name"].as_str().expect("name").to_string();
        let Some(new) = current.iter().find(|c| c.metadata.name.as_deref() == Some(&name)) else {
            problems.push(format!("{name}: the CRD is gone"));
            continue;
        };
        let new = serde_json::to_value(new).expect("json");
        check(&name, schema(&old), schema(&new), &mut problems);
        checked += 1;
    }
    assert_eq!(checked, 3, "a baseline per CRD");
    assert!(problems.is_empty(), "not upgrade-safe:\n{}", problems.join("\n"));
}

#[test]
fn the_check_catches_a_removed_field_and_a_narrowed_bound() {
    let old = serde_json::json!({"type": "object", "properties": {
        "a": {"type": "integer", "maximum": 10}, "b": {"type": "string"}}});
    let new = serde_json::json!({"type": "object", "required": ["a"], "properties": {
        "a": {"type": "integer", "maximum": 5}}});
    let mut problems = Vec::new();
    check("x", &old, &new, &mut problems);
    assert_eq!(problems, ["x: \"a\" became required", "x.a: maximum tightened to 5", "x.b: removed"]);
}
