import ctypes, os, socket, sys, threading, time

sock_path, out = sys.argv[1].encode(), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
FD = 200


class SockaddrUn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("path", ctypes.c_char * 108)]


addr = SockaddrUn(socket.AF_UNIX, sock_path)
dn = os.open("/dev/null", os.O_RDWR)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[3])


def racer() -> None:
    cur = [-1]
    stop = [False]

    def flip() -> None:
        i = 0
        while not stop[0]:
            libc.dup2(dn if i & 1 else dg.fileno(), FD)
            libc.dup2(cur[0], FD)
            i += 1

    libc.dup2(dn, FD)
    t = threading.Thread(target=flip, daemon=True)
    t.start()
    tries = 0
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        cur[0] = s.fileno()
        tries += 1
        if libc.connect(FD, ctypes.byref(addr), ctypes.sizeof(addr)) == 0:
            os.write(1, f"connected and alive after {tries} tries\n".encode())
            os._exit(0)
        cur[0] = dn
        s.close()
    os._exit(3)


won = killed = 0
while time.monotonic() < end and not won:
    pid = os.fork()
    if pid == 0:
        racer()
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st) and os.WTERMSIG(st) == 9:
        killed += 1
    elif os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0:
        won += 1
with open(out, "w") as f:
    f.write(f"{won} {killed}\n")
