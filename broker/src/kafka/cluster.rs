//! DescribeCluster (KIP-919's admin view of the cluster): the cluster id,
//! the controller, and every broker with a Kafka listener, from the
//! quorum's metadata, as Metadata shows them.

use std::sync::Arc;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{errors, metadata::host_port, text};
use crate::BrokerState;

/// `endpoint_type` 1: brokers (2 would be controllers, which are not
/// separate processes here).
const BROKERS: i8 = 1;

pub fn describe_cluster(state: &Arc<BrokerState>, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let md = state.cluster.metadata();
    let mut resp = DescribeClusterResponse::default();
    resp.endpoint_type = BROKERS;
    if req.endpoint_type != 0 && req.endpoint_type != BROKERS {
        resp.error_code = errors::UNSUPPORTED_ENDPOINT_TYPE;
        resp.error_message = Some(text("only broker endpoints (1) are served"));
        return resp;
    }
    resp.cluster_id = text(md.cluster_id.clone());
    resp.controller_id = BrokerId(state.cluster.controller_id().unwrap_or(-1));
    resp.brokers = md
        .brokers
        .values()
        .filter(|b| !b.fenced || req.include_fenced_brokers)
        .filter_map(|b| {
            let (host, port) = host_port(&b.kafka_address)?;
            let mut out = DescribeClusterBroker::default();
            out.broker_id = BrokerId(b.id);
            out.host = text(host);
            out.port = port;
            out.rack = (!b.rack.is_empty()).then(|| text(b.rack.clone()));
            out.is_fenced = b.fenced;
            Some(out)
        })
        .collect();
    // Authorized operations are not known until security lands.
    resp.cluster_authorized_operations = i32::MIN;
    resp
}
