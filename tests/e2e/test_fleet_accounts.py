"""The broker account template of docs/deploy.md, against a real nats-server: a host's
own credentials run its fleet link (alerts, policy watch, status) and cannot push
policy, write as another host, or delete the fleet's stream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from bastion.fleet import admin
from bastion.fleet.config import ConnSpec, FleetSpec
from bastion.fleet.link import FleetLink, connect
from bastion.fleet.output import FleetOutput
from bastion.fleet.queue import DiskQueue
from bastion.fleet.sign import keygen
from support.natsd import NatsServer, kv_get, nats_server, stream_messages  # type: ignore[import-not-found]


def host_user(host: str) -> str:
    """One host's entry, as docs/deploy.md gives it."""
    return f"""
    {{ user: {host}, password: "pw-{host}", permissions: {{
        publish: {{ allow: ["bastion.{host}.alerts.*", "bastion.{host}.events.*",
                           "$KV.bastion-hosts.{host}", "$JS.API.>"],
                   deny:  ["$KV.bastion-policy.>", "$JS.API.STREAM.CREATE.>",
                           "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.DELETE.>",
                           "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>"] }}
        subscribe: {{ allow: ["_INBOX.>"] }} }} }}"""


CONFIG = ("authorization {\n  users = [" + host_user("host-a") + host_user("host-b") +
          '\n    { user: admin, password: "pw-admin", permissions: '
          '{ publish: ">", subscribe: ">" } }\n  ]\n}\n')


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[NatsServer]:
    yield from nats_server(tmp_path / "nats", CONFIG)


def _conn(srv: NatsServer, user: str) -> ConnSpec:
    return ConnSpec(servers=(srv.url,), user=user, password=f"pw-{user}")


def _try(conn: ConnSpec, what: Any) -> str:
    """'ok' or the error the broker gave for one operation."""
    async def go() -> str:
        nc = await connect(conn, reconnect=False)
        try:
            await what(nc.jetstream())
            return "ok"
        except Exception as exc:  # noqa: BLE001 - the refusal is the result
            return f"{type(exc).__name__}: {exc}"
        finally:
            await nc.close()
    return asyncio.run(go())


def test_host_credentials_run_the_link_and_nothing_more(srv: NatsServer, tmp_path: Path) -> None:
    admin_conn = _conn(srv, "admin")
    admin.run(admin.init(admin_conn))
    keygen(tmp_path / "k")
    pushed = admin.run(admin.push(admin_conn, "version: 1\nmode: audit\n", tmp_path / "k"))
    applied: list[str] = []
    spec = FleetSpec(conn=_conn(srv, "host-a"), host="host-a", public_key=tmp_path / "k.pub",
                     heartbeat_s=1.0)
    q = DiskQueue(tmp_path / "q.db", 1000)
    link = FleetLink(spec, data_dir=tmp_path / "a", queue=q)
    link.bind(lambda text, src: applied.append(text) or {}, lambda *a: None, lambda: {"tier": "compat"})
    out = FleetOutput(spec, q, link)
    link.start()
    try:
        out.write([("alert", {"id": uuid.uuid4().hex, "severity": "high", "rule": "r"})])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                applied and len(q) == 0 and kv_get(srv.url.replace("nats://", "nats://admin:pw-admin@"),
                                                   "bastion-hosts", "host-a")):
            time.sleep(0.2)
        assert applied == ["version: 1\nmode: audit\n"], "the link could not read the policy"
        assert len(q) == 0, "the link could not publish its alerts"
        st = json.loads(kv_get(srv.url.replace("nats://", "nats://admin:pw-admin@"),
                               "bastion-hosts", "host-a") or b"{}")
        assert st.get("policy_sha256") == pushed.sha256
    finally:
        link.close()
    a = _conn(srv, "host-a")

    async def put_policy(js: Any) -> None:
        await (await js.key_value("bastion-policy")).put("policy", b"x")

    async def as_host_b(js: Any) -> None:
        await js.publish("bastion.host-b.alerts.high", b"{}", timeout=2)

    async def b_status(js: Any) -> None:
        await (await js.key_value("bastion-hosts")).put("host-b", b"{}")

    async def odd_subject(js: Any) -> None:
        await js.publish("bastion.host-a.alerts.x.y", b"{}", timeout=2)

    async def delete_stream(js: Any) -> None:
        await js.delete_stream("BASTION")

    async def purge_stream(js: Any) -> None:
        await js.purge_stream("BASTION")

    for what in (put_policy, as_host_b, b_status, odd_subject, delete_stream, purge_stream):
        assert _try(a, what) != "ok", f"host-a's credentials could {what.__name__}"
    msgs = stream_messages(srv.url, user="admin", password="pw-admin")
    assert [m[0] for m in msgs] == ["bastion.host-a.alerts.high"]
