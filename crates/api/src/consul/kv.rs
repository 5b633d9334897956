//! `/v1/kv/*` and `/v1/txn`: the KV store, with CAS, locks and blocking reads.

use super::types::{KvJson, TxnOpRequest};
use super::{bool_answer, write_evidence};
use crate::AppState;
use crate::blocking;
use crate::error::{ApiError, ApiResult};
use crate::json::decode_list;
use crate::query::Query;
use crate::respond::StoreAnswer;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use colony_runtime::{Topic, outcome_to_result};
use colony_store::{
    Command, KV_KEY_BYTES_MAX, KV_VALUE_BYTES_MAX, KvSetMode, Outcome, TXN_OPS_MAX, TxnOp,
    TxnOutcome, TxnResult,
};
use serde_json::json;

/// Extracts and validates the key from the request path (`/v1/kv/<key>`), percent-decoded.
fn key_from_uri(uri: &Uri) -> ApiResult<String> {
    let path = uri.path();
    let raw = path.strip_prefix("/v1/kv").unwrap_or(path);
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    let key = String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("Invalid key: not valid UTF-8"))?;
    if key.len() > KV_KEY_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "Key too long: {} bytes, the limit is {KV_KEY_BYTES_MAX}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(ApiError::bad_request("Invalid key: contains a NUL byte"));
    }
    Ok(key)
}

pub(crate) async fn get(
    State(app): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let agent = &app.agent;
    query.check_datacenter(&agent.config().datacenter)?;
    let key = key_from_uri(&uri)?;
    let blocking = query.blocking()?;
    let recurse = query.flag("recurse");
    let keys_only = query.has("keys");
    let separator = query.get("separator").map(str::to_string);
    let raw_value = query.has("raw") && !recurse && !keys_only;
    let topic = if recurse || keys_only {
        Topic::Prefix(key.clone().into_bytes())
    } else {
        Topic::Key(key.clone().into_bytes())
    };

    if keys_only {
        let (keys, index) = blocking::run(agent, blocking, &[topic], |s| {
            let keys = s.kv_list_keys(&key, separator.as_deref());
            let index = s.kv_result_index(s.kv_keys_with_prefix(key.as_bytes()));
            (keys, index)
        })
        .await;
        let evidence = agent.store_evidence(index, format!("kv:{key}*@index={index}"));
        let mut answer = StoreAnswer::json(&keys, index, evidence);
        if keys.is_empty() {
            answer.status = StatusCode::NOT_FOUND;
            answer.body.clear();
        }
        return Ok(answer.into_response());
    }

    let (entries, index) = blocking::run(agent, blocking, &[topic], |s| {
        let entries: Vec<_> = if recurse {
            s.kv_keys_with_prefix(key.as_bytes()).cloned().collect()
        } else {
            s.kv_get(&key).cloned().into_iter().collect()
        };
        let index = s.kv_result_index(entries.iter());
        (entries, index)
    })
    .await;
    let binding = if recurse {
        format!("kv:{key}*@index={index}")
    } else {
        format!("kv:{key}@index={index}")
    };
    let evidence = agent.store_evidence(index, binding);
    if entries.is_empty() {
        let mut answer = StoreAnswer::json(&(), index, evidence);
        answer.status = StatusCode::NOT_FOUND;
        answer.body.clear();
        return Ok(answer.into_response());
    }
    if raw_value {
        let mut answer = StoreAnswer::json(&(), index, evidence);
        answer.body = entries[0].value.to_vec();
        answer.content_type = "application/octet-stream";
        return Ok(answer.into_response());
    }
    let body: Vec<KvJson> = entries.iter().map(KvJson::from_entry).collect();
    Ok(StoreAnswer::json(&body, index, evidence).into_response())
}

pub(crate) async fn put(
    State(app): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let agent = &app.agent;
    query.check_datacenter(&agent.config().datacenter)?;
    let key = key_from_uri(&uri)?;
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    if body.len() > KV_VALUE_BYTES_MAX {
        return Err(ApiError::too_large(format!(
            "Request body ({} bytes) too large: KV values are limited to {KV_VALUE_BYTES_MAX} bytes",
            body.len()
        )));
    }
    let flags = query.u64("flags")?.unwrap_or(0);
    let mode = match (
        query.u64("cas")?,
        query.get("acquire"),
        query.get("release"),
    ) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "Conflicting flags: use only one of cas, acquire and release",
            ));
        }
        (Some(index), None, None) => KvSetMode::Cas(index),
        (None, Some(session), None) => KvSetMode::Acquire(non_empty_session(session)?),
        (None, None, Some(session)) => KvSetMode::Release(non_empty_session(session)?),
        (None, None, None) => KvSetMode::Set,
    };
    let command = Command::KvSet {
        key: key.clone(),
        value: body.to_vec(),
        flags,
        mode,
    };
    let applied = agent.propose(command).await?;
    let outcome = outcome_to_result(applied.outcome).map_err(|e| match e {
        // Consul answers an unknown lock session with a 500; a 400 names the client's mistake
        // more precisely while staying an error.
        colony_runtime::AgentError::NotFound(message) => ApiError::bad_request(message),
        other => other.into(),
    })?;
    let Outcome::Bool(done) = outcome else {
        return Err(ApiError::internal(format!(
            "unexpected outcome {outcome:?}"
        )));
    };
    Ok(bool_answer(
        done,
        applied.index,
        write_evidence(agent, applied.index, &key),
    ))
}

