"""A client agent (no --server, no store) used through an unmodified py-consul
client: everything it cannot answer from its own membership view is forwarded
to a server over the internal RPC port, and it runs its own node's checks.

Consul semantics asserted:
* KV, CAS and sessions work through any agent; a session defaults to the
  agent's own node, so it is bound to the client's node.
* A service registered through a client agent belongs to the client's node
  (``/v1/catalog/service`` shows that node) and its TTL check is updated
  through that same agent.
* ``/v1/status/leader`` names the servers' leader, not the client.
"""

from __future__ import annotations

from consul import Check

from compat_helpers import check_status, unique, wait_until

T = 15.0


def _pair(agent_factory):
    server = agent_factory()
    client = agent_factory(join=server.gossip_addr())
    return server, client


def test_kv_cas_and_status_through_a_client_agent(agent_factory):
    server, client = _pair(agent_factory)
    c = client.client
    s = server.client

    # The client reports the server's leader address (the server knows it too).
    assert c.status.leader() == s.status.leader()

    key = unique("client/kv")
    assert c.kv.put(key, "one") is True
    index, entry = s.kv.get(key)
    assert entry["Value"] == b"one", entry

    # CAS through the client with a stale index fails, with the current one succeeds.
    assert c.kv.put(key, "two", cas=entry["ModifyIndex"] - 1) is False
    assert c.kv.put(key, "two", cas=entry["ModifyIndex"]) is True
    _, again = c.kv.get(key)
    assert again["Value"] == b"two"

    # A blocking query through the client wakes on a write made at the server.
    _, before = c.kv.get(key)
    s.kv.put(key, "three")
    _, after = c.kv.get(key, index=before["ModifyIndex"], wait="10s")
    assert after["Value"] == b"three"


def test_session_made_through_a_client_is_bound_to_the_clients_node(agent_factory):
    server, client = _pair(agent_factory)
    sid = client.client.session.create(ttl=30)
    _, info = server.client.session.info(sid)
    assert info is not None
    assert info["Node"] == client.node, info

    key = unique("client/lock")
    assert client.client.kv.put(key, "held", acquire=sid) is True
    _, entry = server.client.kv.get(key)
    assert entry["Session"] == sid
    assert entry["LockIndex"] == 1


def test_service_and_ttl_check_registered_through_a_client(agent_factory):
    server, client = _pair(agent_factory)
    c = client.client
    name = unique("cweb")
    assert c.agent.service.register(name, service_id=name, port=9000, check=Check.ttl("30s")) is True
    cid = f"service:{name}"

    _, nodes = server.client.catalog.service(name)
    assert [n["Node"] for n in nodes] == [client.node], nodes

    # A TTL check starts critical, and the update goes through the client agent.
    assert check_status(c, cid) == "critical"
    assert c.agent.check.ttl_pass(cid, "all good") is True
    # The server's catalog sees it (the server's own agent does not own the check).
    healthy = wait_until(
        lambda: server.client.health.service(name, passing=True)[1],
        T,
        message=lambda: f"{name} to be passing in the server's catalog",
    )
    assert [h["Node"]["Node"] for h in healthy] == [client.node], healthy
    outputs = {chk["CheckID"]: chk["Output"] for chk in healthy[0]["Checks"]}
    assert outputs[cid] == "all good", outputs


def test_a_client_without_a_server_says_so(agent_factory):
    # Retrying to join an address where nobody listens: it runs, with no server known.
    lone = agent_factory(join="127.0.0.1:9", retry_join=True, start=False)
    lone.start_serving()
    resp = lone.http().put(lone.url("/v1/kv/x"), data=b"y", timeout=5)
    assert resp.status_code == 503, (resp.status_code, resp.text)
    assert "no known consul servers" in resp.text.lower(), resp.text
    assert lone.client.status.leader() == ""


def test_a_client_keeps_registrations_made_with_no_server_and_syncs_them(agent_factory):
    # As a Consul agent does with its local state: the registration succeeds with no
    # server, the agent's own endpoints show it, and anti-entropy writes it to the catalog
    # once a server is reachable.
    lone = agent_factory(join="127.0.0.1:9", retry_join=True, start=False)
    lone.start_serving()
    c = lone.client
    name = unique("offline")
    assert c.agent.service.register(name, service_id=name, port=9100, check=Check.ttl("30s")) is True
    services = c.agent.services()
    assert services[name]["Port"] == 9100, services
    assert c.agent.checks()[f"service:{name}"]["Status"] == "critical"

    server = agent_factory()
    assert server.client.agent.join(lone.gossip_addr()) is True
    nodes = wait_until(
        lambda: server.client.catalog.service(name)[1],
        T,
        message=lambda: f"{name} to reach the catalog through anti-entropy",
    )
    assert [n["Node"] for n in nodes] == [lone.node], nodes
    assert nodes[0]["ServicePort"] == 9100
    # Once synced, the client's agent endpoints are the servers' view again.
    assert c.agent.services()[name]["Port"] == 9100
