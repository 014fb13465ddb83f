"""The enforcement tier: the one vocabulary for what this kernel lets Bastion do.

* ``LSM`` — BPF LSM programs load: deny in the kernel's own hooks (stock
  distribution kernels).
* ``COMPAT`` — they do not (trampolines locked, or ``bpf`` not in ``lsm=``):
  tracepoints observe, enforcement is kill-at-exec, fanotify permission
  events and cgroup socket programs; what cannot be denied is said so.

A :class:`enum.StrEnum`: its members are the strings ``"lsm"``/``"compat"``
in JSON, pins and the CLI.
"""

from __future__ import annotations

import enum


class Tier(enum.StrEnum):
    LSM = "lsm"
    COMPAT = "compat"


__all__ = ["Tier"]
