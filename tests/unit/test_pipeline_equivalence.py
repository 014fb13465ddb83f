"""Issue 16.3: the fast event path gives what the plain one gives.

* the struct-based :class:`Decoder` (with its actor cache) equals the ctypes reference
  decoder on random records of every type, and refuses bad records with the same error;
* the engine's dispatch by declared event type and declared open interest yields the
  same findings as handing every event to every rule, on the recorded behaviour corpus
  and its opens' twins (so a rule never needs an event type or an open it did not declare);
* the Sigma verdict memo yields the same findings as evaluating every view afresh, on the
  recorded corpus and on near-duplicate events that differ in one field.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import pytest

from bastion import abi
from bastion.detect.behavior import behavior_rules
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.detect.sigma import load_sigma
from bastion.errors import DecodeError
from bastion.events import (_MAKERS, DECODERS, OPEN_WRITE_FLAGS, Decoder, Event, ExecEvent,
                            FileEvent, RepeatDecoder, all_fields, decode, decode_reference)
from bastion.proctable import ProcessTable
from bastion.sensors.replay import read_all

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "behavior"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "sigma" / "rules"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus/sigma/rules")

_VALID_OPS = {abi.EventType.FILE: list(abi.FileOp), abi.EventType.NET: list(abi.NetOp),
              abi.EventType.CRED: list(abi.CredOp), abi.EventType.MMAP: list(abi.MmapOp)}


def _random_record(rng: random.Random, etype: abi.EventType) -> bytes:
    """A record of ``etype`` with every byte random, then made plausible: its type, a
    valid op (mostly), NUL-terminated strings of random length (sometimes full)."""
    cls = abi.RECORDS[etype]
    rec = cls.from_buffer_copy(rng.randbytes(ctypes.sizeof(cls)))
    rec.hdr.type = int(etype)
    rec.hdr.size = ctypes.sizeof(cls)
    if etype in _VALID_OPS and rng.random() < 0.95:
        rec.op = int(rng.choice(_VALID_OPS[etype]))  # type: ignore[attr-defined]
    raw = bytearray(bytes(rec))

    def cut(owner: type[ctypes.Structure], base: int) -> None:
        for name, typ in owner._fields_:  # type: ignore[misc]
            off = base + getattr(owner, name).offset
            if isinstance(typ, type) and issubclass(typ, ctypes.Structure):
                cut(typ, off)
            elif isinstance(typ, type) and issubclass(typ, ctypes.Array) \
                    and getattr(typ, "_type_", None) is ctypes.c_char:
                n = ctypes.sizeof(typ)
                if n and rng.random() < 0.9:
                    at = rng.randrange(n)
                    raw[off + at] = 0
                    if rng.random() < 0.5:   # printable text, as paths mostly are
                        raw[off:off + at] = bytes(rng.choice(b"/abcxyz._-0189") for _ in range(at))
    cut(cls, 0)
    if etype is abi.EventType.FILE:   # variable-size (ABI 2.0): strings after the fixed part
        strs = [bytes(rng.choice(b"/abcxyz._-0189") for _ in range(rng.choice((0, rng.randrange(256)))))
                for _ in abi.FILE_STRINGS]
        cuts = tuple(rng.choice((0, 0, 0, abi.FILE_CUT_END, abi.FILE_CUT_START))
                     for _ in abi.FILE_STRINGS)
        out = bytearray(abi.pack_file_record(abi.FileEvent.from_buffer_copy(bytes(raw)), *strs,
                                             cut=cuts))  # type: ignore[arg-type]
        if rng.random() < 0.05:     # a length that lies
            out[abi.FileEvent.path_len.offset + rng.randrange(8)] ^= 1 << rng.randrange(8)
        return bytes(out)
    return bytes(raw)


def _outcome(fn: Any, rec: bytes) -> Any:
    try:
        return fn(rec, 123_456_789)
    except DecodeError as exc:
        return ("DecodeError", str(exc))


@pytest.mark.parametrize("etype", sorted(DECODERS, key=int), ids=lambda t: t.name.lower())
def test_the_fast_decoder_equals_the_ctypes_reference(etype: abi.EventType) -> None:
    rng = random.Random(int(etype) * 7919)
    dec = Decoder(proc_cache=8)      # small: the cache fills, is emptied, refills
    recs = [_random_record(rng, etype) for _ in range(300)]
    recs += [r for r in recs[:50]]   # repeats: actors come from the cache
    n_ok = 0
    for rec in recs:
        want = _outcome(decode_reference, rec)
        assert _outcome(dec, rec) == want
        assert _outcome(decode, rec) == want
        assert _outcome(dec, memoryview(rec)) == want
        n_ok += not isinstance(want, tuple)
    assert n_ok >= 250      # most records decode: the comparison is not of two errors


def _retimed(rec: bytes, ts: int) -> bytes:
    at = abi.EventHdr.ts_ns.offset
    return rec[:at] + ts.to_bytes(8, "little") + rec[at + 8:]


@pytest.mark.parametrize("etype", sorted(DECODERS, key=int), ids=lambda t: t.name.lower())
def test_the_repeat_decoder_equals_the_decoder(etype: abi.EventType) -> None:
    """A flood's repeated records (equal but for the time) decode once; every event is
    what the decoder gives, with its own record's time; one byte off is another record."""
    rng = random.Random(int(etype) * 104729)
    recs = [_random_record(rng, etype) for _ in range(60)]
    stream: list[bytes] = []
    for i in range(600):
        r = recs[rng.randrange(len(recs))]
        if rng.random() < 0.1:   # the same record but one byte past the header
            j = rng.randrange(ctypes.sizeof(abi.EventHdr), len(r))
            r = r[:j] + bytes([r[j] ^ 1]) + r[j + 1:]
        stream.append(_retimed(r, rng.randrange(1 << 62)))
    # a small cache (emptied and refilled); a window longer than the stream, so the
    # no-repeats pause (tested on its own) never depends on how a seed draws
    rep = RepeatDecoder(cache=32, window=1000)
    for rec in stream:
        assert _outcome(rep, rec) == _outcome(Decoder(), rec)
    assert rep.hits > 100


