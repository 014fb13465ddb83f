"""Issue 17.3 end to end: nats-server (JetStream, free port, temp store) and two real
agents (two data dirs, compat tier here) as a user runs them.

- an alert from each agent arrives in one consumer, on per-host subjects;
- broker stopped, alerts raised, broker started: every alert arrives, once per id;
- a signed policy pushed with ``bastion fleet push`` reaches both agents (applied
  hash reported in the hosts bucket and by ``bastion fleet status``; enforced);
- a tampered one is refused and alerted by both, and what runs stays enforced.

Scoped: every HIPS rule names a private copy of dash (its own inode), pins live
under test pin roots removed in teardown, enforcement has a dead-man deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import BASTION, AgentProc, start_agent  # type: ignore[import-not-found]
from support.natsd import Consumer, NatsServer, kv_get, nats_server, wait  # type: ignore[import-not-found]

HOSTS = ("fleet-a", "fleet-b")


def _runs(demo: Path, tool: str) -> bool:
    r = subprocess.run([str(demo), "-c", tool], capture_output=True, text=True, timeout=30)
    return r.returncode == 0


def _rule(name: str, demo: Path, tool: str) -> str:
    return (f"  - {{name: {name}, subject: {{exe: {demo}}}, operations: [exec],\n"
            f"     objects: [{tool}], action: deny}}\n")


def _fleet(url: str, host: str, pub: Path) -> str:
    return (f"fleet:\n  servers: [{url}]\n  host: {host}\n  public_key: {pub}\n"
            f"  heartbeat: 1s\n")


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[NatsServer]:
    if os.geteuid() != 0:
        pytest.skip("the agents need root")
    yield from nats_server(tmp_path / "nats")


@pytest.fixture
def fleet(tmp_path: Path, srv: NatsServer) -> Iterator[dict[str, Any]]:
    r = subprocess.run([BASTION, "fleet", "init", "--server", srv.url], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([BASTION, "fleet", "keygen", str(tmp_path / "fleet.key")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pub = tmp_path / "fleet.key.pub"
    agents: dict[str, AgentProc] = {}
    demos: dict[str, Path] = {}
    roots = [Path("/sys/fs/bpf") / f"bastion-test-{uuid.uuid4().hex[:8]}" for _ in HOSTS]
    try:
        for host, root in zip(HOSTS, roots):
            d = tmp_path / host
            d.mkdir()
            demo = d / "demo_sh"
            shutil.copy("/bin/dash", demo)
            demos[host] = demo
            pol = d / "policy.yaml"
            pol.write_text("version: 1\nmode: enforce\nrules:\n" + _rule("local-no-id", demo, "/usr/bin/id")
                           + _fleet(srv.url, host, pub))
            agents[host] = start_agent(d, "--quiet", "--policy", str(pol), "--pin-root", str(root),
                                       "--test-deadline", "150")
        yield {"agents": agents, "demos": demos, "pub": pub, "key": tmp_path / "fleet.key",
               "url": srv.url, "srv": srv}
    finally:
        for a in agents.values():
            a.stop()
        for root in roots:
            if root.exists():
                subprocess.run([BASTION, "reset", "--emergency", "--pin-root", str(root)], timeout=60)
            assert not root.exists()


def _status(url: str, host: str) -> dict[str, Any]:
    raw = kv_get(url, "bastion-hosts", host)
    return json.loads(raw) if raw else {}


def test_two_agents_one_consumer_outage_and_signed_rollout(fleet: dict[str, Any], tmp_path: Path) -> None:
    url, srv, agents, demos = fleet["url"], fleet["srv"], fleet["agents"], fleet["demos"]
    consumer = Consumer(url)
    # 1. an alert from each agent, in one consumer, on its host's subject
    for host in HOSTS:
        assert not _runs(demos[host], "/usr/bin/id")
    wait(lambda: consumer.drain() is not None and {
        m[0] for m in consumer.seen if m[2].get("rule") == "hips:local-no-id"} == {
        f"bastion.{h}.alerts.high" for h in HOSTS}, what="an alert from each agent")
    for subject, msg_id, alert in consumer.seen:
        assert msg_id.endswith(alert["id"]) and msg_id.startswith(subject.split(".")[1] + ":")

    # 2. broker outage: alerts raised meanwhile all arrive, once per id
    before = {m[2]["id"] for m in consumer.seen}
    srv.stop()
    for _ in range(4):
        for host in HOSTS:
            assert not _runs(demos[host], "/usr/bin/id")
    time.sleep(1.5)
    srv.start()
    def outage_alerts() -> list[tuple[str, str, dict[str, Any]]]:
        consumer.drain()
        return [m for m in consumer.seen if m[2]["id"] not in before
                and m[2].get("rule") == "hips:local-no-id"]
    wait(lambda: len(outage_alerts()) >= 8, 45, "the alerts raised during the outage")
    time.sleep(2)
    ids = [m[2]["id"] for m in consumer.seen]
    assert len(ids) == len(set(ids)), "an alert arrived twice"
    from support.natsd import stream_messages  # type: ignore[import-not-found]
    stored = [m[2]["id"] for m in stream_messages(url)]
    assert len(stored) == len(set(stored)) and set(ids) <= set(stored)
    got = outage_alerts()
    assert len(got) == 8
    assert sorted(m[0] for m in got) == sorted(f"bastion.{h}.alerts.high" for h in HOSTS for _ in range(4))

    # 3. a signed policy reaches both agents; the applied hash is reported
    shared = tmp_path / "shared_sh"
    shutil.copy("/bin/dash", shared)
    pol = tmp_path / "fleet-policy.yaml"
    pol.write_text("version: 1\nmode: enforce\nrules:\n" + _rule("fleet-no-whoami", shared,
                                                                  "/usr/bin/whoami"))
    r0 = subprocess.run([str(shared), "-c", "/usr/bin/whoami"], capture_output=True, text=True,
                        timeout=30)
    assert r0.returncode == 0, (r0.returncode, r0.stdout, r0.stderr,
                                [m[2]["title"] for m in consumer.seen[-5:]])
    r = subprocess.run([BASTION, "fleet", "push", str(pol), "--key", str(fleet["key"]),
                        "--server", url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sha = r.stdout.split("sha256 ")[1].split(",")[0]
    for host in HOSTS:
        wait(lambda: _status(url, host).get("policy_sha256") == sha, 30, f"{host} applies v1")
        st = _status(url, host)
        assert st["policy_version"] == 1 and st["tier"] in ("compat", "lsm")
    assert not _runs(shared, "/usr/bin/whoami")      # enforced
    assert _runs(demos[HOSTS[0]], "/usr/bin/id")    # the local rule was replaced
    table = subprocess.run([BASTION, "fleet", "status", "--server", url], capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["HOST", "TIER", "POLICY", "SHA256"]
    for host in HOSTS:
        row = next(l for l in lines if l.startswith(host))
        assert "v1" in row and sha[:12] in row
    wait(lambda: consumer.drain() is not None and {
        m[0] for m in consumer.seen if m[2].get("rule") == "bastion.fleet.policy_applied"} == {
        f"bastion.{h}.alerts.info" for h in HOSTS}, what="applied alerts")

    # 4. a tampered policy (a host with the fleet creds edits the bucket) is refused by both
    from bastion.fleet import admin
    from bastion.fleet.config import ConnSpec

    raw = kv_get(url, "bastion-policy", "policy")
    assert raw is not None
    env = json.loads(raw)
    import base64
    body = json.loads(base64.b64decode(env["payload"]))
    body["policy"] = "version: 1\nmode: enforce\nrules: []\n"     # drop the rule
    body["version"] = 2
    env["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    admin.run(admin.put_raw(ConnSpec(servers=(url,)), json.dumps(env).encode()))
    wait(lambda: consumer.drain() is not None and {
        m[0] for m in consumer.seen if m[2].get("rule") == "bastion.fleet.policy_refused"} == {
        f"bastion.{h}.alerts.high" for h in HOSTS}, what="refusals from both agents")
    refusal = next(m[2] for m in consumer.seen if m[2].get("rule") == "bastion.fleet.policy_refused")
    assert "bad signature" in refusal["title"]
    assert not _runs(shared, "/usr/bin/whoami")      # nothing weakened
    for host in HOSTS:
        assert _status(url, host).get("policy_sha256") == sha
        assert "bad signature" in wait(lambda: _status(url, host).get("refused", {}).get("reason", ""),
                                       what="refusal reported")
