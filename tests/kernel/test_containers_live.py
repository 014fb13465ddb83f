"""Issue 17 items 1 and 2 with a REAL runtime: podman (Debian's package, cgroupfs
manager on this cgroup v1 hybrid host) runs a busybox rootfs built here, offline.

* every event of a process in the container carries its runtime, id and name
  (podman records the name; a --rootfs container has no image), host events none;
  the alert of a rule fired by a container process carries the container too;
* escape acts done from inside a real privileged container, each scoped so the
  host is not harmed: a write to a test-only file under /tmp through the host's
  root bound at /host; ``nsenter`` into the test's own (host) mount namespace to
  run the host's ``/bin/true`` (gone before its event is read); the ext2 filesystem of a test loop device mounted at /mnt; an
  open of core_pattern for appending with nothing written; a unix connect with a
  test-owned socket named podman.sock bound in.  Each raises its rule, with the
  container in the alert.

The sensor is not scoped to a cgroup (the container's cgroup does not exist before
it starts); it only observes, and the test keeps the events of its container.
Containers, the loop device and the files are removed even on failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.containers import ContainerResolver
from bastion.detect.behavior import behavior_rules, live_container_probes
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event
from bastion.kernel.bpffs import cgroup2_root
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.sensors.bpf import BpfSensor

PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(PODMAN is None or BUSYBOX is None,
                                reason="podman and busybox-static (scripts/install-deps.sh)")
# this host kind: no systemd (cgroupfs), RLIMIT_NOFILE/NPROC hard limits below podman's defaults
BASE = ["--cgroup-manager=cgroupfs"]
RUN = ["run", "-d", "--network=none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "mnt", "host", "run"):
        (r / d).mkdir(parents=True)
    shutil.copy2(str(BUSYBOX), r / "bin" / "busybox")
    for applet in ("sh", "sleep", "touch", "ls", "mount", "umount", "nsenter", "logger", "true",
                   "cat"):
        (r / "bin" / applet).symlink_to("busybox")
    return r


def podman(*args: str, check: bool = True) -> str:
    p = subprocess.run([str(PODMAN), *BASE, *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout.strip()


@pytest.fixture
def containers() -> Iterator[list[str]]:
    names: list[str] = []
    try:
        yield names
    finally:
        for n in names:
            podman("rm", "-f", "-t", "0", n, check=False)


class Watch:
    """The live sensor with the agent's enrichment (process table, container context)
    and the behaviour pack with its live container probes."""

    def __init__(self) -> None:
        self.sensor = BpfSensor(classes=("exec", "file", "net"))
        self.procs = ProcessTable()
        self.resolver = ContainerResolver(cgroup2=str(cgroup2_root()))
        self.engine = Engine(behavior_rules(cprobes=live_container_probes()))
        self.ctx = RuleContext(self.procs)
        self.dispatcher = Dispatcher(self.procs)
        self.events: list[Event] = []
        self.alerts: list[dict[str, Any]] = []

    def __enter__(self) -> Watch:
        self.sensor.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sensor.close()
        self.resolver.close()

    def pump(self, until: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.sensor.poll(0.05) or []:
                self.procs.update(ev)
                ev = self.resolver.enrich(self.procs.enrich(ev))
                if ev.proc.container is not None:
                    self.events.append(ev)
                    for f in self.engine.evaluate(ev, self.ctx):
                        self.alerts.append(self._alert(f))
            if until():
                return
        execs = [(e.proc.exe, getattr(e, "argv", None)) for e in self.events if e.type == "exec"]
        raise AssertionError(f"timed out; alerts {[a['rule'] for a in self.alerts]}; "
                             f"{len(self.events)} container events, execs {execs[:20]}, "
                             f"others {[(e.type, getattr(e, 'path', ''), getattr(e, 'family', '')) for e in self.events if e.type == 'connect' or 'bastion-ctr' in getattr(e, 'path', '')]}")

    def _alert(self, f: Finding) -> dict[str, Any]:
        return self.dispatcher.dispatch(f, time.time_ns()).to_json()

    def of(self, cid: str) -> list[Event]:
        return [e for e in self.events if e.proc.container and e.proc.container.id == cid]

    def alerts_of(self, cid: str, rule: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["rule"] == rule and a.get("container", {}).get("id") == cid]


def test_events_and_alerts_carry_the_container(rootfs: Path, containers: list[str]) -> None:
    name = f"bastion-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    with Watch() as w:
        cid = podman(*RUN, "--name", name, "--rootfs", str(rootfs),
                     "/bin/sh", "-c", "touch /tmp/made-here; exec /bin/sleep 30")
        w.pump(lambda: any(e.type == "exec" and getattr(e, "argv", ())[-1:] == ("30",)
                           for e in w.of(cid)))
        mine = w.of(cid)
        c = mine[-1].proc.container
        assert c is not None
        assert (c.runtime, c.id, c.name, c.verified) == ("podman", cid, name, True), c
        assert c.cgroup.endswith(f"libpod-{cid}") and not c.privileged
        assert any(e.type == "open" and getattr(e, "path", "") == "/tmp/made-here" for e in mine)
        # an administrator's `podman exec` (runc init joins the container's namespaces):
        # in the container, its context, and no escape finding
        podman("exec", name, "/bin/touch", "/tmp/exec-here")
        w.pump(lambda: any(getattr(e, "path", "") == "/tmp/exec-here" for e in w.of(cid)))
        # host processes get no container
        out = subprocess.run(["/bin/true"], check=True)
        assert out.returncode == 0
        host = ContainerResolver(cgroup2=str(cgroup2_root()))
        try:
            from bastion.events import Proc
            me = Proc(os.getpid(), os.getpid(), 0, 0, 0, 0,
                      os.stat(str(cgroup2_root()) + _v2_path(os.getpid())).st_ino, "pytest")
            assert host.for_proc(me) is None
        finally:
            host.close()
        # no escape rule fired for an ordinary container
        assert not [a for a in w.alerts if a.get("container", {}).get("id") == cid
                    and a["rule"].startswith("behavior.container_")], w.alerts


def _v2_path(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:].rstrip("/") if line[3:] != "/" else ""
    raise AssertionError("no cgroup v2 line")


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[str]:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", str(img)], check=True, capture_output=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_escape_acts_from_a_privileged_container(rootfs: Path, containers: list[str],
                                                 tmp_path: Path, loopdev: str) -> None:
    name = f"bastion-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    marker = Path(f"/tmp/bastion-ctr-{uuid.uuid4().hex[:10]}")   # the only host file written
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sockdir / "podman.sock"))                    # a test-owned look-alike
    listener.listen(1)
    script = (f"touch /host{marker}; "
              f"nsenter -t {os.getpid()} -m /bin/true; "
              f"mount -t ext2 {loopdev} /mnt && ls /mnt; "
              "exec 3>>/proc/sys/kernel/core_pattern; exec 3>&-; "
              "logger bastion-test 2>/dev/null; "
              "exec /bin/sleep 30")
    try:
        with Watch() as w:
            cid = podman(*RUN, "--privileged", "--pid=host", "--name", name,
                         "-v", "/:/host", "-v", f"{sockdir / 'podman.sock'}:/run/podman.sock",
                         "--rootfs", str(rootfs), "/bin/sh", "-c", script)
            want = ("behavior.container_privileged", "behavior.container_host_write",
                    "behavior.container_host_namespace", "behavior.container_block_mount",
                    "behavior.container_release_agent", "behavior.container_runtime_socket")
            try:
                w.pump(lambda: all(w.alerts_of(cid, r) for r in want) and any(
                    a["evidence"]["source"] == loopdev
                    for a in w.alerts_of(cid, "behavior.container_block_mount")))
            except AssertionError as exc:
                logs = subprocess.run([str(PODMAN), *BASE, "logs", name], capture_output=True,
                                      text=True, timeout=60)
                raise AssertionError(f"{exc}; container output: {logs.stdout}{logs.stderr}") from None
            assert marker.exists()
            for r in want:
                a = w.alerts_of(cid, r)[0]
                assert a["container"]["runtime"] == "podman" and a["container"]["name"] == name
                assert "T1611" in a["attack"] or "T1610" in a["attack"]
                assert a["action"] == "alert"          # rules find; only respond/ acts
            hw = w.alerts_of(cid, "behavior.container_host_write")[0]
            assert hw["evidence"]["host_path"] == str(marker)
            # the test's loop device mounted inside, and the host's root disk bound at /host
            bms = {a["evidence"]["source"]: a for a in w.alerts_of(cid, "behavior.container_block_mount")}
            assert bms[loopdev]["evidence"]["fstype"] == "ext2" and bms[loopdev]["evidence"]["mount"] == "/mnt"
            assert any(a["evidence"]["mount"] == "/host" for a in bms.values())
            hn = w.alerts_of(cid, "behavior.container_host_namespace")[0]
            assert hn["evidence"].get("host_file") == "/usr/bin/true" or "mnt_ns" in hn["evidence"]
            ra = w.alerts_of(cid, "behavior.container_release_agent")[0]
            assert ra["evidence"]["path"] == "/proc/sys/kernel/core_pattern"
            rs = w.alerts_of(cid, "behavior.container_runtime_socket")[0]
            assert rs["evidence"]["socket"].endswith("/podman.sock")
    finally:
        listener.close()
        marker.unlink(missing_ok=True)


def test_look_alike_cgroup_gets_no_container_policy(rootfs: Path, containers: list[str]) -> None:
    """Attack: an unprivileged user with a delegated cgroup subtree (rootless podman, a
    user systemd) names a cgroup after a REAL running container (``libpod-<its id>``,
    so the runtime state exists) to get that container's looser policy.  The cgroup is
    not root-owned: reported as a container, never verified, never matched by a
    ``container:`` subject; a ``host: true`` rule still covers it.  The same for a
    root-owned look-alike with an id no runtime knows."""
    from bastion.config import parse_policy
    from bastion.events import Proc
    from bastion.policy.compile import resolve

    name = f"bastion-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    real = podman(*RUN, "--name", name, "--rootfs", str(rootfs), "/bin/sleep", "30")
    root = cgroup2_root()
    base = root / f"bastion-test-{uuid.uuid4().hex[:10]}"
    delegated = base / "user"
    fake_dirs = [delegated / f"libpod-{real}", base / f"libpod-{'ab' * 32}"]
    victims: list[subprocess.Popen[bytes]] = []
    try:
        delegated.mkdir(parents=True)
        os.chown(delegated, 65534, 65534)        # what systemd delegation does
        for d in fake_dirs:
            d.mkdir()
            victims.append(subprocess.Popen(
                ["/bin/sh", "-c", f'echo $$ > {d}/cgroup.procs && exec sleep 30']))
        time.sleep(0.3)
        r = ContainerResolver(cgroup2=str(root))
        try:
            got = []
            for d, v in zip(fake_dirs, victims):
                c = r.for_proc(Proc(v.pid, v.pid, 0, 65534, 65534, 65534, os.stat(d).st_ino, "sleep"))
                assert c is not None and c.runtime == "podman" and not c.verified, c
                assert not c.name, "no metadata for an unverified container"
                got.append(c)
            assert "delegated" in got[0].why and "uid 65534" in got[0].why
            assert "no podman state" in got[1].why
            inv = dict(r.inventory())
        finally:
            r.close()
        real_c = next(c for c in inv.values() if c is not None and c.id == real and c.verified)
        assert real_c.name == name
        policy = parse_policy(
            "version: 1\nmode: audit\ndefault: allow\nrules:\n"
            f"  - name: ctr-allow\n    subject: {{container: {{name: '{name}'}}}}\n"
            "    operations: [open-read]\n    objects: [/etc/shadow]\n    action: allow\n"
            "  - name: host-audit\n    subject: {host: true}\n"
            "    operations: [open-read]\n    objects: [/etc/shadow]\n    action: audit\n",
            "p.yaml").hips
        rp = resolve(policy)
        ctr_ids = {i[1] for i in rp.rules[0].identities}
        host_ids = {i[1] for i in rp.rules[1].identities}
        fake_ids = {os.stat(d).st_ino for d in fake_dirs}
        real_ids = {cg for cg, c in inv.items() if c is not None and c.id == real and c.verified}
        assert real_ids and real_ids <= ctr_ids
        assert not fake_ids & ctr_ids, "a look-alike cgroup got the container's rule"
        assert fake_ids <= host_ids and not real_ids & host_ids
    finally:
        for v in victims:
            v.kill()
            v.wait()
        for d in [*fake_dirs, delegated, base]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def test_container_subject_is_enforced_on_a_real_container(rootfs: Path, containers: list[str]) -> None:
    """A ``container: {name: ...}`` rule compiled against the live cgroups kills an exec
    inside that podman container (compat tier: SIGKILL at sched_process_exec), scoped
    to the container's cgroup with a dead-man deadline; the object is the rootfs's own
    busybox copy.  The same policy gives a host process nothing (not its subject)."""
    from bastion.config import parse_policy
    from bastion.enforce.hips_kernel import HipsKernel
    from bastion.policy.compile import compile_plan, resolve

    name = f"bastion-test-{uuid.uuid4().hex[:8]}"
    containers.append(name)
    cid = podman(*RUN, "--name", name, "--rootfs", str(rootfs), "/bin/sleep", "30")
    pid = int(podman("inspect", "-f", "{{.State.Pid}}", cid))
    rel = _v2_path(pid)
    cg_path = cgroup2_root() / rel.lstrip("/")
    bb = rootfs / "bin" / "busybox"
    policy = parse_policy(
        "version: 1\nmode: enforce\ndefault: allow\nrules:\n"
        f"  - name: no-busybox-in-{name}\n    subject: {{container: {{name: '{name}'}}}}\n"
        f"    operations: [exec]\n    objects: ['{bb}']\n    action: deny\n", "c.yaml").hips
    rp = resolve(policy)
    cg_id = os.stat(cg_path).st_ino
    assert rp.rules and {i[1] for i in rp.rules[0].identities} == {cg_id}
    hk = HipsKernel("compat", cgroup_id=cg_id, deadline_s=60, self_tgid=os.getpid(),
                    cgroup_path=cg_path)
    hk.open()
    try:
        hk.apply(compile_plan(rp))
        hk.poll(0)
        p = subprocess.run([str(PODMAN), *BASE, "exec", name, "/bin/ls", "/"], capture_output=True,
                           text=True, timeout=120)
        time.sleep(0.05)
        evs = hk.poll(0)
    finally:
        hk.close()
    assert p.returncode == 137, (p.returncode, p.stdout, p.stderr)
    assert any(e.op == "exec" and e.action == "deny" and e.enforced and e.rule_id == 1
               for e in evs), evs
    host = subprocess.run([str(bb), "true"], timeout=30)
    assert host.returncode == 0
