"""Reading a protected store without write-opening it.

SQLite opens a WAL database's ``-wal`` and ``-shm`` files read-write even for
a read-only connection.  Under tamper protection those opens are refused to
everyone but the agent and its guardian (and each refusal is a critical
alert), so ``bastion alerts``/``events``/``log verify`` ask the running agent,
which already holds the store, to run the query (:func:`store_handlers` on
its control socket).  With no agent answering, a protected store is read
as an immutable snapshot (the main file only: rows still in the WAL are not
seen, and the reader says so); an unprotected one is opened read-only as
before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from bastion.control import request
from bastion.errors import ControlError, StoreError
from bastion.store import chain
from bastion.store.db import Store, StoredRecord

PAGE = 5000          # rows per reply: replies stay small, a big --json query is paged


class StoreReader(Protocol):
    """The read side of :class:`~bastion.store.db.Store` the query commands use."""

    def events(self, *, since: float | None = None, until: float | None = None, pid: int | None = None,
               exe: str | None = None, types: Sequence[str] | None = None, after_rowid: int = 0,
               max_rowid: int | None = None, limit: int | None = None,
               newest: bool = False) -> list[StoredRecord]: ...

    def alerts(self, *, since: float | None = None, until: float | None = None, pid: int | None = None,
               exe: str | None = None, severity: str | None = None, rule: str | None = None,
               after_rowid: int = 0, max_rowid: int | None = None, limit: int | None = None,
               newest: bool = False) -> list[StoredRecord]: ...

    def last_event_rowid(self) -> int: ...
    def last_alert_rowid(self) -> int: ...
    def verify_chain(self, anchors: Sequence[tuple[str, chain.Anchor]] = ()) -> chain.ChainReport: ...
    def close(self) -> None: ...


_FILTERS = frozenset({"since", "until", "pid", "exe", "types", "severity", "rule", "after_rowid",
                      "max_rowid", "limit", "newest"})


class RemoteStore:
    """The agent's store, queried over its control socket (root-only)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def _ask(self, cmd: str, **args: Any) -> dict[str, Any]:
        resp = request(self.socket_path, cmd, timeout=60.0, **args)
        if not resp.get("ok", True) or "error" in resp and resp.get("error"):
            raise StoreError(str(resp.get("error")), location=None)
        return resp

    def _rows(self, table: str, kw: dict[str, Any]) -> list[StoredRecord]:
        limit = kw.get("limit")
        if limit is not None and limit <= PAGE:
            resp = self._ask("store.query", table=table, filters=kw)
            return [StoredRecord(int(r), d) for r, d in resp["rows"]]
        # page oldest first; a --limit above one page keeps only its newest rows at the end
        out: list[StoredRecord] = []
        args = dict(kw, limit=PAGE, newest=False)
        while True:
            resp = self._ask("store.query", table=table, filters=args)
            page = [StoredRecord(int(r), d) for r, d in resp["rows"]]
            out += page
            if len(page) < PAGE:
                break
            args["after_rowid"] = page[-1].rowid
        return out[-limit:] if limit is not None else out

    def events(self, *, since: float | None = None, until: float | None = None, pid: int | None = None,
               exe: str | None = None, types: Sequence[str] | None = None, after_rowid: int = 0,
               max_rowid: int | None = None, limit: int | None = None,
               newest: bool = False) -> list[StoredRecord]:
        return self._rows("events", dict(since=since, until=until, pid=pid, exe=exe,
                                         types=list(types) if types is not None else None,
                                         after_rowid=after_rowid, max_rowid=max_rowid,
                                         limit=limit, newest=newest))

    def alerts(self, *, since: float | None = None, until: float | None = None, pid: int | None = None,
               exe: str | None = None, severity: str | None = None, rule: str | None = None,
               after_rowid: int = 0, max_rowid: int | None = None, limit: int | None = None,
               newest: bool = False) -> list[StoredRecord]:
        return self._rows("alerts", dict(since=since, until=until, pid=pid, exe=exe,
                                         severity=severity, rule=rule, after_rowid=after_rowid,
                                         max_rowid=max_rowid, limit=limit, newest=newest))

    def last_event_rowid(self) -> int:
        return int(self._ask("store.last_rowid", table="events")["rowid"])

    def last_alert_rowid(self) -> int:
        return int(self._ask("store.last_rowid", table="alerts")["rowid"])

    def verify_chain(self, anchors: Sequence[tuple[str, chain.Anchor]] = ()) -> chain.ChainReport:
        """Verified by the agent, against its file anchor, its own in-memory anchor and ``anchors``."""
        resp = self._ask("store.verify", anchors=[[s, a.to_json()] for s, a in anchors])
        return chain.ChainReport.from_json(resp["report"])

    def close(self) -> None:
        pass


