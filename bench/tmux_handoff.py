#!/usr/bin/env python3
"""s19-compatconnect measurement (root, this host's compat tier; run under the heavy lock,
not part of `make bench`): runs out of N in which a /tmp script's `tmux send-keys` reached a clean server's pane:
the s18 setup (event sensor + default pack + dispatcher: the exec-time kill-tree from user
space) vs the same plus the compat socket gate (s19)."""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "kernel"), str(REPO / "tests")]
from test_stop_by_default import _clean_tmux, _typed, watching, spawn_in, reap  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
for label, dirs in (("before (no gate)", None), ("after (compat gate)", True)):
    d = Path(tempfile.mkdtemp(prefix="bastion-test-tmux-", dir="/tmp"))
    typed = 0
    try:
        with _clean_tmux(d) as sock, watching([str(d)] if dirs else None) as (cg, w):
            for i in range(N):
                s = d / f"l{i}.sh"
                s.write_text(f"#!/bin/sh\ntmux -S {sock} send-keys -t adm 'touch {d}/ran{i}' Enter\nsleep 5\n")
                reap(spawn_in(cg, ["/bin/sh", str(s)], stdin=subprocess.DEVNULL), 15)
                typed += _typed(sock, d, f"ran{i}")
            kills = sum(1 for a in w.alerts if a.get("enforced_by") == "connect-kill")
            trees = sum(1 for a in w.alerts if a["rule"] == "behavior.launder_via_daemon" and a["action"] == "kill-tree")
        print(f"{label}: typed {typed}/{N}; connect-kill alerts {kills}; exec-rule kill-tree alerts {trees}", flush=True)
    finally:
        shutil.rmtree(d)
