"""The store's event rows in a writer process of their own (issue 16.3).

Turning an event into its stored row (the JSON form, its encoding, the SQLite
insert) is ~15 µs of Python per event; in the agent it shared the interpreter
lock with the loop that decides, so a flood cost detection throughput.  Here the
loop hands each processed batch to :meth:`EventStoreProcess.offer` (a bounded
queue, as :class:`~bastion.eventwriter.EventWriter`); a feeder thread packs the
events as compact tuples (:func:`pack`: ``marshal``, no pickle, no JSON) and
writes them to the child's stdin, and the child
(``python -I -B -m bastion.store.eventproc --data-dir D``) rebuilds the events,
writes their rows with its own SQLite connection (:meth:`Store.open_event_writer`:
no migration, the alert chain never touched) and answers one line per batch.

* Above the child's capacity the pipe fills, the feeder waits, the queue fills and
  whole batches are shed: counted (``shed``), alerted by the agent.  Events that
  raised a finding are offered with ``force``: their rows are kept whatever the
  queue holds (what is shed is only storage of benign events).
* A child that exits or is killed is restarted at once and reported through
  ``on_died`` (the agent raises a high alert); the batches it had not confirmed are
  sent again to the new child, once; a batch whose second writer dies too is counted
  as not stored (``lost``), never silently.
* A child that has work (a frame in its pipe, or the feeder blocked writing one) and
  answers nothing for ``stall_s`` (SIGSTOP, a hang) is killed and replaced the same way,
  reported as stalled (the agent raises a high alert).  ``stall_s`` is above the store's
  busy timeout, the longest a healthy child waits without answering.
* The pipes are authenticated (issue 16 notes, s14): a root attacker can open
  ``/proc/PID/fd/0`` of the child and write frames (rows of made-up events in a store
  tamper protection guards), read frames out of it (rows silently gone), or write
  answers into the agent's end (``/proc/PID/fd/1``: rows counted as stored that never
  were, progress faked).  Each child gets a fresh random key in its go frame; every
  frame carries a sequence number and a MAC (HMAC-SHA256, 128 bits) over its header and
  payload, every answer a sequence number and a MAC too.  A frame or answer that does
  not verify, or out of sequence, ends the child (framing cannot be trusted after it):
  replaced, reported as tampered (the agent raises a critical alert).
* Alerts are not written here: they stay in the agent, in order, with their hash
  chain and anchor (``store/chain.py``).  The child inserts event rows only.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import hmac
import logging
import marshal
import operator
import os
import secrets
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, TypedDict

from bastion.containers import Container
from bastion.eventwriter import EventWriter
from bastion.events import TYPES, Event, Proc, all_fields
from bastion.store.db import _ENCODER, REPEAT_WINDOW_S

log = logging.getLogger("bastion.store.eventproc")

_FRAME: Final = struct.Struct("<IIQ")   # payload bytes, events in it, sequence number
KEY_BYTES: Final = 32
TAG_BYTES: Final = 16
MAX_FRAME_BYTES: Final = 256 << 20   # far above any batch; a bigger size is not ours
STALL_S: Final = 20.0              # no answer with work outstanding: killed, replaced
# event classes by a small number, both ways (the same module on both sides of the pipe)
_CLASSES: Final[tuple[type[Any], ...]] = tuple(sorted(set(TYPES.values()), key=lambda c: c.__name__))
_CLASS_NO: Final[dict[type[Any], int]] = {c: i for i, c in enumerate(_CLASSES)}
PIPE_BYTES: Final = 1 << 20        # the child's stdin (F_SETPIPE_SZ; the kernel may cap it)
CHILD_NICE: Final = 5              # storage yields to the loop that decides
RESTART_BACKOFF_S: Final = (0.0, 0.5, 2.0, 5.0)   # by consecutive restarts within a minute
_WINDOW_NS: Final = int(REPEAT_WINDOW_S * 1e9)   # a coalesced row spans at most this
_ESC: Final[Callable[[str], str]] = encode_basestring_ascii   # json's own C escaper
_ENC: Final = _ENCODER.encode
MERGE_EVENTS: Final = 8192         # queued batches sent as one frame (one transaction)
ACTOR_BUCKETS: Final = 1024         # (rule, executable) eviction budgets held at once
LOST_KINDS: Final = 32             # (actor, type) kinds of evicted rows said by name


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:TAG_BYTES]


def frame(key: bytes, seq: int, events: Sequence[Event], apart: Collection[int] = ()) -> bytes:
    """One authenticated frame: header (size, count, ``seq``), payload, MAC of both;
    ``apart``: as :func:`pack`."""
    payload = pack(events, apart)
    head = _FRAME.pack(len(payload), len(events), seq)
    return head + payload + _tag(key, head + payload)


def answer_line(key: bytes, seq: int, kind: str, n: int, detail: str = "") -> str:
    """One authenticated answer: ``<mac hex> <kind> <n> <seq> <detail>``."""
    body = f"{kind} {n} {seq} {_oneline_s(detail)}".rstrip(" ")
    return f"{_tag(key, body.encode()).hex()} {body}\n"


def verify_answer(key: bytes, line: str) -> tuple[str, int, int, str]:
    """(kind, n, seq, detail) of an answer line; ValueError when it does not verify."""
    mac, _, body = line.rstrip("\n").partition(" ")
    try:
        got = bytes.fromhex(mac)
    except ValueError:
        raise ValueError(f"answer without a MAC: {line[:80]!r}") from None
    if not hmac.compare_digest(got, _tag(key, body.encode())):
        raise ValueError(f"answer with a wrong MAC: {line[:80]!r}")
    kind, n_s, seq_s, *rest = body.split(" ", 3) + ["", ""]
    return kind, int(n_s), int(seq_s), rest[0] if rest else ""


def _oneline_s(text: str) -> str:
    return " ".join(text.split())


class Packed(NamedTuple):
    """One stored fact as the writer process gets it: the event (its first time), how
    many exact repeats it stands for (itself included) and the last one's time."""

    event: Event
    n: int
    last_ns: int


