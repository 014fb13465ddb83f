"""The kernel provenance map as user space fills and reads it (issue 15), without a
kernel: a dict stands for each BPF map."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bastion import abi
from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.base import NS
from bastion.detect.behavior.provenance import Provenance
from bastion.detect.engine import Engine, RuleContext
from bastion.enforce.provgate import default_objects
from bastion.errors import ConfigError, KernelError, Location
from bastion.events import Event, ExecEvent, NetEvent, Proc
from bastion.procstat import TICK_NS, start_ns_of
from bastion.proctable import ProcessTable
from bastion.sensors.provenance import (
    REASON_BITS, ProvenanceMap, letters_mask, publisher, reason_names,
)


class FakeMap:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def lookup(self, key: bytes) -> bytes | None:
        return self.d.get(key)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self.d[key] = value

    def delete(self, key: bytes) -> bool:
        return self.d.pop(key, None) is not None


def pmap() -> tuple[ProvenanceMap, FakeMap, FakeMap, FakeMap]:
    p, d, i = FakeMap(), FakeMap(), FakeMap()
    return ProvenanceMap(p, d, i), p, d, i


def test_letters_mask() -> None:
    assert letters_mask("c") == 1 << 2
    assert letters_mask("cE") == (1 << 2) | (1 << (26 + 4))
    with pytest.raises(ConfigError, match="option letter"):
        letters_mask("c-")


def test_dirs_are_two_prefixes_each_and_replaced_as_a_set(tmp_path: Path) -> None:
    p, d, i, ino = FakeMap(), FakeMap(), FakeMap(), FakeMap()
    m = ProvenanceMap(p, d, i, dir_inodes=ino)
    m.set_dirs(["/tmp", "/dev/shm/", "/absent-bprov"])
    assert len(ino.d) == 2 - (not Path("/dev/shm").exists())   # existing dirs by inode
    d.d = {k: v for k, v in d.d.items() if b"absent" not in k}
    got = {(abi.ProvPrefix.from_buffer_copy(k).prefixlen,
            abi.ProvPrefix.from_buffer_copy(k).path) for k in d.d}
    # "/tmp/x" under it, and "/tmp" itself (a cwd); never "/tmpfoo"
    assert got == {(40, b"/tmp/"), (40, b"/tmp"), (72, b"/dev/shm/"), (72, b"/dev/shm")}
    m.set_dirs(["/var/tmp"])
    assert {abi.ProvPrefix.from_buffer_copy(k).path for k in d.d} == {b"/var/tmp/", b"/var/tmp"}


@pytest.mark.parametrize("bad,msg", [("tmp", "not absolute"), ("/" + "x" * 70, "longer than")])
def test_bad_dirs_are_refused_by_name(bad: str, msg: str) -> None:
    m, *_ = pmap()
    with pytest.raises(ConfigError, match=msg):
        m.set_dirs([bad])


def test_add_ors_bits_of_the_same_process_and_leaves_a_reused_pid_alone() -> None:
    m, p, *_ = pmap()
    assert m.get(7) is None
    assert m.add(7, 1000, abi.PROV_TMP_SCRIPT)
    assert m.add(7, 1000, abi.PROV_NETWORK_BINARY)
    v = m.get(7)
    assert v is not None and (v.start_ns, v.origin_tgid) == (1000, 7)
    assert reason_names(v.reasons) == ["tmp-script", "network-binary"]
    assert not m.add(7, 2000, abi.PROV_DECODED_PAYLOAD)    # another process, same pid
    v = m.get(7)
    assert v is not None and v.reasons == abi.PROV_TMP_SCRIPT | abi.PROV_NETWORK_BINARY


def test_interpreters_by_inode(tmp_path: Path) -> None:
    m, _p, _d, i = pmap()
    sh = tmp_path / "sh"
    sh.write_text("")
    assert m.set_interpreters([(str(sh), "cs"), (str(tmp_path / "absent"), "c")]) == 1
    (val,) = i.d.values()
    assert abi.ProvInterp.from_buffer_copy(val).code_letters == letters_mask("cs")


def test_publisher_maps_every_rule_reason_to_a_bit() -> None:
    m, *_ = pmap()
    pub = publisher(m)
    pub((9, 5), "admin-tty")
    pub((9, 5), "network-service")
    v = m.get(9)
    assert v is not None and v.reasons == abi.PROV_ADMIN_TTY | abi.PROV_NETWORK_SERVICE
    with pytest.raises(ConfigError, match="no kernel bit"):
        pub((9, 5), "made-up")
    assert set(REASON_BITS) >= {"tmp-script", "tmp-binary", "fileless", "network-binary",
                                "network-script", "network-service", "decoded-payload"}


T0 = 1_767_225_600 * NS


def _proc(pid: int, exe: str, ppid: int = 1) -> Proc:
    return Proc(pid=pid, tid=pid, ppid=ppid, uid=0, euid=0, gid=0, cgroup_id=1,
                comm=exe.rsplit("/", 1)[-1][:15], start_ns=pid * 1000, exe=exe)


def test_the_provenance_rule_mirrors_user_space_reasons_into_the_map() -> None:
    """network-binary (a download then its exec) and network-service are known only to
    user space: the rule writes them into the kernel map under the event's start."""
    m, *_ = pmap()
    rules = behavior_rules()
    prov = next(r for r in rules if isinstance(r, Provenance))
    prov.publish = publisher(m)
    py, procs = "/usr/bin/python3.11", ProcessTable()
    eng, ctx = Engine(rules), RuleContext(procs)
    from bastion.events import FileEvent
    evs: list[Event] = [
        ExecEvent(T0, _proc(20, py), filename=py, argv=("python3", "fetch.py"), exe_dev=1,
                  exe_ino=5),
        NetEvent(T0 + NS, _proc(20, py), op="connect", family="inet", protocol="tcp",
                 daddr="10.0.0.1", dport=80),
        FileEvent(T0 + 2 * NS, _proc(20, py), op="open", path="/opt/payload", flags=0o1101),
        ExecEvent(T0 + 3 * NS, _proc(21, "/opt/payload"), filename="/opt/payload",
                  argv=("/opt/payload",), exe_dev=1, exe_ino=6),
        NetEvent(T0 + 4 * NS, _proc(22, "/usr/bin/node"), op="listen", family="inet",
                 protocol="tcp", saddr="0.0.0.0", sport=8080),
    ]
    for ev in evs:
        procs.update(ev)
        eng.evaluate(ev, ctx)
    assert not eng.errors
    v21, v22 = m.get(21), m.get(22)
    assert v21 is not None and v21.start_ns == 21 * 1000
    assert v21.reasons & abi.PROV_NETWORK_BINARY
    assert v22 is not None and v22.reasons == abi.PROV_NETWORK_SERVICE
    assert m.get(20) is None              # the downloader itself is not tainted


