"""A full disk under the running agent (issue 14.1): the data dir is a tiny tmpfs
that the test fills up.  Before: the first event batch that could not be stored
raised ``StoreError`` out of ``Agent.run`` and the agent exited (under the
guardian: a crash loop).  Now it keeps running, says so in ``status`` and in a
high alert, holds its alerts in memory, and writes them once space is back."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import AgentProc, start_agent

from bastion.store import Store


def _status(agent: AgentProc) -> dict[str, object]:
    st = json.loads(agent.cli("status", "--json", "--socket", str(agent.socket)).stdout)
    assert isinstance(st, dict)
    return st


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with open(path, "ab", buffering=0) as fh:       # the last partial page too
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs and runs the agent (root)")
def test_a_full_disk_does_not_stop_the_agent_and_alerts_are_written_when_space_returns(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "bastion-test-full",
                    str(data)], check=True)
    agent: AgentProc | None = None
    try:
        agent = start_agent(tmp_path, "--quiet")
        time.sleep(3.0)                       # the integrity baseline and the first writes
        filler = data / "filler"
        _fill(filler)
        for _ in range(30):                   # events the agent must try to store
            subprocess.run(["/bin/true"], check=True)
        deadline = time.monotonic() + 15
        st = _status(agent)
        while st["store"]["state"] != "failing" and time.monotonic() < deadline:   # type: ignore[index]
            for _ in range(10):
                subprocess.run(["/bin/true"], check=True)
            time.sleep(0.3)
            st = _status(agent)
        assert agent.proc.poll() is None, "the agent exited on a full disk:\n" + "".join(
            agent.stderr[-20:])
        store_st = st["store"]
        assert isinstance(store_st, dict)
        assert store_st["state"] == "failing", store_st
        assert "full" in str(store_st["error"]), store_st
        assert int(store_st["events_not_stored"]) > 0
        filler.unlink()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            subprocess.run(["/bin/true"], check=True)
            time.sleep(0.5)
            store_st = _status(agent)["store"]
            assert isinstance(store_st, dict)
            if store_st["state"] == "ok" and store_st["alerts_queued"] == 0:
                break
        assert store_st["state"] == "ok" and store_st["recovered"] == 1, store_st
        assert agent.stop() == 0              # the stop raises what is pending (recovered)
        with Store.open(data, readonly=True) as store:
            failing = [a.data for a in store.alerts(rule="bastion.store.failing")]
            recovered = [a.data for a in store.alerts(rule="bastion.store.recovered")]
            problems = store.verify_chain().problems
    finally:
        if agent is not None:
            agent.stop()
        subprocess.run(["umount", str(data)], check=False)
    assert failing and failing[0]["severity"] == "high"
    assert len(recovered) == 1
    assert problems == [], problems
