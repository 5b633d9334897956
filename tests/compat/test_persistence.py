"""State survives a clean restart (SIGTERM, then start again on the same --data-dir):
KV (values, flags, indexes, lock holder), agent services and checks, sessions."""

from __future__ import annotations

from consul import Check

from compat_helpers import eventually, unique


def test_state_survives_sigterm_restart(agent_factory):
    a = agent_factory()
    c = a.client
    root = unique("persist")

    assert c.kv.put(f"{root}/plain", "hello", flags=5) is True
    assert c.kv.put(f"{root}/bin", bytes(range(256))) is True
    assert c.kv.put(f"{root}/deleted", "x") is True
    assert c.kv.delete(f"{root}/deleted") is True
    _, before = c.kv.get(f"{root}/", recurse=True)

    svc = unique("persist-svc")
    assert c.agent.service.register(svc, service_id=svc, port=4242, tags=["p"], meta={"m": "1"},
                                    check=Check.ttl("600s")) is True
    cid = f"service:{svc}"
    assert c.agent.check.ttl_warn(cid, "warned before restart") is True
    extra = unique("persist-check")
    assert c.agent.check.register("standalone", check=Check.ttl("600s"), check_id=extra) is True

    sess = c.session.create(name="survivor", lock_delay=7, behavior="delete")
    assert c.kv.put(f"{root}/locked", "mine", acquire=sess) is True
    _, locked_before = c.kv.get(f"{root}/locked")
    idx_before, _ = c.kv.get(f"{root}/plain")

    rc = a.stop()
    assert rc == 0, f"SIGTERM must shut the agent down cleanly (exit 0), got {rc}\n{a.log_tail(30)}"

    a.start()
    c = a.client  # new port, new client

    _, after = c.kv.get(f"{root}/", recurse=True)
    norm = lambda entries: [(e["Key"], e["Value"], e["Flags"], e["CreateIndex"], e["ModifyIndex"]) for e in entries]
    before_all = norm(before) + norm([locked_before])
    assert sorted(norm(after)) == sorted(before_all), "KV entries (values, flags, indexes) must survive restart"
    assert c.kv.get(f"{root}/deleted")[1] is None

    idx_after, _ = c.kv.get(f"{root}/plain")
    assert int(idx_after) >= int(idx_before), f"X-Consul-Index went backwards: {idx_before} -> {idx_after}"

    services = c.agent.services()
    assert svc in services, f"service {svc} lost on restart; agent has {sorted(services)}"
    s = services[svc]
    assert (s["Service"], s["Port"], s["Tags"], s["Meta"]) == (svc, 4242, ["p"], {"m": "1"})

    checks = c.agent.checks()
    assert cid in checks, f"check {cid} lost on restart; agent has {sorted(checks)}"
    assert checks[cid]["ServiceID"] == svc
    assert extra in checks and checks[extra]["Name"] == "standalone"

    def catalog_has_service():
        _, inst = c.catalog.service(svc)
        assert [i["ServiceID"] for i in inst] == [svc]

    eventually(catalog_has_service)

    _, info = c.session.info(sess)
    assert info is not None, "session lost on restart"
    assert (info["Name"], info["Behavior"], info["LockDelay"]) == ("survivor", "delete", 7 * 1_000_000_000)
    _, locked = c.kv.get(f"{root}/locked")
    assert locked["Session"] == sess, "lock holder must survive restart"

    # The restored store is fully usable.
    assert c.kv.put(f"{root}/after", "restart") is True
    assert c.kv.get(f"{root}/after")[1]["Value"] == b"restart"
    assert c.session.destroy(sess) is True
    assert c.kv.get(f"{root}/locked")[1] is None, "behavior=delete still applies after restart"
