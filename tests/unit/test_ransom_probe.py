"""behavior.ransomware's content probe against the evasions left open in s17 (issue 15,
s18-ransom): the probe read only the first 4 KiB of each sampled file, so ciphertext
after a plaintext head, base64/hex-encoded ciphertext and a 1:1 ransom note beside each
file each kept a real encryptor below "critical"; an undecodable name or a swapped
directory had it read another file than the one the tree wrote.  Real files in a temp
dir, judged by the live probe (``live_probes``) through this process's own root."""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from bastion.detect.behavior.rules import Ransomware, file_entropy, live_probes
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event, from_json
from bastion.proctable import ProcessTable

NS = 1_000_000_000
O_WRONLY, O_CREAT, O_TRUNC = 0o1, 0o100, 0o1000
N = 40
TEXT = (b"Invoice 2026-%04d: customer Jane Doe, 12 items, amount due 1,234.56 EUR, "
        b"payable within 30 days to the account named on the first page.\n")


def text(n: int, seed: int = 0) -> bytes:
    out = b"".join(TEXT.replace(b"%04d", b"%04d" % (seed * 1000 + i)) for i in range(n // 100 + 2))
    return out[:n]


class Tree:
    """One untrusted process (this test's own pid: its root is ours) writing files."""

    def __init__(self, real_clock: bool = False) -> None:
        self.real_clock = real_clock   # event times from the wall clock (file times compared)
        self.procs = ProcessTable()
        self.rule = Ransomware(probes=live_probes(), data_dirs=None)
        self.engine = Engine([self.rule])
        self.ctx = RuleContext(self.procs)
        self.t = 1_767_225_600 * NS
        self.pid = os.getpid()
        self.found: list[Finding] = []
        self._feed({"type": "exec", **self._proc(), "filename": "/usr/bin/python3.11",
                    "cwd": "/root", "argv": ["python3", "enc.py"], "exe_dev": 1,
                    "exe_ino": 4242, "exe_nlink": 1})

    def _proc(self) -> dict[str, Any]:
        return {"pid": self.pid, "tid": self.pid, "ppid": 1, "uid": 1000, "euid": 1000,
                "gid": 1000, "cgroup_id": 1, "comm": "python3", "start_ns": 1000,
                "exe": "/usr/bin/python3.11"}

    def _feed(self, obj: dict[str, Any]) -> None:
        import time as _t
        self.t = max(self.t + 1000, _t.time_ns()) if self.real_clock else self.t + NS // 100
        sec, ns = divmod(self.t, NS)
        obj["time"] = _t.strftime("%Y-%m-%dT%H:%M:%S", _t.gmtime(sec)) + f".{ns // 1000:06d}Z"
        ev: Event = from_json(obj)
        self.procs.update(ev)
        self.found += self.engine.evaluate(ev, self.ctx)

    def write(self, path: str | bytes, data: bytes, *, name: str | None = None,
              flags: int = O_WRONLY | O_TRUNC) -> None:
        """Rewrite ``path`` with ``data``; the event names it ``name`` (the sensor's
        decoding of the raw name) and carries its inode as the kernel reports it."""
        with open(path, "wb") as fh:
            fh.write(data)
        ino = os.stat(path).st_ino
        shown = name if name is not None else os.fsdecode(path)
        self._feed({"type": "open", **self._proc(), "path": shown, "path2": "", "flags": flags,
                    "mode": 0o644, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": ino})

    def loud(self) -> list[Finding]:
        return [f for f in self.found if f.severity in ("high", "critical")]

    def critical(self) -> list[Finding]:
        return [f for f in self.found if f.severity == "critical"]


def victims(d: Path, n: int = N, size: int = 64 << 10) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"report-{i:03d}.odt"
        p.write_bytes(text(size, i))
        out.append(p)
    return out


def after_header(plain: bytes) -> bytes:
    """LockBit/BlackCat-style: the first 4 KiB left as they were, the rest encrypted."""
    return plain[:4096] + os.urandom(len(plain) - 4096)


def every_nth_chunk(plain: bytes) -> bytes:
    """Intermittent: 16 KiB of each 64 KiB encrypted, starting past the first 4 KiB
    (a quarter of the file ciphertext, the head plaintext)."""
    buf = bytearray(plain)
    for off in range(4096, len(buf), 64 << 10):
        end = min(off + (16 << 10), len(buf))
        buf[off:end] = os.urandom(end - off)
    return bytes(buf)


def banner(plain: bytes) -> bytes:
    """A >= 4 KiB plaintext banner before the ciphertext."""
    return (b"YOUR FILES ARE ENCRYPTED. Read HOW-TO-DECRYPT.txt. " * 120)[:6000] + \
        os.urandom(len(plain))


def b64(plain: bytes) -> bytes:
    raw = base64.b64encode(os.urandom(len(plain)))
    return b"\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))


def hexed(plain: bytes) -> bytes:
    return os.urandom(len(plain) // 2).hex().encode()


ENCRYPTORS: dict[str, tuple[Callable[[bytes], bytes], int]] = {
    "after_header": (after_header, 64 << 10),
    "every_nth_chunk": (every_nth_chunk, 256 << 10),
    "banner": (banner, 32 << 10),
    "base64": (b64, 32 << 10),
    "hex": (hexed, 32 << 10),
}


@pytest.mark.parametrize("kind", list(ENCRYPTORS))
def test_evasive_encryption_in_place_is_critical(tmp_path: Path, kind: str) -> None:
    """Each encryptor rewrites 40 files in place (no rename, no extension: content is the
    only evidence).  Head-only probing: the head was plaintext (or ~6 bits/byte of
    base64, ~4 of hex), so the rule judged the content checked and not encrypted."""
    enc, size = ENCRYPTORS[kind]
    tree = Tree()
    for p in victims(tmp_path / "docs", size=size):
        tree.write(p, enc(p.read_bytes()))
    got = tree.critical()
    assert got and got[0].action == "kill-tree", [f.title for f in tree.found]
    assert got[0].evidence["entropy_high"] >= 5


def test_a_ransom_note_beside_each_file_does_not_dilute_the_sample(tmp_path: Path) -> None:
    """1:1 notes: NAME.README.txt (the same small plaintext) written after each encrypted
    file.  The newest 8 readable files were 4 notes and 4 ciphertexts: 4 of 8, below
    "most of 8".  Notes (the same small content repeated) are left out of the sample."""
    note = b"All your files are encrypted.  Send 0.5 BTC to bc1q... and mail the id.\n" * 12
    tree = Tree()
    for p in victims(tmp_path / "docs", size=16 << 10):
        tree.write(p, os.urandom(16 << 10))
        tree.write(f"{p}.README.txt", note, flags=O_WRONLY | O_CREAT | O_TRUNC)
    got = tree.critical()
    assert got, [(f.title, f.evidence) for f in tree.found]
    # the draw holds 3+ notes (left out) or at most 2 (counted: then 6+ of 8 are high)
    ev = got[0].evidence
    assert ev.get("notes", 0) >= 3 or ev["entropy_high"] >= 6, ev


def test_undecodable_names_cannot_point_the_probe_at_a_decoy(tmp_path: Path) -> None:
    """A name with invalid UTF-8 (b"...\\xff...") reaches the rule as the literal text
    "\\\\xff" (backslashreplace).  The probe opened that literal name: a plaintext decoy
    the tree put there was judged instead of the ciphertext."""
    d = tmp_path / "docs"
    d.mkdir()
    tree = Tree()
    for i in range(N):
        raw = os.fsencode(str(d)) + b"/doc\xff%03d.odt" % i
        shown = os.fsencode(str(d)).decode() + "/doc\\xff%03d.odt" % i
        Path(shown).write_bytes(text(16 << 10, i))          # the decoy, plaintext
        tree.write(raw, os.urandom(16 << 10), name=shown)   # the victim, encrypted
    got = tree.critical()
    assert got, [(f.title, f.evidence) for f in tree.found]


def test_a_swapped_directory_is_not_judged_as_plaintext(tmp_path: Path) -> None:
    """The tree encrypts docs/*, then moves docs away and puts a symlink to a plaintext
    copy in its place: the probe followed it and judged the copy (silent).  The files
    the records name are not there any more (another inode): unknown, not plaintext."""
    plain = tmp_path / "plain"
    files = victims(tmp_path / "docs", size=16 << 10)
    shutil.copytree(tmp_path / "docs", plain)
    tree = Tree()
    for p in files[:-1]:
        tree.write(p, os.urandom(16 << 10))
    os.rename(tmp_path / "docs", tmp_path / "gone")
    os.symlink(plain, tmp_path / "docs")
    tree.write(files[-1], text(16 << 10))   # the 40th write: the check runs now
    assert tree.found, "a mass rewrite whose files were swapped away went unreported"
    assert tree.found[0].evidence["entropy_high"] == 0
    assert tree.found[0].evidence["entropy_sampled"] < 5


@pytest.mark.parametrize("name", ["/tmp/a\x00b", "/tmp/\udcff\udcfe", "/tmp/x\\xzz\\x",
                                  "relative\\xff", ""])
def test_odd_names_never_raise(name: str) -> None:
    assert file_entropy(name) is None


# ---- the benign side: what the wider probe must not call encrypted ----------------------------

def _mail(i: int) -> bytes:
    from email.message import EmailMessage
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "a@example.org", "b@example.org", f"scan {i}"
    m["Message-ID"] = f"<{i}@example.org>"
    m.set_content("The scans you asked for.\n" * 20)
    m.add_attachment(os.urandom(24 << 10), maintype="image", subtype="jpeg",
                     filename=f"scan{i}.jpg")   # a JPEG is high-entropy: so is its base64
    return b"Received: from mx.example.org by mail.example.org\n" * 60 + m.as_bytes()


def _sqlite(path: Path, i: int) -> None:
    import sqlite3
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, note TEXT)")
    con.executemany("INSERT INTO t (who, note) VALUES (?, ?)",
                    [(f"user{i}-{k}", text(200, k).decode()) for k in range(200)])
    con.commit()
    con.close()


def _benign(d: Path) -> list[Path]:
    """Real files of the kinds whose head is plaintext but whose body a multi-window
    probe reads too: executables, byte code, mail with attachments, databases, tar."""
    import py_compile
    import tarfile
    d.mkdir()
    out: list[Path] = []
    for b in ("ls", "cp", "mv", "cat", "grep", "sed", "tar", "find", "bash", "env"):
        src = shutil.which(b)
        if src:
            out.append(Path(shutil.copy(os.path.realpath(src), d / b)))
    for mod in ("json/decoder", "email/message", "argparse", "typing", "inspect", "ast",
                "pathlib", "tarfile", "zipfile", "subprocess"):
        src = Path(os.__file__).parent / f"{mod}.py"
        out.append(Path(py_compile.compile(str(src), cfile=str(d / f"{mod.replace('/', '_')}.pyc"),
                                           doraise=True)))
    for i in range(10):
        (d / f"m{i}.eml").write_bytes(_mail(i))
        out.append(d / f"m{i}.eml")
    for i in range(5):
        _sqlite(d / f"db{i}.sqlite", i)
        out.append(d / f"db{i}.sqlite")
    for i in range(5):
        with tarfile.open(d / f"src{i}.tar", "w") as tf:
            for k in range(6):
                f = d / f"part{i}-{k}.txt"
                f.write_bytes(text(8 << 10, k))
                tf.add(f, arcname=f.name)
                f.unlink()
        out.append(d / f"src{i}.tar")
    return out


def test_benign_rewrites_with_plaintext_heads_stay_quiet(tmp_path: Path) -> None:
    """An untrusted tree rewriting executables, byte code, mail with base64
    attachments, SQLite databases and tar files in place: not encrypted-looking."""
    files = _benign(tmp_path / "work")
    assert len(files) >= 40
    tree = Tree()
    for p in files:
        tree.write(p, p.read_bytes())
    assert not tree.loud(), [(f.title, f.evidence) for f in tree.loud()]
    assert tree.rule.probes.content_many is not None


def test_mail_with_base64_attachments_is_not_ciphertext(tmp_path: Path) -> None:
    """A mail client rewriting a maildir of messages with (random-looking) attachments:
    the base64 parts are not decoded as ciphertext."""
    d = tmp_path / "Maildir" / "cur"
    d.mkdir(parents=True)
    tree = Tree()
    for i in range(N):
        p = d / f"{i}.eml"
        p.write_bytes(_mail(i))
        tree.write(p, p.read_bytes())
    assert not tree.loud(), [(f.title, f.evidence) for f in tree.loud()]


def test_base64_ciphertext_behind_a_plaintext_head_is_decoded(tmp_path: Path) -> None:
    """Banner + base64 (evasions 2 and 3 together), no mail header: still high."""
    tree = Tree()
    for p in victims(tmp_path / "docs", size=32 << 10):
        tree.write(p, (b"NOTICE: this document is protected. " * 200) + b64(p.read_bytes()))
    assert tree.critical(), [(f.title, f.evidence) for f in tree.found]


def test_the_byte_budget_makes_a_file_unknown_not_plaintext(tmp_path: Path) -> None:
    """Past the bytes-per-second budget a file is read at its head only: ciphertext
    after a plaintext head is then *unknown* (a medium at most), never "plaintext"."""
    from bastion.detect.behavior.content import ByteBudget, file_sample
    p = tmp_path / "f"
    p.write_bytes(after_header(text(64 << 10)))
    empty = ByteBudget(per_s=1.0, burst=1.0)
    got = file_sample(str(p), budget=empty)
    assert got is not None and got.score is None and got.limited
    assert got.bytes_read == 1024
    full = file_sample(str(p), budget=ByteBudget())
    assert full is not None and full.score is not None and full.score >= 7.2


def test_a_nul_in_a_name_never_opens_its_prefix(tmp_path: Path) -> None:
    """The probe opens through ctypes (openat2): a C string ends at a NUL, so
    "DIR/a\\0b" would open DIR/a.  Refused before any open."""
    (tmp_path / "a").write_bytes(os.urandom(8192))
    assert file_entropy(str(tmp_path / "a")) is not None
    assert file_entropy(f"{tmp_path}/a\x00b") is None


def test_pseudo_filesystems_and_symlinked_roots_are_not_read(tmp_path: Path) -> None:
    """A name leading into procfs/sysfs (through a symlinked directory the writer
    planted) is not read as root: its files are not anyone's data."""
    (tmp_path / "d").symlink_to("/proc/self")
    assert file_entropy(str(tmp_path / "d" / "status")) is None
    assert file_entropy("/sys/kernel/notes") is None


def test_refused_names_leave_no_descriptor_open(tmp_path: Path) -> None:
    """Every refusal after the O_PATH open (not a regular file, another inode, a pseudo
    filesystem, too small) closes it: the names are the attacker's, as many as it likes."""
    from bastion.detect.behavior.content import file_sample
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "small").write_bytes(b"x")
    (tmp_path / "big").write_bytes(os.urandom(4096))
    (tmp_path / "d").symlink_to("/proc/self")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        assert file_sample(str(tmp_path / "fifo")) is None
        assert file_sample(str(tmp_path / "small")) is None
        assert file_sample(str(tmp_path)) is None
        assert file_sample(str(tmp_path / "d" / "status")) is None
        other = file_sample(str(tmp_path / "big"), ino=1)
        assert other is not None and other.other_inode
    assert len(os.listdir("/proc/self/fd")) <= before


# ---- s18 review: the dismissal must not rest on what the probe could not read ----------------

def test_a_drained_byte_budget_is_no_dismissal(tmp_path: Path) -> None:
    """A decoy tree drains the shared byte budget: the encryptor's files (ciphertext
    after a plaintext head) are read at the head only (``limited``); a few small
    plaintext files it also wrote were judged low.  The rule dismissed on those
    (sampled 4, high 0): the limited files must keep it a medium at least."""
    from bastion.detect.behavior.content import ByteBudget
    from bastion.detect.behavior.rules import EntropyProbe
    tree = Tree()
    ep = tree.rule.probes.entropy
    assert isinstance(ep, EntropyProbe)
    ep.budget = ByteBudget(per_s=1.0, burst=1.0)
    files = victims(tmp_path / "docs", size=64 << 10)
    for p in files[:-4]:
        tree.write(p, after_header(p.read_bytes()))
    for i, p in enumerate(files[-4:]):
        tree.write(p, text(1024, 900 + i))
    assert tree.found, "a mass rewrite whose files went unread for the budget was dismissed"
    assert tree.found[0].evidence["entropy_limited"] > 0


def test_sparse_decoys_do_not_drain_the_budget(tmp_path: Path) -> None:
    """A sparse 1 MiB decoy (a text head, holes elsewhere) had all 16 windows read and
    charged; holes hold no ciphertext and cost no I/O: skipped, uncharged."""
    from bastion.detect.behavior.content import ByteBudget, file_sample
    p = tmp_path / "sparse"
    with open(p, "wb") as fh:
        fh.write(text(1024))
        fh.truncate(1 << 20)
    if os.stat(p).st_blocks * 512 >= 1 << 20:
        pytest.skip("the filesystem does not keep holes")
    budget = ByteBudget(per_s=1.0, burst=4096.0)
    got = file_sample(str(p), budget=budget)
    assert got is not None and got.score is not None and not got.limited
    # Only the one allocated block holds data: windows the per-agent key happens to
    # place inside it are read (1 KiB each, ~5 % of runs see a second one); the rest
    # fall in holes and cost nothing.
    assert 1024 <= got.bytes_read <= 4096
    assert budget.refused == 0 and budget.take(4096 - got.bytes_read - 1)


def test_forced_head_reads_run_no_debt() -> None:
    """Head windows are read even past the budget (forced); their cost drove the bucket
    negative without bound, so 100 decoy heads left it empty for the next 25 s."""
    import time as _t
    from bastion.detect.behavior.content import ByteBudget
    budget = ByteBudget(per_s=4096.0, burst=4096.0)
    for _ in range(100):
        assert budget.take(1024, force=True)
    _t.sleep(0.3)
    assert budget.take(1024)


def test_a_tie_of_ciphertexts_and_unique_notes_is_not_dismissed(tmp_path: Path) -> None:
    """1:1 notes that differ per file (the victim's name in each) are not left out as
    repeats: the newest 8 are 4 ciphertexts and 4 notes, high 4 of 8 -- dismissed as
    "not most".  Two or more high files are at least a medium."""
    tree = Tree()
    for i, p in enumerate(victims(tmp_path / "docs", size=16 << 10)):
        tree.write(p, os.urandom(16 << 10))
        note = b"Your file %s is encrypted. Pay 0.5 BTC, id %04d.\n" % (os.fsencode(p.name), i)
        tree.write(f"{p}.README.txt", note * 8, flags=O_WRONLY | O_CREAT | O_TRUNC)
    assert tree.found, "4 ciphertexts in a sample of 8 were dismissed"
    assert tree.found[0].evidence["entropy_high"] >= 2


# ---- s18 review 3: binaries judged critical (C++ symbol tables as base64, one table) ---------

def _symtab(n: int) -> bytes:
    """A .dynstr: mangled C++ names (base64's alphabet) separated by NULs."""
    import random
    rnd = random.Random(7)
    alnum = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
    out = b""
    while len(out) < n:
        out += b"_ZN4absl" + bytes(rnd.choice(alnum) for _ in range(rnd.randrange(20, 60))) + b"\0"
    return out[:n]


def _mixed_b64(n: int) -> bytes:
    """Text in both base64 alphabets at once ("+/" and "-_"): no encoder writes that."""
    import random
    rnd = random.Random(8)
    alpha = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_"
    return bytes(rnd.choice(alpha) for _ in range(n))


@pytest.mark.parametrize("make", [_symtab, _mixed_b64], ids=["symtab", "mixed_alphabets"])
def test_symbol_tables_are_not_decoded_as_base64(tmp_path: Path, make: Callable[[int], bytes]) -> None:
    from bastion.detect.behavior.content import HIGH, file_sample
    p = tmp_path / "lib.so"
    p.write_bytes(make(4096))
    got = file_sample(str(p))
    assert got is not None and got.score is not None and got.score < HIGH, got


def test_one_high_window_in_a_large_file_is_not_high(tmp_path: Path) -> None:
    """A 64 KiB file of text with one 1 KiB constant table at its end (the tail window):
    one window of "ciphertext" made the whole file high."""
    from bastion.detect.behavior.content import HIGH, file_sample
    p = tmp_path / "big"
    p.write_bytes(text(63 << 10) + os.urandom(1024))
    got = file_sample(str(p))
    assert got is not None and got.score is not None and got.score < HIGH, got
    two = tmp_path / "two"   # two high windows (head and tail): high
    two.write_bytes(os.urandom(1024) + text(62 << 10) + os.urandom(1024))
    got = file_sample(str(two))
    assert got is not None and got.score is not None and got.score >= HIGH, got


def _elf(body: bytes) -> bytes:
    """A 64-bit ELF header whose section header table (null section 0) ends the file."""
    shoff = 64 + len(body)
    hdr = b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") + \
        (62).to_bytes(2, "little") + (1).to_bytes(4, "little") + bytes(8) + bytes(8) + \
        shoff.to_bytes(8, "little") + bytes(4) + (64).to_bytes(2, "little") + \
        (56).to_bytes(2, "little") + bytes(2) + (64).to_bytes(2, "little") + \
        (1).to_bytes(2, "little") + bytes(2)
    assert len(hdr) == 64
    return hdr + body + bytes(64)


def _gzip(body: bytes) -> bytes:
    return b"\x1f\x8b\x08\x00" + bytes(6) + body + bytes(4) + (len(body) * 3).to_bytes(4, "little")


def _mp4(body: bytes) -> bytes:
    ftyp = (24).to_bytes(4, "big") + b"ftypmp42" + bytes(4) + b"mp42isom"
    return ftyp + (8 + len(body)).to_bytes(4, "big") + b"mdat" + body


def _png(body: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + body + bytes(4) + b"IEND\xaeB`\x82"


def _pdf(body: bytes) -> bytes:
    return b"%PDF-1.7\n" + body + b"\nstartxref\n123\n%%EOF\n"


def _xz(body: bytes) -> bytes:
    return b"\xfd7zXZ\x00" + body + bytes(10) + b"YZ"


CONTAINERS: dict[str, Callable[[bytes], bytes]] = {
    "elf": _elf, "zip": lambda b: forged_zip(b), "gzip": _gzip, "mp4": _mp4, "png": _png,
    "pdf": _pdf, "xz": _xz}


@pytest.mark.parametrize("kind", sorted(CONTAINERS))
def test_container_formats_are_judged_on_their_head(tmp_path: Path, kind: str) -> None:
    """An ELF library with crypto tables, a zip, a gzip, an mp4 ...: bodies of compressed
    or machine-code bytes (libcrypto, libz: 23 of 396 .so were high).  When the structure
    checks out they are judged on the head: not high; and since anyone can forge the
    structure around ciphertext, not "plaintext" either: unknown (a tree's mass rewrite
    of them is a medium, never dismissed)."""
    from bastion.detect.behavior.content import file_sample
    p = tmp_path / "f"
    p.write_bytes(CONTAINERS[kind](text(4096) + os.urandom(60 << 10)))
    got = file_sample(str(p))
    assert got is not None and got.score is None and not got.limited, got


@pytest.mark.parametrize("magic", [b"\x7fELF\x02\x01\x01", b"PK\x03\x04", b"\x1f\x8b\x08\x00",
                                   b"\x00\x00\x00\x18ftypmp42", b"\x89PNG\r\n\x1a\n", b"%PDF-",
                                   b"\xfd7zXZ\x00"])
def test_a_container_magic_without_its_structure_is_judged_on_its_body(
        tmp_path: Path, magic: bytes) -> None:
    """The magic, a plaintext (or NUL) head, then ciphertext: judged on the head only it
    was unknown -- an encryptor writing ``PK\\x03\\x04`` + NULs first stayed a medium,
    never killed (s19 review 3).  No end-of-central-directory record, no section table,
    no IEND ...: the body windows judge it (high)."""
    from bastion.detect.behavior.content import HIGH, file_sample
    p = tmp_path / "f"
    # (gzip: an uncompressed size no 65 KiB of deflate holds, as 98 % of random tails)
    p.write_bytes((magic + bytes(1024))[:1024] + os.urandom(64 << 10) + b"\xff" * 4)
    got = file_sample(str(p))
    assert got is not None and got.score is not None and got.score >= HIGH, got


def test_zip_magic_ciphertext_is_killed(tmp_path: Path) -> None:
    """40 files rewritten as ``PK\\x03\\x04`` + 1020 NULs + ciphertext: medium, no kill."""
    tree = Tree()
    for p in victims(tmp_path / "docs", size=64 << 10):
        tree.write(p, ZIP_MAGIC + os.urandom(64 << 10))
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]


@pytest.mark.parametrize("name", ["/d/a\\x2f..\\x2fshadow", "/d/a\\x00b", "/d/a\\x7fb"])
def test_only_backslashreplace_escapes_are_unescaped(name: str) -> None:
    """backslashreplace writes \\x80-\\xff only: a literal "\\x2f" in a name was
    unescaped into a "/" (another path: the probe read a file the tree chose) and
    "\\x00" into a NUL.  Such names are tried as written only."""
    from bastion.detect.behavior.content import names
    assert names(name) == [os.fsencode(name)]
    assert names("/d/a\\xffb") == [b"/d/a\\xffb", b"/d/a\xffb"]


def test_one_path_rewritten_and_removed_in_a_loop_is_one_file(tmp_path: Path) -> None:
    """`while :; do echo x > f; rm f; done`: each write names a new inode, and the
    distinct count ("w:PATH\\0INO") made one path 40 files: a "mass rewrite"."""
    tree = Tree()
    f = str(tmp_path / "f")
    for i in range(N + 5):
        tree._feed({"type": "open", **tree._proc(), "path": f, "path2": "",
                    "flags": O_WRONLY | O_CREAT | O_TRUNC, "mode": 0o644, "owner_uid": -1,
                    "owner_gid": -1, "dev": 1, "ino": 5000 + i})
        tree._feed({"type": "unlink", **tree._proc(), "path": f, "path2": "", "flags": 0,
                    "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 5000 + i})
    assert not tree.found, [(x.title, x.evidence) for x in tree.found]


def test_a_tree_writing_one_template_many_times_is_dismissed(tmp_path: Path) -> None:
    """40 copies of one plaintext file (a template, a fixture): every probed file is the
    same content, so all were left out as ransom notes and nothing was sampled: a medium
    "mass rewrite" with no evidence (stop 24's first CI: the fifo test's preparing tree).
    With no other content beside them, the repeats are the tree's content: dismissed."""
    tree = Tree()
    for p in victims(tmp_path / "docs", size=4800):
        tree.write(p, b"hello world\n" * 400, flags=O_WRONLY | O_CREAT | O_TRUNC)
    assert not tree.found, [f.title for f in tree.found]


# ---- s19 review: the encryptor chose what was sampled, notes cleared it, padding ----------

NOTE = b"All your files are encrypted.  Send 0.5 BTC to bc1q... and mail the id.\n" * 12
ZIP_MAGIC = b"PK\x03\x04" + bytes(1020)


def forged_zip(body: bytes) -> bytes:
    """``body`` wrapped as a zip that checks out structurally (a central directory entry
    and an end-of-central-directory record pointing at it): judged on its head, unknown."""
    head = ZIP_MAGIC + body
    cd = b"PK\x01\x02" + bytes(42)
    eocd = b"PK\x05\x06" + bytes(4) + (1).to_bytes(2, "little") * 2 + \
        len(cd).to_bytes(4, "little") + len(head).to_bytes(4, "little") + bytes(2)
    return head + cd + eocd


def test_ransom_notes_do_not_clear_unknown_ciphertexts(tmp_path: Path) -> None:
    """23 files encrypted in place as containers the probe cannot judge (unknown), then the
    same note in 17 directories: no readable file but the notes, which were promoted to
    the sample (one template written 40 times is the tree's content) -- 8 copies of one
    note, 0 high, 7 unknown < 8: dismissed.  Notes beside unknown files stay notes."""
    tree = Tree()
    for p in victims(tmp_path / "docs", n=23, size=64 << 10):
        tree.write(p, forged_zip(os.urandom(64 << 10)))
    for i in range(17):
        d = tmp_path / f"dir{i}"
        d.mkdir()
        tree.write(str(d / "HOW-TO-DECRYPT.txt"), NOTE, flags=O_WRONLY | O_CREAT | O_TRUNC)
    assert tree.found, "23 unknown ciphertexts and 17 notes were dismissed"
    assert tree.found[0].severity == "medium", [(f.severity, f.evidence) for f in tree.found]


def test_ransom_notes_beside_zip_magic_ciphertexts_are_no_dismissal(tmp_path: Path) -> None:
    """The review's case: ``PK\\x03\\x04`` + 1020 NULs + ciphertext, then the notes."""
    tree = Tree()
    for p in victims(tmp_path / "docs", n=23, size=64 << 10):
        tree.write(p, ZIP_MAGIC + os.urandom(64 << 10))
    for i in range(17):
        d = tmp_path / f"dir{i}"
        d.mkdir()
        tree.write(str(d / "HOW-TO-DECRYPT.txt"), NOTE, flags=O_WRONLY | O_CREAT | O_TRUNC)
    assert tree.found, "23 zip-magic ciphertexts and 17 notes were dismissed"


def _decoys(tmp_path: Path, n: int = 8) -> list[str]:
    return [str(tmp_path / f"notes{i}.txt") for i in range(n)]


def test_plaintext_decoys_rewritten_last_are_not_the_sample(tmp_path: Path) -> None:
    """32 files encrypted, then 8 plaintext decoys rewritten: the newest 8 readable files
    were the sample -- the decoys, 0 high: dismissed.  A random draw from every file the
    tree left finds the ciphertext: at least 2 high files (a draw of 8 from 32 + 8 is
    critical 96 % of the time, a medium otherwise; never dismissed)."""
    tree = Tree()
    for p in victims(tmp_path / "docs", n=32, size=16 << 10):
        tree.write(p, os.urandom(16 << 10))
    for i, d in enumerate(_decoys(tmp_path)):
        tree.write(d, text(2048, 100 + i), flags=O_WRONLY | O_CREAT | O_TRUNC)
    assert tree.found, "32 ciphertexts behind 8 decoys were dismissed"
    assert tree.found[0].evidence["entropy_high"] >= 2, tree.found[0].evidence


def test_decoys_refreshed_every_few_ciphertexts_do_not_hold_it_at_medium(tmp_path: Path) -> None:
    """4 files encrypted, the 8 decoys rewritten, again: 200 files -> one medium, never
    critical (the decoys were always the newest)."""
    decoys = _decoys(tmp_path)
    tree = Tree()
    for k, p in enumerate(victims(tmp_path / "docs", n=200, size=16 << 10)):
        tree.write(p, os.urandom(16 << 10))
        if k % 4 == 3:
            for i, d in enumerate(decoys):
                tree.write(d, text(2048, 100 + i), flags=O_WRONLY | O_CREAT | O_TRUNC)
        if tree.critical():
            break
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]
    assert k < 80, f"critical only after {k + 1} files"


def test_zip_magic_ciphertexts_then_decoys_are_no_dismissal(tmp_path: Path) -> None:
    """32 zip-magic ciphertexts (judged unknown on their head), then 8 distinct plaintext
    decoys: the sample was the 8 decoys, 0 unknown among them: silent."""
    tree = Tree()
    for p in victims(tmp_path / "docs", n=32, size=64 << 10):
        tree.write(p, ZIP_MAGIC + os.urandom(64 << 10))
    for i, d in enumerate(_decoys(tmp_path)):
        tree.write(d, text(2048, 100 + i), flags=O_WRONLY | O_CREAT | O_TRUNC)
    assert tree.found, "32 zip-magic ciphertexts behind 8 decoys were dismissed"


def test_pad_rewrites_do_not_push_encrypted_files_out_of_the_count(tmp_path: Path) -> None:
    """4 pad files rewritten after each encrypted file: the per-tree queue kept 160 raw
    events (~32 distinct files), so the distinct count never reached 40: 120 files
    encrypted, no finding.  The rule keeps distinct values (a repeat moves to the end)."""
    pads = [tmp_path / f"pad{i}.txt" for i in range(4)]
    for q in pads:
        q.write_bytes(text(1024, 9))
    tree = Tree()
    for k, p in enumerate(victims(tmp_path / "docs", n=120, size=16 << 10)):
        tree.write(p, os.urandom(16 << 10))
        for q in pads:
            tree.write(q, text(1024, 9))
        if tree.critical():
            break
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]
    assert k < 60, f"critical only after {k + 1} files"
    assert tree.rule.item_shed == 0



# ---- s20 review: created files, sh-wrapped workers, no-op write-opens ------------------------

O_EXCL = 0o200


def _feed_file(tree: Tree, op: str, path: Path, flags: int = 0,
               proc: dict[str, Any] | None = None, ctime_ns: int | None = None) -> None:
    """``ctime_ns``: the inode's ctime the sensor read at the open (ABI 3.0), if said."""
    ino = os.stat(path).st_ino if path.exists() else 9
    more = {"ctime_ns": ctime_ns, "created": False, "empty": False} if ctime_ns is not None \
        else {}
    tree._feed({"type": op, **(proc or tree._proc()), "path": str(path), "path2": "",
                "flags": flags, "mode": 0o644 if op == "open" else 0, "owner_uid": -1,
                "owner_gid": -1, "dev": 1, "ino": ino, **more})


def test_encrypting_to_exclusively_created_files_then_unlinking_is_critical(tmp_path: Path) -> None:
    """s20 review 1: NAME.locked created O_CREAT|O_EXCL (python "xb"), NAME unlinked.  The
    creation was no counted value (O_CREAT without O_TRUNC), the unlinks left nothing: an
    empty sample, one medium, no kill.  Created files are candidates (not counted)."""
    tree = Tree()
    for p in victims(tmp_path / "docs", n=60, size=16 << 10):
        q = Path(f"{p}.locked")
        with open(q, "xb") as fh:
            fh.write(os.urandom(16 << 10))
        _feed_file(tree, "open", q, O_WRONLY | O_CREAT | O_EXCL)
        os.unlink(p)
        _feed_file(tree, "unlink", p)
    got = tree.critical()
    assert got and got[0].action == "kill-tree", [(f.severity, f.evidence) for f in tree.found]
    assert got[0].evidence["created"] >= 40 and got[0].evidence["entropy_high"] >= 5
    assert got[0].evidence["files"] == 40          # the unlinks only: not counted twice


def test_created_files_the_tree_removed_again_are_not_sampled(tmp_path: Path) -> None:
    """A tree's own temp files (created, then unlinked or renamed away) are no candidates:
    40 plaintext files created and unlinked -- nothing left to judge but their removal."""
    tree = Tree()
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(N):
        q = d / f"tmp{i}"
        q.write_bytes(os.urandom(8192))
        _feed_file(tree, "open", q, O_WRONLY | O_CREAT | O_EXCL)
        os.unlink(q)
        _feed_file(tree, "unlink", q)
    assert not tree.critical()
    assert all("created" not in f.evidence for f in tree.found)


def _workers(tree: Tree, files: list[Path], per: int, enc: Callable[[bytes], bytes]) -> None:
    """The test process (python) runs each batch in ``sh -c 'python3 enc.py'``: a worker
    tree per batch (its parent, sh, is another executable and no launcher)."""
    for b in range(0, len(files), per):
        wp = sh_worker(tree, 50000 + b * 2)
        for p in files[b:b + per]:
            p.write_bytes(enc(p.read_bytes()))
            _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, wp)


def test_sh_wrapped_workers_under_the_threshold_are_judged_together(tmp_path: Path) -> None:
    """s20 review 2: 10 workers of 39 files, each under ``sh -c``: each worker was its own
    tree (under 40), nothing.  The per-user aggregate judges them together; its finding
    names every worker tree as a root to stop."""
    tree = Tree()
    _workers(tree, victims(tmp_path / "docs", n=390, size=16 << 10), 39,
             lambda b: os.urandom(len(b)))
    got = tree.critical()
    assert got, [(f.severity, f.evidence) for f in tree.found]
    assert got[0].evidence["scope"] == "user" and got[0].evidence["trees"] >= 2
    # the worker trees, then the supervisor they share (it wrote nothing: s20-ransomfix3)
    assert len(got[0].roots) == got[0].evidence["trees"] + 1
    assert got[0].roots[-1] == (tree.pid, 1000) and got[0].evidence["supervisor"] == tree.pid
    assert all(pid >= 50001 and start == 1000 + pid for pid, start in got[0].roots[:-1])


def test_sh_wrapped_workers_rewriting_plaintext_stay_quiet(tmp_path: Path) -> None:
    """The benign side: the same 10 sh-wrapped trees rewriting their files as plaintext."""
    tree = Tree()
    _workers(tree, victims(tmp_path / "docs", n=390, size=16 << 10), 39, lambda b: b)
    assert not tree.loud(), [(f.severity, f.evidence) for f in tree.loud()]


def test_no_op_write_opens_do_not_dilute_the_sample(tmp_path: Path) -> None:
    """s20 review 3: after each encrypted file, 7 of the user's plaintext files opened
    O_WRONLY and closed unchanged: each was a rewrite in the draw (~1 high of 8: a
    medium, never a kill).  A file not changed since the write-open is no candidate
    (s21: its ctime is the one the record read at the open)."""
    pool = victims(tmp_path / "home", n=400, size=4 << 10)
    tree = Tree(real_clock=True)
    tree.rule.FRESH_NS = NS // 5    # (1 s live) the pool was written 0.3 s ago
    time.sleep(0.3)
    j = 0
    for p in victims(tmp_path / "docs", n=60, size=16 << 10):
        tree.write(p, os.urandom(16 << 10))
        for _ in range(7):
            q = pool[j % len(pool)]
            _feed_file(tree, "open", q, O_WRONLY, ctime_ns=os.stat(q).st_ctime_ns)
            j += 1
        if tree.critical():
            break
    got = tree.critical()
    assert got, [(f.severity, f.evidence) for f in tree.found]
    assert got[0].evidence["not_rewritten"] > 0 and got[0].evidence["entropy_high"] >= 5, \
        got[0].evidence


def test_high_files_add_up_across_draws(tmp_path: Path) -> None:
    """s20 review 3: ciphertexts diluted 1:3 by real plaintext rewrites: ~2 high of 8 a
    draw, a medium at each check.  The distinct high files over the tree's draws add up:
    critical at 16 (a quarter of the judged files are high)."""
    pool = victims(tmp_path / "home", n=600, size=4 << 10)
    tree = Tree()
    j = 0
    for k, p in enumerate(victims(tmp_path / "docs", n=150, size=16 << 10)):
        tree.write(p, os.urandom(16 << 10))
        for _ in range(3):
            q = pool[j % len(pool)]
            tree.write(q, text(4 << 10, 7 + j))
            j += 1
        if tree.critical():
            break
    got = tree.critical()
    assert got, [(f.severity, f.evidence) for f in tree.found]
    assert "entropy_high_total" in got[0].evidence or got[0].evidence["entropy_high"] >= 5


def test_a_benign_tree_with_a_few_compressed_files_does_not_add_up(tmp_path: Path) -> None:
    """The benign side of adding up: 1 compressed-looking file in 12 (a build writing a few
    random test fixtures among its sources) over 600 rewrites: never critical."""
    tree = Tree()
    for i, p in enumerate(victims(tmp_path / "src", n=600, size=4 << 10)):
        tree.write(p, os.urandom(4 << 10) if i % 12 == 0 else text(4 << 10, i))
    assert not tree.critical(), [(f.severity, f.evidence) for f in tree.critical()]


def test_o_creat_rewrites_in_place_of_existing_files_count(tmp_path: Path) -> None:
    """``open(O_RDWR|O_CREAT)`` of an existing file, ciphertext written over it in place (no
    O_TRUNC): no counted value (taken for a creation), nothing judged.  The record says
    the file was there with bytes (ABI 2.10 ``created``/``empty``): a rewrite."""
    tree = Tree()
    for p in victims(tmp_path / "docs", size=16 << 10):
        with open(p, "r+b") as fh:
            fh.write(os.urandom(16 << 10))
        tree._feed({"type": "open", **tree._proc(), "path": str(p), "path2": "",
                    "flags": 0o2 | O_CREAT, "mode": 0o644, "owner_uid": -1, "owner_gid": -1,
                    "dev": 1, "ino": os.stat(p).st_ino, "created": False, "empty": False})
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]


def _proc(pid: int, ppid: int, exe: str, comm: str) -> dict[str, Any]:
    return {"pid": pid, "tid": pid, "ppid": ppid, "uid": 1000, "euid": 1000, "gid": 1000,
            "cgroup_id": 1, "comm": comm, "start_ns": 1000 + pid, "exe": exe}


def _sh_workers(tree: Tree, files: list[Path], per: int, base: int) -> None:
    """``_workers`` with the pids from ``base`` on (a second wave of workers)."""
    for b in range(0, len(files), per):
        wp = sh_worker(tree, base + b * 2)
        for p in files[b:b + per]:
            p.write_bytes(os.urandom(len(p.read_bytes())))
            _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, wp)


