"""Account databases staged into a file, on the live sensor (issue 15, s16-stage).

A script in the test's cgroup copies the account files the ways an attacker
stages them (a shell redirect of ``cat``, ``cp``, ``dd``, a pipe through ``gzip``,
the absent BSD ``/etc/master.passwd``) and reads them the ways everyone does
(``getent``, ``cat | grep -q``, to /dev/null).  The kernel's fd 1 at exec and the
shell's write-open of the redirect decide; only alerts, nothing is killed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bastion.detect.behavior import behavior_rules, live_probes
from bastion.detect.engine import Engine, RuleContext
from bastion.proctable import ProcessTable
from bastion.sensors.bpf import BpfSensor
from support.cg import scoped_cgroup
from support.live import drain_findings


def spawn_in(cg: Path, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv], **kw)  # type: ignore[call-overload]


def test_account_databases_staged_live(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    script = (f"cd {work}\n"
              "getent passwd > ./u\n"
              "cat /etc/passwd | grep -q root\n"
              "cat /etc/passwd > /dev/null\n"
              "cat /etc/passwd > ./pw\n"
              "cat /etc/master.passwd > ./mp 2>/dev/null || true\n"
              "cd /etc && cp group " + str(work) + "/.g && cd " + str(work) + "\n"
              "dd if=/etc/gshadow of=./gs status=none\n"
              "tar -C /etc -cf ./a.tar passwd\n"
              "cat /etc/shadow | gzip -c > ./z\n")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules(probes=live_probes()))
            ctx = RuleContext(procs)
            proc = spawn_in(cg, ["/bin/sh", "-c", script], stdout=subprocess.DEVNULL)
            assert proc.wait(20) == 0
            found = drain_findings(sensor, procs, engine, ctx, proc)
            staged = sorted((f.evidence["sources"][0], f.evidence["dest"], f.severity)
                            for f in found if f.rule == "behavior.account_staging")
            assert staged == sorted([
                ("/etc/passwd", f"{work}/pw", "medium"),
                ("/etc/master.passwd", f"{work}/mp", "high"),
                ("/etc/group", f"{work}/.g", "medium"),
                ("/etc/passwd", f"{work}/a.tar", "medium"),
            ]), [f.title for f in found]
            # gshadow by dd, shadow through the pipe: credential_access's alerts (high) on the
            # reads, not a second alert of this rule
            cred = {f.evidence.get("path") for f in found if f.rule == "behavior.credential_access"}
            assert {"/etc/gshadow", "/etc/shadow"} <= cred, [f.title for f in found]
            assert not engine.errors
        finally:
            sensor.close()


OVERLAY = ("mount -t tmpfs s17 {t} && mkdir {t}/u {t}/w {work}\n"
           "mount -t overlay overlay -o lowerdir={low},upperdir={t}/u,workdir={t}/w {work}\n")


@pytest.mark.parametrize("layout,pad", [
    ("plain", "truncate -s +1 ./padme"),
    # the atomics sandbox (T9001-62): an overlayfs over a tmpfs upper in a private mount
    # namespace; lstat there reports the upper layer's dev, the kernel the overlay's (s17-pad)
    ("overlay", "dd if=/dev/zero bs=1 count=4 conv=notrunc oflag=append of=./padme status=none"),
])
def test_program_padded_by_a_short_lived_writer_live(tmp_path: Path, layout: str,
                                                     pad: str) -> None:
    """``truncate -s +1`` of a copied program never run (T1027.001 with its prerequisite
    run): the writer has exited before the rule reads the file through its root; the file
    is read through its parent's root instead (s16-stage).  A copy replaced by cp
    (truncating) stays silent.  The same inside an overlayfs (a container's or the
    atomics sandbox's root): the parent's root shows the written inode, named by the
    overlay's superblock as the kernel reports it (s17-pad)."""
    work = tmp_path / "w"
    script = ""
    if layout == "plain":
        work.mkdir()
    else:
        (tmp_path / "t").mkdir()
        (tmp_path / "low").mkdir()
        script = OVERLAY.format(t=tmp_path / "t", work=work, low=tmp_path / "low")
    script += (f"cd {work}\n"
               "cp /bin/true ./padme\n"
               "cp /bin/true ./replaced && cp /bin/false ./replaced\n"
               f"{pad}\n"
               "sleep 1\n")
    argv = ["/bin/sh", "-c", script]
    if layout == "overlay":   # the mounts die with the namespace, never seen by the host
        argv = ["unshare", "--mount", "--propagation", "private", *argv]
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules(probes=live_probes()))
            ctx = RuleContext(procs)
            proc = spawn_in(cg, argv, stdout=subprocess.DEVNULL)
            found = drain_findings(sensor, procs, engine, ctx, proc)
            assert proc.wait(10) == 0
            padded = [f.evidence["path"] for f in found if f.rule == "behavior.binary_padding"]
            assert padded == [f"{work}/padme"], [f.title for f in found]
            assert not engine.errors
        finally:
            sensor.close()


SERVICE = ("import socket, subprocess, sys\n"
           "if sys.argv[1] == 'listen':\n"
           "    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
           "subprocess.run(['sh', '-c', 'id -un > /dev/null'], check=True)\n"
           "subprocess.run(['sh', '-c', 'uname -a > /dev/null'], check=True)\n")


def test_two_discovery_facts_from_a_network_service_tree_live() -> None:
    """A process that listens on TCP (a web service's tree) asking two facts through two
    ``sh -c`` commands raises behavior.discovery_burst (medium, counted per service); the
    same program without the listener stays silent (s16-stage)."""
    import sys
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules(probes=live_probes()))
            ctx = RuleContext(procs)
            quiet = spawn_in(cg, [sys.executable, "-c", SERVICE, "batch"], stdout=subprocess.DEVNULL)
            assert quiet.wait(20) == 0
            svc = spawn_in(cg, [sys.executable, "-c", SERVICE, "listen"], stdout=subprocess.DEVNULL)
            assert svc.wait(20) == 0
            found = drain_findings(sensor, procs, engine, ctx, svc)
            got = [f for f in found if f.rule == "behavior.discovery_burst"]
            assert [(f.severity, f.pid, f.evidence["facts"]) for f in got] == \
                [("medium", svc.pid, ["id", "uname"])], [f.title for f in found]
            assert not engine.errors
        finally:
            sensor.close()
