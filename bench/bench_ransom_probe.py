"""Cost of the ransomware rule's content probe per judged file (s18-ransom): the probe
(``bastion.detect.behavior.rules.file_entropy``, what each sampled file costs off the
agent's loop) on real files in a temp dir (page cache warm): 64 KiB and 1 MiB text,
ciphertext, text with ciphertext after the first 4 KiB, base64 of ciphertext, and a
small file.  Reported: µs per file (median of 5 passes over 40 files of each kind) and
bytes read per file (from ``/proc/self/io`` rchar), one process, no root needed."""

from __future__ import annotations

import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit

sys.path.insert(0, str(ROOT / "src"))

from bastion.detect.behavior.rules import file_entropy  # noqa: E402

TEXT = (b"The quarterly report lists every invoice, its customer and the amount due. " * 40)


def text(n: int) -> bytes:
    return (TEXT * (n // len(TEXT) + 1))[:n]


KINDS = {
    "text64k": lambda: text(64 << 10),
    "cipher64k": lambda: os.urandom(64 << 10),
    "skiphead64k": lambda: text(4096) + os.urandom((64 << 10) - 4096),
    "b64cipher64k": lambda: base64.b64encode(os.urandom(48 << 10)),
    "text1m": lambda: text(1 << 20),
    "small2k": lambda: text(2048),
}


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def one_pass(paths: list[str]) -> tuple[float, float]:
    r0 = rchar()
    t0 = time.perf_counter()
    for p in paths:
        file_entropy(p)
    spent = time.perf_counter() - t0
    return spent / len(paths) * 1e6, (rchar() - r0) / len(paths)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-ransom-") as d:
        for kind, make in KINDS.items():
            paths = []
            for i in range(40):
                p = os.path.join(d, f"{kind}-{i}")
                Path(p).write_bytes(make())
                paths.append(p)
            one_pass(paths)   # warm the page cache
            runs = [one_pass(paths) for _ in range(5)]
            emit(f"ransom_probe_{kind}_us_per_file", statistics.median(r[0] for r in runs), "us",
                 ".1f")
            emit(f"ransom_probe_{kind}_bytes_per_file", statistics.median(r[1] for r in runs),
                 "bytes", ".0f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
