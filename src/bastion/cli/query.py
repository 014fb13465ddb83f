"""``bastion events`` and ``bastion alerts``: read the store, optionally follow it.

Both commands open the store read-only (the agent is the writer; WAL lets us
read while it writes).  ``--json`` prints each stored dict as one JSON line;
otherwise an aligned table.  Text that came from the watched system (paths,
argv, titles) is escaped before it reaches the terminal: control characters,
bidi overrides and undecodable bytes are shown as ``\\xNN``/``\\uNNNN``.

The lead registers ``events_cmd`` and ``alerts_cmd`` in the main group.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from bastion.errors import ConfigError, StoreError
from bastion.paths import DEFAULT_DATA_DIR, DEFAULT_SOCKET
from bastion.store import SEVERITIES, StoredRecord, StoreNotFoundError
from bastion.store.remote import StoreReader, open_reader
from bastion.textsafe import clean
from bastion.timefmt import parse_since

__all__ = [
    "DEFAULT_DATA_DIR",
    "POLL_INTERVAL_S",
    "TABLE_LIMIT",
    "Table",
    "NoStoreError",
    "alerts_cmd",
    "alert_row",
    "clean",
    "event_row",
    "event_summary",
    "events_cmd",
    "follow_rows",
]

TABLE_LIMIT = 50
POLL_INTERVAL_S = 0.5

# -- follow loop (pure: store access, output, sleep and stop are injected) -----

Fetch = Callable[[int, int, int | None], list[StoredRecord]]


def follow_rows(
    fetch: Fetch,
    last_rowid: Callable[[], int],
    emit: Callable[[list[StoredRecord]], None],
    *,
    limit: int | None,
    follow: bool,
    interval: float = POLL_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Emit the newest ``limit`` matching rows, then (``follow``) poll for more.

    ``fetch(after, upto, limit)`` returns matching rows with ``after < rowid <=
    upto`` (the newest ``limit`` of them, oldest first).  Every poll reads the
    store's highest row id first and moves past it even when nothing matched, so
    a selective filter never rescans old rows; row ids only grow (AUTOINCREMENT),
    so no row is printed twice or skipped.
    """
    last = last_rowid()
    rows = fetch(0, last, limit)
    if rows:
        emit(rows)
    if not follow:
        return
    while True:
        sleep(interval)
        if should_stop():
            return
        hi = last_rowid()
        if hi <= last:
            continue
        rows = fetch(last, hi, None)
        last = hi
        if rows:
            emit(rows)


# -- rendering -------------------------------------------------------------


# Process identity fields every event carries: columns, or not worth a table cell.
_COMMON_KEYS = frozenset({"type", "time", "pid", "ppid", "exe", "tid", "uid", "euid", "gid",
                          "cgroup_id", "comm", "start_ns", "count", "last_time"})
# Type fields that only matter in --json (identifiers, raw values, defaults).
_QUIET_KEYS = frozenset({"filename", "cwd", "exe_dev", "exe_ino", "exe_nlink", "mnt_ns", "dev",
                         "ino", "status", "child_start_ns", "request", "addr", "fd", "backlog"})
_NEW_PATH_KEYS = ("path2", "new_path", "newpath", "new", "dest", "target")
_ADDR_KEYS = (("daddr", "dport"), ("saddr", "sport"), ("addr", "port"))


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def _addr(addr: Any, port: Any) -> str:
    a = str(addr)
    if ":" in a:  # IPv6
        a = f"[{a}]"
    return a if port is None else f"{a}:{port}"