def sh_worker(tree: Tree, s: int) -> dict[str, Any]:
    """The test process (python) starts ``sh -c 'python3 enc.py'``: sh is pid ``s``, the
    python3 worker ``s + 1`` (another executable under sh: a tree of its own).  Returns
    the worker's process fields."""
    py, sh, w = "/usr/bin/python3.11", "/usr/bin/dash", s + 1
    tree._feed({"type": "fork", **_proc(tree.pid, 1, py, "python3"), "child_pid": s,
                "child_start_ns": 1000 + s})
    tree._feed({"type": "exec", **_proc(s, tree.pid, sh, "sh"), "filename": "/bin/sh",
                "cwd": "/", "argv": ["sh", "-c", "python3 enc.py"], "exe_dev": 1,
                "exe_ino": 1, "exe_nlink": 1})
    tree._feed({"type": "fork", **_proc(s, tree.pid, sh, "sh"), "child_pid": w,
                "child_start_ns": 1000 + w})
    wp = _proc(w, s, py, "python3")
    tree._feed({"type": "exec", **wp, "filename": "/usr/bin/python3", "cwd": "/",
                "argv": ["python3", "enc.py"], "exe_dev": 1, "exe_ino": 4242, "exe_nlink": 1})
    return wp


def test_aggregate_not_blind_after_firing(tmp_path: Path) -> None:
    """s20-ransomfix3 review 1: once the per-user aggregate fired, it was silent for the
    window (20 s): a supervisor that writes nothing started new ``sh -c`` workers, each
    under 40 files, and they encrypted freely.  Each new tree is stopped once a file of
    it is judged high, and the supervisor the stopped trees share is stopped too."""
    tree = Tree()
    _sh_workers(tree, victims(tmp_path / "a", n=390, size=8 << 10), 39, 50000)
    first = tree.critical()
    assert first and first[0].evidence["scope"] == "user"
    assert (tree.pid, 1000) in first[0].roots     # the supervisor that wrote nothing
    _sh_workers(tree, victims(tmp_path / "b", n=390, size=8 << 10), 39, 60000)
    again = [f for f in tree.critical()[len(first):]]
    stopped = {p for f in again for p, _ in f.roots if p >= 60000}
    assert stopped == {60001 + b * 2 for b in range(0, 390, 39)}, \
        [(f.severity, f.evidence.get("scope")) for f in tree.found[len(first):]]
    # each new tree stopped at its first high file: one finding per tree, not per file
    assert len(again) == 10 and all(f.evidence["files_high"] == 1 for f in again)
    assert tree.rule.agg_checks == 1              # no full check per event meanwhile
    # still fired: a tree of the same uid rewriting plaintext is not stopped
    d = tmp_path / "notes"
    d.mkdir()
    note = d / "todo.txt"
    note.write_bytes(text(4096))
    _feed_file(tree, "open", note, O_WRONLY | O_TRUNC, _proc(40000, 1, "/usr/bin/vim.basic", "vim"))
    assert len(tree.critical()) == len(first) + 10


