//! Status conditions shared by the three kinds.
//!
//! GitOps tools (Argo CD, Flux, `kubectl wait`, kstatus) read a small, fixed
//! vocabulary of conditions. Every Tributary object reports exactly these:
//!
//! - `Ready`: what the spec declares is true (status `True`), or not yet / not
//!   at all (`False`, with a reason and a message a person can act on).
//! - `Reconciling`: the operator is working towards the spec (kstatus'
//!   "abnormal-true" convention: present and `True` only while it works).
//! - `Stalled`: the operator cannot make progress without a person (for
//!   example a Topic asking for more replicas than its Cluster has brokers).
//!
//! Each condition carries its own `observedGeneration`, so a reader can tell a
//! stale `Ready=True` from a fresh one. [`set_condition`] keeps
//! `lastTransitionTime` unchanged while the status stays the same, as the
//! Kubernetes API conventions ask.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `type` of the condition saying the declared state is in effect.
pub const READY: &str = "Ready";
/// `type` of the condition saying the operator is still working on it.
pub const RECONCILING: &str = "Reconciling";
/// `type` of the condition saying progress needs a person.
pub const STALLED: &str = "Stalled";

/// The status of a condition, as in `metav1.ConditionStatus`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One observation of an object's state (`metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    pub status: ConditionStatus,
    /// The `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// A CamelCase word for programs (`TopicCreated`, `PartitionShrinkRefused`, ...).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// What happened and, when something is wrong, what to do about it.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
}

impl Condition {
    /// A condition observed now.
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        generation: Option<i64>,
        reason: &str,
        message: impl Into<String>,
        now: Timestamp,
    ) -> Condition {
        Condition {
            type_: type_.to_string(),
            status,
            observed_generation: generation,
            last_transition_time: Time(now),
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Inserts or replaces the condition of `new.type_`, keeping the previous
/// `lastTransitionTime` when the status did not change.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// The condition of the given type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The schema of a condition list: a list keyed by `type`, so server-side
/// apply merges conditions one by one.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            Condition::new(READY, ConditionStatus::False, Some(1), "Creating", "", at(10)),
        );
        set_condition(
            &mut cs,
            Condition::new(READY, ConditionStatus::False, Some(2), "Waiting", "x", at(20)),
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, Time(at(10)));
        assert_eq!(cs[0].reason, "Waiting");
        assert_eq!(cs[0].observed_generation, Some(2));
        set_condition(&mut cs, Condition::new(READY, ConditionStatus::True, Some(2), "Created", "", at(30)));
        assert_eq!(cs[0].last_transition_time, Time(at(30)));
        set_condition(&mut cs, Condition::new(STALLED, ConditionStatus::False, Some(2), "None", "", at(30)));
        assert_eq!(cs.len(), 2);
        assert!(find_condition(&cs, READY).is_some_and(Condition::is_true));
        assert!(!find_condition(&cs, STALLED).is_some_and(Condition::is_true));
    }

    #[test]
    fn serializes_like_metav1_condition() {
        let c = Condition::new(READY, ConditionStatus::True, Some(3), "Created", "ok", at(0));
        let v = serde_json::to_value(&c).expect("serialize");
        assert_eq!(
            v,
            serde_json::json!({
                "type": "Ready",
                "status": "True",
                "observedGeneration": 3,
                "lastTransitionTime": "1970-01-01T00:00:00Z",
                "reason": "Created",
                "message": "ok",
            })
        );
    }
}
