//! The `v3lockpb.Lock` and `v3electionpb.Election` services, server-side versions of etcd's
//! client recipes: a contender creates `NAME/LEASE-ID-IN-HEX` attached to its lease and holds
//! the lock (or leads) once no key under `NAME/` was created before its own. Waiting costs no
//! polling: the contender sleeps until the store changes something under the prefix. A lock
//! holder's key `create_revision` increases with every acquisition, so it serves as a fencing
//! token.

use crate::context::{EtcdContext, etcd_error};
use crate::convert::key_value;
use crate::kv::write_txn;
use colony_etcdpb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use colony_etcdpb::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use colony_runtime::Topic;
use colony_store::{
    Compare, CompareOp, CompareTarget, DeleteOp, Key, KeyRange, KvEntry, KvOp, KvTxn, PutOp,
    RangeQuery, SortOrder, SortTarget,
};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

/// The Lock service.
pub struct LockService {
    ctx: Arc<EtcdContext>,
}

impl LockService {
    /// A Lock service over `ctx`'s store.
    pub fn new(ctx: Arc<EtcdContext>) -> Self {
        LockService { ctx }
    }
}

/// The Election service.
pub struct ElectionService {
    ctx: Arc<EtcdContext>,
}

impl ElectionService {
    /// An Election service over `ctx`'s store.
    pub fn new(ctx: Arc<EtcdContext>) -> Self {
        ElectionService { ctx }
    }
}

fn prefix_of(name: &[u8]) -> Result<Vec<u8>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: lock or election name is empty",
        ));
    }
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Ok(prefix)
}

fn not_leader() -> Status {
    etcd_error(Code::FailedPrecondition, "election: not leader")
}

/// The oldest contender under `prefix` (the holder or leader), if any.
fn first_created(ctx: &EtcdContext, prefix: &[u8]) -> Option<KvEntry> {
    let query = RangeQuery {
        range: KeyRange::prefix(prefix),
        sort_target: SortTarget::Create,
        sort_order: SortOrder::Ascend,
        limit: 1,
        ..RangeQuery::default()
    };
    ctx.agent
        .read(|s| s.kv_range(&query))
        .ok()
        .and_then(|mut r| r.kvs.pop())
}

/// Deletes a contender's key if its wait is abandoned (the client went away), as etcd's
/// recipes release a key they could not use.
struct AbandonGuard {
    ctx: Arc<EtcdContext>,
    key: Option<Key>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                let delete = KvTxn::single(KvOp::Delete(DeleteOp {
                    range: KeyRange::key(key),
                    prev_kv: false,
                }));
                if let Err(error) = write_txn(&ctx, delete).await {
                    tracing::warn!(%error, "could not remove an abandoned lock contender");
                }
            });
        }
    }
}

