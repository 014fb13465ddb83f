"""Tamper protection, lsm tier, on Debian's stock kernel (inside the test VM).

A TEST instance only: a guardian (``python -m bastion.cli.guard guardian``)
with a stand-in agent, protecting a tree under /tmp and the pin root
/sys/fs/bpf/bastion-test-<random>; every hook acts only on attackers in the
test cgroup and only until the dead-man deadline; the test process stays
outside the cgroup (it may kill and unpin in teardown).  Each attack must be
refused (EPERM) with the agent alive, its files and pins intact, and a
critical alert naming the attacker.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.guard.identity import ROLE_AGENT, ROLE_WRITER, Identity  # noqa: E402
from bastion.guard.kernel import fd_ids  # noqa: E402
from bastion.kernel import bpffs  # noqa: E402
from bastion.kernel.libbpf import BpfObject, Map  # noqa: E402
from bastion.paths import bpf_object  # noqa: E402
from support import map_poller  # noqa: E402
from support import tamper as T  # noqa: E402
from support.mmswap import PRCTL_OK  # noqa: E402
from support.mmswap import built as built_mmswap  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_tamper_lsm.py`"
)
RESULTS: dict[str, str] = {}
#: the HIPS spec's pinned state map, relative to the pin root (a stand-in is pinned there)
HIPS_PIN = Path("hips") / "maps" / "hips_state"
#: a HIPS lsm program's link pin, relative to the pin root (a stand-in link is pinned there)
HIPS_LINK = Path("hips") / "links" / "hips_file_open"
BPF_F_RDONLY_PROG = 1 << 7


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[T.Instance]:
    tmp = tmp_path_factory.mktemp("tamper")
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp, cg, cgid, deadline_s=200)
        # a stand-in for a HIPS pin, at the path production pins HIPS's state map (the
        # guardian's pin-root walk takes only our specs' pin names): protected by id
        # like the agent's own
        (i.pin_root / "hips" / "maps").mkdir(parents=True)
        subprocess.run(["bpftool", "map", "create", str(i.pin_root / HIPS_PIN), "type",
                        "hash", "key", "4", "value", "4", "entries", "8", "name", "hips_test"],
                       check=True)
        try:
            i.start_guardian(tier="lsm")
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-60:]))
            print("outcomes:", RESULTS)
            i.teardown()


def _refused(inst: T.Instance, name: str, argv: list[str], rule: str,
             intact: Callable[[], bool] = lambda: True) -> subprocess.CompletedProcess[str]:
    agent = inst.agent_pid()
    r = inst.attack(argv)
    assert r.returncode != 0, f"{name}: not refused: {r.stdout} {r.stderr}"
    assert r.returncode > 0, f"{name}: the attacker died ({r.returncode}) instead of EPERM"
    out = r.stdout + r.stderr
    assert "ermission" in out or "not permitted" in out or "must be superuser" in out \
        or r.returncode == 3, f"{name}: {r.stdout} {r.stderr}"
    a = inst.wait_alert(rule, lambda a: a["action"] == "denied")
    assert a["severity"] == "critical"
    assert a["process"]["uid"] == 0 and a["process"]["exe"]  # type: ignore[index]
    assert inst.agent_pid() == agent and T.proc_state(agent) in T.ALIVE, name
    assert intact(), f"{name}: protected object changed"
    RESULTS[name] = "refused (EPERM), alert " + rule
    return r


def test_01_tier_and_identity(inst: T.Instance) -> None:
    st = inst.status()
    assert st["tier"] == "lsm" and st["tamper_protection"] == "full"
    assert st["tamper_exe_identity"] == "on", st
    roles = {i["role"] for i in st["identities"]}  # type: ignore[union-attr,index]
    assert roles == {"agent", "guardian"}


@pytest.mark.parametrize("sig", ["-9", "-15", "-STOP", "-INT", "-HUP", "-QUIT", "-TSTP"])
def test_02_signals_to_agent(inst: T.Instance, sig: str) -> None:
    _refused(inst, f"kill {sig} agent", ["kill", sig, str(inst.agent_pid())], "bastion.tamper.signal")


def test_03_harmless_signal_passes(inst: T.Instance) -> None:
    r = inst.attack(["kill", "-CONT", str(inst.agent_pid())])
    assert r.returncode == 0, r.stderr
    RESULTS["kill -CONT agent"] = "allowed (harmless)"


def test_04_kill_guardian(inst: T.Instance) -> None:
    assert inst.guardian is not None
    _refused(inst, "kill -9 guardian", ["kill", "-9", str(inst.guardian.pid)], "bastion.tamper.signal")
    assert inst.guardian.poll() is None


def test_05_pkill(inst: T.Instance) -> None:
    agent = inst.agent_pid()
    r = inst.attack(["pkill", "-9", "-f", T.AGENT_MARK])
    assert inst.agent_pid() == agent and T.proc_state(agent) in T.ALIVE
    inst.wait_alert("bastion.tamper.signal", lambda a: a["process"]["exe"].endswith(("pkill", "pgrep")))  # type: ignore[index]
    RESULTS["pkill -9 -f agent"] = f"refused (pkill rc {r.returncode})"


def test_06_pidfd_send_signal(inst: T.Instance) -> None:
    _refused(inst, "pidfd_send_signal SIGKILL", [T.PY, "-c", T.py_pidfd_kill(inst.agent_pid())],
             "bastion.tamper.signal")


@pytest.mark.parametrize("req", [T.PTRACE_ATTACH, T.PTRACE_SEIZE])
def test_07_ptrace(inst: T.Instance, req: int) -> None:
    _refused(inst, f"ptrace {'attach' if req == T.PTRACE_ATTACH else 'seize'}",
             [T.PY, "-c", T.py_ptrace(inst.agent_pid(), req)], "bastion.tamper.ptrace")


def test_08_proc_mem_write(inst: T.Instance) -> None:
    _refused(inst, "/proc/pid/mem write", [T.PY, "-c", T.py_proc_mem(inst.agent_pid())],
             "bastion.tamper.ptrace")


def test_09_process_vm_writev(inst: T.Instance) -> None:
    _refused(inst, "process_vm_writev", [T.PY, "-c", T.py_vm_writev(inst.agent_pid())],
             "bastion.tamper.ptrace")


def _policy_ok(inst: T.Instance) -> Callable[[], bool]:
    return lambda: (inst.etc / "policy.yaml").read_text() == "version: 1\n"


def test_10_files(inst: T.Instance) -> None:
    pol = inst.etc / "policy.yaml"
    ok = _policy_ok(inst)
    tree_ok = lambda: (inst.install / "lib" / "agent.py").read_text() == "print('agent')\n"  # noqa: E731
    _refused(inst, "rm -rf install tree", ["rm", "-rf", str(inst.install)],
             "bastion.tamper.unlink", tree_ok)
    _refused(inst, "truncate -s0 policy", ["truncate", "-s0", str(pol)],
             "bastion.tamper.open-write", ok)
    _refused(inst, "truncate(2) policy", [T.PY, "-c", f"import os; os.truncate({str(pol)!r}, 0)"],
             "bastion.tamper.truncate", ok)
    _refused(inst, "overwrite policy (>)", ["sh", "-c", f"echo evil > {pol}"],
             "bastion.tamper.open-write", ok)
    _refused(inst, "append policy (>>)", ["sh", "-c", f"echo evil >> {pol}"],
             "bastion.tamper.open-write", ok)
    _refused(inst, "mv config dir", ["mv", str(inst.etc), str(inst.root / "moved")],
             "bastion.tamper.rename", ok)
    _refused(inst, "mv over policy", ["sh", "-c", f"echo evil > {inst.root}/x && mv {inst.root}/x {pol}"],
             "bastion.tamper.rename", ok)
    _refused(inst, "ln hard link of policy", ["ln", str(pol), str(inst.root / "hl")],
             "bastion.tamper.link", ok)
    _refused(inst, "chmod 666 policy", ["chmod", "666", str(pol)], "bastion.tamper.setattr", ok)
    _refused(inst, "chown nobody policy", ["chown", "nobody", str(pol)], "bastion.tamper.setattr", ok)
    _refused(inst, "setxattr policy", [T.PY, "-c", f"import os; os.setxattr({str(pol)!r}, 'user.x', b'1')"],
             "bastion.tamper.setxattr", ok)
    _refused(inst, "create file in install tree", ["touch", str(inst.install / "bin" / "evil")],
             "bastion.tamper.create", lambda: not (inst.install / "bin" / "evil").exists())
    _refused(inst, "mkdir in install tree", ["mkdir", str(inst.install / "evil")],
             "bastion.tamper.create")
    _refused(inst, "rename ancestor of config", ["mv", str(inst.etc.parent), str(inst.root / "etc2")],
             "bastion.tamper.rename", ok)


def test_11_store(inst: T.Instance) -> None:
    db = next(inst.data.glob("*.db"))
    before = db.stat().st_size
    r = inst.attack(["sqlite3", str(db), "UPDATE alerts SET severity = 0; DELETE FROM alerts;"])
    assert r.returncode != 0, r.stdout + r.stderr
    inst.wait_alert("bastion.tamper.open-write", lambda a: "sqlite3" in a["process"]["exe"])  # type: ignore[index]
    assert db.stat().st_size >= before
    assert len(inst.alerts()) > 5
    RESULTS["sqlite3 edit of the store"] = "refused (write-open EPERM; sqlite falls back to read-only)"
    _refused(inst, "rm chain key", ["rm", "-f", str(inst.data / "alert-chain.key")],
             "bastion.tamper.unlink", lambda: (inst.data / "alert-chain.key").exists())
    # issue 14.7: the chain's anchor (count, head) beside the store is as protected as the store
    anchor = inst.data / "alert-chain.anchor"
    assert anchor.exists()
    anchored = lambda: b'"count":' in anchor.read_bytes() and b'"hmac":' in anchor.read_bytes()  # noqa: E731
    _refused(inst, "overwrite chain anchor", ["sh", "-c", f"echo '{{\"count\":0}}' > {anchor}"],
             "bastion.tamper.open-write", anchored)
    _refused(inst, "rm chain anchor", ["rm", "-f", str(anchor)], "bastion.tamper.unlink", anchored)


def test_12_mounts(inst: T.Instance) -> None:
    ok = _policy_ok(inst)
    _refused(inst, "tmpfs over config dir", ["mount", "-t", "tmpfs", "none", str(inst.etc)],
             "bastion.tamper.mount", ok)
    (inst.root / "decoy").mkdir(exist_ok=True)
    _refused(inst, "bind mount over install dir", ["mount", "--bind", str(inst.root / "decoy"),
                                                   str(inst.install / "lib")],
             "bastion.tamper.mount", lambda: (inst.install / "lib" / "agent.py").exists())
    _refused(inst, "umount -l /sys/fs/bpf", ["umount", "-l", "/sys/fs/bpf"], "bastion.tamper.umount",
             lambda: (inst.pin_root / "tamper" / "links").is_dir())


def test_13_pins(inst: T.Instance) -> None:
    pins = lambda: len(list((inst.pin_root / "tamper" / "links").iterdir())) >= 10  # noqa: E731
    _refused(inst, "mv pin dir", ["mv", str(inst.pin_root / "tamper"), str(inst.pin_root / "gone")],
             "bastion.tamper.rename", pins)
    _refused(inst, "rm a pinned link", ["rm", "-f", str(inst.pin_root / "tamper" / "links" / "tamper_task_kill")],
             "bastion.tamper.unlink", pins)
    _refused(inst, "rm -rf pin root", ["rm", "-rf", str(inst.pin_root)], "bastion.tamper.unlink", pins)


def test_14_bpf_objects(inst: T.Instance) -> None:
    maps = inst.pin_root / "tamper" / "maps"
    _refused(inst, "bpftool map update (identity map)",
             ["bpftool", "map", "update", "pinned", str(maps / "tamper_idents"), "key", "1", "0", "0",
              "0", "value", *(["0"] * 24)], "bastion.tamper.bpf-map-fd")
    _refused(inst, "bpftool map delete (protected set)",
             ["sh", "-c", f"k=$(bpftool -j map dump pinned {maps}/tamper_objs | python3 -c "
                          "'import json,sys; print(\" \".join(str(int(b,16)) for b in json.load(sys.stdin)[0][\"key\"]))'); "
                          f"bpftool map delete pinned {maps}/tamper_objs key $k"],
             "bastion.tamper.bpf-map-fd")
    _refused(inst, "bpftool map update (HIPS pin)",
             ["bpftool", "map", "update", "pinned", str(inst.pin_root / HIPS_PIN), "key",
              "1", "0", "0", "0", "value", "1", "0", "0", "0"], "bastion.tamper.bpf-map-fd")
    _refused(inst, "bpftool map freeze", ["bpftool", "map", "freeze", "pinned", str(maps / "tamper_sbs")],
             "bastion.tamper.bpf-map-fd")
    _refused(inst, "bpftool link detach",
             ["bpftool", "link", "detach", "pinned", str(inst.pin_root / "tamper" / "links" / "tamper_task_kill")],
             "bastion.tamper.bpf-link")
    # still enforcing after all that
    _refused(inst, "kill -9 agent after bpf attacks", ["kill", "-9", str(inst.agent_pid())],
             "bastion.tamper.signal")



# An attacker's way to a write-mode fd of one of our maps, by id or by pin
# (libbpf's calls, as bpftool makes them).  Exit 1 and the errno when refused.
# ``ro-write``: a read-only fd by id, then a socket filter that writes the map through
# it (BPF_LD_IMM64 of the fd + bpf_map_update_elem: the verifier ignores the fd's mode);
# exit 0 and "loaded writer" when the program that writes our map loads.
FD_GETTER = """\
import ctypes, os, struct, sys
lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
class Opts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("open_flags", ctypes.c_uint32)]
how, what = sys.argv[1], sys.argv[2]
if how == "rw-id":
    fd = lib.bpf_map_get_fd_by_id(ctypes.c_uint32(int(what)))
