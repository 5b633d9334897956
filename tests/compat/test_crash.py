"""Crash safety: acknowledged KV writes survive ``kill -9``.

Several writer threads PUT (and now and then DELETE) unique keys; every write
acknowledged with 2xx + body ``true`` is recorded. The agent is SIGKILLed at a
chosen moment, restarted on the same --data-dir, and then:

* every acknowledged write is present with exactly its value;
* every acknowledged delete is still deleted;
* a write that was in flight at the kill is either fully there or absent
  (never a torn / wrong value);
* the restarted store is usable (new writes, recursive reads).

Rounds accumulate on the same data dir, so later rounds re-verify earlier
rounds' data across several crashes. The seed is printed on failure; set
COLONY_CRASH_SEED to replay.
"""

from __future__ import annotations

import os
import random
import threading
import time

import requests

from compat_helpers import unique

KILL_DELAYS_S = (0.2, 0.7, 1.5)
WRITERS = 6
MAX_OPS_PER_WRITER = 20_000  # bound the loop no matter what
ABSENT = object()


class Writer(threading.Thread):
    def __init__(self, base_url: str, prefix: str, seed: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.base_url = base_url
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.stop = stop
        # key -> set of states the store may legitimately hold after the crash
        self.allowed: dict[str, set] = {}
        # key -> last acknowledged state
        self.acked: dict[str, object] = {}
        self.acked_ops = 0
        self.error: str | None = None

    def _value(self, i: int) -> bytes:
        size = self.rng.choice((8, 64, 300, 1500))
        return f"{self.prefix}/{i}:".encode() + self.rng.randbytes(size)

    def run(self) -> None:
        s = requests.Session()
        s.trust_env = False
        mine: list[str] = []
        deadline = time.monotonic() + 30
        try:
            for i in range(MAX_OPS_PER_WRITER):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                if mine and i % 10 == 9:
                    key = mine.pop(self.rng.randrange(len(mine)))
                    state: object = ABSENT
                    self.allowed[key].add(state)
                    try:
                        r = s.delete(f"{self.base_url}/v1/kv/{key}", timeout=5)
                    except requests.RequestException:
                        return  # agent gone
                else:
                    key = f"{self.prefix}/{i:06d}"
                    state = self._value(i)
                    self.allowed[key] = {ABSENT, state}
                    try:
                        r = s.put(f"{self.base_url}/v1/kv/{key}", data=state, timeout=5)
                    except requests.RequestException:
                        return
                if 200 <= r.status_code < 300 and r.text.strip() == "true":
                    self.acked[key] = state
                    self.allowed[key] = {state}
                    self.acked_ops += 1
                    if state is not ABSENT:
                        mine.append(key)
                else:
                    self.error = f"{r.request.method} {key} -> {r.status_code} {r.text[:200]!r}"
                    return
        finally:
            s.close()


def _store_contents(client, prefix: str) -> dict[str, bytes | None]:
    _, entries = client.kv.get(prefix, recurse=True)
    return {e["Key"]: (e["Value"] or b"") for e in (entries or [])}


def test_acknowledged_writes_survive_kill9(agent_factory):
    seed = int(os.environ.get("COLONY_CRASH_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    agent = agent_factory()
    root = unique("crash")
    allowed: dict[str, set] = {}
    acked: dict[str, object] = {}
    report = [f"seed={seed} (COLONY_CRASH_SEED to replay)"]

    for rnd, base_delay in enumerate(KILL_DELAYS_S):
        delay = base_delay + rng.uniform(-0.1, 0.1)
        stop = threading.Event()
        writers = [
            Writer(agent.base_url, f"{root}/r{rnd}/w{w}", rng.randrange(1 << 30), stop) for w in range(WRITERS)
        ]
        for w in writers:
            w.start()
        # The kill moment is the test parameter: sleeping is the point here.
        time.sleep(delay)
        agent.kill9()
        stop.set()
        for w in writers:
            w.join(timeout=30)
            assert not w.is_alive(), "writer thread did not stop"
            assert w.error is None, f"round {rnd}: a write was refused before the crash: {w.error}"
            allowed.update(w.allowed)
            acked.update(w.acked)
        n_acked = sum(w.acked_ops for w in writers)
        report.append(f"round {rnd}: killed after {delay:.2f}s, {n_acked} ops acknowledged")
        assert n_acked > 0, f"no write was acknowledged within {delay:.2f}s; cannot test crash safety ({report})"

        agent.start()  # same data dir; fails the test if the store does not open
        c = agent.client
        actual = _store_contents(c, f"{root}/")

        # `allowed[k]` always contains the last acknowledged state plus any
        # state an unacknowledged (in-flight) op could have produced.
        bad = [k for k, states in allowed.items() if actual.get(k, ABSENT) not in states]
        lost = [k for k in bad if k in acked and acked[k] is not ABSENT]
        resurrected = [k for k in bad if k in acked and acked[k] is ABSENT]
        torn = [k for k in bad if k not in acked]
        unknown = [k for k in actual if k not in allowed]
        problems = []
        if lost:
            problems.append(f"{len(lost)} acknowledged write(s) lost or changed, e.g. {sorted(lost)[:5]}")
        if resurrected:
            problems.append(f"{len(resurrected)} acknowledged delete(s) undone, e.g. {sorted(resurrected)[:5]}")
        if torn:
            problems.append(f"{len(torn)} in-flight write(s) with a wrong value, e.g. {sorted(torn)[:5]}")
        if unknown:
            problems.append(f"{len(unknown)} key(s) never written, e.g. {sorted(unknown)[:5]}")
        assert not problems, f"after crash round {rnd}: " + "; ".join(problems) + f" ({'; '.join(report)})"

        # The reopened store works.
        probe = f"{root}/probe-{rnd}"
        assert c.kv.put(probe, f"after crash {rnd}") is True
        assert c.kv.get(probe)[1]["Value"] == f"after crash {rnd}".encode()
        assert c.kv.delete(probe) is True

    print("; ".join(report))
    rc = agent.stop()
    assert rc == 0, f"clean SIGTERM after crash recovery should exit 0, got {rc}"