def pack(events: Sequence[Event], apart: Collection[int] = ()) -> bytes:
    """``events`` as one ``marshal`` payload: (actors, rows); each actor once per batch.

    Exact repeats are coalesced (:data:`~bastion.store.db.REPEAT_WINDOW_S`): an event
    equal to an earlier one of the batch in everything but its time (same class, same
    actor: every field, container included; same fields: operation, object, result)
    and within the window of that
    row's first time is counted into that row (``count``, first and last time) instead
    of a row of its own.  Any difference (another file, mode, actor, flag) is a row of
    its own.  ``apart``: ``id()`` of events never coalesced, in either direction (those
    that raised a finding keep a row of their own, exactly as seen).

    A row: ``[(class no, actor no, truncated, fields...), first ns, count, last ns, type]``.

    A batch in time order within the window, every field hashable (a flood) is grouped by
    C-level passes (:func:`_pack_grouped`, ~1 µs an event less than a loop in Python);
    any other by :func:`_pack_each`: the same rows (``tests/unit/test_store_coalesce.py``)."""
    if len(events) > 1:
        rows = _pack_grouped(events, apart)
        if rows is not None:
            return rows
    return _pack_each(events, apart)


def _actor_no(p: Proc, procs: dict[int, int], same: dict[Proc, int],
              actors: list[tuple[Any, ...]]) -> int:
    """The actor's number in the batch: an equal actor in another object (an enricher that
    rebuilt it) is the same actor, one entry, and its repeats coalesce."""
    try:
        i = same.get(p)
    except TypeError:
        i = None
    if i is None:
        i = len(actors)
        c = p.container
        actors.append((p.pid, p.tid, p.ppid, p.uid, p.euid, p.gid, p.cgroup_id, p.comm,
                       p.start_ns, p.exe, c.to_json() if c is not None else None))
        try:
            same[p] = i
        except TypeError:
            pass
    procs[id(p)] = i
    return i


_REST: Final = operator.itemgetter(slice(2, None))
_TIME: Final = operator.itemgetter(0)
_PROC: Final = operator.attrgetter("proc")
_TIME_NS: Final = operator.attrgetter("time_ns")
# event class -> its fields after the actor (truncated, then its own), as one tuple
_OWN: Final[dict[type[Any], Callable[[Any], tuple[Any, ...]]]] = {
    cls: operator.attrgetter(*(f.name for f in dataclasses.fields(cls)[2:])) for cls in _CLASSES}


def _pack_grouped(events: Sequence[Event], apart: Collection[int]) -> bytes | None:
    """:func:`pack` by C-level passes over the batch (group by key with ``Counter``, the
    first and last time of each key by ``dict(zip(...))``); None when the batch is not in
    time order within the window or a field does not hash (then :func:`_pack_each`)."""
    classes = list(map(type, events))
    own = _OWN.get(classes[0])
    if own is not None and classes.count(classes[0]) == len(classes):
        times = list(map(_TIME_NS, events))   # one class (a flood): its fields straight
        rests: Any = map(own, events)
    else:
        vals = list(map(all_fields, events))
        times = list(map(_TIME, vals))
        rests = map(_REST, vals)
    lo, hi = times[0], times[-1]
    if hi - lo > _WINDOW_NS or hi < lo or times != sorted(times):
        return None
    procs_of = list(map(_PROC, events))
    keys: list[Any] = list(zip(classes, map(id, procs_of), rests))
    if apart:
        for j, x in enumerate(map(id, events)):
            if x in apart:
                keys[j] = (*keys[j], x)      # a key of its own: never coalesced
    try:
        counts = collections.Counter(keys)
    except TypeError:
        return None
    n = len(keys)
    # built from the keys in order, as the Counter: the same key order (first seen first)
    last_at = dict(zip(keys, range(n)))
    first_t = dict(zip(reversed(keys), reversed(times)))
    procs: dict[int, int] = {}
    same: dict[Proc, int] = {}
    actors: list[tuple[Any, ...]] = []
    no = _CLASS_NO
    rows: list[list[Any]] = []
    joined: dict[tuple[Any, ...], list[Any]] = {}   # equal actors in two objects: one row
    for (key, c), j in zip(counts.items(), last_at.values()):
        i = procs.get(key[1])
        if i is None:
            i = _actor_no(procs_of[j], procs, same, actors)
        packed = (no[key[0]], i, *key[2])
        if len(key) > 3:       # apart
            rows.append([packed, times[j], c, times[j], events[j].type])
            continue
        row = joined.get(packed)
        if row is not None:
            row[2] += c
            row[1] = min(row[1], first_t[key])
            row[3] = max(row[3], times[j])
            continue
        row = joined[packed] = [packed, first_t[key], c, times[j], events[j].type]
        rows.append(row)
    return marshal.dumps((actors, rows))