elif how in ("ro-id", "ro-write"):
    o = Opts(ctypes.sizeof(Opts), 1 << 3)   # BPF_F_RDONLY
    fd = lib.bpf_map_get_fd_by_id_opts(ctypes.c_uint32(int(what)), ctypes.byref(o))
else:
    fd = lib.bpf_obj_get(what.encode())
if fd < 0:
    print("refused:", os.strerror(-fd))
    sys.exit(1)
print("got fd", fd)
if how == "ro-write":
    def insn(code, dst=0, src=0, off=0, imm=0):
        return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
    code = b"".join((insn(0x62, 10, 0, -4, 0), insn(0x62, 10, 0, -8, 1), insn(0xbf, 2, 10),
                     insn(0x07, 2, imm=-4), insn(0xbf, 3, 10), insn(0x07, 3, imm=-8),
                     insn(0xb7, 4), insn(0x18, 1, 1, imm=fd), insn(0), insn(0x85, imm=2),
                     insn(0xb7, 0), insn(0x95)))
    lib.bpf_prog_load.restype = ctypes.c_int
    lib.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                  ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
    pfd = lib.bpf_prog_load(1, b"map_writer", b"GPL", code, len(code) // 8, None)
    print("loaded writer" if pfd >= 0 else f"writer refused: {os.strerror(-pfd)}")
"""


def _map_show(path: Path) -> dict[str, object]:
    """bpftool's view of a pinned map, from the test process (out of scope)."""
    r = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(path)], capture_output=True,
                       text=True, check=True)
    out: dict[str, object] = json.loads(r.stdout)
    return out


