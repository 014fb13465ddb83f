"""The administrator inside the protected scope, lsm tier, inside the test VM (s22).

In production tamper protection's scope is every process, the administrator's shell
included; the other VM tests run the CLI outside the test cgroup, so none saw a command
that the lsm hooks refuse to an unenrolled root (s22: `bastion stop` opened the pinned
identities write-capable and was refused everywhere).  Here one protection instance
(guardian + a real agent, both scoped to the test cgroup with a dead-man deadline) is
driven by every administrator command run FROM INSIDE the test cgroup: the read-only
ones must work, the token-gated ones must work with the token and be refused cleanly
(one line, exit 1, no traceback) without it, and the protected state stays unchanged.

A TEST instance only (tests/support/tamper.py): hooks act only on processes in the test
cgroup, until the deadline; teardown kills and unpins.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402
from support.policies import default_policy, default_text  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_admin_in_scope_lsm.py`")


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp_path, cg, cgid, deadline_s=400)
        try:
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-40:]))
            i.teardown()


def _agent_argv(inst: T.Instance, pol: Path, sock: Path) -> list[str]:
    """The real agent (`bastion run`, as the guardian runs it), scoped like the guardian."""
    return [T.PY, "-B", "-m", "bastion.cli.main", "run", "--keep-pins", "--quiet",
            "--policy", str(pol), "--data-dir", str(inst.data), "--socket", str(sock),
            "--pin-root", str(inst.pin_root), "--test-deadline", str(inst.deadline_s),
            "--test-cgroup-id", str(inst.cgid)]


def _policy(tmp: Path) -> Path:
    # the shipped default, with the periodic integrity scan off (TCG time) and BPF loads
    # not refused: `bastion doctor`/`integrity scan` by hand are refused their loads by
    # design under refuse_bpf_loads (docs/integrity.md); what this file looks at is
    # tamper protection
    text = default_text().replace("  interval: 5m\n", "  interval: 0s\n") \
        .replace("  refuse_bpf_loads: true\n", "  refuse_bpf_loads: false\n")
    assert "interval: 0s" in text and "refuse_bpf_loads: false" in text
    return default_policy(tmp / "policy-agent.yaml", tmp / "shielded", text)


INPROC = T.REPO / "tests" / "support" / "cli_inproc.py"


class Admin:
    """Runs `bastion ...` inside the test cgroup and records each outcome.  The commands
    run in turn in one interpreter placed in the cgroup (tests/support/cli_inproc.py: the
    console script's ``main()``, fds 1 and 2 captured): under TCG a fresh ``bastion``
    costs 8-16 s of start-up, 26 of them most of this file's run time."""

    def __init__(self, inst: T.Instance, env: dict[str, str]) -> None:
        self.inst, self.env = inst, env
        self.failures: list[str] = []
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f'echo $$ > {inst.cg}/cgroup.procs && exec "$@"', "sh",
             T.PY, str(INPROC), str(w)],
            stdin=subprocess.PIPE, pass_fds=(w,), env={**os.environ, **env}, text=True, cwd="/")
        os.close(w)
        self.replies = os.fdopen(r)

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(list(argv)) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.replies], [], [], timeout)
        if not ready:
            self.close()
            raise AssertionError(f"bastion {' '.join(argv)}: no answer in {timeout:.0f}s")
        line = self.replies.readline()
        if not line:
            raise AssertionError(f"bastion {' '.join(argv)}: the command runner died "
                                 f"(exit {self.proc.wait(10)})")
        got = json.loads(line)
        r = subprocess.CompletedProcess(["bastion", *argv], int(got["rc"]), str(got["stdout"]),
                                        str(got["stderr"]))
        print(f"[{time.monotonic() - t0:5.1f}s] bastion {' '.join(argv)} -> {r.returncode}")
        return r

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.replies.close()

    def works(self, *argv: str, rc: tuple[int, ...] = (0,), want: str = "") -> str:
        r = self.run(*argv)
        if r.returncode not in rc or want not in r.stdout + r.stderr or "Traceback" in r.stderr:
            self.failures.append(f"bastion {' '.join(argv)}: rc {r.returncode} (want {rc}, "
                                 f"{want!r})\n  stdout: {r.stdout[-600:]}\n  stderr: {r.stderr[-1500:]}")
        return r.stdout

    def refused(self, *argv: str, want: str) -> None:
        r = self.run(*argv)
        err = r.stderr.strip()
        if r.returncode != 1 or want not in err or "Traceback" in err:
            self.failures.append(f"bastion {' '.join(argv)}: not refused cleanly: rc "
                                 f"{r.returncode} (want 1, {want!r})\n  stdout: {r.stdout[-600:]}"
                                 f"\n  stderr: {err[-1500:]}")


