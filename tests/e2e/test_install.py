"""bastion install / uninstall into a temporary root prefix, as an operator runs
them: files, modes, idempotence, the unit checked by systemd-analyze verify,
the logrotate rule checked by logrotate, uninstall and purge.

Runs the real CLI when cli/main.py registers the commands, else the same
click commands in a throwaway group.
"""

from __future__ import annotations

import functools
import shutil
import stat
import subprocess
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bastion.cli.service import install_cmd, uninstall_cmd
from bastion.install import MARKER, render_unit
from conftest import BASTION, REPO  # type: ignore[import-not-found]


@functools.cache
def _registered() -> bool:
    r = subprocess.run([BASTION, "install", "--help"], capture_output=True, text=True)
    return r.returncode == 0


def run(*args: str) -> str:
    if _registered():
        r = subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout
    group = click.Group("bastion", commands={"install": install_cmd, "uninstall": uninstall_cmd})
    res = CliRunner().invoke(group, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_verify_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = run("install", "--prefix", str(root), "--bin", BASTION)
    assert "created" in out
    policy = root / "etc/bastion/policy.yaml"
    unit = root / "etc/systemd/system/bastion.service"
    rot = root / "etc/logrotate.d/bastion"
    assert _mode(policy) == 0o600 and policy.read_text().startswith("# Bastion's embedded default")
    assert _mode(root / "var/lib/bastion") == 0o700
    assert _mode(root / "var/log/bastion") == 0o750
    assert _mode(unit) == 0o644 and _mode(rot) == 0o644
    text = unit.read_text()
    assert (f"ExecStart={BASTION} guardian --data-dir /var/lib/bastion --config /etc/bastion/policy.yaml"
            f" -- {BASTION} run --keep-pins --policy /etc/bastion/policy.yaml") in text
    assert "Restart=always" in text and "CAP_BPF" in text

    # idempotent; an edited policy is kept
    policy.write_text("version: 1\n")
    out = run("install", "--prefix", str(root), "--bin", BASTION)
    assert "created" not in out and "updated" not in out
    assert "kept      /etc/bastion/policy.yaml" in out
    assert policy.read_text() == "version: 1\n"

    # the policy file the unit points at parses
    subprocess.run([str(REPO / ".venv/bin/python"), "-c",
                    f"from bastion.config import load_policy; from pathlib import Path; "
                    f"load_policy(Path({str(policy)!r}))"], check=True)

    # the agent data in place survives uninstall; --purge removes it
    (root / "var/lib/bastion/bastion.db").write_text("x")
    wants = root / "etc/systemd/system/multi-user.target.wants/bastion.service"
    wants.parent.mkdir(parents=True)
    wants.symlink_to("/etc/systemd/system/bastion.service")
    out = run("uninstall", "--prefix", str(root))
    assert not unit.exists() and not rot.exists() and not wants.is_symlink()
    assert policy.exists() and (root / "var/lib/bastion/bastion.db").exists()
    out = run("uninstall", "--prefix", str(root))       # idempotent
    assert "absent" in out
    run("uninstall", "--prefix", str(root), "--purge")
    assert not (root / "etc/bastion").exists() and not (root / "var/lib/bastion").exists()
    assert not (root / "var/log/bastion").exists()


def test_uninstall_leaves_files_that_are_not_ours(tmp_path: Path) -> None:
    unit = tmp_path / "etc/systemd/system/bastion.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    out = run("uninstall", "--prefix", str(tmp_path))
    assert unit.exists() and "kept      /etc/systemd/system/bastion.service" in out


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze missing (Debian package systemd)")
    run("install", "--prefix", str(tmp_path), "--bin", BASTION)
    unit = tmp_path / "etc/systemd/system/bastion.service"
    r = subprocess.run([exe, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr   # warnings count as failures
    # and the check is real: a misspelt directive is reported
    bad = tmp_path / "bad" / "bastion.service"
    bad.parent.mkdir()
    bad.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    r = subprocess.run([exe, "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=30)
    assert "Unknown key" in r.stderr


def test_the_packaged_unit_is_the_rendered_one() -> None:
    assert (REPO / "packaging/bastion.service").read_text() == render_unit()
    assert MARKER in render_unit()


def test_the_logrotate_rule_parses(tmp_path: Path) -> None:
    exe = shutil.which("logrotate")
    if exe is None:
        pytest.skip("logrotate missing (Debian package logrotate)")
    run("install", "--prefix", str(tmp_path), "--bin", BASTION)
    # point the rule at the prefix's log dir and dry-run it (-d: no changes)
    rule = (tmp_path / "etc/logrotate.d/bastion").read_text().replace(
        "/var/log/bastion", str(tmp_path / "var/log/bastion"))
    conf = tmp_path / "rot.conf"
    conf.write_text(rule)
    (tmp_path / "var/log/bastion/events.jsonl").write_text("{}\n" * 10)
    r = subprocess.run([exe, "-d", "-s", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "events.jsonl" in r.stderr + r.stdout and "error" not in (r.stderr + r.stdout).lower()
