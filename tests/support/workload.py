"""A workload that performs one of each reported action, with known values.

Run as: python workload.py DIR PORT_FILE.  Everything it touches is under DIR;
the expected values are printed as one JSON line at the end for the test.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def main() -> None:
    work = sys.argv[1]
    os.chdir(work)
    out: dict[str, object] = {"pid": os.getpid()}
    # exec + exit code
    child = subprocess.run(["/bin/sh", "-c", "exit 7"])
    out["exit_code"] = child.returncode
    # files: write-open (relative path: resolved by the kernel), rename, chmod, chown, unlink
    with open("data.txt", "w") as fh:
        fh.write("x")
    os.rename("data.txt", "renamed.txt")
    os.chmod("renamed.txt", 0o640)
    os.chown("renamed.txt", 0, 0)
    os.unlink("renamed.txt")
    # network: bind/listen/connect/accept on loopback
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(3)
    port = srv.getsockname()[1]
    out["port"] = port
    cli = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close(); cli.close(); srv.close()
    # kill: a signal to a child we own
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    os.kill(sleeper.pid, signal.SIGTERM)
    sleeper.wait()
    out["killed"] = sleeper.pid
    # ptrace: attach to a child we own, then detach
    target = subprocess.Popen(["/bin/sleep", "30"])
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    libc.ptrace(PTRACE_ATTACH, target.pid, None, None)
    os.waitpid(target.pid, 0)
    libc.ptrace(PTRACE_DETACH, target.pid, None, None)
    target.kill(); target.wait()
    out["traced"] = target.pid
    # memfd
    fd = os.memfd_create("bastion-test-memfd", 0)
    os.close(fd)
    # cred: setresuid to the same ids (harmless)
    os.setresuid(os.getuid(), os.getuid(), os.getuid())
    # bpf(): BPF_MAP_CREATE of a tiny array (then closed)
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = 2, 4, 4, 1  # ARRAY, key 4, value 4, 1 entry
    name = b"bastion_t"
    ctypes.memmove(ctypes.addressof(attr) + 28, name, len(name))  # map_name offset 28
    mfd = libc.syscall(321, 0, ctypes.byref(attr), ctypes.sizeof(attr))
    if mfd >= 0:
        os.close(mfd)
    out["bpf_fd"] = mfd
    time.sleep(0.05)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
