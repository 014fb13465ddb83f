"""A tainted tree's forked sender (s19-gatefix review item 2): the socket is created, the
child loops sending tmux's frames (ENOTCONN until connected), the parent connects to the
clean server (killed in the kernel at its connect's return).  Speaks tmux 3.3a's protocol
(PROTOCOL_VERSION 8: identify, then MSG_COMMAND) itself.  argv: socket, deadline s, the
command's words."""

import os
import socket
import struct
import sys
import time


def frame(t: int, data: bytes = b"") -> bytes:
    return struct.pack("=IHHII", t, 16 + len(data), 0, 8, os.getpid()) + data


def send_all(s: socket.socket, cmd: list[str]) -> None:
    s.send(frame(111, struct.pack("=Q", 0)))          # MSG_IDENTIFY_LONGFLAGS: the first
    for t, data in ((101, b"xterm\0"), (109, struct.pack("=i", 0)), (102, b"\0"), (108, b"/\0")):
        s.send(frame(t, data))
    dn = os.open("/dev/null", os.O_RDWR)
    for t in (104, 110):                              # STDIN, STDOUT: one fd each
        s.sendmsg([frame(t)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", dn))])
    s.send(frame(107, struct.pack("=i", os.getpid())) + frame(106))
    argv = b"".join(a.encode() + b"\0" for a in cmd)
    s.send(frame(200, struct.pack("=i", len(cmd)) + argv))


path, deadline, cmd = sys.argv[1], time.monotonic() + float(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if os.fork() == 0:
    while time.monotonic() < deadline:
        try:
            send_all(s, cmd)
        except OSError:
            continue
        time.sleep(deadline - time.monotonic())
        os._exit(0)
    os._exit(3)
time.sleep(0.05)   # the child spinning first
s.connect(path)
os.write(1, b"parent connected and alive\n")
