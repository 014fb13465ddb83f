"""Sigma rules evaluated live on Bastion's own events.

Rules are loaded with pySigma (:mod:`.loader`, with a processing pipeline that
maps Sigma's Linux field names onto Bastion's), compiled once into Python
predicates with a prefilter index (:mod:`.matcher`), fed from per-logsource
views of events (:mod:`.views`), and exposed as engine rules
(:mod:`.rules`): ``load_sigma(dirs) -> SigmaLoadResult``.  SigmaHQ's published
rule release is installed into the data dir by :mod:`.install`.

pySigma is imported on first use of a name below, not with the package, so
that :mod:`.install`'s cheap queries (``installed_info``) do not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bastion.detect.sigma.rules import (
        SigmaLoadResult,
        SigmaRule,
        SigmaRuleError,
        Unsupported,
        load_sigma,
    )

__all__ = ["SigmaLoadResult", "SigmaRule", "SigmaRuleError", "Unsupported", "load_sigma"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("bastion.detect.sigma.rules"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
