from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from bastion.cli.query import (
    NoStoreError,
    Table,
    alerts_cmd,
    clean,
    event_summary,
    events_cmd,
    follow_rows,
)
from bastion.store import Store, StoredRecord
from bastion.timefmt import format_time

T0 = 1_795_670_447  # 2026-11-26T05:20:47Z


def ev(i: int, *, type_: str = "exec", pid: int | None = None, exe: str = "/usr/bin/true",
       t: float | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": type_,
        "time": format_time(int((T0 + i if t is None else t) * 10**9)),
        "pid": 1000 + i if pid is None else pid,
        "ppid": 1,
        "exe": exe,
    }
    if type_ == "exec":
        d["argv"] = [exe, f"arg{i}"]
    d.update(extra)
    return d


def alert(i: int, severity: str = "high", rule: str = "shadow-read") -> dict[str, Any]:
    return {
        "time": format_time((T0 + i) * 10**9),
        "id": f"a{i}",
        "rule": rule,
        "title": f"Read of /etc/shadow #{i}",
        "severity": severity,
        "attack": ["T1003.008"],
        "action": "alert",
        "process": {"pid": 2000 + i, "ppid": 1, "exe": "/usr/bin/cat",
                    "cmdline": "cat /etc/shadow", "uid": 0},
    }


@pytest.fixture
def cli() -> click.Group:
    group = click.Group("bastion")
    group.add_command(events_cmd)
    group.add_command(alerts_cmd)
    return group


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    with Store.open(d) as s:
        s.add_events([
            ev(1, exe="/usr/bin/bash", argv=["bash", "-c", "echo hi; id"]),
            ev(2, type_="open", pid=77, exe="/usr/bin/cat", path="/etc/shadow", flags=0),
            ev(3, type_="connect", pid=77, exe="/usr/bin/curl", daddr="10.1.2.3", dport=443),
            ev(4, type_="exit", pid=77, exe="/usr/bin/curl", exit_code=3),
        ])
        for i, sev in enumerate(["low", "high", "critical"]):
            s.add_alert(alert(i, sev, rule=f"r-{sev}"))
    return d