def test_aggregate_spares_a_benign_tree_of_the_same_uid(tmp_path: Path) -> None:
    """s20-ransomfix3 review 2: the aggregate's finding named every tree with an entry in
    the window as a root: an editor of the same uid that saved one plaintext file was
    killed with the encryptor's workers.  Roots are the trees with a file judged high."""
    tree = Tree()
    d = tmp_path / "notes"
    d.mkdir()
    note = d / "todo.txt"
    note.write_bytes(text(4096))
    vim = _proc(40000, 1, "/usr/bin/vim.basic", "vim")
    tree._feed({"type": "exec", **vim, "filename": "/usr/bin/vim", "cwd": "/",
                "argv": ["vim"], "exe_dev": 1, "exe_ino": 77, "exe_nlink": 1})
    _feed_file(tree, "open", note, O_WRONLY | O_TRUNC, vim)
    _sh_workers(tree, victims(tmp_path / "a", n=390, size=8 << 10), 39, 50000)
    got = tree.critical()
    assert got and got[0].evidence["scope"] == "user"
    assert 40000 not in {p for p, _ in got[0].roots}, got[0].roots
    assert {p for p, _ in got[0].roots} & {50001 + b * 2 for b in range(0, 390, 39)}


def test_judged_history_is_capped_under_a_flood_of_files(tmp_path: Path) -> None:
    """s20-ransomfix3 review 3: a key's judged-file history kept up to 1,024 entries
    (~355 KiB a key, 16,384 keys): capped at JUDGED_MAX (128) whatever the flood."""
    tree = Tree()
    files = victims(tmp_path / "docs", n=700, size=512)
    for p in files:
        tree.write(p, p.read_bytes())     # plaintext: checked again and again
    assert Ransomware.JUDGED_MAX <= 128
    sizes = [len(od) for _, od in tree.rule._judged.items()]
    assert sizes and max(sizes) == Ransomware.JUDGED_MAX, sizes
    assert not tree.loud()