def test_every_admin_command_from_inside_the_protected_scope(inst: T.Instance,
                                                             tmp_path: Path) -> None:
    asock = tmp_path / "agent.sock"
    pol = _policy(tmp_path)
    t0 = time.monotonic()
    inst.start_guardian("--agent-socket", str(asock), tier="lsm",
                        agent=_agent_argv(inst, pol, asock), start_timeout=240)
    deadline = time.monotonic() + 240     # readiness of the real agent (slow TCG VM)
    while not asock.exists():
        assert time.monotonic() < deadline, "the agent's socket never came up; " + inst.guardian_state()
        time.sleep(0.5)
    agent = inst.agent_pid()
    print(f"guardian and agent up in {time.monotonic() - t0:.1f}s (TCG)")
    from bastion.guard.token import TokenStore

    token_record = TokenStore(inst.data).hash_path
    hash_before = token_record.read_bytes()
    policy_before = (inst.etc / "policy.yaml").read_bytes()
    adm = Admin(inst, {"BASTION_PIN_ROOT": str(inst.pin_root), "BASTION_DATA_DIR": str(inst.data),
                       "BASTION_SOCKET": str(asock), "BASTION_GUARDIAN_SOCKET": str(inst.gsock)})
    apply_file = tmp_path / "apply.yaml"
    apply_file.write_text(pol.read_text())

    # ---- read-only: what the administrator looks at ----
    seen = len(inst.alerts())
    st = adm.works("status", "--json", "--pin-root", str(inst.pin_root))
    if st:
        doc = json.loads(st)
        assert doc["pid"] == agent and doc["tamper_protection"] == "full", doc
    adm.works("status", "--pin-root", str(inst.pin_root), want="tamper       full")
    adm.works("alerts", "--json", "--limit", "20")
    adm.works("alerts", "--rule", "bastion.*")
    adm.works("events", "--limit", "5")
    adm.works("log", "verify", want="chain intact")
    adm.works("policy", "show", want="no HIPS policy applied")   # the default has no rules
    adm.works("policy", "check", str(apply_file), "--tier", "lsm")
    adm.works("policy", "diff", str(apply_file), rc=(0, 1))
    adm.works("sigma", "installed")
    (tmp_path / "sigma-rules").mkdir()
    adm.works("sigma", "check", str(tmp_path / "sigma-rules"), want="0 rules loaded")
    adm.works("integrity", "scan", "--json", rc=(0, 3))
    adm.works("doctor", "--json")
    adm.works("rollback", want="no incidents")

    # looking is no attack: none of it was refused by (or alerted as) tamper protection
    time.sleep(1)
    denied = [(a["rule"], a["title"]) for a in inst.alerts()[seen:]]
    if denied:
        adm.failures.append(f"the read-only commands raised tamper alerts: {denied}")

    # ---- gated: refused cleanly without the token, nothing changed ----
    seen = len(inst.alerts())
    adm.refused("policy", "apply", str(apply_file), want="token")
    adm.refused("reset", "--emergency", "--pin-root", str(inst.pin_root), want="token")
    adm.refused("maintenance", "start", "--token-file", str(inst.wrong_file), want="refused")
    adm.refused("stop", "--token-file", str(inst.wrong_file), want="refused")
    adm.refused("sigma", "rollback", want="token")
    adm.refused("set-token", "--token-file", str(inst.wrong_file), "--old-token-file",
                str(inst.token_file), want="maintenance window")
    assert token_record.read_bytes() == hash_before
    # refused before touching protected state: only the wrong tokens are alerted
    time.sleep(1)
    other = [(a["rule"], a["title"]) for a in inst.alerts()[seen:]
             if a["rule"] != "bastion.tamper.bad-token"]
    if other:
        adm.failures.append(f"the refused commands raised tamper alerts: {other}")
    assert (inst.etc / "policy.yaml").read_bytes() == policy_before
    assert T.proc_state(agent) in T.ALIVE and inst.status()["tamper_protection"] == "full"

    # ---- gated, with the token: works ----
    # after the two wrong tokens above the right one waits out their back-off (1 s, then
    # 2 s for this source: docs/tamper.md), as an administrator would
    time.sleep(4.5)
    adm.works("policy", "apply", str(apply_file), "--token-file", str(inst.token_file),
              want="applied")
    adm.works("maintenance", "start", "--token-file", str(inst.token_file), want="window open")
    adm.works("maintenance", "end", want="closed")
    adm.works("status", "--json", "--pin-root", str(inst.pin_root), want='"full"')
    # break-glass with the token: the guardian's window first, then every pin goes
    adm.works("reset", "--emergency", "--token-file", str(inst.token_file), "--pin-root",
              str(inst.pin_root), want="removed")
    left = sorted(str(p.relative_to(inst.pin_root)) for p in inst.pin_root.rglob("*")
                  if not p.is_dir()) if inst.pin_root.exists() else []
    if left:
        adm.failures.append(f"reset --emergency left pins: {left}")
    adm.works("stop", "--token-file", str(inst.token_file), want="stopping")
    adm.close()
    assert not adm.failures, "\n\n".join(adm.failures) + "\n\n" + inst.guardian_state()
    assert inst.guardian is not None and inst.guardian.wait(60) == 0