def event_summary(ev: Mapping[str, Any]) -> str:
    """A short description of the type-specific fields of one event.

    A primary part by kind (argv for exec, exit code, path [-> new path],
    address:port), then every other type-specific key as ``key=value``.
    """
    used: set[str] = set(_COMMON_KEYS)
    parts: list[str] = []
    kind = ev.get("type")
    argv = ev.get("argv")
    if kind == "exec" and isinstance(argv, list):
        parts.append(shlex.join(str(a) for a in argv))
        used.add("argv")
    elif kind == "exit" and "exit_code" in ev:
        parts.append(f"code={ev['exit_code']}")
        used.add("exit_code")
    if "path" in ev:
        path = _value(ev["path"])
        used.add("path")
        for k in _NEW_PATH_KEYS:
            if ev.get(k):
                path += f" -> {_value(ev[k])}"
                used.add(k)
                break
        parts.append(path)
    if kind in ("bind", "listen") and "saddr" in ev:
        parts.append(_addr(ev["saddr"], ev.get("sport")))
        used.update(_flatten(_ADDR_KEYS))
    elif kind == "accept" and "saddr" in ev:
        parts.append(f"{_addr(ev['saddr'], ev.get('sport'))} <- {_addr(ev.get('daddr'), ev.get('dport'))}")
        used.update(_flatten(_ADDR_KEYS))
    for a, p in _ADDR_KEYS:
        if a in used:
            break
        if a in ev:
            parts.append(_addr(ev[a], ev.get(p)))
            used.update(_flatten(_ADDR_KEYS))
            break
    if ev.get("mode") and isinstance(ev["mode"], int) and not isinstance(ev["mode"], bool):
        parts.append(f"mode={ev['mode']:#o}")
        used.add("mode")
    used |= _QUIET_KEYS
    for k, v in ev.items():
        if k in used or v is None or v == "" or v == [] or v is False:
            continue
        if k in ("owner_uid", "owner_gid") and v == -1:
            continue
        if k in ("signal", "mode", "prog_type", "map_type", "attach_type",
                 "target_tgid", "exit_code", "sport", "dport") and v == 0:
            continue
        parts.append(f"{k}={_value(v)}")
    count = ev.get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count > 1:
        # exact repeats the store coalesced into this row (store/eventproc.py)
        parts.append(f"[x{count} until {_value(ev.get('last_time', '?'))}]")
    return " ".join(parts)


def _flatten(pairs: tuple[tuple[str, str], ...]) -> set[str]:
    return {k for pair in pairs for k in pair}


def event_row(ev: Mapping[str, Any]) -> tuple[str, ...]:
    return (
        str(ev.get("time", "")),
        str(ev.get("type", "")),
        str(ev.get("pid", "")),
        str(ev.get("ppid", "")),
        str(ev.get("exe", "")) or "-",
        event_summary(ev),
    )


def alert_row(al: Mapping[str, Any]) -> tuple[str, ...]:
    proc = al.get("process")
    proc = proc if isinstance(proc, Mapping) else {}
    return (
        str(al.get("time", "")),
        str(al.get("severity", "")),
        str(al.get("rule", "")),
        str(al.get("action", "")),
        str(proc.get("pid", "")),
        str(proc.get("exe", "")) or "-",
        str(al.get("title", "")),
    )


EVENT_HEADERS = ("TIME", "TYPE", "PID", "PPID", "EXE", "DETAILS")
ALERT_HEADERS = ("TIME", "SEVERITY", "RULE", "ACTION", "PID", "EXE", "TITLE")


@dataclass
class Table:
    """Aligned columns; widths only grow, so followed rows stay aligned with the
    rows above them.  Cells are escaped with :func:`clean`.  The last column is
    not padded; ``max_width`` caps how far one long cell widens its column."""

    headers: Sequence[str]
    right: frozenset[int] = frozenset()
    max_width: int = 48
    widths: list[int] = field(default_factory=list)
    header_done: bool = False

    def render(self, rows: Sequence[Sequence[str]]) -> list[str]:
        cells = [[clean(c) for c in row] for row in rows]
        if not self.widths:
            self.widths = [len(h) for h in self.headers]
        for row in cells:
            for i, c in enumerate(row[:-1]):
                self.widths[i] = max(self.widths[i], min(len(c), self.max_width))
        lines = []
        if not self.header_done:
            lines.append(self._line(list(self.headers)))
            self.header_done = True
        lines.extend(self._line(row) for row in cells)
        return lines

    def _line(self, row: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(row[:-1]):
            w = self.widths[i]
            out.append(c.rjust(w) if i in self.right else c.ljust(w))
        out.append(row[-1])
        return "  ".join(out).rstrip()


# -- commands --------------------------------------------------------------


def _time_option(name: str, help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
        if value is None:
            return None
        try:
            return parse_since(value, time.time())
        except ConfigError as exc:
            raise click.BadParameter(exc.message, ctx=ctx, param=param) from exc

    return click.option(name, metavar="WHEN", callback=convert, help=help_text)


def _common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
    decorators: list[Decorator] = [
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=DEFAULT_DATA_DIR,
            envvar="BASTION_DATA_DIR",
            show_default=True,
            help="The agent's data directory (env BASTION_DATA_DIR).",
        ),
        click.option("--socket", "socket_path", type=click.Path(path_type=Path),
                     envvar="BASTION_SOCKET", default=DEFAULT_SOCKET, show_default=True,
                     help="The agent's control socket: a running agent answers the query."),
        click.option("--json", "as_json", is_flag=True,
                     help="One JSON object per line: the stored record as is."),
        _time_option("--since", "Only records at or after WHEN: a duration back "
                     "from now (30s, 10m, 2h, 1d, 1w) or an RFC 3339 date/time."),
        _time_option("--until", "Only records before WHEN (same forms as --since)."),
        click.option("--pid", type=int, help="Only this process id."),
        click.option("--exe", metavar="PATH",
                     help="Only this executable: an exact path, or a glob with * ? [."),
        click.option("--limit", type=click.IntRange(min=1), metavar="N",
                     help=f"The N most recent (default: all with --json, "
                     f"{TABLE_LIMIT} for the table)."),
        click.option("--follow", "-f", is_flag=True,
                     help="Keep printing new records (poll every 0.5 s) until Ctrl-C."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


class NoStoreError(click.ClickException):
    """No database at the data dir: one plain line (no "Error:" prefix), exit 1.

    An exception rather than ``ctx.exit(1)`` so the status survives a caller
    that runs the group with ``standalone_mode=False``.
    """

    exit_code = 1

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"no Bastion store at {data_dir / 'bastion.db'} "
            f"(is the agent running with --data-dir {data_dir}?)"
        )

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), err=True, file=file)


