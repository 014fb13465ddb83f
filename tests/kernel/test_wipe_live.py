"""Secure deletion on the live compat sensor (T1070.004, s17-wipe).

A renamed copy of coreutils shred in a test-owned directory wipes the test's own victim
file (``-u``): neither its name nor its inode is shred's, so only the kernel-visible
shape (write-open in place, the rename-to-zeros series, the unlink) tells.  In the same
script, ``rm`` of a file nobody overwrote and a file the shell itself rewrote by
truncation stay silent.  ABI 2.10 (s18-created): a program creating a cache file with
O_CREAT|O_RDWR (no O_TRUNC, no O_EXCL), writing it and deleting it stays silent (the
kernel says the open created it), and the same flags plus O_NOFOLLOW on an existing
file with bytes, overwritten then unlinked, is a wipe (flags exempt nothing the kernel
described).  Only alerts; nothing is killed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.detect.behavior import behavior_rules, live_probes
from bastion.detect.engine import Engine, RuleContext
from bastion.proctable import ProcessTable
from bastion.sensors.bpf import BpfSensor
from support.cg import scoped_cgroup
from support.live import drain_findings


# a cache file made by the open (O_CREAT|O_RDWR only), written, rewritten, deleted
OWN_CACHE = ("import os; fd = os.open(\"session.cache\", os.O_RDWR | os.O_CREAT, 0o600); "
             "os.write(fd, b\"state\"); os.lseek(fd, 0, 0); os.write(fd, b\"STATE\"); "
             "os.close(fd); os.unlink(\"session.cache\")")
# an existing file with bytes, opened with a careful creator's flags, overwritten, unlinked
NOFOLLOW_WIPE = ("import os; fd = os.open(\"books\", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW); "
                 "os.write(fd, b\"\\0\" * 7); os.fsync(fd); os.close(fd); os.unlink(\"books\")")


def spawn_in(cg: Path, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv], **kw)  # type: ignore[call-overload]


def test_renamed_shred_wiping_a_file_is_seen_by_shape_live(tmp_path: Path) -> None:
    shred = shutil.which("shred")
    if shred is None:
        pytest.skip("coreutils shred is not installed")
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(shred, work / "tidy")
    script = (f"cd {work}\n"
              "echo secret > victim\n"
              "./tidy -u victim\n"
              "echo a > plain && rm plain\n"
              "echo b > kept && echo c > kept && rm kept\n"
              f"{sys.executable} -c '{OWN_CACHE}'\n"
              "echo ledger > books\n"
              f"{sys.executable} -c '{NOFOLLOW_WIPE}'\n")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules(probes=live_probes()))
            ctx = RuleContext(procs)
            proc = spawn_in(cg, ["/bin/sh", "-c", script], stdout=subprocess.DEVNULL)
            assert proc.wait(10) == 0
            found = drain_findings(sensor, procs, engine, ctx, proc)
            got = [f for f in found if f.rule == "behavior.secure_deletion"]
            assert [(f.severity, f.evidence["path"], f.evidence["unlinked"], f.evidence["by"])
                    for f in got] == [("medium", f"{work}/victim", f"{work}/0", "shape"),
                                      ("medium", f"{work}/books", f"{work}/books", "shape")], \
                [f.title for f in found]
            assert got[0].evidence["renames"] == 6 and got[0].evidence["writer"] == f"{work}/tidy"
            assert not (work / "victim").exists()
            assert not engine.errors
        finally:
            sensor.close()
