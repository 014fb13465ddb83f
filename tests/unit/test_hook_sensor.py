"""The kernel-first sensor's Python side and object shape (no root, no kernel load)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion import abi
from bastion.assembly import event_sensor
from bastion.errors import KernelError
from bastion.kernel.libbpf import BpfObject
from bastion.sensors.bpf import HOOK_OPTIONAL_PROGRAMS, BpfSensor, HookSensor

pytestmark = pytest.mark.unit
OBJ = Path(__file__).resolve().parents[2] / "build" / "bpf" / "lsm_events.bpf.o"


def test_spec_names_the_hook_object_and_its_filters() -> None:
    s = HookSensor(self_tgid=11, cgroup_id=5, open_dedup_s=0.25, open_reads=True)
    spec = s.spec()
    assert spec.path.name == "lsm_events.bpf.o"
    assert spec.rodata["cfg_open_dedup_ns"] == 250_000_000
    assert spec.rodata["cfg_self_tgid"] == 11 and spec.rodata["cfg_cgroup_id"] == 5
    assert spec.rodata["cfg_open_reads"] == 1
    # one sensitive set for both sensors: the same rodata switch, map and patterns
    assert spec.rodata["cfg_sensitive"] == 1 and s.sensitive == BpfSensor().sensitive
    assert HookSensor(sensitive=()).spec().rodata["cfg_sensitive"] == 0
    assert spec.optional == HOOK_OPTIONAL_PROGRAMS
    assert (s.name, BpfSensor().name) == ("lsm-hooks", "bpf")
    assert s.source.startswith("kernel hooks") and BpfSensor.source == "tracepoints"


def test_negative_dedup_window_is_refused() -> None:
    with pytest.raises(KernelError, match="open_dedup_s"):
        HookSensor(open_dedup_s=-1)


def test_quiet_tgids_deduplicated_and_positive() -> None:
    assert HookSensor(quiet_tgids=[0, 7, 7, -1, 9]).quiet_tgids == (7, 9)


def test_map_use_before_open_is_an_error() -> None:
    with pytest.raises(KernelError, match="not open"):
        HookSensor().quiet(1)


def test_assembly_picks_the_sensor_by_event_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_GUARDIAN_PID", "4242")
    hooks = event_sensor("hooks", classes=("exec",))
    assert isinstance(hooks, HookSensor)
    assert hooks.quiet_tgids == (os.getpid(), 4242)
    assert hooks.mask == 1 << abi.EVENT_CLASSES["exec"]
    tp = event_sensor("tracepoints")
    assert type(tp) is BpfSensor
    with pytest.raises(KernelError, match="unknown event source"):
        event_sensor("kprobes")


@pytest.mark.skipif(not OBJ.exists(), reason="make bpf first")
def test_hook_object_uses_no_syscall_tracepoint() -> None:
    with BpfObject.open(OBJ) as obj:
        secs = {p.name: p.section_name for p in obj.programs()}
    assert secs, "no programs"
    bad = {n: s for n, s in secs.items()
           if not s.startswith(("fentry/security_", "fexit/", "tp_btf/sched_process_"))
           and s != "fentry/vfs_utimes"}   # where every utimes call meets, with a struct path
    assert not bad, bad
    # every hook the issue lists is there
    for prog in ("on_exec", "on_file_open", "on_path_unlink", "on_path_rename", "on_path_chmod",
                 "on_path_link",
                 "on_socket_connect", "on_socket_bind", "on_socket_listen", "on_accept",
                 "on_task_kill", "on_ptrace_access", "on_bpf"):
        assert prog in secs, prog
    assert set(HOOK_OPTIONAL_PROGRAMS) <= set(secs)


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, *, hooks: bool, lsm_attach: bool,
                 lsms: list[str]) -> None:
    from bastion.enforce import tiers

    monkeypatch.setattr(tiers, "_lsm_list", lambda: lsms)
    monkeypatch.setattr(tiers.BTF_FILE.__class__, "exists", lambda self: True)
    monkeypatch.setattr(tiers.bpffs, "ensure_bpffs", lambda: None)
    monkeypatch.setattr(tiers.bpffs, "cgroup2_root", lambda: Path("/sys/fs/cgroup"))
    monkeypatch.setattr(tiers, "_quiet_try_load", lambda name: (hooks, "" if hooks else "EPERM"))
    monkeypatch.setattr(tiers, "_try_load", lambda name, skip=frozenset(): (True, ""))
    monkeypatch.setattr(tiers, "_events_skipped", lambda: frozenset())
    monkeypatch.setattr(tiers, "_probe_lsm", lambda: (lsm_attach, "" if lsm_attach else "EPERM"))
    monkeypatch.setattr(tiers, "_fanotify_ok", lambda: (True, ""))


@pytest.mark.parametrize("hooks,lsm_attach,lsms,tier,source,detail", [
    (True, True, ["capability", "bpf"], "lsm", "hooks", ""),
    (True, True, ["capability", "apparmor"], "compat", "hooks", "fentry"),   # lsm= without bpf
    (False, False, ["capability", "bpf"], "compat", "tracepoints", "unavailable"),  # locked
])
def test_probe_chooses_the_event_source(monkeypatch: pytest.MonkeyPatch, hooks: bool,
                                        lsm_attach: bool, lsms: list[str], tier: str,
                                        source: str, detail: str) -> None:
    from bastion.enforce.tiers import probe

    _fake_kernel(monkeypatch, hooks=hooks, lsm_attach=lsm_attach, lsms=lsms)
    r = probe()
    assert (r.tier, r.event_source) == (tier, source)
    ev = r.capability("events")
    assert ev.available
    assert ev.mechanism.startswith("kernel hooks" if hooks else "tracepoints")
    assert detail in ev.detail and (detail or ev.detail == "")
