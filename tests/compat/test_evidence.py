"""Every colony response carries ``X-Colony-Evidence``: an RFC 8941 dictionary
with at least the keys scope, source, freshness, observed, lifetime, binding.
A KV read on a single node (its own leader) is ``freshness=fresh``."""

from __future__ import annotations

import pytest
import requests

from compat_helpers import SFParseError, Token, parse_sf_dictionary, unique

HEADER = "X-Colony-Evidence"
REQUIRED = ("scope", "source", "freshness", "observed", "lifetime", "binding")
# shared/design/evidence.md
FRESHNESS_CLASSES = ("fresh", "bounded-stale", "eventual", "historical")


def _evidence(resp: requests.Response) -> dict:
    where = f"{resp.request.method} {resp.request.path_url} -> {resp.status_code}"
    assert HEADER in resp.headers, f"{where}: no {HEADER} header (headers: {dict(resp.headers)})"
    raw = resp.headers[HEADER]
    try:
        parsed = parse_sf_dictionary(raw)
    except SFParseError as exc:
        pytest.fail(f"{where}: {HEADER} is not an RFC 8941 dictionary: {exc}")
    missing = [k for k in REQUIRED if k not in parsed]
    assert not missing, f"{where}: {HEADER} lacks {missing}: {raw!r}"
    for k in REQUIRED:
        value = parsed[k][0]
        assert isinstance(value, str) and value, f"{where}: {k} must be a non-empty string/token: {raw!r}"
    freshness = str(parsed["freshness"][0])
    assert freshness in FRESHNESS_CLASSES, f"{where}: unknown freshness {freshness!r}: {raw!r}"
    if freshness == "bounded-stale":
        for k in ("age", "bound"):
            assert k in parsed and isinstance(parsed[k][0], int), f"{where}: bounded-stale needs integer {k}: {raw!r}"
    return parsed


# ---- the parser itself (so a failure above is colony's, not ours) ----------


def test_sf_dictionary_parser_sanity():
    d = parse_sf_dictionary('a=1, b="x y", c=tok, d, e=?0;p=1, f=(1 2);q, g=1.5, h=:aGk=:, i=@1700000000')
    assert d["a"] == (1, {})
    assert d["b"] == ("x y", {}) and not isinstance(d["b"][0], Token)
    assert d["c"] == ("tok", {}) and isinstance(d["c"][0], Token)
    assert d["d"] == (True, {})
    assert d["e"] == (False, {"p": 1})
    assert d["f"] == ([(1, {}), (2, {})], {"q": True})
    assert d["g"] == (1.5, {})
    assert d["h"] == (b"hi", {})
    assert d["i"][0] == 1700000000
    for bad in ("A=1", "a=1,", "a=\"unterminated", "a=1 b=2", "a=(1", "=1"):
        with pytest.raises(SFParseError):
            parse_sf_dictionary(bad)


# ---- colony ----------------------------------------------------------------


def test_every_kind_of_response_has_evidence(agent):
    key = unique("ev")
    s = requests.Session()
    s.trust_env = False
    calls = [
        ("GET", "/v1/status/leader", None),
        ("GET", "/v1/status/peers", None),
        ("GET", "/v1/agent/self", None),
        ("GET", "/v1/agent/members", None),
        ("GET", "/v1/agent/services", None),
        ("GET", "/v1/agent/checks", None),
        ("GET", "/v1/agent/metrics", None),
        ("GET", "/v1/catalog/services", None),
        ("GET", "/v1/catalog/nodes", None),
        ("GET", "/v1/catalog/datacenters", None),
        ("GET", f"/v1/catalog/node/{agent.node}", None),
        ("GET", "/v1/health/state/any", None),
        ("GET", "/v1/health/service/nope", None),
        ("GET", f"/v1/health/node/{agent.node}", None),
        ("PUT", f"/v1/kv/{key}", b"v"),
        ("GET", f"/v1/kv/{key}", None),
        ("GET", f"/v1/kv/{key}?raw", None),
        ("GET", f"/v1/kv/{key}-missing", None),  # 404
        ("GET", f"/v1/kv/{key}?index=1&wait=1s", None),  # blocking read
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "get", "Key": "%s"}}]' % key.encode()),
        ("PUT", "/v1/txn", b'[{"KV": {"Verb": "get", "Key": "%s-missing"}}]' % key.encode()),  # 409
        ("GET", "/v1/session/list", None),
        ("PUT", "/v1/agent/service/register", b"{not json"),  # 400
        ("DELETE", f"/v1/kv/{key}", None),
        ("GET", "/v1/this/does/not/exist", None),  # 404 route
        ("DELETE", "/v1/agent/services", None),  # 405
        ("PUT", f"/v1/kv/{key}-big", b"x" * (512 * 1024 + 1)),  # 413
    ]
    seen_statuses = set()
    for method, path, body in calls:
        r = s.request(method, agent.url(path), data=body, timeout=10)
        seen_statuses.add(r.status_code)
        _evidence(r)
    assert {200, 400, 404, 405, 409, 413} <= seen_statuses, f"expected a mix of statuses, saw {seen_statuses}"


def test_kv_read_is_fresh(agent):
    c = agent.client
    key = unique("fresh")
    assert c.kv.put(key, "v") is True
    r = requests.get(agent.url(f"/v1/kv/{key}"))
    assert r.status_code == 200
    ev = _evidence(r)
    value, _params = ev["freshness"]
    assert str(value) == "fresh", f"single-node KV read should be freshness=fresh, got {r.headers[HEADER]!r}"
    c.kv.delete(key)


def test_py_consul_responses_have_evidence(agent):
    """The same holds for what the unmodified client receives."""
    c = agent.client
    captured: list[requests.Response] = []
    c.http.session.hooks["response"].append(lambda resp, *a, **kw: captured.append(resp))
    try:
        key = unique("ev-client")
        c.kv.put(key, "v")
        c.kv.get(key)
        c.catalog.services()
        c.health.service("nope")
        c.agent.services()
        c.kv.delete(key)
    finally:
        c.http.session.hooks["response"].pop()
    assert len(captured) == 6
    for r in captured:
        _evidence(r)
