"""/v1/agent/{self,members,services,service/register,deregister,metrics},
/v1/status/{leader,peers} and /v1/catalog/* through py-consul."""

from __future__ import annotations

from consul import Check

from compat_helpers import eventually, unique


def _eq(actual, expected):
    assert actual == expected, f"expected {expected!r}, got {actual!r}"


def test_status_leader_and_peers(agent):
    c = agent.client
    leader = c.status.leader()
    assert isinstance(leader, str) and leader, f"leader must be a non-empty string, got {leader!r}"
    peers = c.status.peers()
    assert isinstance(peers, list) and leader in peers, f"peers {peers!r} must contain the leader {leader!r}"


def test_agent_self_and_members(agent):
    c = agent.client
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1"
    assert me["Config"]["NodeName"] == agent.node
    assert me["Member"]["Name"] == agent.node

    members = c.agent.members()
    assert isinstance(members, list)
    by_name = {m["Name"]: m for m in members}
    assert agent.node in by_name, f"members {list(by_name)} must include {agent.node}"
    # Serf status 1 == alive
    assert by_name[agent.node]["Status"] == 1


def test_agent_metrics(agent):
    m = agent.client.agent.metrics()
    for key in ("Timestamp", "Gauges", "Points", "Counters", "Samples"):
        assert key in m, f"metrics JSON lacks {key!r}: {sorted(m)}"
        if key != "Timestamp":
            assert isinstance(m[key], list)


def test_agent_service_register_list_deregister(agent):
    c = agent.client
    name = unique("svc")
    sid = f"{name}-1"
    assert c.agent.service.register(
        name,
        service_id=sid,
        address="127.0.0.1",
        port=8123,
        tags=["a", "b"],
        meta={"version": "1.2"},
        check=Check.ttl("60s"),
    ) is True
    svc = c.agent.services()[sid]
    assert svc["ID"] == sid
    assert svc["Service"] == name
    assert svc["Port"] == 8123
    assert svc["Address"] == "127.0.0.1"
    assert sorted(svc["Tags"]) == ["a", "b"]
    assert svc["Meta"] == {"version": "1.2"}

    # Consul's default name for a service's single check.
    chk = c.agent.checks()[f"service:{sid}"]
    assert chk["Name"] == f"Service '{name}' check"

    # Re-registering the same ID updates it in place.
    assert c.agent.service.register(name, service_id=sid, port=9999, tags=["c"]) is True
    svc = c.agent.services()[sid]
    assert (svc["Port"], svc["Tags"]) == (9999, ["c"])

    assert c.agent.service.deregister(sid) is True
    assert sid not in c.agent.services()
    assert f"service:{sid}" not in c.agent.checks(), "deregistering a service removes its checks"


def test_catalog_services_service_nodes_node_datacenters(agent):
    c = agent.client
    name = unique("cat")
    sid = f"{name}-x"
    assert c.agent.service.register(name, service_id=sid, port=7001, tags=["primary"], address="127.0.0.1")

    assert c.catalog.datacenters() == ["dc1"]

    def services_view():
        index, services = c.catalog.services()
        assert int(index) > 0
        assert services.get(name) == ["primary"], f"catalog services: {services}"

    eventually(services_view)

    def service_view():
        _, instances = c.catalog.service(name)
        assert len(instances) == 1, instances
        return instances[0]

    inst = eventually(service_view)
    assert inst["Node"] == agent.node
    assert inst["Datacenter"] == "dc1"
    assert inst["ServiceID"] == sid
    assert inst["ServiceName"] == name
    assert inst["ServicePort"] == 7001
    assert inst["ServiceTags"] == ["primary"]
    assert inst["ServiceAddress"] == "127.0.0.1"
    assert inst["Address"], "node address must be set"

    _, tagged = c.catalog.service(name, tag="primary")
    assert [i["ServiceID"] for i in tagged] == [sid]
    _, untagged = c.catalog.service(name, tag="other")
    assert untagged == []

    _, nodes = c.catalog.nodes()
    by_name = {n["Node"]: n for n in nodes}
    assert agent.node in by_name
    assert by_name[agent.node]["Datacenter"] == "dc1"
    assert by_name[agent.node]["Address"]

    _, node = c.catalog.node(agent.node)
    assert node["Node"]["Node"] == agent.node
    assert sid in node["Services"]
    assert node["Services"][sid]["Service"] == name
    assert node["Services"][sid]["Port"] == 7001

    assert c.agent.service.deregister(sid)

    def gone():
        _, instances = c.catalog.service(name)
        assert instances == []
        _, services = c.catalog.services()
        assert name not in services

    eventually(gone)


