"""Sessions and KV locks (https://developer.hashicorp.com/consul/api-docs/session,
https://developer.hashicorp.com/consul/docs/automate/session).

Consul semantics asserted:
* create returns {"ID"}; info/list/node show it (default check serfHealth,
  Behavior "release", LockDelay 15s in nanoseconds); destroy removes it.
* ?acquire by a session when another holds the key -> false; ?release by the
  holder -> true and no lock-delay; acquiring bumps LockIndex and sets Session.
* Invalidation (destroy, TTL expiry, a session check going critical) releases
  (Behavior=release) or deletes (Behavior=delete) held keys, and arms the
  lock-delay: nobody can acquire the key until LockDelay has passed.
* TTL sessions are invalidated some time between TTL and 2*TTL after the last
  renewal; renew of an unknown session -> 404.
"""

from __future__ import annotations

import time

import pytest
from consul import Check, NotFound

from compat_helpers import unique, wait_until

NS = 1_000_000_000


def _holder(c, key):
    _, entry = c.kv.get(key)
    return entry.get("Session") if entry else None


def test_session_create_info_list_node_renew_destroy(agent):
    c = agent.client
    name = unique("sess")
    sid = c.session.create(name=name)
    assert isinstance(sid, str) and len(sid) == 36, f"session ID should be a UUID, got {sid!r}"

    index, info = c.session.info(sid)
    assert int(index) > 0
    assert info["ID"] == sid
    assert info["Name"] == name
    assert info["Node"] == agent.node
    assert info["Behavior"] == "release"
    assert info["LockDelay"] == 15 * NS, "default lock-delay is 15s (reported in ns)"
    checks = set(info.get("NodeChecks") or []) | set(info.get("Checks") or [])
    assert "serfHealth" in checks, f"default session check is serfHealth: {info}"
    assert info["CreateIndex"] > 0

    _, sessions = c.session.list()
    assert sid in {s["ID"] for s in sessions}
    _, on_node = c.session.node(agent.node)
    assert sid in {s["ID"] for s in on_node}

    ttl_sid = c.session.create(name=unique("ttl"), ttl=30, lock_delay=0, behavior="delete")
    _, tinfo = c.session.info(ttl_sid)
    assert tinfo["TTL"] == "30s"
    assert tinfo["Behavior"] == "delete"
    assert tinfo["LockDelay"] == 0
    renewed = c.session.renew(ttl_sid)
    assert renewed["ID"] == ttl_sid
    assert renewed["TTL"] == "30s"

    assert c.session.destroy(sid) is True
    assert c.session.destroy(ttl_sid) is True
    _, info = c.session.info(sid)
    assert info is None
    _, sessions = c.session.list()
    assert not {sid, ttl_sid} & {s["ID"] for s in sessions}
    with pytest.raises(NotFound):
        c.session.renew(sid)


def test_second_session_cannot_acquire_held_key_and_release(agent):
    c = agent.client
    key = unique("lock")
    s1 = c.session.create(name="holder", lock_delay=0)
    s2 = c.session.create(name="contender", lock_delay=0)

    assert c.kv.put(key, "s1 data", acquire=s1) is True
    _, entry = c.kv.get(key)
    assert entry["Session"] == s1
    assert entry["LockIndex"] == 1
    assert entry["Value"] == b"s1 data"

    assert c.kv.put(key, "s2 data", acquire=s2) is False
    _, entry = c.kv.get(key)
    assert (entry["Session"], entry["Value"]) == (s1, b"s1 data")

    # Re-acquire by the holder is allowed (and updates the value) without bumping LockIndex.
    assert c.kv.put(key, "s1 again", acquire=s1) is True
    _, entry = c.kv.get(key)
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (s1, 1, b"s1 again")

    # Only the holder can release.
    assert c.kv.put(key, "x", release=s2) is False
    assert _holder(c, key) == s1
    assert c.kv.put(key, "released", release=s1) is True
    _, entry = c.kv.get(key)
    assert entry.get("Session") in (None, "")

    # A release arms no lock-delay: s2 gets it at once.
    assert c.kv.put(key, "s2 data", acquire=s2) is True
    _, entry = c.kv.get(key)
    assert (entry["Session"], entry["LockIndex"]) == (s2, 2)

    c.session.destroy(s1)
    c.session.destroy(s2)
    c.kv.delete(key)


def test_destroy_releases_lock(agent):
    c = agent.client
    key = unique("lockd")
    s1 = c.session.create(lock_delay=0)
    assert c.kv.put(key, "held", acquire=s1) is True
    assert c.session.destroy(s1) is True
    _, entry = c.kv.get(key)
    assert entry is not None, "behavior=release keeps the key"
    assert entry.get("Session") in (None, ""), f"key still locked after destroy: {entry}"
    assert entry["Value"] == b"held"

    s2 = c.session.create(lock_delay=0)
    assert c.kv.put(key, "mine", acquire=s2) is True
    c.session.destroy(s2)
    c.kv.delete(key)


