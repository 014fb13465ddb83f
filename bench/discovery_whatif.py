"""What a looser ``behavior.discovery_burst`` would cost on a recorded corpus (s16-stage).

Not part of ``make test``.  Replays a recording (the replay format: e.g. the benign
corpus's events kept by ``BASTION_FA_EVENTS=path tests/e2e/test_false_alarms.py``)
through variants of the rule and prints how many alerts (mediums) each would raise::

    .venv/bin/python bench/discovery_whatif.py corpus-events.jsonl

Variants: the facts counted per script (the rule: a shell or interpreter running a
file or ``-c`` code, forked subshells folded in) or per process tree (the topmost
ancestor the recording knows); thresholds 1-4; and "untrusted": only trees whose actor
has an untrusted provenance (:mod:`bastion.detect.behavior.provenance`: a /tmp script
or binary, a downloaded one, a network service's tree, a decoded payload).
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Any

from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.provenance import Provenance
from bastion.detect.behavior.rules import DiscoveryBurst
from bastion.detect.engine import RuleContext
from bastion.events import Event
from bastion.proctable import ProcEntry, ProcessTable
from bastion.sensors.replay import read_all


LOCAL = frozenset({"tmp-script", "tmp-binary"})


def variant(count: int, per: str, gate: str, prov: Provenance) -> DiscoveryBurst:
    """``gate``: "any" (every tree, the provenance path off), "untrusted" (only trees with
    an untrusted-provenance reason), "strong" (a reason other than a temp-dir script or
    binary: network, fileless, service, decoded payload)."""
    class V(DiscoveryBurst):
        def script_of_tree(self, ev: Event, ctx: RuleContext) -> ProcEntry | None:
            if per == "script":
                return DiscoveryBurst.script_of_tree(ev, ctx)
            chain = ctx.procs.ancestry(ev.proc.pid, 64)
            return chain[-1] if len(chain) > 1 else None

        def evaluate(self, ev: Event, ctx: RuleContext) -> list[Any]:
            if gate != "any":
                reasons = set(prov.reasons(ev, ctx)[0])
                if not reasons or (gate == "strong" and reasons <= LOCAL):
                    return []
            return super().evaluate(ev, ctx)

    r = V()
    r.count = r.untrusted_count = count
    r.prov = None        # the tree key of script_of_tree; the gate is checked above
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recording", type=Path)
    args = ap.parse_args()
    events = read_all(args.recording)
    pack = behavior_rules()
    prov = next(r for r in pack if isinstance(r, Provenance))
    names = [(c, per, g) for per in ("script", "tree") for g in ("any", "untrusted", "strong")
             for c in (1, 2, 3, 4)]
    rules = {n: variant(*n, prov=prov) for n in names}
    fired: dict[tuple[int, str, str], list[str]] = collections.defaultdict(list)
    procs = ProcessTable()
    ctx = RuleContext(procs)
    for ev in events:
        procs.update(ev)
        prov.evaluate(ev, ctx)
        if ev.type != "exec":
            continue
        for n, r in rules.items():
            for h in r.evaluate(ev, ctx):
                fired[n].append(h.title[:140])
    print(f"{len(events)} events, {sum(e.type == 'exec' for e in events)} execs")
    for n in names:
        c, per, g = n
        print(f"bench discovery_whatif_{per}_{g}_{c} {len(fired[n])} alerts")
    for n in names:
        for t in fired[n][:6]:
            print(f"  {n}: {t}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
