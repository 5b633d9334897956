"""PUT /v1/txn through py-consul's ``c.txn.put([...])``.

Consul semantics asserted (https://developer.hashicorp.com/consul/api-docs/txn):
* 200 with {"Results": [{"KV": {...}}, ...], "Errors": null} on success;
  operations apply in order, later ones see earlier ones.
* 409 with {"Errors": [{"OpIndex": i, "What": "..."}]} if any op fails, and
  then *nothing* is applied (atomic rollback). py-consul raises ClientError("409 ...").
"""

from __future__ import annotations

import base64
import json

import pytest
from consul.exceptions import ClientError

from compat_helpers import b64, unique


def _kv(verb, key, value=None, **extra):
    op = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = b64(value)
    op.update(extra)
    return {"KV": op}


def _txn_error(c, ops):
    with pytest.raises(ClientError) as ei:
        c.txn.put(ops)
    msg = str(ei.value)
    assert msg.startswith("409 "), f"a failed transaction must be HTTP 409, got: {msg[:300]}"
    body = json.loads(msg[4:])
    errors = body.get("Errors")
    assert errors, f"409 body must list Errors: {body}"
    return errors


def test_txn_set_and_get(agent):
    c = agent.client
    root = unique("txn")
    res = c.txn.put([
        _kv("set", f"{root}/a", "1"),
        _kv("set", f"{root}/b", "2", Flags=7),
        _kv("get", f"{root}/a"),
    ])
    assert res.get("Errors") in (None, []), res
    results = res["Results"]
    assert len(results) == 3
    assert [r["KV"]["Key"] for r in results] == [f"{root}/a", f"{root}/b", f"{root}/a"]
    assert base64.b64decode(results[2]["KV"]["Value"]) == b"1", "a get sees the earlier set of the same txn"
    assert results[1]["KV"]["Flags"] == 7
    assert all(r["KV"]["ModifyIndex"] > 0 for r in results)

    _, entry = c.kv.get(f"{root}/b")
    assert (entry["Value"], entry["Flags"]) == (b"2", 7)


def test_txn_cas_success_and_failure_rolls_back(agent):
    c = agent.client
    root = unique("txncas")
    assert c.kv.put(f"{root}/k", "v1") is True
    _, entry = c.kv.get(f"{root}/k")
    mi = entry["ModifyIndex"]

    res = c.txn.put([_kv("cas", f"{root}/k", "v2", Index=mi), _kv("set", f"{root}/other", "o")])
    assert res.get("Errors") in (None, []), res
    _, entry = c.kv.get(f"{root}/k")
    assert entry["Value"] == b"v2"
    assert entry["ModifyIndex"] > mi

    # Now `mi` is stale: the whole txn must fail, including the first set.
    errors = _txn_error(c, [_kv("set", f"{root}/must-not-exist", "x"), _kv("cas", f"{root}/k", "v3", Index=mi)])
    assert [e["OpIndex"] for e in errors] == [1], errors
    assert errors[0]["What"], errors
    assert c.kv.get(f"{root}/must-not-exist")[1] is None, "failed txn must not apply earlier ops"
    assert c.kv.get(f"{root}/k")[1]["Value"] == b"v2"


def test_txn_get_missing_key_fails(agent):
    c = agent.client
    root = unique("txnget")
    missing = f"{root}/missing"
    errors = _txn_error(c, [_kv("set", f"{root}/a", "1"), _kv("get", missing)])
    assert errors[0]["OpIndex"] == 1
    assert missing in errors[0]["What"] or "exist" in errors[0]["What"].lower(), errors
    assert c.kv.get(f"{root}/a")[1] is None


def test_txn_delete_and_check_not_exists(agent):
    c = agent.client
    root = unique("txndel")
    assert c.kv.put(f"{root}/a", "1") is True
    res = c.txn.put([_kv("delete", f"{root}/a"), _kv("check-not-exists", f"{root}/a")])
    assert res.get("Errors") in (None, []), res
    assert c.kv.get(f"{root}/a")[1] is None

    assert c.kv.put(f"{root}/b", "1") is True
    errors = _txn_error(c, [_kv("check-not-exists", f"{root}/b")])
    assert errors[0]["OpIndex"] == 0
    assert c.kv.get(f"{root}/b")[1]["Value"] == b"1"