def test_the_repeat_decoder_stops_keying_a_stream_without_repeats() -> None:
    rng = random.Random(77)
    recs = [_random_record(rng, abi.EventType.FILE) for _ in range(400)]
    rep = RepeatDecoder(window=50)
    for rec in recs:                      # no repeats: keying stops after one window
        assert _outcome(rep, rec) == _outcome(Decoder(), rec)
    assert rep.hits == 0 and len(rep._seen) <= 50
    for i in range(500):                  # then a flood: keyed again after the pause
        rep(_retimed(recs[0], i), 0)
    assert rep.hits > 0


def test_bad_records_are_refused_alike() -> None:
    rng = random.Random(5)
    good = _random_record(rng, abi.EventType.FILE)
    bad = [b"", good[:10], good[:ctypes.sizeof(abi.EventHdr)], good[:-1],
           (999).to_bytes(2, "little") + good[2:],
           int(abi.EventType.FILE).to_bytes(2, "little") + good[2:72] + (77).to_bytes(4, "little")
           + good[76:]]
    dec = Decoder()
    for rec in bad:
        want = _outcome(decode_reference, rec)
        assert isinstance(want, tuple), rec[:16]
        assert _outcome(dec, rec) == want


RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "records" / "tp_events_chmod_flood_and_mix.hex"


def _recorded() -> list[bytes]:
    lines = RECORDED.read_text().splitlines()
    return [bytes.fromhex(ln) for ln in lines if ln and not ln.startswith("#")]


def _malformed(rng: random.Random, good: list[bytes]) -> list[bytes]:
    """Records a hostile or broken producer could hand over: cut short, an unknown type,
    a type without a decoder's size, a file record whose lengths lie."""
    out: list[bytes] = [b"", b"\x01\x02", (999).to_bytes(2, "little") + b"\0" * 200]
    for _ in range(40):
        r = rng.choice(good)
        kind = rng.randrange(4)
        if kind == 0:
            out.append(r[:rng.randrange(len(r))])
        elif kind == 1:
            out.append(rng.choice((0, 200, 4242)).to_bytes(2, "little") + r[2:])
        elif kind == 2 and r[0] == int(abi.EventType.FILE):
            at = abi.FileEvent.path_len.offset + rng.randrange(8)
            out.append(r[:at] + bytes([r[at] ^ (1 << rng.randrange(8))]) + r[at + 1:])
        else:
            out.append(r + b"\0")     # one byte more than the record says
    return out


