//! The `Mirror` service: mirror links of this (the destination) cluster.
//! Changes are decided on the controller (other brokers forward, then wait
//! until their own metadata shows the change); status is gathered from
//! every live broker, since each runs the tasks of the partitions it leads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tributary_proto::v1::mirror_client::MirrorClient;
use tributary_proto::v1::{self, mirror_server::Mirror};

use crate::cluster::state::{Command, MetadataState, MirrorCheckpoint, Outcome};
use crate::error::Error;
use crate::mirror::{check_not_this_cluster, check_spec, spec_of};
use crate::BrokerState;

/// How long a broker waits for another's task status.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(3);

pub struct MirrorService {
    state: Arc<BrokerState>,
}

impl MirrorService {
    pub fn new(state: Arc<BrokerState>) -> Self {
        MirrorService { state }
    }

    fn controller(&self) -> Result<Option<MirrorClient<tonic::transport::Channel>>, Error> {
        Ok(self.state.cluster.controller_channel()?.map(MirrorClient::new))
    }

    fn link(&self, md: &MetadataState, name: &str) -> Result<v1::MirrorLinkSpec, Error> {
        md.mirror_links.get(name).map(spec_of).ok_or_else(|| Error::UnknownMirrorLink(name.to_string()))
    }

    /// After a forwarded change: until this broker's metadata satisfies
    /// `done` (briefly), so the caller's next call here sees it.
    async fn wait_visible(&self, done: impl Fn(&MetadataState) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut rx = self.state.cluster.subscribe();
        loop {
            if done(&rx.borrow_and_update()) {
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return;
            }
        }
    }

    async fn create_here(&self, req: v1::CreateMirrorLinkRequest) -> Result<v1::MirrorLinkResponse, Error> {
        let spec = req.link.ok_or_else(|| Error::InvalidRequest("no link given".into()))?;
        let mut record = check_spec(&spec)?;
        let md = self.state.cluster.metadata();
        if !req.update && md.mirror_links.contains_key(&record.name) {
            return Err(Error::MirrorLinkExists(record.name));
        }
        // Decided here, before the proposal, so every broker applies the
        // same value; an update keeps the link's first creation time.
        record.created_ms = match md.mirror_links.get(&record.name) {
            Some(existing) => existing.created_ms,
            None => crate::now_ms(),
        };
        check_not_this_cluster(&self.state, &record).await?;
        if !req.validate_only {
            let cmd = Command::PutMirrorLink { link: record.clone(), replace: req.update };
            match self.state.cluster.propose(cmd).await? {
                Outcome::Refused(why) if why.contains("already exists") => {
                    return Err(Error::MirrorLinkExists(record.name))
                }
                Outcome::Refused(why) => return Err(Error::InvalidRequest(why)),
                _ => {}
            }
        }
        Ok(v1::MirrorLinkResponse { link: Some(spec_of(&record)) })
    }

    async fn pause_here(&self, name: String, paused: bool) -> Result<v1::MirrorLinkResponse, Error> {
        self.link(&self.state.cluster.metadata(), &name)?;
        match self.state.cluster.propose(Command::SetMirrorLinkPaused { name: name.clone(), paused }).await? {
            Outcome::Refused(_) => Err(Error::UnknownMirrorLink(name)),
            _ => Ok(v1::MirrorLinkResponse { link: Some(self.link(&self.state.cluster.metadata(), &name)?) }),
        }
    }

    async fn delete_here(&self, name: String) -> Result<v1::MirrorLinkResponse, Error> {
        let link = self.link(&self.state.cluster.metadata(), &name)?;
        match self.state.cluster.propose(Command::DeleteMirrorLink { name: name.clone() }).await? {
            Outcome::Refused(_) => Err(Error::UnknownMirrorLink(name)),
            _ => Ok(v1::MirrorLinkResponse { link: Some(link) }),
        }
    }

