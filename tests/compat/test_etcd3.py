"""The etcd dialect through the unmodified ``etcd3`` Python client (PyPI), against the same
agent whose Consul API the other tests drive: one store, two dialects."""

import time

import etcd3
import pytest
from etcd3 import etcdrpc


@pytest.fixture
def etcd(agent):
    client = etcd3.client(host="127.0.0.1", port=agent.grpc_port, timeout=10)
    yield client
    client.close()


def test_put_get_prefix_and_delete(etcd):
    etcd.put("py3/a", "1")
    etcd.put("py3/b", "2")
    value, meta = etcd.get("py3/a")
    assert value == b"1"
    assert meta.version == 1 and meta.create_revision == meta.mod_revision
    assert sorted(v for v, _ in etcd.get_prefix("py3/")) == [b"1", b"2"]
    assert etcd.delete("py3/a")
    assert etcd.get("py3/a") == (None, None)


def test_binary_keys_round_trip_and_show_lossily_in_consul(etcd, agent):
    """etcd keys are bytes: one that is not UTF-8 is stored and read back as sent, and
    Consul's API (text keys, as Go encodes them) lists it with U+FFFD for the bad byte."""
    key = b"pybin/\xffk"
    etcd.put(key, b"raw")
    value, meta = etcd.get(key)
    assert value == b"raw" and meta.key == key
    assert [m.key for _, m in etcd.get_prefix(b"pybin/")] == [key]
    _, keys = agent.client.kv.get("pybin/", keys=True)
    assert keys == ["pybin/\ufffdk"]
    assert etcd.delete(key)


def test_consul_kv_and_etcd_share_one_store(etcd, agent):
    """A key written through Consul's API is read through etcd's, with the same revision."""
    agent.client.kv.put("shared/k", "from-consul")
    index, entry = agent.client.kv.get("shared/k")
    value, meta = etcd.get("shared/k")
    assert value == b"from-consul"
    assert meta.mod_revision == entry["ModifyIndex"]
    etcd.put("shared/k", "from-etcd")
    _, entry = agent.client.kv.get("shared/k")
    assert entry["Value"] == b"from-etcd"


def test_transaction_compares_value(etcd):
    etcd.put("py3/txn", "v1")
    ok, _ = etcd.transaction(
        compare=[etcd.transactions.value("py3/txn") == "v1"],
        success=[etcd.transactions.put("py3/txn", "v2")],
        failure=[],
    )
    assert ok
    ok, _ = etcd.transaction(
        compare=[etcd.transactions.value("py3/txn") == "v1"],
        success=[etcd.transactions.put("py3/txn", "v3")],
        failure=[],
    )
    assert not ok
    assert etcd.get("py3/txn")[0] == b"v2"


def test_watch_sees_a_put(etcd):
    events, cancel = etcd.watch("py3/watched")
    try:
        etcd.put("py3/watched", "x")
        event = next(events)
        assert isinstance(event, etcd3.events.PutEvent)
        assert event.value == b"x"
    finally:
        cancel()


def lease_ids(etcd) -> set[int]:
    """Every lease ID, through the raw LeaseLeases RPC (the client has no wrapper for it)."""
    response = etcd.leasestub.LeaseLeases(etcdrpc.LeaseLeasesRequest(), timeout=10)
    return {status.ID for status in response.leases}


def test_lease_keys_expire_and_sessions_are_leases(etcd, agent, wait_until):
    lease = etcd.lease(2)
    etcd.put("py3/leased", "v", lease=lease)
    assert lease.keys == [b"py3/leased"]
    granted = time.monotonic()
    wait_until(lambda: etcd.get("py3/leased") == (None, None), timeout_s=15)
    assert time.monotonic() - granted >= 1.9
    # A Consul session is an etcd lease: creating one lists one more lease.
    before = lease_ids(etcd)
    session = agent.client.session.create(ttl=30)
    after = lease_ids(etcd)
    assert len(after - before) == 1
    agent.client.session.destroy(session)
    assert lease_ids(etcd) == before


def test_lock_is_exclusive(etcd):
    first = etcd.lock("py3-lock", ttl=10)
    second = etcd.lock("py3-lock", ttl=10)
    assert first.acquire(timeout=5)
    assert not second.acquire(timeout=1)
    first.release()
    assert second.acquire(timeout=5)
    second.release()


def test_status_reports_this_member_as_leader(etcd, agent):
    status = etcd.status()
    assert status.leader is not None and status.leader.name == agent.node
    assert [m.name for m in etcd.members] == [agent.node]
