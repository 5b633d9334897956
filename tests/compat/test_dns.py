"""Consul's DNS interface, asked with a real resolver client (``dig``, Debian's
bind9-dnsutils), services registered through an unmodified py-consul client.

Consul semantics asserted (https://developer.hashicorp.com/consul/docs/services/discovery/dns-static-lookups):
* ``<service>.service[.<dc>].consul`` answers A records of instances without a
  critical check (a TTL check starts critical); SRV records carry the port and
  point at ``<node>.node.<dc>.consul.``, or at ``<hex ip>.addr.<dc>.consul.``
  for an instance with its own address, with the address in the additional
  section.
* ``<tag>.<service>.service.consul`` and RFC 2782's ``_<service>._<tag>``
  filter by tag; ``_tcp`` means any tag.
* ``<node>.node.consul`` answers the node's address, and a reverse lookup of that
  address names the node; names match case-insensitively.
* An unknown name is NXDOMAIN with the zone's SOA; a name outside the domain
  is REFUSED (no recursion).
* UDP answers hold at most 3 instances (udp_answer_limit) without the TC bit;
  TCP answers hold them all.
* ``consul.service.consul`` lists the live servers on their RPC port.
* A client agent answers DNS through a server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
from consul import Check

from compat_helpers import LOOPBACK, eventually, unique

DIG = shutil.which("dig")


def dig(agent, name: str, qtype: str = "A", *options: str) -> str:
    if DIG is None:
        pytest.fail("dig is not installed: install Debian's bind9-dnsutils (scripts/test does)")
    command = [
        DIG,
        f"@{LOOPBACK}",
        "-p",
        str(agent.dns_port),
        "+time=3",
        "+tries=1",
        name,
        qtype,
        *options,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"
    return done.stdout


def short(agent, name: str, qtype: str = "A", *options: str) -> list[str]:
    return sorted(line for line in dig(agent, name, qtype, "+short", *options).splitlines() if line)


def records(agent, name: str, qtype: str, section: str = "+answer", *options: str) -> list[list[str]]:
    """The records of one section, each split into fields (name, ttl, class, type, data...)."""
    text = dig(agent, name, qtype, "+noall", section, *options)
    return [line.split() for line in text.splitlines() if line and not line.startswith(";")]


def status(agent, name: str, qtype: str = "A") -> str:
    text = dig(agent, name, qtype, "+noall", "+comments")
    for line in text.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    raise AssertionError(f"no status in:\n{text}")


def test_service_records_list_healthy_instances_with_ports_and_targets(agent):
    c = agent.client
    name = unique("web")
    assert c.agent.service.register(name, service_id=f"{name}-1", port=8080, tags=["v1"]) is True
    assert c.agent.service.register(
        name, service_id=f"{name}-2", port=8081, address="10.1.2.3", tags=["v2"]
    ) is True
    # A TTL check starts critical: this instance is left out until it passes.
    assert c.agent.service.register(
        name, service_id=f"{name}-3", port=8082, address="10.1.2.4", check=Check.ttl("60s")
    ) is True

    until_equal(lambda: short(agent, f"{name}.service.consul"), sorted(["10.1.2.3", agent_address(agent)]))
    srv = records(agent, f"{name}.service.consul", "SRV")
    assert sorted(int(r[6]) for r in srv) == [8080, 8081], srv
    targets = {r[7] for r in srv}
    assert f"{agent.node}.node.dc1.consul." in targets, targets
    assert "0a010203.addr.dc1.consul." in targets, targets
    glue = {(r[0], r[4]) for r in records(agent, f"{name}.service.consul", "SRV", "+additional") if r[3] == "A"}
    assert ("0a010203.addr.dc1.consul.", "10.1.2.3") in glue, glue
    assert (f"{agent.node}.node.dc1.consul.", agent_address(agent)) in glue, glue

    # Tags, in both spellings; _tcp is any tag; the datacenter may be named.
    assert short(agent, f"v2.{name}.service.consul") == ["10.1.2.3"]
    assert [r[6] for r in records(agent, f"_{name}._v1.service.consul", "SRV")] == ["8080"]
    assert len(records(agent, f"_{name}._tcp.service.dc1.consul", "SRV")) == 2

    # The critical instance joins once its check passes, and leaves when it fails.
    c.agent.check.ttl_pass(f"service:{name}-3")
    eventually(lambda: _assert_in("10.1.2.4", short(agent, f"{name}.service.consul", "A", "+tcp")))
    c.agent.check.ttl_fail(f"service:{name}-3")
    eventually(lambda: _assert_not_in("10.1.2.4", short(agent, f"{name}.service.consul", "A", "+tcp")))


def until_equal(read, expected, timeout_s: float = 5.0):
    def check():
        value = read()
        assert value == expected, value
        return value

    return eventually(check, timeout_s=timeout_s)


def _assert_in(item, items):
    assert item in items, items
    return items


def _assert_not_in(item, items):
    assert item not in items, items
    return items


def agent_address(agent) -> str:
    _, node = agent.client.catalog.node(agent.node)
    return node["Node"]["Address"]


def test_nodes_answer_their_address_and_names_match_in_any_case(agent):
    c = agent.client
    name = unique("case")
    assert c.agent.service.register(name, service_id=name, port=9000, address="10.3.0.1") is True
    address = agent_address(agent)
    assert short(agent, f"{agent.node}.node.consul") == [address]
    assert short(agent, f"{agent.node.upper()}.NODE.DC1.CONSUL") == [address]
    until_equal(lambda: short(agent, f"{name.upper()}.Service.Consul"), ["10.3.0.1"])
    assert short(agent, "0a030001.addr.consul") == ["10.3.0.1"]
    # Reverse lookups name the nodes at an address.
    reverse = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    assert f"{agent.node}.node.dc1.consul." in short(agent, reverse, "PTR")
    assert status(agent, "9.9.9.10.in-addr.arpa", "PTR") == "NXDOMAIN"


def test_unknown_names_are_nxdomain_with_soa_and_other_zones_refused(agent):
    assert status(agent, f"{unique('nope')}.service.consul") == "NXDOMAIN"
    authority = records(agent, f"{unique('nope')}.service.consul", "A", "+authority")
    assert [r[3] for r in authority] == ["SOA"], authority
    assert authority[0][4:6] == ["ns.consul.", "hostmaster.consul."], authority
    assert status(agent, "nosuchnode.node.consul") == "NXDOMAIN"
    assert status(agent, "web.service.dc9.consul") == "NXDOMAIN"
    assert status(agent, "example.com") == "REFUSED"
    # A type the name has no records of: no error, no data, the SOA.
    name = unique("nodata")
    assert agent.client.agent.service.register(name, service_id=name, port=1) is True
    eventually(lambda: _assert_in(agent_address(agent), short(agent, f"{name}.service.consul")))
    assert status(agent, f"{name}.service.consul", "TXT") == "NOERROR"
    assert records(agent, f"{name}.service.consul", "TXT") == []


def test_udp_answers_hold_three_instances_and_tcp_answers_all(agent):
    c = agent.client
    name = unique("many")
    addresses = [f"10.2.0.{i}" for i in range(1, 7)]
    for i, address in enumerate(addresses):
        assert c.agent.service.register(name, service_id=f"{name}-{i}", port=7000, address=address) is True
    until_equal(lambda: short(agent, f"{name}.service.consul", "A", "+tcp"), sorted(addresses))
    udp = dig(agent, f"{name}.service.consul", "A", "+noall", "+answer", "+comments", "+notcp")
    answers = [line for line in udp.splitlines() if line and not line.startswith(";")]
    assert len(answers) == 3, udp
    assert " tc" not in udp.split("flags:")[1].split(";")[0], "no TC bit: " + udp
    # Each UDP answer is a sample: over many queries, every instance shows up.
    seen = set()
    for _ in range(30):
        seen.update(short(agent, f"{name}.service.consul"))
    assert seen == set(addresses), seen


def test_answers_carry_the_reads_evidence(agent):
    name = unique("ev")
    assert agent.client.agent.service.register(name, service_id=name, port=1) is True
    extra = eventually(lambda: _evidence(agent, name))
    assert "freshness" in extra and f"health:service:{name}" in extra, extra


def _evidence(agent, name):
    lines = [r for r in records(agent, f"{name}.service.consul", "A", "+additional") if r[3] == "TXT"]
    assert lines and lines[0][0] == f"_evidence.{name}.service.consul.", lines
    return " ".join(lines[0][4:])


def test_consul_service_lists_the_servers_on_their_rpc_port(agent):
    me = next(m for m in agent.client.agent.members() if m["Name"] == agent.node)
    rpc_port = int(me["Tags"]["rpc_addr"].rsplit(":", 1)[1])
    srv = records(agent, "consul.service.consul", "SRV")
    assert [(r[6], r[7]) for r in srv] == [(str(rpc_port), f"{agent.node}.node.dc1.consul.")], srv
    assert short(agent, "consul.service.consul") == [me["Addr"]]


def test_garbage_datagrams_get_formerr_or_nothing_and_the_server_keeps_answering(agent):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        target = (LOOPBACK, agent.dns_port)
        # A header announcing a question that is not there: FORMERR, same id.
        s.sendto(bytes([0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 5, ord("x")]), target)
        reply, _ = s.recvfrom(4096)
        assert reply[:2] == b"\xab\xcd" and reply[2] & 0x80 and reply[3] & 0x0F == 1, reply
        # A response (QR set) and a runt get no answer at all.
        s.sendto(bytes([0, 1, 0x81, 0x80]) + bytes(8), target)
        s.sendto(b"\x00\x01", target)
        for payload in (os.urandom(n) for n in (1, 12, 100, 600, 1500)):
            s.sendto(payload, target)
        s.settimeout(0.3)
        drained = 0
        try:
            while True:
                reply, _ = s.recvfrom(4096)
                assert reply[2] & 0x80, "only answers come back"
                drained += 1
        except TimeoutError:
            pass
        assert drained <= 5
    assert agent.running()
    assert short(agent, f"{agent.node}.node.consul") == [agent_address(agent)]


def test_client_agent_answers_through_a_server(agent_factory):
    server = agent_factory()
    client = agent_factory(join=server.gossip_addr())
    name = unique("via")
    assert server.client.agent.service.register(name, service_id=name, port=5000, address="10.4.0.1") is True
    until_equal(lambda: short(client, f"{name}.service.consul"), ["10.4.0.1"], timeout_s=15.0)
    assert short(client, f"{server.node}.node.consul") == [agent_address(server)]
    # The servers, as the client's membership knows them.
    assert short(client, "consul.service.consul") == [agent_address(server)]
