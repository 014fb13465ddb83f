"""Policy drift (issue 13 item 7): a file replaced by rename keeps its (parent, name) and
gets a new inode; resolution records the name, ``drift`` finds the change (pure) and the
manager re-applies the re-resolved policy with a ``bastion.policy.drift`` finding."""

from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass, field

import pytest

from bastion.config import parse_policy
from bastion.policy.compile import (
    Drift, FileTarget, MapPlan, Resolver, compile_plan, drift, kernel_dev, resolve,
)
from bastion.policy.manager import PolicyManager
from bastion.tier import Tier

pytestmark = pytest.mark.unit

DEV = kernel_dev(os.makedev(8, 1))

POLICY = """\
version: 1
mode: enforce
default: allow
rules:
  - name: protect-shadow
    operations: [open-read, open-write]
    objects: [/etc/shadow]
    action: deny
  - name: no-curl-from-nginx
    subject: {exe: /usr/sbin/nginx}
    operations: [exec]
    objects: [/usr/bin/curl]
    action: deny
"""


@dataclass
class FakeFS:
    """path -> (ino, is_dir); mutable, so a test can replace a file by rename."""

    files: dict[str, tuple[int, bool]] = field(default_factory=lambda: {
        "/": (2, True), "/etc": (10, True), "/etc/shadow": (300, False),
        "/usr/sbin": (20, True), "/usr/sbin/nginx": (100, False),
        "/usr/bin": (30, True), "/usr/bin/curl": (400, False), "/usr/bin/dash": (200, False)})

    def stat(self, path: str) -> os.stat_result:
        path = {"/bin/sh": "/usr/bin/dash"}.get(path, path)
        if path not in self.files:
            raise FileNotFoundError(path)
        ino, is_dir = self.files[path]
        mode = (statmod.S_IFDIR if is_dir else statmod.S_IFREG) | 0o755
        return os.stat_result((mode, ino, os.makedev(8, 1), 1, 0, 0, 0, 0, 0, 0))

    def resolver(self) -> Resolver:
        return Resolver(stat=self.stat, glob=lambda pat: [pat] if pat in self.files else [],
                        uid_of=lambda name: 0)


def _resolve(fs: FakeFS):  # type: ignore[no-untyped-def]
    return resolve(parse_policy(POLICY, "p.yaml").hips, fs.resolver())


def test_resolution_keeps_parent_inode_and_name() -> None:
    shadow = _resolve(FakeFS()).rules[0].files[0]
    assert shadow == FileTarget(DEV, 300, False, "/etc/shadow", DEV, 10, "shadow")


def test_no_change_no_drift() -> None:
    fs = FakeFS()
    assert drift(_resolve(fs), _resolve(fs)) == []


def test_replaced_by_rename_is_object_drift() -> None:
    fs = FakeFS()
    before = _resolve(fs)
    fs.files["/etc/shadow"] = (301, False)      # passwd: write shadow+, rename over shadow
    now = _resolve(fs)
    assert drift(before, now) == [Drift("protect-shadow", "object", "/etc/shadow",
                                        (DEV, 300), (DEV, 301))]
    # the compiled plan follows the new inode, and only it
    keys = {(dev, ino) for (_s, _op, dev, ino), _v in compile_plan(now).rules}
    assert (DEV, 301) in keys and (DEV, 300) not in keys


def test_replaced_subject_and_removed_object() -> None:
    fs = FakeFS()
    before = _resolve(fs)
    fs.files["/usr/sbin/nginx"] = (101, False)  # package upgrade
    del fs.files["/etc/shadow"]                 # between unlink and the new name
    assert drift(before, _resolve(fs)) == [
        Drift("protect-shadow", "object", "/etc/shadow", (DEV, 300), (0, 0)),
        Drift("no-curl-from-nginx", "subject", "exe /usr/sbin/nginx", (DEV, 100), (0, 0)),
        Drift("no-curl-from-nginx", "subject", "exe /usr/sbin/nginx", (0, 0), (DEV, 101)),
    ]


class _FakeKernel:
    def __init__(self) -> None:
        self.applied: list[MapPlan] = []

    def apply(self, plan: MapPlan) -> int:
        self.applied.append(plan)
        return len(self.applied)

    def clear(self) -> None:
        self.applied.clear()

    def poll(self, timeout_s: float) -> None:
        return None

    def close(self, *, unpin: bool = False) -> None:
        pass