# ---- s21: the after-firing probe budget ------------------------------------------------------

def _count_probes(tree: Tree) -> list[int]:
    """Count the files ``tree``'s rule probes (every content read goes through it)."""
    probes = tree.rule.probes
    real = probes.content_many
    assert real is not None
    n = [0]

    def counted(batch: Any) -> Any:
        n[0] += len(batch)
        return real(batch)
    tree.rule.probes = dataclasses.replace(probes, content_many=counted)
    return n


def test_a_busy_tree_of_a_fired_user_costs_a_bounded_number_of_probes(tmp_path: Path) -> None:
    """s21: while a user's aggregate is fired (20 s, renewed at each stop), every write
    event of that user's untrusted trees cost one content probe (open + read): an attacker
    keeping it fired with one ciphertext every 10 s made a busy plaintext tree of the same
    uid (10,000 writes over 30 files) cost 10,000 probes (seen: 10,010 with the 10
    sacrificial files).  Each tree has a budget: its first files at once, a path written
    again at most one re-probe a second."""
    tree = Tree()
    _sh_workers(tree, victims(tmp_path / "a", n=390, size=8 << 10), 39, 50000)
    first = len(tree.critical())
    assert first and tree.critical()[0].evidence["scope"] == "user"
    busy = _proc(40000, 1, "/usr/bin/make", "make")
    tree._feed({"type": "exec", **busy, "filename": "/usr/bin/make", "cwd": "/",
                "argv": ["make"], "exe_dev": 1, "exe_ino": 78, "exe_nlink": 1})
    files = victims(tmp_path / "build", n=30, size=2048)
    sacrifice = victims(tmp_path / "s", n=10, size=4096)
    n = _count_probes(tree)
    t0 = tree.t
    for i in range(10_000):
        if i % 1000 == 0:     # the attacker's one ciphertext: a new tree, stopped, re-fires
            _sh_workers(tree, [sacrifice[i // 1000]], 1, 70000 + i)
        _feed_file(tree, "open", files[i % len(files)], O_WRONLY | O_TRUNC, busy)
    secs = (tree.t - t0) // NS
    # each sacrificial tree stopped (the user stayed fired), the busy tree never
    again = tree.critical()[first:]
    assert len(again) == 10 and all(f.evidence.get("after_finding") for f in again)
    assert all(40000 not in {p for p, _ in f.roots} for f in tree.critical())
    # 30 first probes, then at most one a second (100 s of events), + the 10 sacrifices
    assert n[0] <= 30 + secs + 1 + 10, (n[0], secs, tree.rule.stats())
    assert tree.rule.after_skipped >= 9_800


def test_a_tree_that_spends_its_budget_on_decoys_is_still_stopped(tmp_path: Path) -> None:
    """The budget's evasions, while the user is fired: a new tree writes 40 plaintext
    decoys (its burst) then encrypts: judged again as its tokens refill (2 a second) and
    by its own per-tree count; a tree that writes each victim as plaintext, then
    ciphertext over it (the second write a repeat) is re-probed within a second."""
    tree = Tree()
    _sh_workers(tree, victims(tmp_path / "a", n=390, size=8 << 10), 39, 50000)
    first = len(tree.critical())
    w = _proc(45000, 1, "/usr/bin/python3.11", "python3")
    tree._feed({"type": "exec", **w, "filename": "/usr/bin/python3", "cwd": "/",
                "argv": ["python3", "x.py"], "exe_dev": 1, "exe_ino": 4242, "exe_nlink": 1})
    for p in victims(tmp_path / "decoys", n=40, size=2048):
        _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, w)
    assert len(tree.critical()) == first
    for k, p in enumerate(victims(tmp_path / "b", n=100, size=8 << 10)):
        p.write_bytes(os.urandom(8 << 10))
        _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, w)
        if len(tree.critical()) > first:
            break
    assert len(tree.critical()) > first and k < 60, k
    assert 45000 in {p for p, _ in tree.critical()[first].roots}
    # the double write: plaintext (judged low), then ciphertext over the same file
    w2 = _proc(46000, 1, "/usr/bin/python3.11", "python3")
    n0 = len(tree.critical())
    for k, p in enumerate(victims(tmp_path / "c", n=200, size=8 << 10)):
        _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, w2)
        p.write_bytes(os.urandom(8 << 10))
        _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, w2)
        if len(tree.critical()) > n0:
            break
    assert len(tree.critical()) > n0 and k < 60, k


