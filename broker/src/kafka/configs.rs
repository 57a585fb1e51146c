//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics,
//! over the same path as `tributary topic describe` and `tributary topic
//! alter` (`AdminService::alter_topic_configs_routed`: decided by the
//! controller, validated there with the same rules, `validate_only`
//! honoured). Kafka's two alter calls are only translated here into the
//! one change that path knows — keys to set and keys to remove:
//!
//! * AlterConfigs replaces a topic's whole set of overrides, so every
//!   supported key the request does not name is removed;
//! * IncrementalAlterConfigs sets, deletes, appends to or subtracts from
//!   single keys (append and subtract only on list-valued keys, as Kafka).
//!
//! Broker resources are refused: broker settings are startup flags and a
//! file here, not dynamic configs, and a client told "done" would be wrong.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest, AlterConfigsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use tributary_proto::v1;

use super::{errors, text};
use crate::config::TOPIC_KEYS;
use crate::server::admin::AdminService;
use crate::BrokerState;

/// Config resource types.
const TOPIC_RESOURCE: i8 = 2;
const BROKER_RESOURCE: i8 = 4;
const BROKER_LOGGER_RESOURCE: i8 = 8;
/// DescribeConfigs config sources.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;
/// IncrementalAlterConfigs operations.
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;
/// Topic keys whose value is a comma-separated list (APPEND/SUBTRACT).
const LIST_KEYS: &[&str] = &["cleanup.policy"];

/// A refusal: (Kafka error code, message).
type Refusal = (i16, String);

/// The one change the admin path applies: keys to set, keys to remove.
#[derive(Debug, Default, PartialEq, Eq)]
struct Change {
    set: BTreeMap<String, String>,
    delete: Vec<String>,
}

fn known(key: &str) -> Result<(), Refusal> {
    if TOPIC_KEYS.iter().any(|(k, _)| *k == key) {
        Ok(())
    } else {
        Err((errors::INVALID_CONFIG, format!("unknown topic config '{key}'")))
    }
}

/// Why a resource cannot be altered here, if it cannot.
fn refuse_resource(resource_type: i8) -> Option<Refusal> {
    match resource_type {
        TOPIC_RESOURCE => None,
        BROKER_RESOURCE | BROKER_LOGGER_RESOURCE => Some((
            errors::INVALID_REQUEST,
            "broker settings are startup flags and a config file, not dynamic configs: change them there and restart the broker".into(),
        )),
        other => Some((errors::INVALID_REQUEST, format!("resource type {other} is not supported (topics: 2)"))),
    }
}

/// AlterConfigs' change: the named keys become the topic's overrides,
/// every other supported key is removed (back to the broker default).
fn replace_all(configs: &[(String, Option<String>)]) -> Result<Change, Refusal> {
    let mut change = Change::default();
    for (key, value) in configs {
        known(key)?;
        if let Some(v) = value {
            if change.set.insert(key.clone(), v.clone()).is_some() {
                return Err((errors::INVALID_REQUEST, format!("config '{key}' is named twice")));
            }
        }
    }
    change.delete =
        TOPIC_KEYS.iter().map(|(k, _)| k.to_string()).filter(|k| !change.set.contains_key(k)).collect();
    Ok(change)
}

