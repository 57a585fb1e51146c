//! CreateTopics, DeleteTopics and CreatePartitions through `server::admin`'s routed calls:
//! decided by the controller (forwarded to it when this broker is not it),
//! with the same validation, placement and internal-topic rules as
//! `tributary topic create/delete`. Each topic is its own call, so Kafka's
//! per-topic errors come out right. (Configs are in [`super::configs`].)

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use tributary_proto::v1;

use super::{errors, text, topic_id};
use crate::server::admin::AdminService;
use crate::BrokerState;

/// Kafka's `num.partitions` default, for `num_partitions = -1`.
const DEFAULT_PARTITIONS: u32 = 1;

pub async fn create(
    state: &Arc<BrokerState>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let svc = AdminService::new(state.clone());
    let mut resp = CreateTopicsResponse::default();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        let fail = |r: &mut CreatableTopicResult, code: i16, message: String| {
            r.error_code = code;
            r.error_message = Some(text(message));
        };
        if !t.assignments.is_empty() {
            fail(
                &mut r,
                errors::INVALID_REPLICA_ASSIGNMENT,
                "manual replica assignments are not supported: give num_partitions and replication_factor"
                    .into(),
            );
            resp.topics.push(r);
            continue;
        }
        let partitions = match t.num_partitions {
            -1 => DEFAULT_PARTITIONS,
            n if n > 0 => n as u32,
            n => {
                fail(
                    &mut r,
                    errors::INVALID_PARTITIONS,
                    format!("num_partitions must be positive or -1, not {n}"),
                );
                resp.topics.push(r);
                continue;
            }
        };
        let replication_factor = match t.replication_factor {
            -1 => 0, // the broker's default_replication_factor
            n if n > 0 => n as u32,
            n => {
                fail(
                    &mut r,
                    errors::INVALID_REPLICATION_FACTOR,
                    format!("replication_factor must be positive or -1, not {n}"),
                );
                resp.topics.push(r);
                continue;
            }
        };
        let configs =
            t.configs.into_iter().filter_map(|c| Some((c.name.to_string(), c.value?.to_string()))).collect();
        let spec = v1::TopicSpec { name: name.clone(), partitions, replication_factor, configs };
        let asked = v1::CreateTopicsRequest { topics: vec![spec], validate_only: req.validate_only };
        match svc.create_topics_routed(asked).await {
            Ok(_) => {
                r.num_partitions = partitions as i32;
                if let Some(meta) = state.cluster.metadata().topic(&name) {
                    r.replication_factor = meta.replication_factor() as i16;
                    if version >= 7 {
                        r.topic_id = topic_id(&meta.id);
                    }
                }
            }
            Err(e) => fail(&mut r, errors::code(&e), e.to_string()),
        }
        resp.topics.push(r);
    }
    resp
}

pub async fn delete(
    state: &Arc<BrokerState>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let svc = AdminService::new(state.clone());
    // v6 names topics by name or id; earlier versions by name.
    let asked: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics.into_iter().map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)).collect()
    } else {
        req.topic_names.into_iter().map(|n| (Some(n.0.to_string()), uuid::Uuid::nil())).collect()
    };
    let mut resp = DeleteTopicsResponse::default();
    for (name, id) in asked {
        let mut r = DeletableTopicResult::default();
        let md = state.cluster.metadata();
        let name =
            name.or_else(|| md.topics.values().find(|t| topic_id(&t.id) == id).map(|t| t.name.clone()));
        let Some(name) = name else {
            r.topic_id = id;
            r.error_code = errors::UNKNOWN_TOPIC_ID;
            r.error_message = Some(text(format!("no topic has id {id}")));
            resp.responses.push(r);
            continue;
        };
        r.name = Some(TopicName(text(name.clone())));
        if version >= 6 {
            r.topic_id = md.topic(&name).map(|t| topic_id(&t.id)).unwrap_or_default();
        }
        if let Err(e) = svc.delete_topics_routed(v1::DeleteTopicsRequest { names: vec![name] }).await {
            r.error_code = errors::code(&e);
            r.error_message = Some(text(e.to_string()));
        }
        resp.responses.push(r);
    }
    resp
}

/// Grows each topic to its asked count through the same routed call as
/// `tributary topic alter --partitions` (never shrinks; placement by the
/// controller). Manual assignments are refused.
pub async fn create_partitions(
    state: &Arc<BrokerState>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let svc = AdminService::new(state.clone());
    let mut resp = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let refuse = |r: &mut CreatePartitionsTopicResult, code: i16, message: String| {
            r.error_code = code;
            r.error_message = Some(text(message));
        };
        if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            refuse(
                &mut r,
                errors::INVALID_REPLICA_ASSIGNMENT,
                "manual replica assignments are not supported: give the count alone".into(),
            );
        } else if t.count <= 0 {
            refuse(&mut r, errors::INVALID_PARTITIONS, format!("count must be positive, not {}", t.count));
        } else {
            let asked = v1::CreatePartitionsRequest {
                name: t.name.0.to_string(),
                total_count: t.count as u32,
                validate_only: req.validate_only,
            };
            if let Err(e) = svc.create_partitions_routed(asked).await {
                refuse(&mut r, errors::code(&e), e.to_string());
            }
        }
        resp.results.push(r);
    }
    resp
}
