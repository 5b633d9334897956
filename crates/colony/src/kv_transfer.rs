//! `colony kv export` and `colony kv import`: a KV tree as JSON, in the format of
//! `consul kv export` (an array of `{"key", "flags", "value"}`, the value in base64), so trees
//! move between Consul and colony clusters in either direction.
//!
//! An import checks the whole document before it writes anything, then writes it in
//! transactions of up to 64 keys (Consul's and colony's limit per transaction) and about
//! 1 MiB of values (well inside the 4 MiB request limit): each chunk is all-or-nothing, and a
//! failure says how many keys were written and names the first that was not.

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::client::{ApiClient, encode_key};

/// Keys written per transaction, at most.
const CHUNK_KEYS: usize = colony_store::TXN_OPS_MAX;
/// Value bytes per transaction: a chunk closes before it would pass this (a larger value
/// goes alone; the store bounds a value far below the request limit).
const CHUNK_VALUE_BYTES: usize = 1024 * 1024;

/// One exported key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Its opaque flags.
    pub flags: u64,
    /// Its value.
    pub value: Vec<u8>,
}

/// The export document for the entries of a recursive `/v1/kv` read (Consul's `KVPair`s).
pub fn export_document(pairs: &[Value]) -> anyhow::Result<Value> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let entries = pairs
        .iter()
        .map(|pair| {
            let key = pair["Key"]
                .as_str()
                .context("the agent answered a KV entry without a Key")?;
            let flags = pair["Flags"].as_u64().unwrap_or(0);
            // A key with no value (a "folder") reads as null: exported as "".
            let value = pair["Value"].as_str().unwrap_or("");
            engine
                .decode(value)
                .with_context(|| format!("the agent answered invalid base64 for {key:?}"))?;
            Ok(json!({ "key": key, "flags": flags, "value": value }))
        })
        .collect::<anyhow::Result<Vec<Value>>>()?;
    Ok(Value::Array(entries))
}

/// Parses an export document, every entry checked; `prefix` is put before every key.
/// Field names match case-insensitively, as Consul (Go) reads them.
///
/// # Errors
/// What is wrong and where: not an array, an entry that is not an object, a missing or
/// non-string key, flags that are not an unsigned integer, a value that is not base64.
pub fn parse_document(text: &str, prefix: &str) -> anyhow::Result<Vec<Entry>> {
    let document: Value = serde_json::from_str(text).context("the data is not valid JSON")?;
    let Value::Array(items) = document else {
        bail!(
            "the data must be a JSON array of {{\"key\", \"flags\", \"value\"}} objects (as `kv export` writes)"
        );
    };
    items
        .iter()
        .enumerate()
        .map(|(n, item)| parse_entry(item, prefix).with_context(|| format!("entry {n}")))
        .collect()
}

fn parse_entry(item: &Value, prefix: &str) -> anyhow::Result<Entry> {
    let Value::Object(fields) = item else {
        bail!("not an object");
    };
    let key = match field(fields, "key") {
        Some(Value::String(key)) => key,
        Some(_) => bail!("\"key\" is not a string"),
        None => bail!("no \"key\""),
    };
    let flags = match field(fields, "flags") {
        None | Some(Value::Null) => 0,
        Some(value) => value
            .as_u64()
            .with_context(|| format!("\"flags\" of {key:?} is not an unsigned integer"))?,
    };
    let value = match field(fields, "value") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .with_context(|| format!("\"value\" of {key:?} is not valid base64"))?,
        Some(_) => bail!("\"value\" of {key:?} is not a base64 string"),
    };
    Ok(Entry {
        key: format!("{prefix}{key}"),
        flags,
        value,
    })
}