def test_behavior_delete_deletes_key_on_destroy(agent):
    c = agent.client
    key = unique("ephemeral")
    s = c.session.create(behavior="delete", lock_delay=0)
    assert c.kv.put(key, "tmp", acquire=s) is True
    assert c.kv.get(key)[1] is not None
    assert c.session.destroy(s) is True
    assert c.kv.get(key)[1] is None, "behavior=delete must delete held keys on invalidation"


def test_lock_delay_honoured(agent):
    c = agent.client
    key = unique("lockdelay")
    delay = 3
    s1 = c.session.create(lock_delay=delay)
    _, info = c.session.info(s1)
    assert info["LockDelay"] == delay * NS
    assert c.kv.put(key, "s1", acquire=s1) is True

    s2 = c.session.create(lock_delay=0)
    assert c.session.destroy(s1) is True
    invalidated_at = time.monotonic()
    assert _holder(c, key) in (None, ""), "destroy releases the key"

    assert c.kv.put(key, "s2", acquire=s2) is False, "acquire within lock-delay must fail"
    # Asserting something does NOT happen within a window: a sleep is the point.
    time.sleep(1.0)
    if time.monotonic() - invalidated_at < delay - 0.3:
        assert c.kv.put(key, "s2", acquire=s2) is False, "acquire within lock-delay must still fail"

    wait_until(
        lambda: c.kv.put(key, "s2", acquire=s2),
        delay + 10,
        interval_s=0.1,
        message="acquire to succeed once the lock-delay has passed",
    )
    elapsed = time.monotonic() - invalidated_at
    assert elapsed >= delay - 0.3, f"acquired after {elapsed:.2f}s, inside the {delay}s lock-delay"
    assert _holder(c, key) == s2
    c.session.destroy(s2)
    c.kv.delete(key)


def test_lock_delay_does_not_block_plain_writes(agent):
    c = agent.client
    key = unique("lockdelay-write")
    s1 = c.session.create(lock_delay=10)
    assert c.kv.put(key, "s1", acquire=s1) is True
    assert c.session.destroy(s1) is True
    assert c.kv.put(key, "plain write") is True, "lock-delay only blocks acquire, not ordinary PUTs"
    assert c.kv.get(key)[1]["Value"] == b"plain write"
    c.kv.delete(key)


def test_session_ttl_expiry_releases_lock(agent):
    c = agent.client
    key = unique("ttllock")
    s = c.session.create(ttl=10, lock_delay=0)
    assert c.kv.put(key, "v", acquire=s) is True
    created = time.monotonic()

    # Consul invalidates between TTL and 2*TTL after the last renewal.
    wait_until(lambda: c.session.info(s)[1] is None, 30, interval_s=0.25, message="TTL session to expire")
    elapsed = time.monotonic() - created
    assert elapsed >= 9.5, f"session expired after {elapsed:.1f}s, before its 10s TTL"
    wait_until(lambda: _holder(c, key) in (None, ""), 5, message="expired session's lock to be released")
    assert c.kv.get(key)[1]["Value"] == b"v"
    c.kv.delete(key)


def test_session_invalidated_when_its_check_goes_critical(agent):
    c = agent.client
    svc = unique("sesscheck")
    assert c.agent.service.register(svc, service_id=svc, check=Check.ttl("60s")) is True
    cid = f"service:{svc}"
    assert c.agent.check.ttl_pass(cid) is True

    key = unique("checklock")
    s = c.session.create(checks=["serfHealth", cid], lock_delay=0)
    _, info = c.session.info(s)
    # Checks / NodeChecks / ServiceChecks depending on the Consul version: just find it.
    assert cid in str(info), f"session must list its check {cid}: {info}"
    assert c.kv.put(key, "v", acquire=s) is True

    assert c.agent.check.ttl_fail(cid, "down") is True
    wait_until(lambda: c.session.info(s)[1] is None, 10, message="session with a critical check to be invalidated")
    wait_until(lambda: _holder(c, key) in (None, ""), 5, message="lock held by the invalidated session to be released")
    c.kv.delete(key)
    c.agent.service.deregister(svc)


def test_session_create_with_critical_check_is_rejected(agent):
    c = agent.client
    svc = unique("critcheck")
    assert c.agent.service.register(svc, service_id=svc, check=Check.ttl("60s")) is True
    cid = f"service:{svc}"  # TTL checks start critical
    with pytest.raises(Exception) as ei:
        c.session.create(checks=["serfHealth", cid])
    assert "critical" in str(ei.value).lower() or cid in str(ei.value), str(ei.value)
    c.agent.service.deregister(svc)