# ---- s21: ctimes with ctimes (the clock-step gap) --------------------------------------------

O_RDWR = 0o2


def _encrypt_in_place(tree: Tree, p: Path) -> None:
    """``open(O_RDWR)`` of the existing file (no truncation), ciphertext written over it; the
    record carries the inode's ctime at the open, as the sensor reads it (ABI 3.0)."""
    c0 = os.stat(p).st_ctime_ns
    with open(p, "r+b") as fh:
        fh.write(os.urandom(len(p.read_bytes())))
    _feed_file(tree, "open", p, O_RDWR, ctime_ns=c0)


def test_a_clock_stepped_back_does_not_hide_rewrites_in_place(tmp_path: Path) -> None:
    """s20 review 2 (left open then): root steps the wall clock back while encrypting in
    place (``date -s '-1 hour'``): each rewrite's ctime is older than its open event's time
    (boot clock + the offset read before the step), so the "not rewritten since the open"
    skip took every file for a no-op open: nothing judged, no kill (seen: no critical).
    The record's ctime at the open is compared with the file's ctime now."""
    tree = Tree()
    tree.t = time.time_ns() + 3600 * NS    # events an hour ahead of the stepped-back clock
    for p in victims(tmp_path / "docs", n=60, size=16 << 10):
        _encrypt_in_place(tree, p)
        if tree.critical():
            break
    got = tree.critical()
    assert got, [(f.severity, f.evidence) for f in tree.found]
    assert got[0].evidence["entropy_high"] >= 5 and not got[0].evidence.get("not_rewritten")


