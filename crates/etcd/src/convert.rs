//! Conversions between etcd's wire messages and the store's KV types, with etcd's validation
//! (empty keys, conflicting flags, too many or duplicate operations in a transaction).

use crate::context::{TXN_OPS_MAX, empty_key, etcd_error};
use colony_etcdpb::etcdserverpb::{
    self as pb, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse, compare,
    range_request, request_op, response_op,
};
use colony_etcdpb::mvccpb::{self, KeyValue};
use colony_store::{
    Compare, CompareOp, CompareTarget, DeleteOp, Key, KeyRange, KvEntry, KvEvent, KvOp, KvOpResult,
    KvTxn, KvTxnResult, PutOp, RangeQuery, RangeResult, SortOrder, SortTarget,
};
use std::collections::HashSet;
use tonic::{Code, Status};

/// A stored entry as etcd's `KeyValue`.
pub fn key_value(entry: &KvEntry) -> KeyValue {
    KeyValue {
        key: entry.key.as_bytes().to_vec(),
        create_revision: entry.create_index as i64,
        mod_revision: entry.modify_index as i64,
        version: entry.version as i64,
        value: entry.value.to_vec(),
        lease: entry.lease,
    }
}

/// A history event as etcd's watch `Event`; the previous entry only if asked for.
pub fn event(event: &KvEvent, with_prev: bool) -> mvccpb::Event {
    let (kind, kv) = match &event.kv {
        Some(kv) => (mvccpb::event::EventType::Put, key_value(kv)),
        // A delete event carries the key and the revision that deleted it.
        None => (
            mvccpb::event::EventType::Delete,
            KeyValue {
                key: event.key.as_bytes().to_vec(),
                mod_revision: event.revision as i64,
                ..KeyValue::default()
            },
        ),
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: event.prev.as_deref().filter(|_| with_prev).map(key_value),
    }
}

fn nonempty_key(key: Vec<u8>) -> Result<Key, Status> {
    if key.is_empty() {
        return Err(empty_key());
    }
    Ok(Key::from(key))
}

fn revision(value: i64) -> u64 {
    value.max(0) as u64
}

/// A range request as a store query.
///
/// # Errors
/// `InvalidArgument` for an empty key.
pub fn range_query(request: &RangeRequest) -> Result<RangeQuery, Status> {
    if request.key.is_empty() {
        return Err(empty_key());
    }
    let sort_order = match range_request::SortOrder::try_from(request.sort_order) {
        Ok(range_request::SortOrder::Ascend) => SortOrder::Ascend,
        Ok(range_request::SortOrder::Descend) => SortOrder::Descend,
        _ => SortOrder::None,
    };
    let sort_target = match range_request::SortTarget::try_from(request.sort_target) {
        Ok(range_request::SortTarget::Version) => SortTarget::Version,
        Ok(range_request::SortTarget::Create) => SortTarget::Create,
        Ok(range_request::SortTarget::Mod) => SortTarget::Mod,
        Ok(range_request::SortTarget::Value) => SortTarget::Value,
        _ => SortTarget::Key,
    };
    Ok(RangeQuery {
        range: KeyRange {
            start: request.key.clone(),
            end: request.range_end.clone(),
        },
        revision: revision(request.revision),
        limit: revision(request.limit),
        sort_order,
        sort_target,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: revision(request.min_mod_revision),
        max_mod_revision: revision(request.max_mod_revision),
        min_create_revision: revision(request.min_create_revision),
        max_create_revision: revision(request.max_create_revision),
    })
}

/// A store range result as etcd's response.
pub fn range_response(result: RangeResult, header: Option<ResponseHeader>) -> RangeResponse {
    RangeResponse {
        header,
        kvs: result.kvs.iter().map(key_value).collect(),
        more: result.more,
        count: result.count as i64,
    }
}

/// A put request as a store operation.
///
/// # Errors
/// `InvalidArgument` for an empty key, or a value/lease given with the flag
/// that ignores it.
pub fn put_op(request: PutRequest) -> Result<PutOp, Status> {
    if request.ignore_value && !request.value.is_empty() {
        return Err(etcd_error(Code::InvalidArgument, "value is provided"));
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(etcd_error(Code::InvalidArgument, "lease is provided"));
    }
    Ok(PutOp {
        key: nonempty_key(request.key)?,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    })
}

