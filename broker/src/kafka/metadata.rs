//! Metadata: the replicated state as Kafka clients need it — every live
//! broker's advertised Kafka address, and per partition the leader, its
//! epoch, the replicas and the ISR, straight from the metadata quorum's
//! committed state (what `tributary topic describe` shows).

use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};

use super::{errors, text, topic_id};
use crate::cluster::state::{MetadataState, NO_LEADER};
use crate::topics::is_internal;
use crate::BrokerState;

/// Splits `host:port` (IPv6 in brackets) as Kafka's broker list wants it.
pub fn host_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_string(), i32::from(port)))
}

pub fn metadata(state: &Arc<BrokerState>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let md = state.cluster.metadata();
    let mut resp = MetadataResponse::default();
    resp.brokers = brokers(&md);
    resp.cluster_id = Some(text(md.cluster_id.clone()));
    resp.controller_id = BrokerId(state.cluster.controller_id().unwrap_or(-1));
    // v0 asks for every topic with an empty list; later versions with null.
    let names: Vec<String> = match req.topics {
        None => md.topics.keys().cloned().collect(),
        Some(t) if t.is_empty() && version == 0 => md.topics.keys().cloned().collect(),
        Some(t) => t.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect(),
    };
    resp.topics = names.into_iter().map(|n| topic(&md, n)).collect();
    resp
}

/// Live brokers that have a Kafka listener.
fn brokers(md: &MetadataState) -> Vec<MetadataResponseBroker> {
    md.live_brokers()
        .filter_map(|b| {
            let (host, port) = host_port(&b.kafka_address)?;
            let mut out = MetadataResponseBroker::default();
            out.node_id = BrokerId(b.id);
            out.host = text(host);
            out.port = port;
            out.rack = (!b.rack.is_empty()).then(|| text(b.rack.clone()));
            Some(out)
        })
        .collect()
}

fn topic(md: &MetadataState, name: String) -> MetadataResponseTopic {
    let mut out = MetadataResponseTopic::default();
    out.name = Some(TopicName(text(name.clone())));
    out.is_internal = is_internal(&name);
    let Some(t) = md.topic(&name) else {
        // No auto-creation: a producer or consumer of a missing topic is
        // told so, as Kafka with auto.create.topics.enable=false does.
        out.error_code = errors::UNKNOWN_TOPIC_OR_PARTITION;
        return out;
    };
    out.topic_id = topic_id(&t.id);
    let live = |id: &i32| md.brokers.get(id).is_some_and(|b| !b.fenced);
    out.partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut part = MetadataResponsePartition::default();
            part.partition_index = i as i32;
            part.leader_id = BrokerId(p.leader);
            part.leader_epoch = p.leader_epoch;
            part.error_code = if p.leader == NO_LEADER { errors::LEADER_NOT_AVAILABLE } else { errors::NONE };
            part.replica_nodes = p.replicas.iter().map(|r| BrokerId(*r)).collect();
            part.isr_nodes = p.isr.iter().map(|r| BrokerId(*r)).collect();
            part.offline_replicas = p.replicas.iter().filter(|r| !live(r)).map(|r| BrokerId(*r)).collect();
            part
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(host_port("127.0.0.1:9092"), Some(("127.0.0.1".into(), 9092)));
        assert_eq!(host_port("[::1]:9093"), Some(("::1".into(), 9093)));
        assert_eq!(host_port("broker-0.svc:19092"), Some(("broker-0.svc".into(), 19092)));
        assert_eq!(host_port(""), None);
        assert_eq!(host_port("host:notaport"), None);
    }
}