def test_a_no_op_reopen_after_the_encryption_does_not_hide_the_file(tmp_path: Path) -> None:
    """The reference was the LAST write-open's time: 39 files encrypted in place, then each
    reopened ``O_WRONLY`` and closed unchanged more than a second later (a record of its
    own: another access than the dedup window's), then the 40th file: every file's last
    open was newer than its change, the check at 40 files took 39 for "not rewritten"
    (seen: a medium, 1 file judged; an attacker repeats the pattern for each batch).  The
    witness is the ctime at the tree's first write-open of the file in the window."""
    tree = Tree(real_clock=True)
    files = victims(tmp_path / "docs", n=40, size=16 << 10)
    for p in files[:39]:
        _encrypt_in_place(tree, p)
    time.sleep(1.1)
    for p in files[:39]:
        _feed_file(tree, "open", p, O_WRONLY, ctime_ns=os.stat(p).st_ctime_ns)
    _encrypt_in_place(tree, files[39])
    assert [f.severity for f in tree.found] == ["critical"], \
        [(f.severity, f.evidence) for f in tree.found]
    assert tree.found[0].evidence["entropy_high"] >= 5
    assert not tree.found[0].evidence.get("not_rewritten")


def test_a_write_in_the_tick_of_a_change_before_the_open_is_still_a_rewrite(
        tmp_path: Path) -> None:
    """The price of comparing ctimes: ``chmod`` (or ``utime``) then open + write within one
    coarse clock tick leaves the ctime the record read at the open (the write does not
    move it).  Each record here says the ctime the file has after its rewrite: a ctime
    that recent at the open is no witness, the file is judged."""
    tree = Tree(real_clock=True)
    for p in victims(tmp_path / "docs", n=60, size=16 << 10):
        with open(p, "r+b") as fh:
            fh.write(os.urandom(16 << 10))
        _feed_file(tree, "open", p, O_RDWR, ctime_ns=os.stat(p).st_ctime_ns)
        if tree.critical():
            break
    got = tree.critical()
    assert got and not got[0].evidence.get("not_rewritten"), \
        [(f.severity, f.evidence) for f in tree.found]


