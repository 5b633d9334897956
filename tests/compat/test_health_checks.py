"""Agent-run health checks (HTTP / TCP / TTL) against real local targets,
flap damping, DeregisterCriticalServiceAfter, and the /v1/health endpoints.

Consul semantics asserted (https://developer.hashicorp.com/consul/docs/services/usage/checks):
* HTTP check: any 2xx -> passing, 429 -> warning, anything else -> critical.
* TCP check: connect succeeds -> passing, refused -> critical.
* TTL check: starts critical; /agent/check/pass|warn|fail set the status
  (the ``note`` becomes the Output); no update within TTL -> critical.
* A service's only check gets CheckID ``service:<service id>``.
* SuccessBeforePassing / FailuresBeforeCritical: N consecutive results needed
  before the status flips.
* ?passing on /health/service drops instances with any non-passing check
  (node checks included); ?tag filters (repeatable, AND).
"""

from __future__ import annotations

import time

import requests
from consul import Check

from compat_helpers import agent_check, check_status, describe, eventually, unique, wait_until

INTERVAL = "500ms"
T = 15.0  # deadline for a status transition (generous vs. a 500ms..1s interval)


def _register(client, name, check, **kw):
    assert client.agent.service.register(name, service_id=kw.pop("service_id", name), check=check, **kw) is True


def _await_status(client, cid, status, timeout=T):
    return wait_until(
        lambda: check_status(client, cid) == status,
        timeout,
        message=lambda: f"check {cid} to become {status} (now {check_status(client, cid)!r})",
    )


def _deregister(client, sid):
    client.agent.service.deregister(sid)


def _assert_eq(actual, expected):
    assert actual == expected, f"expected {expected!r}, got {actual!r}"


# --------------------------------------------------------------------------- HTTP


def test_http_check_passing_warning_critical(agent, http_server):
    c = agent.client
    srv = http_server(200)
    name = unique("web")
    _register(c, name, Check.http(srv.url, INTERVAL, timeout="2s"), port=8080, tags=["t1"])
    cid = f"service:{name}"

    chk = wait_until(lambda: agent_check(c, cid), T, message=f"check {cid} to be registered")
    assert chk["ServiceID"] == name
    assert chk["ServiceName"] == name
    assert chk["Node"] == agent.node
    assert chk.get("Type") == "http"

    _await_status(c, cid, "passing")
    assert srv.count(200) >= 1, "agent reported passing without ever contacting the HTTP target"

    def only_this_instance_passing():
        _, entries = c.health.service(name, passing=True)
        assert [e["Service"]["ID"] for e in entries] == [name]

    eventually(only_this_instance_passing)

    srv.set_code(429)
    _await_status(c, cid, "warning")

    def warning_in_health_view():
        _, entries = c.health.service(name, passing=True)
        assert entries == [], "a warning instance must be excluded by ?passing"
        _, entries = c.health.service(name)
        assert len(entries) == 1
        statuses = {chk["CheckID"]: chk["Status"] for chk in entries[0]["Checks"]}
        assert statuses[cid] == "warning"

    eventually(warning_in_health_view)

    srv.set_code(500)
    _await_status(c, cid, "critical")

    srv.set_code(204)  # any 2xx is passing
    _await_status(c, cid, "passing")
    _deregister(c, name)


# --------------------------------------------------------------------------- TCP


def test_tcp_check_listener_closed_and_reopened(agent, tcp_listener):
    c = agent.client
    lst = tcp_listener()
    name = unique("tcpsvc")
    _register(c, name, Check.tcp("127.0.0.1", lst.port, INTERVAL, timeout="1s"), port=lst.port)
    cid = f"service:{name}"
    wait_until(lambda: agent_check(c, cid), T, message=f"check {cid} to be registered")
    assert agent_check(c, cid).get("Type") == "tcp"

    _await_status(c, cid, "passing")
    lst.close()
    _await_status(c, cid, "critical")
    lst.reopen()
    _await_status(c, cid, "passing")
    _deregister(c, name)


# --------------------------------------------------------------------------- TTL