def _count(inst: T.Instance, rule: str) -> int:
    return sum(1 for a in inst.alerts() if a["rule"] == rule)


def test_14a_write_mode_map_fds_refused(inst: T.Instance) -> None:
    """BPF_MAP_GET_FD_BY_ID / BPF_OBJ_GET of our maps asking for write: EPERM and an
    alert (lsm bpf_map hook); a read-only fd of a BPF_F_RDONLY_PROG map (the identities)
    still works: the control client's identity check."""
    maps = inst.pin_root / "tamper" / "maps"
    mid = int(_map_show(maps / "tamper_idents")["id"])  # type: ignore[call-overload]
    hips = inst.pin_root / HIPS_PIN
    for name, argv in (
            ("BPF_MAP_GET_FD_BY_ID read-write (identity map)", [T.PY, "-c", FD_GETTER, "rw-id", str(mid)]),
            ("BPF_OBJ_GET read-write (identity map pin)",
             [T.PY, "-c", FD_GETTER, "pin", str(maps / "tamper_idents")]),
            ("BPF_OBJ_GET read-write (HIPS pin)", [T.PY, "-c", FD_GETTER, "pin", str(hips)]),
            ("bpftool map dump id (read-write fd)", ["bpftool", "map", "dump", "id", str(mid)])):
        before = _count(inst, "bastion.tamper.bpf-map-fd")
        _refused(inst, name, argv, "bastion.tamper.bpf-map-fd")
        deadline = time.monotonic() + 5
        while _count(inst, "bastion.tamper.bpf-map-fd") <= before:
            assert time.monotonic() < deadline, f"{name}: no new bpf-map-fd alert"
            time.sleep(0.1)
    last = [a for a in inst.alerts() if a["rule"] == "bastion.tamper.bpf-map-fd"][-1]
    ev = last["evidence"]
    assert isinstance(ev, dict) and ev["obj_id"] == mid and ev["arg"] & 2, ev   # FMODE_WRITE
    ro = inst.attack([T.PY, "-c", FD_GETTER, "ro-id", str(mid)])
    assert ro.returncode == 0 and "got fd" in ro.stdout, ro.stdout + ro.stderr
    RESULTS["read-only fd of our map"] = "allowed"


