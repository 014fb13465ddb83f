"""How the guardian starts the agent (issue 13 item 12): this interpreter isolated
(-I -B), whatever the agent command names it (python ARGS, the console script,
the default `bastion run`), with a scrubbed environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.cli.guard import default_agent_argv
from bastion.guard.guardian import AGENT_BASE_ENV, agent_command, agent_env


def test_default_agent_is_isolated(tmp_path: Path) -> None:
    argv = default_agent_argv(tmp_path, quiet=True)
    assert argv[:5] == (sys.executable, "-I", "-B", "-m", "bastion.cli.main")
    assert argv[5:] == ("run", "--keep-pins", "--data-dir", str(tmp_path), "--quiet")


def test_python_and_console_script_gain_isolation(tmp_path: Path) -> None:
    assert agent_command((sys.executable, "-c", "1")) == (sys.executable, "-I", "-B", "-c", "1")
    script = tmp_path / "bastion"
    script.write_text(f"#!{sys.executable}\nimport sys\n")
    script.chmod(0o755)
    assert agent_command((str(script), "run", "--quiet")) == (
        sys.executable, "-I", "-B", "-m", "bastion.cli.main", "run", "--quiet")
    other = tmp_path / "other"
    other.write_text("#!/bin/sh\n")
    assert agent_command((str(other), "x")) == (str(other), "x")
    assert agent_command(("/bin/sleep", "1")) == ("/bin/sleep", "1")


def test_environment_is_scrubbed() -> None:
    parent = {"PYTHONPATH": "/tmp/evil", "PYTHONSTARTUP": "/tmp/evil.py", "LD_PRELOAD": "/x.so",
              "LD_LIBRARY_PATH": "/tmp", "PATH": "/tmp/bin:/usr/bin", "HOME": "/home/eve",
              "PYTHONINSPECT": "1", "BASTION_DATA_DIR": "/var/lib/bastion"}
    env = agent_env(parent, (("BASTION_X", "1"),))
    assert env == {**AGENT_BASE_ENV, "BASTION_DATA_DIR": "/var/lib/bastion", "BASTION_X": "1"}


def test_isolated_agent_imports_bastion_and_not_pythonpath(tmp_path: Path) -> None:
    """-I keeps the interpreter's site-packages (the editable install's .pth) and
    ignores PYTHONPATH, a planted sitecustomize and the working directory."""
    evil = tmp_path / "evil"
    (evil / "bastion").mkdir(parents=True)
    (evil / "bastion" / "__init__.py").write_text("raise SystemExit('planted bastion imported')\n")
    (evil / "sitecustomize.py").write_text("raise SystemExit('planted sitecustomize ran')\n")
    (tmp_path / "json.py").write_text("raise SystemExit('working directory searched')\n")
    argv = [*default_agent_argv(tmp_path)[:3], "-c",
            "import json, bastion, sys; print(bastion.__file__); print(sys.dont_write_bytecode)"]
    env = {**os.environ, "PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "sitecustomize.py")}
    r = subprocess.run(argv, env=agent_env(env) | {"PYTHONPATH": str(evil)}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import bastion

    assert r.stdout.split() == [bastion.__file__, "True"]


@pytest.mark.parametrize("name", ["bastion"])
def test_bare_console_script_name_is_found_on_the_guardians_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert agent_command((name, "run"))[:5] == (sys.executable, "-I", "-B", "-m",
                                                "bastion.cli.main")
