"""JSON field names are matched case-insensitively, as Go's encoding/json does
in Consul. (py-consul itself relies on this: it sends "name", "checks",
"ttl", "serviceid", "lockdelay", ...)."""

from __future__ import annotations

import requests

from compat_helpers import describe, unique


def test_lowercase_service_registration(agent):
    c = agent.client
    name = unique("lower")
    r = requests.put(
        agent.url("/v1/agent/service/register"),
        json={"name": name, "id": name, "port": 80, "tags": ["x"], "check": {"ttl": "10s", "notes": "lc"}},
    )
    assert r.status_code == 200, describe(r)
    svc = c.agent.services().get(name)
    assert svc is not None, f"lowercase-registered service missing: {sorted(c.agent.services())}"
    assert (svc["Service"], svc["Port"], svc["Tags"]) == (name, 80, ["x"])
    chk = c.agent.checks().get(f"service:{name}")
    assert chk is not None, "the lowercase 'check' block must create a check"
    assert chk.get("Type") == "ttl"
    assert chk["Notes"] == "lc"
    assert c.agent.check.ttl_pass(f"service:{name}") is True
    c.agent.service.deregister(name)


def test_mixed_case_equivalent_to_canonical(agent):
    c = agent.client
    canon, mixed = unique("canon"), unique("mixed")
    body = lambda n, keys: {keys[0]: n, keys[1]: 8080, keys[2]: {"a": "b"}, keys[3]: "127.0.0.1"}
    r1 = requests.put(agent.url("/v1/agent/service/register"), json=body(canon, ("Name", "Port", "Meta", "Address")))
    r2 = requests.put(agent.url("/v1/agent/service/register"), json=body(mixed, ("nAmE", "PORT", "meta", "aDDress")))
    assert r1.status_code == 200, describe(r1)
    assert r2.status_code == 200, describe(r2)
    services = c.agent.services()
    strip = lambda s: {k: v for k, v in s.items() if k not in ("ID", "Service", "ContentHash")}
    assert strip(services[mixed]) == strip(services[canon])
    c.agent.service.deregister(canon)
    c.agent.service.deregister(mixed)


def test_lowercase_check_register(agent):
    c = agent.client
    cid = unique("lc-check")
    r = requests.put(agent.url("/v1/agent/check/register"), json={"name": "lc", "id": cid, "ttl": "30s", "status": "passing"})
    assert r.status_code == 200, describe(r)
    chk = c.agent.checks().get(cid)
    assert chk is not None
    assert (chk["Name"], chk["Status"]) == ("lc", "passing")
    c.agent.check.deregister(cid)


def test_lowercase_session_and_catalog_bodies(agent):
    c = agent.client
    r = requests.put(agent.url("/v1/session/create"), json={"name": "lc-sess", "behavior": "delete", "lockdelay": "2s"})
    assert r.status_code == 200, describe(r)
    sid = r.json()["ID"]
    _, info = c.session.info(sid)
    assert (info["Name"], info["Behavior"], info["LockDelay"]) == ("lc-sess", "delete", 2_000_000_000)
    c.session.destroy(sid)

    node = unique("lc-node")
    r = requests.put(agent.url("/v1/catalog/register"),
                     json={"node": node, "address": "127.0.0.3", "service": {"service": "lcsvc", "port": 1}})
    assert r.status_code == 200, describe(r)
    _, inst = c.catalog.service("lcsvc")
    assert [(i["Node"], i["ServicePort"]) for i in inst] == [(node, 1)]
    assert c.catalog.deregister(node) is True