def _batch_outcome(rep: RepeatDecoder, stream: list[bytes], batch: int) -> list[Any]:
    """decode_batch over ``stream`` in batches; events and errors in stream order."""
    out: list[Any] = []
    for i in range(0, len(stream), batch):
        chunk = stream[i:i + batch]
        errs: list[DecodeError] = []
        evs = rep.decode_batch(chunk, 123_456_789, errs.append)
        # rebuild the per-record order: a record either became the next event or an error
        ev_it, err_it = iter(evs), iter(errs)
        for rec in chunk:
            want = _outcome(Decoder(), rec)
            got = (("DecodeError", str(next(err_it))) if isinstance(want, tuple)
                   else next(ev_it))
            out.append(got)
        assert next(ev_it, None) is None and next(err_it, None) is None
    return out


@pytest.mark.parametrize("window", [1000, 16], ids=["keyed", "pausing"])
def test_the_batch_decoder_equals_the_decoder_on_recorded_fuzzed_and_malformed_records(
        window: int) -> None:
    """A drained batch decoded in one pass (issue 16.3) gives, record for record, what the
    decoder gives: the same events (type and every field, the time of its own record) and,
    for every malformed record, the same DecodeError (naming the offset where the decoder
    names one), handed to the error callback and left out of the events."""
    rng = random.Random(1603 + window)
    recorded = _recorded()
    assert len(recorded) > 100 and len({r[0] for r in recorded}) >= 5
    fuzzed = [_random_record(rng, t) for t in sorted(DECODERS, key=int) for _ in range(25)]
    good = recorded + fuzzed
    hot = rng.sample(good, 40)
    stream: list[bytes] = []
    for r in recorded:                               # the recording, in ring order
        stream.append(r)
    for _ in range(3000):                            # repeats, near-repeats, junk
        x = rng.random()
        r = rng.choice(hot if rng.random() < 0.7 else good)   # a flood's few records, mostly
        if x < 0.1:
            j = rng.randrange(ctypes.sizeof(abi.EventHdr), len(r))
            r = r[:j] + bytes([r[j] ^ 1]) + r[j + 1:]
        elif x < 0.15:
            r = rng.choice(_malformed(rng, good))
        stream.append(_retimed(r, rng.randrange(1 << 62)) if len(r) >= 16 else r)
    rep = RepeatDecoder(cache=64, window=window)
    got = _batch_outcome(rep, stream, 700)
    want = [_outcome(Decoder(), r) for r in stream]
    assert len(got) == len(want)
    for g, w, r in zip(got, want, stream):
        assert type(g) is type(w) and g == w, r[:24].hex()
        if not isinstance(w, tuple):
            assert all_fields(g) == all_fields(w)
    bad = [w for w in want if isinstance(w, tuple)]
    assert len(bad) > 50 and any("offset" in w[1] for w in bad)
    assert sum(not isinstance(w, tuple) for w in want) > 2500
    if window == 1000:
        assert rep.hits > 1000
    else:
        assert rep._skip or rep.hits < 1000     # the no-repeat pause was taken


def test_the_batch_decoder_and_the_per_record_call_share_one_cache() -> None:
    """A record first decoded by a call and repeated in a batch (and the other way) is
    still the decoder's event."""
    rec = [r for r in _recorded() if r[0] == int(abi.EventType.FILE)][0]
    rep = RepeatDecoder()
    first = rep(rec, 0)
    (again,) = rep.decode_batch([_retimed(rec, 77)], 0, pytest.fail)
    assert rep.hits == 1 and again == Decoder()(_retimed(rec, 77), 0) and again != first
    rep2 = RepeatDecoder()
    rep2.decode_batch([rec], 0, pytest.fail)
    assert rep2(_retimed(rec, 5), 0) == Decoder()(_retimed(rec, 5), 0) and rep2.hits == 1


