"""HIPS enforcement in the kernel: load the tier's matcher, swap policies into its maps.

``HipsKernel`` loads ``lsm_hips.bpf.o`` (lsm tier: every op decided in its
LSM hook) or ``hips_compat.bpf.o`` (compat tier: exec killed at
``sched_process_exec``, connect/bind refused by cgroup sock_addr programs on
the cgroup v2 root), with its scope written into ``.rodata`` before load:
``cgroup_id`` (0 = every cgroup) and a dead-man deadline (past it every
decision is "allow").  The agent itself is never refused, by identity (tgid +
start time + exe inode in the ``hips_exempt`` map), not by pid: the agent that
loads or adopts the pins writes itself there and removes every entry that is
no longer that exact process, so a process reusing a dead agent's pid is not
exempt (issue 13 item 6).

``apply(plan)`` installs a :class:`~bastion.policy.compile.MapPlan` as a new
generation: its entries are written under gen N+1, ``hips_state[0]`` flips in
one map update, then generation N is deleted — at every instant exactly one
complete policy holds (the BPF side re-reads the generation after deciding
and starts over when it moved, so no decision mixes two).

With ``pin_dir``, maps live at ``pin_dir/maps/<name>`` and links at
``pin_dir/links/<program>``: closing the agent leaves enforcement in place, and
:meth:`HipsKernel.adopt` reopens it from the pins, without a gap.  Loading,
attaching (all or nothing, ``cgroup/*`` programs on the cgroup), pinning,
adopting and draining are the one loader's (:mod:`bastion.kernel.loader`).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from pathlib import Path
from typing import Final

from bastion import abi
from bastion.tier import Tier
from bastion.errors import KernelError, Location
from bastion.events import HipsEvent, decode
from bastion.guard.identity import ROLE_AGENT, Identity
from bastion.kernel import bpffs
from bastion.kernel.btf import setattr_has_idmap
from bastion.kernel.clock import deadline_ns
from bastion.kernel.libbpf import Map
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec, pinned_links
from bastion.paths import bpf_object
from bastion.policy.compile import MapPlan
from bastion.procstat import read_stat

log = logging.getLogger("bastion.enforce.hips_kernel")

OBJECTS: Final = {"lsm": "lsm_hips.bpf.o", "compat": "hips_compat.bpf.o"}
POLICY_MAPS: Final = ("hips_gens", "hips_subjects", "hips_rules", "hips_net")
MAPS: Final = ("hips_state", *POLICY_MAPS, "task_subjects", "hips_exempt", "events", "drops",
               "hips_stats")
# Offset of the u32 generation in each policy map's key.
_GEN_OFFSET: Final = {"hips_gens": 0, "hips_subjects": 0, "hips_rules": 0, "hips_net": 4}
# Programs that tell the tiers apart in a pin directory.
_TIER_MARK: Final = {"lsm": "hips_file_open", "compat": "hips_connect4"}
_GEN_MAX: Final = 0xFFFFFFFF
_STAT_SLOTS_PER_OP: Final = 8

# What each tier enforces, and how (the table `bastion doctor` can print).
ENFORCED: Final[dict[str, dict[str, str]]] = {
    "lsm": {op.name.lower().replace("_", "-"): "lsm" for op in abi.HipsOp},
    "compat": {"exec": "exec-kill", "connect": "cgroup-sock", "bind": "cgroup-sock"},
}


def _proc_facts(pid: int) -> tuple[int, int, int, int] | None:
    """(ppid, exe ino, exe kernel dev, start ns) of a live process, None if unreadable."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
        ps = read_stat(pid)
    except (OSError, ValueError):
        return None
    return ps.ppid, st.st_ino, abi.kernel_dev(st.st_dev), ps.start_ns


