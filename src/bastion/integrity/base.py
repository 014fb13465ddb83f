"""The Check contract and the shared kernel view the checks read from."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from bastion.errors import BastionError
from bastion.integrity import ksyms
from bastion.integrity.kread import KernelReader
from bastion.severity import SEVERITIES


@dataclass(frozen=True)
class IntegrityFinding:
    """One integrity problem with its evidence (JSON-able values only)."""

    check: str
    code: str                  # stable id, e.g. "text.modified", "bpf.rogue_program"
    title: str
    severity: str              # one of bastion.severity.SEVERITIES
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str = "alert"      # "kill": the response layer may kill_loader() the holders
    pid: int = 0               # the process it is about (a rogue loader), 0 if none

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "code": self.code, "title": self.title,
                "severity": self.severity, "action": self.action, "pid": self.pid,
                "evidence": self.evidence}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> IntegrityFinding:
        """The inverse of :meth:`to_json` (a scan run in a worker process)."""
        sev = str(d.get("severity", ""))
        if sev not in SEVERITIES:
            raise BastionError(f"integrity finding with an unknown severity {sev!r}")
        ev = d.get("evidence", {})
        return cls(str(d["check"]), str(d["code"]), str(d["title"]), sev,
                   dict(ev) if isinstance(ev, dict) else {}, str(d.get("action", "alert")),
                   int(d.get("pid", 0)))


class KernelView:
    """What checks share, opened lazily: kallsyms, the BPF kernel reader, /proc.

    ``close()`` releases the BPF object.  Errors opening a part are kept and
    given back as the reason a check is unavailable.
    """

    def __init__(self, *, proc: Path = Path("/proc"), kallsyms_path: Path = Path("/proc/kallsyms"),
                 bpf_dir: Path | None = None, sys: Path = Path("/sys")) -> None:
        self.proc = proc
        self.sys = sys
        self._kallsyms_path = kallsyms_path
        self._bpf_dir = bpf_dir
        self._ks: ksyms.Kallsyms | None = None
        self._ks_err: str | None = None
        self._reader: KernelReader | None = None
        self._reader_err: str | None = None
        self._text: tuple[int, bytes] | None = None
        #: per-view memo of derived results (e.g. the masked text), cleared with the text
        self.cache: dict[str, Any] = {}
        #: memo of results derived from kallsyms alone (kept across forget_text())
        self.ks_cache: dict[str, Any] = {}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> KernelView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def kallsyms_reason(self) -> str | None:
        if self._ks is None and self._ks_err is None:
            try:
                self._ks = ksyms.load(self._kallsyms_path)
            except BastionError as exc:
                self._ks_err = str(exc)
            else:
                if not self._ks.visible:
                    self._ks_err = "kallsyms addresses are hidden (needs root and kptr_restrict < 2)"
        return self._ks_err

    @property
    def ksyms(self) -> ksyms.Kallsyms:
        reason = self.kallsyms_reason()
        if reason is not None or self._ks is None:
            raise BastionError(reason or "kallsyms unavailable")
        return self._ks

    def reader_reason(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root (BPF programs and kallsyms addresses)"
        if self._reader is None and self._reader_err is None:
            try:
                self._reader = KernelReader(self._bpf_dir)
            except BastionError as exc:
                self._reader_err = f"cannot load the BPF kernel reader: {exc}"
        return self._reader_err

    @property
    def reader(self) -> KernelReader:
        reason = self.reader_reason()
        if reason is not None or self._reader is None:
            raise BastionError(reason or "BPF reader unavailable")
        return self._reader

    def core_text(self) -> tuple[int, bytes]:
        """(_stext, bytes of _stext.._etext), read once per view through BPF."""
        if self._text is None:
            ks = self.ksyms
            start, end = ks.need("_stext"), ks.need("_etext")
            self._text = (start, self.reader.read(start, end - start))
        return self._text

    def forget_text(self) -> None:
        self._text = None
        self.cache.clear()


class Check(ABC):
    """A kernel integrity check.

    ``requires`` names what it needs (for ``doctor``-style listings);
    :meth:`available` returns None or the reason it cannot run here;
    :meth:`baseline` returns JSON-able state; :meth:`scan` compares now with
    that state (``None``: no baseline for this check) and returns findings.

    ``needs_baseline``: the check judges nothing without a baseline (the
    scanner does not run it then).  Otherwise ``without_baseline`` says what
    it judges with none and ``with_baseline`` what only a baseline adds;
    ``notes`` (reset by each :meth:`scan`) says what a scan left unjudged.
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]
    needs_baseline: ClassVar[bool] = True
    without_baseline: ClassVar[str] = ""
    with_baseline: ClassVar[str] = ""

    def __init__(self, view: KernelView) -> None:
        self.view = view
        self.notes: list[str] = []

    @abstractmethod
    def available(self) -> str | None: ...

    @abstractmethod
    def baseline(self) -> dict[str, Any]: ...

    @abstractmethod
    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]: ...

    def finding(self, code: str, title: str, severity: str, evidence: dict[str, Any],
                *, action: str = "alert", pid: int = 0) -> IntegrityFinding:
        return IntegrityFinding(self.name, code, title, severity, evidence, action, pid)