def run(cli: click.Group, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


# -- output --------------------------------------------------------------------


def test_json_output_round_trips_the_stored_dicts(cli: click.Group, data: Path) -> None:
    res = run(cli, "events", "--data-dir", str(data), "--json")
    assert res.exit_code == 0, res.output
    with Store.open(data, readonly=True) as s:
        assert json_lines(res.output) == [r.data for r in s.events()]
    res = run(cli, "alerts", "--data-dir", str(data), "--json")
    assert [a["id"] for a in json_lines(res.output)] == ["a0", "a1", "a2"]
    assert json_lines(res.output)[1] == alert(1, "high", rule="r-high")


def test_table_output_is_aligned_with_summaries(cli: click.Group, data: Path) -> None:
    res = run(cli, "events", "--data-dir", str(data))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["TIME", "TYPE", "PID", "PPID", "EXE", "DETAILS"]
    assert len(lines) == 5
    # every row's DETAILS column starts where the header's does
    col = lines[0].index("DETAILS")
    assert lines[1][col:] == "bash -c 'echo hi; id'"
    assert lines[2][col:] == "/etc/shadow flags=0"
    assert lines[3][col:] == "10.1.2.3:443"
    assert lines[4][col:] == "code=3"
    assert lines[2].startswith("2026-11-26T05:20:49.000000Z  open")
    res = run(cli, "alerts", "--data-dir", str(data))
    lines = res.output.splitlines()
    assert lines[0].split() == ["TIME", "SEVERITY", "RULE", "ACTION", "PID", "EXE", "TITLE"]
    col = lines[0].index("TITLE")
    assert [ln[col:] for ln in lines[1:]] == [f"Read of /etc/shadow #{i}" for i in range(3)]
    assert "critical" in lines[3] and "r-critical" in lines[3] and "2002" in lines[3]


def test_empty_store_prints_nothing(cli: click.Group, tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    res = run(cli, "events", "--data-dir", str(tmp_path))
    assert (res.exit_code, res.output) == (0, "")


def test_attacker_text_is_escaped_in_the_table_not_in_json(cli: click.Group, tmp_path: Path) -> None:
    nasty = "/tmp/\x1b]0;pwned\x07x\u202eexe.\udcff"
    with Store.open(tmp_path) as s:
        s.add_events([ev(1, type_="open", exe=nasty, path=nasty + "\n")])
    res = run(cli, "events", "--data-dir", str(tmp_path))
    assert "\x1b" not in res.output and "\x07" not in res.output and "\u202e" not in res.output
    assert "/tmp/\\x1b]0;pwned\\x07x\\u202eexe.\\xff" in res.output
    assert len(res.output.splitlines()) == 2
    res = run(cli, "events", "--data-dir", str(tmp_path), "--json")
    assert json_lines(res.output)[0]["exe"] == nasty


# -- filters and limits ----------------------------------------------------------


def test_filters_reach_the_store(cli: click.Group, data: Path) -> None:
    d = ["--data-dir", str(data), "--json"]

    def types(res: Any) -> list[str]:
        return [e["type"] for e in json_lines(res.output)]

    assert types(run(cli, "events", *d, "--pid", "77")) == ["open", "connect", "exit"]
    assert types(run(cli, "events", *d, "--type", "exec", "--type", "exit")) == ["exec", "exit"]
    assert types(run(cli, "events", *d, "--exe", "/usr/bin/cu*")) == ["connect", "exit"]
    assert types(run(cli, "events", *d, "--exe", "/usr/bin/cat")) == ["open"]
    assert types(run(cli, "events", *d, "--since", "2026-11-26T05:20:50Z")) == ["connect", "exit"]
    assert types(run(cli, "events", *d, "--until", "2026-11-26T05:20:50Z")) == ["exec", "open"]
    assert types(run(cli, "events", *d, "--since", "100000w")) == ["exec", "open", "connect", "exit"]
    assert types(run(cli, "events", *d, "--since", "1s")) == []  # T0 is in the past

    def sev(res: Any) -> list[str]:
        return [a["severity"] for a in json_lines(res.output)]

    assert sev(run(cli, "alerts", *d, "--severity", "high")) == ["high", "critical"]
    assert sev(run(cli, "alerts", *d, "--rule", "r-low")) == ["low"]
    assert sev(run(cli, "alerts", *d, "--rule", "r-*", "--pid", "2001")) == ["high"]


def test_limit_is_most_recent_50_for_the_table_all_for_json(cli: click.Group, tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.add_events([ev(i) for i in range(60)])
    d = ["--data-dir", str(tmp_path)]
    lines = run(cli, "events", *d).output.splitlines()
    assert len(lines) == 51
    assert " 1010 " in lines[1] and " 1059 " in lines[-1]
    assert len(run(cli, "events", *d, "--json").output.splitlines()) == 60
    got = json_lines(run(cli, "events", *d, "--json", "--limit", "3").output)
    assert [e["pid"] for e in got] == [1057, 1058, 1059]
    assert len(run(cli, "events", *d, "--limit", "100").output.splitlines()) == 61


def test_data_dir_from_the_environment(cli: click.Group, data: Path) -> None:
    res = run(cli, "events", "--json", env={"BASTION_DATA_DIR": str(data)})
    assert len(res.output.splitlines()) == 4


# -- errors --------------------------------------------------------------------


def test_missing_store_is_one_clear_line(cli: click.Group, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    res = CliRunner().invoke(cli, ["events", "--data-dir", str(missing)])
    assert res.exit_code == 1
    assert res.output == (
        f"no Bastion store at {missing / 'bastion.db'} "
        f"(is the agent running with --data-dir {missing}?)\n"
    )
    assert not missing.exists()
    res = CliRunner().invoke(cli, ["alerts", "--data-dir", str(missing)])
    assert res.exit_code == 1 and "no Bastion store at" in res.output


def test_missing_store_status_survives_standalone_mode_false(cli: click.Group,
                                                             tmp_path: Path) -> None:
    # The main group runs with standalone_mode=False: ctx.exit(1) would be lost.
    with pytest.raises(NoStoreError) as ei:
        cli.main(["events", "--data-dir", str(tmp_path / "x")], standalone_mode=False)
    assert ei.value.exit_code == 1
    assert ei.value.format_message().startswith("no Bastion store at ")


def test_bad_since_is_a_bad_parameter_naming_the_value(cli: click.Group, data: Path) -> None:
    res = CliRunner().invoke(cli, ["events", "--data-dir", str(data), "--since", "yesterday"])
    assert res.exit_code == 2
    assert "Invalid value for '--since'" in res.output
    assert "'yesterday'" in res.output
    res = CliRunner().invoke(cli, ["alerts", "--data-dir", str(data), "--until", "5 min"])
    assert res.exit_code == 2 and "'5 min'" in res.output


def test_bad_severity_and_limit_are_usage_errors(cli: click.Group, data: Path) -> None:
    res = CliRunner().invoke(cli, ["alerts", "--data-dir", str(data), "--severity", "urgent"])
    assert res.exit_code == 2 and "urgent" in res.output
    res = CliRunner().invoke(cli, ["events", "--data-dir", str(data), "--limit", "0"])
    assert res.exit_code == 2


def test_a_coalesced_row_shows_its_count_in_the_table_and_the_json(
        cli: click.Group, tmp_path: Path) -> None:
    """A flood's exact repeats are one row (store/eventproc.py): ``bastion events`` says
    how many, in the table and in --json, and a --since inside its span finds it."""
    from bastion.events import FileEvent, Proc
    from bastion.store.eventproc import RowMaker, pack

    p = Proc(9, 9, 1, 0, 0, 0, 1, "flood", exe="/usr/bin/flood")
    t0 = 1_795_000_000 * 10**9
    evs = [FileEvent(t0 + i * 1_000_000, p, op="chmod", path="/tmp/f", mode=0o644)
           for i in range(500)]
    rows, _ = RowMaker().rows(pack(evs))
    d = tmp_path / "data"
    with Store.open(d) as s:
        s.add_rows(rows)
    res = run(cli, "events", "--data-dir", str(d), "--since", "2026-11-18T11:06:40.2Z")
    assert res.exit_code == 0, res.output
    line = res.output.splitlines()[1]
    assert "  chmod  " in line and "/tmp/f mode=0o644" in line
    assert line.endswith(" [x500 until 2026-11-18T11:06:40.499000Z]")
    res = run(cli, "events", "--data-dir", str(d), "--json")
    (row,) = json_lines(res.output)
    assert (row["count"], row["time"], row["last_time"]) == (
        500, "2026-11-18T11:06:40.000000Z", "2026-11-18T11:06:40.499000Z")


def test_an_incompatible_store_is_an_error_line(cli: click.Group, tmp_path: Path) -> None:
    (tmp_path / "bastion.db").write_bytes(b"garbage" * 200)
    res = CliRunner().invoke(cli, ["events", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: {tmp_path / 'bastion.db'}: ")
    assert "Traceback" not in res.output


# -- summaries -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "summary"),
    [
        (ev(0, argv=["sh", "-c", "a b"]), "sh -c 'a b'"),
        (ev(0, type_="exit", exit_code=0, signal=9), "code=0 signal=9"),
        (ev(0, type_="unlink", path="/etc/passwd"), "/etc/passwd"),
        (ev(0, type_="rename", path="/a", new_path="/b"), "/a -> /b"),
        (ev(0, type_="chmod", path="/a", mode=0o4755), "/a mode=0o4755"),
        (ev(0, type_="connect", daddr="::1", dport=22), "[::1]:22"),
        (ev(0, type_="bind", saddr="0.0.0.0", sport=4444), "0.0.0.0:4444"),
        (ev(0, type_="kill", target_pid=1, sig=9), "target_pid=1 sig=9"),
        (ev(0, type_="lsm_deny", hook="file_open", path="/x", extra=None), "/x hook=file_open"),
        (ev(0, type_="fork", child=["a", 1]), 'child=["a",1]'),
        # a row of exact repeats the store coalesced: its count and last time shown
        (ev(0, type_="chmod", path="/a", mode=0o644, count=5000,
            last_time="2026-11-26T05:20:49.800000Z"),
         "/a mode=0o644 [x5000 until 2026-11-26T05:20:49.800000Z]"),
    ],
)
def test_event_summary(event: dict[str, Any], summary: str) -> None:
    assert event_summary(event) == summary


def test_clean_escapes_only_what_a_terminal_would_act_on() -> None:
    assert clean("/usr/bin/café x") == "/usr/bin/café x"
    assert clean("a\tb\nc\x7f\x9b") == "a\\x09b\\x0ac\\x7f\\x9b"
    assert clean("\udcfe\u200f") == "\\xfe\\u200f"


def test_table_widths_grow_and_the_header_prints_once() -> None:
    t = Table(("A", "B", "C"), right=frozenset({1}))
    first = t.render([("x", "1", "end")])
    assert first == ["A  B  C", "x  1  end"]
    assert t.render([("longer", "100", "e")]) == ["longer  100  e"]


# -- follow ----------------------------------------------------------------------


class FakeSource:
    """A store stand-in: rows (rowid, pid); a 'match' filter on odd pids."""

    def __init__(self) -> None:
        self.rows: list[StoredRecord] = []
        self.fetches: list[tuple[int, int, int | None]] = []

    def add(self, *pids_: int) -> None:
        for p in pids_:
            self.rows.append(StoredRecord(len(self.rows) + 1, {"pid": p}))

    def fetch(self, after: int, upto: int, limit: int | None) -> list[StoredRecord]:
        self.fetches.append((after, upto, limit))
        got = [r for r in self.rows if after < r.rowid <= upto and r.data["pid"] % 2]
        return got[-limit:] if limit else got

    def last(self) -> int:
        return len(self.rows)


def test_follow_prints_each_new_matching_row_once() -> None:
    src = FakeSource()
    src.add(1, 3, 5, 2)
    out: list[int] = []
    script = [lambda: src.add(7, 8), lambda: None, lambda: src.add(4, 6), lambda: src.add(9)]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) <= len(script):
            script[len(sleeps) - 1]()

    follow_rows(src.fetch, src.last, lambda rows: out.extend(r.data["pid"] for r in rows),
                limit=2, follow=True, sleep=sleep, should_stop=lambda: len(sleeps) > len(script))
    assert out == [3, 5, 7, 9]  # initial: the 2 most recent matches; then each new one once
    assert sleeps and set(sleeps) == {0.5}
    # polls only ask for rows past what was already seen, even non-matching ones
    assert src.fetches == [(0, 4, 2), (4, 6, None), (6, 8, None), (8, 9, None)]


def test_without_follow_there_is_no_polling() -> None:
    src = FakeSource()
    src.add(1)
    out: list[StoredRecord] = []
    follow_rows(src.fetch, src.last, out.extend, limit=None, follow=False,
                sleep=lambda s: pytest.fail("slept"))
    assert [r.rowid for r in out] == [1]


def test_follow_end_to_end_with_a_live_writer_and_ctrl_c(tmp_path: Path) -> None:
    writer = Store.open(tmp_path)
    writer.add_events([ev(0)])
    code = (
        "import sys; from bastion.cli.query import events_cmd; "
        "events_cmd.main(sys.argv[1:], prog_name='bastion events')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--data-dir", str(tmp_path), "--json", "--follow",
         "--type", "exec"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a run started in the background by a non-interactive shell inherits SIGINT
        # ignored (POSIX), and Python keeps an ignored SIGINT: the child would never
        # see the Ctrl-C this test sends (a CI launched with `&` hung here)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["pid"] == 1000
        writer.add_events([ev(1), ev(2, type_="exit", exit_code=0)])
        writer.add_events([ev(3)])
        seen = [json.loads(proc.stdout.readline())["pid"] for _ in range(2)]
        assert seen == [1001, 1003]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.close()


def test_follow_table_keeps_columns_aligned() -> None:
    # One table object spans the initial rows and every followed batch.
    t = Table(("TIME", "TYPE", "PID", "PPID", "EXE", "DETAILS"))
    a = t.render([("2026-11-26T05:20:47.000000Z", "exec", "1", "0", "/bin/cat", "cat")])
    b = t.render([("2026-11-26T05:20:48.000000Z", "open", "2", "1", "/bin/sh", "/x")])
    assert a[0].index("DETAILS") == a[1].rindex("cat") == b[0].index("/x")
    # a wider cell later widens the column from then on (earlier lines are printed)
    c = t.render([("2026-11-26T05:20:49.000000Z", "open", "3", "1", "/usr/local/bin/x", "/y")])
    d = t.render([("2026-11-26T05:20:50.000000Z", "open", "4", "1", "/bin/sh", "/z")])
    assert c[0].index("/y") == d[0].index("/z") > b[0].index("/x")