def test_ttl_check_pass_warn_fail(agent):
    c = agent.client
    name = unique("ttlsvc")
    _register(c, name, Check.ttl("60s"))
    cid = f"service:{name}"
    chk = agent_check(c, cid)
    assert chk is not None, f"expected check {cid}; agent has {sorted(c.agent.checks())}"
    assert chk["Status"] == "critical", "a TTL check starts critical until first updated"
    assert chk.get("Type") == "ttl"

    assert c.agent.check.ttl_pass(cid, "all good") is True
    chk = agent_check(c, cid)
    assert (chk["Status"], chk["Output"]) == ("passing", "all good")
    # Colony's evidence on the check: just observed by this agent, so fresh, stamped with
    # the wall clock (its TTL runs on the monotonic clock; the stamp must not).
    evidence = chk["Evidence"]
    assert evidence["freshness"] == "fresh", evidence
    observed_ms = int(evidence["observed"].split(".")[0])
    assert abs(observed_ms - time.time() * 1000) < 60_000, evidence

    assert c.agent.check.ttl_warn(cid, "meh") is True
    chk = agent_check(c, cid)
    assert (chk["Status"], chk["Output"]) == ("warning", "meh")

    assert c.agent.check.ttl_fail(cid, "boom") is True
    chk = agent_check(c, cid)
    assert (chk["Status"], chk["Output"]) == ("critical", "boom")

    # The health (catalog) view agrees with the agent view.
    def health_view_critical():
        _, checks = c.health.checks(name)
        assert {(x["CheckID"], x["Status"], x["Output"]) for x in checks} == {(cid, "critical", "boom")}

    eventually(health_view_critical)
    _deregister(c, name)


def test_ttl_expiry_goes_critical(agent):
    c = agent.client
    name = unique("ttlexp")
    _register(c, name, Check.ttl("1s"))
    cid = f"service:{name}"
    assert c.agent.check.ttl_pass(cid) is True
    passed_at = time.monotonic()
    assert check_status(c, cid) == "passing"
    _await_status(c, cid, "critical", timeout=10)
    elapsed = time.monotonic() - passed_at
    assert elapsed >= 0.9, f"TTL check expired after {elapsed:.2f}s, before its 1s TTL"
    _deregister(c, name)


def test_ttl_update_endpoint(agent):
    """PUT /v1/agent/check/update/:id with {"Status", "Output"} (not wrapped by py-consul)."""
    c = agent.client
    name = unique("ttlupd")
    _register(c, name, Check.ttl("60s"))
    cid = f"service:{name}"
    r = requests.put(agent.url(f"/v1/agent/check/update/{cid}"), json={"Status": "warning", "Output": "upd"})
    assert r.status_code == 200, describe(r)
    chk = agent_check(c, cid)
    assert (chk["Status"], chk["Output"]) == ("warning", "upd")

    r = requests.put(agent.url(f"/v1/agent/check/update/{cid}"), json={"Status": "bogus"})
    assert r.status_code == 400, describe(r)
    assert "status" in r.text.lower(), describe(r)
    assert check_status(c, cid) == "warning"
    _deregister(c, name)


def test_standalone_check_register_deregister(agent):
    c = agent.client
    name = unique("hasextra")
    assert c.agent.service.register(name, service_id=name, port=1) is True
    cid = unique("extra-check")
    assert c.agent.check.register("extra", check=Check.ttl("60s"), check_id=cid, notes="some notes", service_id=name)
    chk = agent_check(c, cid)
    assert chk is not None
    assert chk["Name"] == "extra"
    assert chk["Notes"] == "some notes"
    assert chk["ServiceID"] == name
    assert chk["Status"] == "critical"

    assert c.agent.check.ttl_pass(cid) is True

    def health_view_passing():
        _, checks = c.health.checks(name)
        assert [(x["CheckID"], x["Status"]) for x in checks] == [(cid, "passing")]

    eventually(health_view_passing)

    assert c.agent.check.deregister(cid) is True
    assert agent_check(c, cid) is None

    def health_view_empty():
        _, checks = c.health.checks(name)
        assert checks == []

    eventually(health_view_empty)
    _deregister(c, name)


# --------------------------------------------------------------------------- flap damping


def test_success_before_passing_and_failures_before_critical(agent, http_server):
    c = agent.client
    srv = http_server(200)
    name = unique("damped")
    check = Check.http(srv.url, INTERVAL)
    check["SuccessBeforePassing"] = 3
    check["FailuresBeforeCritical"] = 3
    _register(c, name, check)
    cid = f"service:{name}"

    # Initially critical; may only become passing after >= 3 consecutive 2xx.
    def passing_after_three_successes():
        st = check_status(c, cid)
        served = srv.count(200)  # read AFTER the status: an upper bound of what the agent saw
        assert st in ("critical", "passing"), f"unexpected status {st!r}"
        if st == "passing":
            assert served >= 3, f"passing after only {served} successful probe(s) (SuccessBeforePassing=3)"
            return True
        return False

    wait_until(passing_after_three_successes, T, interval_s=0.02, message="check passing after 3 successes")

    base_fail = srv.count(500)
    srv.set_code(500)

    def critical_after_three_failures():
        st = check_status(c, cid)
        failed = srv.count(500) - base_fail
        # FailuresBeforeWarning defaults to FailuresBeforeCritical: no warning step.
        assert st in ("passing", "critical"), f"unexpected status {st!r}"
        if st == "critical":
            assert failed >= 3, f"critical after only {failed} failed probe(s) (FailuresBeforeCritical=3)"
            return True
        return False

    wait_until(critical_after_three_failures, T, interval_s=0.02, message="check critical after 3 failures")

    base_ok = srv.count(200)
    srv.set_code(200)

    def passing_again():
        st = check_status(c, cid)
        ok = srv.count(200) - base_ok
        if st == "passing":
            assert ok >= 3, f"passing again after only {ok} successful probe(s)"
            return True
        return False

    wait_until(passing_again, T, interval_s=0.02, message="check passing again after 3 successes")
    _deregister(c, name)


