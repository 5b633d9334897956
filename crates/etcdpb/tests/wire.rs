//! Encodings checked byte for byte against protobuf wire bytes worked out by hand from etcd's
//! field numbers and types, then decoded back. A wrong tag, a wrong scalar type (int64 vs
//! sint64 vs uint64), a missing `packed` or a oneof default that is not emitted all show up as
//! a byte difference here.

use colony_etcdpb::etcdserverpb::{
    Compare, LeaseTimeToLiveResponse, Member, PutRequest, RangeRequest, RequestOp, ResponseHeader,
    StatusResponse, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, compare,
    range_request, request_op, watch_create_request, watch_request,
};
use colony_etcdpb::mvccpb::{Event, KeyValue, event};
use colony_etcdpb::v3electionpb::{CampaignResponse, LeaderKey};
use colony_etcdpb::v3lockpb::LockRequest;
use prost::Message;

/// Encodes `msg`, compares with `hex` (bytes separated by spaces) and decodes it back.
fn check<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, hex: &str) {
    let want: Vec<u8> = hex
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect();
    let got = msg.encode_to_vec();
    assert_eq!(got, want, "encoding of {msg:?}");
    assert_eq!(msg.encoded_len(), want.len());
    let back = M::decode(want.as_slice()).expect("decodes");
    assert_eq!(&back, msg);
}

#[test]
fn put_request() {
    let put = PutRequest {
        key: b"a".to_vec(),
        value: b"b".to_vec(),
        lease: 5,
        ..Default::default()
    };
    check(&put, "0a 01 61 12 01 62 18 05");
    let flags = PutRequest {
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
        ..Default::default()
    };
    check(&flags, "20 01 28 01 30 01");
}

#[test]
fn range_request() {
    let range = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        limit: 10,
        sort_order: range_request::SortOrder::Descend as i32,
        serializable: true,
        max_create_revision: 7,
        ..Default::default()
    };
    // key 1, range_end 2, limit 3, sort_order 5, serializable 7, max_create_revision 13.
    check(&range, "0a 01 61 12 01 62 18 0a 28 02 38 01 68 07");
    let flags = RangeRequest {
        sort_target: range_request::SortTarget::Mod as i32,
        keys_only: true,
        count_only: true,
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        ..Default::default()
    };
    check(&flags, "30 03 40 01 48 01 50 01 58 02 60 03");
}

#[test]
fn compare_oneof_and_far_tag() {
    let cmp = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(300)),
        range_end: b"z".to_vec(),
    };
    // mod_revision is field 6 (300 = ac 02); range_end is field 64, key 514 = 82 04.
    check(&cmp, "08 01 10 02 1a 01 6b 30 ac 02 82 04 01 7a");

    // A oneof member is written even when it holds its type's default.
    let version_zero = Compare {
        key: b"k".to_vec(),
        target_union: Some(compare::TargetUnion::Version(0)),
        ..Default::default()
    };
    check(&version_zero, "1a 01 6b 20 00");

    let value = Compare {
        target: compare::CompareTarget::Value as i32,
        target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
        ..Default::default()
    };
    check(&value, "10 03 3a 01 76");
    let lease = Compare {
        target_union: Some(compare::TargetUnion::Lease(9)),
        ..Default::default()
    };
    check(&lease, "40 09");
}

#[test]
fn txn_request_nests_ops() {
    let txn = TxnRequest {
        compare: vec![Compare {
            key: b"k".to_vec(),
            target_union: Some(compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        }],
    };
    check(
        &txn,
        "0a 05 1a 01 6b 20 00 12 08 12 06 0a 01 6b 12 01 76 1a 05 0a 03 0a 01 6b",
    );

    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest::default())),
    };
    check(&nested, "22 00");
}

#[test]
fn watch_requests() {
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"foo".to_vec(),
                range_end: b"fop".to_vec(),
                start_revision: 7,
                filters: vec![watch_create_request::FilterType::Nodelete as i32],
                prev_kv: true,
                ..Default::default()
            },
        )),
    };
    // filters (field 5) is a packed repeated enum: 2a <len> <values>.
    check(
        &create,
        "0a 11 0a 03 66 6f 6f 12 03 66 6f 70 18 07 2a 01 01 30 01",
    );

    let more = WatchCreateRequest {
        progress_notify: true,
        watch_id: 3,
        fragment: true,
        ..Default::default()
    };
    check(&more, "20 01 38 03 40 01");

    let progress = WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    };
    check(&progress, "1a 00");
}

#[test]
fn key_value_and_event() {
    let kv = KeyValue {
        key: b"k".to_vec(),
        create_revision: 2,
        mod_revision: 3,
        version: 1,
        value: b"v".to_vec(),
        lease: 16,
    };
    check(&kv, "0a 01 6b 10 02 18 03 20 01 2a 01 76 30 10");

    let ev = Event {
        r#type: event::EventType::Delete as i32,
        kv: Some(KeyValue {
            key: b"k".to_vec(),
            mod_revision: 9,
            ..Default::default()
        }),
        prev_kv: None,
    };
    check(&ev, "08 01 12 05 0a 01 6b 18 09");
}

#[test]
fn lease_ttl_is_int64_and_keys_repeat() {
    let ttl = LeaseTimeToLiveResponse {
        header: Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        }),
        id: 7,
        ttl: -1,
        granted_ttl: 60,
        keys: vec![b"a".to_vec(), b"b".to_vec()],
    };
    // -1 as int64 is a ten-byte varint (sint64 would be a single 01).
    check(
        &ttl,
        "0a 08 08 01 10 02 18 03 20 04 10 07 18 ff ff ff ff ff ff ff ff ff 01 20 3c 2a 01 61 2a 01 62",
    );
}

#[test]
fn status_response() {
    let status = StatusResponse {
        version: "3.5.0".to_owned(),
        db_size: 1,
        leader: 2,
        raft_index: 3,
        raft_term: 4,
        raft_applied_index: 5,
        errors: vec!["x".to_owned()],
        db_size_in_use: 6,
        is_learner: true,
        ..Default::default()
    };
    check(
        &status,
        "12 05 33 2e 35 2e 30 18 01 20 02 28 03 30 04 38 05 42 01 78 48 06 50 01",
    );
}

#[test]
fn member_ids_are_uint64() {
    let member = Member {
        id: 1 << 63,
        name: "n".to_owned(),
        peer_urls: vec!["p".to_owned()],
        client_urls: vec!["c".to_owned()],
        is_learner: true,
    };
    check(
        &member,
        "08 80 80 80 80 80 80 80 80 80 01 12 01 6e 1a 01 70 22 01 63 28 01",
    );
}

#[test]
fn lock_and_election() {
    let lock = LockRequest {
        name: b"l".to_vec(),
        lease: 5,
    };
    check(&lock, "0a 01 6c 10 05");

    let campaign = CampaignResponse {
        header: None,
        leader: Some(LeaderKey {
            name: b"e".to_vec(),
            key: b"e/1".to_vec(),
            rev: 5,
            lease: 6,
        }),
    };
    check(&campaign, "12 0c 0a 01 65 12 03 65 2f 31 18 05 20 06");
}