def _pack_each(events: Sequence[Event], apart: Collection[int]) -> bytes:
    """:func:`pack` one event at a time (any batch)."""
    procs: dict[int, int] = {}
    same: dict[Proc, int] = {}
    actors: list[tuple[Any, ...]] = []
    rows: list[list[Any]] = []      # [key, first ns, count, last ns, type]
    firsts: dict[tuple[Any, ...], list[Any]] = {}
    get_first = firsts.get
    no = _CLASS_NO
    window = _WINDOW_NS
    for ev in events:
        p = ev.proc
        i = procs.get(id(p))
        if i is None:
            i = _actor_no(p, procs, same, actors)
        vals = all_fields(ev)
        t = vals[0]
        key = (no[type(ev)], i, *vals[2:])
        if apart and id(ev) in apart:
            rows.append([key, t, 1, t, ev.type])
            continue
        try:
            row = get_first(key)
        except TypeError:      # a field that does not hash: never coalesced
            rows.append([key, t, 1, t, ev.type])
            continue
        if row is not None and -window <= t - row[1] <= window and -window <= t - row[3] <= window:
            row[2] += 1
            if t > row[3]:
                row[3] = t
            elif t < row[1]:
                row[1] = t
            continue
        row = [key, t, 1, t, ev.type]
        rows.append(row)
        firsts[key] = row
    return marshal.dumps((actors, rows))


def _actors(raw: Sequence[Sequence[Any]]) -> list[Proc]:
    return [Proc(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9],
                 Container.from_json(a[10]) if a[10] is not None else None) for a in raw]


def unpack(payload: bytes) -> list[Packed]:
    """The facts :func:`pack` packed (ValueError/TypeError on a malformed payload)."""
    actors, rows = marshal.loads(payload)
    procs = _actors(actors)
    out: list[Packed] = []
    for key, first, n, last, etype in rows:
        cls = _CLASSES[key[0]]
        ev: Event = cls(first, procs[key[1]], *key[2:])
        if not isinstance(n, int) or n < 1 or ev.type != etype:
            raise ValueError(f"a row with count {n!r} and type {etype!r} for {ev.type!r}")
        out.append(Packed(ev, n, last))
    return out


def _json_value(v: Any) -> str:
    """One value as ``json`` writes it in :func:`~bastion.events.to_json`'s form."""
    t = type(v)
    if t is str:
        return _ESC(v)
    if t is int:
        return int.__repr__(v)
    if t is tuple:
        v = list(v)
    return _ENC(v)


_Encoder = Callable[[Sequence[Any], str, str, int, str, str], str]
_TRUNCATED: Final = ',"truncated":true'


def _encoders() -> dict[int, _Encoder]:
    """Per class no: a packed row's whole ``data`` JSON in one generated f-string,
    ``enc(r, type_head, second, micros, actor, tail)``: ``type_head`` (``{"type":…,"time":"``),
    the time's second (``YYYY-MM-DDTHH:MM:SS.``) and microseconds, the actor's fields
    (made once per batch), the row's own fields (``,"name":value`` each, in
    :func:`~bastion.events.to_json` order: in a packed row's key ``truncated`` is at 2, its
    own fields from 3), ``"truncated"`` when set, then ``tail`` (``}`` or the count and
    last time).  Generated per class, as :func:`bastion.events._maker` is: a field declared
    ``str`` or ``int`` whose value has that exact type is formatted inline (the JSON
    encoder's C escaper for a str, ``int`` as ``json`` writes it); any other value goes
    through the encoder itself."""
    from bastion.events import _JSON_FIELDS

    out: dict[int, _Encoder] = {}
    for n, cls in enumerate(_CLASSES):
        want = set(_JSON_FIELDS[cls])
        parts = []
        for j, f in enumerate(dataclasses.fields(cls)):
            if f.name not in want:
                continue
            v = f"r[{j}]"
            ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            if ann == "str":
                expr = f"_esc({v}) if {v}.__class__ is str else _val({v})"
            elif ann == "int":
                expr = f"{v} if {v}.__class__ is int else _val({v})"
            else:
                expr = f"_val({v})"
            parts.append(f',"{f.name}":{{{expr}}}')
        env: dict[str, Any] = {"_esc": _ESC, "_val": _json_value, "_tr": _TRUNCATED, "_no": ""}
        body = "".join(parts)
        exec("def enc(r, ty, sec, us, actor, tail):\n"   # noqa: S102 - generated from the dataclass fields
             f"    return f'{{ty}}{{sec}}{{us:06d}}Z\",{{actor}}{body}"
             "{_tr if r[2] else _no}{tail}'\n", env)
        out[n] = env["enc"]
    return out


class LostKind(TypedDict):
    """Evicted rows of one actor and event type (:meth:`EventStoreProcess.take_evictions`)."""

    pid: int
    comm: str
    exe: str
    type: str
    rows: int