# --------------------------------------------------------------------------- deregister critical


def test_deregister_critical_service_after(agent, http_server):
    c = agent.client
    bad, good = http_server(500), http_server(200)
    bad_name, good_name = unique("doomed"), unique("healthy")
    _register(c, bad_name, Check.http(bad.url, INTERVAL, deregister="2s"))
    _register(c, good_name, Check.http(good.url, INTERVAL, deregister="2s"))
    assert bad_name in c.agent.services()

    _await_status(c, f"service:{good_name}", "passing")
    # Consul's reaper may run on a coarse period; allow a generous deadline.
    wait_until(
        lambda: bad_name not in c.agent.services(),
        40,
        interval_s=0.2,
        message=f"critical service {bad_name} to be deregistered (DeregisterCriticalServiceAfter=2s)",
    )
    assert f"service:{bad_name}" not in c.agent.checks(), "the service's checks must go with it"
    wait_until(lambda: c.catalog.service(bad_name)[1] == [], 10, message="catalog to drop the reaped service")
    # The passing one (same DeregisterCriticalServiceAfter) must survive.
    assert good_name in c.agent.services()
    assert check_status(c, f"service:{good_name}") == "passing"
    _deregister(c, good_name)


# --------------------------------------------------------------------------- /v1/health filters


def test_health_service_passing_and_tag_filters(agent):
    c = agent.client
    name = unique("api")
    a_id, b_id = f"{name}-a", f"{name}-b"
    _register(c, name, Check.ttl("60s"), service_id=a_id, tags=["blue", "v1"], port=1001)
    _register(c, name, Check.ttl("60s"), service_id=b_id, tags=["green", "v1"], port=1002)
    assert c.agent.check.ttl_pass(f"service:{a_id}") is True

    def ids(**kw):
        index, entries = c.health.service(name, **kw)
        assert int(index) > 0
        return sorted(e["Service"]["ID"] for e in entries)

    eventually(lambda: _assert_eq(ids(), [a_id, b_id]))
    eventually(lambda: _assert_eq(ids(passing=True), [a_id]))
    assert ids(tag="green") == [b_id]
    assert ids(tag="v1") == [a_id, b_id]
    assert ids(tag=["blue", "v1"]) == [a_id], "multiple ?tag= must all match"
    assert ids(tag="nope") == []
    assert ids(passing=True, tag="green") == []

    _, entries = c.health.service(name, passing=True)
    (entry,) = entries
    assert entry["Node"]["Node"] == agent.node
    assert entry["Node"]["Datacenter"] == "dc1"
    assert entry["Service"]["Service"] == name
    assert entry["Service"]["Port"] == 1001
    assert sorted(entry["Service"]["Tags"]) == ["blue", "v1"]
    by_id = {x["CheckID"]: x for x in entry["Checks"]}
    assert by_id["serfHealth"]["Status"] == "passing", "node checks are part of a health entry"
    assert by_id[f"service:{a_id}"]["Status"] == "passing"

    _, none = c.health.service(unique("no-such-service"))
    assert none == []
    _deregister(c, a_id)
    _deregister(c, b_id)


def test_health_checks_node_and_state(agent):
    c = agent.client
    name = unique("stsvc")
    _register(c, name, Check.ttl("60s"))
    cid = f"service:{name}"

    def health_checks_view():
        index, checks = c.health.checks(name)
        assert int(index) > 0
        assert [(x["CheckID"], x["ServiceName"], x["Status"]) for x in checks] == [(cid, name, "critical")]

    eventually(health_checks_view)

    _, node_checks = c.health.node(agent.node)
    by_id = {x["CheckID"]: x for x in node_checks}
    assert by_id["serfHealth"]["Status"] == "passing"
    assert by_id["serfHealth"]["ServiceID"] == ""
    assert by_id[cid]["Status"] == "critical"
    assert all(x["Node"] == agent.node for x in node_checks)

    def state_ids(state):
        _, lst = c.health.state(state)
        return {x["CheckID"] for x in lst}

    assert cid in state_ids("critical")
    assert "serfHealth" not in state_ids("critical")
    assert "serfHealth" in state_ids("passing")
    assert {cid, "serfHealth"} <= state_ids("any")

    assert c.agent.check.ttl_pass(cid) is True
    eventually(lambda: _assert_eq((cid in state_ids("passing"), cid in state_ids("critical")), (True, False)))
    _deregister(c, name)
