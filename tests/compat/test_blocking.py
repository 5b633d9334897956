"""Blocking queries (?index=&wait=) and X-Consul-Index
(https://developer.hashicorp.com/consul/api-docs/features/blocking).

* A query with index=N blocks until the result's index exceeds N or ``wait``
  elapses (plus up to wait/16 jitter), then returns the current index.
* A change wakes it promptly.
"""

from __future__ import annotations

import threading
import time

import requests
from consul import Check

from compat_helpers import unique


class Blocked:
    """Run ``fn`` in a thread; remember its result/exception and when it returned."""

    def __init__(self, fn):
        self.result = None
        self.error: BaseException | None = None
        self.returned_at: float | None = None
        self.started_at = time.monotonic()
        self._t = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._t.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in get()
            self.error = exc
        finally:
            self.returned_at = time.monotonic()

    def done(self) -> bool:
        return not self._t.is_alive()

    def get(self, timeout: float):
        self._t.join(timeout)
        assert not self._t.is_alive(), f"blocking query did not return within {timeout}s"
        if self.error:
            raise self.error
        return self.result


def _assert_still_blocking(b: Blocked, window: float = 0.5):
    # Asserting that something does NOT happen within a window: sleep is the point.
    time.sleep(window)
    assert not b.done(), f"blocking query returned early (after <{window}s) although nothing changed: {b.result!r} {b.error!r}"


def test_kv_get_blocks_until_put(agent):
    c = agent.client
    key = unique("block")
    assert c.kv.put(key, "v1") is True
    idx, entry = c.kv.get(key)
    assert entry["Value"] == b"v1"

    b = Blocked(lambda: c.kv.get(key, index=idx, wait="10s"))
    _assert_still_blocking(b)
    put_at = time.monotonic()
    assert c.kv.put(key, "v2") is True
    new_idx, new_entry = b.get(timeout=5)
    latency = b.returned_at - put_at
    assert latency < 2.0, f"blocking KV read woke {latency:.2f}s after the PUT"
    assert int(new_idx) > int(idx)
    assert new_entry["Value"] == b"v2"
    assert int(new_idx) >= new_entry["ModifyIndex"]
    c.kv.delete(key)


def test_kv_get_blocks_until_key_created(agent):
    c = agent.client
    key = unique("block-missing")
    idx, entry = c.kv.get(key)
    assert entry is None and int(idx) > 0
    b = Blocked(lambda: c.kv.get(key, index=idx, wait="10s"))
    _assert_still_blocking(b)
    assert c.kv.put(key, "born") is True
    new_idx, new_entry = b.get(timeout=5)
    assert int(new_idx) > int(idx)
    assert new_entry is not None and new_entry["Value"] == b"born"
    c.kv.delete(key)


def test_blocking_query_times_out_with_same_index(agent):
    c = agent.client
    key = unique("block-idle")
    assert c.kv.put(key, "still") is True
    idx, _ = c.kv.get(key)
    wait_s = 2.0
    t0 = time.monotonic()
    new_idx, entry = c.kv.get(key, index=idx, wait="2s")
    elapsed = time.monotonic() - t0
    assert new_idx == idx, f"index changed ({idx} -> {new_idx}) although nothing was written"
    assert entry["Value"] == b"still"
    assert elapsed >= wait_s * 0.9, f"returned after {elapsed:.2f}s, before wait={wait_s}s"
    assert elapsed <= wait_s + wait_s / 16 + 1.5, f"returned after {elapsed:.2f}s, well past wait={wait_s}s"
    c.kv.delete(key)


def test_health_service_blocks_until_check_status_changes(agent):
    c = agent.client
    name = unique("blockhealth")
    assert c.agent.service.register(name, service_id=name, check=Check.ttl("60s")) is True
    cid = f"service:{name}"

    def current():
        i, entries = c.health.service(name)
        assert len(entries) == 1
        return i, entries

    # Wait for the registration to be visible (Consul syncs it to the catalog asynchronously).
    deadline = time.monotonic() + 5
    while True:
        try:
            idx, entries = current()
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    statuses = {x["CheckID"]: x["Status"] for x in entries[0]["Checks"]}
    assert statuses[cid] == "critical"

    b = Blocked(lambda: c.health.service(name, index=idx, wait="10s", passing=True))
    _assert_still_blocking(b)
    changed_at = time.monotonic()
    assert c.agent.check.ttl_pass(cid) is True
    new_idx, passing = b.get(timeout=8)
    latency = b.returned_at - changed_at
    assert latency < 3.0, f"blocking health query woke {latency:.2f}s after the status change"
    assert int(new_idx) > int(idx)
    assert [e["Service"]["ID"] for e in passing] == [name]
    c.agent.service.deregister(name)


def test_catalog_services_blocks_until_registration(agent):
    c = agent.client
    idx, services = c.catalog.services()
    name = unique("blockcat")
    assert name not in services
    b = Blocked(lambda: c.catalog.services(index=idx, wait="10s"))
    _assert_still_blocking(b)
    assert c.agent.service.register(name, service_id=name) is True
    new_idx, new_services = b.get(timeout=8)
    assert int(new_idx) > int(idx)
    assert name in new_services
    c.agent.service.deregister(name)


def test_index_header_on_reads(agent):
    """Every blocking-capable read carries a positive X-Consul-Index."""
    for path in (
        "/v1/kv/?recurse",
        "/v1/catalog/services",
        "/v1/catalog/nodes",
        f"/v1/catalog/node/{agent.node}",
        "/v1/health/state/any",
        f"/v1/health/node/{agent.node}",
        "/v1/health/service/nope",
        "/v1/health/checks/nope",
        "/v1/session/list",
    ):
        r = requests.get(agent.url(path))
        assert r.status_code in (200, 404), f"{path} -> {r.status_code} {r.text[:200]}"
        assert "X-Consul-Index" in r.headers, f"{path} lacks X-Consul-Index"
        assert int(r.headers["X-Consul-Index"]) > 0, f"{path}: X-Consul-Index {r.headers['X-Consul-Index']}"
        # Consul's query-meta headers; a single node is its own leader.
        assert r.headers.get("X-Consul-KnownLeader") == "true", f"{path}: X-Consul-KnownLeader {r.headers.get('X-Consul-KnownLeader')!r}"
        assert "X-Consul-LastContact" in r.headers, f"{path} lacks X-Consul-LastContact"
