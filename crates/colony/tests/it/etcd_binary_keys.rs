//! Keys are bytes in etcd: keys, watch ranges and lock and election names that are not UTF-8
//! work as sent. Each case runs against colony and against a real etcd; colony's Consul API
//! then shows such a key as Go's JSON encoder would (invalid bytes as U+FFFD).

use crate::etcdctl::RealEtcd;
use crate::support::{Agent, free_addr, grpc_channel};
use colony_etcdpb::etcdserverpb::{
    LeaseGrantRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse,
    k_v_client::KVClient, lease_client::LeaseClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use colony_etcdpb::v3electionpb::{
    CampaignRequest, LeaderRequest, election_client::ElectionClient,
};
use colony_etcdpb::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use std::time::Duration;
use tonic::Streaming;

/// A key under `bin/` with bytes that are not UTF-8 (a lone continuation byte, 0xff).
const KEY: &[u8] = b"bin/\x80\xffk";
/// A name that is not UTF-8.
const NAME: &[u8] = b"name-\xfe";

async fn next(watch: &mut Streaming<WatchResponse>) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("a watch response within 10 s")
        .expect("stream healthy")
        .expect("stream open")
}

async fn binary_key_cases(endpoint: &str) {
    let channel = grpc_channel(endpoint).await;
    let mut kv = KVClient::new(channel.clone());

    // A watcher of the prefix `bin/\x80` (itself not UTF-8), opened before the put.
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"bin/\x80".to_vec(),
                range_end: b"bin/\x81".to_vec(),
                ..WatchCreateRequest::default()
            })),
        })
        .await
        .expect("queue the watcher");
    let mut watch = WatchClient::new(channel.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let created = next(&mut watch).await;
    assert!(created.created, "{created:?}");

    for (key, value) in [(KEY, &b"binary"[..]), (b"bin/a", b"text")] {
        kv.put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..PutRequest::default()
        })
        .await
        .expect("put");
    }
    let event = next(&mut watch).await;
    let kv_seen = event.events[0].kv.as_ref().expect("kv");
    assert_eq!(kv_seen.key, KEY, "{event:?}");
    assert_eq!(kv_seen.value, b"binary");

    // One key alone, and the prefix in byte order (0x80 after every ASCII byte).
    let alone = kv
        .range(RangeRequest {
            key: KEY.to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(alone.kvs.len(), 1);
    assert_eq!(alone.kvs[0].value, b"binary");
    let listed = kv
        .range(RangeRequest {
            key: b"bin/".to_vec(),
            range_end: b"bin0".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect("range")
        .into_inner();
    let keys: Vec<&[u8]> = listed.kvs.iter().map(|kv| &kv.key[..]).collect();
    assert_eq!(keys, [&b"bin/a"[..], KEY]);

    // A lock and an election whose names are not UTF-8.
    let mut leases = LeaseClient::new(channel.clone());
    let lease = leases
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let locked = LockClient::new(channel.clone())
        .lock(LockRequest {
            name: NAME.to_vec(),
            lease,
        })
        .await
        .expect("lock")
        .into_inner();
    let mut prefix = NAME.to_vec();
    prefix.push(b'/');
    assert!(locked.key.starts_with(&prefix), "{:?}", locked.key);
    LockClient::new(channel.clone())
        .unlock(UnlockRequest { key: locked.key })
        .await
        .expect("unlock");
    let mut election = ElectionClient::new(channel);
    election
        .campaign(CampaignRequest {
            name: NAME.to_vec(),
            lease,
            value: b"me".to_vec(),
        })
        .await
        .expect("campaign");
    let leader = election
        .leader(LeaderRequest {
            name: NAME.to_vec(),
        })
        .await
        .expect("leader")
        .into_inner();
    let leader_kv = leader.kv.expect("leader kv");
    assert!(leader_kv.key.starts_with(&prefix), "{:?}", leader_kv.key);
    assert_eq!(leader_kv.value, b"me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_binary_keys_on_colony_and_through_consul_api() {
    let temp = tempfile::tempdir().expect("tempdir");
    let grpc = free_addr().to_string();
    let agent = Agent::start_in(&temp.path().join("data"), &["--grpc-addr", &grpc]);
    binary_key_cases(&grpc).await;

    // Consul's API lists the binary key lossily, as Consul (Go) would encode it.
    let listed = tokio::task::spawn_blocking(move || {
        let answer = agent.get("/v1/kv/bin/?keys");
        assert_eq!(answer.status, 200, "{}", agent.log_text());
        answer.json()
    })
    .await
    .expect("consul read");
    assert_eq!(
        listed,
        serde_json::json!(["bin/a", "bin/\u{fffd}\u{fffd}k"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_binary_keys_on_real_etcd() {
    let etcd = tokio::task::spawn_blocking(RealEtcd::start)
        .await
        .expect("start etcd");
    binary_key_cases(&etcd.endpoint).await;
}
