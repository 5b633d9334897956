//! Request bodies decoded the way Consul (Go's `encoding/json`) decodes them: field names match
//! case-insensitively, snake_case aliases (`service_id`) are accepted as Consul's key
//! translation does, unknown fields are ignored, and a known field of the wrong type is a 400
//! that names the field.

use crate::error::ApiError;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Every canonical field name of the request types. Keys are matched against these after
/// lowercasing and dropping underscores.
const CANONICAL_FIELDS: &[&str] = &[
    "Address",
    "Args",
    "AliasNode",
    "AliasService",
    "Behavior",
    "Body",
    "Check",
    "CheckID",
    "Checks",
    "Datacenter",
    "DeregisterCriticalServiceAfter",
    "DockerContainerID",
    "EnableTagOverride",
    "FailuresBeforeCritical",
    "FailuresBeforeWarning",
    "Flags",
    "GRPC",
    "H2PING",
    "HTTP",
    "Header",
    "ID",
    "Index",
    "Interval",
    "KV",
    "Key",
    "Kind",
    "LockDelay",
    "Meta",
    "Method",
    "Name",
    "Node",
    "NodeChecks",
    "NodeMeta",
    "Notes",
    "OSService",
    "Output",
    "Passing",
    "Port",
    "ScriptArgs",
    "Service",
    "ServiceChecks",
    "ServiceID",
    "Session",
    "Shell",
    "SkipNodeUpdate",
    "Status",
    "SuccessBeforePassing",
    "TCP",
    "TLSServerName",
    "TLSSkipVerify",
    "TTL",
    "TaggedAddresses",
    "Tags",
    "Timeout",
    "UDP",
    "Value",
    "Verb",
    "Warning",
    "Weights",
];

/// Fields whose values are user maps: their keys are data, never translated.
const OPAQUE_MAP_FIELDS: &[&str] = &["Meta", "NodeMeta", "Header", "TaggedAddresses"];

fn canonical_table() -> &'static HashMap<String, &'static str> {
    static TABLE: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    TABLE.get_or_init(|| {
        CANONICAL_FIELDS
            .iter()
            .map(|name| (fold(name), *name))
            .collect()
    })
}

fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Rewrites object keys to their canonical spelling, recursively, leaving user maps alone.
pub fn canonicalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let table = canonical_table();
            let mut out = Map::with_capacity(map.len());
            for (key, inner) in map {
                let canonical = table
                    .get(&fold(&key))
                    .map_or(key, |name| (*name).to_string());
                let inner = if OPAQUE_MAP_FIELDS.contains(&canonical.as_str()) {
                    inner
                } else {
                    canonicalize(inner)
                };
                out.insert(canonical, inner);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonicalize).collect()),
        other => other,
    }
}

/// Decodes a request body holding a JSON object into `T`.
///
/// # Errors
/// 400 with a reason naming the position (malformed JSON), the field (wrong type), or the
/// body's shape if it is not an object (serde would otherwise read an array positionally).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = parse(body)?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "Request decode failed: expected a JSON object",
        ));
    }
    decode_value(value)
}

/// Decodes a request body holding a JSON array into a list of `T`.
///
/// # Errors
/// As [`decode`], for a body that is not an array.
pub fn decode_list<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, ApiError> {
    let value = parse(body)?;
    let Value::Array(items) = value else {
        return Err(ApiError::bad_request(
            "Request decode failed: expected a JSON array",
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.is_object() {
                return Err(ApiError::bad_request(format!(
                    "Request decode failed: [{i}]: expected a JSON object"
                )));
            }
            decode_value(item).map_err(|e| {
                ApiError::bad_request(e.message.replace(
                    "Request decode failed: ",
                    &format!("Request decode failed: [{i}]."),
                ))
            })
        })
        .collect()
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))
}

/// Decodes an already parsed JSON value into `T`, as [`decode`].
///
/// # Errors
/// 400 naming the field of the wrong type.
pub fn decode_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    let value = canonicalize(value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("Request decode failed: {inner}"))
        } else {
            ApiError::bad_request(format!("Request decode failed: {path}: {inner}"))
        }
    })
}

/// A duration field: a Go duration string (`"10s"`) or a number of nanoseconds, as Consul
/// accepts both. Parsed to milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GoDuration(pub u64);

impl<'de> serde::Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(text) if text.is_empty() => Ok(GoDuration(0)),
            Value::String(text) => colony_base::parse_go_duration_ms(&text)
                .map(GoDuration)
                .map_err(serde::de::Error::custom),
            Value::Number(number) => number
                .as_u64()
                .map(|ns| GoDuration(ns.div_ceil(1_000_000)))
                .ok_or_else(|| serde::de::Error::custom("duration must be a non-negative number")),
            Value::Null => Ok(GoDuration(0)),
            other => Err(serde::de::Error::custom(format!(
                "invalid duration {other}: expected a string like \"10s\" or nanoseconds"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "PascalCase")]
    struct Sample {
        #[serde(rename = "ID", default)]
        id: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        meta: HashMap<String, String>,
        #[serde(rename = "DeregisterCriticalServiceAfter", default)]
        deregister: Option<GoDuration>,
    }

    #[test]
    fn decode_matches_field_names_case_insensitively() {
        let body = br#"{"id":"a","PORT":80,"deregister_critical_service_after":"1m"}"#;
        let sample: Sample = decode(body).expect("decodes");
        assert_eq!(sample.id, "a");
        assert_eq!(sample.port, 80);
        assert_eq!(sample.deregister, Some(GoDuration(60_000)));
    }

    #[test]
    fn decode_leaves_user_map_keys_alone() {
        let sample: Sample = decode(br#"{"Meta":{"port":"x","ID":"y"}}"#).expect("decodes");
        assert_eq!(sample.meta.get("port").map(String::as_str), Some("x"));
        assert_eq!(sample.meta.get("ID").map(String::as_str), Some("y"));
    }

    #[test]
    fn decode_wrong_type_names_the_field() {
        let error = decode::<Sample>(br#"{"Port":"abc"}"#).expect_err("wrong type");
        assert!(error.message.contains("Port"), "{}", error.message);
    }

    #[test]
    fn decode_array_body_for_an_object_is_refused() {
        let error = decode::<Sample>(br#"["a", 80]"#).expect_err("not an object");
        assert!(
            error.message.contains("expected a JSON object"),
            "{}",
            error.message
        );
        let error = decode_list::<Sample>(br#"[{"Port": "x"}]"#).expect_err("wrong type");
        assert!(error.message.contains("[0].Port"), "{}", error.message);
    }

    #[test]
    fn decode_malformed_json_says_where() {
        let error = decode::<Sample>(br#"{"Port": 80"#).expect_err("malformed");
        assert!(error.message.contains("line 1"), "{}", error.message);
    }

    #[test]
    fn decode_bad_duration_names_the_field_and_value() {
        let error =
            decode::<Sample>(br#"{"DeregisterCriticalServiceAfter":"banana"}"#).expect_err("bad");
        assert!(error.message.contains("DeregisterCriticalServiceAfter"));
        assert!(error.message.contains("banana"));
    }
}
