"""A real nats-server (Debian's package) with JetStream for the fleet tests: a free
port, a temporary store dir; stop/start keeps the store (a broker outage)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    def __init__(self, store: Path, config: str = "") -> None:
        self.store = store
        self.port = free_port()
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"nats-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store),
                "-l", str(self.log)]
        if self.config:
            conf = self.store.parent / f"nats-{self.port}.conf"
            conf.write_text(self.config)
            args += ["-c", str(conf)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nats-server exited: " + (self.log.read_text()
                                                               if self.log.exists() else ""))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("nats-server did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def nats_server(tmp: Path, config: str = "") -> Iterator[NatsServer]:
    if not Path(NATS_SERVER).exists():
        pytest.fail("nats-server is not installed (scripts/install-deps.sh installs it)")
    tmp.mkdir(parents=True, exist_ok=True)
    srv = NatsServer(tmp / "js", config)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def stream_messages(url: str, stream: str = "BASTION", **conn: object) -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
    """Every message the stream holds: (subject, Nats-Msg-Id, decoded JSON)."""
    import asyncio
    import json

    import nats

    async def go() -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
        nc = await nats.connect(url, **conn)  # type: ignore[arg-type]
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                if info.state.messages == 0:
                    break
                m = await js.get_msg(stream, seq)
                out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""),
                            json.loads(m.data or b"{}")))
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def kv_get(url: str, bucket: str, key: str) -> bytes | None:
    import asyncio

    import nats
    import nats.js.errors

    async def go() -> bytes | None:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(bucket)
            try:
                e = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            return bytes(e.value or b"")
        finally:
            await nc.close()

    return asyncio.run(go())


class Consumer:
    """One durable JetStream pull consumer on ``subject``: each :meth:`drain` returns the
    messages delivered since the previous one (acked), as (subject, msg id, JSON).

    A redelivery (an ack lost, or a message caught by a fetch that timed out: nats-py
    says such a request can outlive its client) has the stream sequence already seen and
    is not counted twice; two stream sequences with one alert id would be a real
    duplicate.  ``ack_wait`` is short so such a message comes back quickly."""

    def __init__(self, url: str, subject: str = "bastion.*.alerts.>", stream: str = "BASTION",
                 durable: str = "test-consumer") -> None:
        self.url, self.subject, self.stream, self.durable = url, subject, stream, durable
        self.seen: list[tuple[str, str, dict]] = []  # type: ignore[type-arg]
        self._seqs: set[int] = set()

    def drain(self) -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
        import asyncio
        import json

        import nats
        import nats.errors
        from nats.js.api import ConsumerConfig

        async def go() -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
            nc = await nats.connect(self.url)
            out = []
            try:
                js = nc.jetstream()
                sub = await js.pull_subscribe(self.subject, durable=self.durable, stream=self.stream,
                                              config=ConsumerConfig(ack_wait=2.0))
                while True:
                    try:
                        msgs = await sub.fetch(100, timeout=0.5)
                    except (nats.errors.TimeoutError, asyncio.TimeoutError):
                        break   # nothing more now (nats-py raises either)
                    for m in msgs:
                        seq = m.metadata.sequence.stream
                        if seq not in self._seqs:
                            self._seqs.add(seq)
                            out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""),
                                        json.loads(m.data)))
                        await m.ack()
            finally:
                await nc.close()
            return out

        new = asyncio.run(go())
        self.seen += new
        return new


def wait(cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """``cond()``'s first true value, polled every 0.1 s; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
