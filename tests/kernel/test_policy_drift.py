"""A protected file replaced by rename stays protected (issue 13 item 7), compat tier.

Attack/accident: the policy names a path, the kernel (fanotify marks here, map
keys in the lsm tier) holds the inode resolved at apply time.  ``sed -i``,
``passwd``, editors and package upgrades write a new file and rename it over
the old name: before the fix, protection of the path silently ended.  Now the
manager re-resolves (the agent calls ``refresh`` every few seconds), marks the
new inode and raises ``bastion.policy.drift``.

Scope: fanotify permission marks only on this test's tmp file, decisions only
for the test cgroup, a 60 s dead-man.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion.enforce.fanotify import FanotifyEnforcer
from bastion.policy.manager import PolicyManager
from bastion.tier import Tier
from support.cg import run_in, scoped_cgroup

pytestmark = pytest.mark.kernel


def _sed_i(path: Path, text: str) -> None:
    """What ``sed -i`` does: write a temporary file in the same directory, rename it over."""
    tmp = path.parent / f".sed{os.getpid()}"
    tmp.write_text(text)
    os.rename(tmp, path)


def test_file_replaced_by_rename_stays_protected_and_alerts(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:hash:1\n")
    policy = ("version: 1\nmode: enforce\ndefault: allow\nrules:\n"
              f"  - {{name: protect-shadow, operations: [open-read], objects: [{secret}], "
              "action: deny}\n")
    with scoped_cgroup() as (cg, cgid):
        enf = FanotifyEnforcer(scope_cgroup_id=cgid, deadline_s=60, self_tgid=os.getpid())

        def backends() -> tuple[None, FanotifyEnforcer]:
            enf.open()
            enf.start()
            return None, enf

        mgr = PolicyManager(Tier.COMPAT, open_backends=backends)  # type: ignore[arg-type]
        try:
            mgr.apply_text(policy, "drift.yaml")
            r = run_in(cg, ["/bin/cat", str(secret)], timeout=30)
            assert r.returncode != 0 and "Operation not permitted" in r.stderr
            old_ino = secret.stat().st_ino
            _sed_i(secret, "root:newhash:2\n")       # passwd / sed -i, outside the scope
            assert secret.stat().st_ino != old_ino
            found = mgr.refresh()
            assert [(f.rule, f.evidence["reapplied"]) for f in found] == [
                ("bastion.policy.drift", True)]
            change = found[0].evidence["changes"][0]
            assert (change["path"], change["old"]["ino"], change["new"]["ino"]) == (
                str(secret), old_ino, secret.stat().st_ino)
            r = run_in(cg, ["/bin/cat", str(secret)], timeout=30)
            assert r.returncode != 0 and "Operation not permitted" in r.stderr, \
                f"the replaced file is readable again: {r.stdout!r}"
            assert "newhash" not in r.stdout
            assert subprocess_read(secret) == "root:newhash:2\n"   # outside the scope: allowed
            assert mgr.refresh() == []
        finally:
            mgr.close(unpin=True)


def subprocess_read(path: Path) -> str:
    import subprocess
    return subprocess.run(["/bin/cat", str(path)], capture_output=True, text=True, timeout=30,
                          check=True).stdout
