"""The ``bastion`` command imports a subcommand's module only when it is named.

``bastion status`` (the guardian's, an admin's and the VM tests' most frequent call)
imported every command's module: the behaviour rules, the shadow keeper, httpx, the
policy compiler and the agent.  0.5 s on the development host, 12-25 s in the TCG
guest, where the VM tests' 30 s status calls timed out while an agent started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.unit

_PROBE = """
import json, sys
sys.argv = ["bastion", "status", "--json", "--socket", sys.argv[1], "--pin-root", sys.argv[2],
            "--guardian-socket", sys.argv[3]]
from bastion.cli.main import main
try:
    main()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "mods": sorted(sys.modules)}), file=sys.stderr)
"""

#: modules that have no business in a status request
HEAVY = ("bastion.agent", "bastion.assembly", "bastion.detect", "bastion.policy.compile",
         "bastion.respond", "bastion.sensors", "bastion.outputs", "httpx")


def test_status_imports_no_command_module_of_others(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "agent.sock"),
                        str(tmp_path / "pins"), str(tmp_path / "guardian.sock")],
                       capture_output=True, text=True, timeout=60)
    out = json.loads(r.stderr.strip().splitlines()[-1])
    assert out["code"] == 1, r.stdout + r.stderr       # no agent there: exit 1, said so
    assert json.loads(r.stdout)["running"] is False
    heavy = [m for m in out["mods"] if m.startswith(HEAVY)]
    assert heavy == [], heavy


def test_every_lazy_command_loads_under_its_name() -> None:
    from bastion.cli.main import _LAZY, cli

    runner = CliRunner()
    names = cli.list_commands(None)  # type: ignore[arg-type]
    assert set(_LAZY) <= set(names) and {"run", "status", "doctor", "reset"} <= set(names)
    for name in _LAZY:
        r = runner.invoke(cli, [name, "--help"])
        assert r.exit_code == 0, (name, r.output)
        assert "Usage: " in r.output and name in r.output
    r = runner.invoke(cli, ["--help"])
    assert r.exit_code == 0 and all(f"  {n} " in r.output for n in _LAZY), r.output
    assert runner.invoke(cli, ["no-such-command"]).exit_code == 2
