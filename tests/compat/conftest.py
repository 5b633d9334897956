"""Fixtures for the colony compatibility suite.

Fixtures
--------
agent         module-scoped ``ColonyAgent`` shared by the tests of one module
              (tests use unique names so they do not interfere).
fresh_agent   function-scoped ``ColonyAgent`` with its own data dir.
agent_factory function-scoped factory: ``agent_factory(data_dir=None, node=None,
              join=None, retry_join=False)`` returns a started ``ColonyAgent`` (with ``join``, a
              client agent joined to that gossip address); all are stopped at teardown.
              Use it for restart / crash tests (``agent.restart()``,
              ``agent.kill9(); agent.start()``).
wait_until    the ``compat_helpers.wait_until`` function, as a fixture.

A ``ColonyAgent`` unpacks as ``client, base_url, data_dir, proc = agent``
(client is an unmodified ``consul.Consul(host=..., port=...)``).

The binary is ``$COLONY_BIN`` or ``<repo>/target/debug/colony``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from compat_helpers import (
    AgentNotReady,
    ColonyAgent,
    SwitchableHTTPServer,
    TcpListener,
    colony_bin,
    wait_until as _wait_until,
)


def _new_agent(
    tmp_root: Path,
    node: str | None = None,
    data_dir: Path | None = None,
    join: str | None = None,
    retry_join: bool = False,
) -> ColonyAgent:
    node = node or f"compat-{uuid.uuid4().hex[:6]}"
    data_dir = data_dir or (tmp_root / f"data-{node}")
    return ColonyAgent(data_dir=data_dir, node=node, log_dir=tmp_root / "logs", join=join, retry_join=retry_join)


def _start_or_fail(a: ColonyAgent) -> ColonyAgent:
    try:
        return a.start()
    except AgentNotReady as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def colony_binary() -> Path:
    b = colony_bin()
    if not b.exists():
        pytest.fail(f"colony binary not found at {b}; build it (cargo build) or set COLONY_BIN", pytrace=False)
    return b


@pytest.fixture(scope="module")
def agent(colony_binary, tmp_path_factory):
    a = _new_agent(tmp_path_factory.mktemp("agent"))
    _start_or_fail(a)
    yield a
    a.close()


@pytest.fixture
def fresh_agent(colony_binary, tmp_path):
    a = _new_agent(tmp_path)
    _start_or_fail(a)
    yield a
    a.close()


@pytest.fixture
def agent_factory(colony_binary, tmp_path):
    created: list[ColonyAgent] = []

    def make(
        data_dir: Path | None = None,
        node: str | None = None,
        start: bool = True,
        join: str | None = None,
        retry_join: bool = False,
    ) -> ColonyAgent:
        a = _new_agent(tmp_path, node=node, data_dir=data_dir, join=join, retry_join=retry_join)
        created.append(a)
        if start:
            _start_or_fail(a)
        return a

    make.created = created  # type: ignore[attr-defined]
    yield make
    for a in created:
        a.close()


@pytest.fixture
def wait_until():
    return _wait_until


@pytest.fixture
def http_server():
    servers: list[SwitchableHTTPServer] = []

    def make(code: int = 200) -> SwitchableHTTPServer:
        s = SwitchableHTTPServer(code)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def tcp_listener():
    listeners: list[TcpListener] = []

    def make() -> TcpListener:
        listener = TcpListener()
        listeners.append(listener)
        return listener

    yield make
    for listener in listeners:
        listener.close()


# Attach the agent's log tail to the report of a failing test.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        agents: list[ColonyAgent] = []
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ColonyAgent):
                agents.append(value)
            elif callable(value) and hasattr(value, "created"):
                agents.extend(value.created)
        for a in agents:
            report.sections.append((f"colony log tail ({a.node}, {a.log_path})", a.log_tail(60)))
    return report
