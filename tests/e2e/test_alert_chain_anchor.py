"""The agent anchors the alert chain (issue 14.7): a store truncated while no agent ran is a
critical alert at the next start, and every alert published to the outputs carries its
place in the chain (the copy a root attacker on this host cannot rewrite)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from bastion.store import chain
from bastion.store.db import Store

REPO = Path(__file__).resolve().parents[2]
BASTION = str(REPO / ".venv" / "bin" / "bastion")


def _alert(i: int) -> dict[str, object]:
    return {"time": f"2026-11-26T05:00:{i:02d}.000000Z", "id": f"a{i}", "rule": "r", "title": f"t{i}",
            "severity": "high", "attack": [], "action": "alert",
            "process": {"pid": i, "ppid": 1, "exe": "/bin/x", "cmdline": "", "uid": 0}}


def test_truncation_while_down_is_alerted_at_start_and_published_with_its_anchor(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Store.open(data) as s:
        for i in range(1, 7):
            s.add_alert(_alert(i))
    c = sqlite3.connect(data / "bastion.db")
    c.execute("DELETE FROM alerts WHERE seq > 4")   # the attacker, with the agent stopped
    c.commit()
    c.close()
    out = tmp_path / "out.jsonl"
    policy = tmp_path / "p.yaml"
    policy.write_text(f"version: 1\noutputs:\n  - type: jsonl\n    path: {out}\n")
    trace = tmp_path / "empty.jsonl"
    trace.write_text("")
    r = subprocess.run([BASTION, "run", "--replay", str(trace), "--replay-outputs",
                        "--policy", str(policy), "--quiet",
                        "--data-dir", str(data), "--socket", str(tmp_path / "s.sock")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    published = [json.loads(line) for line in out.read_text().splitlines()]
    said = [a for a in published if a.get("rule") == "bastion.store.chain_anchor"]
    assert len(said) == 1 and said[0]["severity"] == "critical"
    assert "truncated: store has 4 rows, anchor says 6" in said[0]["title"]
    # published with its place in the chain: the store's head after it was written
    with Store.open(data, readonly=True) as s:
        head = s._conn.execute("SELECT count(*), max(seq) FROM alerts").fetchone()
        mac = s._conn.execute("SELECT mac FROM alerts WHERE seq = ?", (head[1],)).fetchone()[0]
    assert chain.Anchor.from_json(said[0], where="out.jsonl") == chain.Anchor(head[0], head[1], mac)