def test_the_direct_constructor_builds_what_the_class_builds() -> None:
    """Every event class: the slots set directly equal the dataclass constructor's object,
    and the object stays frozen."""
    rng = random.Random(3)
    for etype in sorted(DECODERS, key=int):
        for _ in range(20):
            out = _outcome(Decoder(), _random_record(rng, etype))
            if isinstance(out, tuple):
                continue
            vals = all_fields(out)
            made = _MAKERS[type(out)](*vals)
            assert type(made) is type(out) and made == out and all_fields(made) == vals
            assert hash(made.proc) == hash(out.proc)
            with pytest.raises(dataclasses.FrozenInstanceError):
                made.time_ns = 1   # type: ignore[misc]
            break
        else:
            pytest.fail(f"no {etype.name} record decoded")


def test_one_actor_cache_entry_never_leaks_into_another_actor() -> None:
    """Two records differing only in their actor (uid, then comm) decode to their own actors."""
    rng = random.Random(9)
    base = abi.FileEvent.from_buffer_copy(_random_record(rng, abi.EventType.FILE))
    base.op = abi.FileOp.OPEN
    dec = Decoder()
    seen = []
    for uid, comm in ((0, b"a"), (1000, b"a"), (1000, b"b"), (0, b"a")):
        base.hdr.uid, base.hdr.comm = uid, comm
        rec = abi.pack_file_record(base, b"/etc/x")
        ev = dec(rec, 0)
        seen.append((ev.proc.uid, ev.proc.comm))
        assert ev == decode_reference(rec, 0)
    assert seen == [(0, "a"), (1000, "a"), (1000, "b"), (0, "a")]


def _corpus() -> list[Event]:
    out: list[Event] = []
    for f in sorted(FIXTURES.glob("*.jsonl")):
        out += read_all(f)
    assert len(out) > 500
    return out


def _open_twins(events: list[Event]) -> list[Event]:
    """Each recorded event, and after each open its twins: read-only, write (O_WRONLY), and
    read-only of an inode the sensor classed sensitive, so every rule's open interest is
    crossed from both sides (the corpus has few write and sensitive opens); after each
    exec, one run as argv[0] = its executable's path and one of a /tmp copy named argv[0]
    (the exec interests, by name, crossed alike)."""
    out: list[Event] = []
    for ev in events:
        out.append(ev)
        if isinstance(ev, ExecEvent) and ev.argv:   # names crossed: argv[0] and the exe's
            out += [dataclasses.replace(ev, argv=(ev.proc.exe, *ev.argv[1:])),
                    dataclasses.replace(ev, proc=dataclasses.replace(
                        ev.proc, exe="/tmp/" + os.path.basename(ev.argv[0])))]
        if isinstance(ev, FileEvent) and ev.op == "open":
            ro = ev.flags & ~OPEN_WRITE_FLAGS
            out += [dataclasses.replace(ev, flags=ro),
                    dataclasses.replace(ev, flags=ro | os.O_WRONLY),
                    dataclasses.replace(ev, flags=ro, sensitive="credentials")]
    return out


def _full(f: Finding) -> tuple[Any, ...]:
    return (f.rule, f.title, f.severity, f.action, f.pid, f.roots, repr(f.evidence), f.dry_run)


