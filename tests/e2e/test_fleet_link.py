"""The fleet link against a real nats-server (Debian's, JetStream on a free port):
at-least-once delivery through a broker outage with one copy per alert id, and the
policy path's refusals (tampered, foreign key, replayed older, equivocating).

No kernel: the link's apply callback records what it would apply."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from bastion.fleet import admin
from bastion.fleet.config import ConnSpec, FleetSpec
from bastion.fleet.link import FleetLink
from bastion.fleet.output import FleetOutput
from bastion.fleet.queue import DiskQueue
from bastion.fleet.sign import keygen, load_private_key, sign_policy
from support.natsd import NatsServer, kv_get, nats_server, stream_messages, wait  # type: ignore[import-not-found]


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[NatsServer]:
    yield from nats_server(tmp_path / "nats")


class Recorder:
    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []
        self.alerts: list[tuple[str, str, str, dict[str, Any]]] = []

    def apply(self, text: str, source: str) -> dict[str, Any]:
        from bastion.config import parse_policy

        parse_policy(text, source)          # invalid: raises, like the agent's path
        self.applied.append((text, source))
        return {"mode": "audit"}

    def alert(self, rule: str, title: str, severity: str, ev: dict[str, Any]) -> None:
        self.alerts.append((rule, title, severity, ev))


def _link(srv: NatsServer, data: Path, host: str, pub: Path | None = None,
          rec: Recorder | None = None) -> tuple[FleetLink, FleetOutput | None]:
    spec = FleetSpec(conn=ConnSpec(servers=(srv.url,)), host=host, public_key=pub, heartbeat_s=1.0)
    q = DiskQueue(data / "fleet-queue.db", 1000)
    link = FleetLink(spec, data_dir=data, queue=q)
    rec = rec or Recorder()
    link.bind(rec.apply, rec.alert, lambda: {"tier": "compat"})
    return link, FleetOutput(spec, q, link)


def _alert(i: int) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "rule": "test.rule", "severity": "high", "title": f"a{i}"}


def test_broker_outage_loses_nothing_and_each_alert_arrives_once(srv: NatsServer, tmp_path: Path) -> None:
    admin.run(admin.init(ConnSpec(servers=(srv.url,))))
    link, out = _link(srv, tmp_path / "a", "host-a")
    assert out is not None
    link.start()
    try:
        first = [_alert(i) for i in range(5)]
        out.write([("alert", a) for a in first])
        wait(lambda: len(stream_messages(srv.url)) == 5, what="first alerts")
        srv.stop()                                       # the broker goes away
        during = [_alert(i) for i in range(5, 25)]
        out.write([("alert", a) for a in during])
        time.sleep(1.5)
        assert len(link.queue or []) == 20              # held on disk meanwhile
        srv.start()
        wait(lambda: link.queue is not None and len(link.queue) == 0, 30, "queue drained")
        msgs = stream_messages(srv.url)
        ids = [m[2]["id"] for m in msgs]
        assert sorted(ids) == sorted(a["id"] for a in first + during)   # every one, once
        assert {m[0] for m in msgs} == {"bastion.host-a.alerts.high"}
        assert all(m[1] == f"host-a:{m[2]['id']}" for m in msgs)
        # an ack lost after the broker stored the message: the record goes out again
        # and the stream drops the copy by its message id
        assert link.queue is not None
        link.queue.put_many([(f"host-a:{first[0]['id']}", "bastion.host-a.alerts.high",
                              json.dumps(first[0]).encode())])
        link.wake()
        wait(lambda: len(link.queue or []) == 0, what="resent record acked")
        assert len(stream_messages(srv.url)) == 25
    finally:
        link.close()


def test_queue_survives_an_agent_restart_without_broker(srv: NatsServer, tmp_path: Path) -> None:
    admin.run(admin.init(ConnSpec(servers=(srv.url,))))
    srv.stop()
    link, out = _link(srv, tmp_path / "a", "host-a")
    assert out is not None
    link.start()
    alerts = [_alert(i) for i in range(3)]
    out.write([("alert", a) for a in alerts])
    link.close()                                      # the agent stops with the broker away
    srv.start()
    link2, _ = _link(srv, tmp_path / "a", "host-a")
    link2.start()
    try:
        wait(lambda: len(stream_messages(srv.url)) == 3, 30, "queued alerts after restart")
        assert sorted(m[2]["id"] for m in stream_messages(srv.url)) == sorted(a["id"] for a in alerts)
    finally:
        link2.close()


def test_policy_rollout_refusals(srv: NatsServer, tmp_path: Path) -> None:
    conn = ConnSpec(servers=(srv.url,))
    admin.run(admin.init(conn))
    pub = keygen(tmp_path / "fleet.key")
    sk = load_private_key(tmp_path / "fleet.key")
    rec = Recorder()
    link, _ = _link(srv, tmp_path / "a", "host-a", pub, rec)
    link.start()
    try:
        pushed = admin.run(admin.push(conn, "version: 1\nmode: audit\n", tmp_path / "fleet.key"))
        wait(lambda: rec.applied, what="first policy")
        assert rec.applied[-1][0] == "version: 1\nmode: audit\n"
        st = wait(lambda: json.loads(kv_get(srv.url, "bastion-hosts", "host-a") or b"{}")
                  .get("policy_version") == 1 and kv_get(srv.url, "bastion-hosts", "host-a"),
                  what="status record")
        st = json.loads(st)
        assert st["policy_sha256"] == pushed.sha256 and st["tier"] == "compat"

        def refused(n: int, needle: str) -> None:
            wait(lambda: len([a for a in rec.alerts if a[0] == "bastion.fleet.policy_refused"]) >= n,
                 what=needle)
            last = [a for a in rec.alerts if a[0] == "bastion.fleet.policy_refused"][-1]
            assert needle in last[1] and last[2] == "high", last

        # a host holding the fleet credentials writes the bucket: every form is refused
        admin.run(admin.put_raw(conn, b"version: 1\nmode: learn\n"))          # unsigned
        refused(1, "not a signed policy")
        good = sign_policy("version: 1\nmode: enforce\n", 5, sk)
        tampered = good.replace(b'"payload":"', b'"payload":"A', 1)
        admin.run(admin.put_raw(conn, tampered))
        refused(2, "bad")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        admin.run(admin.put_raw(conn, sign_policy("version: 1\nmode: learn\n", 9,
                                                  Ed25519PrivateKey.generate())))
        refused(3, "bad signature")
        admin.run(admin.put_raw(conn, sign_policy("version: 1\nmode: learn\n", 1, sk)))
        refused(4, "already applied with other content")
        invalid = sign_policy("version: 1\nmode: nonsense\n", 2, sk)      # signed but invalid
        admin.run(admin.put_raw(conn, invalid))
        refused(5, "nonsense")
        assert len(rec.applied) == 1                     # nothing replaced what runs
        admin.run(admin.push(conn, "version: 1\nmode: enforce\n", tmp_path / "fleet.key",
                             version=3))
        wait(lambda: len(rec.applied) == 2, what="v3")
        old = sign_policy("version: 1\nmode: audit\n", 2, sk)   # an old signed policy, replayed
        admin.run(admin.put_raw(conn, old))
        refused(6, "replayed policy: version 2 is older than the applied version 3")
        assert len(rec.applied) == 2
    finally:
        link.close()
    # restart: the applied v3 comes back from the data dir before the broker is asked
    srv.stop()
    rec2 = Recorder()
    link2, _ = _link(srv, tmp_path / "a", "host-a", pub, rec2)
    link2.start()
    try:
        wait(lambda: rec2.applied, what="restored policy")
        assert rec2.applied[0][0] == "version: 1\nmode: enforce\n"
    finally:
        link2.close()


def test_a_full_queue_is_alerted_not_silent(srv: NatsServer, tmp_path: Path) -> None:
    srv.stop()                                   # the broker is away for the whole test
    spec = FleetSpec(conn=ConnSpec(servers=(srv.url,)), host="host-a")
    q = DiskQueue(tmp_path / "q.db", 100)
    link = FleetLink(spec, data_dir=tmp_path, queue=q)
    rec = Recorder()
    link.bind(None, rec.alert, lambda: {})
    out = FleetOutput(spec, q, link)
    out.write([("alert", _alert(i)) for i in range(100)])
    with pytest.raises(OverflowError, match="fleet queue full"):
        out.write([("alert", _alert(i)) for i in range(30)])
    with pytest.raises(OverflowError):
        out.write([("alert", _alert(0))])
    full = [a for a in rec.alerts if a[0] == "bastion.fleet.queue_full"]
    assert len(full) == 1 and full[0][3]["refused"] == 30 and full[0][2] == "high"
    assert len(q) == 100 and q.refused == 31
    q.close()
