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


# The open dedup's inode-reuse attacks (s19 review), one shell, two ways in: (1) a new
# authorized_keys2 made by the same redirection as a scratch file just removed (the open
# creates the file: FMODE_CREATED); (2) an authorized_keys another process made, on the
# number of a file the shell appended to and removed, appended to in turn (no create:
# only the inode's generation tells).  ext4 usually hands the freed number to the next
# file, not always (the VM's CI run once gave y 13 and authorized_keys 14): each way is
# retried until the number was reused, the file of a miss removed (its open is reported
# with another number, so a hidden final open still fails the tests).  Sets a, b (case 1)
# and c, d (case 2) for the caller's script to echo.
REUSE_SCRIPT = """
cd "$1"
for i in 1 2 3 4 5 6 7 8; do
  : > .x; a=$(stat -c %i .x); rm .x
  echo 'ssh-ed25519 AAAA evil' > authorized_keys2; b=$(stat -c %i authorized_keys2)
  [ "$a" = "$b" ] && break
  rm authorized_keys2
done
for i in 1 2 3 4 5 6 7 8; do
  touch y; : >> y; c=$(stat -c %i y); rm y
  touch authorized_keys; echo 'ssh-ed25519 AAAA evil' >> authorized_keys
  d=$(stat -c %i authorized_keys)
  [ "$c" = "$d" ] && break
  rm authorized_keys
done
"""


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