def test_open_interests_lose_no_finding_and_no_state() -> None:
    """Issue 16.3: rules declare the opens and execs they can act on (``read_opens``,
    ``read_interest``, ``write_interest``, ``exec_interest``) and the engine gives each open
    and exec only to those.
    On every fixture (its own trust and container probes) and the opens' twins, the
    engine finds exactly -- rule, title, severity, action, pid, roots, evidence, in order --
    what the same pack finds when every rule is given every event (so a rule never needs
    an event type it did not declare either): an open kept from a rule neither hid a
    finding nor changed the rule's state."""
    from support.trust import RecordedTrust
    from test_behavior_rules import recorded_probes

    declared = [r for r in behavior_rules() if not r.read_opens
                or getattr(r, "read_interest", None) or getattr(r, "write_interest", None)]
    assert {"behavior.provenance", "behavior.credential_access", "behavior.proc_mem_access",
            "behavior.account_staging", "behavior.persistence_cron", "behavior.sudoers_pam",
            "behavior.account_change", "behavior.security_config_tamper",
            "behavior.container_release_agent"} <= {r.name for r in declared}
    assert {"behavior.service_shell", "behavior.firewall_tamper", "behavior.secret_hunt",
            "behavior.kernel_module_load", "behavior.setuid_setgid", "behavior.ld_preload",
            "behavior.hidden_temp_artifact", "behavior.account_change", "behavior.timestomp",
            "behavior.exfil_upload", "behavior.reverse_shell", "behavior.reverse_shell_command",
            "behavior.masquerade", "behavior.log_clearing", "behavior.decoded_payload_shell"} <= {
        r.name for r in behavior_rules() if getattr(r, "exec_interest", None)}
    total = kept = 0
    for path in sorted(FIXTURES.glob("*.jsonl")):
        events = _open_twins(read_all(path))
        trust_a, trust_b = RecordedTrust(), RecordedTrust()
        engine = Engine(behavior_rules(trust=trust_a, cprobes=recorded_probes(path)))
        every = behavior_rules(trust=trust_b, cprobes=recorded_probes(path))
        procs_a, procs_b = ProcessTable(), ProcessTable()
        ctx_a, ctx_b = RuleContext(procs_a), RuleContext(procs_b)
        got: list[tuple[Any, ...]] = []
        want: list[tuple[Any, ...]] = []
        for ev in events:
            trust_a.learn(ev)
            trust_b.learn(ev)
            procs_a.update(ev)
            procs_b.update(ev)
            got += [_full(f) for f in engine.evaluate(ev, ctx_a)]
            for r in every:    # every event, of its declared types or not
                want += [_full(f) for f in r.on_event(ev, ctx_b)]
            if isinstance(ev, FileEvent) and ev.op == "open":   # by type and read_opens only
                total += len(engine._routes["open"] if ev.flags & OPEN_WRITE_FLAGS
                             else engine._read_opens)
                kept += len(engine._open_route(ev))
        assert not engine.errors, engine.disabled
        assert got == want, path.name
    assert kept < total * 0.9, (kept, total)   # the interests keep opens from rules


def test_the_exec_interests_take_the_kernel_thread_names_their_rule_takes() -> None:
    """s30 review: masquerade's kernel-thread test (``_KTHREAD``, whose ``$`` also takes a
    final newline) found ``[kworker/0:1]\n`` critical, and the exec interest first
    declared for it ("the last component ends in ]") kept that exec from the rule."""
    from bastion.events import Proc

    p = Proc(pid=4242, tid=4242, ppid=1, uid=1000, euid=1000, gid=1000, cgroup_id=1,
             comm="kw", start_ns=5, exe="/tmp/.x/kw")
    for argv0 in ("[kworker/0:1]", "[kworker/0:1]\n", "[kworker]"):
        ev = ExecEvent(1_767_225_600 * 10**9, p, filename=p.exe, cwd="/tmp", argv=(argv0,))
        found = [f for f in Engine(behavior_rules()).evaluate(ev, RuleContext(ProcessTable()))
                 if f.rule == "behavior.masquerade"]
        assert found and found[0].severity == "critical", argv0


def test_a_single_event_rule_s_direct_path_finds_what_the_generic_path_finds() -> None:
    """SingleEvent.on_event skips the evaluate layer (issue 16.3): on the recorded corpus
    every such rule finds, event for event, what BehaviorRule.on_event finds (a second
    pack, its own table), and a subclass overriding evaluate still goes through it."""
    from bastion.detect.behavior.base import BehaviorRule, Hit, SingleEvent

    events = _corpus()
    direct, generic = behavior_rules(), behavior_rules()
    singles = [i for i, r in enumerate(direct) if isinstance(r, SingleEvent)]
    assert len(singles) >= 10
    procs_a, procs_b = ProcessTable(), ProcessTable()
    ctx_a, ctx_b = RuleContext(procs_a), RuleContext(procs_b)
    got, want = [], []
    for ev in events:
        procs_a.update(ev)
        procs_b.update(ev)
        for i in singles:
            if ev.type in direct[i].event_types:
                got += [(f.rule, f.title, f.pid, f.action) for f in direct[i].on_event(ev, ctx_a)]
                want += [(f.rule, f.title, f.pid, f.action)
                         for f in BehaviorRule.on_event(generic[i], ev, ctx_b)]
    assert got == want and len(got) >= 20

    class Twice(SingleEvent):
        name = "test.twice"
        event_types = frozenset({"open"})

        def match(self, ev: Event, ctx: Any) -> Hit | None:
            return Hit("one", {})

        def evaluate(self, ev: Event, ctx: Any) -> list[Hit]:
            return [Hit("one", {}), Hit("two", {})]

    ev = next(e for e in events if e.type == "open")
    assert [f.title for f in Twice().on_event(ev, ctx_a)] == ["one", "two"]


