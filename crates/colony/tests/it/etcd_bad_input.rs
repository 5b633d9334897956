//! Bad input to the etcd dialect gets etcd's status codes and messages, never a panic, and
//! loses nothing: each case runs against colony and against a real etcd.

use crate::etcdctl::RealEtcd;
use crate::support::{Agent, free_addr, grpc_channel};
use colony_etcdpb::etcdserverpb::{
    CompactionRequest, PutRequest, RangeRequest, RequestOp, StatusRequest, TxnRequest,
    k_v_client::KVClient, maintenance_client::MaintenanceClient, request_op,
};
use std::io::Write;
use tonic::Code;
use tonic::transport::Channel;

fn put(key: &[u8], value: Vec<u8>, lease: i64) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..PutRequest::default()
    }
}

fn expect(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(message), "{status:?}");
}

async fn bad_input_cases(endpoint: &str) {
    let channel = grpc_channel(endpoint).await;
    let mut kv = KVClient::new(channel.clone()).max_encoding_message_size(8 << 20);
    let big = put(b"big", vec![b'x'; 1_600_000], 0);
    expect(
        kv.put(big).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    let huge = kv.put(put(b"huge", vec![b'x'; 3 << 20], 0)).await;
    assert!(huge.is_err(), "a message over the gRPC limit is refused");
    expect(
        kv.range(RangeRequest::default()).await,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    expect(
        kv.put(put(b"k", b"v".to_vec(), 0x7777)).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let ops: Vec<RequestOp> = (0..129)
        .map(|i| RequestOp {
            request: Some(request_op::Request::RequestPut(put(
                format!("many/{i}").as_bytes(),
                Vec::new(),
                0,
            ))),
        })
        .collect();
    expect(
        kv.txn(TxnRequest {
            success: ops,
            ..TxnRequest::default()
        })
        .await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let first = kv
        .put(put(b"c", b"1".to_vec(), 0))
        .await
        .expect("put")
        .into_inner();
    let old = first.header.expect("header").revision;
    let kept = kv
        .put(put(b"c", b"2".to_vec(), 0))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision;
    kv.compact(CompactionRequest {
        revision: kept,
        physical: false,
    })
    .await
    .expect("compact");
    let at_old = RangeRequest {
        key: b"c".to_vec(),
        revision: old,
        ..RangeRequest::default()
    };
    expect(
        kv.range(at_old).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    expect(
        kv.compact(CompactionRequest {
            revision: kept + 1_000_000,
            physical: false,
        })
        .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Garbage on the gRPC port is dropped without harm.
    let mut raw = std::net::TcpStream::connect(endpoint).expect("raw connect");
    let _ = raw.write_all(b"\x00\x01garbage that is not HTTP/2\r\n\r\n");
    drop(raw);
    // Nothing acknowledged was lost, and the server still serves.
    let read = kv
        .range(RangeRequest {
            key: b"c".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(read.kvs[0].value, b"2");
    MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .expect("status after bad input");
}

/// The `x-colony-evidence` metadata of a range: its freshness class.
async fn range_freshness(kv: &mut KVClient<Channel>, request: RangeRequest) -> String {
    let response = kv.range(request).await.expect("range");
    let evidence = response
        .metadata()
        .get("x-colony-evidence")
        .expect("every colony answer carries evidence")
        .to_str()
        .expect("ASCII")
        .to_string();
    evidence
        .split(", ")
        .find_map(|field| field.strip_prefix("freshness="))
        .expect("a freshness field")
        .trim_matches('"')
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_reads_carry_evidence_of_their_freshness() {
    let temp = tempfile::tempdir().expect("tempdir");
    let grpc = free_addr().to_string();
    let _agent = Agent::start_in(&temp.path().join("data"), &["--grpc-addr", &grpc]);
    let mut kv = KVClient::new(grpc_channel(&grpc).await);
    let first = kv
        .put(put(b"e", b"1".to_vec(), 0))
        .await
        .expect("put")
        .into_inner()
        .header
        .expect("header")
        .revision;
    kv.put(put(b"e", b"2".to_vec(), 0)).await.expect("put");
    let read = |revision: i64, serializable: bool| RangeRequest {
        key: b"e".to_vec(),
        revision,
        serializable,
        ..RangeRequest::default()
    };
    assert_eq!(range_freshness(&mut kv, read(0, false)).await, "fresh");
    assert_eq!(
        range_freshness(&mut kv, read(0, true)).await,
        "bounded-stale"
    );
    assert_eq!(
        range_freshness(&mut kv, read(first, false)).await,
        "historical"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_bad_input_gets_etcds_errors_from_colony() {
    let temp = tempfile::tempdir().expect("tempdir");
    let grpc = free_addr().to_string();
    let agent = Agent::start_in(&temp.path().join("data"), &["--grpc-addr", &grpc]);
    bad_input_cases(&grpc).await;
    assert!(
        !agent.log_text().contains("panicked"),
        "{}",
        agent.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_bad_input_gets_the_same_errors_from_real_etcd() {
    let etcd = tokio::task::spawn_blocking(RealEtcd::start)
        .await
        .expect("start etcd");
    bad_input_cases(&etcd.endpoint).await;
}