# A socket filter that writes one of our maps through bpf_map_update_elem:
#   *(u32 *)(r10 - 4) = 0; *(u32 *)(r10 - 8) = 1; r2 = r10 - 4; r3 = r10 - 8; r4 = 0;
#   r1 = <map fd>; call bpf_map_update_elem; r0 = 0; exit
def _writer_insns(map_fd: int) -> bytes:
    def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
        return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
    return b"".join((
        insn(0x62, 10, 0, -4, 0), insn(0x62, 10, 0, -8, 1),
        insn(0xbf, 2, 10), insn(0x07, 2, imm=-4), insn(0xbf, 3, 10), insn(0x07, 3, imm=-8),
        insn(0xb7, 4), insn(0x18, 1, 1, imm=map_fd), insn(0),   # ld_imm64, BPF_PSEUDO_MAP_FD
        insn(0x85, imm=2), insn(0xb7, 0), insn(0x95)))


def _load_writer(map_path: Path) -> int:
    """-errno of loading the writer against the pinned map (root, out of scope), or 0."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_prog_load.restype = ctypes.c_int
    lib.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                  ctypes.c_size_t, ctypes.c_void_p]
    with Map.open_pinned(map_path) as m:
        code = _writer_insns(m.fd)
        fd = int(lib.bpf_prog_load(1, b"map_writer", b"GPL", code, len(code) // 8, None))
    if fd >= 0:
        os.close(fd)
        return 0
    return fd


def test_14b_rdonly_prog_maps_refuse_program_writes(inst: T.Instance) -> None:
    """A BPF program root loads cannot write our maps through helpers (the lsm bpf hook
    sees only syscall commands): they are BPF_F_RDONLY_PROG and the verifier refuses."""
    maps = inst.pin_root / "tamper" / "maps"
    for name in ("tamper_idents", "tamper_objs", "tamper_sbs", "tamper_map_ids", "tamper_link_ids"):
        flags = int(_map_show(maps / name)["flags"])  # type: ignore[call-overload]
        assert flags & BPF_F_RDONLY_PROG, f"{name}: flags {flags:#x}"
    # positive control: the same program loads against a map created without the flag
    assert _load_writer(inst.pin_root / HIPS_PIN) == 0
    for name in ("tamper_sbs", "tamper_map_ids", "tamper_link_ids"):   # u32 -> u32 maps
        rc = _load_writer(maps / name)
        assert rc == -errno.EACCES, f"{name}: a program writing it loaded ({rc})"
    RESULTS["BPF program writes our map (bpf_map_update_elem)"] = "verifier refuses (EACCES)"


def _bpftool_json(*argv: str) -> dict[str, object]:
    r = subprocess.run(["bpftool", "-j", *argv], capture_output=True, text=True, check=True)
    out: dict[str, object] = json.loads(r.stdout)
    return out


def test_14c_unpinned_map_of_our_pinned_program(inst: T.Instance) -> None:
    """A map one of our pinned programs uses but that is not pinned itself (a program's
    ``.bss``, like the HIPS verdict cache or a sensor's scratch map): found the attacker's
    way (pinned link -> its program -> the program's map_ids), a write-mode fd of it by id
    and a ``bpftool map update id`` are refused, and (s21 F8) a read-only fd too, with
    which a program of root's could write it.  The object is pinned after the guardian
    armed, as the agent pins its HIPS object, at a HIPS link's pin name; its map ids are
    registered as the agent's ObjectGuard registers what it loads."""
    o = BpfObject.open(bpf_object("integrity_testtp.bpf.o"), rodata={"cfg_target_tgid": os.getpid()})
    link = None
    try:
        o.load()
        link = o.program("tt_rename").attach()
        pin = bpffs.pin_dir(inst.pin_root / HIPS_LINK.parent) / HIPS_LINK.name
        link.pin(pin)
        prog = int(_bpftool_json("link", "show", "pinned", str(pin))["prog_id"])  # type: ignore[call-overload]
        map_ids = _bpftool_json("prog", "show", "id", str(prog))["map_ids"]
        assert isinstance(map_ids, list)
        names = {int(m): str(_bpftool_json("map", "show", "id", str(m))["name"]) for m in map_ids}
        mid = next(m for m, n in names.items() if n.endswith(".bss"))
        with Map.open_pinned(inst.pin_root / "tamper" / "maps" / "tamper_map_ids") as ids:
            # registered as the agent registers the objects it loads (ObjectGuard): since
            # s21 (F6) the guardian's walk takes a pinned program's maps only when it
            # loaded that program (root's link at a free name put 64 maps in the set)
            ids.update(mid.to_bytes(4, "little"), (1).to_bytes(4, "little"))
        before = _count(inst, "bastion.tamper.bpf-map-fd")
        _refused(inst, "BPF_MAP_GET_FD_BY_ID read-write (unpinned .bss of a pinned program)",
                 [T.PY, "-c", FD_GETTER, "rw-id", str(mid)], "bastion.tamper.bpf-map-fd")
        _refused(inst, "bpftool map update id (unpinned .bss of a pinned program)",
                 ["bpftool", "map", "update", "id", str(mid), "key", "0", "0", "0", "0", "value",
                  *(["1"] + ["0"] * 7)], "bastion.tamper.bpf-map-fd")
        # _refused's wait is satisfied by any earlier alert of the rule: wait for both
        # of this test's own (the VM run once counted the second before it was written)
        deadline = time.monotonic() + 10
        while _count(inst, "bastion.tamper.bpf-map-fd") < before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _count(inst, "bastion.tamper.bpf-map-fd") >= before + 2
        last = [a for a in inst.alerts() if a["rule"] == "bastion.tamper.bpf-map-fd"][-1]
        assert isinstance(last["evidence"], dict) and last["evidence"]["obj_id"] == mid
        # s21 review F8: a read-only fd was enough for a program of root's to write the
        # .bss (the verifier ignores the fd's mode): refused for a map programs can write
        r = _refused(inst, "BPF_MAP_GET_FD_BY_ID read-only + a program writing it (unpinned .bss)",
                     [T.PY, "-c", FD_GETTER, "ro-write", str(mid)], "bastion.tamper.bpf-map-fd")
        assert "loaded writer" not in r.stdout, r.stdout
        deadline = time.monotonic() + 10
        while _count(inst, "bastion.tamper.bpf-map-fd") < before + 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        last = [a for a in inst.alerts() if a["rule"] == "bastion.tamper.bpf-map-fd"][-1]
        assert isinstance(last["evidence"], dict) and last["evidence"]["obj_id"] == mid
        assert not last["evidence"]["arg"] & 2, last["evidence"]      # a read-only fd (FMODE_READ)
        # positive control: the same attack on a map root made itself loads its writer
        subprocess.run(["bpftool", "map", "create", "/sys/fs/bpf/s21_own_map", "type", "hash",
                        "key", "4", "value", "4", "entries", "8", "name", "s21own"], check=True)
        try:
            oid = int(_map_show(Path("/sys/fs/bpf/s21_own_map"))["id"])  # type: ignore[call-overload]
            ok = inst.attack([T.PY, "-c", FD_GETTER, "ro-write", str(oid)])
            assert ok.returncode == 0 and "loaded writer" in ok.stdout, ok.stdout + ok.stderr
        finally:
            os.unlink("/sys/fs/bpf/s21_own_map")
        RESULTS["write-mode or read-only fd / update of an unpinned map of our program"] = \
            "refused (a program writing it through a read-only fd cannot be loaded)"
    finally:
        if link is not None:
            link.unpin()
            link.destroy()
        o.close()


def test_14d_maps_made_by_ours_are_protected_from_their_creation(inst: T.Instance) -> None:
    """s20-mapbirth: a root attacker polls GET_NEXT_ID/GET_FD_BY_ID while an enrolled
    process (this test, enrolled beside the agent) makes maps whose ids nobody entered in
    ``tamper_map_ids`` (the window before the loader's hook, seconds for a large policy
    object).  Every such map refuses it a write-mode fd from its creation (the guardian's
    tamper object marked it at bpf_map_alloc_security / bpf_map_create); a map the
    attacker made itself stays writable; no read-only fd of ours either (s21: they are not
    BPF_F_RDONLY_PROG, a program could write them through one)."""
    idents = inst.pin_root / "tamper" / "maps" / "tamper_idents"
    me = Identity.of(os.getpid(), ROLE_WRITER)
    made: list[int] = []
    p = None
    with Map.open_pinned(idents) as m:
        m.update(me.key(), me.value())         # the test process is out of scope: it may write
    try:
        prefix = f"mb{os.getpid() % 100000}_"
        p = map_poller.start(inst.cg, prefix, 3.0, write=True)
        for i in range(6):
            made.append(map_poller.create_map(f"{prefix}{i}"))
            time.sleep(0.1)
        rc, lines = map_poller.outcome(p)
        got = [x for x in lines if "fd" in x or "wrote" in x]
        assert not got, f"the attacker got write fds of maps made by ours: {got}"
        ours = {fd_ids(fd)["map"] for fd in made}
        # s21 F8: not even a read-only fd (to read the name), so refused by id: it saw
        # every one of ours and got no fd of any
        refused = {int(str(x["refused_id"])) for x in lines if "refused_id" in x}
        assert ours <= refused, lines
        assert not [x for x in lines if "refused" in x], lines      # no name was readable
        assert all(x["errno"] == errno.EPERM for x in lines if "refused_id" in x), lines
        assert rc == 0, lines
        inst.wait_alert("bastion.tamper.bpf-map-fd", lambda a: a["action"] == "denied"
                        and a["evidence"]["obj_id"] in ours, timeout=10)  # type: ignore[index]
        mid = fd_ids(made[0])["map"]
        # s21 review F8: not BPF_F_RDONLY_PROG, so no read-only fd either (a program of
        # root's could write it through one)
        ro = inst.attack([T.PY, "-c", FD_GETTER, "ro-id", str(mid)])
        assert ro.returncode != 0 and "got fd" not in ro.stdout, ro.stdout + ro.stderr
        # the mark set itself is written by programs: no fd of it at all, read-only included
        born = [m for m in json.loads(subprocess.run(["bpftool", "-j", "map", "show"], text=True,
                                                     capture_output=True, check=True).stdout)
                if m.get("name") == "tamper_born_map"]
        assert born, "no tamper_born_maps"
        for m in born:
            r = inst.attack([T.PY, "-c", FD_GETTER, "ro-id", str(m["id"])])
            assert r.returncode != 0 and "got fd" not in r.stdout, r.stdout + r.stderr
        RESULTS["write-mode fd of a map of ours before its id is entered"] = "refused from creation"
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
        for fd in made:
            os.close(fd)
        with Map.open_pinned(idents) as m:
            m.delete(me.key())


def test_15_bpftool_still_shows(inst: T.Instance) -> None:
    """What an administrator (in the attacker's cgroup) can still list.  bpftool 7.1
    asks for read-write map fds even to show or dump (7.2+ asks read-only): our maps
    refuse those, so `map show` stops at the first of them and `map dump` is refused."""
    out = {}
    for what in (["link", "show"], ["prog", "show"]):
        r = inst.attack(["bpftool", "-j", *what])
        out[" ".join(what)] = (r.returncode, "tamper_" in r.stdout, r.stdout.count('"id"'))
        assert r.returncode == 0, r.stderr
        if what[0] != "link":          # link entries carry no names
            assert "tamper_" in r.stdout, what
    r = inst.attack(["bpftool", "-j", "map", "show"])
    out["map show"] = (r.returncode, "tamper_" in r.stdout, r.stdout.count('"id"'))
    assert r.returncode != 0 and "not permitted" in r.stdout + r.stderr, r.stdout + r.stderr
    r = inst.attack(["bpftool", "map", "dump", "pinned", str(inst.pin_root / "tamper" / "maps" / "tamper_idents")])
    out["map dump (identities)"] = (r.returncode, "", len(r.stdout))
    assert r.returncode != 0
    RESULTS["bpftool link/prog show allowed; map show/dump (read-write fds) refused"] = str(out)


def test_16_pid_reuse_is_not_exempt(inst: T.Instance) -> None:
    """An attacker given the agent's identity entry with a wrong start time or exe is
    still refused; with its exact identity it is exempt (the positive control)."""
    pol = inst.etc / "policy.yaml"
    code = ("import sys, os, time; sys.stdin.readline(); "
            f"fd = os.open({str(pol)!r}, os.O_WRONLY | os.O_APPEND); print('opened')")
    idents = Map.open_pinned(inst.pin_root / "tamper" / "maps" / "tamper_idents")
    try:
        for fake, expect_ok in (("start", False), ("exe", False), (None, True)):
            p = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {inst.cg}/cgroup.procs && exec "$@"', "sh",
                                  T.PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            real = Identity.of(p.pid, ROLE_AGENT)
            ident = Identity(real.tgid, real.start_ticks + (1 if fake == "start" else 0),
                             real.exe_ino + (1 if fake == "exe" else 0), real.exe_dev, ROLE_AGENT)
            idents.update(ident.key(), ident.value())   # the test process is out of scope
            try:
                out, err = p.communicate("go\n", timeout=20)
            finally:
                idents.delete(ident.key())
            assert (p.returncode == 0) is expect_ok, (fake, out, err)
        (inst.etc / "policy.yaml").write_text("version: 1\n")   # the exempt one may have touched it
    finally:
        idents.close()
    RESULTS["pid reuse (same pid, other start/exe)"] = "refused; exact identity exempt"


@pytest.fixture(scope="module")
def mmswap() -> Iterator[Path]:
    """The executable-identity attack (tests/support/mmswap.c), where nobody can run it."""
    with built_mmswap() as prog:
        yield prog


@pytest.mark.parametrize("mode,uid", [("exe-file", 0), ("map", 65534), ("map32", 65534),
                                      ("maphi", 65534), ("exehi", 0), ("vmshare", 65534),
                                      ("threads", 65534)])
def test_16a_exe_identity_change_refused(inst: T.Instance, mmswap: Path, mode: str,
                                         uid: int) -> None:
    """s27 review 2: a process takes another program's identity (``mm->exe_file``: what
    HIPS ``exe:`` subjects, the loader allowlist and trusted installers are keyed on):
    root with ``PR_SET_MM_EXE_FILE``, anybody with ``unshare(CLONE_NEWUSER)`` +
    ``PR_SET_MM_MAP``, also by the ia32 entry (``map32``: ``int $0x80``, which the compat
    tier's syscall tracepoint never sees), and with upper bits in arg2 (``maphi``,
    ``exehi``: the kernel keeps the low 32; they passed the first fix, s28 review), and
    by a clone(CLONE_VM) child for its parent (``vmshare``: the identity is the mm's).
    Before the fix all ran on as /usr/bin/true
    (exit 0); now ``lsm/task_prctl`` refuses the change (EPERM), the identity stays, the
    alert names the sub-option."""
    argv = [str(mmswap), mode, "/usr/bin/true"]
    if uid:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    agent = inst.agent_pid()
    seen = inst.settled_alerts()
    r = inst.attack(argv)
    assert r.returncode == 3 and "prctl=-1 errno=1\n" in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert f"exe={mmswap}\n" in r.stdout and "watcher saw" not in r.stdout, r.stdout
    opt = 13 if mode.startswith("exe") else 14
    a = inst.wait_alert("bastion.tamper.exe-identity",
                        lambda a: a["action"] == "denied" and a["process"]["uid"] == uid,
                        after=seen)
    assert a["severity"] == "critical" and a["evidence"]["arg"] == opt, a
    assert str(a["process"]["exe"]).endswith("/mmswap"), a
    assert inst.agent_pid() == agent
    RESULTS[f"exe identity ({mode})"] = "refused (EPERM), alert bastion.tamper.exe-identity"


def test_16c_a_map_that_keeps_the_executable_is_refused_without_an_alarm(
        inst: T.Instance, mmswap: Path) -> None:
    """liblxc's setproctitle ("[lxc monitor]") and ``criu check`` call ``PR_SET_MM_MAP``
    with exe_fd -1.  Refused all the same (the exe_fd is user memory a thread could
    change after the hook read it), but it raises no critical alert at every container
    start (s28 review)."""
    seen = inst.settled_alerts()
    r = inst.attack(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     str(mmswap), "keep", "/usr/bin/true"])
    assert r.returncode == 3 and "prctl=-1 errno=1\n" in r.stdout, (r.returncode, r.stdout)
    time.sleep(2.0)
    assert not [a for a in inst.alerts()[seen:] if a["rule"] == "bastion.tamper.exe-identity"]


def test_16b_other_prctls_pass(inst: T.Instance) -> None:
    """task_prctl's default return is -ENOSYS ("not an LSM's option"): our program's 0
    must leave every other prctl to the kernel, in scope too: a name, the map-size query
    and the dumpable flag answer as without protection."""
    r = inst.attack_py(PRCTL_OK)
    assert r.returncode == 0 and r.stdout.split() == ["ok", "b'renamed'", "104", "1"], \
        (r.returncode, r.stdout, r.stderr)


def test_17_guardian_crash_enforcement_outlives_and_adopt(inst: T.Instance) -> None:
    assert inst.guardian is not None
    agent = inst.agent_pid()
    inst.guardian.kill()               # a crash: the test is out of scope
    inst.guardian.wait(10)
    inst.gsock.unlink(missing_ok=True)
    r = inst.attack(["kill", "-9", str(agent)])
    assert r.returncode != 0 and T.proc_state(agent) in T.ALIVE, "no enforcement without guardian"
    r = inst.attack(["sh", "-c", f"echo evil >> {inst.etc / 'policy.yaml'}"])
    assert r.returncode != 0
    inst.start_guardian(tier="lsm", wait_agent=False)
    st = inst.status()
    assert st["adopted"] is True and st["agent_pid"] == agent, st
    _refused(inst, "kill -9 agent after guardian restart", ["kill", "-9", str(agent)],
             "bastion.tamper.signal")
    RESULTS["guardian crash"] = "enforcement stayed pinned; restarted guardian adopted pins and agent"


def test_18_break_glass(inst: T.Instance) -> None:
    resp = inst.stop(inst.wrong_file)
    assert resp["done"] is False and "wrong token" in str(resp["error"])
    inst.wait_alert("bastion.tamper.bad-token")
    assert (inst.pin_root / "tamper").exists()
    time.sleep(1.2)                     # the back-off after one failure
    agent = inst.agent_pid()
    resp = inst.stop(inst.token_file)
    assert resp["done"] is True, resp
    assert inst.guardian is not None
    assert inst.guardian.wait(30) == 0
    assert not (inst.pin_root / "tamper").exists()
    for _ in range(50):
        if T.proc_state(agent) == "gone":
            break
        time.sleep(0.1)
    assert T.proc_state(agent) in ("gone", "Z")
    rules = [a["rule"] for a in inst.alerts()]
    assert "bastion.tamper.maintenance" in rules and "bastion.tamper.protection-off" in rules
    r = subprocess.run([T.PY, "-m", "bastion.cli.main", "log", "verify", "--data-dir", str(inst.data)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    RESULTS["break-glass"] = "wrong token refused+alerted; right token removed protection and stopped"