def _gone_writer_in_a_namespace(tmp_path: Path, enc: Callable[[bytes], bytes]) -> Tree:
    """s22 (atomics re-run: ``useradd`` then ``chsh`` in the sandbox raised "Mass file
    rewrite"): a shell (pid 7000) in another mount namespace -- a container, the bench's
    sandbox -- runs one process (7001) that rewrites 40 files and exits before the rule's
    check.  Its files were read at their plain paths in the agent's namespace: nothing
    there, every file unknown.  The shell still lives: the files are read through its
    root (start times checked)."""
    ctr = tmp_path / "ctr"
    inside = f"/ctr-data-{os.urandom(6).hex()}"   # no such directory in our namespace
    files = victims(ctr / inside.lstrip("/"), n=N, size=16 << 10)
    tree = Tree()
    roots = {(7000, 8000): str(ctr)}   # the writer (7001) is gone: no root
    tree.rule.probes = dataclasses.replace(
        tree.rule.probes, root_of=lambda pid, start=0: roots.get((pid, start)))
    sh = {**_proc(7000, tree.pid, "/usr/bin/dash", "sh"), "start_ns": 8000}
    tree._feed({"type": "fork", **tree._proc(), "child_pid": 7000, "child_start_ns": 8000})
    tree._feed({"type": "exec", **sh, "filename": "/bin/sh", "cwd": "/",
                "argv": ["sh", "-c", "./job"], "exe_dev": 1, "exe_ino": 1, "exe_nlink": 1})
    tree._feed({"type": "fork", **sh, "child_pid": 7001, "child_start_ns": 8001})
    wp = {**_proc(7001, 7000, "/opt/job/job", "job"), "start_ns": 8001}
    tree._feed({"type": "exec", **wp, "filename": "/opt/job/job", "cwd": "/",
                "argv": ["./job"], "exe_dev": 1, "exe_ino": 777, "exe_nlink": 1})
    for p in files:
        p.write_bytes(enc(p.read_bytes()))
        tree._feed({"type": "open", **wp, "path": f"{inside}/{p.name}", "path2": "",
                    "flags": O_WRONLY | O_TRUNC, "mode": 0o644, "owner_uid": -1,
                    "owner_gid": -1, "dev": 1, "ino": os.stat(p).st_ino})
    return tree


