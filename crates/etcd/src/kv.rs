//! The `etcdserverpb.KV` service: ranges, puts, range deletes, transactions and compaction,
//! each one store operation. Writes are one log entry each (made durable before the answer);
//! reads and read-only transactions are answered from the applied state.

use crate::context::{
    EtcdContext, REQUEST_BYTES_MAX, agent_error, etcd_error, range_error, rejection, write_error,
};
use crate::convert::{
    delete_op, is_read_only, kv_txn, put_op, range_query, range_response, txn_response,
};
use colony_base::Freshness;
use colony_etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, k_v_server::KV, response_op,
};
use colony_runtime::{ReadConsistency, WriteError};
use colony_store::{Command, KvOp, KvTxn, KvTxnResult, Outcome};
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// The KV service.
pub struct KvService {
    ctx: Arc<EtcdContext>,
}

impl KvService {
    /// A KV service over `ctx`'s store.
    pub fn new(ctx: Arc<EtcdContext>) -> Self {
        KvService { ctx }
    }
}

/// etcd's refusal of a request over `--max-request-bytes`.
pub(crate) fn check_size<M: prost::Message>(message: &M) -> Result<(), Status> {
    if message.encoded_len() > REQUEST_BYTES_MAX {
        return Err(etcd_error(Code::InvalidArgument, "request is too large"));
    }
    Ok(())
}

/// Proposes `txn` and returns its result and revision.
pub(crate) async fn write_txn(ctx: &EtcdContext, txn: KvTxn) -> Result<(KvTxnResult, u64), Status> {
    let applied = ctx
        .agent
        .propose(Command::KvTxn(txn))
        .await
        .map_err(|e| write_error(&e))?;
    match applied.outcome {
        Outcome::KvTxn(result) => Ok((result, applied.index)),
        Outcome::Rejected(r) => Err(rejection(r.kind, &r.message)),
        other => Err(Status::internal(format!(
            "unexpected outcome for a KV transaction: {other:?}"
        ))),
    }
}

fn write_evidence(ctx: &EtcdContext, revision: u64, what: &str) -> colony_base::Evidence {
    ctx.evidence(
        revision,
        format!("{what}@revision={revision}"),
        Freshness::Fresh,
    )
}

/// Evidence for a read at `asked` (0: now) answered at `current`: a read of a past revision
/// is a historical fact; a serializable read is not confirmed with the leader (a single server
/// is its own leader, so its age is zero); a linearizable read is fresh.
pub(crate) fn read_freshness(asked: u64, current: u64, serializable: bool) -> Freshness {
    if asked != 0 && asked < current {
        Freshness::Historical
    } else if serializable {
        Freshness::BoundedStale {
            age_ms: 0,
            bound_ms: 0,
        }
    } else {
        Freshness::Fresh
    }
}

/// Makes a linearizable read linearizable on a replicated server: a ReadIndex round through
/// the leader (as etcd does for every linearizable read), then waiting to apply it. A no-op
/// on a single server.
async fn linearizable_barrier(ctx: &EtcdContext) -> Result<(), Status> {
    ctx.agent
        .prepare_read(ReadConsistency::Consistent)
        .await
        .map(|_| ())
        .map_err(|error| crate::context::write_error(&WriteError::Cluster(error)))
}

#[tonic::async_trait]
impl KV for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let request = request.into_inner();
        let query = range_query(&request)?;
        if !request.serializable {
            linearizable_barrier(&self.ctx).await?;
        }
        let (result, current) = self
            .ctx
            .agent
            .read(|s| (s.kv_range(&query), s.applied_index()));
        let result = result.map_err(|e| range_error(&e))?;
        let evidence = self.ctx.evidence(
            current,
            format!(
                "range@revision={}",
                if query.revision == 0 {
                    current
                } else {
                    query.revision
                }
            ),
            read_freshness(query.revision, current, request.serializable),
        );
        Ok(self
            .ctx
            .respond(range_response(result, self.ctx.header(current)), &evidence))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        let op = put_op(request)?;
        let (result, revision) = write_txn(&self.ctx, KvTxn::single(KvOp::Put(op))).await?;
        let mut response = txn_response(result, self.ctx.header(revision));
        let Some(response_op::Response::ResponsePut(put)) =
            response.responses.pop().and_then(|r| r.response)
        else {
            return Err(Status::internal("a put produced no put result"));
        };
        Ok(self
            .ctx
            .respond(put, &write_evidence(&self.ctx, revision, "put")))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        let op = delete_op(request)?;
        let (result, revision) = write_txn(&self.ctx, KvTxn::single(KvOp::Delete(op))).await?;
        let mut response = txn_response(result, self.ctx.header(revision));
        let Some(response_op::Response::ResponseDeleteRange(delete)) =
            response.responses.pop().and_then(|r| r.response)
        else {
            return Err(Status::internal("a delete produced no delete result"));
        };
        Ok(self
            .ctx
            .respond(delete, &write_evidence(&self.ctx, revision, "delete")))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let request = request.into_inner();
        check_size(&request)?;
        let txn = kv_txn(request)?;
        if is_read_only(&txn) {
            linearizable_barrier(&self.ctx).await?;
            let (result, current) = self
                .ctx
                .agent
                .read(|s| (s.kv_txn_read(&txn), s.applied_index()));
            let result = result.map_err(|e| range_error(&e))?;
            let evidence =
                self.ctx
                    .evidence(current, format!("txn@revision={current}"), Freshness::Fresh);
            return Ok(self
                .ctx
                .respond(txn_response(result, self.ctx.header(current)), &evidence));
        }
        let (result, revision) = write_txn(&self.ctx, txn).await?;
        Ok(self.ctx.respond(
            txn_response(result, self.ctx.header(revision)),
            &write_evidence(&self.ctx, revision, "txn"),
        ))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let revision = request.into_inner().revision.max(0) as u64;
        let applied = self
            .ctx
            .agent
            .propose(Command::KvCompact { revision })
            .await
            .map_err(|e| write_error(&e))?;
        colony_runtime::outcome_to_result(applied.outcome).map_err(|e| agent_error(&e))?;
        Ok(self.ctx.respond(
            CompactionResponse {
                header: self.ctx.header(applied.index),
            },
            &write_evidence(&self.ctx, applied.index, "compact"),
        ))
    }
}