/// Joins the queue under `prefix` with the key for `lease` (putting `value` if the key is new),
/// then waits until it is first. Returns the contender's entry and the revision it won at.
async fn contend(
    ctx: &Arc<EtcdContext>,
    prefix: &[u8],
    lease: i64,
    value: Vec<u8>,
) -> Result<(KvEntry, u64), Status> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    let key = Key::from(key);
    let join = KvTxn {
        compares: vec![Compare {
            range: KeyRange::key(key.to_vec()),
            op: CompareOp::Equal,
            target: CompareTarget::Create(0),
        }],
        success: vec![KvOp::Put(PutOp {
            key: key.clone(),
            value,
            lease,
            ..PutOp::default()
        })],
        failure: vec![],
    };
    let (result, _) = write_txn(ctx, join).await?;
    let mut guard = AbandonGuard {
        ctx: ctx.clone(),
        key: result.succeeded.then(|| key.clone()),
    };
    let mut changes = ctx.agent.subscribe(&Topic::Prefix(prefix.to_vec()));
    loop {
        changes.borrow_and_update();
        let (mine, older, revision) = ctx.agent.read(|s| {
            let mine = s.kv_get(&key).cloned();
            let older = mine.as_ref().is_some_and(|m| {
                s.kv_in_range(&KeyRange::prefix(prefix))
                    .any(|e| e.create_index < m.create_index)
            });
            (mine, older, s.applied_index())
        });
        let Some(mine) = mine else {
            guard.key = None;
            return Err(etcd_error(
                Code::FailedPrecondition,
                "session expired: the contender's lease ended while waiting",
            ));
        };
        if !older {
            guard.key = None;
            return Ok((mine, revision));
        }
        if changes.changed().await.is_err() {
            return Err(Status::unavailable("etcdserver: server stopped"));
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        let prefix = prefix_of(&request.name)?;
        let (mine, revision) = contend(&self.ctx, &prefix, request.lease, Vec::new()).await?;
        Ok(Response::new(LockResponse {
            header: self.ctx.header(revision),
            key: mine.key.into_bytes(),
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = request.into_inner().key;
        let delete = KvTxn::single(KvOp::Delete(DeleteOp {
            range: KeyRange::key(key),
            prev_kv: false,
        }));
        let (_, revision) = write_txn(&self.ctx, delete).await?;
        Ok(Response::new(UnlockResponse {
            header: self.ctx.header(revision),
        }))
    }
}

fn leader_key(request: Option<LeaderKey>) -> Result<(Key, LeaderKey), Status> {
    let leader = request.ok_or_else(|| Status::invalid_argument("etcdserver: no leader key"))?;
    Ok((Key::from(leader.key.clone()), leader))
}

fn still_leader(key: &[u8], rev: i64) -> Compare {
    Compare {
        range: KeyRange::key(key),
        op: CompareOp::Equal,
        target: CompareTarget::Create(rev.max(0) as u64),
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let request = request.into_inner();
        let prefix = prefix_of(&request.name)?;
        let (mut mine, mut revision) =
            contend(&self.ctx, &prefix, request.lease, request.value.clone()).await?;
        if mine.value != request.value {
            // A campaign resumed with a new value proclaims it, as etcd's does.
            let proclaim = KvTxn {
                compares: vec![still_leader(&mine.key, mine.create_index as i64)],
                success: vec![KvOp::Put(PutOp {
                    key: mine.key.clone(),
                    value: request.value.clone(),
                    lease: request.lease,
                    ..PutOp::default()
                })],
                failure: vec![],
            };
            let (result, at) = write_txn(&self.ctx, proclaim).await?;
            if !result.succeeded {
                return Err(not_leader());
            }
            mine.value = request.value.into();
            revision = at;
        }
        Ok(Response::new(CampaignResponse {
            header: self.ctx.header(revision),
            leader: Some(LeaderKey {
                name: request.name,
                key: mine.key.into_bytes(),
                rev: mine.create_index as i64,
                lease: request.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let request = request.into_inner();
        let (key, leader) = leader_key(request.leader)?;
        let proclaim = KvTxn {
            compares: vec![still_leader(&key, leader.rev)],
            success: vec![KvOp::Put(PutOp {
                key,
                value: request.value,
                lease: leader.lease,
                ..PutOp::default()
            })],
            failure: vec![],
        };
        let (result, revision) = write_txn(&self.ctx, proclaim).await?;
        if !result.succeeded {
            return Err(not_leader());
        }
        Ok(Response::new(ProclaimResponse {
            header: self.ctx.header(revision),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let prefix = prefix_of(&request.into_inner().name)?;
        let leader = first_created(&self.ctx, &prefix)
            .ok_or_else(|| etcd_error(Code::NotFound, "election: no leader"))?;
        Ok(Response::new(LeaderResponse {
            header: self.ctx.current_header(),
            kv: Some(key_value(&leader)),
        }))
    }

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let prefix = prefix_of(&request.into_inner().name)?;
        let (tx, rx) = mpsc::channel(16);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut changes = ctx.agent.subscribe(&Topic::Prefix(prefix.clone()));
            let mut last: Option<(Key, u64)> = None;
            loop {
                changes.borrow_and_update();
                if let Some(leader) = first_created(&ctx, &prefix) {
                    let seen = Some((leader.key.clone(), leader.modify_index));
                    if seen != last {
                        last = seen;
                        let response = LeaderResponse {
                            header: ctx.current_header(),
                            kv: Some(key_value(&leader)),
                        };
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let (key, leader) = leader_key(request.into_inner().leader)?;
        let resign = KvTxn {
            compares: vec![still_leader(&key, leader.rev)],
            success: vec![KvOp::Delete(DeleteOp {
                range: KeyRange::key(key.into_bytes()),
                prev_kv: false,
            })],
            failure: vec![],
        };
        let (_, revision) = write_txn(&self.ctx, resign).await?;
        Ok(Response::new(ResignResponse {
            header: self.ctx.header(revision),
        }))
    }
}
