"""Markdown tables for docs/detection.md from two runs of bench/atomics.py.

    python bench/atomics_report.py before.json after.json > table.md
    python bench/atomics_report.py --blocking shell.json tmp-script.json > blocking.md
"""

from __future__ import annotations

import json
import sys
from typing import Any

# An atomic "ran" when it was not skipped; it counts for the detection rate when it
# ran to completion (exit 0) or was stopped by a block.  "Invisible" atomics leave
# nothing a kernel sensor sees beyond the executor shell itself (shell builtins,
# variable assignments): no exec, so no alert is possible; listed apart.


TAKEN = ("kill", "kill-tree", "quarantine", "deny")   # deny: the open refused (issue 15)

# The must-stop list, by the behaviour an atomic performs (technique, or
# technique-n where a technique mixes behaviours).  "always": stopped whatever the
# provenance; "untrusted": stopped when it comes from an untrusted provenance (the
# ``--provenance tmp-script`` run: the command as a script dropped in /tmp), alerted
# from an administrator's shell (the default run).
MUST_STOP: dict[str, tuple[str, str]] = {
    "T1053.003": ("persistence write (cron)", "untrusted"),
    "T1543.002": ("persistence write (systemd unit)", "untrusted"),
    "T1546.004": ("persistence write (shell profile)", "untrusted"),
    "T1098.004": ("persistence write (authorized_keys)", "untrusted"),
    "T1037.004": ("persistence write (rc scripts)", "untrusted"),
    "T1574.006-1": ("persistence write (ld.so.preload)", "untrusted"),
    "T1548.003": ("persistence write (sudoers)", "untrusted"),
    "T1556.003": ("persistence write (PAM)", "untrusted"),
    "T1003.008-1": ("credential-store read (/etc/shadow)", "untrusted"),
    "T1003.008-4": ("credential-store read (/etc/shadow)", "untrusted"),
    "T1003.008-5": ("credential-store read (/etc/shadow)", "untrusted"),
    "T1552.004": ("credential-store read (private keys)", "untrusted"),
    "T1562.001": ("security-tool shutdown", "untrusted"),
    "T1562.004": ("security-tool shutdown (firewall)", "untrusted"),
    "T1562.006": ("security-tool shutdown (logging configuration)", "untrusted"),
    "T1070.002": ("log wiping", "untrusted"),
    "T1070.003": ("log wiping (shell history)", "untrusted"),
    "T1070.003-8": ("", "not on the list"),   # hostname, whoami with a leading space
    "T1059.004-9": ("decoded payload piped to a shell", "always"),
    "T1140-9": ("decoded payload piped to a shell", "always"),
    "T1486": ("ransomware", "always"),
    "T1105-27": ("exec from tmp of a downloaded binary", "always"),
}


def must_stop(key: tuple[str, int]) -> tuple[str, str] | None:
    got = MUST_STOP.get(f"{key[0]}-{key[1]}") or MUST_STOP.get(key[0])
    return got if got is not None and got[1] != "not on the list" else None


def load(path: str) -> dict[tuple[str, int], dict[str, Any]]:
    d = json.load(open(path))
    rows = {(r["technique"], r["n"]): r for r in d["results"]}
    for r in rows.values():   # a block is an action taken ("kill-skipped: ..." is none)
        if "skipped" not in r:
            r["blocked"] = any(a["action"] in TAKEN for a in r["alerts"])
    return rows


def counted(r: dict[str, Any]) -> bool:
    return "skipped" not in r and (r["rc"] == 0 or r["blocked"])


def invisible(r: dict[str, Any]) -> bool:
    return not r.get("execs") and not r.get("alerts")


