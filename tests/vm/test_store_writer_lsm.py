"""The agent's event writer process under the guardian's tamper protection, lsm tier,
inside the test VM (issue 16.3).

The writer process (``bastion.store.eventproc``) is a second writer of the protected
store.  Attack on our own integrity: were it not one of ours, the kernel would refuse
its write-opens of ``bastion.db*`` (alerted as tamper), or anything passing as it
would be let in.  The agent enrols it (role ``writer``, exact identity) in
``tamper_idents`` before it opens the store: no tamper alarm, its rows are stored.

A TEST instance only (tests/support/tamper.py): hooks act only on attackers in the test
cgroup, with a dead-man deadline; teardown kills and unpins.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.guard.kernel import pinned_ids  # noqa: E402
from bastion.kernel.libbpf import Map  # noqa: E402
from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_store_writer_lsm.py`")


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp_path, cg, cgid, deadline_s=400)
        try:
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-40:]))
            i.teardown()


def test_the_writer_process_stores_under_lsm_tamper_protection(inst: T.Instance,
                                                                tmp_path: Path) -> None:
    code = inst.install / "lib"
    # with its bytecode (copy2 keeps the sources' mtimes: still valid): without it the agent
    # and its writer process compiled every module first, a minute of TCG (s24 CI: no row
    # stored within the wait)
    shutil.copytree(T.REPO / "src" / "bastion", code / "bastion")
    pol = tmp_path / "agent-policy.yaml"
    pol.write_text("version: 1\n")
    sock = tmp_path / "agent.sock"
    env = f"PYTHONPATH={code} BASTION_BPF_DIR={T.REPO / 'build' / 'bpf'}"
    run = (f"{T.PY} -m bastion.cli.main run --quiet --keep-pins --policy {pol} "
           f"--data-dir {inst.data} --socket {sock} --pin-root {inst.pin_root} --test-deadline 300")
    inst.start_guardian(tier="lsm", agent=["/bin/sh", "-c",
                                           f"echo $$ > {inst.cg}/cgroup.procs && {env} exec {run}"])
    deadline = time.monotonic() + 90
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sock.exists(), "".join(inst.stderr[-30:])
    # activity for the store: the agent sees these (not in the test cgroup's scope: no denial)
    work = tmp_path / "work"
    work.mkdir()
    stored = 0
    deadline = time.monotonic() + 180    # the socket is bound before the sensors load
    while time.monotonic() < deadline:
        for i in range(50):
            (work / f"f{i}").write_text("x")
            (work / f"f{i}").chmod(0o600)
        time.sleep(1.0)
        with sqlite3.connect(f"file:{inst.data / 'bastion.db'}?mode=ro", uri=True) as db:
            stored = int(db.execute("SELECT count(*) FROM events").fetchone()[0])
        if stored:
            break
    rules = [str(a["rule"]) for a in inst.alerts()]
    assert stored > 0, ("no event rows stored by the writer process", rules, inst.stderr[-30:])
    assert not [r for r in rules if r.startswith("bastion.tamper.open")], \
        [(a["rule"], a["title"]) for a in inst.alerts()]
    with sqlite3.connect(f"file:{inst.data / 'bastion.db'}?mode=ro", uri=True) as db:
        bad = [r[0] for r in db.execute("SELECT data FROM alerts WHERE rule LIKE 'bastion.store.writer%'")]
    assert not bad, bad
    _agent_s_unpinned_maps_are_protected(inst)


# a write-mode fd of a map by id, as an attacker (libbpf, as bpftool asks it); exit 1 refused
RW_FD = """\
import ctypes, os, sys
fd = ctypes.CDLL("libbpf.so.1", use_errno=True).bpf_map_get_fd_by_id(ctypes.c_uint32(int(sys.argv[1])))
print("refused:", os.strerror(-fd)) if fd < 0 else print("got fd", fd)
sys.exit(1 if fd < 0 else 0)
"""


def _agent_s_unpinned_maps_are_protected(inst: T.Instance) -> None:
    """s19-mapguard: every map the programs the real agent holds use (its sensor: nothing
    of it pinned) is in the pinned ``tamper_map_ids`` (the agent registers each object
    as it loads it; it still writes its own maps: its events were stored above, and no
    tamper alert names it); an attacker in scope gets no write-mode fd of one by id."""
    agent = inst.agent_pid()
    progs: set[int] = set()
    for fd in os.listdir(f"/proc/{agent}/fdinfo"):
        try:
            text = Path(f"/proc/{agent}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        progs |= {int(line.split()[1]) for line in text.splitlines() if line.startswith("prog_id:")}
    assert progs, "the agent holds no BPF program"
    used: set[int] = set()
    for p in progs:
        r = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(p)], capture_output=True,
                           text=True, check=True)
        used |= set(json.loads(r.stdout).get("map_ids", []))
    with Map.open_pinned(inst.pin_root / "tamper" / "maps" / "tamper_map_ids") as m:
        have = {int.from_bytes(k, "little") for k in m.keys()}
    assert used and used <= have, f"not protected: {sorted(used - have)}"
    pinned = pinned_ids(inst.pin_root)["map"]
    target = min(used - pinned)
    r = inst.attack([T.PY, "-c", RW_FD, str(target)])
    assert r.returncode == 1 and "not permitted" in r.stdout, r.stdout + r.stderr
    inst.wait_alert("bastion.tamper.bpf-map-fd", lambda a: a["evidence"]["obj_id"] == target)  # type: ignore[index]
    mine = [a for a in inst.alerts() if str(a["rule"]).startswith("bastion.tamper.bpf")
            and a["process"]["pid"] == agent]  # type: ignore[index]
    assert not mine, mine
