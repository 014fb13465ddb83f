"""How many benign binaries the ransomware content probe calls high (s18 review 3):
``python scripts/ransom_probe_corpus.py [DIR_OR_GLOB ...]`` (default /usr/bin and
/usr/lib/x86_64-linux-gnu/*.so*).  Prints, per set, files judged / high, and the high
ones with the decoding that made them high."""

from __future__ import annotations

import glob
import os
import sys

from bastion.detect.behavior.content import HIGH, file_sample


def main(args: list[str]) -> None:
    sets = args or ["/usr/bin", "/usr/lib/x86_64-linux-gnu/*.so*"]
    for spec in sets:
        paths = sorted(os.path.join(spec, n) for n in os.listdir(spec)) if os.path.isdir(spec) \
            else sorted(glob.glob(spec))
        judged = high = 0
        hits = []
        for p in paths:
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            s = file_sample(p)
            if s is None or s.score is None:
                continue
            judged += 1
            if s.score >= HIGH:
                high += 1
                hits.append(f"  {p} {s.score:.2f} {s.encoded or 'raw'}")
        print(f"{spec}: {high}/{judged} high")
        print("\n".join(hits[:30]))


if __name__ == "__main__":
    main(sys.argv[1:])
