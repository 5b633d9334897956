//! The generated servers and clients talking gRPC over a real loopback TCP socket: a unary
//! KV service, the bidirectional Watch stream, the server-streaming Election Observe, and a
//! service from another protobuf package (v3lockpb).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;

use colony_etcdpb::etcdserverpb::k_v_client::KVClient;
use colony_etcdpb::etcdserverpb::k_v_server::{KV, KVServer};
use colony_etcdpb::etcdserverpb::watch_client::WatchClient;
use colony_etcdpb::etcdserverpb::watch_server::{Watch, WatchServer};
use colony_etcdpb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchRequest, WatchResponse, watch_request,
};
use colony_etcdpb::mvccpb::KeyValue;
use colony_etcdpb::v3electionpb::election_client::ElectionClient;
use colony_etcdpb::v3electionpb::election_server::{Election, ElectionServer};
use colony_etcdpb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use colony_etcdpb::v3lockpb::lock_client::LockClient;
use colony_etcdpb::v3lockpb::lock_server::{Lock, LockServer};
use colony_etcdpb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::codegen::tokio_stream::{self, Stream, StreamExt};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: 7,
        member_id: 8,
        revision,
        raft_term: 1,
    })
}

/// A toy store: every put bumps the revision.
#[derive(Default)]
struct Store {
    inner: Mutex<(i64, BTreeMap<Vec<u8>, KeyValue>)>,
}

