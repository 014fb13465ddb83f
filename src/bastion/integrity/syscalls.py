"""The syscall dispatch path: ``x64_sys_call`` (6.9+) and ``sys_call_table``.

``sys_call_table`` is found through kallsyms where it is listed, otherwise by
scanning ``.rodata`` (read through BPF) for the pointer pair
(``__x64_sys_read``, ``__x64_sys_write``) — entries 0 and 1.  Every entry
must be the start of a ``__x64_sys_*`` function in core text.  In
``x64_sys_call`` every direct call/jump that lands on a symbol start must
land on a ``__x64_sys_*`` function; its code is also hashed (patch sites
masked) and compared with the baseline.  Both checks hold without a
baseline; with one, the table must be entry-for-entry the same.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Mapping

from bastion.errors import BastionError
from bastion.integrity.base import Check, IntegrityFinding
from bastion.integrity.kread import CHUNK
from bastion.integrity.text import mask_text

RODATA_SCAN_BYTES = 32 << 20
MAX_SYSCALLS = 1024
_OK_CALL_TARGETS = ("__x64_sys_", "__x86_return_thunk", "__x86_indirect_thunk", "__fentry__",
                    "__x86_indirect_call_thunk", "__x86_indirect_jump_thunk")


class SyscallCheck(Check):
    name = "syscall_dispatch"
    requires = ("root", "kallsyms addresses", "BPF raw_tp test_run + bpf_probe_read_kernel")
    needs_baseline = False
    without_baseline = ("every sys_call_table entry is a __x64_sys_* function; x64_sys_call calls "
                        "only syscall functions")
    with_baseline = "the table entry for entry, and x64_sys_call's code, unchanged since the baseline"

    def available(self) -> str | None:
        reason = self.view.kallsyms_reason() or self.view.reader_reason()
        if reason:
            return reason
        if not self.view.ksyms.addr("__x64_sys_read"):
            return "no __x64_sys_read in kallsyms (not an x86-64 kernel with syscall wrappers)"
        return None

    # -- locating and reading

    def locate_table(self) -> tuple[int, str] | None:
        ks = self.view.ksyms
        a = ks.addr("sys_call_table")
        if a:
            return a, "kallsyms"
        pat = struct.pack("<QQ", ks.need("__x64_sys_read"), ks.need("__x64_sys_write"))
        ro = ks.addr("__start_rodata")
        if not ro:
            return None
        rd = self.view.reader
        prev = b""
        for off in range(0, RODATA_SCAN_BYTES, CHUNK):
            try:
                chunk = rd.read_chunk(ro + off, CHUNK)
            except BastionError:
                return None
            window = prev + chunk
            i = window.find(pat)
            while i >= 0 and (ro + off - len(prev) + i) % 8:
                i = window.find(pat, i + 1)
            if i >= 0:
                return ro + off - len(prev) + i, "rodata-scan"
            prev = chunk[-15:]
        return None

    def table(self, addr: int) -> list[tuple[int, str | None]]:
        ks = self.view.ksyms
        raw = self.view.reader.read(addr, 8 * MAX_SYSCALLS)
        out: list[tuple[int, str | None]] = []
        for i in range(MAX_SYSCALLS):
            (v,) = struct.unpack_from("<Q", raw, 8 * i)
            name = ks.name_at(v)
            if name is None or not name.startswith("__x64_sys_"):
                # the table ends where pointers stop being syscall functions; a
                # hooked entry in the middle is told apart by the entries after it
                following = [ks.name_at(struct.unpack_from("<Q", raw, 8 * j)[0])
                             for j in range(i + 1, min(i + 4, MAX_SYSCALLS))]
                if not any(f and f.startswith("__x64_sys_") for f in following):
                    break
            out.append((v, name))
        return out

    def dispatcher(self) -> tuple[str, list[str]] | None:
        """(masked code hash, sorted call targets) of x64_sys_call, or None if absent."""
        ks = self.view.ksyms
        a = ks.addr("x64_sys_call")
        if not a:
            return None
        end = ks.next_addr(a) or a + 4096
        m = mask_text(self.view)
        code = m.masked[a - m.start:end - m.start]
        targets: set[str] = set()
        for i in range(len(code) - 4):
            if code[i] in (0xE8, 0xE9):
                (rel,) = struct.unpack_from("<i", code, i + 1)
                name = ks.name_at((a + i + 5 + rel) & 0xFFFFFFFFFFFFFFFF)
                if name:
                    targets.add(name)
        return hashlib.blake2b(code).hexdigest(), sorted(targets)

    # -- Check

    def baseline(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        loc = self.locate_table()
        if loc is not None:
            entries = self.table(loc[0])
            out["table"] = {"addr": loc[0], "located_by": loc[1],
                            "entries": [n or f"{v:#x}" for v, n in entries]}
        d = self.dispatcher()
        if d is not None:
            out["x64_sys_call"] = {"hash": d[0], "targets": d[1]}
        return out

    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]:
        ks = self.view.ksyms
        out: list[IntegrityFinding] = []
        loc = self.locate_table()
        base_tab = (baseline or {}).get("table")
        if loc is None:
            sev = "critical" if base_tab else "info"
            out.append(self.finding("syscall.table_not_found", "sys_call_table could not be located",
                                    sev, {"baseline_addr": base_tab.get("addr") if base_tab else None}))
        else:
            entries = self.table(loc[0])
            bad = [{"nr": i, "value": f"{v:#x}", "points_to": ks.symbolize(v)}
                   for i, (v, n) in enumerate(entries) if n is None or not n.startswith("__x64_sys_")]
            if bad:
                out.append(self.finding("syscall.table_hooked",
                                        f"{len(bad)} sys_call_table entr(y/ies) not pointing at a __x64_sys_ function",
                                        "critical", {"table": f"{loc[0]:#x}", "located_by": loc[1],
                                                     "entries": bad[:64]}))
            if base_tab:
                names = [n or f"{v:#x}" for v, n in entries]
                old = list(base_tab.get("entries", []))
                diff = [{"nr": i, "baseline": old[i] if i < len(old) else None,
                         "now": names[i] if i < len(names) else None}
                        for i in range(max(len(old), len(names)))
                        if (old[i] if i < len(old) else None) != (names[i] if i < len(names) else None)]
                if diff or base_tab.get("addr") != loc[0]:
                    out.append(self.finding("syscall.table_changed", "sys_call_table differs from the baseline",
                                            "critical", {"table": f"{loc[0]:#x}",
                                                         "baseline_table": base_tab.get("addr"),
                                                         "entries": diff[:64]}))
        d = self.dispatcher()
        if d is not None:
            odd = [t for t in d[1] if not t.startswith(_OK_CALL_TARGETS)]
            if odd:
                out.append(self.finding("syscall.dispatch_hooked",
                                        "x64_sys_call calls functions that are not syscalls",
                                        "critical", {"targets": odd}))
            base_d = (baseline or {}).get("x64_sys_call")
            if base_d and base_d.get("hash") != d[0]:
                added = sorted(set(d[1]) - set(base_d.get("targets", [])))
                out.append(self.finding("syscall.dispatch_changed", "x64_sys_call code differs from the baseline",
                                        "critical", {"new_targets": added}))
        return out
