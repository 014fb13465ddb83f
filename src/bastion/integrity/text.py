"""Kernel text integrity: the core text (_stext.._etext) read through BPF, hashed
page by page with the legitimate patch sites masked, compared with the baseline.

Masked (they change whenever a tracepoint or BPF program attaches):
  * jump labels / static keys — every ``__jump_table`` entry's code site;
  * static calls — every ``static_call_sites`` call site and every
    ``__SCT__*`` trampoline;
  * BPF dispatchers (``bpf_dispatcher_*_func``), rewritten on XDP attach;
  * function-entry (``__fentry__``) sites that hold the 5-byte NOP or a
    ``call`` — these are not ignored: every entry that holds a call is
    listed and compared with the baseline separately (an ftrace, kprobe or
    BPF-trampoline hook, or an inline hook, shows up there by function name).
Alternatives and paravirt patches are applied at boot, before any baseline.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Mapping

from bastion.integrity.base import Check, IntegrityFinding, KernelView
from bastion.integrity.ksyms import Kallsyms

PAGE = 4096
SITE = 5
NOP5 = bytes.fromhex("0f1f440000")
ENDBR64 = bytes.fromhex("f30f1efa")
FTRACE_TARGETS = ("ftrace_caller", "ftrace_regs_caller", "ftrace_stub", "ftrace_graph_caller",
                  "return_to_handler", "ftrace_stub_direct_tramp")


@dataclass(frozen=True)
class MaskedText:
    start: int
    masked: bytes
    patched_entries: dict[str, str]   # function -> "call <target>"
    n_sites: int


def patch_sites(view: KernelView) -> list[int]:
    """Absolute addresses of jump-label, static-call and trampoline sites."""
    ks = view.ksyms
    rd = view.reader
    out: list[int] = []
    js, je = ks.addr("__start___jump_table"), ks.addr("__stop___jump_table")
    if js and je and je > js:
        jt = rd.read(js, je - js)
        n = len(jt) // 16                          # struct jump_entry { s32 code, target; long key; }
        codes = memoryview(jt[: n * 16]).cast("i")[0::4]
        out.extend(js + 16 * k + c for k, c in enumerate(codes))
    ss, se = ks.addr("__start_static_call_sites"), ks.addr("__stop_static_call_sites")
    if ss and se and se > ss:
        st = rd.read(ss, se - ss)
        n = len(st) // 8                           # struct static_call_site { s32 addr, key; }
        rels = memoryview(st[: n * 8]).cast("i")[0::2]
        out.extend(ss + 8 * k + r for k, r in enumerate(rels))
    out.extend(_symbol_sites(view).trampolines)
    return out


@dataclass(frozen=True)
class _SymbolSites:
    trampolines: tuple[int, ...]                 # __SCT__* static-call trampolines
    dispatchers: tuple[tuple[int, int], ...]     # bpf_dispatcher_*_func extents
    functions: tuple[tuple[int, str], ...]       # text symbols (entry-site candidates)


def _symbol_sites(view: KernelView) -> _SymbolSites:
    hit = view.ks_cache.get("symbol_sites")
    if isinstance(hit, _SymbolSites):
        return hit
    ks = view.ksyms
    tramp = tuple(a for a, name in zip(ks.addrs, ks.names) if name.startswith("__SCT__"))
    funcs = tuple((a, name) for a, t, name in zip(ks.addrs, ks.types, ks.names)
                  if t in "tT" and not name.startswith("__pfx_"))
    res = _SymbolSites(tramp, tuple(dispatcher_ranges(ks)), funcs)
    view.ks_cache["symbol_sites"] = res
    return res


def dispatcher_ranges(ks: Kallsyms) -> list[tuple[int, int]]:
    out = []
    for a, n in zip(ks.addrs, ks.names):
        if n.startswith("bpf_dispatcher_") and n.endswith("_func"):
            nxt = ks.next_addr(a)
            out.append((a, nxt if nxt else a + SITE))
    return out


def entry_sites(functions: tuple[tuple[int, str], ...], start: int, text: bytes) -> list[tuple[int, str]]:
    """(offset, function) of each text symbol's entry (after an ENDBR64)."""
    end = start + len(text) - SITE
    out = []
    for a, n in functions:
        if not start <= a < end:
            continue
        off = a - start
        if text[off:off + 4] == ENDBR64:
            off += 4
        out.append((off, n))
    return out


def classify_call(ks: Kallsyms, text_start: int, text_end: int, site: int, raw: bytes) -> str:
    (rel,) = struct.unpack_from("<i", raw, 1)
    target = (site + SITE + rel) & 0xFFFFFFFFFFFFFFFF
    if text_start <= target < text_end:
        return f"call {ks.symbolize(target)}"
    mod = ks.in_module(target)
    return f"call {target:#x} (module {mod})" if mod else f"call {target:#x} (outside core text)"


