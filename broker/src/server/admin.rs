//! The `Admin` service: topic lifecycle, thin over [`crate::topics::Topics`].

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tributary_proto::v1::{self, admin_server::Admin};

use crate::error::Error;
use crate::topics::NewTopic;
use crate::{now_ms, BrokerState};

pub struct AdminService {
    state: Arc<BrokerState>,
}

impl AdminService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        AdminService { state }
    }

    fn finish<T>(
        &self,
        rpc: &'static str,
        start: Instant,
        r: Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        super::respond(&self.state, rpc, start, r)
    }

    fn describe(&self, names: &[String]) -> Result<v1::DescribeTopicsResponse, Error> {
        let node = self.state.config.node_id;
        let topics = if names.is_empty() {
            self.state.topics.list()
        } else {
            names.iter().map(|n| self.state.topics.get(n)).collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(topics.len());
        for t in topics {
            let partitions = t
                .partitions()
                .iter()
                .map(|p| {
                    p.with_log(|log| v1::PartitionDescription {
                        partition: p.id,
                        leader: node,
                        replicas: vec![node],
                        isr: vec![node],
                        log_start_offset: log.log_start_offset(),
                        high_watermark: log.high_watermark(),
                        size_bytes: log.size_bytes(),
                        segments: log.segment_count() as u32,
                        ..Default::default()
                    })
                })
                .collect();
            out.push(v1::TopicDescription {
                name: t.name.clone(),
                topic_id: t.id.clone(),
                replication_factor: t.replication_factor,
                configs: t.overrides().into_iter().collect(),
                effective_configs: t.config().to_map().into_iter().collect(),
                partitions,
            });
        }
        Ok(v1::DescribeTopicsResponse { topics: out })
    }

    fn forget_metrics(&self, names: &[String]) {
        for n in names {
            if let Ok(t) = self.state.topics.get(n) {
                for p in 0..t.partition_count() {
                    self.state.metrics.forget_partition(n, p);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[tracing::instrument(name = "create_topics", skip_all)]
    async fn create_topics(
        &self,
        request: Request<v1::CreateTopicsRequest>,
    ) -> Result<Response<v1::CreateTopicsResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let new = req
            .topics
            .into_iter()
            .map(|t| NewTopic {
                name: t.name,
                partitions: t.partitions,
                replication_factor: t.replication_factor,
                configs: t.configs.into_iter().collect(),
            })
            .collect();
        let r = self
            .state
            .topics
            .create(new, req.validate_only, now_ms())
            .map(|created| v1::CreateTopicsResponse { created });
        self.finish("create_topics", start, r)
    }

    #[tracing::instrument(name = "delete_topics", skip_all)]
    async fn delete_topics(
        &self,
        request: Request<v1::DeleteTopicsRequest>,
    ) -> Result<Response<v1::DeleteTopicsResponse>, Status> {
        let start = Instant::now();
        let names = request.into_inner().names;
        // Metrics are dropped first: afterwards the topic is gone.
        let exist = names.iter().all(|n| self.state.topics.get(n).is_ok());
        if exist {
            self.forget_metrics(&names);
        }
        let r = self.state.topics.delete(&names).map(|deleted| v1::DeleteTopicsResponse { deleted });
        self.finish("delete_topics", start, r)
    }

    #[tracing::instrument(name = "describe_topics", skip_all)]
    async fn describe_topics(
        &self,
        request: Request<v1::DescribeTopicsRequest>,
    ) -> Result<Response<v1::DescribeTopicsResponse>, Status> {
        let start = Instant::now();
        let r = self.describe(&request.into_inner().names);
        self.finish("describe_topics", start, r)
    }

    #[tracing::instrument(name = "alter_topic_configs", skip_all)]
    async fn alter_topic_configs(
        &self,
        request: Request<v1::AlterTopicConfigsRequest>,
    ) -> Result<Response<v1::AlterTopicConfigsResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = self
            .state
            .topics
            .alter_configs(&req.name, req.set.into_iter().collect(), &req.delete, req.validate_only)
            .map(|c| v1::AlterTopicConfigsResponse { configs: c.into_iter().collect() });
        self.finish("alter_topic_configs", start, r)
    }

    #[tracing::instrument(name = "create_partitions", skip_all)]
    async fn create_partitions(
        &self,
        request: Request<v1::CreatePartitionsRequest>,
    ) -> Result<Response<v1::CreatePartitionsResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        let r = self
            .state
            .topics
            .create_partitions(&req.name, req.total_count, req.validate_only, now_ms())
            .map(|partitions| v1::CreatePartitionsResponse { partitions });
        self.finish("create_partitions", start, r)
    }
}
