"""A disk that stops persisting while the agent runs: the failed fdatasync must stop the agent
with a message naming the file, and the write that hit it must not be acknowledged.

The disk is a FUSE passthrough filesystem (faultyfs.py) whose fsync is switched to EIO.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from compat_helpers import wait_until

HERE = Path(__file__).resolve().parent


@pytest.fixture
def faulty_mount(tmp_path):
    backing = tmp_path / "backing"
    mount = tmp_path / "mnt"
    backing.mkdir()
    mount.mkdir()
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: this machine cannot run the fsync-failure test")
    fs = subprocess.Popen([sys.executable, str(HERE / "faultyfs.py"), str(backing), str(mount)])
    wait_until(lambda: os.path.ismount(mount), timeout_s=10, message="FUSE mount")
    yield backing, mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
    fs.terminate()
    fs.wait(timeout=10)


def test_failed_fsync_stops_agent_and_acknowledges_nothing(agent_factory, faulty_mount):
    backing, mount = faulty_mount
    agent = agent_factory(data_dir=mount / "data")
    assert agent.client.kv.put("before", "durable") is True

    (backing / ".fail-fsync").touch()
    try:
        response = requests.put(agent.url("/v1/kv/after"), data=b"lost", timeout=10)
        assert response.status_code != 200, "a write whose fsync failed must not be acknowledged"
        assert "agent stopping" in response.text
    except requests.ConnectionError:
        pass  # the agent may already be gone: also not an acknowledgement

    wait_until(lambda: not agent.running(), timeout_s=15, message="the agent to stop")
    assert agent.proc.returncode not in (0, None), "a failed fsync is fatal"
    log = agent.log_tail(200)
    assert "Input/output error" in log, log
    assert "wal" in log, f"the message names the file: {log}"
