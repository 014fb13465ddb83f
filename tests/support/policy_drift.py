"""A protected file replaced by rename stays protected (issue 13 item 7), for both tiers.

Attack/accident: the policy names a path, the kernel (fanotify marks in the
compat tier, map keys in the lsm tier) holds the inode resolved at apply time.
``sed -i``, ``passwd``, editors and package upgrades write a new file and
rename it over the old name: before the fix, protection of the path silently
ended.  Now the manager re-resolves (the agent calls ``refresh`` every few
seconds), installs the new inode and raises ``bastion.policy.drift``.

Scope: decisions only for the test cgroup, a 60 s dead-man; fanotify marks
(compat) only on the test's tmp file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from bastion.policy.manager import PolicyManager
from bastion.tier import Tier
from support.cg import run_in, scoped_cgroup


def _sed_i(path: Path, text: str) -> None:
    """What ``sed -i`` does: write a temporary file in the same directory, rename it over."""
    tmp = path.parent / f".sed{os.getpid()}"
    tmp.write_text(text)
    os.rename(tmp, path)


def _refused(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode != 0 and "Operation not permitted" in r.stderr


def replaced_file_stays_protected(tier: Tier, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:hash:1\n")
    policy = ("version: 1\nmode: enforce\ndefault: allow\nrules:\n"
              f"  - {{name: protect-shadow, operations: [open-read], objects: [{secret}], "
              "action: deny}\n")
    with scoped_cgroup() as (cg, cgid):

        def backends() -> tuple[Any, Any]:
            if tier is Tier.LSM:
                from bastion.enforce.hips_kernel import HipsKernel
                hk = HipsKernel("lsm", cgroup_id=cgid, deadline_s=60, self_tgid=os.getpid())
                hk.open()
                return hk, None
            from bastion.enforce.fanotify import FanotifyEnforcer
            enf = FanotifyEnforcer(scope_cgroup_id=cgid, deadline_s=60, self_tgid=os.getpid())
            enf.open()
            enf.start()
            return None, enf

        mgr = PolicyManager(tier, open_backends=backends)
        try:
            mgr.apply_text(policy, "drift.yaml")
            assert _refused(run_in(cg, ["/bin/cat", str(secret)], timeout=30))
            old_ino = secret.stat().st_ino
            _sed_i(secret, "root:newhash:2\n")       # passwd / sed -i, outside the scope
            assert secret.stat().st_ino != old_ino
            found = mgr.refresh(full=False)     # what the agent does every 2 s
            assert [(f.rule, f.evidence["reapplied"]) for f in found] == [
                ("bastion.policy.drift", True)]
            change = found[0].evidence["changes"][0]
            assert (change["path"], change["old"]["ino"], change["new"]["ino"]) == (
                str(secret), old_ino, secret.stat().st_ino)
            r = run_in(cg, ["/bin/cat", str(secret)], timeout=30)
            assert _refused(r), f"the replaced file is readable again: {r.stdout!r}"
            outside = subprocess.run(["/bin/cat", str(secret)], capture_output=True, text=True,
                                     timeout=30)
            assert outside.stdout == "root:newhash:2\n"   # outside the scope: allowed
            assert mgr.refresh() == []
        finally:
            mgr.close(unpin=True)