def test_default_objects_under_a_root(tmp_path: Path) -> None:
    for p in ("etc/cron.d", "etc/pam.d", "root/.ssh", "home/ann/.ssh"):
        (tmp_path / p).mkdir(parents=True)
    for p in ("etc/shadow", "home/ann/.bashrc"):
        (tmp_path / p).write_text("")
    got = {(o.path.removeprefix(str(tmp_path)), o.kind) for o in default_objects(str(tmp_path))}
    assert got == {("/etc/cron.d", "persistence"), ("/etc/pam.d", "persistence"),
                   ("/home/ann/.bashrc", "persistence"), ("/etc/shadow", "credential"),
                   ("/root/.ssh", "credential"), ("/home/ann/.ssh", "credential"),
                   ("/root", "profile-dir"), ("/home/ann", "profile-dir")}


class GoneMap(FakeMap):
    """A task-storage ``prov`` whose pidfd's process was reaped after the start check:
    the kernel finds no task for the pid (ENOENT), on update as on lookup."""

    def __init__(self, err: int) -> None:
        super().__init__()
        self.err = err

    def lookup(self, key: bytes) -> bytes | None:
        raise KernelError("lookup", errno=self.err, location=Location("fake prov"))

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        raise KernelError("update", errno=self.err, location=Location("fake prov"))


@pytest.mark.parametrize("err", [errno.ESRCH, errno.ENOENT])
def test_a_process_reaped_before_the_update_is_gone_not_lost(err: int) -> None:
    """Before the fix ENOENT was taken for a map that could not take the entry: the
    process was put in prov_lost and the failure counted (the host then untracked)."""
    p, lost, errs = GoneMap(err), FakeMap(), FakeMap()
    m = ProvenanceMap(p, FakeMap(), FakeMap(), errs, lost=lost, pidfd_keys=True)
    me = os.getpid()
    assert m.get(me) is None
    assert not m.add(me, start_ns_of(me), abi.PROV_TMP_SCRIPT, tolerance_ns=TICK_NS)
    assert lost.d == {} and errs.d == {}
    assert not m.untracked(me)


def test_another_update_failure_still_fails_closed() -> None:
    p, lost, errs = GoneMap(errno.ENOMEM), FakeMap(), FakeMap()
    p.lookup = lambda key: None   # type: ignore[method-assign]
    m = ProvenanceMap(p, FakeMap(), FakeMap(), errs, lost=lost, pidfd_keys=True)
    me = os.getpid()
    assert not m.add(me, start_ns_of(me), abi.PROV_TMP_SCRIPT, tolerance_ns=TICK_NS)
    assert list(lost.d) == [me.to_bytes(4, "little")]
    assert m.untracked(me)


def test_an_empty_entry_a_gate_made_reads_as_none_and_takes_reasons() -> None:
    """s16-sig: an LSM gate reads an actor without an entry with F_CREATE, which leaves an
    empty entry (no reason, no start).  It must read as no entry (the untracked check
    applies) and must not block user space's later reasons (add() compared its start 0
    with the process's and refused the write: the reasons were lost)."""
    m, p, _, _ = pmap()
    key = (4242).to_bytes(4, "little")
    p.d[key] = bytes(abi.ProvVal())
    assert m.get(4242) is None
    assert m.add(4242, 123 * TICK_NS, abi.PROV_NETWORK_SERVICE)
    got = m.get(4242)
    assert got is not None and got.reasons == abi.PROV_NETWORK_SERVICE
    assert got.start_ns == 123 * TICK_NS and got.origin_tgid == 4242


def test_gate_null_refusals_is_slot_two() -> None:
    errs = FakeMap()
    m = ProvenanceMap(FakeMap(), FakeMap(), FakeMap(), errors=errs)
    assert m.gate_null_refusals() == 0
    errs.d[(2).to_bytes(4, "little")] = (3).to_bytes(8, "little")
    assert (m.gate_null_refusals(), m.errors(), m.lost_errors()) == (3, 0, 0)
