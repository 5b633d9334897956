"""Node and service maintenance mode (PUT /v1/agent/maintenance,
PUT /v1/agent/service/maintenance/:id).

Consul adds a critical check ``_node_maintenance`` (node) or
``_service_maintenance:<service id>`` (service) whose Notes is the reason,
and removes it when maintenance is disabled. Node maintenance touches every
service, so these tests each get a fresh agent.
"""

from __future__ import annotations

import requests
from consul import Check

from compat_helpers import describe, eventually, unique


def _passing_ids(c, name):
    _, entries = c.health.service(name, passing=True)
    return sorted(e["Service"]["ID"] for e in entries)


def _eq(actual, expected):
    assert actual == expected, f"expected {expected!r}, got {actual!r}"


def _register_passing(c, name, sid):
    assert c.agent.service.register(name, service_id=sid, check=Check.ttl("60s")) is True
    assert c.agent.check.ttl_pass(f"service:{sid}") is True


def test_node_maintenance(fresh_agent):
    c = fresh_agent.client
    name = unique("nm")
    _register_passing(c, name, name)
    eventually(lambda: _eq(_passing_ids(c, name), [name]))

    assert c.agent.maintenance(True, "upgrading kernel") is True
    chk = c.agent.checks().get("_node_maintenance")
    assert chk is not None, f"no _node_maintenance check; agent checks: {sorted(c.agent.checks())}"
    assert chk["Status"] == "critical"
    assert chk["Notes"] == "upgrading kernel"
    assert chk["ServiceID"] == ""

    eventually(lambda: _eq(_passing_ids(c, name), []))
    _, node_checks = c.health.node(fresh_agent.node)
    assert "_node_maintenance" in {x["CheckID"] for x in node_checks}
    _, crit = c.health.state("critical")
    assert "_node_maintenance" in {x["CheckID"] for x in crit}

    assert c.agent.maintenance(False) is True
    assert "_node_maintenance" not in c.agent.checks()
    eventually(lambda: _eq(_passing_ids(c, name), [name]))


def test_service_maintenance(fresh_agent):
    c = fresh_agent.client
    name = unique("sm")
    a, b = f"{name}-a", f"{name}-b"
    _register_passing(c, name, a)
    _register_passing(c, name, b)
    eventually(lambda: _eq(_passing_ids(c, name), [a, b]))

    assert c.agent.service.maintenance(a, True, "draining") is True
    mid = f"_service_maintenance:{a}"
    chk = c.agent.checks().get(mid)
    assert chk is not None, f"no {mid} check; agent checks: {sorted(c.agent.checks())}"
    assert chk["Status"] == "critical"
    assert chk["Notes"] == "draining"
    assert chk["ServiceID"] == a

    eventually(lambda: _eq(_passing_ids(c, name), [b]))

    assert c.agent.service.maintenance(a, False) is True
    assert mid not in c.agent.checks()
    eventually(lambda: _eq(_passing_ids(c, name), [a, b]))


def test_service_maintenance_unknown_service_is_404(fresh_agent):
    missing = unique("no-such-service")
    assert fresh_agent.client.agent.service.maintenance(missing, True) is not True
    r = requests.put(fresh_agent.url(f"/v1/agent/service/maintenance/{missing}?enable=true"))
    assert r.status_code == 404, describe(r)
    assert missing in r.text or "service" in r.text.lower(), describe(r)


def test_maintenance_requires_enable_param(fresh_agent):
    r = requests.put(fresh_agent.url("/v1/agent/maintenance"))
    assert r.status_code == 400, describe(r)
    assert "enable" in r.text.lower(), describe(r)