class _FakeFiles:
    def __init__(self) -> None:
        self.targets: list[list[FileTarget]] = []

    def apply(self, plan: MapPlan, targets: list[FileTarget]) -> None:
        self.targets.append(list(targets))

    def clear(self) -> None:
        pass

    def poll(self, timeout_s: float) -> None:
        return None

    def close(self) -> None:
        pass


def test_manager_refresh_reapplies_and_alerts() -> None:
    fs = FakeFS()
    k, files = _FakeKernel(), _FakeFiles()
    mgr = PolicyManager(Tier.COMPAT, open_backends=lambda: (k, files),  # type: ignore[arg-type,return-value]
                        resolver=fs.resolver())
    mgr.apply_text(POLICY, "p.yaml")
    assert mgr.refresh() == [] and len(k.applied) == 1
    fs.files["/etc/shadow"] = (301, False)
    found = mgr.refresh()
    assert [f.rule for f in found] == ["bastion.policy.drift"]
    f = found[0]
    assert f.severity == "high" and f.evidence["reapplied"] is True
    assert f.evidence["changes"] == [{"rule": "protect-shadow", "kind": "object", "path": "/etc/shadow",
                                      "old": {"dev": DEV, "ino": 300}, "new": {"dev": DEV, "ino": 301}}]
    assert "/etc/shadow" in f.title
    # the kernel got a new generation with the new inode, fanotify the new mark
    assert len(k.applied) == 2 and mgr.current is not None and mgr.current.gen == 2
    assert {(d, i) for (_s, _o, d, i), _v in k.applied[1].rules} >= {(DEV, 301)}
    assert [(t.dev, t.ino) for t in files.targets[-1]] == [(DEV, 301)]
    assert mgr.refresh() == []                  # settled


def test_refresh_never_installs_a_lockout() -> None:
    """An attacker who can rename in a protected directory makes the protected name a
    hard link to /bin/sh: the re-resolution would deny the shell to everyone."""
    fs = FakeFS()
    k = _FakeKernel()
    mgr = PolicyManager(Tier.LSM, open_backends=lambda: (k, None),  # type: ignore[arg-type,return-value]
                        resolver=fs.resolver())
    mgr.apply_text(POLICY.replace("[open-read, open-write]", "[exec]"), "p.yaml")
    fs.files["/etc/shadow"] = (200, False)      # now the inode of /usr/bin/dash
    found = mgr.refresh()
    assert [(f.rule, f.severity, f.evidence["reapplied"]) for f in found] == [
        ("bastion.policy.drift", "critical", False)]
    assert "locks the administrator out" in found[0].evidence["outcome"]
    assert len(k.applied) == 1                  # the running plan is unchanged
    assert mgr.refresh() == []                  # said once, not every few seconds
    fs.files["/etc/shadow"] = (302, False)      # a harmless replacement is applied again
    assert [f.evidence["reapplied"] for f in mgr.refresh()] == [True] and len(k.applied) == 2


def test_fast_refresh_stats_only_resolved_paths() -> None:
    fs = FakeFS()
    k = _FakeKernel()
    calls: list[str] = []
    r = fs.resolver()
    counting = Resolver(stat=lambda p: (calls.append(p), r.stat(p))[1], glob=r.glob, uid_of=r.uid_of)
    mgr = PolicyManager(Tier.LSM, open_backends=lambda: (k, None),  # type: ignore[arg-type,return-value]
                        resolver=counting)
    mgr.apply_text(POLICY, "p.yaml")
    calls.clear()
    assert mgr.refresh(full=False) == []
    assert calls == ["/etc/shadow", "/usr/bin/curl"]        # the objects, nothing else
    fs.files["/usr/sbin/nginx"] = (101, False)               # a subject: only a full refresh sees it
    assert mgr.refresh(full=False) == []
    assert [f.evidence["changes"][0]["kind"] for f in mgr.refresh()] == ["subject", "subject"]
    fs.files["/etc/shadow"] = (301, False)
    assert [f.evidence["changes"][0]["path"] for f in mgr.refresh(full=False)] == ["/etc/shadow"]
