//! Colony's etcd dialect: the etcd v3 gRPC API served over colony's one store, so etcdctl and
//! etcd client libraries work unchanged.
//!
//! The etcd keyspace and Consul's `/v1/kv` are the same KV: an etcd revision is the store's
//! log index (Consul's `ModifyIndex`), an etcd lease is a colony session, and a key's
//! `version`, `create_revision` and `mod_revision` are kept for both dialects. Reads at older
//! revisions and watches that resume come from the store's bounded change history. Each
//! response carries its evidence in the `x-colony-evidence` metadata.
//!
//! Services: [`kv::KvService`], [`watch::WatchService`], [`lease::LeaseService`],
//! [`cluster::MaintenanceService`], [`cluster::ClusterService`], [`lock::LockService`],
//! [`lock::ElectionService`]. [`serve`] runs them all on one listener.
#![deny(missing_docs, unreachable_pub)]

pub mod authority;
pub mod cluster;
pub mod context;
pub mod convert;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod watch;

pub use context::EtcdContext;

use colony_etcdpb::etcdserverpb::{
    cluster_server::ClusterServer, k_v_server::KVServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use colony_etcdpb::v3electionpb::election_server::ElectionServer;
use colony_etcdpb::v3lockpb::lock_server::LockServer;
use context::GRPC_MESSAGE_BYTES_MAX;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Every etcd service over `ctx`, ready to serve.
pub fn routes(ctx: &Arc<EtcdContext>) -> tonic::service::Routes {
    let max = GRPC_MESSAGE_BYTES_MAX;
    tonic::service::Routes::new(
        KVServer::new(kv::KvService::new(ctx.clone())).max_decoding_message_size(max),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(ctx.clone())).max_decoding_message_size(max),
    )
    .add_service(LeaseServer::new(lease::LeaseService::new(ctx.clone())))
    .add_service(MaintenanceServer::new(cluster::MaintenanceService::new(
        ctx.clone(),
    )))
    .add_service(ClusterServer::new(cluster::ClusterService::new(
        ctx.clone(),
    )))
    .add_service(LockServer::new(lock::LockService::new(ctx.clone())))
    .add_service(ElectionServer::new(lock::ElectionService::new(ctx.clone())))
}

/// Serves the etcd API on `listener` until `shutdown` completes.
///
/// # Errors
/// The transport's error if serving fails.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<EtcdContext>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt;
    // Small request/response exchanges must not wait for Nagle's algorithm: the accepted
    // sockets get TCP_NODELAY (the builder's setting only covers listeners tonic binds).
    // Each connection's `:authority` is repaired for etcdctl 3.4's per-endpoint commands.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        stream.map(|s| {
            let _ = s.set_nodelay(true);
            authority::AuthorityRepair::new(s)
        })
    });
    tonic::transport::Server::builder()
        .add_routes(routes(&ctx))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
