//! The `etcdserverpb.Lease` service. An etcd lease is a colony session (one mechanism for both
//! dialects): granting one creates a session with that TTL and no health checks; keys put with
//! the lease are deleted when the session ends; keep-alives renew its TTL. Consul sessions
//! have lease IDs too, so they show up in `LeaseLeases`.

use crate::context::{EtcdContext, agent_error, etcd_error};
use colony_base::Freshness;
use colony_etcdpb::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use colony_store::{Session, SessionBehavior};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

/// The shortest lease granted, in seconds; shorter requests get this (as etcd raises TTLs to
/// its minimum).
pub const LEASE_TTL_MIN_S: i64 = 1;
/// The longest lease granted, in seconds (etcd's `MaxLeaseTTL`).
pub const LEASE_TTL_MAX_S: i64 = 9_000_000_000;

/// The Lease service.
pub struct LeaseService {
    ctx: Arc<EtcdContext>,
}

impl LeaseService {
    /// A Lease service over `ctx`'s store.
    pub fn new(ctx: Arc<EtcdContext>) -> Self {
        LeaseService { ctx }
    }
}

/// Renews lease `id`; its granted TTL in seconds, or `None` if there is no such lease.
///
/// # Errors
/// `Unavailable` when the renewal could not be made (no leader to renew with): the lease
/// may well live on, so this must not read as "no such lease" — clients take a TTL of 0 to
/// mean the lease is gone, and give up the locks and elections held with it.
pub(crate) async fn renew(ctx: &EtcdContext, id: i64) -> Result<Option<i64>, Status> {
    let Some(session_id) = ctx
        .agent
        .read(|s| s.lease_session(id).map(|session| session.id.clone()))
    else {
        return Ok(None);
    };
    let session = ctx
        .agent
        .renew_session(&session_id)
        .await
        .map_err(|error| Status::unavailable(format!("etcdserver: {error}")))?;
    Ok(session.map(|session| (session.ttl_ms / 1000) as i64))
}

/// Grants a lease of `ttl_s` seconds (ID `id`, or a fresh one if 0); returns the ID, the TTL
/// granted and the revision.
pub(crate) async fn grant(
    ctx: &EtcdContext,
    id: i64,
    ttl_s: i64,
) -> Result<(i64, i64, u64), Status> {
    if ttl_s > LEASE_TTL_MAX_S {
        return Err(etcd_error(Code::OutOfRange, "too large lease TTL"));
    }
    if id < 0 {
        return Err(Status::invalid_argument(
            "etcdserver: lease ID must be positive",
        ));
    }
    let ttl_s = ttl_s.max(LEASE_TTL_MIN_S);
    let lease_id = if id == 0 {
        ctx.agent.new_lease_id()
    } else {
        id
    };
    let session = Session {
        id: String::new(),
        name: format!("etcd-lease-{lease_id:x}"),
        node: ctx.agent.node_name().to_string(),
        node_checks: Vec::new(),
        service_checks: Vec::new(),
        behavior: SessionBehavior::Delete,
        ttl_ms: ttl_s as u64 * 1000,
        lock_delay_ms: 0,
        lease_id,
        create_index: 0,
        modify_index: 0,
    };
    ctx.agent
        .create_session(session)
        .await
        .map_err(|e| agent_error(&e))?;
    let revision = ctx.agent.read(|s| s.applied_index());
    Ok((lease_id, ttl_s, revision))
}

#[tonic::async_trait]
impl Lease for LeaseService {
    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        let (id, ttl, revision) = grant(&self.ctx, request.id, request.ttl).await?;
        let evidence = self.ctx.evidence(
            revision,
            format!("lease:{id:x}@revision={revision}"),
            Freshness::Fresh,
        );
        Ok(self.ctx.respond(
            LeaseGrantResponse {
                header: self.ctx.header(revision),
                id,
                ttl,
                error: String::new(),
            },
            &evidence,
        ))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let session = self
            .ctx
            .agent
            .read(|s| s.lease_session(id).map(|session| session.id.clone()))
            .ok_or_else(|| etcd_error(Code::NotFound, "requested lease not found"))?;
        self.ctx
            .agent
            .destroy_session(&session)
            .await
            .map_err(|e| agent_error(&e))?;
        Ok(Response::new(LeaseRevokeResponse {
            header: self.ctx.current_header(),
        }))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = inbound.message() => message,
                    () = tx.closed() => return,
                };
                let Ok(Some(request)) = message else { return };
                // An unknown (expired or revoked) lease is answered with TTL 0, as etcd does; a
                // renewal that could not be made ends the stream with its error, as etcd's
                // does (the client opens another and sends its keep-alives again).
                let ttl = match renew(&ctx, request.id).await {
                    Ok(ttl) => ttl.unwrap_or(0),
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let response = LeaseKeepAliveResponse {
                    header: ctx.current_header(),
                    id: request.id,
                    ttl,
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let found = self.ctx.agent.read(|s| {
            s.lease_session(request.id).map(|session| {
                let keys: Vec<Vec<u8>> = if request.keys {
                    s.lease_keys(request.id)
                        .map(|k| k.as_bytes().to_vec())
                        .collect()
                } else {
                    Vec::new()
                };
                (session.id.clone(), session.ttl_ms, keys, s.applied_index())
            })
        });
        let Some((session_id, ttl_ms, keys, revision)) = found else {
            // etcd answers an unknown lease with TTL -1 rather than an error.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.ctx.current_header(),
                id: request.id,
                ttl: -1,
                ..LeaseTimeToLiveResponse::default()
            }));
        };
        // The leader measures TTLs (keep-alives are renewed there): ask it.
        let remaining_ms = self
            .ctx
            .agent
            .session_remaining(&session_id)
            .await
            .map_err(|error| Status::unavailable(format!("etcdserver: {error}")))?
            .unwrap_or(ttl_ms);
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.ctx.header(revision),
            id: request.id,
            ttl: (remaining_ms / 1000) as i64,
            granted_ttl: (ttl_ms / 1000) as i64,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let (leases, revision) = self.ctx.agent.read(|s| {
            let leases: Vec<LeaseStatus> = s
                .sessions()
                .map(|session| LeaseStatus {
                    id: session.lease_id,
                })
                .collect();
            (leases, s.applied_index())
        });
        Ok(Response::new(LeaseLeasesResponse {
            header: self.ctx.header(revision),
            leases,
        }))
    }
}