def _findings(engine: Engine, events: list[Event]) -> list[tuple[Any, ...]]:
    procs = ProcessTable()
    ctx = RuleContext(procs)
    out = []
    for ev in events:
        procs.update(ev)
        out += [(f.rule, f.title, f.pid, repr(f.evidence)) for f in engine.evaluate(ev, ctx)]
    return out


def _near_duplicates(events: list[Event]) -> list[Event]:
    """Each exec and file event again, then with one field changed (the memo key must
    tell them apart), then the original once more (a hit after a miss)."""
    out: list[Event] = []
    for ev in events:
        out.append(ev)
        if isinstance(ev, ExecEvent) and ev.argv:
            out.append(ev)
            out.append(dataclasses.replace(ev, argv=ev.argv[:-1] + (ev.argv[-1] + "x",)))
            out.append(dataclasses.replace(ev, proc=dataclasses.replace(ev.proc, uid=ev.proc.uid ^ 1)))
            out.append(ev)
        elif isinstance(ev, FileEvent) and ev.path:
            out.append(dataclasses.replace(ev, path=ev.path.rsplit("/", 1)[0] + "/other"))
            out.append(dataclasses.replace(ev, proc=dataclasses.replace(ev.proc, exe="/tmp/x")))
            out.append(ev)
    return out


def test_the_sigma_memo_changes_no_finding() -> None:
    events = _near_duplicates(_corpus())
    memo = load_sigma([CORPUS])
    plain = load_sigma([CORPUS])
    plain.rules[0].evaluator.set_memo(0)
    got = _findings(Engine(memo.engine_rules()), events)
    want = _findings(Engine(plain.engine_rules()), events)
    assert got == want and len(want) >= 150
    st = memo.rules[0].evaluator.stats()
    assert sum(g["memo_hits"] for g in st.values()) > 0          # the memo was used
    assert sum(g["memo_hits"] for g in plain.rules[0].evaluator.stats().values()) == 0


def test_the_sigma_exec_lookup_tells_apart_what_the_views_read(monkeypatch: Any) -> None:
    """Issue 16.3: an exec's Sigma views are looked up by the event values they are built
    from (``_Group.run_direct``).  Each exec of the corpus again, then with the cwd, comm,
    euid, gid, filename (no exe) or pid changed, then after its parent re-exec'd with
    another command line (the parent's fields come from the process table), then as
    recorded: the same findings as evaluating every view afresh; and a repeated exec
    builds its views once."""
    import bastion.detect.sigma.rules as srules

    events: list[Event] = []
    for ev in _corpus():
        events.append(ev)
        if not isinstance(ev, ExecEvent):
            continue
        p = ev.proc
        events += [dataclasses.replace(ev, cwd=ev.cwd + "/x"),
                   dataclasses.replace(ev, proc=dataclasses.replace(p, comm=p.comm + "x")),
                   dataclasses.replace(ev, proc=dataclasses.replace(p, euid=p.euid ^ 1)),
                   dataclasses.replace(ev, proc=dataclasses.replace(p, gid=p.gid ^ 1)),
                   dataclasses.replace(ev, proc=dataclasses.replace(p, exe=""), filename="/tmp/f"),
                   dataclasses.replace(ev, proc=dataclasses.replace(p, pid=p.pid + 1))]
        if p.ppid > 1:
            pp = dataclasses.replace(p, pid=p.ppid, tid=p.ppid, ppid=1, exe="/usr/bin/sshd")
            events += [ExecEvent(ev.time_ns, pp, filename=pp.exe, argv=("sshd", "-D", "x")), ev]
        events.append(ev)
    memo = load_sigma([CORPUS])
    plain = load_sigma([CORPUS])
    plain.rules[0].evaluator.set_memo(0)
    got = _findings(Engine(memo.engine_rules()), events)
    want = _findings(Engine(plain.engine_rules()), events)
    assert got == want and len(want) >= 150
    ctx = RuleContext(ProcessTable())
    ev = next(e for e in _corpus() if isinstance(e, ExecEvent) and not memo.rules[0].evaluator
              .match(e, ctx))
    plain.rules[0].evaluator.set_memo(4096)     # memos on, and empty
    engine = Engine(plain.engine_rules())
    built: list[int] = []
    view = srules.process_view
    monkeypatch.setattr(srules, "process_view", lambda *a: built.append(1) or view(*a))
    for i in range(50):
        engine.evaluate(dataclasses.replace(ev, time_ns=ev.time_ns + i), ctx)
    assert len(built) == 1