    async fn pause_or_resume(&self, name: String, paused: bool) -> Result<v1::MirrorLinkResponse, Error> {
        match self.controller()? {
            Some(mut c) => {
                let req = v1::MirrorLinkName { name: name.clone() };
                let r = if paused { c.pause_mirror_link(req).await } else { c.resume_mirror_link(req).await };
                let r = r.map(|r| r.into_inner()).map_err(Error::Forwarded)?;
                self.wait_visible(|md| md.mirror_links.get(&name).is_some_and(|l| l.paused == paused)).await;
                Ok(r)
            }
            None => self.pause_here(name, paused).await,
        }
    }

    /// Every live broker's tasks of the link, merged.
    async fn describe(
        &self,
        req: v1::DescribeMirrorLinkRequest,
    ) -> Result<v1::DescribeMirrorLinkResponse, Error> {
        let md = self.state.cluster.metadata();
        let record = md
            .mirror_links
            .get(&req.name)
            .cloned()
            .ok_or_else(|| Error::UnknownMirrorLink(req.name.clone()))?;
        let mut out = self.state.mirror.local_status(&self.state, &record);
        if req.local_only {
            return Ok(out);
        }
        let me = self.state.cluster.node_id();
        let asks = md.live_brokers().filter(|b| b.id != me).filter_map(|b| {
            let address = self.state.cluster.peer_address(b.id).unwrap_or_else(|| b.address.clone());
            let channel = crate::cluster::network::peer_channel(&address)?;
            let req = v1::DescribeMirrorLinkRequest { name: req.name.clone(), local_only: true };
            Some(async move {
                let mut c = MirrorClient::new(channel);
                tokio::time::timeout(PEER_STATUS_TIMEOUT, c.describe_mirror_link(req)).await
            })
        });
        for answer in futures::future::join_all(asks).await {
            let Ok(Ok(theirs)) = answer else { continue };
            let theirs = theirs.into_inner();
            out.partitions.extend(theirs.partitions);
            if out.source_cluster_id.is_empty() {
                out.source_cluster_id = theirs.source_cluster_id;
            }
            if out.error.is_empty() {
                out.error = theirs.error;
            }
            for t in theirs.topics {
                if !out.topics.iter().any(|o| o.source_topic == t.source_topic) {
                    out.topics.push(t);
                }
            }
        }
        // A task that just lost its leadership may still be listed next to
        // its successor: the copying one comes first and stays.
        out.partitions.sort_by(|a, b| {
            (&a.source_topic, a.partition, a.state != "Copying").cmp(&(
                &b.source_topic,
                b.partition,
                b.state != "Copying",
            ))
        });
        out.partitions.dedup_by(|a, b| a.source_topic == b.source_topic && a.partition == b.partition);
        out.topics.sort_by(|a, b| a.source_topic.cmp(&b.source_topic));
        out.total_lag = out.partitions.iter().map(|p| p.lag).sum();
        out.records_per_sec = out.partitions.iter().map(|p| p.records_per_sec).sum();
        Ok(out)
    }
}

/// Sends mirror tasks' checkpoints to the controller (or, on it, proposes
/// them).
pub async fn record_checkpoints(
    state: &BrokerState,
    checkpoints: Vec<v1::MirrorCheckpoint>,
) -> Result<(), Error> {
    match state.cluster.controller_channel()? {
        Some(channel) => {
            let mut req = Request::new(v1::MirrorCheckpointsRequest { checkpoints });
            req.set_timeout(Duration::from_secs(5));
            MirrorClient::new(channel).record_mirror_checkpoints(req).await.map_err(Error::Forwarded)?;
            Ok(())
        }
        None => {
            let checkpoints = checkpoints
                .into_iter()
                .map(|c| {
                    let checkpoint = MirrorCheckpoint {
                        source_offset: c.source_offset,
                        topic_tag: c.source_topic_tag,
                        destination_offset: c.destination_offset,
                    };
                    (c.destination_topic, c.partition, c.source_cluster_id, checkpoint)
                })
                .collect();
            state.cluster.propose(Command::RecordMirrorCheckpoints { checkpoints }).await?;
            Ok(())
        }
    }
}

