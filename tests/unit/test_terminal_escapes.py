"""s24 review: text an attacker chooses (an executable's path, a file name in a title, an
error message) reached an administrator's terminal raw through the live alert feed (the
agent's stdout under `bastion run`/`make run`, the guardian's stderr), the log lines on
stderr and `bastion rollback`'s listing: an OSC/CSI escape retitled, cleared or rewrote the
terminal, and a newline forged a second, clean-looking line.  Only `bastion events/alerts`
escaped them (``cli/query.clean``)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bastion.alert import Alert, AlertProcess
from bastion.textsafe import SafeFormatter

# an executable named like this is legal on Linux (any byte but '/' and NUL)
HOSTILE = ("/tmp/x\x1b]0;owned\x07\x1b[2J\x1b[1A\r"
           "\n2026-12-05T09:00:00Z INFO     all clear\u202e\x9b31m")


def _terminal_safe(text: str) -> None:
    for c in text:
        assert c.isprintable(), f"{c!r} reached the terminal in {text!r}"


def _alert(**kw: Any) -> Alert:
    return Alert(time="2026-12-05T09:00:00.000000Z", rule="behavior.exec_from_tmp",
                 title=f"Program run from /tmp: {HOSTILE}", severity="high", action="kill",
                 process=AlertProcess(pid=4242, exe=HOSTILE), **kw)


def test_the_live_feed_line_carries_no_terminal_control() -> None:
    line = _alert().feed_line()
    _terminal_safe(line)
    assert "\\x1b]0;owned\\x07" in line and "\\x0a2026" in line     # still readable


def test_log_lines_escape_the_message_and_keep_a_traceback_s_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(SafeFormatter("%(levelname)s %(message)s"))
    lg = logging.getLogger("bastion.test.escapes")
    lg.addHandler(h)
    try:
        lg.warning("probe of %s failed", HOSTILE)
        try:
            raise ValueError(f"bad name {HOSTILE}")
        except ValueError:
            lg.exception("act on %s", HOSTILE)
    finally:
        lg.removeHandler(h)
    lines = buf.getvalue().splitlines()
    for ln in lines:
        _terminal_safe(ln)
    assert lines[0].startswith("WARNING probe of /tmp/x\\x1b]0;owned")
    assert lines[1].startswith("ERROR act on ") and lines[2] == "| Traceback (most recent call last):"
    assert any(ln.startswith("| ValueError: bad name /tmp/x\\x1b") for ln in lines)
    # the message's own newline: what follows it is marked as the traceback's
    assert all(ln.startswith("| ") for ln in lines[2:])
    assert not any(ln.startswith("2026-12-05T09:00:00Z INFO") for ln in lines)


def test_the_cli_installs_the_escaping_formatter() -> None:
    from bastion.cli.main import cli

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        res = CliRunner().invoke(cli, ["doctor", "--help"])
        assert res.exit_code == 0, res.output
        assert root.handlers and all(isinstance(h.formatter, SafeFormatter) for h in root.handlers)
    finally:
        root.handlers = saved


def test_rollback_listing_escapes_the_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bastion.cli import behavior
    from bastion.respond.shadow.rollback import RollbackReport

    rep = RollbackReport(7, True, restored=[f"/home/u/{HOSTILE}"], intact=[], untouched=[],
                         removed=[], kept=[(f"/home/u/{HOSTILE}", "k\x1b[0m")],
                         recreated=[], failed=[(f"/home/u/{HOSTILE}", f"EACCES {HOSTILE}")])
    monkeypatch.setattr(behavior, "_through_agent", lambda *a: None)
    monkeypatch.setattr(behavior, "_refuse_when_protected", lambda *a: None)
    monkeypatch.setattr(behavior, "rollback", lambda *a, **k: rep)
    res = CliRunner().invoke(behavior.rollback_cmd, ["--incident", "7", "--dry-run",
                                                      "--shadow-dir", str(tmp_path)])
    lines = res.output.splitlines()
    assert len(lines) == 4, lines      # restore, keep, FAILED, summary: nothing forged
    for ln in lines:
        _terminal_safe(ln)


def test_an_error_naming_a_hostile_path_is_one_escaped_line(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from bastion.cli import main as cli_main
    from bastion.errors import ControlError, Location

    def boom(*a: Any, **k: Any) -> None:
        raise ControlError(f"the agent refused: no such file {HOSTILE}", location=Location("/run/x"))

    monkeypatch.setattr(cli_main.cli, "main", boom)
    with pytest.raises(SystemExit):
        cli_main.main()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    _terminal_safe(err.rstrip("\n"))


def test_status_warnings_naming_a_mount_are_escaped(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """(a mount someone made under the pin root is named by its path)"""
    from bastion.cli.main import cli
    from bastion.guard import control as gcontrol
    import bastion.control as control

    monkeypatch.setattr(gcontrol, "guardian_status",
                        lambda sock: {"foreign_mounts": [f"/sys/fs/bpf/bastion/{HOSTILE}"]})
    monkeypatch.setattr(control, "request",
                        lambda *a, **k: {"ok": True, "pid": 1, "version": "x", "uptime_s": 1.0})
    res = CliRunner().invoke(cli, ["status", "--socket", str(tmp_path / "s"),
                                   "--guardian-socket", str(tmp_path / "g")])
    lines = res.output.splitlines()
    assert lines and lines[0].startswith("WARNING")
    assert not any(ln.startswith("2026-12-05T09:00:00Z") for ln in lines)
    for ln in lines:
        _terminal_safe(ln)
