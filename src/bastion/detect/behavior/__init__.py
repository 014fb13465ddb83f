"""Behaviour detection: stateful rules over the live and the replayed stream.

``behavior_rules(config, probes)`` builds the built-in pack (see
:mod:`.rules`) with the policy's per-rule settings; the agent appends the
result to its engine's rules.  Nothing registers itself at import.
"""

from __future__ import annotations

from bastion.detect.behavior.base import BehaviorRule, RuleSettings
from bastion.detect.behavior.config import BehaviorConfig, parse_behavior
from bastion.detect.behavior.rules import (
    ALL_RULE_CLASSES, PERSISTENCE, PersistenceWrite, Probes, live_probes,
)
from bastion.detect.behavior.depth import DEPTH_RULES
from bastion.detect.behavior.staging import STAGING_RULES
from bastion.detect.behavior.decode import DECODE_RULES
from bastion.detect.behavior.wipe import WIPE_RULES
from bastion.detect.behavior.compiled import COMPILE_RULES
from bastion.detect.behavior.escape import ESCAPE_RULES, ContainerProbes, live_container_probes
from bastion.detect.behavior.provenance import Provenance
from bastion.detect.behavior.state import Limits
from bastion.detect.behavior.trust import ExeTrust
from bastion.detect.engine import Rule

NS = 1_000_000_000


def rule_names() -> frozenset[str]:
    return frozenset({c.name for c in (*ALL_RULE_CLASSES, *DEPTH_RULES, *STAGING_RULES, *DECODE_RULES, *WIPE_RULES, *COMPILE_RULES)} | {p.rule for p in PERSISTENCE}
                     | {c.name for c in ESCAPE_RULES})


def behavior_rules(config: BehaviorConfig | None = None, probes: Probes | None = None,
                   trust: ExeTrust | None = None,
                   cprobes: ContainerProbes | None = None) -> list[Rule]:
    """The built-in pack, configured.  ``probes``: :func:`live_probes` in the
    agent (stdio of a new shell, entropy of rewritten files); None for replay.
    ``trust``: which executables are the trusted tools (default: the files
    installed on this host, by inode).  ``cprobes``: the live mount/namespace
    look-ups of the container escape rules (:mod:`.escape`); None for replay."""
    cfg = config or BehaviorConfig()
    limits = Limits(max_keys=cfg.max_keys, ttl_ns=int(cfg.state_ttl_s * NS))
    out: list[Rule] = []
    trust = trust or ExeTrust()   # one for the pack: tool identities resolved once, refreshed
    prov = Provenance(RuleSettings(dry_run=cfg.dry_run), limits,
                      stdio=probes.stdio if probes is not None else None)   # first: later rules see this event's provenance
    prov.trust = trust
    out.append(prov)

    def settings(name: str) -> RuleSettings:
        s = cfg.rules.get(name, RuleSettings())
        if cfg.dry_run and not s.dry_run:
            s = RuleSettings(action=s.action, severity=s.severity, dry_run=True, enabled=s.enabled,
                             trust=s.trust)
        return s

    for cls in (*ALL_RULE_CLASSES, *DEPTH_RULES, *STAGING_RULES, *DECODE_RULES, *WIPE_RULES, *COMPILE_RULES):
        s = settings(cls.name)
        if not s.enabled:
            continue
        rule: BehaviorRule
        if cls.__init__ is not BehaviorRule.__init__ and "probes" in cls.__init__.__code__.co_varnames:
            rule = cls(s, limits, probes=probes)  # type: ignore[call-arg]
        else:
            rule = cls(s, limits)
        rule.trust = trust
        rule.prov = prov
        out.append(rule)
    for ecls in ESCAPE_RULES:
        s = settings(ecls.name)
        if s.enabled:
            er = ecls(s, limits, cprobes=cprobes)
            er.trust = trust
            er.prov = prov
            out.append(er)
    for pc in PERSISTENCE:
        s = settings(pc.rule)
        if s.enabled:
            pw = PersistenceWrite(pc, s, limits)
            pw.trust = trust
            pw.prov = prov
            out.append(pw)
    return out


__all__ = ["ExeTrust", "behavior_rules", "rule_names", "BehaviorConfig", "parse_behavior", "Probes",
           "live_probes", "Limits", "Provenance", "ContainerProbes", "live_container_probes"]
