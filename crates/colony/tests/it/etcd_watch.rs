//! Watch semantics on one stream, checked against colony and against a real etcd: several
//! watchers multiplexed, filters, `prev_kv`, cancel, progress requests, duplicate IDs.

use crate::etcdctl::RealEtcd;
use crate::support::{Agent, free_addr, grpc_channel};
use colony_etcdpb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, k_v_client::KVClient,
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
};
use colony_etcdpb::mvccpb::event::EventType;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Stream {
    /// Opens a stream with its first watcher. The first request goes out before the stream
    /// is awaited: etcd's server sends the response headers only with its first message.
    async fn open(channel: Channel, first: WatchCreateRequest) -> (Stream, i64) {
        let (requests, rx) = mpsc::channel(16);
        requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(first)),
            })
            .await
            .expect("queue the first watcher");
        let responses = WatchClient::new(channel)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("watch stream")
            .into_inner();
        let mut stream = Stream {
            requests,
            responses,
        };
        let created = stream.next().await;
        assert!(created.created, "{created:?}");
        (stream, created.watch_id)
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("send");
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within 10 s")
            .expect("stream healthy")
            .expect("stream open")
    }

    async fn create(&mut self, create: WatchCreateRequest) -> i64 {
        self.send(RequestUnion::CreateRequest(create)).await;
        let created = self.next().await;
        assert!(created.created, "{created:?}");
        created.watch_id
    }
}

fn watch(key: &str, start_revision: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_bytes().to_vec(),
        start_revision,
        ..WatchCreateRequest::default()
    }
}

async fn put(kv: &mut KVClient<Channel>, key: &str, value: &str) -> i64 {
    kv.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..PutRequest::default()
    })
    .await
    .expect("put")
    .into_inner()
    .header
    .expect("header")
    .revision
}

async fn watch_cases(endpoint: &str) {
    let channel = grpc_channel(endpoint).await;
    let mut kv = KVClient::new(channel.clone());
    let now = kv
        .range(RangeRequest {
            key: b"x".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision;
    let (mut stream, a) = Stream::open(channel, watch("wa", now + 1)).await;
    let b = stream
        .create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            prev_kv: true,
            ..watch("wa", now + 1)
        })
        .await;
    let c = stream.create(watch("wc", now + 1)).await;
    assert!(a != b && b != c && a != c, "distinct IDs: {a} {b} {c}");
    // A client-chosen ID already in use is refused.
    stream
        .send(RequestUnion::CreateRequest(WatchCreateRequest {
            watch_id: c,
            ..watch("wz", 0)
        }))
        .await;
    let duplicate = stream.next().await;
    assert!(duplicate.canceled, "{duplicate:?}");

    put(&mut kv, "wa", "1").await;
    put(&mut kv, "wc", "1").await;
    kv.delete_range(DeleteRangeRequest {
        key: b"wa".to_vec(),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete");
    // Expected: a sees put+delete of wa; b sees only the delete, with prev_kv; c sees wc.
    // (watch ID, event type, key, previous value)
    type Seen = (i64, i32, Vec<u8>, Option<Vec<u8>>);
    let mut seen: Vec<Seen> = Vec::new();
    while seen.len() < 4 {
        let response = stream.next().await;
        for event in response.events {
            let kv = event.kv.expect("kv");
            seen.push((
                response.watch_id,
                event.r#type,
                kv.key,
                event.prev_kv.map(|p| p.value),
            ));
        }
    }
    seen.sort();
    let put_t = EventType::Put as i32;
    let del_t = EventType::Delete as i32;
    let mut expected = vec![
        (a, put_t, b"wa".to_vec(), None),
        (a, del_t, b"wa".to_vec(), None),
        (b, del_t, b"wa".to_vec(), Some(b"1".to_vec())),
        (c, put_t, b"wc".to_vec(), None),
    ];
    expected.sort();
    assert_eq!(seen, expected);

    // After a cancel, the watcher stays quiet; the others go on.
    stream
        .send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: c,
        }))
        .await;
    let canceled = stream.next().await;
    assert!(canceled.canceled && canceled.watch_id == c, "{canceled:?}");
    put(&mut kv, "wc", "2").await;
    let last = put(&mut kv, "wa", "2").await;
    let response = stream.next().await;
    assert_eq!(
        response.watch_id, a,
        "only a is left to see a put: {response:?}"
    );
    assert_eq!(
        response.events[0].kv.as_ref().map(|k| k.key.clone()),
        Some(b"wa".to_vec())
    );

    // A progress request is answered with the store's revision.
    stream
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = stream.next().await;
    assert!(progress.events.is_empty());
    assert!(progress.header.expect("header").revision >= last);
}