def test_the_sigma_like_event_memo_changes_no_finding() -> None:
    """File and network events of one actor object, again with another time (a hit) and
    with one field changed (a miss): the same findings as evaluating each afresh."""
    events: list[Event] = []
    for ev in _corpus():
        if isinstance(ev, ExecEvent):
            events.append(ev)
            continue
        shared = dataclasses.replace(ev, proc=ev.proc)
        events += [shared, dataclasses.replace(shared, time_ns=shared.time_ns + 1)]
        if isinstance(ev, FileEvent):
            events.append(dataclasses.replace(shared, path=shared.path + ".x"))
            events.append(dataclasses.replace(shared, flags=shared.flags ^ 0o100))
            events.append(dataclasses.replace(shared, time_ns=shared.time_ns + 2))
            # s24: a file event's like-key is (actor, op, path, path2, the flags its views
            # read): each field of the key changed is a miss, the others a hit
            for change in ({"flags": shared.flags ^ 0o1}, {"flags": shared.flags ^ 0o2},
                           {"flags": shared.flags ^ 0o1000}, {"flags": shared.flags ^ 0o2000},
                           {"path2": shared.path2 + ".y"}, {"ino": shared.ino + 1},
                           {"ctime_ns": 5}, {"mode": 0o777}, {"created": True},
                           {"sensitive": "credentials"},
                           {"op": "unlink" if shared.op != "unlink" else "chmod"}):
                events.append(dataclasses.replace(shared, **change))  # type: ignore[arg-type]
    memo = load_sigma([CORPUS])
    plain = load_sigma([CORPUS])
    plain.rules[0].evaluator.set_memo(0)
    got = _findings(Engine(memo.engine_rules()), events)
    want = _findings(Engine(plain.engine_rules()), events)
    assert got == want and len(want) >= 50
    assert memo.rules[0].evaluator.like_hits > 100
    assert plain.rules[0].evaluator.like_hits == 0


def test_the_sigma_memo_is_bounded() -> None:
    res = load_sigma([CORPUS])
    ev = res.rules[0].evaluator
    ev.set_memo(16)
    base = next(e for e in _corpus() if isinstance(e, ExecEvent))
    procs = ProcessTable()
    ctx = RuleContext(procs)
    engine = Engine(res.engine_rules())
    for i in range(500):   # an attacker varying the command line: every view a miss
        engine.evaluate(dataclasses.replace(base, argv=(f"/tmp/x{i}", "-c", str(i))), ctx)
    groups = [*ev._groups.values(), *ev._audit.values()]
    assert all(len(g._memo) <= 16 for g in groups)
    assert any(len(g._memo) > 0 for g in groups)


def test_with_proc_equals_dataclasses_replace_for_every_event_class() -> None:
    from bastion.events import TYPES, with_proc
    from bastion.events import Proc as P

    other = P(pid=7, tid=8, ppid=1, uid=2, euid=3, gid=4, cgroup_id=5, comm="c", start_ns=6,
              exe="/x")
    for ev in _corpus():
        assert with_proc(ev, other) == dataclasses.replace(ev, proc=other)
    assert {type(e) for e in _corpus()} >= {TYPES["exec"], TYPES["open"], TYPES["fork"]}


