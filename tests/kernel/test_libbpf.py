"""The ctypes libbpf layer against the real kernel (root).

Uses build/bpf/selftest.bpf.o (and selftest_bad.bpf.o, which the verifier must
reject).  Nothing loaded here denies anything; every pin lives under a unique
/sys/fs/bpf/bastion-test-<hex>/ removed in teardown, pass or fail.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.errors import BpfObjectError, KernelError
from bastion.kernel import bpffs
from bastion.kernel.libbpf import (
    BpfObject,
    Link,
    Map,
    ProgramLoadError,
    num_possible_cpus,
    obj_get,
    obj_pin,
)
from bastion.kernel.ringbuf import RingBuffer
from support.stale import owned_name

ROOT = Path(__file__).resolve().parents[2]
SELFTEST = ROOT / "build" / "bpf" / "selftest.bpf.o"
SELFTEST_BAD = ROOT / "build" / "bpf" / "selftest_bad.bpf.o"

REC = struct.Struct("<QQIIII32x")  # struct st_record: magic seq kind tgid cpu _pad payload[4]
REC_SLOT = 64 + 8  # record + ring header, 8-aligned
MAGIC = 0x5453544C41425342
KIND_FLOOD, KIND_GETPPID = 1, 2
CNT_DROPPED, CNT_EMITTED = 0, 1
HASH_CONNECT4 = 0xC0
RING_BYTES = 64 * 1024
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")

BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_PROG_TYPE_SYSCALL = 31
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_RINGBUF = 27


@pytest.fixture(scope="module", autouse=True)
def _root_and_objects() -> None:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")
    for obj in (SELFTEST, SELFTEST_BAD):
        if not obj.exists():
            pytest.fail(f"{obj} missing: run `make bpf`")
    bpffs.ensure_bpffs()
    bpffs.ensure_tracefs()


@pytest.fixture
def pins() -> Iterator[Path]:
    root = Path("/sys/fs/bpf") / owned_name("bastion-test-")
    try:
        yield bpffs.pin_dir(root)
    finally:
        bpffs.remove_pins(root)
        assert not root.exists()


@pytest.fixture
def obj() -> Iterator[BpfObject]:
    o = BpfObject.open(SELFTEST, rodata={"cfg_tgid": os.getpid(), "cfg_value": 5})
    try:
        o.load()
        yield o
    finally:
        o.close()


@pytest.fixture
def ring(obj: BpfObject) -> Iterator[RingBuffer]:
    rb = RingBuffer(obj.map("st_ring"))
    try:
        yield rb
    finally:
        rb.close()


def flood(obj: BpfObject, count: int, seq_base: int = 0, discard_every: int = 0) -> int:
    return obj.program("st_flood").test_run(
        ctx_in=struct.pack("<IIQ", count, discard_every, seq_base)
    )


def counter(obj: BpfObject, slot: int) -> int:
    per_cpu = obj.map("st_counters").lookup_percpu(U32.pack(slot))
    assert per_cpu
    return sum(U64.unpack(v)[0] for v in per_cpu)


def decode(rec: bytes) -> tuple[int, int, int, int]:
    magic, seq, kind, tgid, _cpu, _pad = REC.unpack(rec)
    assert magic == MAGIC
    return seq, kind, tgid, U64.unpack_from(rec, 32)[0]


# ---- opening, errors, .rodata ------------------------------------------------------


def test_open_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bpf.o"
    with pytest.raises(BpfObjectError) as exc:
        BpfObject.open(missing)
    assert str(missing) in str(exc.value)
    assert exc.value.errno == errno.ENOENT


def test_open_non_bpf_file_names_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bpf.o"
    junk.write_bytes(b"#!/bin/sh\necho not an ELF\n")
    with pytest.raises(BpfObjectError) as exc:
        BpfObject.open(junk)
    assert str(junk) in str(exc.value)
    assert exc.value.errno != 0


def test_unknown_rodata_variable_is_named_with_the_file() -> None:
    with pytest.raises(BpfObjectError) as exc:
        BpfObject.open(SELFTEST, rodata={"cfg_nope": 1})
    assert "cfg_nope" in str(exc.value)
    assert str(SELFTEST) in str(exc.value)
    assert exc.value.errno == errno.ENOENT


def test_rodata_set_before_load_reaches_the_kernel() -> None:
    with BpfObject.open(SELFTEST) as o:
        assert o.read_rodata("cfg_value") == U32.pack(7)  # the compiled default
        o.set_rodata({"cfg_value": 1234, "cfg_tgid": 0xFFFF_FFFF_0000_0001})
        assert o.read_rodata("cfg_value") == U32.pack(1234)
        o.load()
        assert o.read_rodata("cfg_value") == U32.pack(1234)
        assert o.read_rodata("cfg_tgid") == U64.pack(0xFFFF_FFFF_0000_0001)
        # st_rawtp returns args[0] + cfg_value: the loaded program saw 1234.
        ret = o.program("st_rawtp").test_run(ctx_in=U64.pack(10) + U64.pack(0))
        assert ret == 1244
        with pytest.raises(BpfObjectError) as exc:
            o.set_rodata({"cfg_value": 1})
        assert exc.value.errno == errno.EBUSY


def test_rodata_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(BpfObjectError) as exc:
        BpfObject.open(SELFTEST, rodata={"cfg_value": 1 << 32})
    assert "cfg_value" in str(exc.value) and exc.value.errno == errno.ERANGE
    with pytest.raises(BpfObjectError) as exc2:
        BpfObject.open(SELFTEST, rodata={"cfg_value": b"12345"})
    assert exc2.value.errno == errno.E2BIG
    with BpfObject.open(SELFTEST, rodata={"cfg_value": -1, "cfg_tgid": b"\x01"}) as o:
        assert o.read_rodata("cfg_value") == b"\xff\xff\xff\xff"
        assert o.read_rodata("cfg_tgid") == U64.pack(1)


def test_programs_maps_and_metadata(obj: BpfObject) -> None:
    progs = {p.name: p for p in obj.programs()}
    assert set(progs) == {"st_flood", "st_getppid", "st_rawtp", "st_connect4"}
    assert progs["st_getppid"].section_name == "tracepoint/syscalls/sys_enter_getppid"
    assert progs["st_getppid"].prog_type == BPF_PROG_TYPE_TRACEPOINT
    assert progs["st_rawtp"].prog_type == BPF_PROG_TYPE_RAW_TRACEPOINT
    assert progs["st_flood"].prog_type == BPF_PROG_TYPE_SYSCALL
    assert progs["st_connect4"].prog_type == BPF_PROG_TYPE_CGROUP_SOCK_ADDR
    assert all(p.fd >= 0 for p in progs.values())
    assert obj.program("st_flood") is progs["st_flood"]

    names = {m.name for m in obj.maps()}
    assert {"st_ring", "st_counters", "st_hash"} <= names
    ring_map, counters, hmap = obj.map("st_ring"), obj.map("st_counters"), obj.map("st_hash")
    assert (ring_map.type, ring_map.max_entries) == (BPF_MAP_TYPE_RINGBUF, RING_BYTES)
    assert (counters.type, counters.key_size, counters.value_size, counters.max_entries) == (
        BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 2,
    )
    assert (hmap.type, hmap.key_size, hmap.value_size, hmap.max_entries) == (
        BPF_MAP_TYPE_HASH, 4, 8, 64,
    )
    with pytest.raises(BpfObjectError, match="no_such_prog"):
        obj.program("no_such_prog")
    with pytest.raises(BpfObjectError, match="no_such_map"):
        obj.map("no_such_map")


def test_set_autoload_false_leaves_program_unloaded() -> None:
    with BpfObject.open(SELFTEST) as o:
        o.set_autoload("st_connect4", False)
        assert o.program("st_connect4").autoload is False
        o.load()
        assert o.program("st_flood").fd >= 0
        with pytest.raises(KernelError) as exc:
            o.program("st_connect4").fd
        assert exc.value.errno == errno.ENOENT


def test_close_is_idempotent_and_invalidates_programs() -> None:
    o = BpfObject.open(SELFTEST)
    prog = o.program("st_flood")
    o.close()
    o.close()
    with pytest.raises(BpfObjectError, match="closed"):
        prog.fd
    with pytest.raises(BpfObjectError, match="closed"):
        o.programs()


def test_verifier_log_goes_to_logging_and_error_names_program(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="bastion.libbpf")
    with BpfObject.open(SELFTEST_BAD) as o:
        with pytest.raises(ProgramLoadError) as exc:
            o.load()
    err = exc.value
    assert err.program == "bad_null_deref"
    assert err.errno == errno.EACCES
    assert "bad_null_deref" in str(err) and str(SELFTEST_BAD) in str(err)
    assert "map_value_or_null" in str(err)  # the verifier's reason, in the message
    assert "invalid mem access" in err.verifier_log
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "bastion.libbpf")
    assert "BEGIN PROG LOAD LOG" in logged
    assert "invalid mem access 'map_value_or_null'" in logged
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "bastion.libbpf")


def test_libbpf_debug_messages_map_to_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bastion.libbpf")
    with BpfObject.open(SELFTEST) as o:
        o.load()
    debug = [r for r in caplog.records if r.name == "bastion.libbpf" and r.levelno == logging.DEBUG]
    assert debug, "libbpf's DEBUG output did not reach logging"
    assert any("selftest" in r.getMessage() for r in debug)
    assert not any(r.getMessage().startswith("libbpf: ") for r in debug)


# ---- test_run -------------------------------------------------------------------------


def test_test_run_returns_retval(obj: BpfObject) -> None:
    rawtp = obj.program("st_rawtp")
    assert rawtp.test_run(ctx_in=U64.pack(37) + U64.pack(0)) == 42
    with pytest.raises(KernelError) as exc:  # DESIGN: raw_tp needs repeat=0
        rawtp.test_run(ctx_in=U64.pack(1) + U64.pack(0), repeat=5)
    assert exc.value.errno == errno.EINVAL
    assert flood(obj, 3) == 3


# ---- maps -----------------------------------------------------------------------------


def test_hash_map_operations(obj: BpfObject) -> None:
    m = obj.map("st_hash")
    k1, k2 = U32.pack(1), U32.pack(2)
    assert m.lookup(k1) is None
    m.update(k1, U64.pack(11))
    m.update(k2, U64.pack(22), flags=1)  # BPF_NOEXIST
    assert m.lookup(k1) == U64.pack(11)
    with pytest.raises(KernelError) as exc:
        m.update(k1, U64.pack(99), flags=1)
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(KernelError) as exc2:
        m.update(U32.pack(3), U64.pack(3), flags=2)  # BPF_EXIST on absent key
    assert exc2.value.errno == errno.ENOENT
    assert sorted(m.keys()) == sorted([k1, k2])
    assert m.delete(k1) is True
    assert m.delete(k1) is False
    assert list(m.keys()) == [k2]
    with pytest.raises(KernelError) as exc3:
        m.lookup(b"\x01")
    assert exc3.value.errno == errno.EINVAL
    with pytest.raises(KernelError):
        m.update(k1, b"short")


def test_percpu_lookup_and_update(obj: BpfObject) -> None:
    ncpu = num_possible_cpus()
    assert ncpu >= 1
    counters = obj.map("st_counters")
    assert flood(obj, 5) == 5
    per_cpu = counters.lookup_percpu(U32.pack(CNT_EMITTED))
    assert len(per_cpu) == ncpu
    assert all(len(v) == 8 for v in per_cpu)
    assert counter(obj, CNT_EMITTED) == 5
    assert counter(obj, CNT_DROPPED) == 0
    counters.update_percpu(U32.pack(CNT_DROPPED), [U64.pack(i + 1) for i in range(ncpu)])
    assert counter(obj, CNT_DROPPED) == ncpu * (ncpu + 1) // 2
    with pytest.raises(KernelError, match="lookup_percpu"):
        counters.lookup(U32.pack(0))
    assert counters.lookup_percpu(U32.pack(7)) == []  # out of range: absent


def test_map_pin_open_pinned_from_fd_and_unpin(obj: BpfObject, pins: Path) -> None:
    m = obj.map("st_hash")
    m.update(U32.pack(5), U64.pack(50))
    path = pins / "st_hash"
    m.pin(path)
    assert path.exists() and m.pin_path == path
    with Map.open_pinned(path) as pinned:
        assert (pinned.name, pinned.type, pinned.key_size, pinned.value_size) == (
            "st_hash", BPF_MAP_TYPE_HASH, 4, 8,
        )
        assert pinned.lookup(U32.pack(5)) == U64.pack(50)
        pinned.update(U32.pack(6), U64.pack(60))
        assert m.lookup(U32.pack(6)) == U64.pack(60)  # the same kernel map
    with pytest.raises(KernelError, match="closed"):
        pinned.lookup(U32.pack(5))
    with Map.from_fd(m.fd) as by_fd:
        assert by_fd.max_entries == 64 and by_fd.fd != m.fd
        assert by_fd.lookup(U32.pack(5)) == U64.pack(50)
    assert m.lookup(U32.pack(5)) == U64.pack(50)  # from_fd dup'ed; our fd still works
    m.unpin()
    assert not path.exists() and m.pin_path is None
    with pytest.raises(KernelError) as exc:
        Map.open_pinned(path)
    assert exc.value.errno == errno.ENOENT


def test_open_pinned_read_only_reads_and_cannot_write(obj: BpfObject, pins: Path) -> None:
    """A reader of a pinned map (the CLI's look at the enrolled identities) asks for a
    read-only fd: the lsm tamper hook refuses a write-capable fd of a protected map to
    an unenrolled administrator and allows a read-only one (s22)."""
    m = obj.map("st_hash")
    m.update(U32.pack(7), U64.pack(70))
    path = pins / "st_hash_ro"
    m.pin(path)
    with Map.open_pinned(path, read_only=True) as ro:
        assert ro.lookup(U32.pack(7)) == U64.pack(70)
        assert U32.pack(7) in list(ro.keys())
        with pytest.raises(KernelError) as exc:
            ro.update(U32.pack(8), U64.pack(80))
        assert exc.value.errno == errno.EPERM
        with pytest.raises(KernelError) as exc:
            ro.delete(U32.pack(7))
        assert exc.value.errno == errno.EPERM
    assert m.lookup(U32.pack(7)) == U64.pack(70) and m.lookup(U32.pack(8)) is None
    with pytest.raises(KernelError) as exc:
        Map.open_pinned(pins / "absent", read_only=True)
    assert exc.value.errno == errno.ENOENT and "read-only" in str(exc.value)


def test_obj_pin_and_obj_get(obj: BpfObject, pins: Path) -> None:
    path = pins / "counters"
    obj_pin(obj.map("st_counters").fd, path)
    fd = obj_get(path)
    try:
        with Map.from_fd(fd) as m:
            assert m.type == BPF_MAP_TYPE_PERCPU_ARRAY
    finally:
        os.close(fd)
    with pytest.raises(KernelError) as exc:
        obj_pin(obj.map("st_counters").fd, path)
    assert exc.value.errno == errno.EEXIST


def test_ringbuf_over_a_pinned_ring(obj: BpfObject, pins: Path) -> None:
    path = pins / "st_ring"
    obj.map("st_ring").pin(path)
    with Map.open_pinned(path) as ring_map, RingBuffer(ring_map) as rb:
        assert rb.size == RING_BYTES
        assert flood(obj, 4, seq_base=40) == 4
        assert [decode(r)[0] for r in rb.drain()] == [40, 41, 42, 43]
    rb.close()  # idempotent


def test_pin_dir_refuses_outside_bpffs(tmp_path: Path) -> None:
    with pytest.raises(KernelError) as exc:
        bpffs.pin_dir(tmp_path / "pins")
    assert exc.value.errno == errno.EXDEV


def test_remove_pins_removes_nested_tree(obj: BpfObject, pins: Path) -> None:
    sub = bpffs.pin_dir(pins / "a" / "b")
    obj_pin(obj.map("st_hash").fd, sub / "m1")
    obj_pin(obj.map("st_counters").fd, pins / "m2")
    removed = bpffs.remove_pins(pins)
    assert set(removed) == {sub / "m1", pins / "m2", sub, pins / "a", pins}
    assert removed[-1] == pins and not pins.exists()


# ---- attach, links ------------------------------------------------------------------------


def _getppid_events(ring: RingBuffer) -> list[tuple[int, int, int, int]]:
    ring.wait(200)
    return [decode(r) for r in ring.drain()]


def test_tracepoint_attach_sees_only_this_process(obj: BpfObject, ring: RingBuffer) -> None:
    with obj.program("st_getppid").attach() as link:
        assert link.fd >= 0
        for _ in range(3):
            os.getppid()
        events = _getppid_events(ring)
    assert len(events) == 3
    assert all(kind == KIND_GETPPID and tgid == os.getpid() for _, kind, tgid, _ in events)
    os.getppid()
    assert ring.wait(50) is False  # detached: nothing more
    assert ring.drain() == []


def test_link_pin_survives_destroy_until_unpinned(
    obj: BpfObject, ring: RingBuffer, pins: Path
) -> None:
    link = obj.program("st_getppid").attach()
    path = pins / "getppid_link"
    link.pin(path)
    assert link.pin_path == path
    link.destroy()
    link.destroy()  # idempotent
    with pytest.raises(KernelError, match="destroyed"):
        link.fd
    os.getppid()
    assert len(_getppid_events(ring)) == 1  # the pin keeps the attachment
    reopened = Link.open_pinned(path)
    assert reopened.fd >= 0
    reopened.unpin()
    assert not path.exists()
    reopened.destroy()
    os.getppid()
    assert ring.wait(50) is False
    assert ring.drain() == []


def test_cgroup_attach_runs_for_processes_in_the_cgroup(obj: BpfObject) -> None:
    cg = bpffs.cgroup2_root() / owned_name("bastion-test-")
    cg.mkdir()
    try:
        fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with obj.program("st_connect4").attach_cgroup(fd) as link:
                child = (
                    "import os, socket\n"
                    f"open({str(cg / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
                    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    "s.connect(('127.0.0.1', 9))\n"
                )
                subprocess.run([sys.executable, "-c", child], check=True, timeout=30)
                hits = obj.map("st_hash").lookup(U32.pack(HASH_CONNECT4))
                assert hits is not None and U64.unpack(hits)[0] == 1
                link.detach()  # BPF_LINK_DETACH: the program no longer runs
                subprocess.run([sys.executable, "-c", child], check=True, timeout=30)
        finally:
            os.close(fd)
    finally:
        cg.rmdir()
    hits = obj.map("st_hash").lookup(U32.pack(HASH_CONNECT4))
    assert hits is not None and U64.unpack(hits)[0] == 1


def test_cgroup_attach_bad_fd_raises(obj: BpfObject, tmp_path: Path) -> None:
    f = tmp_path / "not-a-cgroup"
    f.write_text("")
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(KernelError) as exc:
            obj.program("st_connect4").attach_cgroup(fd)
    finally:
        os.close(fd)
    assert exc.value.errno != 0
    assert "st_connect4" in str(exc.value)


# ---- ring buffer --------------------------------------------------------------------------


def test_ringbuf_rejects_other_maps(obj: BpfObject) -> None:
    with pytest.raises(KernelError, match="not a ring buffer"):
        RingBuffer(obj.map("st_hash"))


def test_ringbuf_wait_times_out_then_sees_data(obj: BpfObject, ring: RingBuffer) -> None:
    t0 = time.monotonic()
    assert ring.wait(100) is False
    assert time.monotonic() - t0 >= 0.08
    assert flood(obj, 1) == 1
    assert ring.wait(0) is True
    assert ring.wait(1000) is True  # data still pending: no sleep
    assert len(ring.drain()) == 1
    assert ring.pending_bytes() == 0


def test_ringbuf_drain_limit_and_consume(obj: BpfObject, ring: RingBuffer) -> None:
    assert flood(obj, 10, seq_base=100) == 10
    first = ring.drain(limit=3)
    assert [decode(r)[0] for r in first] == [100, 101, 102]
    seen: list[int] = []
    assert ring.consume(lambda v: seen.append(decode(bytes(v))[0]), limit=4) == 4
    assert seen == [103, 104, 105, 106]

    def boom(view: memoryview) -> None:
        raise RuntimeError(f"record {decode(bytes(view))[0]}")

    with pytest.raises(RuntimeError, match="record 107"):
        ring.consume(boom)
    # The record whose callback raised was consumed; the rest remain.
    assert [decode(r)[0] for r in ring.drain()] == [108, 109]


def test_ringbuf_skips_discarded_records(obj: BpfObject, ring: RingBuffer) -> None:
    assert flood(obj, 12, discard_every=3) == 8  # i = 0, 3, 6, 9 discarded
    seqs = [decode(r)[0] for r in ring.drain()]
    assert seqs == [i for i in range(12) if i % 3]
    assert ring.pending_bytes() == 0


def test_ringbuf_wraparound_keeps_records_whole(obj: BpfObject, ring: RingBuffer) -> None:
    per_round = 700  # 700 * 72 B < 64 KiB; 64 KiB is not a multiple of 72
    straddled = 0
    seq = 0
    for _ in range(20):
        assert flood(obj, per_round, seq_base=seq) == per_round
        pos = ring.consumer_pos
        straddled += sum(
            1
            for i in range(per_round)
            if ((pos + i * REC_SLOT) & (RING_BYTES - 1)) + REC_SLOT > RING_BYTES
        )
        records = ring.drain()
        assert len(records) == per_round
        for rec in records:
            rseq, kind, tgid, payload0 = decode(rec)
            assert (rseq, kind, tgid, payload0) == (seq, KIND_FLOOD, os.getpid(), seq * 3)
            seq += 1
    assert ring.consumer_pos == 20 * per_round * REC_SLOT > 10 * RING_BYTES
    assert straddled >= 10  # records crossing the end of the data area were read whole


def test_ringbuf_flood_counts_failed_reserves(obj: BpfObject, ring: RingBuffer) -> None:
    asked = 5000
    emitted = flood(obj, asked)
    capacity = RING_BYTES // REC_SLOT
    assert 0 < emitted <= capacity < asked
    assert counter(obj, CNT_EMITTED) == emitted
    assert counter(obj, CNT_DROPPED) == asked - emitted
    records = ring.drain()
    assert [decode(r)[0] for r in records] == list(range(emitted))
    assert ring.wait(0) is False
    # Space is released: a second flood fits again.
    assert flood(obj, 100, seq_base=emitted) == 100
    assert len(ring.drain()) == 100


def test_ringbuf_drain_rate_on_a_large_ring() -> None:
    with BpfObject.open(SELFTEST) as o:
        o.map("st_ring").set_max_entries(16 << 20)
        o.load()
        with RingBuffer(o.map("st_ring")) as rb:
            per = (16 << 20) // REC_SLOT
            total, spent = 0, 0.0
            for i in range(4):
                assert flood(o, per, seq_base=i * per) == per
                t0 = time.perf_counter()
                records = rb.drain()
                spent += time.perf_counter() - t0
                assert len(records) == per
                assert decode(records[-1])[0] == (i + 1) * per - 1
                total += len(records)
    rate = total / spent
    print(f"ringbuf.drain: {total} records in {spent:.3f}s = {rate / 1e6:.2f} M records/s")
    assert rate > 200_000  # a floor against pathologies, not a benchmark


# ---- the one loader (bastion.kernel.loader) ------------------------------------------------

TP_EVENTS = ROOT / "build" / "bpf" / "tp_events.bpf.o"
HIPS_COMPAT = ROOT / "build" / "bpf" / "hips_compat.bpf.o"
NO_CGROUP = 1 << 62  # a cgroup id no task is in: these loads observe and enforce nothing


def _link_fds() -> set[int]:
    from bastion.guard.kernel import fd_object_id

    out = set()
    for name in os.listdir("/proc/self/fd"):
        kid = fd_object_id(int(name))
        if kid is not None and kid[0] == "link":
            out.add(kid[1])
    return out


def _quiet_sensor(pin_dir: Path | None) -> "ObjectSpec":
    from bastion.enforce.tiers import _events_skipped
    from bastion.kernel.loader import ObjectSpec

    # the programs of the other kernel's tracepoints (io_uring_submit_sqe is 6.1's, ...)
    # are skipped as the sensor skips them
    return ObjectSpec(path=TP_EVENTS, rodata={"cfg_event_mask": 0, "cfg_cgroup_id": NO_CGROUP},
                      max_entries={"events": 1 << 16}, optional=frozenset({"on_fchmodat2"}),
                      pin_dir=pin_dir, pin_maps=("events", "drops"), skip=_events_skipped())


def test_loader_pins_keeps_enforcement_on_close_adopts_then_unpins(pins: Path) -> None:
    from bastion.events import decode as decode_event
    from bastion.kernel.loader import LoadedObject

    spec = _quiet_sensor(pins / "set")
    lo = LoadedObject.load(spec)
    attached = lo.attached
    assert attached and not set(attached) & set(lo.missing)
    assert lo.ring is not None and lo.ring.size == 1 << 16
    assert spec.pinned_links() == sorted(attached)
    assert sorted(p.name for p in spec.maps_dir.iterdir()) == ["drops", "events"]
    lo.close()                                  # pinned: the links stay attached
    assert spec.pins_complete()
    again = LoadedObject.adopt(spec)
    try:
        assert again.adopted and again.attached == sorted(attached)
        assert again.drain(decode_event) == [] and again.drops() == 0
    finally:
        again.close(unpin=True)
    assert not (pins / "set").exists()


def test_loader_refuses_to_load_over_existing_pins(pins: Path) -> None:
    from bastion.kernel.loader import LoadedObject

    spec = _quiet_sensor(pins / "set")
    lo = LoadedObject.load(spec)
    try:
        before = _link_fds()
        with pytest.raises(KernelError, match="pins of a previous load") as info:
            LoadedObject.load(spec)
        assert info.value.errno == errno.EEXIST
        assert _link_fds() == before
    finally:
        lo.close(unpin=True)


def test_loader_failure_after_attach_detaches_everything(tmp_path: Path) -> None:
    """A pin directory off bpffs fails after every program is attached: all are detached."""
    from bastion.kernel.loader import LoadedObject

    before = _link_fds()
    with pytest.raises(KernelError, match="not on bpffs"):
        LoadedObject.load(_quiet_sensor(tmp_path / "pins"))
    assert _link_fds() == before
    assert not (tmp_path / "pins").exists()


def test_loader_cgroup_attach_failure_detaches_the_tracepoints(tmp_path: Path) -> None:
    """hips_compat: its tracepoints attach, then its cgroup programs fail on a non-cgroup."""
    from bastion.kernel.clock import deadline_ns
    from bastion.kernel.loader import LoadedObject, ObjectSpec

    spec = ObjectSpec(path=HIPS_COMPAT, rodata={"cfg_cgroup_id": NO_CGROUP,
                                                "cfg_deadline_ns": deadline_ns(30)},
                      cgroup=tmp_path)
    before = _link_fds()
    with pytest.raises(KernelError, match="cgroup attach"):
        LoadedObject.load(spec)
    assert _link_fds() == before