def cell(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return "skipped"
    if r["blocked"]:
        acts = sorted({a["action"] for a in r["alerts"] if a["action"] in TAKEN})
        return f"**blocked** ({'/'.join(acts)}; {r['top_severity']})"
    if r["detected"]:
        return f"detected ({r['top_severity']})"
    if r["rc"] != 0:
        return f"did not complete (rc {r['rc']})"
    return "missed"


def why(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    if r["rc"] == 127 or "not found" in r.get("output", ""):
        return "a tool it needs is not installed here"
    if r["rc"] not in (0,) and not r["blocked"]:
        return (r.get("output") or "").strip().splitlines()[-1][:80] if r.get("output") else ""
    if invisible(r):
        return "nothing a kernel sensor sees (shell builtins only)"
    rules = sorted({a["rule"].removeprefix("behavior.") for a in r["alerts"]})
    if not r["detected"]:
        ran = sorted({e.rsplit("/", 1)[-1] for e in r.get("execs", [])})
        low = f"; low/info: {', '.join(rules)}" if rules else ""
        return f"no medium+ alert (ran: {', '.join(ran)[:60]}){low}"
    return ", ".join(rules)[:90]


def summary(rows: dict[tuple[str, int], dict[str, Any]]) -> dict[str, int]:
    ran = [r for r in rows.values() if "skipped" not in r]
    cnt = [r for r in ran if counted(r)]
    vis = [r for r in cnt if not invisible(r)]
    return {"selected": len(rows), "skipped": len(rows) - len(ran), "ran": len(ran),
            "completed_or_blocked": len(cnt), "invisible": len(cnt) - len(vis),
            "counted": len(vis), "detected": sum(r["detected"] for r in vis),
            "blocked": sum(r["blocked"] for r in ran)}


def decided(r: dict[str, Any]) -> bool:
    """A block was the response (taken, or skipped because the target had exited)."""
    return any(a["action"] in TAKEN or a["action"].startswith(("kill-skipped", "kill-tree-skipped"))
               for a in r.get("alerts", []))


def bcell(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return "skipped"
    if r["blocked"]:
        return cell(r)
    if decided(r):
        return f"block decided, target exited first ({r['top_severity']})"
    return cell(r)


def blocking(shell_path: str, tmp_path: str) -> int:
    """The must-stop atomics: outcome from an administrator's shell and from a script
    dropped in /tmp; counted when the atomic did its act (completed, or was stopped)."""
    sh, tmp = load(shell_path), load(tmp_path)
    print("| atomic | behaviour | stopped | from a shell (-c) | from a /tmp script | blocking rules |\n"
          "|---|---|---|---|---|---|")
    need = done = dec = 0
    for key in sorted(sh, key=lambda k: (k[0], k[1])):
        ms = must_stop(key)
        if ms is None or "skipped" in sh[key]:
            continue
        a, b = sh[key], tmp.get(key, {"skipped": "not run"})
        did = counted(a) and not invisible(a) or ("skipped" not in b and b["blocked"])
        if not did:
            continue
        want = b if ms[1] == "untrusted" else a
        ok = "skipped" not in want and want["blocked"]
        need += 1
        done += ok
        dec += "skipped" not in want and decided(want)
        rules = sorted({x["rule"].removeprefix("behavior.") for x in want.get("alerts", [])
                        if x["action"] in TAKEN or x["action"].startswith("kill")})
        print(f"| {key[0]}-{key[1]} | {ms[0]} | {ms[1]} | {bcell(a)} | {bcell(b)} | "
              f"{', '.join(rules) or why(b)[:60]} |")
    print(f"\nmust-stop atomics that did their act: {need}; a block decided where required: "
          f"{dec}; taken (the target still running): {done}")
    return 0


def main() -> int:
    """Two or more runs, oldest first: one column per run (named by its file), the
    rules or the reason of the last."""
    paths = sys.argv[1:]
    if paths[:1] == ["--blocking"] and len(paths) == 3:
        return blocking(paths[1], paths[2])
    if len(paths) < 2:
        print("usage: atomics_report.py run1.json run2.json [run3.json ...]", file=sys.stderr)
        return 2
    runs = [load(p) for p in paths]
    names = [p.rsplit("/", 1)[-1].removesuffix(".json") for p in paths]
    sums = [summary(r) for r in runs]
    print(f"| figure | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for k in sums[0]:
        print(f"| {k.replace('_', ' ')} | {' | '.join(str(s[k]) for s in sums)} |")
    for s, label in zip(sums, names):
        if s["counted"]:
            print(f"\n{label}: {s['detected']} of {s['counted']} visible atomics that completed or "
                  f"were blocked raised medium or higher ({100 * s['detected'] // s['counted']} %); "
                  f"{s['blocked']} blocked.", end="")
    last = runs[-1]
    # per technique: detected of counted, in each run (counted by that run)
    techs = sorted({k[0] for r in runs for k in r})
    print(f"\n\n| technique | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for t in techs:
        cells = []
        for r in runs:
            vis = [x for k, x in r.items() if k[0] == t and counted(x) and not invisible(x)]
            cells.append(f"{sum(x['detected'] for x in vis)}/{len(vis)}" if vis else "-")
        if any(c != "-" for c in cells):
            print(f"| {t} | {' | '.join(cells)} |")
    print(f"\n\n| atomic | name | {' | '.join(names)} | rules ({names[-1]}) / why missed |\n"
          f"|---|---|{'---|' * len(names)}---|")
    for key in sorted(last, key=lambda k: (k[0], k[1])):
        a = last[key]
        cells = [cell(r.get(key, {"skipped": "not run"})) for r in runs]
        print(f"| {key[0]}-{key[1]} | {a['name'][:60]} | {' | '.join(cells)} | {why(a)} |")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