def test_the_hand_written_copies_equal_dataclasses_replace() -> None:
    """proc_with_exe and ProcEntry.exited_at (the exec and exit paths' copies) build what
    ``dataclasses.replace`` builds, every field set to a value of its own (a field added
    to Proc or ProcEntry and not copied fails here)."""
    from bastion.containers import Container
    from bastion.events import proc_with_exe
    from bastion.events import Proc as P
    from bastion.proctable import ProcEntry

    vals: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(P)):
        vals[f.name] = f"v{i}" if f.type in ("str", str) else i + 11
    vals["container"] = Container(id="c" * 12, runtime="docker", name="n", image="i")
    p = P(**vals)
    assert proc_with_exe(p, "/new") == dataclasses.replace(p, exe="/new")
    ent = ProcEntry(**{f.name: ((f"v{i}",) if f.name == "cmdline" else
                                f"v{i}" if f.type in ("str", str) else i + 11)
                       for i, f in enumerate(dataclasses.fields(ProcEntry))})
    assert ent.exited_at(99) == dataclasses.replace(ent, exited_ns=99)


def test_cached_enrichment_follows_the_table() -> None:
    """The actor's exe comes from the table entry of the moment: a cached enrichment is
    never reused after an exec replaced the entry (same pid, same start)."""
    from bastion.events import Proc as P

    procs = ProcessTable()
    bare = P(pid=300, tid=300, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, comm="sh", start_ns=5)
    opened = FileEvent(1, bare, op="open", path="/etc/x", flags=1)
    procs.update(ExecEvent(0, dataclasses.replace(bare, exe="/usr/bin/sh"), filename="/usr/bin/sh"))
    first = [procs.enrich(opened).proc.exe for _ in range(3)]
    procs.update(ExecEvent(2, dataclasses.replace(bare, exe="/tmp/evil"), filename="/tmp/evil"))
    after = procs.enrich(opened)
    assert first == ["/usr/bin/sh"] * 3 and after.proc.exe == "/tmp/evil"
    assert after == dataclasses.replace(opened, proc=dataclasses.replace(bare, exe="/tmp/evil"))


def test_enrichment_keyed_by_actor_identity_never_gives_another_actor_s_exe() -> None:
    """The enrichment cache is keyed by the actor object's identity (issue 16.3): actors
    made and freed in turn (their ids reused by CPython), equal actors that are distinct
    objects, and a cache emptied every few events each get their own process's exe."""
    from bastion.events import Proc as P

    procs = ProcessTable()
    procs.enrich_cache = 3
    exes = {300: "/usr/bin/a", 301: "/usr/bin/b", 302: "/usr/bin/c"}
    for pid, exe in exes.items():
        procs.update(ExecEvent(0, P(pid=pid, tid=pid, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1,
                                    comm="x", start_ns=5, exe=exe), filename=exe))
    rng = random.Random(11)
    ids: set[int] = set()
    for i in range(3000):
        pid, tid, uid = rng.choice(list(exes)), rng.randrange(300, 310), rng.randrange(3)
        actor = P(pid=pid, tid=tid, ppid=1, uid=uid, euid=0, gid=0, cgroup_id=1, comm="x",
                  start_ns=5)   # a thread of the process, with its own credentials
        ids.add(id(actor))
        ev = procs.enrich(FileEvent(i, actor, op="open", path="/etc/x"), in_place=rng.random() < 0.5)
        assert ev.proc == dataclasses.replace(actor, exe=exes[pid])
        del actor, ev
    assert len(ids) < 1000      # ids were reused: the identity check was exercised


def test_store_rows_from_event_times_equal_rows_from_parsed_times(tmp_path: Path) -> None:
    """The writer hands the store the events' ns times instead of the RFC 3339 text to
    parse back: the stored rows are the same."""
    import sqlite3

    from bastion.events import to_json
    from bastion.store import Store

    rng = random.Random(3)
    evs = [dataclasses.replace(ev, time_ns=rng.randrange(0, 2**62)) for ev in _corpus()[:300]]
    rows = [to_json(ev) for ev in evs]
    for name, kw in (("a", {}), ("b", {"times_ns": [ev.time_ns for ev in evs]})):
        with Store.open(tmp_path / name) as s:
            s.add_events(rows, **kw)   # type: ignore[arg-type]
    dumped = []
    for name in ("a", "b"):
        db = next((tmp_path / name).glob("*.db"))
        with sqlite3.connect(db) as c:
            dumped.append(c.execute("SELECT ts, type, pid, exe, data FROM events ORDER BY seq").fetchall())
    assert dumped[0] == dumped[1] and len(dumped[0]) == 300