/// A delete request as a store operation.
///
/// # Errors
/// `InvalidArgument` for an empty key.
pub fn delete_op(request: DeleteRangeRequest) -> Result<DeleteOp, Status> {
    if request.key.is_empty() {
        return Err(empty_key());
    }
    Ok(DeleteOp {
        range: KeyRange {
            start: request.key,
            end: request.range_end,
        },
        prev_kv: request.prev_kv,
    })
}

fn compare(request: pb::Compare) -> Result<Compare, Status> {
    if request.key.is_empty() {
        return Err(empty_key());
    }
    let op = match compare::CompareResult::try_from(request.result) {
        Ok(compare::CompareResult::Equal) => CompareOp::Equal,
        Ok(compare::CompareResult::Greater) => CompareOp::Greater,
        Ok(compare::CompareResult::Less) => CompareOp::Less,
        Ok(compare::CompareResult::NotEqual) => CompareOp::NotEqual,
        Err(_) => return Err(Status::invalid_argument("unknown compare result")),
    };
    // The target field names which member of the union counts; a missing member is zero.
    let union = request.target_union;
    let int =
        |pick: fn(&compare::TargetUnion) -> Option<i64>| union.as_ref().and_then(pick).unwrap_or(0);
    let target = match compare::CompareTarget::try_from(request.target) {
        Ok(compare::CompareTarget::Version) => CompareTarget::Version(revision(int(|u| match u {
            compare::TargetUnion::Version(v) => Some(*v),
            _ => None,
        }))),
        Ok(compare::CompareTarget::Create) => CompareTarget::Create(revision(int(|u| match u {
            compare::TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        }))),
        Ok(compare::CompareTarget::Mod) => CompareTarget::Mod(revision(int(|u| match u {
            compare::TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        }))),
        Ok(compare::CompareTarget::Lease) => CompareTarget::Lease(int(|u| match u {
            compare::TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(compare::CompareTarget::Value) => CompareTarget::Value(match union {
            Some(compare::TargetUnion::Value(v)) => v,
            _ => Vec::new(),
        }),
        Err(_) => return Err(Status::invalid_argument("unknown compare target")),
    };
    Ok(Compare {
        range: KeyRange {
            start: request.key,
            end: request.range_end,
        },
        op,
        target,
    })
}

fn op(request: RequestOp) -> Result<KvOp, Status> {
    Ok(match request.request {
        Some(request_op::Request::RequestRange(range)) => KvOp::Range(range_query(&range)?),
        Some(request_op::Request::RequestPut(put)) => KvOp::Put(put_op(put)?),
        Some(request_op::Request::RequestDeleteRange(delete)) => KvOp::Delete(delete_op(delete)?),
        Some(request_op::Request::RequestTxn(txn)) => KvOp::Txn(kv_txn_unchecked(txn)?),
        None => return Err(Status::invalid_argument("empty transaction operation")),
    })
}

fn kv_txn_unchecked(request: TxnRequest) -> Result<KvTxn, Status> {
    Ok(KvTxn {
        compares: request
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .into_iter()
            .map(op)
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .into_iter()
            .map(op)
            .collect::<Result<_, _>>()?,
    })
}

/// A transaction request as a store transaction, checked as etcd checks it: at most
/// [`TXN_OPS_MAX`] operations per branch and no key written twice in one branch.
///
/// # Errors
/// `InvalidArgument` with etcd's message for each violation.
pub fn kv_txn(request: TxnRequest) -> Result<KvTxn, Status> {
    let txn = kv_txn_unchecked(request)?;
    check_txn(&txn)?;
    Ok(txn)
}

fn check_txn(txn: &KvTxn) -> Result<(), Status> {
    if txn.compares.len() > TXN_OPS_MAX
        || txn.success.len() > TXN_OPS_MAX
        || txn.failure.len() > TXN_OPS_MAX
    {
        return Err(too_many_ops());
    }
    for branch in [&txn.success, &txn.failure] {
        let (puts, deletes) = writes(branch)?;
        for key in &puts {
            if deletes.iter().any(|range| range.contains(key)) {
                return Err(duplicate_key());
            }
        }
    }
    Ok(())
}

fn duplicate_key() -> Status {
    etcd_error(Code::InvalidArgument, "duplicate key given in txn request")
}

/// The keys a branch puts and the ranges it deletes, nested transactions included (their two
/// branches may write the same key: only one runs). A key put twice is an error.
fn writes(ops: &[KvOp]) -> Result<(HashSet<&[u8]>, Vec<&KeyRange>), Status> {
    let mut puts: HashSet<&[u8]> = HashSet::new();
    let mut deletes: Vec<&KeyRange> = Vec::new();
    for op in ops {
        match op {
            KvOp::Put(put) => {
                if !puts.insert(&put.key) {
                    return Err(duplicate_key());
                }
            }
            KvOp::Delete(delete) => deletes.push(&delete.range),
            KvOp::Range(_) => {}
            KvOp::Txn(nested) => {
                if nested.compares.len() > TXN_OPS_MAX {
                    return Err(too_many_ops());
                }
                let (success_puts, success_deletes) = writes(&nested.success)?;
                let (failure_puts, failure_deletes) = writes(&nested.failure)?;
                let nested_puts: HashSet<&[u8]> =
                    success_puts.union(&failure_puts).copied().collect();
                if nested_puts.iter().any(|key| puts.contains(key)) {
                    return Err(duplicate_key());
                }
                puts.extend(nested_puts);
                deletes.extend(success_deletes);
                deletes.extend(failure_deletes);
            }
        }
    }
    Ok((puts, deletes))
}

fn too_many_ops() -> Status {
    etcd_error(Code::InvalidArgument, "too many operations in txn request")
}

/// A store transaction result as etcd's response (headers inside carry `header` too).
pub fn txn_response(result: KvTxnResult, header: Option<ResponseHeader>) -> TxnResponse {
    TxnResponse {
        header: header.clone(),
        succeeded: result.succeeded,
        responses: result
            .results
            .into_iter()
            .map(|r| ResponseOp {
                response: Some(op_response(r, header.clone())),
            })
            .collect(),
    }
}

fn op_response(result: KvOpResult, header: Option<ResponseHeader>) -> response_op::Response {
    match result {
        KvOpResult::Range(range) => {
            response_op::Response::ResponseRange(range_response(range, header))
        }
        KvOpResult::Put { prev } => response_op::Response::ResponsePut(PutResponse {
            header,
            prev_kv: prev.as_ref().map(key_value),
        }),
        KvOpResult::Delete { deleted, prev } => {
            response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                header,
                deleted: deleted as i64,
                prev_kvs: prev.iter().map(key_value).collect(),
            })
        }
        KvOpResult::Txn(nested) => response_op::Response::ResponseTxn(txn_response(nested, header)),
    }
}

/// Whether a transaction only reads (so it can be served without a log entry).
pub fn is_read_only(txn: &KvTxn) -> bool {
    txn.success.iter().chain(&txn.failure).all(|op| match op {
        KvOp::Range(_) => true,
        KvOp::Txn(nested) => is_read_only(nested),
        KvOp::Put(_) | KvOp::Delete(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.into(),
                ..PutRequest::default()
            })),
        }
    }

    #[test]
    fn txn_checks_follow_etcd() {
        let twice = TxnRequest {
            success: vec![put("a"), put("a")],
            ..TxnRequest::default()
        };
        assert_eq!(
            kv_txn(twice).expect_err("duplicate").message(),
            "etcdserver: duplicate key given in txn request"
        );
        let put_and_delete = TxnRequest {
            success: vec![
                put("a/1"),
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: b"a/".to_vec(),
                            range_end: b"a0".to_vec(),
                            prev_kv: false,
                        },
                    )),
                },
            ],
            ..TxnRequest::default()
        };
        assert!(kv_txn(put_and_delete).is_err());
        let many = TxnRequest {
            success: (0..129).map(|i| put(&format!("k{i}"))).collect(),
            ..TxnRequest::default()
        };
        assert_eq!(
            kv_txn(many).expect_err("too many").message(),
            "etcdserver: too many operations in txn request"
        );
        let branches = TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..TxnRequest::default()
        };
        assert!(kv_txn(branches).is_ok(), "one key in each branch is fine");
    }

    #[test]
    fn puts_reject_what_etcd_rejects() {
        let empty = put_op(PutRequest::default()).expect_err("empty key");
        assert_eq!(empty.message(), "etcdserver: key is not provided");
        let both = put_op(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..PutRequest::default()
        });
        assert_eq!(
            both.expect_err("conflict").message(),
            "etcdserver: value is provided"
        );
        // Any bytes make a key, as in etcd.
        let binary = put_op(PutRequest {
            key: vec![0xff, 0x00],
            ..PutRequest::default()
        });
        assert_eq!(binary.expect("binary key").key.as_bytes(), [0xff, 0x00]);
    }
}