def store_handlers(data_dir: Path, anchor: Callable[[], chain.Anchor | None] = lambda: None,
                   ) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """Control-socket commands that answer store queries from inside the agent.

    One read-only connection for the control thread (the agent is exempt from
    tamper protection, so its reader may open the WAL files).  ``anchor``: the
    writer's in-memory anchor of the alert chain, checked by ``store.verify``."""
    reader: list[Store] = []

    def store() -> Store:
        if not reader:
            reader.append(Store.open(data_dir, readonly=True))
        return reader[0]

    def query(req: dict[str, Any]) -> dict[str, Any]:
        table, filters = req.get("table"), req.get("filters") or {}
        if table not in ("events", "alerts") or not isinstance(filters, dict) \
                or not set(filters) <= _FILTERS:
            raise ValueError("store.query needs table events|alerts and known filters")
        limit = filters.get("limit")
        if limit is None or not isinstance(limit, int) or not 0 < limit <= PAGE:
            filters = dict(filters, limit=PAGE)
        fetch = store().events if table == "events" else store().alerts
        rows = fetch(**filters)
        return {"rows": [[r.rowid, r.data] for r in rows]}

    def last_rowid(req: dict[str, Any]) -> dict[str, Any]:
        s = store()
        return {"rowid": s.last_event_rowid() if req.get("table") == "events" else s.last_alert_rowid()}

    def verify(req: dict[str, Any]) -> dict[str, Any]:
        given = req.get("anchors") or []
        if not isinstance(given, list) or not all(isinstance(g, list) and len(g) == 2 for g in given):
            raise ValueError("store.verify: anchors must be [[source, {count, seq, mac}], ...]")
        anchors = [(str(s), chain.Anchor.from_json(a, where="store.verify request")) for s, a in given]
        live = anchor()   # read first: rows it names are committed, so the reader sees them
        if live is not None:
            anchors.insert(0, ("agent", live))
        return {"report": store().verify_chain(anchors).to_json()}

    return {"store.query": query, "store.last_rowid": last_rowid, "store.verify": verify}


def open_reader(data_dir: Path, socket_path: Path, *, protected: bool,
                warn: Callable[[str], None]) -> StoreReader:
    """The agent's store through its socket when that agent keeps ``data_dir``; else the
    file: read-only, or, when tamper protection is on, as an immutable snapshot."""
    try:
        resp = request(socket_path, "ping", timeout=5.0)
    except ControlError:
        resp = {}
    if resp and Path(str(resp.get("data_dir", ""))).resolve() == Path(data_dir).resolve():
        return RemoteStore(socket_path)
    if protected:
        warn(f"the agent does not answer on {socket_path}: reading the protected store as a "
             "snapshot (records not yet checkpointed from its WAL are not shown)")
        return Store.open(data_dir, readonly=True, immutable=True)
    return Store.open(data_dir, readonly=True)


__all__ = ["PAGE", "RemoteStore", "StoreReader", "open_reader", "store_handlers"]
