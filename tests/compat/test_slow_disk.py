"""Gray failure of a disk: three replicated servers, each on its own FUSE passthrough
filesystem (faultyfs.py). When the leader's fsync turns slow, the leader must notice that its
fsync p99 is far above the other servers', hand leadership to another server, and report its
storage subsystem Degraded; once its disk is fast again, storage returns to Target.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from compat_helpers import LOOPBACK, colony_bin, free_port, unique, wait_until

HERE = Path(__file__).resolve().parent
SLOW_FSYNC_MS = 150


class Server:
    """One `colony agent --server --bootstrap-expect 3` process."""

    def __init__(self, name: str, data_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.data_dir = data_dir
        self.log_path = log_dir / f"{name}.log"
        self.http_port = free_port()
        self.gossip_port = free_port()
        self.rpc_port = free_port()
        self.grpc_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def rpc_addr(self) -> str:
        return f"{LOOPBACK}:{self.rpc_port}"

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.http_port}{path}"

    def start(self, join: str | None) -> None:
        command = [
            str(colony_bin()), "agent", "--server", "--node", self.name,
            "--bootstrap-expect", "3",
            "--http-addr", f"{LOOPBACK}:{self.http_port}",
            "--bind", f"{LOOPBACK}:{self.gossip_port}",
            "--rpc-addr", self.rpc_addr,
            "--grpc-addr", f"{LOOPBACK}:{self.grpc_port}",
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        if join:
            command += ["--retry-join", join, "--retry-interval", "200ms"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def get_json(self, path: str):
        try:
            r = requests.get(self.url(path), timeout=2)
        except requests.RequestException:
            return None
        return r.json() if r.status_code == 200 else None

    def storage(self) -> dict:
        return (self.get_json("/v1/colony/modes") or {}).get("storage", {})

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<no log: {exc}>"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def three_servers_on_faultyfs(tmp_path):
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: this machine cannot run the slow-disk test")
    mounts, servers = [], []
    try:
        for i in range(3):
            backing, mount = tmp_path / f"backing{i}", tmp_path / f"mnt{i}"
            backing.mkdir()
            mount.mkdir()
            fs = subprocess.Popen([sys.executable, str(HERE / "faultyfs.py"), str(backing), str(mount)])
            mounts.append((fs, backing, mount))
            wait_until(lambda m=mount: os.path.ismount(m), timeout_s=10, message=f"FUSE mount {mount}")
            servers.append(Server(f"disk{i}", mount / "data", tmp_path))
        for i, server in enumerate(servers):
            server.start(join=None if i == 0 else f"{LOOPBACK}:{servers[0].gossip_port}")
        yield servers, [backing for _, backing, _ in mounts]
    finally:
        for server in servers:
            server.stop()
        for fs, _, mount in mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)
            fs.terminate()
            fs.wait(timeout=10)


def _leader(servers: list[Server]) -> Server | None:
    """The server every running server names as leader, if they agree."""
    named = {s.get_json("/v1/status/leader") for s in servers}
    if len(named) != 1:
        return None
    addr = named.pop()
    return next((s for s in servers if s.rpc_addr == addr), None)


class Writers:
    """Threads putting keys through every server, so that all disks see fsyncs."""

    def __init__(self, servers: list[Server], threads: int = 4) -> None:
        self.stop_flag = threading.Event()
        self.acked = 0
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(servers[i % len(servers)], i), daemon=True)
            for i in range(threads)
        ]

    def _run(self, server: Server, n: int) -> None:
        session = requests.Session()
        session.trust_env = False
        prefix = unique(f"slowdisk/{n}")
        i = 0
        while not self.stop_flag.is_set():
            i += 1
            try:
                r = session.put(server.url(f"/v1/kv/{prefix}/{i}"), data=b"v", timeout=10)
                if r.status_code == 200:
                    with self.lock:
                        self.acked += 1
            except requests.RequestException:
                time.sleep(0.05)

    def __enter__(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)


def test_a_leader_with_a_slow_disk_hands_over_and_reports_degraded_storage(three_servers_on_faultyfs):
    servers, backings = three_servers_on_faultyfs

    def logs() -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log_tail()}" for s in servers)

    old = wait_until(lambda: _leader(servers), 30, message=lambda: f"a leader\n{logs()}")
    assert all(s.storage().get("mode") == "target" for s in servers)

    with Writers(servers) as writers:
        # Let every server's window fill with fast samples first.
        wait_until(lambda: writers.acked >= 200, 30, message=lambda: f"200 writes\n{logs()}")
        (backings[servers.index(old)] / ".slow-fsync").write_text(str(SLOW_FSYNC_MS))

        new = wait_until(
            lambda: (lambda leader: leader if leader is not None and leader is not old else None)(_leader(servers)),
            45,
            message=lambda: f"leadership to move off {old.name}\n{logs()}",
        )
        storage = wait_until(
            lambda: (lambda st: st if st.get("mode") == "degraded" else None)(old.storage()),
            15,
            message=lambda: f"{old.name}'s storage to be degraded (now {old.storage()})\n{logs()}",
        )
        assert "fsync p99" in storage["reason"], storage
        assert "transferring leadership" in old.log_tail(200), old.log_tail(200)
        # The fast servers' storage is untouched.
        for s in servers:
            if s is not old:
                assert s.storage().get("mode") == "target", (s.name, s.storage())

        # Writes still succeed through the new leader.
        before = writers.acked
        wait_until(lambda: writers.acked >= before + 50, 30, message=lambda: f"writes to go on\n{logs()}")

        # The disk heals: once fast samples replace the slow ones, storage recovers.
        (backings[servers.index(old)] / ".slow-fsync").unlink()
        wait_until(
            lambda: old.storage().get("mode") == "target",
            90,
            message=lambda: f"{old.name}'s storage to return to target (now {old.storage()})\n{logs()}",
        )
    assert new is not old
