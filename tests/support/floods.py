"""Record floods any user can make, for the in-kernel dedup tests of both sensors
(tests/kernel/test_sensor_dedup.py, tests/vm/test_hook_sensor_lsm.py).

``XMEM_SCRIPT``: a process that reads its children's memory in a loop
(process_vm_readv), then re-executes itself (same pid, a new image) and reads the first
child again.  Run as ``python3 SCRIPT WORKDIR N``: children A and B are each read N
times, WORKDIR/f is write-opened N times; the new image reads A N times and write-opens
WORKDIR/f once, kills both children and prints ``PID A B``.

``KILL_SCRIPT``: the same shape with signals: A is sent SIGUSR1 N times and SIGUSR2 N
times, B SIGUSR1 N times; the new image sends A SIGUSR1 N times; prints ``PID A B``.

The children die with the parent (``PR_SET_PDEATHSIG``) if it fails."""

from __future__ import annotations

import textwrap

XMEM_SCRIPT = textwrap.dedent("""
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf, out = ctypes.create_string_buffer(b"secret", 64), ctypes.create_string_buffer(64)
    def read(pid, n, at):
        local = iovec(ctypes.addressof(out), 64)
        remote = iovec(at, 64)
        for _ in range(n):
            if libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
                raise OSError(ctypes.get_errno(), "process_vm_readv")
    work, n = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) == 3:                       # the first image
        kids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                libc.prctl(1, 9)                 # PR_SET_PDEATHSIG: SIGKILL with the reader
                time.sleep(60)
                os._exit(0)
            kids.append(pid)
        at = ctypes.addressof(buf)               # in the children: the first image's memory
        for pid in kids:
            read(pid, n, at)
        for _ in range(n):
            os.close(os.open(os.path.join(work, "f"), os.O_WRONLY | os.O_CREAT, 0o600))
        os.execv(sys.executable, [sys.executable, __file__, work, str(n), str(kids[0]),
                                  str(kids[1]), str(at)])
    a, b, at = (int(x) for x in sys.argv[3:6])    # the second image, same pid
    read(a, n, at)
    os.close(os.open(os.path.join(work, "f"), os.O_WRONLY | os.O_CREAT, 0o600))
    for pid in (a, b):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print(os.getpid(), a, b)
    """)


KILL_SCRIPT = textwrap.dedent("""
    import ctypes, os, signal, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    n = int(sys.argv[2])
    if len(sys.argv) == 3:                       # the first image
        kids = []
        for _ in range(2):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                libc.prctl(1, 9)                 # PR_SET_PDEATHSIG: SIGKILL with the sender
                for s in (signal.SIGUSR1, signal.SIGUSR2):
                    signal.signal(s, lambda *_: None)
                os.write(w, b"r")
                while True:
                    time.sleep(60)
            os.read(r, 1)                        # its handlers are in place
            os.close(r)
            os.close(w)
            kids.append(pid)
        a, b = kids
        for _ in range(n):
            os.kill(a, signal.SIGUSR1)
        for _ in range(n):
            os.kill(a, signal.SIGUSR2)
        for _ in range(n):
            os.kill(b, signal.SIGUSR1)
        os.execv(sys.executable, [sys.executable, __file__, sys.argv[1], str(n), str(a), str(b)])
    a, b = int(sys.argv[3]), int(sys.argv[4])    # the second image, same pid
    for _ in range(n):
        os.kill(a, signal.SIGUSR1)
    for pid in (a, b):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(os.getpid(), a, b)
    """)