#[tonic::async_trait]
impl KV for Store {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        let guard = self
            .inner
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let (rev, map) = &*guard;
        let kvs: Vec<KeyValue> = map.get(&req.key).cloned().into_iter().collect();
        let count = kvs.len() as i64;
        Ok(Response::new(RangeResponse {
            header: header(*rev),
            kvs,
            more: false,
            count,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        let mut guard = self
            .inner
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let (rev, map) = &mut *guard;
        *rev += 1;
        let prev = map.get(&req.key).cloned();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(*rev, |p| p.create_revision),
            mod_revision: *rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: req.value,
            lease: req.lease,
        };
        map.insert(req.key, kv);
        let prev_kv = if req.prev_kv { prev } else { None };
        Ok(Response::new(PutResponse {
            header: header(*rev),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        _: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Err(Status::unimplemented("delete_range"))
    }

    async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Err(Status::unimplemented("txn"))
    }

    async fn compact(
        &self,
        _: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Err(Status::unimplemented("compact"))
    }
}

/// Answers each create request with a `created` response carrying the requested watch ID.
struct Watcher;

#[tonic::async_trait]
impl Watch for Watcher {
    type WatchStream = BoxStream<WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let out = request.into_inner().map(|msg| {
            let msg = msg?;
            match msg.request_union {
                Some(watch_request::RequestUnion::CreateRequest(create)) => Ok(WatchResponse {
                    header: header(1),
                    watch_id: create.watch_id,
                    created: true,
                    ..Default::default()
                }),
                _ => Err(Status::invalid_argument("only create requests here")),
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Observe streams three proclamations; the unary methods are not used.
struct Elections;

#[tonic::async_trait]
impl Election for Elections {
    type ObserveStream = BoxStream<LeaderResponse>;

    async fn campaign(
        &self,
        _: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        Err(Status::unimplemented("campaign"))
    }

    async fn proclaim(
        &self,
        _: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        Err(Status::unimplemented("proclaim"))
    }

    async fn leader(&self, _: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        Err(Status::unimplemented("leader"))
    }

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let items = (1..=3).map(move |rev| {
            Ok(LeaderResponse {
                header: header(rev),
                kv: Some(KeyValue {
                    key: name.clone(),
                    value: vec![b'0' + rev as u8],
                    ..Default::default()
                }),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn resign(&self, _: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        Err(Status::unimplemented("resign"))
    }
}

/// Hands out `<name>/<lease>` as the ownership key.
struct Locks;

#[tonic::async_trait]
impl Lock for Locks {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = request.into_inner();
        let mut key = req.name;
        key.extend_from_slice(format!("/{:x}", req.lease).as_bytes());
        Ok(Response::new(LockResponse {
            header: header(1),
            key,
        }))
    }

    async fn unlock(&self, _: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        Ok(Response::new(UnlockResponse { header: header(2) }))
    }
}

/// Serves every test service on 127.0.0.1:0 and returns a channel to it.
async fn serve() -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let router = Server::builder()
        .add_service(KVServer::new(Store::default()))
        .add_service(WatchServer::new(Watcher))
        .add_service(ElectionServer::new(Elections))
        .add_service(LockServer::new(Locks));
    tokio::spawn(async move { router.serve_with_incoming(incoming).await.expect("serve") });
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_put_and_range_over_tcp() {
    let mut kv = KVClient::new(serve().await);

    let put = PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        lease: 5,
        ..Default::default()
    };
    let first = kv.put(put).await.expect("put").into_inner();
    assert_eq!(first.header, header(1));
    assert_eq!(first.prev_kv, None);

    let again = PutRequest {
        key: b"a".to_vec(),
        value: b"2".to_vec(),
        prev_kv: true,
        ..Default::default()
    };
    let second = kv.put(again).await.expect("put").into_inner();
    assert_eq!(second.header.map(|h| h.revision), Some(2));
    assert_eq!(second.prev_kv.map(|kv| kv.value), Some(b"1".to_vec()));

    let got = kv
        .range(RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range");
    let got = got.into_inner();
    assert_eq!(got.count, 1);
    assert_eq!(
        got.kvs,
        vec![KeyValue {
            key: b"a".to_vec(),
            create_revision: 1,
            mod_revision: 2,
            version: 2,
            value: b"2".to_vec(),
            lease: 0,
        }]
    );

    let status = kv
        .txn(TxnRequest::default())
        .await
        .expect_err("txn is not implemented");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_bidirectional() {
    let mut watch = WatchClient::new(serve().await);
    let creates = (1..=3).map(|id| WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                watch_id: id,
                ..Default::default()
            },
        )),
    });
    let mut responses = watch
        .watch(tokio_stream::iter(creates))
        .await
        .expect("watch")
        .into_inner();
    for id in 1..=3 {
        let resp = responses
            .message()
            .await
            .expect("message")
            .expect("a response");
        assert!(resp.created);
        assert_eq!(resp.watch_id, id);
    }
    assert_eq!(responses.message().await.expect("end"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_observe_streams_and_lock_answers() {
    let channel = serve().await;

    let mut election = ElectionClient::new(channel.clone());
    let mut observed = election
        .observe(LeaderRequest {
            name: b"e".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();
    let mut values = Vec::new();
    while let Some(resp) = observed.message().await.expect("message") {
        values.push(resp.kv.expect("kv").value);
    }
    assert_eq!(values, vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);

    let mut lock = LockClient::new(channel);
    let held = lock
        .lock(LockRequest {
            name: b"l".to_vec(),
            lease: 0x2a,
        })
        .await
        .expect("lock");
    assert_eq!(held.into_inner().key, b"l/2a".to_vec());
    let released = lock
        .unlock(UnlockRequest {
            key: b"l/2a".to_vec(),
        })
        .await
        .expect("unlock");
    assert_eq!(released.into_inner().header, header(2));
}

#[test]
fn service_names_are_etcds() {
    use colony_etcdpb::etcdserverpb::{
        cluster_server, k_v_server, lease_server, maintenance_server, watch_server,
    };
    use colony_etcdpb::v3electionpb::election_server;
    use colony_etcdpb::v3lockpb::lock_server;
    assert_eq!(k_v_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(maintenance_server::SERVICE_NAME, "etcdserverpb.Maintenance");
    assert_eq!(lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(election_server::SERVICE_NAME, "v3electionpb.Election");
}
