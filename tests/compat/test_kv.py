"""/v1/kv through py-consul (and ?raw through requests, which py-consul lacks).

Consul semantics asserted (https://developer.hashicorp.com/consul/api-docs/kv):
* PUT returns ``true``/``false``; ?cas=0 only creates; ?cas=N only if ModifyIndex == N.
* GET of a missing key is 404 *with* an X-Consul-Index header.
* ?recurse returns every key under the prefix (sorted), ?keys lists keys,
  ?separator rolls keys up to the separator, ?raw returns the bare value.
* DELETE ?recurse deletes the prefix; DELETE ?cas=N only if ModifyIndex == N.
* Values are returned base64-encoded (py-consul decodes them to bytes).
"""

from __future__ import annotations

import requests

from compat_helpers import describe, unique


def test_put_get_delete(agent):
    c = agent.client
    key = f"{unique('kv')}/hello"
    assert c.kv.put(key, "world") is True
    index, entry = c.kv.get(key)
    assert int(index) > 0
    assert entry["Key"] == key
    assert entry["Value"] == b"world"
    assert entry["Flags"] == 0
    assert entry["CreateIndex"] > 0
    assert entry["ModifyIndex"] == entry["CreateIndex"]
    assert entry["LockIndex"] == 0
    assert "Session" not in entry or not entry["Session"]

    assert c.kv.put(key, "world2") is True
    _, entry2 = c.kv.get(key)
    assert entry2["Value"] == b"world2"
    assert entry2["CreateIndex"] == entry["CreateIndex"]
    assert entry2["ModifyIndex"] > entry["ModifyIndex"]

    assert c.kv.delete(key) is True
    index, gone = c.kv.get(key)
    assert gone is None
    assert int(index) > 0, "a 404 KV read still carries X-Consul-Index"
    # Deleting a missing key is not an error.
    assert c.kv.delete(key) is True


def test_binary_and_empty_values(agent):
    c = agent.client
    base = unique("kvbin")
    blob = bytes(range(256))
    assert c.kv.put(f"{base}/blob", blob) is True
    _, entry = c.kv.get(f"{base}/blob")
    assert entry["Value"] == blob

    assert c.kv.put(f"{base}/empty", None) is True
    _, entry = c.kv.get(f"{base}/empty")
    assert entry is not None
    assert entry["Value"] is None, "an empty value is returned as null"

    assert c.kv.put(f"{base}/unicode", "héllo ✓") is True
    _, entry = c.kv.get(f"{base}/unicode")
    assert entry["Value"].decode("utf-8") == "héllo ✓"
    c.kv.delete(base, recurse=True)


def test_flags(agent):
    c = agent.client
    key = unique("kvflags")
    assert c.kv.put(key, "v", flags=42) is True
    _, entry = c.kv.get(key)
    assert entry["Flags"] == 42
    big = 2**64 - 1
    assert c.kv.put(key, "v", flags=big) is True
    _, entry = c.kv.get(key)
    assert entry["Flags"] == big, "Flags is an unsigned 64-bit value"
    # A PUT without ?flags resets them to 0.
    assert c.kv.put(key, "v2") is True
    _, entry = c.kv.get(key)
    assert entry["Flags"] == 0
    c.kv.delete(key)


def test_cas(agent):
    c = agent.client
    key = unique("kvcas")
    assert c.kv.put(key, "first", cas=0) is True, "cas=0 creates a missing key"
    assert c.kv.put(key, "second", cas=0) is False, "cas=0 must not overwrite an existing key"
    _, entry = c.kv.get(key)
    assert entry["Value"] == b"first"

    mi = entry["ModifyIndex"]
    assert c.kv.put(key, "wrong", cas=mi + 1000) is False
    assert c.kv.put(key, "wrong", cas=mi - 1) is False
    _, entry = c.kv.get(key)
    assert entry["Value"] == b"first"
    assert entry["ModifyIndex"] == mi

    assert c.kv.put(key, "third", cas=mi) is True
    _, entry = c.kv.get(key)
    assert entry["Value"] == b"third"
    assert entry["ModifyIndex"] > mi
    assert c.kv.put(key, "stale", cas=mi) is False, "the old index is no longer current"
    c.kv.delete(key)