#[tonic::async_trait]
impl Mirror for MirrorService {
    async fn record_mirror_checkpoints(
        &self,
        request: Request<v1::MirrorCheckpointsRequest>,
    ) -> Result<Response<v1::MirrorCheckpointsResponse>, Status> {
        let start = Instant::now();
        let r = record_checkpoints(&self.state, request.into_inner().checkpoints)
            .await
            .map(|_| v1::MirrorCheckpointsResponse {});
        super::respond(&self.state, "record_mirror_checkpoints", start, r)
    }

    async fn create_mirror_link(
        &self,
        request: Request<v1::CreateMirrorLinkRequest>,
    ) -> Result<Response<v1::MirrorLinkResponse>, Status> {
        let start = Instant::now();
        let req = request.into_inner();
        // Bad input fails here, on whichever broker took the call.
        let checked = req
            .link
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("no link given".into()))
            .and_then(check_spec);
        let r = match (checked, self.controller()) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(record), Ok(Some(mut c))) => match c.create_mirror_link(req.clone()).await {
                Ok(r) => {
                    if !req.validate_only {
                        self.wait_visible(|md| md.mirror_links.get(&record.name) == Some(&record)).await;
                    }
                    Ok(r.into_inner())
                }
                Err(s) => Err(Error::Forwarded(s)),
            },
            (Ok(_), Ok(None)) => self.create_here(req).await,
        };
        super::respond(&self.state, "create_mirror_link", start, r)
    }

    async fn list_mirror_links(
        &self,
        _request: Request<v1::ListMirrorLinksRequest>,
    ) -> Result<Response<v1::ListMirrorLinksResponse>, Status> {
        let start = Instant::now();
        let links = self.state.cluster.metadata().mirror_links.values().map(spec_of).collect();
        super::respond(&self.state, "list_mirror_links", start, Ok(v1::ListMirrorLinksResponse { links }))
    }

    async fn describe_mirror_link(
        &self,
        request: Request<v1::DescribeMirrorLinkRequest>,
    ) -> Result<Response<v1::DescribeMirrorLinkResponse>, Status> {
        let start = Instant::now();
        let r = self.describe(request.into_inner()).await;
        super::respond(&self.state, "describe_mirror_link", start, r)
    }

    async fn pause_mirror_link(
        &self,
        request: Request<v1::MirrorLinkName>,
    ) -> Result<Response<v1::MirrorLinkResponse>, Status> {
        let start = Instant::now();
        let r = self.pause_or_resume(request.into_inner().name, true).await;
        super::respond(&self.state, "pause_mirror_link", start, r)
    }

    async fn resume_mirror_link(
        &self,
        request: Request<v1::MirrorLinkName>,
    ) -> Result<Response<v1::MirrorLinkResponse>, Status> {
        let start = Instant::now();
        let r = self.pause_or_resume(request.into_inner().name, false).await;
        super::respond(&self.state, "resume_mirror_link", start, r)
    }

    async fn delete_mirror_link(
        &self,
        request: Request<v1::MirrorLinkName>,
    ) -> Result<Response<v1::MirrorLinkResponse>, Status> {
        let start = Instant::now();
        let name = request.into_inner().name;
        let r = match self.controller() {
            Ok(Some(mut c)) => match c.delete_mirror_link(v1::MirrorLinkName { name: name.clone() }).await {
                Ok(r) => {
                    self.wait_visible(|md| !md.mirror_links.contains_key(&name)).await;
                    Ok(r.into_inner())
                }
                Err(s) => Err(Error::Forwarded(s)),
            },
            Ok(None) => self.delete_here(name).await,
            Err(e) => Err(e),
        };
        super::respond(&self.state, "delete_mirror_link", start, r)
    }
}
