"""SigmaHQ rules evaluated live: run what a rule describes, see the alert with its author."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import AgentProc, start_agent  # type: ignore[import-not-found]

CORPUS = Path("/work/shared/corpus/sigma/rules/linux")
RULES = {
    "process_creation/proc_creation_lnx_base64_decode.yml": {
        "id": "e2072cab-8c9a-459b-b63c-40ae79e27031", "title": "Decode Base64 Encoded Text",
        "author": "Daniil Yugoslavskiy, oscd.community", "level": "low",
        "tags": ["attack.stealth", "attack.t1027"], "attack": ["T1027"]},
    "process_creation/proc_creation_lnx_system_info_discovery.yml": {
        "id": "42df45e7-e6e9-43b5-8f26-bec5b39cc239", "title": "System Information Discovery"},
    "auditd/lnx_auditd_system_info_discovery.yml": {
        "id": "f34047d9-20d3-4e8b-8672-0a35cc50dc71", "title": "System Information Discovery - Auditd",
        "author": "Pawel Mazur"},
}


def _alerts(agent: AgentProc, pid: int, want: set[str], timeout: float = 15) -> dict[str, dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        r = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json", "--pid", str(pid))
        got = {a["rule"]: a for a in map(json.loads, filter(str.strip, r.stdout.splitlines()))}
        if want <= set(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.fixture
def sigma_agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    rules = tmp_path / "sigma"
    for rel in RULES:
        dst = rules / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CORPUS / rel, dst)
    (rules / "broken.yml").write_text("title: [unclosed\n")   # bad input: reported, rest load
    a = start_agent(tmp_path, "--quiet", "--sigma", str(rules))
    try:
        yield a
    finally:
        a.stop()


def test_sigma_rules_alert_live_with_author(sigma_agent: AgentProc) -> None:
    err = "".join(sigma_agent.stderr)
    assert "broken.yml" in err, err                     # the malformed file is named ...
    assert "3 rules loaded" in err, err                 # ... and the others still load
    p = subprocess.run(["base64", "-d"], input="aGFybWxlc3MK\n", capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "harmless\n"
    b64 = subprocess.Popen(["base64", "--decode"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           text=True)
    b64.communicate("aGk=\n")
    u = subprocess.Popen(["uname", "-a"], stdout=subprocess.DEVNULL)
    u.wait()
    want_b64 = {"sigma:e2072cab-8c9a-459b-b63c-40ae79e27031"}
    got = _alerts(sigma_agent, b64.pid, want_b64)
    assert want_b64 <= set(got), got
    a = got["sigma:e2072cab-8c9a-459b-b63c-40ae79e27031"]
    meta = RULES["process_creation/proc_creation_lnx_base64_decode.yml"]
    assert a["author"] == meta["author"]                       # DRL 1.1 attribution
    assert a["sigma"]["author"] == meta["author"]
    assert a["sigma"]["id"] == meta["id"] and a["title"] == meta["title"]
    assert a["sigma"]["level"] == "low" and a["severity"] == "low"
    assert a["sigma"]["tags"] == meta["tags"] and a["attack"] == meta["attack"]
    assert a["action"] == "alert" and a["process"]["pid"] == b64.pid
    want_u = {"sigma:42df45e7-e6e9-43b5-8f26-bec5b39cc239",   # process_creation: Image /uname
              "sigma:f34047d9-20d3-4e8b-8672-0a35cc50dc71"}   # auditd: EXECVE a0 uname
    got = _alerts(sigma_agent, u.pid, want_u)
    assert want_u <= set(got), got
    assert got["sigma:f34047d9-20d3-4e8b-8672-0a35cc50dc71"]["author"] == "Pawel Mazur"
    assert got["sigma:f34047d9-20d3-4e8b-8672-0a35cc50dc71"]["evidence"]["record"]["a0"] == "uname"
