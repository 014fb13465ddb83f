"""Variable-size file records (issue 16.2, ABI 2.0): the fixed part, then path, dir,
path2 and dir2 at their real length.

The attack: a record whose length fields lie (a corrupted ring, a replayed or forged
record).  A parser that trusted them would read the next string's bytes as this one's
(``/etc/shadow`` out of ``/tmp/x`` + ``/etc/shadow``), read past the record, or crash the
loop.  Every lie is refused with a DecodeError that names the record offset of the
field at fault, by the fast decoder and the ctypes reference alike, and the loader
counts the record and keeps the good ones around it."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import abi
from bastion.errors import DecodeError
from bastion.events import CUT_MARK, Decoder, FileEvent, decode, decode_reference
from bastion.kernel.loader import LoadedObject, ObjectSpec

pytestmark = pytest.mark.unit

LENS_AT = abi.FileEvent.path_len.offset      # 112: path_len, dir_len, path2_len, dir2_len


def _fixed(op: abi.FileOp = abi.FileOp.RENAME, flags: int = 0) -> abi.FileEvent:
    r = abi.FileEvent()
    r.hdr.type = abi.EventType.FILE
    r.hdr.flags = flags
    r.hdr.pid = r.hdr.tgid = 4242
    r.hdr.comm = b"mv"
    r.op = op
    r.owner_uid = r.owner_gid = 0xFFFFFFFF
    return r


def _good() -> bytes:
    return abi.pack_file_record(_fixed(), b"/tmp/x", b"", b"/etc/shadow")


def _set_u16(rec: bytes, at: int, v: int) -> bytes:
    b = bytearray(rec)
    b[at:at + 2] = v.to_bytes(2, "little")
    return bytes(b)


def _set_u32(rec: bytes, at: int, v: int) -> bytes:
    b = bytearray(rec)
    b[at:at + 4] = v.to_bytes(4, "little")
    return bytes(b)


def test_a_record_is_as_long_as_its_strings() -> None:
    rec = _good()
    assert ctypes.sizeof(abi.FileEvent) == 128
    assert len(rec) == 128 + len("/tmp/x") + len("/etc/shadow")     # 145, was 1,128 (137 before ABI 3.0)
    ev = decode(rec, 0)
    assert isinstance(ev, FileEvent) and (ev.path, ev.path2) == ("/tmp/x", "/etc/shadow")


# (the lie, what the error must say)
LIES = [
    # path_len says 17: path would swallow path2 ("/tmp/x/etc/shadow") and path2 run past the end
    (lambda r: _set_u16(r, LENS_AT, 17), "path2_len at record offset 116 says 11 bytes at offset 145, past the record's end"),
    (lambda r: _set_u16(r, LENS_AT, 300), "path_len at record offset 112 is 0x012c: more than 255 bytes"),
    (lambda r: _set_u16(r, LENS_AT + 2, 0x1000 | 0), "dir_len at record offset 114 is 0x1000"),
    (lambda r: _set_u16(r, LENS_AT + 6, 4), "dir2_len at record offset 118 says 4 bytes at offset 145, past"),
    (lambda r: _set_u32(r, 4, 1128), "size at record offset 4 says 1128 bytes, its lengths 145, the ring handed over 145"),
    (lambda r: r + b"\0" * 8, "size at record offset 4 says 145 bytes, its lengths 145, the ring handed over 153"),
    (lambda r: r[:-1], "path2_len at record offset 116 says 11 bytes at offset 134, past the record's end \\(144 bytes\\)"),
    (lambda r: r[:134] + b"/etc\0shadow", "path2_len at record offset 116 says 11 bytes, but a NUL is at record offset 138"),
    (lambda r: r[:100], "file record of 100 bytes, expected 128"),
]


@pytest.mark.parametrize("lie,msg", LIES, ids=range(len(LIES)))
def test_a_length_that_lies_is_refused_naming_the_record_offset(lie, msg) -> None:  # type: ignore[no-untyped-def]
    rec = lie(_good())
    for dec in (decode, decode_reference, Decoder()):
        with pytest.raises(DecodeError, match=msg):
            dec(rec, 0)


def test_lengths_that_sum_right_but_split_wrong_cannot_make_one_string_of_two() -> None:
    """path_len + path2_len kept, the split moved: the strings come out different, but
    never beyond the record, and each is exactly the bytes its length names."""
    rec = _set_u16(_set_u16(_good(), LENS_AT, 2), LENS_AT + 4, 15)
    ev = decode(rec, 0)
    assert isinstance(ev, FileEvent)
    assert (ev.path, ev.path2) == ("/t", "mp/x/etc/shadow")
    assert ev == decode_reference(rec, 0)


class _Ring:
    def __init__(self, recs: list[bytes]) -> None:
        self.recs = recs

    def pending_bytes(self) -> int:
        return sum(len(r) for r in self.recs)

    def drain(self, limit: int | None = None) -> list[bytes]:
        n = len(self.recs) if limit is None else limit
        out, self.recs = self.recs[:n], self.recs[n:]
        return out

    def close(self) -> None:
        pass


def test_the_loader_counts_a_lying_record_and_keeps_the_good_ones() -> None:
    lo = LoadedObject(ObjectSpec(path=Path("x.bpf.o"), drops=None))
    good = _good()
    lo.ring = _Ring([good, _set_u16(good, LENS_AT, 17), good])
    out = lo.drain(Decoder())
    assert [e.path for e in out if isinstance(e, FileEvent)] == ["/tmp/x", "/tmp/x"]
    assert (lo.decoded, lo.decode_errors) == (2, 1)


def test_a_cut_string_is_marked_where_it_was_cut() -> None:
    tail = abi.pack_file_record(_fixed(abi.FileOp.OPEN, abi.F_TRUNC_PATH), b"/etc/passwd",
                                cut=(abi.FILE_CUT_START, 0, 0, 0))
    head = abi.pack_file_record(_fixed(abi.FileOp.CHMOD, abi.F_TRUNC_PATH), b"/tmp/bbbb",
                                cut=(abi.FILE_CUT_END, 0, 0, 0))
    rel = abi.pack_file_record(_fixed(abi.FileOp.UNLINK, abi.F_TRUNC_PATH | abi.F_RELATIVE),
                               b"shadow", b"/etc", cut=(0, abi.FILE_CUT_START, 0, 0))
    got = [decode(r, 0) for r in (tail, head, rel)]
    assert [(e.path, e.truncated) for e in got if isinstance(e, FileEvent)] == [
        (f"{CUT_MARK}/etc/passwd", True), (f"/tmp/bbbb{CUT_MARK}", True),
        (f"{CUT_MARK}/etc/shadow", True)]


def test_pack_refuses_what_the_kernel_cannot_write() -> None:
    with pytest.raises(ValueError, match="path: 256 bytes"):
        abi.pack_file_record(_fixed(), b"x" * 256)
    with pytest.raises(ValueError, match="dir2: 3 bytes"):
        abi.pack_file_record(_fixed(), dir2=b"a\0b")


_seg = st.binary(max_size=abi.FILE_STR_MAX).map(lambda b: b.replace(b"\0", b"x"))


@given(path=_seg, dir_=_seg, path2=_seg, dir2=_seg)
def test_any_strings_round_trip_exactly(path: bytes, dir_: bytes, path2: bytes, dir2: bytes) -> None:
    rec = abi.pack_file_record(_fixed(), path, dir_, path2, dir2)
    assert len(rec) == 128 + len(path) + len(dir_) + len(path2) + len(dir2)
    assert abi.file_strings(rec) == ((path, dir_, path2, dir2), (0, 0, 0, 0))


def test_a_poll_decodes_at_most_a_batch_and_leaves_the_rest_for_the_next() -> None:
    """The ring holds ~5x more records than before: one poll does not turn them all
    into events at once (RSS, loop round), the next takes the rest."""
    lo = LoadedObject(ObjectSpec(path=Path("x.bpf.o"), drops=None))
    lo.ring = _Ring([_good()] * 5)
    assert len(lo.drain(Decoder(), 2)) == 2
    assert len(lo.drain(Decoder(), 2)) == 2
    assert len(lo.drain(Decoder())) == 1
    from bastion.sensors import bpf
    assert 0 < bpf.DRAIN_BATCH <= abi.RINGBUF_BYTES // 1144   # at most a 1.x ring's worth


def test_the_longest_string_is_a_mask() -> None:
    """The decoder's fast path and the BPF builder mask lengths with FILE_STR_MAX."""
    assert abi.FILE_STR_MAX == 255 and (abi.FILE_STR_MAX + 1) & abi.FILE_STR_MAX == 0
    assert abi.FILE_STR_MAX <= abi.FILE_LEN_MASK