def test_recurse_keys_separator(agent):
    c = agent.client
    root = unique("tree")
    paths = ["a", "b/c", "b/d", "b/e/f", "g/"]
    for p in paths:
        assert c.kv.put(f"{root}/{p}", p.upper()) is True
    assert c.kv.put(f"{root}x", "sibling") is True  # shares the prefix without the slash

    _, entries = c.kv.get(f"{root}/", recurse=True)
    assert [e["Key"] for e in entries] == [f"{root}/{p}" for p in sorted(paths)]
    assert {e["Key"]: e["Value"] for e in entries}[f"{root}/b/c"] == b"B/C"

    _, entries = c.kv.get(root, recurse=True)
    assert f"{root}x" in [e["Key"] for e in entries], "recurse is a plain prefix match"

    _, keys = c.kv.get(f"{root}/", keys=True)
    assert keys == [f"{root}/{p}" for p in sorted(paths)]

    _, keys = c.kv.get(f"{root}/", keys=True, separator="/")
    assert keys == [f"{root}/a", f"{root}/b/", f"{root}/g/"]

    _, keys = c.kv.get(f"{root}/b/", keys=True, separator="/")
    assert keys == [f"{root}/b/c", f"{root}/b/d", f"{root}/b/e/"]

    index, nothing = c.kv.get(f"{unique('nothing')}/", recurse=True)
    assert nothing is None and int(index) > 0

    c.kv.delete(f"{root}/", recurse=True)
    c.kv.delete(f"{root}x")


def test_raw(agent):
    c = agent.client
    key = unique("kvraw")
    payload = b"\x00raw\xffbytes"
    assert c.kv.put(key, payload) is True
    r = requests.get(agent.url(f"/v1/kv/{key}"), params={"raw": ""})
    assert r.status_code == 200, describe(r)
    assert r.content == payload
    assert int(r.headers["X-Consul-Index"]) > 0

    r = requests.get(agent.url(f"/v1/kv/{unique('kvraw-missing')}"), params={"raw": ""})
    assert r.status_code == 404, describe(r)
    c.kv.delete(key)


def test_delete_recurse(agent):
    c = agent.client
    root = unique("deltree")
    for p in ("a", "b/c", "b/d"):
        assert c.kv.put(f"{root}/{p}", "x") is True
    assert c.kv.put(f"{root}-keep", "x") is True

    assert c.kv.delete(f"{root}/b/", recurse=True) is True
    _, keys = c.kv.get(f"{root}/", keys=True)
    assert keys == [f"{root}/a"]

    assert c.kv.delete(f"{root}/", recurse=True) is True
    _, keys = c.kv.get(f"{root}/", keys=True)
    assert keys is None
    _, keep = c.kv.get(f"{root}-keep")
    assert keep is not None and keep["Value"] == b"x"
    c.kv.delete(f"{root}-keep")


def test_delete_cas(agent):
    c = agent.client
    key = unique("kvdelcas")
    assert c.kv.put(key, "v") is True
    _, entry = c.kv.get(key)
    mi = entry["ModifyIndex"]
    assert c.kv.delete(key, cas=mi + 1000) is False
    assert c.kv.get(key)[1] is not None
    assert c.kv.delete(key, cas=0) is False, "a 0 index never deletes"
    assert c.kv.get(key)[1] is not None
    assert c.kv.delete(key, cas=mi) is True
    assert c.kv.get(key)[1] is None


def test_exactly_max_value_size_is_accepted(agent):
    """Consul's kv_max_value_size default is 512 KiB (524288 bytes), inclusive."""
    c = agent.client
    key = unique("kvbig")
    value = b"v" * (512 * 1024)
    assert c.kv.put(key, value) is True
    _, entry = c.kv.get(key)
    assert entry["Value"] == value
    c.kv.delete(key)


def test_consistency_modes_accepted(agent):
    """py-consul sends ?consistent=1 / ?stale=1; both must work like a default read."""
    c = agent.client
    key = unique("kvmode")
    assert c.kv.put(key, "v") is True
    for mode in ("consistent", "stale"):
        index, entry = c.kv.get(key, consistency=mode)
        assert int(index) > 0, mode
        assert entry["Value"] == b"v", mode
    c.kv.delete(key)


def test_conflicting_flags_rejected(agent):
    """Consul: ?cas, ?acquire and ?release are mutually exclusive -> 400."""
    key = unique("kvconflict")
    s = agent.client.session.create(lock_delay=0)
    r = requests.put(agent.url(f"/v1/kv/{key}"), data=b"v", params={"cas": "0", "acquire": s})
    assert r.status_code == 400, describe(r)
    assert "conflict" in r.text.lower(), describe(r)
    assert agent.client.kv.get(key)[1] is None
    agent.client.session.destroy(s)