/// A list value's items.
fn items(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// IncrementalAlterConfigs' change for one topic: `ops` are (key,
/// operation, value); `current` is the topic's effective config, which
/// APPEND and SUBTRACT start from.
fn incremental(
    ops: &[(String, i8, Option<String>)],
    current: &BTreeMap<String, String>,
) -> Result<Change, Refusal> {
    let mut change = Change::default();
    let mut seen = std::collections::HashSet::new();
    for (key, op, value) in ops {
        known(key)?;
        if !seen.insert(key.as_str()) {
            return Err((errors::INVALID_REQUEST, format!("config '{key}' is named twice")));
        }
        let list_only = |verb: &str| -> Result<Vec<String>, Refusal> {
            if !LIST_KEYS.contains(&key.as_str()) {
                return Err((
                    errors::INVALID_CONFIG,
                    format!("config value {verb} is not allowed for config key '{key}' (not a list)"),
                ));
            }
            Ok(current.get(key).map(|v| items(v)).unwrap_or_default())
        };
        let given = || value.clone().ok_or((errors::INVALID_CONFIG, format!("config '{key}' needs a value")));
        match *op {
            SET => {
                change.set.insert(key.clone(), given()?);
            }
            DELETE => change.delete.push(key.clone()),
            APPEND => {
                let mut list = list_only("append")?;
                for item in items(&given()?) {
                    if !list.contains(&item) {
                        list.push(item);
                    }
                }
                change.set.insert(key.clone(), list.join(","));
            }
            SUBTRACT => {
                let gone = items(&given()?);
                let list: Vec<String> =
                    list_only("subtract")?.into_iter().filter(|i| !gone.contains(i)).collect();
                change.set.insert(key.clone(), list.join(","));
            }
            other => return Err((errors::INVALID_REQUEST, format!("unknown config operation {other}"))),
        }
    }
    Ok(change)
}

/// The topic's effective config (defaults and overrides), or why not.
fn effective(state: &BrokerState, topic: &str) -> Result<BTreeMap<String, String>, Refusal> {
    let md = state.cluster.metadata();
    let t = md
        .topic(topic)
        .ok_or_else(|| (errors::UNKNOWN_TOPIC_OR_PARTITION, format!("unknown topic '{topic}'")))?;
    crate::config::TopicConfig::resolve(state.topics.defaults(), &t.configs)
        .map(|c| c.to_map().into_iter().collect())
        .map_err(|e| (errors::code(&e), e.to_string()))
}

/// Applies `change` to `topic` through the admin path.
async fn apply(
    state: &Arc<BrokerState>,
    topic: &str,
    change: Change,
    validate_only: bool,
) -> Result<(), Refusal> {
    let req = v1::AlterTopicConfigsRequest {
        name: topic.to_string(),
        set: change.set.into_iter().collect(),
        delete: change.delete,
        validate_only,
    };
    AdminService::new(state.clone())
        .alter_topic_configs_routed(req)
        .await
        .map(drop)
        .map_err(|e| (errors::code(&e), e.to_string()))
}

/// (error code, message) of one resource's outcome.
fn outcome(r: Result<(), Refusal>) -> (i16, Option<String>) {
    match r {
        Ok(()) => (errors::NONE, None),
        Err((code, message)) => (code, Some(message)),
    }
}

pub async fn alter_configs(state: &Arc<BrokerState>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut resp = AlterConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.to_string();
        let result = match refuse_resource(r.resource_type) {
            Some(refusal) => Err(refusal),
            None => {
                let configs: Vec<(String, Option<String>)> = r
                    .configs
                    .iter()
                    .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                    .collect();
                match replace_all(&configs) {
                    Ok(change) => apply(state, &name, change, req.validate_only).await,
                    Err(refusal) => Err(refusal),
                }
            }
        };
        let (code, message) = outcome(result);
        let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
        out.error_code = code;
        out.error_message = message.map(text);
        out.resource_type = r.resource_type;
        out.resource_name = r.resource_name;
        resp.responses.push(out);
    }
    resp
}

pub async fn incremental_alter_configs(
    state: &Arc<BrokerState>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut resp = IncrementalAlterConfigsResponse::default();
    for r in req.resources {
        let name = r.resource_name.to_string();
        let ops: Vec<(String, i8, Option<String>)> = r
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.config_operation, c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let result = match refuse_resource(r.resource_type) {
            Some(refusal) => Err(refusal),
            None => match effective(state, &name).and_then(|current| incremental(&ops, &current)) {
                Ok(change) => apply(state, &name, change, req.validate_only).await,
                Err(refusal) => Err(refusal),
            },
        };
        let (code, message) = outcome(result);
        let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        out.error_code = code;
        out.error_message = message.map(text);
        out.resource_type = r.resource_type;
        out.resource_name = r.resource_name;
        resp.responses.push(out);
    }
    resp
}