/// The field named `name`, ignoring case; an exact match wins over a case-folded one.
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// Reads `data`: `@FILE`, `-` for standard input, or the JSON itself.
pub fn read_data(data: &str) -> anyhow::Result<String> {
    if let Some(path) = data.strip_prefix('@') {
        return std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"));
    }
    if data == "-" {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    Ok(data.to_string())
}

/// `colony kv export PREFIX`.
pub async fn export(client: &ApiClient, prefix: &str) -> anyhow::Result<()> {
    let answer = client
        .get(&format!("/v1/kv/{}?recurse", encode_key(prefix)))
        .await?;
    let pairs = if answer.status == hyper::StatusCode::NOT_FOUND {
        Vec::new()
    } else {
        match answer.ok()?.json()? {
            Value::Array(pairs) => pairs,
            other => bail!("the agent answered a recursive read with {other}"),
        }
    };
    let document = export_document(&pairs)?;
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}

/// `colony kv import DATA`: checks the whole document, then writes it chunk by chunk.
pub async fn import(
    client: &ApiClient,
    data: &str,
    prefix: &str,
    json_out: bool,
) -> anyhow::Result<()> {
    let entries = parse_document(&read_data(data)?, prefix)?;
    let total = entries.len();
    let mut written = 0;
    for chunk in chunks(&entries) {
        write_chunk(client, chunk).await.with_context(|| {
            format!(
                "{written} of {total} keys written; stopped at {:?}",
                chunk[0].key
            )
        })?;
        written += chunk.len();
        if !json_out && total > CHUNK_KEYS {
            eprint!("\rimported {written}/{total}");
        }
    }
    if !json_out && total > CHUNK_KEYS {
        eprintln!();
    }
    if json_out {
        println!("{}", json!({ "imported": written }));
    } else {
        println!("imported {written} keys");
    }
    Ok(())
}

/// `entries` cut into transactions: at most [`CHUNK_KEYS`] keys, and no more than
/// [`CHUNK_VALUE_BYTES`] of values unless one value alone is larger.
fn chunks(entries: &[Entry]) -> Vec<&[Entry]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, entry) in entries.iter().enumerate() {
        let is_full = i - start == CHUNK_KEYS || bytes + entry.value.len() > CHUNK_VALUE_BYTES;
        if i > start && is_full {
            out.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += entry.value.len();
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Writes `chunk` in one transaction.
async fn write_chunk(client: &ApiClient, chunk: &[Entry]) -> anyhow::Result<()> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let ops: Vec<Value> = chunk
        .iter()
        .map(|entry| {
            json!({ "KV": {
                "Verb": "set",
                "Key": entry.key,
                "Flags": entry.flags,
                "Value": engine.encode(&entry.value),
            }})
        })
        .collect();
    let body = serde_json::to_vec(&ops)?;
    client.put("/v1/txn", body).await?.ok()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consul_export_parses_with_any_field_case_and_a_prefix() {
        let text = r#"[
            {"key": "app/a", "flags": 7, "value": "aGVsbG8="},
            {"Key": "app/folder/", "Flags": 0, "Value": ""},
            {"KEY": "app/b", "value": null}
        ]"#;
        let entries = parse_document(text, "copy/").expect("valid");
        assert_eq!(
            entries,
            vec![
                Entry {
                    key: "copy/app/a".into(),
                    flags: 7,
                    value: b"hello".to_vec()
                },
                Entry {
                    key: "copy/app/folder/".into(),
                    flags: 0,
                    value: Vec::new()
                },
                Entry {
                    key: "copy/app/b".into(),
                    flags: 0,
                    value: Vec::new()
                },
            ]
        );
    }

    #[test]
    fn bad_documents_are_refused_naming_the_entry() {
        let cases = [
            ("{}", "JSON array"),
            ("[1]", "entry 0"),
            (
                r#"[{"key": "a", "value": "aGk="}, {"value": "aGk="}]"#,
                "entry 1",
            ),
            (
                r#"[{"key": "a", "value": "not base64!"}]"#,
                "not valid base64",
            ),
            (r#"[{"key": "a", "flags": -1}]"#, "unsigned integer"),
            (r#"[{"key": 5}]"#, "not a string"),
            ("[", "not valid JSON"),
        ];
        for (text, expected) in cases {
            let error = parse_document(text, "").expect_err(text);
            let message = format!("{error:#}");
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn chunks_hold_64_keys_or_1_mib_of_values_and_keep_order() {
        let entry = |n: usize, size: usize| Entry {
            key: format!("k{n}"),
            flags: 0,
            value: vec![0; size],
        };
        let small: Vec<Entry> = (0..130).map(|n| entry(n, 10)).collect();
        let sizes: Vec<usize> = chunks(&small).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![64, 64, 2]);
        let big: Vec<Entry> = (0..5).map(|n| entry(n, 400 * 1024)).collect();
        let sizes: Vec<usize> = chunks(&big).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        let huge = vec![entry(0, 3 * 1024 * 1024), entry(1, 1)];
        let sizes: Vec<usize> = chunks(&huge).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1, 1], "a value over the budget goes alone");
        let keys: Vec<&str> = chunks(&small)
            .into_iter()
            .flatten()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(keys.len(), 130);
        assert_eq!(keys[64], "k64");
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn an_export_round_trips_through_parse() {
        let pairs = vec![
            json!({"Key": "k/1", "Flags": 3, "Value": "AAEC", "ModifyIndex": 9}),
            json!({"Key": "k/dir/", "Flags": 0, "Value": null}),
        ];
        let document = export_document(&pairs).expect("export");
        assert_eq!(document[1]["value"], "");
        let entries = parse_document(&document.to_string(), "").expect("parse");
        assert_eq!(entries[0].value, vec![0, 1, 2]);
        assert_eq!(entries[0].flags, 3);
        assert_eq!(entries[1].key, "k/dir/");
    }
}