class HipsKernel(LoaderUser):
    """The kernel matcher of one tier: load/adopt, apply plans, drain decisions."""

    def __init__(
        self,
        tier: Tier,
        *,
        pin_dir: Path | None = None,
        cgroup_id: int = 0,
        deadline_s: float | None = None,
        self_tgid: int = 0,
        cgroup_path: Path | None = None,
    ) -> None:
        if tier not in OBJECTS:
            raise KernelError(f"unknown HIPS tier {tier!r} (known: {', '.join(OBJECTS)})",
                              errno=errno.EINVAL, location=Location("hips"))
        self.tier = tier
        self.pin_dir = pin_dir
        self.cgroup_id = cgroup_id
        self.deadline_ns = deadline_ns(deadline_s)
        self.self_tgid = self_tgid
        self.cgroup_path = cgroup_path
        self._lo: LoadedObject | None = None
        self._written: dict[int, list[tuple[str, bytes]]] = {}
        self.seeded = 0

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def _loc(self) -> Location:
        return Location(f"hips {self.tier} ({OBJECTS[self.tier]})")

    def spec(self) -> ObjectSpec:
        """The matcher of this tier, for the loader."""
        rodata: dict[str, int | bytes] = {
            "cfg_cgroup_id": self.cgroup_id,
            "cfg_deadline_ns": self.deadline_ns,
            "cfg_self_tgid": 0,  # never by pid: hips_exempt holds the agent's identity
        }
        sizes = {"events": abi.SMALL_RINGBUF_BYTES}  # decisions, not every event
        if self.tier == Tier.LSM:
            rodata["cfg_setattr_idmap"] = int(setattr_has_idmap())
            sizes["task_subjects"] = 1  # read from the task itself there
        return ObjectSpec(path=bpf_object(OBJECTS[self.tier]), rodata=rodata, max_entries=sizes,
                          cgroup=self.cgroup_path, pin_dir=self.pin_dir, pin_maps=MAPS)

    def open(self) -> None:
        """Load, attach every program (all or nothing), pin, seed."""
        if self._lo is not None and not self._lo.closed:
            raise KernelError("HipsKernel already open", errno=errno.EALREADY, location=self._loc)
        spec = self.spec()
        if self.tier == Tier.COMPAT:
            bpffs.ensure_tracefs()
        self._lo = lo = LoadedObject.load(spec)
        try:
            if self.self_tgid:
                self.set_exempt(self.self_tgid)
            if self.tier == Tier.COMPAT:
                self.seeded = self._seed_task_subjects()
        except BaseException:
            lo.close(unpin=True)
            raise
        log.info("hips %s: %d programs attached (scope cgroup %d, deadline %d)", self.tier,
                 len(lo.links), self.cgroup_id, self.deadline_ns)

    @classmethod
    def adopt(cls, pin_dir: Path, *, self_tgid: int | None = None) -> HipsKernel:
        """Reopen the maps and links a previous agent pinned under ``pin_dir``.

        The adopting process (``self_tgid``, default: this process) becomes the
        exempt agent and every exemption of a process that is gone is removed."""
        names = pinned_links(pin_dir)
        tier = next((t for t, mark in _TIER_MARK.items() if mark in names), None)
        if tier is None:
            raise KernelError("no pinned HIPS matcher here", errno=errno.ENOENT,
                              location=Location(str(pin_dir)))
        if not (pin_dir / "maps" / "hips_exempt").exists():
            raise KernelError("the pinned HIPS matcher predates the exempt identity map "
                              "(it exempts the dead agent's pid): unpin it and load anew",
                              errno=errno.ENOENT, location=Location(str(pin_dir)))
        tgid = os.getpid() if self_tgid is None else self_tgid
        self = cls(Tier(tier), pin_dir=pin_dir, self_tgid=tgid)
        self._lo = LoadedObject.adopt(ObjectSpec(path=Path(OBJECTS[tier]), pin_dir=pin_dir,
                                                 pin_maps=MAPS))
        try:
            self.set_exempt(tgid)
        except BaseException:
            self.close()
            raise
        return self

    # ---- the exempt agent -------------------------------------------------------------

    def set_exempt(self, tgid: int) -> Identity:
        """Make the live process ``tgid`` the exempt agent; drop every other entry.

        Returns the identity written (tgid, start ticks, exe inode)."""
        ident = Identity.of(tgid, ROLE_AGENT)
        m = self._map("hips_exempt")
        m.update(ident.key(), ident.value())
        for key in list(m.keys()):
            if key != ident.key():
                m.delete(key)
        log.info("hips %s: exempt agent pid %d (start %d ticks, exe %d:%d)", self.tier, tgid,
                 ident.start_ticks, ident.exe_dev, ident.exe_ino)
        return ident

    def exempt(self) -> list[Identity]:
        """The identities the matcher never refuses."""
        m = self._map("hips_exempt")
        out = []
        for key in m.keys():
            raw = m.lookup(key)
            if raw is not None:
                out.append(Identity.from_map(key, raw))
        return out

    def close(self, *, unpin: bool = False) -> None:
        """Release everything; pinned links stay attached unless ``unpin``."""
        if self._lo is not None:
            self._lo.close(unpin=unpin)

    # ---- task_subjects --------------------------------------------------------------------

    def _seed_task_subjects(self) -> int:
        """Facts of every live process (the tracepoints keep them from now on)."""
        m = self._map("task_subjects")
        facts: dict[int, tuple[int, int, int, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                f = _proc_facts(int(name))
                if f is not None:
                    facts[int(name)] = f
        n = 0
        for pid, (ppid, ino, dev, start_ns) in facts.items():
            parent = facts.get(ppid)
            ts = abi.TaskSubject(exe_ino=ino, exe_dev=dev, start_ns=start_ns,
                                 parent_exe_ino=parent[1] if parent else 0,
                                 parent_exe_dev=parent[2] if parent else 0)
            try:
                m.update(struct.pack("<I", pid), bytes(ts), flags=1)  # BPF_NOEXIST: the kernel's is fresher
                n += 1
            except KernelError as exc:
                if exc.errno not in (errno.EEXIST, errno.E2BIG):
                    raise
        return n

    def task_subject(self, tgid: int) -> abi.TaskSubject | None:
        raw = self._map("task_subjects").lookup(struct.pack("<I", tgid))
        return abi.TaskSubject.from_buffer_copy(raw) if raw is not None else None

    # ---- policy ----------------------------------------------------------------------------

    def _map(self, name: str) -> Map:
        if self._lo is None or self._lo.closed:
            raise KernelError("HipsKernel used before open()", errno=errno.ENOENT, location=self._loc)
        return self._lo.map(name)

    def _state(self) -> abi.HipsState:
        raw = self._map("hips_state").lookup(b"\0" * 4)
        return abi.HipsState.from_buffer_copy(raw) if raw else abi.HipsState()

    def active_gen(self) -> int:
        return int(self._state().active_gen)

    def epoch(self) -> int:
        """The policy epoch: one more at every apply() and clear(), never reset."""
        return int(self._state().epoch)

    def _set_active(self, gen: int) -> None:
        """Flip to generation ``gen`` and the next policy epoch in one map update.

        The epoch is what the lsm tier's open-verdict cache keys on with the
        generation: a generation *number* comes back (clear() makes it 0, the next
        apply() 1; it wraps at _GEN_MAX), an epoch never does (the pinned map keeps
        it across agent restarts; a fresh map comes with a fresh, empty cache)."""
        epoch = (self.epoch() + 1) & 0xFFFFFFFFFFFFFFFF
        self._map("hips_state").update(b"\0" * 4,
                                       bytes(abi.HipsState(active_gen=gen, epoch=epoch)))

    def _entries_of(self, gen: int | None) -> list[tuple[str, bytes]]:
        """Keys of generation ``gen`` (None: every generation), by scanning the maps."""
        out: list[tuple[str, bytes]] = []
        for name in POLICY_MAPS:
            off = _GEN_OFFSET[name]
            for key in list(self._map(name).keys()):
                if gen is None or struct.unpack_from("<I", key, off)[0] == gen:
                    out.append((name, key))
        return out

    def _delete(self, entries: list[tuple[str, bytes]]) -> None:
        # gens last: a generation's marker goes when nothing of it is left
        for name, key in sorted(entries, key=lambda e: e[0] == "hips_gens"):
            self._map(name).delete(key)

    def apply(self, plan: MapPlan) -> int:
        """Install ``plan`` as the next generation; return that generation."""
        old = self.active_gen()
        new = old + 1 if old < _GEN_MAX else 1
        # Leftovers of an apply that died half-way (any generation but the active one).
        gens = {struct.unpack_from("<I", k)[0] for k in self._map("hips_gens").keys()}
        if gens - {old}:
            stale = [e for e in self._entries_of(None)
                     if struct.unpack_from("<I", e[1], _GEN_OFFSET[e[0]])[0] != old]
            self._delete(stale)
            for g in gens - {old}:
                self._written.pop(g, None)
        written: list[tuple[str, bytes]] = []
        key_gen = struct.pack("<I", new)
        try:
            self._map("hips_gens").update(key_gen, plan.gen_value())
            written.append(("hips_gens", key_gen))
            for name, entries in (("hips_subjects", plan.subject_entries(new)),
                                  ("hips_rules", plan.rule_entries(new)),
                                  ("hips_net", plan.net_entries(new))):
                m = self._map(name)
                for k, v in entries:
                    m.update(k, v)
                    written.append((name, k))
        except BaseException:
            try:
                self._delete(written)
            except KernelError as exc:
                log.warning("cannot roll back generation %d: %s", new, exc)
            raise
        self._set_active(new)  # the one switch
        self._written[new] = written
        if old:
            done = self._written.pop(old, None)
            self._delete(done if done is not None else self._entries_of(old))
        log.info("hips %s: generation %d active (%d subjects, %d rules, %d nets)", self.tier, new,
                 len(plan.subjects), len(plan.rules), len(plan.nets))
        return new

    def clear(self) -> None:
        """No policy: active_gen 0 (everything allowed), then delete every entry."""
        self._set_active(0)
        self._delete(self._entries_of(None))
        self._written.clear()

    # ---- decisions -----------------------------------------------------------------------

    def poll(self, timeout_s: float = 0.0) -> list[HipsEvent]:
        lo = self._lo
        if lo is None or lo.closed:
            raise KernelError("HipsKernel polled before open()", errno=errno.ENOENT, location=self._loc)
        lo.wait(timeout_s)
        return [ev for ev in lo.drain(decode) if isinstance(ev, HipsEvent)]

    def decisions(self) -> dict[tuple[str, str], int]:
        """Decisions taken so far per (op, action), summed over CPUs."""
        out: dict[tuple[str, str], int] = {}
        m = self._map("hips_stats")
        raw_per_key = m.value_size
        for op in abi.HipsOp:
            for act in abi.HipsAction:
                n = self._stat(m, op * _STAT_SLOTS_PER_OP + act, raw_per_key)
                if act == abi.HipsAction.ALLOW:   # the allows served from the open cache
                    n += self._stat(m, op * _STAT_SLOTS_PER_OP + abi.HIPS_STAT_VC_HIT_ACT,
                                    raw_per_key)
                if n:
                    out[(op.name.lower().replace("_", "-"), act.name.lower())] = n
        return out

    @staticmethod
    def _stat(m: Map, slot: int, size: int) -> int:
        """One hips_stats counter, summed over CPUs."""
        vals = m.lookup_percpu(struct.pack("<I", slot))
        return sum(struct.unpack_from("<Q", v[:size])[0] for v in vals)

    def open_cache(self) -> dict[str, int]:
        """The lsm tier's open-verdict cache so far: hits, misses (the full search) and
        stores, summed over CPUs (op 0's row of hips_stats; always 0 on compat)."""
        m = self._map("hips_stats")
        out = {"hit": sum(self._stat(m, op * _STAT_SLOTS_PER_OP + abi.HIPS_STAT_VC_HIT_ACT,
                                     m.value_size) for op in abi.HipsOp)}
        for name, slot in (("miss", abi.HIPS_STAT_VC_MISS), ("store", abi.HIPS_STAT_VC_STORE)):
            out[name] = self._stat(m, slot, m.value_size)
        return out

    def stats(self) -> dict[str, int]:
        out = {**super().stats(), "active_gen": self.active_gen(), "epoch": self.epoch(),
               "seeded": self.seeded}
        for (op, act), n in self.decisions().items():
            out[f"decisions.{op}.{act}"] = n
        for name, n in self.open_cache().items():
            out[f"open_cache.{name}"] = n
        return out


__all__ = ["ENFORCED", "HipsKernel", "OBJECTS"]