/// A dev agent serving the etcd API; kept alive by the returned guards.
fn colony() -> (String, Agent, tempfile::TempDir) {
    let temp = tempfile::tempdir().expect("tempdir");
    let grpc = free_addr().to_string();
    let agent = Agent::start_in(&temp.path().join("data"), &["--grpc-addr", &grpc]);
    (grpc, agent, temp)
}

/// A real single-member etcd (started off the async runtime: it waits for it to serve).
async fn real_etcd() -> RealEtcd {
    tokio::task::spawn_blocking(RealEtcd::start)
        .await
        .expect("start etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_semantics_on_colony() {
    let (grpc, _agent, _dir) = colony();
    watch_cases(&grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_semantics_on_real_etcd() {
    watch_cases(&real_etcd().await.endpoint).await;
}

/// A watcher that asks for `fragment` gets a revision larger than the request limit in
/// pieces (all but the last marked `fragment`); one that does not gets it whole.
async fn fragment_cases(endpoint: &str) {
    let channel = grpc_channel(endpoint).await;
    let mut kv = KVClient::new(channel.clone());
    let value = "x".repeat(200 * 1024);
    let mut last = 0;
    for i in 0..12 {
        last = put(&mut kv, &format!("frag/{i:02}"), &value).await;
    }
    let prefix = |fragment| WatchCreateRequest {
        key: b"frag/".to_vec(),
        range_end: b"frag0".to_vec(),
        start_revision: last + 1,
        prev_kv: true,
        fragment,
        ..WatchCreateRequest::default()
    };
    let (mut stream, pieces_id) = Stream::open(channel.clone(), prefix(true)).await;
    let whole_id = stream.create(prefix(false)).await;
    // One revision: twelve deletions, each carrying its 200 KiB previous value.
    kv.delete_range(DeleteRangeRequest {
        key: b"frag/".to_vec(),
        range_end: b"frag0".to_vec(),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete range");
    let (mut pieces, mut whole) = (Vec::new(), Vec::new());
    while pieces.last().is_none_or(|r: &WatchResponse| r.fragment) || whole.is_empty() {
        let response = stream.next().await;
        if response.watch_id == pieces_id {
            pieces.push(response);
        } else {
            assert_eq!(response.watch_id, whole_id);
            whole.push(response);
        }
    }
    assert!(pieces.len() >= 2, "split into pieces: {}", pieces.len());
    assert!(pieces[..pieces.len() - 1].iter().all(|r| r.fragment));
    let events: usize = pieces.iter().map(|r| r.events.len()).sum();
    assert_eq!(events, 12);
    assert!(pieces.iter().flat_map(|r| &r.events).all(|e| {
        e.prev_kv
            .as_ref()
            .is_some_and(|kv| kv.value.len() == value.len())
    }));
    assert_eq!(whole.len(), 1);
    assert!(!whole[0].fragment);
    assert_eq!(whole[0].events.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_fragments_on_colony() {
    let (grpc, _agent, _dir) = colony();
    fragment_cases(&grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_fragments_on_real_etcd() {
    fragment_cases(&real_etcd().await.endpoint).await;
}