class RowMaker:
    """The store rows of a payload straight from its packed tuples: no event objects, the
    actor's JSON part made once per batch, each value encoded by the JSON encoder's own C
    string escaper, a row's whole ``data`` in one generated f-string (:func:`_encoders`),
    the type's head and the time's second cached.  ``data`` is byte for byte what ``json``
    gives for :func:`~bastion.events.to_json` (``tests/unit/test_store_coalesce.py``), plus
    ``"count"`` and ``"last_time"`` when the row stands for repeats."""

    def __init__(self) -> None:
        self.encoders = _encoders()
        self._secs: dict[int, str] = {}
        self._types: dict[str, tuple[str, str]] = {}

    def _second(self, secs: int) -> str:
        if len(self._secs) > 4096:
            self._secs.clear()
        head = self._secs[secs] = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(secs))
        return head

    def _type(self, etype: object, where: int = -1) -> tuple[str, str]:
        """(``{"type":…,"time":"``, the type column) of a row's type; ValueError naming the
        row (``where``: its index in the frame) when it is not a str."""
        if not isinstance(etype, str) or etype.__class__ is not str:
            raise ValueError(f"row {where} of the frame: type {etype!r} "
                             f"({etype.__class__.__name__}, not a str)")
        if len(self._types) > 256:
            self._types.clear()
        from bastion.store.db import _text

        t = self._types[etype] = (f'{{"type":{_ESC(etype)},"time":"', _text(etype))
        return t

    def time(self, ns: int) -> str:
        secs, sub = divmod(ns, 1_000_000_000)
        head = self._secs.get(secs)
        if head is None:
            head = self._second(secs)
        return f"{head}{sub // 1000:06d}Z"

    def rows(self, payload: bytes) -> tuple[list[tuple[Any, ...]], int]:
        """(rows for :meth:`~bastion.store.db.Store.add_rows`, events they stand for)."""
        from bastion.store.db import _text

        actors, packed = marshal.loads(payload)
        parts: list[tuple[int, str, str]] = []
        esc = _ESC
        for a in actors:
            if len(a) != 11:
                raise ValueError(f"an actor of {len(a)} values")
            frag = (f'"pid":{int(a[0])},"tid":{int(a[1])},"ppid":{int(a[2])},"uid":{int(a[3])},'
                    f'"euid":{int(a[4])},"gid":{int(a[5])},"cgroup_id":{int(a[6])},'
                    f'"comm":{esc(a[7])},"start_ns":{int(a[8])},"exe":{esc(a[9])}')
            if a[10] is not None:
                frag += ',"container":' + _ENC(Container.from_json(a[10]).to_json())
            parts.append((int(a[0]), _text(a[9]), frag))
        encoders, secs_of, types = self.encoders, self._secs, self._types
        out: list[tuple[Any, ...]] = []
        add = out.append
        events = 0
        for at, (r, first, n, last, etype) in enumerate(packed):
            secs, sub = divmod(first, 1_000_000_000)
            sec = secs_of.get(secs)
            if sec is None:
                sec = self._second(secs)
            # the check first: an unhashable type (a list) would raise TypeError in get()
            ty = types.get(etype) if etype.__class__ is str else None
            if ty is None:
                ty = self._type(etype, at)
            pid, exe, frag = parts[r[1]]
            if n == 1 and n.__class__ is int:
                add((first // 1000 / 1e6, ty[1], pid, exe,
                     encoders[r[0]](r, ty[0], sec, sub // 1000, frag, "}"), 1, None))
                events += 1
            elif n.__class__ is int and n > 1:
                tail = f',"count":{n},"last_time":"{self.time(last)}"}}'
                add((first // 1000 / 1e6, ty[1], pid, exe,
                     encoders[r[0]](r, ty[0], sec, sub // 1000, frag, tail), n,
                     last // 1000 / 1e6))
                events += n
            else:
                raise ValueError(f"a row with count {n!r} and type {etype!r}")
        return out, events


# ---- the child ---------------------------------------------------------------------------


def _read_exact(f: IO[bytes], n: int) -> bytes | None:
    buf = f.read(n)
    if not buf:
        return None
    if len(buf) != n:
        raise EOFError(f"short frame: {len(buf)} of {n} bytes")
    return buf


def child_main(data_dir: Path, stdin: IO[bytes], stdout: IO[str]) -> int:
    """Read frames until EOF; store each batch; one authenticated answer per batch:
    ``stored N <rows>`` (N events in that many rows) / ``failed N <error>`` / ``malformed N <error>``; a frame that does not
    verify: ``tampered 0 <why>`` and exit status 3."""
    from bastion.errors import StoreError
    from bastion.store.db import MalformedRecordError, Store

    # the go: the agent has enrolled this process with tamper protection (when it runs
    # under the guardian) before this first frame; the store is opened only after it.
    # It carries this child's key.
    head = _read_exact(stdin, _FRAME.size)
    key = _read_exact(stdin, KEY_BYTES) if head is not None and \
        _FRAME.unpack(head) == (KEY_BYTES, 0, 0) else None
    if key is None:
        stdout.write("fatal 0 0 no go frame from the agent\n")
        stdout.flush()
        return 2
    out_seq = 0

    def say(kind: str, n: int, detail: str = "") -> None:
        nonlocal out_seq
        out_seq += 1
        stdout.write(answer_line(key, out_seq, kind, n, detail))
        stdout.flush()

    try:
        store = Store.open_event_writer(data_dir)
    except StoreError as exc:
        say("fatal", 0, str(exc))
        return 2
    say("ready", 0)
    maker = RowMaker()
    expect = 1
    try:
        while True:
            head = _read_exact(stdin, _FRAME.size)
            if head is None:
                return 0
            size, n, seq = _FRAME.unpack(head)
            if seq != expect or size > MAX_FRAME_BYTES:
                say("tampered", 0, f"frame {seq} (expected {expect}, {size} bytes): "
                    "not from the agent")
                return 3
            body = _read_exact(stdin, size + TAG_BYTES)
            if body is None:
                raise EOFError("frame cut short")
            payload, tag = body[:size], body[size:]
            if not hmac.compare_digest(tag, _tag(key, head + payload)):
                say("tampered", 0, f"frame {seq} with a wrong MAC: not from the agent")
                return 3
            expect += 1
            try:
                rows, events = maker.rows(payload)
                if events != n:
                    raise ValueError(f"{events} events in a frame of {n}")
            except (ValueError, TypeError, EOFError, IndexError, KeyError) as exc:
                say("malformed", n, f"undecodable batch: {type(exc).__name__}: {exc}")
                continue
            try:
                store.add_rows(rows)
            except MalformedRecordError as exc:
                say("malformed", n, _oneline(exc))
            except StoreError as exc:
                say("failed", n, _oneline(exc))
            else:
                say("stored", n, str(len(rows)))
    except EOFError as exc:
        say("tampered", 0, f"frame cut short: {exc}")
        return 3
    finally:
        store.close()


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bastion.store.eventproc")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--nice", type=int, default=CHILD_NICE)
    args = ap.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    return child_main(args.data_dir, sys.stdin.buffer, sys.stdout)


# ---- the agent's side ------------------------------------------------------------------------


class Batch(list[Event]):
    """A batch handed to the writer with the ``id()`` of its events that raised a finding
    (``apart``: never coalesced) and of those whose finding was high or critical
    (``pinned``: never evicted to make room, see :meth:`EventStoreProcess.keep`)."""

    apart: frozenset[int]
    pinned: frozenset[int]

    def __init__(self, events: Sequence[Event] = (), apart: Collection[int] = (),
                 pinned: Collection[int] = ()) -> None:
        super().__init__(events)
        self.apart = frozenset(apart)
        self.pinned = frozenset(pinned)


def _merge(parts: list[Sequence[Event]]) -> Batch:
    out = Batch()
    apart: set[int] = set()
    pinned: set[int] = set()
    for b in parts:
        out += b
        apart |= getattr(b, "apart", frozenset())
        pinned |= getattr(b, "pinned", frozenset())
    out.apart = frozenset(apart)
    out.pinned = frozenset(pinned)
    return out


def _give_up(batch: Sequence[Event], need: int) -> tuple[Sequence[Event], list[Event]]:
    """``batch`` without up to ``need`` of its events not pinned, newest first (what is
    left, in order, and the events given up): the eviction of :meth:`EventWriter.keep`.
    Rows of low/medium findings are not pinned: they go like benign ones."""
    pinned: frozenset[int] = getattr(batch, "pinned", frozenset())
    apart: frozenset[int] = getattr(batch, "apart", frozenset())
    drop: set[int] = set()
    gone: list[Event] = []
    for j in range(len(batch) - 1, -1, -1):
        if len(gone) >= need:
            break
        if id(batch[j]) not in pinned:
            drop.add(j)
            gone.append(batch[j])
    if not gone:
        return batch, gone
    gone.reverse()
    # the ids of the events given up leave with them (an id may be reused once they are
    # freed: it must not mark another event of a batch merged with this one)
    out = set(map(id, gone))
    return Batch([ev for j, ev in enumerate(batch) if j not in drop], apart - out,
                 pinned - out), gone


def _cut(batch: Sequence[Event], n: int) -> Batch:
    """The first ``n`` of ``batch``, with what it says of them (see :func:`_give_up`)."""
    out = set(map(id, batch[n:]))
    return Batch(batch[:n], getattr(batch, "apart", frozenset()) - out,
                 getattr(batch, "pinned", frozenset()) - out)


class _Bucket:
    """One finding class's evictions: ``rate`` a second, at most ``rate`` at once."""

    __slots__ = ("tokens", "at")

    def __init__(self, rate: float, now: float) -> None:
        self.tokens = rate
        self.at = now


class _Child:
    """One running child: its process, and what it was sent and confirmed."""

    def __init__(self, popen: subprocess.Popen[bytes], key: bytes) -> None:
        self.popen = popen
        self.key = key         # this child's MAC key (sent in the go frame)
        self.seq = 0           # the last frame's sequence number
        self.answers = 0       # the last answer's sequence number
        self.sent = 0          # events written to its pipe
        self.answered = 0      # events it answered for (stored, failed or malformed)
        self.writing = False   # the feeder is in a write to its pipe
        # the batches written and not answered yet, in order (the answers come in order),
        # each with whether it is a second try: a batch a dead writer had not answered is
        # sent once more to the next one (the rows of events that raised a finding in it
        # too); a second death loses it (a batch that kills its writer does not loop)
        self.inflight: collections.deque[tuple[Sequence[Event], bool]] = collections.deque()
        self.progress_at = time.monotonic()   # its last answer, or the start of its work
        self.collected = False  # the reader took its in-flight batches (it is gone)
        self.stalled = ""      # why the agent killed it for making no progress
        self.tampered = ""     # why its pipes cannot be trusted (it was killed)
        self.ready = threading.Event()
        self.fatal = ""
        self.reader: threading.Thread | None = None
        self.unenrol: Callable[[], None] | None = None


class EventStoreProcess:
    """The agent's handle on the writer process (see the module docstring).

    ``on_result(kind, n, detail)``: called from the reader thread for each answer
    (``stored``, ``failed``, ``malformed``); ``on_died(why, lost, cause, pid)``: the child
    exited or was killed (``lost`` events it had not confirmed); it was restarted.
    ``cause``: ``died`` (exited, killed by someone else), ``stalled`` (no progress for
    ``stall_s`` with work outstanding: killed by us) or ``tampered`` (a frame or answer
    that did not verify: killed by us or exited)."""

    def __init__(self, data_dir: Path, *, max_items: int,
                 on_result: Callable[[str, int, str], None],
                 on_died: Callable[[str, int, str, int], None],
                 argv: Sequence[str] | None = None, nice: int = CHILD_NICE,
                 enrol: Callable[[int], Callable[[], None]] | None = None,
                 stall_s: float = STALL_S, evict_per_s: float | None = None,
                 evict_per_actor_s: float | None = None) -> None:
        """``enrol(pid)``: make a new child one of ours for tamper protection before it
        opens the store (under the guardian: the protected data dir); returns the undo,
        called once the child is gone.  ``evict_per_s``: the queued rows all finding
        classes (rules) together may evict a second to keep their rows (:meth:`keep`; one
        global budget, default ``max_items / 100``: budgets of several rules do not add
        up, s16-fixlog); ``evict_per_actor_s``: the part of it one (rule, executable) may
        take (default a quarter of ``evict_per_s``: one flooding actor leaves room)."""
        self.data_dir = Path(data_dir)
        self._argv = list(argv) if argv is not None else [
            sys.executable, "-I", "-B", "-m", "bastion.store.eventproc",
            "--data-dir", str(self.data_dir), "--nice", str(nice)]
        self._on_result = on_result
        self._on_died = on_died
        self._enrol = enrol
        if not stall_s > 0:
            raise ValueError(f"EventStoreProcess: stall_s must be > 0 (got {stall_s})")
        self.stall_s = stall_s
        rate = max_items / 100 if evict_per_s is None else evict_per_s
        if not rate > 0:
            raise ValueError(f"EventStoreProcess: evict_per_s must be > 0 (got {evict_per_s})")
        self.evict_per_s = float(rate)
        per_actor = rate / 4 if evict_per_actor_s is None else evict_per_actor_s
        if not per_actor > 0:
            raise ValueError("EventStoreProcess: evict_per_actor_s must be > 0 "
                             f"(got {evict_per_actor_s})")
        self.evict_per_actor_s = float(per_actor)
        self._global_bucket: _Bucket | None = None
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._evict_lock = threading.Lock()
        self.evicted_by: dict[str, int] = {}    # queued rows evicted, by the class that did
        self.not_kept_by: dict[str, int] = {}   # finding rows not kept (kept_shed), by class
        self._lost: collections.Counter[tuple[int, str, str, str]] = collections.Counter()
        self._lost_more = 0                     # evicted rows beyond the sample's kinds
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()   # one writer of a child's pipe at a time
        self._child: _Child | None = None
        self._closing = False
        self._redo_pending = 0    # restarts still sending a dead child's batches again
        self.restarts = 0
        self.lost = 0               # events sent to a child that died before confirming
        self._recent: list[float] = []
        self._feeder: EventWriter[Event] = EventWriter(
            self._send, max_items=max_items, share=1.0, name="bastion-store-feeder",
            on_error=self._send_failed, merge=_merge, merge_items=MERGE_EVENTS,
            give_up=_give_up, cut=_cut)

    # -- counters the agent reports

    @property
    def shed(self) -> int:
        return self._feeder.shed

    @property
    def queued(self) -> int:
        return self._feeder.queued

    @property
    def max_items(self) -> int:
        return self._feeder.max_items

    @property
    def pid(self) -> int | None:
        c = self._child
        return c.popen.pid if c is not None else None

    # -- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Start the child (waiting until its store is open) and the feeder thread."""
        with self._lock:
            child = self._spawn()
        if not child.ready.wait(timeout) or child.fatal:
            why = child.fatal or f"not ready within {timeout:g}s"
            self._kill(child)
            from bastion.errors import StoreError
            raise StoreError(f"the event writer process did not start: {why}")
        self._feeder.start()

    def _spawn(self) -> _Child:
        p = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=None, close_fds=True)
        assert p.stdin is not None
        try:
            import fcntl

            fcntl.fcntl(p.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
        except OSError:
            pass   # a smaller pipe only means the feeder waits sooner
        child = _Child(p, secrets.token_bytes(KEY_BYTES))
        self._child = child
        if self._enrol is not None:
            try:
                child.unenrol = self._enrol(p.pid)
            except Exception as exc:  # noqa: BLE001 - said; the child then fails to open, alerted
                log.error("event writer process %d not enrolled with tamper protection: %s",
                          p.pid, exc)
        try:
            p.stdin.write(_FRAME.pack(KEY_BYTES, 0, 0) + child.key)
            p.stdin.flush()
        except OSError:
            pass   # it died already: the reader reports it
        child.reader = threading.Thread(target=self._read, args=(child,),
                                        name="bastion-store-acks", daemon=True)
        child.reader.start()
        return child

    def _read(self, child: _Child) -> None:
        """The child's answers until EOF; then, unless closing, report and restart.
        An answer that does not verify (or out of sequence) ends the child: tampered."""
        out = child.popen.stdout
        assert out is not None
        for raw in out:
            if child.tampered:
                continue       # killed: read to EOF
            line = raw.decode("utf-8", "replace")
            try:
                kind, n, seq, detail = verify_answer(child.key, line)
                if seq != child.answers + 1:
                    raise ValueError(f"answer {seq} (expected {child.answers + 1}): {line[:80]!r}")
            except ValueError as exc:
                if line.startswith("fatal ") and not child.ready.is_set():
                    child.fatal = line.rstrip("\n").split(" ", 3)[-1]   # before its key
                    child.ready.set()
                    continue
                child.tampered = f"an answer not from the writer process: {exc}"
                self._kill_now(child)
                continue
            child.answers = seq
            child.progress_at = time.monotonic()
            if kind == "ready":
                child.ready.set()
                continue
            if kind == "fatal":
                child.fatal = detail
                child.ready.set()
                continue
            if kind == "tampered":
                child.tampered = detail
                continue
            with self._lock:
                child.answered += n
                if child.inflight:
                    child.inflight.popleft()
            self._on_result(kind, n, detail)
        child.popen.wait()
        child.ready.set()
        self._child_gone(child)

    def _child_gone(self, child: _Child) -> None:
        if child.unenrol is not None:
            try:
                child.unenrol()
            except Exception as exc:  # noqa: BLE001 - a stale entry never matches (start time)
                log.warning("event writer process %d not unenrolled: %s", child.popen.pid, exc)
            child.unenrol = None
        with self._lock:
            child.collected = True
            if self._child is not child:
                return
            if self._closing:
                redo: list[Sequence[Event]] = []
                lost = max(0, child.sent - child.answered)
            else:
                redo = [b for b, retried in child.inflight if not retried]
                lost = sum(len(b) for b, retried in child.inflight if retried)
            self.lost += lost
            rc = child.popen.returncode
            if self._closing and not child.tampered:
                if lost:   # counted as not stored (the agent is stopping: no restart)
                    self._on_result("failed", lost, f"not confirmed by the writer process, "
                                    f"which exited with status {rc} at the stop")
                return
            why = (f"killed by signal {-rc}" if rc is not None and rc < 0
                   else f"exited with status {rc}" + (f": {child.fatal}" if child.fatal else ""))
            cause = "died"
            if child.tampered:
                cause, why = "tampered", f"{child.tampered} ({why})"
            elif child.stalled:
                cause, why = "stalled", f"{child.stalled}; killed by the agent"
            now = time.monotonic()
            self._recent = [t for t in self._recent if now - t < 60.0] + [now]
            delay = RESTART_BACKOFF_S[min(len(self._recent) - 1, len(RESTART_BACKOFF_S) - 1)]
            self.restarts += 1
            self._redo_pending += 1     # flush and close wait for the batches sent again
        try:
            self._restart(child, why, lost, cause, delay, redo)
        finally:
            with self._lock:
                self._redo_pending -= 1

    def _restart(self, child: _Child, why: str, lost: int, cause: str, delay: float,
                 redo: list[Sequence[Event]]) -> None:
        """Report the death, start the next child, send it the batches the dead one had
        not answered (once)."""
        log.error("event writer process %d %s; %d events not confirmed for the second time "
                  "(lost), %d batches sent again; restarting", child.popen.pid, why, lost,
                  len(redo))
        self._on_died(why, lost, cause, child.popen.pid)
        if self._closing:
            return
        if delay:
            time.sleep(delay)
        with self._lock:
            if self._closing or self._child is not child:
                new = None
            else:
                try:
                    new = self._spawn()
                except OSError as exc:
                    log.error("event writer process cannot restart: %s", exc)
                    self._child = None
                    new = None
                    self._on_died(f"cannot restart: {exc}", 0, "died", child.popen.pid)
        unsent = 0
        for batch in redo:
            with self._send_lock:
                if new is None or not self._write_to(new, batch, retried=True):
                    unsent += len(batch)
        if unsent:
            with self._lock:
                self.lost += unsent
            self._on_result("failed", unsent, "not confirmed by a writer process that died, "
                            "and no new one to send them to")

    def check(self, now: float | None = None) -> None:
        """From the loop's tick: no child at all after a failed restart (start one), or a
        child that has work and has answered nothing for ``stall_s`` (stopped, hung):
        killed; the reader then reports it (cause ``stalled``) and starts another."""
        now = time.monotonic() if now is None else now
        with self._lock:
            child = self._child
            if self._closing:
                return
            if child is None:
                try:
                    self._spawn()
                except OSError as exc:
                    log.error("event writer process cannot restart: %s", exc)
                return
            busy = child.writing or child.sent > child.answered
            idle_s = now - child.progress_at
            if not busy or idle_s <= self.stall_s or child.stalled or child.tampered:
                return
            child.stalled = (f"answered nothing for {idle_s:.0f}s with "
                             f"{max(child.sent - child.answered, 0)} events outstanding"
                             + (" and the feeder blocked on its full pipe"
                                if child.writing else "")
                             + f" ({self._state(child.popen.pid)})")
        log.error("event writer process %d %s: killing it", child.popen.pid, child.stalled)
        self._kill_now(child)

    @staticmethod
    def _state(pid: int) -> str:
        """The process state letter from /proc (T: stopped), for the report."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            return f"state {stat.rpartition(')')[2].split()[0]}"
        except (OSError, IndexError):
            return "state unknown"

    @staticmethod
    def _kill_now(child: _Child) -> None:
        """SIGKILL (works on a stopped process too); the reader reaps it and reports."""
        try:
            os.kill(child.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- the loop's side

    def offer(self, batch: Sequence[Event], flagged: Sequence[Event] = (),
              pinned: Sequence[Event] = ()) -> bool:
        """Queue ``batch``; False (counted in ``shed``) when the queue is full.
        ``flagged``: its events that raised a finding (rows of their own, exactly as seen);
        ``pinned``: those of them whose finding was high or critical (never evicted by
        :meth:`keep`)."""
        return self._feeder.offer(Batch(batch, [id(ev) for ev in flagged],
                                        [id(ev) for ev in pinned]))

    def keep(self, events: Sequence[Event], finding_class: str = "") -> tuple[int, int]:
        """Queue ``events`` of a batch just shed whatever the queue holds (those that
        raised a high or critical finding of ``finding_class``, its rule), out of the shed
        count: the queue's reserve first, then room is made by evicting the queue's rows
        not pinned (benign, low/medium findings), newest first, counted in ``shed`` and
        ``evicted_by`` with a sample of what was lost (:meth:`take_evictions`).  All
        classes together evict at most ``evict_per_s`` rows a second, one (class,
        executable) at most ``evict_per_actor_s`` of them (a flood of findings of one rule,
        or of several, does not empty the queue; s16-fixlog): rows beyond are not kept
        (``kept_shed``, ``not_kept_by``), nor those the queue has no room for when nothing
        is left to evict.  (events queued, queued rows evicted for them)."""
        now = time.monotonic()
        by_exe: dict[str, list[Event]] = {}
        for ev in events:
            by_exe.setdefault(ev.proc.exe, []).append(ev)
        kept = evicted = 0
        with self._evict_lock:
            g = self._global_bucket
            if g is None:
                g = self._global_bucket = _Bucket(self.evict_per_s, now)
            g.tokens = min(self.evict_per_s, g.tokens + (now - g.at) * self.evict_per_s)
            g.at = now
            gone: list[Event] = []
            for exe, evs in by_exe.items():
                b = self._actor_bucket(finding_class, exe, now)
                ids = [id(ev) for ev in evs]
                kept_n, ev_n = self._feeder.keep(Batch(evs, ids, ids),
                                                 max_evict=int(min(g.tokens, b.tokens)),
                                                 evicted=gone)
                b.tokens -= ev_n
                g.tokens -= ev_n
                kept += kept_n
                evicted += ev_n
            if evicted:
                self.evicted_by[finding_class] = self.evicted_by.get(finding_class, 0) + evicted
                lost = self._lost
                for ev in gone:
                    p = ev.proc
                    k = (p.pid, p.comm, p.exe, ev.type)
                    if k in lost or len(lost) < LOST_KINDS:
                        lost[k] += 1
                    else:
                        self._lost_more += 1
            if kept < len(events):
                self.not_kept_by[finding_class] = \
                    self.not_kept_by.get(finding_class, 0) + len(events) - kept
        return kept, evicted

    def _actor_bucket(self, finding_class: str, exe: str, now: float) -> _Bucket:
        """The refilled budget of (``finding_class``, ``exe``) (under ``_evict_lock``).
        Bounded: past ``ACTOR_BUCKETS`` the full ones are dropped, then all (a new one
        starts full, but every one draws on the global budget too)."""
        rate = self.evict_per_actor_s
        key = (finding_class, exe)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= ACTOR_BUCKETS:
                full = [k for k, v in self._buckets.items()
                        if v.tokens + (now - v.at) * rate >= rate]
                for k in full:
                    del self._buckets[k]
                if len(self._buckets) >= ACTOR_BUCKETS:
                    self._buckets.clear()
            b = self._buckets[key] = _Bucket(rate, now)
        b.tokens = min(rate, b.tokens + (now - b.at) * rate)
        b.at = now
        return b

    def take_evictions(self) -> tuple[dict[str, int], list[LostKind], int]:
        """What :meth:`keep` evicted since the last call: (rows by finding class, the rows
        lost by actor and type, most first, rows beyond those kinds); reset."""
        with self._evict_lock:
            by, self.evicted_by = self.evicted_by, {}
            lost = [LostKind(pid=k[0], comm=k[1], exe=k[2], type=k[3], rows=n)
                    for k, n in self._lost.most_common()]
            more, self._lost_more = self._lost_more, 0
            self._lost = collections.Counter()
        return by, lost, more

    @property
    def evicted(self) -> int:
        """Queued rows evicted by :meth:`keep` in all (also counted in ``shed``)."""
        return self._feeder.evicted

    @property
    def kept_shed(self) -> int:
        """Rows of events that raised a finding that could not be queued (see :meth:`keep`)."""
        return self._feeder.kept_shed

    # -- the feeder thread

    def _write_to(self, child: _Child, batch: Sequence[Event], *, retried: bool) -> bool:
        """One frame of ``batch`` to ``child`` (under ``_send_lock``); False: it is gone
        (and the batch is not in its in-flight list: the caller sends it elsewhere).

        The batch is in flight *before* its frame is written: a child may answer before
        ``write`` returns, and the answer must find its entry (an entry appended after
        its answer was never taken off, and every later answer then took off the wrong
        one: a batch stored twice after a restart, another not sent again)."""
        stdin = child.popen.stdin
        assert stdin is not None
        entry = (batch, retried)
        with self._lock:
            data = frame(child.key, child.seq + 1, batch, getattr(batch, "apart", ()))
            if child.sent <= child.answered:
                child.progress_at = time.monotonic()   # its work starts now
            child.seq += 1
            child.sent += len(batch)
            child.inflight.append(entry)
        child.writing = True
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            with self._lock:
                if child.collected:
                    return True     # the reader took it with the child's in-flight batches
                try:
                    child.inflight.remove(entry)
                except ValueError:
                    return True     # answered after all
                child.sent -= len(batch)
            return False
        finally:
            child.writing = False
        return True

    def _send(self, batch: Sequence[Event]) -> None:
        for _ in range(2):
            child = self._child
            if child is None:
                time.sleep(0.1)
                continue
            with self._send_lock:
                ok = self._write_to(child, batch, retried=False)
            if ok:
                return
            # the child is gone: the reader reports it and restarts one; wait for it
            deadline = time.monotonic() + 10.0
            while self._child is child and time.monotonic() < deadline and not self._closing:
                time.sleep(0.01)
        raise OSError("no event writer process to take the batch")

    def _send_failed(self, batch: Sequence[Event], exc: Exception) -> None:
        with self._lock:
            self.lost += len(batch)
        self._on_result("failed", len(batch), f"not sent to the writer process: {exc}")

    def flush(self, timeout: float) -> bool:
        """Every queued batch sent and answered (tests, the stop)."""
        deadline = time.monotonic() + timeout
        if not self._feeder.flush(timeout):
            return False
        while time.monotonic() < deadline:
            c = self._child
            if not self._redo_pending and (c is None or c.answered >= c.sent):
                return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 30.0) -> int:
        """Send what is queued (up to ``timeout``), let the child finish and exit; the
        number of events never sent (those sent but not confirmed go to ``on_died``)."""
        deadline = time.monotonic() + timeout
        self._feeder.close(timeout)
        left = self._feeder.queued
        while self._redo_pending and time.monotonic() < deadline:
            time.sleep(0.005)       # a restart still sending a dead child's batches
        with self._lock:
            self._closing = True
            child = self._child
        if child is not None:
            stdin = child.popen.stdin
            try:
                if stdin is not None:
                    stdin.close()
            except OSError:
                pass
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(child)
            # the reader thread sees EOF and reports what was not confirmed
            if child.reader is not None:
                child.reader.join(max(0.1, deadline - time.monotonic()))
        return left

    @staticmethod
    def _kill(child: _Child) -> None:
        if child.popen.poll() is None:
            child.popen.kill()
        child.popen.wait()


__all__ = ["EventStoreProcess", "child_main", "main", "pack", "unpack"]


if __name__ == "__main__":
    raise SystemExit(main())
