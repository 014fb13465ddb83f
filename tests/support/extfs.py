"""A small ext4 filesystem of a test's own, loop-mounted in its temp dir.

For the attacks that need a filesystem which hands an inode number an unlink freed to
the next file at once (ext4 does; tmpfs, the VM's /tmp, never reuses one): on a private
filesystem the reuse is certain, not a race with whatever else the host creates.  Made
without a journal or metadata checksums; the VM's kernel loads ext4, loop and
crc32c_generic at boot (vm/build.sh)."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def ext4_mount(tmp: Path, size_mb: int = 8) -> Iterator[Path]:
    """Yield the mount point of a fresh ext4 image under ``tmp``; unmounted and removed
    after, even when the body fails."""
    img = tmp / "ext4.img"
    mnt = tmp / "ext4"
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal,^metadata_csum", str(img)],
                   check=True, capture_output=True, text=True)
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ext4", "-o", "loop", str(img), str(mnt)],
                   check=True, capture_output=True, text=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True, text=True)
        img.unlink()
