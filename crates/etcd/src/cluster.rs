//! The `etcdserverpb.Maintenance` and `etcdserverpb.Cluster` services: status, alarms, hashes,
//! leader moves and the member list. A single server reports itself as the one member and the
//! leader; replicated servers list the Raft voters (member ID = Raft ID). Membership changes
//! are not made through the etcd dialect (servers join by gossip).

use crate::context::{API_VERSION, EtcdContext, range_error};
use colony_etcdpb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse, cluster_server::Cluster,
    maintenance_server::Maintenance,
};
use colony_modes::Mode;
use colony_store::{KeyRange, RangeQuery};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The Maintenance service.
pub struct MaintenanceService {
    ctx: Arc<EtcdContext>,
}

impl MaintenanceService {
    /// A Maintenance service over `ctx`'s store.
    pub fn new(ctx: Arc<EtcdContext>) -> Self {
        MaintenanceService { ctx }
    }
}

/// The Cluster service.
pub struct ClusterService {
    ctx: Arc<EtcdContext>,
}

impl ClusterService {
    /// A Cluster service over `ctx`'s store.
    pub fn new(ctx: Arc<EtcdContext>) -> Self {
        ClusterService { ctx }
    }
}

/// How long `MoveLeader` waits for the transferee to take over.
const MOVE_LEADER_TIMEOUT: Duration = Duration::from_secs(5);

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "colony: {what} is not offered through the etcd dialect"
    ))
}

/// Bytes the data dir holds (the log segments and snapshot), etcd's `dbSize`.
fn data_dir_bytes(ctx: &EtcdContext) -> i64 {
    let Ok(entries) = std::fs::read_dir(&ctx.agent.config().data_dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len() as i64)
        .sum()
}

/// FNV-1a over bytes, 32 bits: a stable digest for `Hash`/`HashKV`.
fn fnv32(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

impl MaintenanceService {
    fn alarms(&self) -> Vec<AlarmMember> {
        // A full disk puts storage in Floor mode, which is what etcd's NOSPACE alarm says.
        if self.ctx.agent.storage_mode().mode() == Mode::Floor {
            vec![AlarmMember {
                member_id: self.ctx.member_id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            Vec::new()
        }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn alarm(
        &self,
        _request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(AlarmResponse {
            header: self.ctx.current_header(),
            alarms: self.alarms(),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let applied = self.ctx.agent.read(|s| s.applied_index());
        let size = data_dir_bytes(&self.ctx);
        let errors = self
            .alarms()
            .iter()
            .map(|_| format!("storage: {}", self.ctx.agent.storage_mode().reason()))
            .collect();
        // A replicated server reports the Raft view (leader 0: none known); the single-node
        // log is its own leader in term 1.
        let (leader, raft_index, raft_term) = match self.ctx.agent.raft_status() {
            Some(raft) => (raft.leader.unwrap_or(0), raft.commit_index, raft.term),
            None => (self.ctx.member_id, applied, 1),
        };
        Ok(Response::new(StatusResponse {
            header: self.ctx.header(applied),
            version: API_VERSION.into(),
            db_size: size,
            leader,
            raft_index,
            raft_term,
            raft_applied_index: applied,
            errors,
            db_size_in_use: size,
            is_learner: false,
            ..StatusResponse::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // The log is compacted by snapshots; there is nothing to defragment.
        Ok(Response::new(DefragmentResponse {
            header: self.ctx.current_header(),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (hash, applied) = self
            .ctx
            .agent
            .read(|s| (fnv32(0x811c_9dc5, &s.to_snapshot()), s.applied_index()));
        Ok(Response::new(HashResponse {
            header: self.ctx.header(applied),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.into_inner().revision.max(0) as u64;
        let query = RangeQuery {
            range: KeyRange {
                start: vec![0],
                end: vec![0],
            },
            revision,
            ..RangeQuery::default()
        };
        let (result, applied, compacted) = self.ctx.agent.read(|s| {
            (
                s.kv_range(&query),
                s.applied_index(),
                s.history().compacted_revision(),
            )
        });
        let result = result.map_err(|e| range_error(&e))?;
        let hash = result.kvs.iter().fold(0x811c_9dc5, |h, kv| {
            let h = fnv32(h, kv.key.as_bytes());
            let h = fnv32(h, &kv.value);
            fnv32(h, &kv.modify_index.to_le_bytes())
        });
        Ok(Response::new(HashKvResponse {
            header: self.ctx.header(applied),
            hash,
            compact_revision: compacted as i64,
            hash_revision: if revision == 0 { applied } else { revision } as i64,
        }))
    }

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unsupported(
            "Snapshot (etcd's is a bbolt file; back up colony's data dir instead)",
        ))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        let bad_transferee = || Status::failed_precondition("etcdserver: bad leader transferee");
        let answer = || {
            Ok(Response::new(MoveLeaderResponse {
                header: self.ctx.current_header(),
            }))
        };
        let Some(status) = self.ctx.agent.raft_status() else {
            // A single server leads for good: only "move" to itself succeeds.
            return if target == self.ctx.member_id {
                answer()
            } else {
                Err(bad_transferee())
            };
        };
        if !status.is_leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !status.voters.contains(&target) {
            return Err(bad_transferee());
        }
        if target == status.id {
            return answer();
        }
        self.ctx
            .agent
            .transfer_leadership(target)
            .await
            .map_err(|error| Status::unavailable(format!("etcdserver: {error}")))?;
        // Like etcd, answer once the transferee leads (or give up after a while).
        let deadline = Instant::now() + MOVE_LEADER_TIMEOUT;
        while Instant::now() < deadline {
            if self
                .ctx
                .agent
                .raft_status()
                .is_some_and(|s| s.leader == Some(target))
            {
                return answer();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Status::unavailable(
            "etcdserver: request timed out, leader transfer took too long",
        ))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unsupported("Downgrade"))
    }
}

impl ClusterService {
    fn members(&self) -> Vec<Member> {
        let this = Member {
            id: self.ctx.member_id,
            name: self.ctx.agent.node_name().to_string(),
            peer_urls: Vec::new(),
            client_urls: vec![self.ctx.client_url.clone()],
            is_learner: false,
        };
        let Some(status) = self.ctx.agent.raft_status() else {
            return vec![this];
        };
        // The voters, named and located from what gossip says about each server.
        let known = self.ctx.agent.known_servers();
        status
            .voters
            .iter()
            .map(|&id| {
                if id == self.ctx.member_id {
                    return this.clone();
                }
                let info = known.iter().find(|(known_id, _)| *known_id == id);
                Member {
                    id,
                    name: info.map(|(_, i)| i.name.clone()).unwrap_or_default(),
                    peer_urls: Vec::new(),
                    client_urls: info
                        .and_then(|(_, i)| i.grpc_url.clone())
                        .into_iter()
                        .collect(),
                    is_learner: false,
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unsupported("MemberAdd (servers join by gossip)"))
    }

    async fn member_remove(
        &self,
        _request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unsupported("MemberRemove"))
    }

    async fn member_update(
        &self,
        _request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unsupported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.ctx.current_header(),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unsupported("MemberPromote"))
    }
}