@contextmanager
def _reader(data_dir: Path, socket_path: Path = DEFAULT_SOCKET) -> Iterator[StoreReader]:
    """The store, read without ever write-opening a protected one (store/remote.py)."""
    from bastion.cli.guard import protection_on

    try:
        store = open_reader(data_dir, socket_path, protected=protection_on(),
                            warn=lambda m: click.echo(f"bastion: {m}", err=True))
    except StoreNotFoundError as exc:
        raise NoStoreError(data_dir) from exc
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield store
    finally:
        store.close()


def _run(
    data_dir: Path,
    socket_path: Path,
    as_json: bool,
    limit: int | None,
    follow: bool,
    fetch: Callable[[StoreReader, int, int, int | None], list[StoredRecord]],
    last_rowid: Callable[[StoreReader], int],
    table: Table,
    to_row: Callable[[Mapping[str, Any]], tuple[str, ...]],
) -> None:
    if limit is None and not as_json:
        limit = TABLE_LIMIT

    def emit(rows: list[StoredRecord]) -> None:
        if as_json:
            text = "".join(json.dumps(r.data, separators=(",", ":")) + "\n" for r in rows)
        else:
            text = "".join(line + "\n" for line in table.render([to_row(r.data) for r in rows]))
        click.echo(text, nl=False)
        sys.stdout.flush()

    with _reader(data_dir, socket_path) as store:
        try:
            follow_rows(
                lambda after, upto, lim: fetch(store, after, upto, lim),
                lambda: last_rowid(store),
                emit,
                limit=limit,
                follow=follow,
            )
        except KeyboardInterrupt:
            return
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python's
            # final flush from raising again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return
        except StoreError as exc:
            raise click.ClickException(str(exc)) from exc


@click.command("events")
@_common_options
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only this event type (repeatable): exec, open, connect, ...")
def events_cmd(
    data_dir: Path,
    socket_path: Path,
    as_json: bool,
    since: float | None,
    until: float | None,
    pid: int | None,
    exe: str | None,
    limit: int | None,
    follow: bool,
    types: tuple[str, ...],
) -> None:
    """Show recorded events, newest last."""

    def fetch(store: StoreReader, after: int, upto: int, lim: int | None) -> list[StoredRecord]:
        return store.events(
            since=since, until=until, pid=pid, exe=exe, types=types or None,
            after_rowid=after, max_rowid=upto, limit=lim, newest=True,
        )

    _run(data_dir, socket_path, as_json, limit, follow, fetch, lambda s: s.last_event_rowid(),
         Table(EVENT_HEADERS, right=frozenset({2, 3})), event_row)


@click.command("alerts")
@_common_options
@click.option("--severity", type=click.Choice(SEVERITIES), metavar="LEVEL",
              help=f"Only this severity or worse ({', '.join(SEVERITIES)}).")
@click.option("--rule", metavar="RULE", help="Only this rule: an exact id, or a glob.")
def alerts_cmd(
    data_dir: Path,
    socket_path: Path,
    as_json: bool,
    since: float | None,
    until: float | None,
    pid: int | None,
    exe: str | None,
    limit: int | None,
    follow: bool,
    severity: str | None,
    rule: str | None,
) -> None:
    """Show recorded alerts, newest last."""

    def fetch(store: StoreReader, after: int, upto: int, lim: int | None) -> list[StoredRecord]:
        return store.alerts(
            since=since, until=until, pid=pid, exe=exe, severity=severity, rule=rule,
            after_rowid=after, max_rowid=upto, limit=lim, newest=True,
        )

    _run(data_dir, socket_path, as_json, limit, follow, fetch, lambda s: s.last_alert_rowid(),
         Table(ALERT_HEADERS, right=frozenset({4})), alert_row)
