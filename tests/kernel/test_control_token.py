"""The control socket under tamper protection (issue 13 items 10 and 11), with the
scoped TEST guardian (tests/support/tamper.py) and a real agent.

* a root impostor bound at the guardian's socket path is refused by
  `bastion stop` before anything is sent, even with Bastion's command line;
* `bastion policy apply` needs the maintenance token once protection is on:
  without it (or with a wrong one) it is refused and alerted, with it it is
  applied and every apply raises a chained `bastion.policy.applied` alert
  with the old and new policy sha256 and modes (critical when it weakens).

Scoped: protected set in tmp, pins under a test pin root, programs act only on
attackers in the test cgroup with a dead-man deadline; HIPS rules name only a
private copy of dash in tmp; teardown kills the guardian and agent and removes
the pins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

BASTION = str(T.REPO / ".venv" / "bin" / "bastion")
IMPOSTOR = str(T.REPO / "tests" / "support" / "impostor.py")


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        yield from T.instance(tmp_path, cg, cgid)


def impostor(sock: Path, capture: Path, mode: str, *words: str) -> subprocess.Popen[str]:
    """The fake server as its own process, its command line imitating Bastion's."""
    p = subprocess.Popen([T.PY, IMPOSTOR, str(sock), str(capture), mode, *words],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "listening", p.stderr
    return p


def stand_in() -> list[str]:
    """A stand-in agent that outlives no test (no shared kill-by-name mark: concurrent
    tamper tests elsewhere on the machine SIGKILL whatever carries that mark, a guardian
    whose argv names it included)."""
    return [T.PY, "-c", "import time; time.sleep(300)"]


def _env(inst: T.Instance) -> dict[str, str]:
    return {**os.environ, "BASTION_PIN_ROOT": str(inst.pin_root)}


def token_forms(token: bytes) -> list[bytes]:
    return [token, base64.b64encode(token), token.hex().encode()]


def test_impostor_at_the_guardian_socket_gets_nothing(inst: T.Instance, tmp_path: Path) -> None:
    inst.start_guardian(agent=stand_in())
    real_pid = int(inst.status()["pid"])  # type: ignore[call-overload]
    # root replaces guardian.sock with its own server, named like the guardian
    inst.gsock.unlink()
    capture = tmp_path / "captured"
    capture.touch()
    fake = impostor(inst.gsock, capture, "plain", "bastion.cli.guard", "guardian")
    try:
        r = subprocess.run([BASTION, "stop", "--token-file", str(inst.token_file),
                            "--guardian-socket", str(inst.gsock)], env=_env(inst),
                           capture_output=True, text=True, timeout=60)
        got = capture.read_bytes()
    finally:
        fake.kill()
        fake.wait(10)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "not the Bastion guardian" in r.stderr and "not enrolled" in r.stderr, r.stderr
    assert "nothing was sent" in r.stderr
    assert got == b"", got                        # refused before a single byte
    for form in token_forms(T.TOKEN):
        assert form not in got
    # the real guardian is untouched: still running, protection on, no window opened
    assert inst.guardian is not None and inst.guardian.poll() is None
    assert T.proc_state(real_pid) in ("S", "R")
    assert not [a for a in inst.alerts() if a["rule"] == "bastion.tamper.maintenance"]


def test_stop_proves_the_token_without_sending_it(inst: T.Instance, tmp_path: Path) -> None:
    """The genuine guardian, reached through a recording relay that the client would
    accept only by name: with protection on it is refused (not enrolled); the direct
    stop works and the guardian never saw the token (nothing of it is in the request)."""
    inst.start_guardian(agent=stand_in())
    relay_sock = tmp_path / "relay.sock"
    capture = tmp_path / "relayed"
    capture.touch()
    fake = impostor(relay_sock, capture, f"relay={inst.gsock}", "bastion.cli.guard", "guardian")
    try:
        r = subprocess.run([BASTION, "stop", "--token-file", str(inst.token_file),
                            "--guardian-socket", str(relay_sock)], env=_env(inst),
                           capture_output=True, text=True, timeout=60)
        relayed = capture.read_bytes()
    finally:
        fake.kill()
        fake.wait(10)
    for form in token_forms(T.TOKEN):
        assert form not in relayed
    assert r.returncode == 1 and "not enrolled" in r.stderr, r.stderr
    assert relayed == b""
    r = subprocess.run([BASTION, "stop", "--token-file", str(inst.token_file),
                        "--guardian-socket", str(inst.gsock)], env=_env(inst),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert inst.guardian is not None and inst.guardian.wait(30) == 0


POLICY = """\
version: 1
mode: audit
rules:
  - name: demo-no-id
    subject: {{exe: {demo}}}
    operations: [exec]
    objects: [/usr/bin/id]
    action: deny
"""


def _alerts(inst: T.Instance, rule: str, n: int, timeout: float = 15) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = [a for a in inst.alerts("bastion.") if a["rule"] == rule]
        if len(got) >= n or time.monotonic() > deadline:
            return got  # type: ignore[return-value]
        time.sleep(0.2)


def test_policy_apply_needs_the_token_once_protected(inst: T.Instance, tmp_path: Path) -> None:
    demo = tmp_path / "demo_sh"
    shutil.copy("/bin/dash", demo)
    pol = tmp_path / "hips.yaml"
    pol.write_text(POLICY.format(demo=demo))
    agent_pol = tmp_path / "agent-policy.yaml"
    agent_pol.write_text("version: 1\nintegrity:\n  interval: 0s\n")
    sock = tmp_path / "agent.sock"
    inst.start_guardian(agent=[T.PY, "-m", "bastion.cli.main", "run", "--quiet", "--keep-pins",
                               "--policy", str(agent_pol), "--data-dir", str(inst.data),
                               "--socket", str(sock), "--pin-root", str(inst.pin_root),
                               "--test-deadline", "120"])
    deadline = time.monotonic() + 60
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sock.exists(), "".join(inst.stderr[-30:])

    def apply(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BASTION, "policy", "apply", str(pol), "--socket", str(sock),
                               "--allow-degraded", *extra], env=_env(inst),
                              capture_output=True, text=True, timeout=90)

    def mode() -> str:
        st = subprocess.run([BASTION, "status", "--socket", str(sock), "--json"],
                            capture_output=True, text=True, timeout=30)
        return str(json.loads(st.stdout)["policy_mode"])

    # the attack: replace the protected agent's HIPS policy without the token
    r = apply()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "needs the maintenance token" in r.stderr and "running policy is unchanged" in r.stderr
    assert mode() == "none"
    refused = [a for a in _alerts(inst, "bastion.tamper.bad-token", 1)
               if a["evidence"]["what"] == "policy.apply"]  # type: ignore[index]
    assert refused and refused[0]["severity"] == "critical", refused

    # with the token: applied, alerted (high: nothing weakened)
    r = apply("--token-file", str(inst.token_file))
    assert r.returncode == 0, r.stderr
    assert mode() == "audit"
    applied = _alerts(inst, "bastion.policy.applied", 1)
    assert applied, [(a["rule"], a["title"]) for a in inst.alerts("bastion.")]
    ev = applied[0]["evidence"]
    assert applied[0]["severity"] == "high"
    assert ev["old_mode"] == "none" and ev["new_mode"] == "audit"  # type: ignore[index]
    assert ev["new_sha256"] == hashlib.sha256(pol.read_bytes()).hexdigest()  # type: ignore[index]

    # switch it to learn mode without the token
    r = apply("--mode", "learn")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "needs the maintenance token" in r.stderr
    assert mode() == "audit"
    assert len(_alerts(inst, "bastion.tamper.bad-token", 2)) >= 2

    # a wrong token: refused, alerted, counted
    r = apply("--mode", "learn", "--token-file", str(inst.wrong_file))
    assert r.returncode == 1 and "wrong token" in r.stderr, r.stderr
    assert mode() == "audit"
    assert len(_alerts(inst, "bastion.tamper.bad-token", 3)) >= 3

    # with the token after the back-off: applied, and critical (the mode weakened)
    time.sleep(1.2)
    r = apply("--mode", "learn", "--token-file", str(inst.token_file))
    assert r.returncode == 0, r.stderr
    assert mode() == "learn"
    applied = _alerts(inst, "bastion.policy.applied", 2)
    assert len(applied) == 2, applied
    last = applied[-1]
    ev = last["evidence"]
    assert last["severity"] == "critical" and "WEAKER" in str(last["title"]), last
    assert (ev["old_mode"], ev["new_mode"]) == ("audit", "learn")  # type: ignore[index]
    assert ev["old_sha256"] == ev["new_sha256"] == hashlib.sha256(  # type: ignore[index]
        pol.read_bytes()).hexdigest()
    # the alerts are in the hash chain
    v = subprocess.run([BASTION, "log", "verify", "--data-dir", str(inst.data)],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "chain intact" in v.stdout, v.stdout + v.stderr


def test_maintenance_for_reset_is_proven_to_the_guardian(inst: T.Instance) -> None:
    """`bastion reset|uninstall` (require_token) through the running guardian: the
    token proven by challenge-response for exactly "maintenance reset"."""
    from bastion.cli.guard import require_token
    from bastion.guard.token import TokenError

    inst.start_guardian(agent=stand_in())
    with pytest.raises(TokenError, match="wrong token"):
        require_token(inst.wrong_file, what="reset", data_dir=inst.data, pin_root=inst.pin_root,
                      guardian_socket=inst.gsock)
    time.sleep(1.2)
    require_token(inst.token_file, what="reset", data_dir=inst.data, pin_root=inst.pin_root,
                  guardian_socket=inst.gsock)
    opened = [a for a in inst.alerts() if a["rule"] == "bastion.tamper.maintenance"]
    assert opened and opened[0]["evidence"]["what"] == "maintenance reset"  # type: ignore[index]
    inst.wait_alert("bastion.tamper.protection-off", timeout=10)