def test_catalog_register_and_deregister_external_node(agent):
    c = agent.client
    node = unique("ext-node")
    svc = unique("extsvc")
    sid = f"{svc}-1"
    # 127.0.0.2 is loopback: never contacted (catalog checks are not run by the agent).
    assert c.catalog.register(
        node,
        "127.0.0.2",
        service={"Service": svc, "ID": sid, "Port": 9000, "Tags": ["ext"]},
        check={"Node": node, "CheckID": f"{sid}-chk", "Name": "ext check", "Status": "passing", "ServiceID": sid},
    ) is True

    _, nodes = c.catalog.nodes()
    by_name = {n["Node"]: n for n in nodes}
    assert node in by_name, f"catalog nodes {list(by_name)} must include {node}"
    assert by_name[node]["Address"] == "127.0.0.2"

    _, instances = c.catalog.service(svc)
    assert [(i["Node"], i["ServiceID"], i["ServicePort"], i["Address"]) for i in instances] == [
        (node, sid, 9000, "127.0.0.2")
    ]

    _, entries = c.health.service(svc, passing=True)
    assert [e["Service"]["ID"] for e in entries] == [sid]
    assert {x["CheckID"] for x in entries[0]["Checks"]} == {f"{sid}-chk"}

    _, node_view = c.catalog.node(node)
    assert list(node_view["Services"]) == [sid]

    # External services are not the agent's.
    assert sid not in c.agent.services()

    # Deregister just the service, then the node.
    assert c.catalog.deregister(node, service_id=sid) is True
    _, instances = c.catalog.service(svc)
    assert instances == []
    _, nodes = c.catalog.nodes()
    assert node in {n["Node"] for n in nodes}, "deregistering a service must keep the node"

    assert c.catalog.deregister(node) is True
    _, nodes = c.catalog.nodes()
    assert node not in {n["Node"] for n in nodes}
    _, checks = c.health.node(node)
    assert checks == []


def test_agent_service_definition_and_unknown_ids(agent):
    c = agent.client
    name = unique("def")
    assert c.agent.service.register(name, service_id=name, port=5555, tags=["d"]) is True
    d = c.agent.service_definition(name)
    assert (d["ID"], d["Service"], d["Port"], d["Tags"]) == (name, name, 5555, ["d"])
    missing = unique("missing")
    assert c.agent.service_definition(missing) is None, "unknown service ID -> 404"
    assert c.agent.service.deregister(missing) is False, "deregistering an unknown service ID -> 404"
    assert c.agent.service.deregister(name) is True


def test_multiple_checks_and_replace_existing_checks(agent):
    c = agent.client
    name = unique("multi")
    assert c.agent.service.register(
        name, service_id=name, check=Check.ttl("60s"), extra_checks=[Check.ttl("60s")]
    ) is True
    ids = sorted(cid for cid, chk in c.agent.checks().items() if chk["ServiceID"] == name)
    assert ids == [f"service:{name}:1", f"service:{name}:2"], "several checks are numbered service:<id>:<n>"

    # Without replace-existing-checks the old checks stay...
    assert c.agent.service.register(name, service_id=name, check=Check.ttl("60s")) is True
    ids = sorted(cid for cid, chk in c.agent.checks().items() if chk["ServiceID"] == name)
    assert ids == [f"service:{name}", f"service:{name}:1", f"service:{name}:2"]
    # ...with it, checks missing from the new definition are removed.
    assert c.agent.service.register(
        name, service_id=name, check=Check.ttl("60s"), replace_existing_checks=True
    ) is True
    ids = sorted(cid for cid, chk in c.agent.checks().items() if chk["ServiceID"] == name)
    assert ids == [f"service:{name}"]
    assert c.agent.service.deregister(name) is True
