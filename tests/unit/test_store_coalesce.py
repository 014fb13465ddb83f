"""Issue 16.3 (s15): the store keeps every fact of a flood.

* exact repeats (same class, actor, operation, object, result; within
  ``REPEAT_WINDOW_S``) are one row with a count and first/last time; an attack event
  inside the flood (another file, another actor, a credentials read, a flagged event)
  keeps a row of its own;
* the rows the writer makes without event objects are byte for byte the JSON of
  :func:`bastion.events.to_json` (every recorded fixture event);
* the grouped packing and the one-at-a-time packing give the same rows;
* queries find a coalesced row by any time in its span and show its count.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bastion.errors import ReplayError
from bastion.events import Event, ExecEvent, FileEvent, NetEvent, Proc, to_json
from bastion.sensors.replay import read_all
from bastion.store import Store
from bastion.store.db import _ENCODER, REPEAT_WINDOW_S, _text
from bastion.store.eventproc import RowMaker, _pack_each, _pack_grouped, pack, unpack

pytestmark = pytest.mark.unit

T0 = 1_767_225_600 * 1_000_000_000
FLOOD = Proc(4242, 4242, 1, 1000, 1000, 1000, 1, "flood", exe="/usr/bin/flood")
EVIL = Proc(6666, 6666, 1, 0, 0, 0, 1, "evil", exe="/tmp/evil")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "behavior"


def _chmod(i: int, proc: Proc = FLOOD, path: str = "/tmp/f", mode: int = 0o644) -> FileEvent:
    return FileEvent(T0 + i * 1000, proc, op="chmod", path=path, mode=mode, dev=2049, ino=77)


def _facts(payload: bytes) -> list[tuple[Event, int, int]]:
    return [(p.event, p.n, p.last_ns) for p in unpack(payload)]


def test_a_flood_of_exact_repeats_is_one_row_with_its_count_and_times() -> None:
    evs = [_chmod(i) for i in range(5000)]
    facts = _facts(pack(evs))
    assert facts == [(evs[0], 5000, evs[-1].time_ns)]


@pytest.mark.parametrize("attack", [
    pytest.param(_chmod(2500, path="/etc/shadow"), id="another-file"),
    pytest.param(_chmod(2500, mode=0o4755), id="another-mode"),
    pytest.param(_chmod(2500, proc=EVIL), id="another-actor"),
    pytest.param(FileEvent(T0 + 2500 * 1000, FLOOD, op="open", path="/etc/shadow",
                           sensitive="credentials"), id="shadow-read"),
    pytest.param(FileEvent(T0 + 2500 * 1000, FLOOD, True, op="chmod", path="/tmp/f",
                           mode=0o644, dev=2049, ino=77), id="truncated"),
])
def test_an_attack_event_inside_a_flood_keeps_a_row_of_its_own(attack: Event) -> None:
    """Attack: hide one act among 5,000 repeats of another.  It must come out as its own
    row, exactly as seen, between the repeats before and after it."""
    evs: list[Event] = [_chmod(i) for i in range(5000)]
    evs.insert(2500, attack)
    for packer in (pack, lambda e: _pack_each(e, ())):
        facts = _facts(packer(evs))
        assert (attack, 1, attack.time_ns) in facts
        assert sum(n for _, n, _ in facts) == len(evs)
        assert len(facts) == 2


def test_an_event_that_raised_a_finding_is_never_coalesced() -> None:
    """An exact repeat that raised a finding (a rule counting repeats fires on the 100th)
    keeps its own row: the row the alert points at is there, exactly as seen."""
    evs = [_chmod(i) for i in range(300)]
    flagged = evs[99]
    facts = _facts(pack(evs, {id(flagged)}))
    assert (flagged, 1, flagged.time_ns) in facts
    assert sum(n for _, n, _ in facts) == 300
    assert facts[0] == (evs[0], 299, evs[-1].time_ns)


def test_a_coalesced_row_never_spans_more_than_the_window() -> None:
    step = int(REPEAT_WINDOW_S * 1e9) // 4
    evs = [dataclasses.replace(_chmod(0), time_ns=T0 + i * step) for i in range(20)]
    facts = _facts(pack(evs))
    assert sum(n for _, n, _ in facts) == 20
    assert len(facts) > 1
    assert all(last - ev.time_ns <= REPEAT_WINDOW_S * 1e9 for ev, _, last in facts)


def _mixes() -> list[list[Event]]:
    other = Proc(7, 7, 1, 0, 0, 0, 2, "other", exe="/bin/other")
    inter: list[Event] = []
    for i in range(600):
        inter.append(_chmod(i))
        if i % 3 == 0:
            inter.append(NetEvent(T0 + i * 1000 + 1, other, op="connect", daddr="10.0.0.1",
                                  dport=443))
        if i % 50 == 0:
            inter.append(ExecEvent(T0 + i * 1000 + 2, other, argv=("sh", str(i)), filename="/bin/sh"))
    unordered = [_chmod(i) for i in range(100)]
    unordered[10], unordered[20] = unordered[20], unordered[10]
    # an equal actor in another object is the same actor
    twin = [_chmod(40 + i, proc=dataclasses.replace(FLOOD)) for i in range(50)]
    return [inter, [_chmod(i, path=f"/tmp/f{i}") for i in range(300)], unordered,
            [_chmod(i) for i in range(40)] + twin]


@pytest.mark.parametrize("mix", range(4))
def test_grouped_packing_gives_the_rows_one_at_a_time_packing_gives(mix: int) -> None:
    evs = _mixes()[mix]
    apart = {id(evs[5])}
    each = _facts(_pack_each(evs, apart))
    grouped = _pack_grouped(evs, apart)
    if mix == 2:
        assert grouped is None      # out of time order: the loop's job
        return
    assert grouped is not None
    assert _facts(grouped) == each
    if mix == 3:
        assert len(each) == 2      # the twin actor's repeats joined the first row
    assert sum(n for _, n, _ in each) == len(evs)


def test_rows_are_the_json_of_every_recorded_event() -> None:
    """The writer's rows, made without event objects, are byte for byte what json gives
    for to_json (every recorded fixture: all event classes the fixtures hold)."""
    evs: list[Event] = []
    for f in sorted(FIXTURES.glob("*.jsonl")):
        evs += read_all(f)
    evs.append(FileEvent(T0, Proc(1, 2, 3, 4, 5, 6, 7, "c\udcff\"\u2028", exe="/bin/\xe9"),
                         True, op="rename", path="/a\udcfe", path2="/b\n"))
    assert len({type(e) for e in evs}) >= 6
    maker = RowMaker()
    for i in range(0, len(evs), 500):
        chunk = evs[i:i + 500]
        apart = {id(e) for e in chunk}       # a row each, in order
        rows, n = maker.rows(pack(chunk, apart))
        assert n == len(chunk)
        for ev, row in zip(chunk, rows, strict=True):
            assert row[4] == _ENCODER.encode(to_json(ev))
            assert row[:4] == (ev.time_ns // 1000 / 1e6, _text(ev.type), ev.proc.pid,
                               _text(ev.proc.exe))
            assert row[5:] == (1, None)


def test_a_coalesced_row_is_found_by_any_time_in_its_span_and_shows_its_count(
        tmp_path: Path) -> None:
    evs = [dataclasses.replace(_chmod(0), time_ns=T0 + i * 100_000_000) for i in range(9)]
    rows, n = RowMaker().rows(pack(evs))
    assert n == 9 and len(rows) == 1
    with Store.open(tmp_path) as st:
        st.add_rows(rows)
        st.add_events([to_json(_chmod(10_000_000, path="/later"))])
        mid = T0 / 1e9 + 0.5
        got = st.events(since=mid)
        assert [r.data.get("count", 1) for r in got] == [9, 1]
        assert got[0].data["last_time"] == to_json(evs[-1])["time"]
        assert [r.data.get("count", 1) for r in st.events(since=T0 / 1e9 + 0.79)] == [9, 1]
        assert [r.data["path"] for r in st.events(since=T0 / 1e9 + 0.85)] == ["/later"]
        assert st.events(until=mid)[0].data["count"] == 9
        assert st.count_events() == 2
        assert st.count_event_facts() == 10
    # the JSON a consumer reads back is the event's, plus the count and the last time
    first = json.loads(rows[0][4])
    assert {k: v for k, v in first.items() if k not in ("count", "last_time")} == to_json(evs[0])


def test_a_stored_row_of_repeats_replays_as_that_many_events(tmp_path: Path) -> None:
    """``bastion events --json`` fed back to ``bastion run --replay``: a coalesced row is
    its count of events (first at its time, last at its last time), not one."""
    evs = [_chmod(i) for i in range(50)]
    rows, _ = RowMaker().rows(pack(evs))
    f = tmp_path / "stored.jsonl"
    f.write_text(rows[0][4] + "\n" + _ENCODER.encode(to_json(_chmod(60, path="/x"))) + "\n")
    back = read_all(f)
    assert len(back) == 51
    assert back[0] == evs[0] and back[48] == evs[0]
    assert back[49] == dataclasses.replace(evs[0], time_ns=evs[-1].time_ns)
    assert back[50].path == "/x"    # type: ignore[union-attr]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(rows[0][4].replace('"count":50', '"count":0') + "\n")
    with pytest.raises(ReplayError, match="count must be a positive integer"):
        read_all(bad)


def test_a_store_of_schema_4_keeps_its_rows_as_single_events(tmp_path: Path) -> None:
    """Migration 5 on a store written before coalescing: its rows stand for one event each
    and are found by time as before."""
    import sqlite3

    from bastion.store.schema import MIGRATIONS, migrate

    conn = sqlite3.connect(str(tmp_path / "bastion.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    migrate(conn, MIGRATIONS[:4])
    conn.execute("INSERT INTO events(ts, type, pid, exe, data) VALUES (?, 'chmod', 1, '/x', ?)",
                 (T0 / 1e9, _ENCODER.encode(to_json(_chmod(0)))))
    conn.close()
    with Store.open(tmp_path) as st:
        assert st.count_event_facts() == st.count_events() == 1
        (row,) = st.events(since=T0 / 1e9)
        assert row.data == to_json(_chmod(0))
        assert st.events(since=T0 / 1e9 + 0.001) == []


def test_keep_evicts_benign_rows_newest_first_and_counts_what_it_cannot_keep() -> None:
    """The writer's queue is full and stuck (its thread not started): rows that raised a
    high finding take the place of benign queued rows, newest first, exactly as many as
    they need (counted as shed); when
    nothing benign is left, a finding row that does not fit is counted (``kept_shed``,
    alerted high by the agent), never dropped silently."""
    from bastion.eventwriter import EventWriter
    from bastion.store.eventproc import Batch, _give_up, _merge

    w: EventWriter[Event] = EventWriter(lambda b: None, max_items=32, share=1.0,
                                        merge=_merge, merge_items=64, give_up=_give_up)
    assert w.reserve == 2
    flood = [_chmod(i, path=f"/f{i}") for i in range(48)]
    batches = [Batch(flood[8 * k:8 * k + 8], *([[id(flood[0])]] * 2 if k == 0 else []))
               for k in range(4)]
    for b in batches:
        assert w.offer(b)
    assert not w.offer(Batch(flood[32:40]))         # full: shed
    assert w.shed == 8
    attacks = [_chmod(100 + i, proc=EVIL) for i in range(40)]
    evicted = 0
    for a in attacks[:32]:
        ok, gone = w.keep(Batch([a], [id(a)], [id(a)]))
        assert ok
        evicted += gone
    q = [ev for b in w._q for ev in b]
    assert w.queued == len(q) <= 34
    assert [ev for ev in q if ev.proc is EVIL] == attacks[:32]     # every one, in order
    assert flood[0] in q                            # the flood's own flagged row stays
    benign_left = [ev for ev in q if ev.proc is FLOOD and ev is not flood[0]]
    assert evicted + len(benign_left) == 31
    assert evicted == 32 - w.reserve          # exactly the room needed, one each
    assert batches[3][0] not in q and batches[2][0] not in q   # the newest went first
    # (keep takes its rows out of shed: in the agent they were part of a shed offer)
    assert w.shed == 8 + evicted - 32 and w.kept_shed == 0
    # nothing benign left to give up: a finding row that does not fit is counted
    results = [w.keep(Batch([a], [id(a)], [id(a)])) for a in attacks[32:]]
    assert (0, 0) in results
    assert w.kept_shed == sum(1 for ok, _ in results if not ok) > 0
    assert all(ev.proc is EVIL or ev is flood[0] for b in w._q for ev in b)


def test_retention_counts_the_events_of_the_rows_it_deletes(tmp_path: Path) -> None:
    """Retention by count deletes rows; the events they stood for are what the agent's
    stored count goes down by (a coalesced row is many)."""
    from bastion.store.db import Retention

    rows, _ = RowMaker().rows(pack([_chmod(i) for i in range(40)]))
    with Store.open(tmp_path, retention=Retention(max_events=1)) as st:
        st.add_rows(rows)
        st.add_events([to_json(_chmod(10_000_000, path="/later"))])
        assert st.enforce_retention(now=T0 / 1e9) == 1       # one row
        assert st.event_facts_deleted == 40                  # of 40 events
        assert st.count_event_facts() == 1


def test_rows_stored_by_many_per_statement_keep_their_order_and_columns(tmp_path: Path) -> None:
    """add_rows inserts many rows per statement (issue 16.3, s16): every row, in the order
    given (row ids follow it: ``events --follow`` reads by row id), each column where
    it belongs, across full statements and the remainder; a row of the wrong width
    stores nothing of its batch."""
    import sqlite3

    from bastion.errors import StoreError
    from bastion.store.db import _ROWS_PER_INSERT

    n = 2 * _ROWS_PER_INSERT + 37
    evs = [_chmod(i, path=f"/tmp/o/{(7 * i) % n}", proc=EVIL if i % 5 == 0 else FLOOD)
           for i in range(n)]
    evs[5:9] = [_chmod(5)] * 4        # one coalesced row among them
    rows, facts = RowMaker().rows(pack(evs))
    assert facts == n and len(rows) == n - 3
    with Store.open(tmp_path) as st:
        st.add_rows(rows)
        got = st.events()
        assert [(r.data, r.data.get("count", 1)) for r in got] == \
            [(json.loads(r[4]), r[5]) for r in rows]
        assert st.count_event_facts() == n
        conn = sqlite3.connect(str(tmp_path / "bastion.db"))
        try:
            assert conn.execute("SELECT ts, type, pid, exe, data, n, ts_last FROM events "
                                "ORDER BY seq").fetchall() == rows
        finally:
            conn.close()
        with pytest.raises(StoreError, match=r"event rows of \[6, 7\] values"):
            st.add_rows(rows[:3] + [rows[3][:6]])
        assert st.count_events() == len(rows)


def test_give_up_takes_the_newest_rows_not_pinned_and_forgets_their_ids() -> None:
    """Eviction from one queued batch (s16): exactly ``need`` rows, the newest not pinned
    (a low/medium finding row goes like a benign one), the rest in order; the ids of the
    rows given up leave the batch's sets (a freed id may come back on another event)."""
    from bastion.store.eventproc import Batch, _cut, _give_up

    evs = [_chmod(i, path=f"/g{i}") for i in range(10)]
    medium, high = evs[8], evs[9]
    b = Batch(evs, [id(medium), id(high)], [id(high)])
    rest, gone = _give_up(b, 3)
    assert gone == evs[6:9]                      # the newest three not pinned, in order
    assert list(rest) == evs[:6] + [high]
    assert isinstance(rest, Batch)
    assert rest.pinned == {id(high)} and rest.apart == {id(high)}
    rest2, gone2 = _give_up(Batch([high], [id(high)], [id(high)]), 5)
    assert gone2 == [] and list(rest2) == [high]
    c = _cut(b, 9)
    assert list(c) == evs[:9] and c.pinned == frozenset() and c.apart == {id(medium)}


@pytest.mark.parametrize("bad", [["chmod"], {"t": 1}, 7, None])
def test_a_row_with_a_bad_type_is_a_clear_value_error(bad: object) -> None:
    """s16-fixdet (review 14): a row whose type is unhashable (a list) or not a str is a
    ValueError naming the row (the writer answers the batch ``malformed`` with it), never
    a TypeError from the type cache's look-up."""
    import marshal
    actors, rows = marshal.loads(pack([_chmod(0), _chmod(1, path="/tmp/g")]))
    assert len(rows) == 2
    r, first, n, last, _ = rows[1]
    payload = marshal.dumps((actors, [rows[0], (r, first, n, last, bad)]))
    maker = RowMaker()
    with pytest.raises(ValueError, match=r"row 1 of the frame: type .* not a str"):
        maker.rows(payload)
    # the maker is not left broken: the next good frame still converts
    assert maker.rows(pack([_chmod(2)]))[1] == 1