pub fn describe_configs(state: &Arc<BrokerState>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let md = state.cluster.metadata();
    let mut resp = DescribeConfigsResponse::default();
    for r in req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = r.resource_type;
        out.resource_name = r.resource_name.clone();
        let wanted =
            |k: &str| r.configuration_keys.as_ref().is_none_or(|keys| keys.iter().any(|w| w.as_str() == k));
        match r.resource_type {
            TOPIC_RESOURCE => {
                let resolved = md.topic(r.resource_name.as_str()).map(|t| {
                    crate::config::TopicConfig::resolve(state.topics.defaults(), &t.configs)
                        .map(|c| (c, &t.configs))
                });
                match resolved {
                    None => {
                        out.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
                        out.error_message =
                            Some(text(format!("unknown topic '{}'", r.resource_name.as_str())));
                    }
                    Some(Err(e)) => {
                        out.error_code = errors::code(&e);
                        out.error_message = Some(text(e.to_string()));
                    }
                    Some(Ok((config, overrides))) => {
                        for (k, v) in config.to_map() {
                            if !wanted(&k) {
                                continue;
                            }
                            let mut c = DescribeConfigsResourceResult::default();
                            c.config_source = if overrides.contains_key(&k) {
                                DYNAMIC_TOPIC_CONFIG
                            } else {
                                DEFAULT_CONFIG
                            };
                            c.name = text(k);
                            c.value = Some(text(v));
                            out.configs.push(c);
                        }
                    }
                }
            }
            // Broker settings are flags and a file, not dynamic configs.
            BROKER_RESOURCE => {}
            other => {
                out.error_code = errors::INVALID_REQUEST;
                out.error_message =
                    Some(text(format!("resource type {other} is not supported (topics: 2, brokers: 4)")));
            }
        }
        resp.results.push(out);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, op: i8, value: Option<&str>) -> (String, i8, Option<String>) {
        (key.to_string(), op, value.map(str::to_string))
    }

    #[test]
    fn alter_configs_replaces_every_override() {
        let change = replace_all(&[("retention.ms".into(), Some("1000".into()))]).unwrap();
        assert_eq!(change.set, BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]));
        assert!(change.delete.contains(&"cleanup.policy".to_string()));
        assert!(!change.delete.contains(&"retention.ms".to_string()));
        assert_eq!(change.delete.len(), TOPIC_KEYS.len() - 1);
        let unknown = replace_all(&[("no.such.key".into(), Some("1".into()))]).unwrap_err();
        assert_eq!(unknown.0, errors::INVALID_CONFIG);
    }

    #[test]
    fn incremental_ops_set_delete_append_and_subtract() {
        let current = BTreeMap::from([("cleanup.policy".to_string(), "delete".to_string())]);
        let change = incremental(
            &[
                op("retention.ms", SET, Some("5")),
                op("segment.ms", DELETE, None),
                op("cleanup.policy", APPEND, Some("compact")),
            ],
            &current,
        )
        .unwrap();
        assert_eq!(change.set["retention.ms"], "5");
        assert_eq!(change.set["cleanup.policy"], "delete,compact");
        assert_eq!(change.delete, ["segment.ms"]);
        let both = BTreeMap::from([("cleanup.policy".to_string(), "compact,delete".to_string())]);
        let change = incremental(&[op("cleanup.policy", SUBTRACT, Some("compact"))], &both).unwrap();
        assert_eq!(change.set["cleanup.policy"], "delete");
        // Only what Kafka allows: append on a scalar, unknown keys and
        // operations, a key named twice, SET without a value.
        let refused = |ops: &[(String, i8, Option<String>)]| incremental(ops, &current).unwrap_err().0;
        assert_eq!(refused(&[op("retention.ms", APPEND, Some("1"))]), errors::INVALID_CONFIG);
        assert_eq!(refused(&[op("no.such.key", SET, Some("1"))]), errors::INVALID_CONFIG);
        assert_eq!(refused(&[op("retention.ms", 9, Some("1"))]), errors::INVALID_REQUEST);
        assert_eq!(
            refused(&[op("retention.ms", SET, Some("1")), op("retention.ms", DELETE, None)]),
            errors::INVALID_REQUEST
        );
        assert_eq!(refused(&[op("retention.ms", SET, None)]), errors::INVALID_CONFIG);
    }

    #[test]
    fn broker_resources_are_refused_and_topics_are_not() {
        assert_eq!(refuse_resource(TOPIC_RESOURCE), None);
        assert_eq!(refuse_resource(BROKER_RESOURCE).map(|r| r.0), Some(errors::INVALID_REQUEST));
        assert_eq!(refuse_resource(BROKER_LOGGER_RESOURCE).map(|r| r.0), Some(errors::INVALID_REQUEST));
    }
}