fn non_empty_session(session: &str) -> ApiResult<String> {
    if session.is_empty() {
        return Err(ApiError::bad_request("Missing session ID"));
    }
    Ok(session.to_string())
}

pub(crate) async fn delete(
    State(app): State<AppState>,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let agent = &app.agent;
    query.check_datacenter(&agent.config().datacenter)?;
    let key = key_from_uri(&uri)?;
    let recurse = query.flag("recurse");
    if key.is_empty() && !recurse {
        return Err(ApiError::bad_request("Missing key name"));
    }
    let cas = query.u64("cas")?;
    let command = Command::KvDelete {
        key: key.clone(),
        recurse,
        cas,
    };
    let applied = agent.propose(command).await?;
    let Outcome::Bool(done) = applied.outcome else {
        return Err(ApiError::internal(format!(
            "unexpected outcome {:?}",
            applied.outcome
        )));
    };
    Ok(bool_answer(
        done,
        applied.index,
        write_evidence(agent, applied.index, &key),
    ))
}

fn decode_value(value: Option<&str>, op_index: usize) -> ApiResult<Vec<u8>> {
    match value {
        None | Some("") => Ok(Vec::new()),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "Operation {op_index}: Value is not valid base64: {e}"
                ))
            }),
    }
}

fn txn_op(op_index: usize, request: TxnOpRequest) -> ApiResult<TxnOp> {
    if request.node.is_some() || request.service.is_some() || request.check.is_some() {
        return Err(ApiError::bad_request(format!(
            "Operation {op_index}: only KV operations are supported in transactions"
        )));
    }
    let kv = request.kv.ok_or_else(|| {
        ApiError::bad_request(format!("Operation {op_index}: missing KV operation"))
    })?;
    let key = kv.key.clone();
    if key.len() > KV_KEY_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "Operation {op_index}: key too long"
        )));
    }
    let value = decode_value(kv.value.as_deref(), op_index)?;
    if value.len() > KV_VALUE_BYTES_MAX {
        return Err(ApiError::too_large(format!(
            "Operation {op_index}: value of {} bytes exceeds the {KV_VALUE_BYTES_MAX} byte limit",
            value.len()
        )));
    }
    let flags = kv.flags.unwrap_or(0);
    let index = kv.index.unwrap_or(0);
    let session = kv.session.clone().unwrap_or_default();
    let needs_key = |op: TxnOp| -> ApiResult<TxnOp> {
        if key.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Operation {op_index}: missing key"
            )));
        }
        Ok(op)
    };
    match kv.verb.as_str() {
        "set" => needs_key(TxnOp::Set {
            key: key.clone(),
            value,
            flags,
        }),
        "cas" => needs_key(TxnOp::Cas {
            key: key.clone(),
            value,
            flags,
            index,
        }),
        "lock" => needs_key(TxnOp::Lock {
            key: key.clone(),
            value,
            flags,
            session,
        }),
        "unlock" => needs_key(TxnOp::Unlock {
            key: key.clone(),
            value,
            flags,
            session,
        }),
        "get" => needs_key(TxnOp::Get { key: key.clone() }),
        "get-tree" => Ok(TxnOp::GetTree { key }),
        "check-index" => needs_key(TxnOp::CheckIndex {
            key: key.clone(),
            index,
        }),
        "check-session" => needs_key(TxnOp::CheckSession {
            key: key.clone(),
            session,
        }),
        "check-not-exists" => needs_key(TxnOp::CheckNotExists { key: key.clone() }),
        "delete" => needs_key(TxnOp::Delete { key: key.clone() }),
        "delete-tree" => Ok(TxnOp::DeleteTree { key }),
        "delete-cas" => needs_key(TxnOp::DeleteCas {
            key: key.clone(),
            index,
        }),
        other => Err(ApiError::bad_request(format!(
            "Operation {op_index}: unknown KV verb {other:?}"
        ))),
    }
}

pub(crate) async fn txn(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let query = Query::parse(raw.as_deref());
    let agent = &app.agent;
    query.check_datacenter(&agent.config().datacenter)?;
    let requests: Vec<TxnOpRequest> = decode_list(&body)?;
    if requests.len() > TXN_OPS_MAX {
        return Err(ApiError::too_large(format!(
            "Transaction contains too many operations ({} > {TXN_OPS_MAX})",
            requests.len()
        )));
    }
    let ops = requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| txn_op(i, r))
        .collect::<ApiResult<Vec<_>>>()?;
    let applied = agent.propose(Command::Txn { ops }).await?;
    let evidence = agent.store_evidence(applied.index, format!("txn@index={}", applied.index));
    let (status, body) = match applied.outcome {
        Outcome::Txn(TxnOutcome::Committed(results)) => {
            let results: Vec<_> = results
                .iter()
                .map(|TxnResult::Kv(entry)| json!({ "KV": KvJson::from_entry(entry) }))
                .collect();
            (
                StatusCode::OK,
                json!({ "Results": results, "Errors": null }),
            )
        }
        Outcome::Txn(TxnOutcome::RolledBack(errors)) => {
            let errors: Vec<_> = errors
                .iter()
                .map(|e| json!({ "OpIndex": e.op_index, "What": e.what }))
                .collect();
            (
                StatusCode::CONFLICT,
                json!({ "Results": null, "Errors": errors }),
            )
        }
        other => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    };
    let mut answer = StoreAnswer::json(&body, applied.index, evidence);
    answer.status = status;
    Ok(answer.into_response())
}
