"""Maintenance token abuse and the Sigma update gate (issue 14 item 4), compat tier on this
host, with the scoped TEST guardian (tests/support/tamper.py).

* a maintenance window re-arms tamper protection when it closes (deadline, or
  `bastion maintenance end`), and an alert says so;
* an attacker's wrong tries from its own session do not lock out the admin's token;
* `require_token` with the guardian mute checks the token only against the data dir of
  the pinned protection, never a directory the caller made;
* `sigma update` / `sigma rollback` through the agent need the token once protected;
* the first-run token file left on the host is alerted and shown by `bastion status`.

Scoped: protected set in tmp, pins under a test pin root, programs act only on
attackers in the test cgroup with a dead-man deadline; teardown kills the guardian and
agent and removes the pins.
"""

from __future__ import annotations

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
from support.sigma_release import CORPUS  # noqa: E402

BASTION = str(T.REPO / ".venv" / "bin" / "bastion")


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        yield from T.instance(tmp_path, cg, cgid)


def stand_in() -> list[str]:
    return [T.PY, "-c", "import time; time.sleep(300)"]


def _env(inst: T.Instance) -> dict[str, str]:
    return {**os.environ, "BASTION_PIN_ROOT": str(inst.pin_root)}


def _guard_cli(inst: T.Instance, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([T.PY, "-m", "bastion.cli.guard", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(inst))


def _protection(inst: T.Instance) -> str:
    return str(inst.status()["tamper_protection"])


def _wait_protection(inst: T.Instance, want: str, timeout: float) -> float:
    t0 = time.monotonic()
    while _protection(inst) != want:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"tamper protection is {_protection(inst)!r}, not {want!r} "
                                 f"{timeout}s on:\n" + "".join(inst.stderr[-20:]))
        time.sleep(0.1)
    return time.monotonic() - t0


def _write_refused(inst: T.Instance) -> bool:
    """An attacker in the test cgroup write-opens a protected config file."""
    r = inst.attack_py(f"open({str(inst.etc / 'policy.yaml')!r}, 'a').write('# x\\n')")
    return r.returncode != 0 and "PermissionError" in r.stderr


def test_a_maintenance_window_re_arms_protection_at_its_deadline(inst: T.Instance) -> None:
    """Attack: wait for the admin's maintenance window; protection never came back, so
    every later write to the protected tree went through."""
    from bastion.cli.guard import require_token

    inst.start_guardian("--window-minutes", "0.1", agent=stand_in(), tier="compat")
    agent = inst.agent_pid()
    assert _protection(inst) == "partial" and _write_refused(inst)
    require_token(inst.token_file, what="upgrade", data_dir=inst.data, pin_root=inst.pin_root,
                  guardian_socket=inst.gsock)
    _wait_protection(inst, "off", 10)
    assert not _write_refused(inst)                 # the window is open: maintenance works
    (inst.etc / "policy.yaml").write_text("version: 1\n")
    _wait_protection(inst, "partial", 30)           # 6 s window; a readiness wait, not a target
    alert = inst.wait_alert("bastion.tamper.rearmed")
    assert "its deadline passed" in str(alert["title"]), alert
    assert alert["evidence"]["what"] == "maintenance upgrade"  # type: ignore[index]
    assert alert["severity"] == "high"
    st = inst.status()
    assert any(i["pid"] == agent for i in st["identities"])  # type: ignore[union-attr,index]
    assert (inst.pin_root / "tamper" / "links").is_dir()
    assert _write_refused(inst)


def test_maintenance_end_re_arms_protection_at_once(inst: T.Instance) -> None:
    inst.start_guardian(agent=stand_in(), tier="compat")
    r = _guard_cli(inst, "maintenance", "start", "--token-file", str(inst.token_file), "--what",
                   "upgrade", "--guardian-socket", str(inst.gsock))
    assert r.returncode == 0 and "maintenance window open until" in r.stdout, r.stderr
    _wait_protection(inst, "off", 10)
    assert not _write_refused(inst)
    (inst.etc / "policy.yaml").write_text("version: 1\n")
    r = _guard_cli(inst, "maintenance", "end", "--guardian-socket", str(inst.gsock))
    assert r.returncode == 0 and "tamper protection partial" in r.stdout, (r.stdout, r.stderr)
    assert _protection(inst) == "partial" and inst.status()["maintenance_until"] == 0.0
    alert = inst.wait_alert("bastion.tamper.rearmed")
    assert "ended with `bastion maintenance end`" in str(alert["title"]), alert
    assert _write_refused(inst)
    # nothing open: end says so and changes nothing
    r = _guard_cli(inst, "maintenance", "end", "--guardian-socket", str(inst.gsock))
    assert r.returncode == 0 and "no maintenance window is open" in r.stdout, r.stdout


ATTACKER = """
import sys
from pathlib import Path
from bastion.guard.control import call_with_token
from bastion.guard.identity import ROLE_GUARDIAN
for i in range(4):
    r = call_with_token(Path(sys.argv[1]), "maintenance", b"an attacker's guess %d of many" % i,
                        "maintenance x", pin_root=Path(sys.argv[2]), roles=(ROLE_GUARDIAN,),
                        what="x")
    print(r.get("error"))
"""


def test_wrong_tries_from_another_session_never_lock_out_the_admin(inst: T.Instance) -> None:
    """Attack: a few wrong tokens (from a session of the attacker's) put everybody in the
    back-off: the admin's right token was refused as "rate limited" for minutes."""
    from bastion.cli.guard import require_token

    inst.start_guardian(agent=stand_in(), tier="compat")
    r = subprocess.run([T.PY, "-c", ATTACKER, str(inst.gsock), str(inst.pin_root)],
                       capture_output=True, text=True, timeout=120, start_new_session=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "wrong token" in lines[0] and all("rate limited" in x for x in lines[1:]), lines
    # at once, from the admin's own session: the right token works
    require_token(inst.token_file, what="reset", data_dir=inst.data, pin_root=inst.pin_root,
                  guardian_socket=inst.gsock)
    opened = inst.wait_alert("bastion.tamper.maintenance")
    assert opened["evidence"]["what"] == "maintenance reset"  # type: ignore[index]


def test_require_token_never_trusts_a_data_dir_of_the_callers_choosing(
        inst: T.Instance, tmp_path: Path) -> None:
    """Attack: with the guardian mute (killed, its pins left), root made a data dir holding
    a token record of its own and passed it with --data-dir: `reset --emergency` accepted
    its own token and would remove the pinned protection."""
    from bastion.cli.guard import require_token
    from bastion.guard.token import TokenError, TokenStore

    inst.start_guardian(agent=stand_in(), tier="compat")
    assert inst.guardian is not None
    inst.guardian.kill()
    inst.guardian.wait(10)
    assert (inst.pin_root / "tamper" / "links").is_dir()
    fake = tmp_path / "fake-data"
    mine = b"the attacker's own token, 32 bytes"
    TokenStore(fake).set_token(mine)
    mine_file = tmp_path / "mine.token"
    mine_file.write_bytes(mine + b"\n")
    mine_file.chmod(0o600)
    with pytest.raises(TokenError, match=f"{fake}: {fake} is not the data dir of the tamper "
                                         "protection pinned"):
        require_token(mine_file, what="reset", data_dir=fake, pin_root=inst.pin_root,
                      guardian_socket=inst.gsock)
    # the attacker's token against the enrolled record: refused too
    with pytest.raises(TokenError, match="wrong token"):
        require_token(mine_file, what="reset", data_dir=inst.data, pin_root=inst.pin_root,
                      guardian_socket=inst.gsock)
    time.sleep(1.2)           # this source's back-off
    # the admin, with the enrolled data dir and the real token
    require_token(inst.token_file, what="reset", data_dir=inst.data, pin_root=inst.pin_root,
                  guardian_socket=inst.gsock)


def _rules(dest: Path, names: list[str]) -> Path:
    for n in names:
        p = CORPUS / "rules" / "linux" / "process_creation" / n
        out = dest / "rules" / "linux" / "process_creation" / n
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, out)
    return dest


def test_sigma_update_and_rollback_need_the_token_once_protected(
        inst: T.Instance, tmp_path: Path) -> None:
    """Attack: root asks the protected agent for `sigma.update` with a tiny rule set (or
    `sigma rollback`), blinding Sigma without the token."""
    names = sorted(p.name for p in (CORPUS / "rules/linux/process_creation").glob("*.yml"))[:6]
    big, tiny = _rules(tmp_path / "big", names), _rules(tmp_path / "tiny", names[:1])
    agent_pol = tmp_path / "agent-policy.yaml"
    agent_pol.write_text("version: 1\nintegrity:\n  interval: 0s\n")
    sock = tmp_path / "agent.sock"
    inst.start_guardian(agent=[T.PY, "-m", "bastion.cli.main", "run", "--quiet", "--keep-pins",
                               "--policy", str(agent_pol), "--data-dir", str(inst.data),
                               "--socket", str(sock), "--pin-root", str(inst.pin_root),
                               "--test-deadline", "120"], tier="compat")
    deadline = time.monotonic() + 60
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sock.exists(), "".join(inst.stderr[-30:])

    def sigma(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BASTION, "sigma", *args, "--data-dir", str(inst.data),
                               "--socket", str(sock)], env=_env(inst), capture_output=True,
                              text=True, timeout=300)

    def installed() -> dict[str, Any]:
        r = subprocess.run([BASTION, "sigma", "installed", "--data-dir", str(inst.data), "--json"],
                           capture_output=True, text=True, timeout=60)
        return dict(json.loads(r.stdout))

    # the attack as root makes it: straight to the agent's socket, no token
    from bastion.control import request

    resp = request(sock, "sigma.update", timeout=30, args={"from_path": str(tiny)})
    assert resp.get("started") is False, resp
    assert "sigma update needs the maintenance token" in str(resp.get("error")), resp
    assert not installed()["installed"]
    tok = ("--token-file", str(inst.token_file))
    r = sigma("update", "--from", str(big), *tok)
    assert r.returncode == 0, r.stderr
    before = installed()
    # the attack: a tiny set without the token
    r = sigma("update", "--from", str(tiny))
    assert r.returncode == 1 and "sigma update needs the maintenance token" in r.stderr, \
        (r.stdout, r.stderr)
    assert installed()["sha256"] == before["sha256"]
    # with a wrong token: refused too
    r = sigma("update", "--from", str(tiny), "--token-file", str(inst.wrong_file))
    assert r.returncode == 1 and "wrong token" in r.stderr, r.stderr
    assert installed()["sha256"] == before["sha256"]
    deadline, refused = time.monotonic() + 15, []
    while len(refused) < 3 and time.monotonic() < deadline:   # the agent's loop stores them
        refused = [a for a in inst.alerts() if a["rule"] == "bastion.tamper.bad-token"
                   and a["evidence"]["what"] == "sigma.update"]  # type: ignore[index]
        time.sleep(0.2)
    assert len(refused) == 3 and refused[0]["severity"] == "critical", refused
    time.sleep(1.2)                                   # this source's back-off
    # the admin's update with the token: goes live
    r = sigma("update", "--from", str(tiny), *tok)
    assert r.returncode == 0 and "the running agent evaluates it now" in r.stdout, r.stderr
    after = installed()
    assert after["sha256"] != before["sha256"]
    # rollback without the token: refused, the set unchanged
    r = sigma("rollback")
    assert r.returncode == 1 and "sigma rollback needs the maintenance token" in r.stderr, \
        (r.stdout, r.stderr)
    assert installed()["sha256"] == after["sha256"]
    r = sigma("rollback", *tok)
    assert r.returncode == 0 and "the running agent evaluates it now" in r.stdout, r.stderr
    assert installed()["sha256"] == before["sha256"]
    # no agent answering: refused here, nothing changed (the data dir is the agent's)
    r = subprocess.run([BASTION, "sigma", "rollback", "--data-dir", str(inst.data), "--socket",
                        str(tmp_path / "none.sock"), *tok], env=_env(inst), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "tamper protection is on and no agent" in r.stderr, r.stderr
    assert installed()["sha256"] == before["sha256"]


def test_the_first_run_token_file_on_the_host_is_alerted_and_shown(
        inst: T.Instance, tmp_path: Path) -> None:
    """Attack: the first-run token file stays readable on the host (root reads it and stops
    Bastion): nothing said so."""
    tok = tmp_path / "first-run.token"
    inst.start_guardian("--token-out", str(tok), agent=stand_in(), token=False, tier="compat")
    assert tok.exists()
    alert = inst.wait_alert("bastion.tamper.token-file-on-host")
    assert alert["evidence"]["path"] == str(tok) and alert["severity"] == "high"  # type: ignore[index]

    def status() -> str:
        r = subprocess.run([BASTION, "status", "--socket", str(tmp_path / "no-agent.sock"),
                            "--guardian-socket", str(inst.gsock)], capture_output=True, text=True,
                           timeout=60)
        return r.stdout

    assert f"WARNING      the maintenance token is still in {tok} on this host" in status()
    tok.unlink()
    assert "WARNING" not in status()