def test_a_gone_writer_in_another_namespace_is_judged_through_its_living_parent(
        tmp_path: Path) -> None:
    """Encryption by a writer that exited before the check, in another mount namespace:
    a medium at most before (its ciphertexts unread), critical now."""
    tree = _gone_writer_in_a_namespace(tmp_path, lambda b: os.urandom(len(b)))
    got = tree.critical()
    assert got, [(f.severity, f.evidence) for f in tree.found]
    assert got[0].evidence["entropy_high"] >= 5 and not got[0].evidence.get("entropy_unknown")


def test_a_gone_writer_rewriting_plaintext_in_another_namespace_stays_quiet(
        tmp_path: Path) -> None:
    """The benign side (``useradd`` rewriting the account files in a container): no
    "mass file rewrite" medium for files the probe could not find."""
    tree = _gone_writer_in_a_namespace(tmp_path, lambda b: b)
    assert not tree.found, [(f.severity, f.title, f.evidence) for f in tree.found]


def test_proc_root_is_the_process_only_while_its_start_time_matches() -> None:
    """A pid reused by another process is not the writer's (or its parent's) view."""
    from bastion.detect.behavior.rules import proc_root
    from bastion.procstat import start_ns_of
    me, start = os.getpid(), start_ns_of(os.getpid())
    assert proc_root(me, start) == f"/proc/{me}/root"
    assert proc_root(me, start + 10 * NS) is None
    assert proc_root(me) == f"/proc/{me}/root"
