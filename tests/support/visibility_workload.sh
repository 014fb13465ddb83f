#!/bin/sh
# Issue 15.1-15.3 attacks, each a real act the sensor must see (run inside the
# test cgroup).  $1 = a private work directory (on the same file system as
# $1/secret/key, which the test marks sensitive); $2 = a unique tag.
set -e
W=$1
T=$2
# 15.1 secret reads: cat, Python open(), a hard link, a key hunt, another
# process's environ; and one plain read that must NOT be reported.
cat /etc/shadow > /dev/null
python3 -c "open('/etc/shadow').read()"
cat "$W/elsewhere/link-to-key" > /dev/null
find "$W/home" -name id_rsa -exec cat {} \; > /dev/null
cat "$W/plain.txt" > /dev/null
python3 -c "import os; os.close(os.open('/etc/gshadow', os.O_PATH))"
sleep 30 & SL=$!
cat /proc/$SL/environ > /dev/null
kill $SL
# 15.2 exec context: a #! script in /dev/shm runs as /bin/sh; loader-env
# injection; a decoded payload piped into a shell.
S=/dev/shm/bastion-vis-$T.sh
printf '#!/bin/sh\nexit 0\n' > "$S"
chmod 700 "$S"
"$S"
rm -f "$S"
LD_PRELOAD="$W/evil-$T.so" /bin/true 2>/dev/null || true
# s31: the same preload behind 1,100 padding variables, past the kernel's scan
env $(i=0; while [ $i -lt 1100 ]; do echo "PAD$i=x"; i=$((i+1)); done) \
    LD_PRELOAD="$W/hidden-$T.so" /bin/true "padded-$T" 2>/dev/null || true
echo ZXhpdCAw | base64 -d | sh
# 15.3 execveat(memfd, "", AT_EMPTY_PATH): a script and a binary run from a memfd.
python3 - "$T" <<'PY'
import os, sys
t = sys.argv[1]
fd = os.memfd_create(f"vis-{t}", 0)          # no CLOEXEC: a script needs it open
os.write(fd, b"#!/bin/sh\nexit 0\n")
pid = os.fork()
if pid == 0:
    os.execve(fd, ["memfd-script"], {})      # fexecve -> execveat(fd, "", AT_EMPTY_PATH)
os.waitpid(pid, 0)
fd2 = os.memfd_create(f"bin-{t}", os.MFD_CLOEXEC)
with open("/bin/true", "rb") as f:
    os.write(fd2, f.read())
pid = os.fork()
if pid == 0:
    os.execve(fd2, ["memfd-bin"], {})
os.waitpid(pid, 0)
PY
# s23: a chosen modification time set by a program that is not touch (python's
# os.utime -> utimensat with explicit times), and a touch to "now" that must NOT
# be reported; another process's memory read with process_vm_readv (no ptrace).
: > "$W/stomp-$T"
touch "$W/stomp-$T"
python3 -c "import os, sys; os.utime(sys.argv[1], (1000000000, 1000000000))" "$W/stomp-$T"
sleep 30 & SL=$!
echo $SL > "$W/vm-target"
python3 - "$SL" <<'PY'
import ctypes, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
class IOV(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
with open(f"/proc/{pid}/maps") as f:
    start = next(int(l.split("-")[0], 16) for l in f if "[stack]" in l)
buf = ctypes.create_string_buffer(64)
local, remote = IOV(ctypes.addressof(buf), 64), IOV(start, 64)
libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(IOV), ctypes.c_ulong,
                                  ctypes.POINTER(IOV), ctypes.c_ulong, ctypes.c_ulong]
n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
assert n == 64, ctypes.get_errno()
PY
kill $SL
