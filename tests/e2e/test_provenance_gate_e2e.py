"""Issue 15, the agent as a user runs it: ``bastion run`` opens the provenance gate
(its own fanotify group on the default must-stop objects, the sensor's kernel
provenance map) and each decision becomes an alert naming what was prevented.

Run with ``behavior.dry_run: true`` (the agent watches the whole shared host: an
armed gate would refuse other sessions' tainted trees too): the refusal is decided
and reported as ``would-deny`` and the open allowed.  The act is a read of
/etc/shadow by a script in a temp dir, sent to /dev/null: nothing is changed."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

from conftest import start_agent


def test_the_agent_gates_a_tmp_script_reading_the_shadow_file(tmp_path: Path) -> None:
    from support.policies import default_policy

    default = resources.files("bastion").joinpath("data/default-policy.yaml").read_text()
    assert "\nbehavior:\n  dry_run: false\n" in default
    policy = default_policy(tmp_path / "policy.yaml", tmp_path / "shielded",
                            default.replace("\nbehavior:\n  dry_run: false\n",
                                            "\nbehavior:\n  dry_run: true\n"))
    agent = start_agent(tmp_path, "--quiet", "--policy", str(policy), "--test-deadline", "120")
    drop = Path(tempfile.mkdtemp(prefix="bprov-e2e-"))   # under /tmp: a temp dir of the policy
    # s19-compatconnect: a clean tmux server the script hands a command to; on compat the
    # agent's socket gate decides the client's kill at its connect (dry run: not sent)
    mux = shutil.which("tmux")
    sock = tmp_path / "mux"
    tenv = {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": str(tmp_path), "SHELL": "/bin/sh"}
    if mux:
        subprocess.run([mux, "-S", str(sock), "-f", "/dev/null", "new-session", "-d", "-s", "adm",
                        "/bin/sh"], env=tenv, check=True, timeout=10)
    try:
        script = drop / "hunt.sh"
        script.write_text("cat /etc/shadow > /dev/null\n" + (
            f"tmux -S {sock} send-keys -t adm 'true' Enter\n" if mux else ""))
        r = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr        # dry run: allowed
        # s23-pipegate: a decoded payload piped into a shell, decided at exec in the kernel
        # (dry run: reported would-kill, the payload `true` runs)
        p = subprocess.run(["/bin/sh", "-c", "echo dHJ1ZQo= | base64 -d | sh"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        pipe: list[dict[str, object]] = []
        found: list[dict[str, object]] = []
        end = time.monotonic() + 10
        while (len(found) < (2 if mux else 1) or not pipe) and time.monotonic() < end:
            time.sleep(0.5)
            out = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json").stdout
            alerts = [json.loads(line) for line in out.splitlines() if line.strip()]
            assert not [a for a in alerts if a["rule"] in ("bastion.respond.provgate_unavailable",
                                                           "bastion.respond.svcgate_unavailable",
                                                           "bastion.respond.pipegate_unavailable")]
            found = [a for a in alerts if a["rule"] == "bastion.provenance.gate"]
            pipe = [a for a in alerts if a["rule"] == "bastion.pipe.gate"]
    finally:
        rc = agent.stop()
        script.unlink()
        drop.rmdir()
        if mux:
            subprocess.run([mux, "-S", str(sock), "kill-server"], env=tenv, timeout=10)
    assert rc == 0, "".join(agent.stderr)
    assert pipe and all(a["action"] == "would-kill" and a["enforced_by"] == "pipe-kill"
                        for a in pipe), pipe
    kills = [a for a in found if a.get("enforced_by") == "connect-kill"]
    found = [a for a in found if a not in kills]
    if mux:
        (k,) = kills
        assert k["action"] == "would-kill-tree" and k["severity"] == "critical", k
        assert k["evidence"]["socket"] == "tmux" and k["evidence"]["object"] == str(sock)  # type: ignore[index]
    (a,) = found
    assert a["action"] == "would-deny" and a["severity"] == "critical"
    ev = a["evidence"]
    assert isinstance(ev, dict)
    assert ev["prevented"] == "read of credential store /etc/shadow"
    assert ev["provenance"] == ["tmp-script"]
