"""Sigma rules evaluated live on Bastion's own events.

Rules are loaded with pySigma (:mod:`.loader`, with a processing pipeline that
maps Sigma's Linux field names onto Bastion's), compiled once into Python
predicates with a prefilter index (:mod:`.matcher`), fed from per-logsource
views of events (:mod:`.views`), and exposed as engine rules
(:mod:`.rules`): ``load_sigma(dirs) -> SigmaLoadResult``.
"""

from __future__ import annotations

from bastion.detect.sigma.rules import (
    SigmaLoadResult,
    SigmaRule,
    SigmaRuleError,
    Unsupported,
    load_sigma,
)

__all__ = ["SigmaLoadResult", "SigmaRule", "SigmaRuleError", "Unsupported", "load_sigma"]