def mask_text(view: KernelView) -> MaskedText:
    """The core text with patch sites zeroed (memoized on the view until forget_text())."""
    hit = view.cache.get("masked_text")
    if isinstance(hit, MaskedText):
        return hit
    m = _mask_text(view)
    view.cache["masked_text"] = m
    return m


def _mask_text(view: KernelView) -> MaskedText:
    ks = view.ksyms
    start, text = view.core_text()
    end = start + len(text)
    buf = bytearray(text)
    zero = bytes(SITE)
    n = 0
    for a in patch_sites(view):
        if start <= a <= end - SITE:
            buf[a - start:a - start + SITE] = zero
            n += 1
    sites = _symbol_sites(view)
    for lo, hi in sites.dispatchers:
        if start <= lo < hi <= end:
            buf[lo - start:hi - start] = bytes(hi - lo)
            n += 1
    patched: dict[str, str] = {}
    for off, name in entry_sites(sites.functions, start, text):
        b5 = text[off:off + SITE]
        if b5 == NOP5:
            buf[off:off + SITE] = zero
            n += 1
        elif b5[0] == 0xE8:
            buf[off:off + SITE] = zero
            n += 1
            patched[name] = classify_call(ks, start, end, start + off, b5)
    return MaskedText(start, bytes(buf), patched, n)


def page_digests(masked: bytes) -> list[str]:
    return [hashlib.blake2b(masked[i:i + PAGE], digest_size=8).hexdigest()
            for i in range(0, len(masked), PAGE)]


def _entry_class(desc: str) -> str:
    """What kind of hook an entry has, without addresses that legitimately move.

    BPF trampolines are re-generated (at a new address) whenever a program is
    attached to or detached from the same hook, so a call into BPF/module text
    is compared as a class: a function hooked at baseline time that is still
    hooked is not a finding; a newly hooked function, or a hook that now
    calls into core text, is.  (The BPF inventory check names new programs.)"""
    if "outside core text" in desc or "(module" in desc:
        return "call into BPF/module text"
    return desc


def entry_hook_severity(desc: str) -> str:
    if any(f" {t}" in desc for t in FTRACE_TARGETS):
        return "medium"     # ftrace: tracefs/kprobes list should explain it (kernel-state check)
    if "outside core text" in desc or "(module" in desc:
        return "high"       # BPF trampoline, module or injected code
    return "critical"       # a call into some other core function: an inline hook


class TextCheck(Check):
    name = "kernel_text"
    with_baseline = "core kernel text page digests (patch sites masked) and function-entry hooks"
    requires = ("root", "kallsyms addresses", "BPF raw_tp test_run + bpf_probe_read_kernel")

    def available(self) -> str | None:
        reason = self.view.kallsyms_reason() or self.view.reader_reason()
        if reason:
            return reason
        for sym in ("_stext", "_etext"):
            if not self.view.ksyms.addr(sym):
                return f"{sym} not in kallsyms"
        return None

    def _measure(self) -> tuple[MaskedText, list[str]]:
        m = mask_text(self.view)
        return m, page_digests(m.masked)

    def baseline(self) -> dict[str, Any]:
        m, pages = self._measure()
        return {"start": m.start, "size": len(m.masked),
                "hash": hashlib.blake2b(m.masked).hexdigest(), "pages": pages,
                "masked_sites": m.n_sites, "patched_entries": m.patched_entries}

    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]:
        if baseline is None:
            return []
        m, pages = self._measure()
        ks = self.view.ksyms
        out: list[IntegrityFinding] = []
        if m.start != baseline.get("start") or len(m.masked) != baseline.get("size"):
            return [self.finding("text.layout_changed", "Kernel text bounds differ from the baseline",
                                 "high", {"baseline_start": baseline.get("start"),
                                          "baseline_size": baseline.get("size"),
                                          "start": m.start, "size": len(m.masked)})]
        base_pages: list[str] = list(baseline.get("pages", []))
        changed = [i for i, (a, b) in enumerate(zip(pages, base_pages)) if a != b]
        if changed:
            detail = []
            for i in changed[:32]:
                lo = m.start + i * PAGE
                first = ks.symbolize(lo)
                last = ks.symbolize(lo + PAGE - 1)
                detail.append({"page": f"{lo:#x}", "from": first, "to": last})
            out.append(self.finding(
                "text.modified", f"Kernel text modified in {len(changed)} page(s) outside patch sites",
                "critical", {"pages_changed": len(changed), "pages": detail,
                             "masked_sites": m.n_sites}))
        base_entries: Mapping[str, str] = baseline.get("patched_entries", {})
        for func, desc in sorted(m.patched_entries.items()):
            if func in base_entries and _entry_class(base_entries[func]) == _entry_class(desc):
                continue
            out.append(self.finding(
                "text.entry_hook", f"Function entry of {func} patched: {desc}",
                entry_hook_severity(desc), {"function": func, "site": desc,
                                            "baseline": base_entries.get(func, "nop")}))
        return out
