"""The agent's link to the fleet: one thread running an asyncio NATS client.

It does three things, none of them on the agent's loop:

- **send**: records the fleet output put in the on-disk queue
  (:mod:`bastion.fleet.queue`) are published to JetStream with
  ``Nats-Msg-Id`` = the alert id and leave the queue only once acked; while
  the broker is away they wait (bounded) and go out when it is back;
- **policy**: the policy bucket's key is watched (and read again every few
  seconds as a backstop); each new value is verified (ed25519 signature with
  the configured public key, format, hash), refused if its version is older
  than the applied one (or the same version with other content), validated
  and applied through the agent's own apply path (the same as
  ``bastion policy apply``: compile, then an atomic swap); the last applied
  envelope is kept in the data dir and re-applied at the next start, before
  the broker is reached.  Refusals are alerted and leave what runs in place;
- **status**: ``hosts_bucket[<host>]`` holds this host's applied policy hash,
  version, tier and last-seen time (``bastion fleet status`` lists them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bastion.errors import BastionError
from bastion.fleet.config import ConnSpec, FleetSpec
from bastion.fleet.queue import DiskQueue
from bastion.fleet.sign import FleetPolicyError, SignedPolicy, load_public_key, verify_policy

log = logging.getLogger("bastion.fleet")

SEND_BATCH = 256
POLICY_POLL_S = 5.0

ApplyFn = Callable[[str, str], dict[str, Any]]          # (policy text, source) -> summary
AlertFn = Callable[[str, str, str, dict[str, Any]], None]  # rule, title, severity, evidence
InfoFn = Callable[[], dict[str, Any]]


def ssl_context(conn: ConnSpec) -> ssl.SSLContext | None:
    if conn.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(conn.tls.ca) if conn.tls.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if conn.tls.cert is not None and conn.tls.key is not None:
        ctx.load_cert_chain(str(conn.tls.cert), str(conn.tls.key))
    return ctx


async def connect(conn: ConnSpec, *, reconnect: bool = True, timeout: float = 5.0,
                  **callbacks: Any) -> Any:
    """A nats-py client connected to ``conn`` (raises on failure)."""
    import nats

    kw: dict[str, Any] = {"servers": list(conn.servers), "name": conn.name,
                          "connect_timeout": timeout, "allow_reconnect": reconnect,
                          "max_reconnect_attempts": -1 if reconnect else 0,
                          "reconnect_time_wait": 1, **callbacks}
    if conn.user is not None:
        kw["user"], kw["password"] = conn.user, conn.password
    if conn.token is not None:
        kw["token"] = conn.token
    if conn.creds is not None:
        kw["user_credentials"] = str(conn.creds)
    ctx = ssl_context(conn)
    if ctx is not None:
        kw["tls"] = ctx
    return await nats.connect(**kw)


@dataclass
class FleetState:
    """What the link last applied or refused (persisted: ``<data dir>/fleet/applied.json``)."""

    version: int = 0
    sha256: str = ""
    issued: str = ""
    applied_at: str = ""
    envelope: str = ""
    refused: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "sha256": self.sha256, "issued": self.issued,
                "applied_at": self.applied_at, "envelope": self.envelope}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FleetLink:
    def __init__(self, spec: FleetSpec, *, data_dir: Path, queue: DiskQueue | None) -> None:
        self.spec = spec
        self.queue = queue
        self.state_path = data_dir / "fleet" / "applied.json"
        self.pub = load_public_key(spec.public_key) if spec.public_key else None
        self.state = self._load_state()
        self.connected = False
        self.sent = 0
        self.publish_errors = 0
        self._apply: ApplyFn | None = None
        self._alert: AlertFn | None = None
        self._info: InfoFn = lambda: {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stop = threading.Event()
        self._last_revision = 0
        self._live_sha = ""      # the fleet policy this process applied
        self._refused_unsaid = 0
        self._refused_said_at = float("-inf")
        self._status_put: Callable[[], Any] | None = None

    def bind(self, apply: ApplyFn | None, alert: AlertFn, info: InfoFn) -> None:
        self._apply, self._alert, self._info = apply, alert, info

    # ---- state ---------------------------------------------------------------------

    def _load_state(self) -> FleetState:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return FleetState()
        except (OSError, ValueError) as exc:
            log.warning("fleet: %s unreadable (%s): starting without an applied fleet policy",
                        self.state_path, exc)
            return FleetState()
        st = FleetState(**{k: raw[k] for k in ("version", "sha256", "issued", "applied_at",
                                               "envelope") if k in raw})
        return st

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    # ---- lifecycle (agent thread) ---------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name="bastion-fleet", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        loop, ev = self._loop, self._wake
        if loop is not None and ev is not None:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:   # the loop closed
                pass

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.queue is not None and (self._thread is None or not self._thread.is_alive()):
            self.queue.close()

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "sent": self.sent,
                "queued": len(self.queue) if self.queue is not None else 0,
                "queue_refused": self.queue.refused if self.queue is not None else 0,
                "publish_errors": self.publish_errors, "policy_version": self.state.version,
                "policy_sha256": self.state.sha256}

    def queue_full(self, refused: int) -> None:
        """Records refused by the full disk queue (output worker): alerted at most once a
        minute (that alert itself may find the queue full: it stays in the local store)."""
        self._refused_unsaid += refused
        now = time.monotonic()
        if now - self._refused_said_at < 60.0:
            return
        n, self._refused_unsaid, self._refused_said_at = self._refused_unsaid, 0, now
        self._say("bastion.fleet.queue_full",
                  f"Fleet queue full ({len(self.queue or [])} records waiting for the broker): "
                  f"{n} records not queued for the fleet", "high",
                  {"refused": n, "queue_refused_total": self.queue.refused if self.queue else 0,
                   "connected": self.connected})

    # ---- the policy path (fleet thread; apply runs the agent's own path) -----------

    def _say(self, rule: str, title: str, severity: str, evidence: dict[str, Any]) -> None:
        log.warning("fleet: %s", title) if severity != "info" else log.info("fleet: %s", title)
        if self._alert is not None:
            self._alert(rule, title, severity, evidence)

    def consider(self, envelope: bytes, where: str) -> bool:
        """Verify and apply one envelope; True when applied.  Every refusal is alerted."""
        if self.pub is None:
            return False
        try:
            sp = verify_policy(envelope, self.pub)
            if sp.version < self.state.version:
                raise FleetPolicyError(f"replayed policy: version {sp.version} is older than "
                                       f"the applied version {self.state.version}")
            if sp.version == self.state.version and sp.sha256 != self.state.sha256:
                raise FleetPolicyError(f"version {sp.version} is already applied with other "
                                       f"content ({self.state.sha256[:12]}); a new policy needs "
                                       "a higher version")
            if sp.version == self.state.version and sp.sha256 == self._live_sha:
                return False      # the value this agent applied, seen again (watch + poll)
            if self._apply is None:
                raise FleetPolicyError("this agent cannot apply policies (no HIPS here)")
            summary = self._apply(sp.text, f"fleet:{self.spec.policy_bucket}/"
                                           f"{self.spec.policy_key}@v{sp.version}")
        except BastionError as exc:
            self.state.refused = {"reason": exc.message, "at": _now(), "where": where}
            self._say("bastion.fleet.policy_refused",
                      f"Fleet policy refused ({where}): {exc.message}", "high",
                      {"reason": exc.message, "where": where,
                       "applied_version": self.state.version,
                       "applied_sha256": self.state.sha256})
            return False
        except Exception as exc:  # noqa: BLE001 - an apply failure is alerted, never lost
            self.state.refused = {"reason": f"{type(exc).__name__}: {exc}", "at": _now()}
            self._say("bastion.fleet.policy_refused", f"Fleet policy not applied ({where}): "
                      f"{type(exc).__name__}: {exc}", "high", {"where": where})
            return False
        self.state = FleetState(version=sp.version, sha256=sp.sha256, issued=sp.issued,
                                applied_at=_now(), envelope=envelope.decode())
        self._live_sha = sp.sha256
        self._save_state()
        self._say("bastion.fleet.policy_applied",
                  f"Fleet policy v{sp.version} applied ({sp.sha256[:12]}, key {sp.key_id})",
                  "info", {"version": sp.version, "sha256": sp.sha256, "issued": sp.issued,
                           "where": where, **{k: v for k, v in summary.items()
                                              if isinstance(v, (int, str))}})
        return True

    def _restore(self) -> None:
        """At start: the last applied fleet policy again (signature checked again)."""
        if self.pub is None or not self.state.envelope:
            return
        env = self.state.envelope.encode()
        sp: SignedPolicy | None = None
        try:
            sp = verify_policy(env, self.pub)
        except FleetPolicyError as exc:
            self._say("bastion.fleet.policy_refused",
                      f"Stored fleet policy refused at start: {exc.message}", "high",
                      {"reason": exc.message, "where": str(self.state_path)})
            return
        if sp.version != self.state.version or sp.sha256 != self.state.sha256:
            self._say("bastion.fleet.policy_refused", "Stored fleet policy does not match its "
                      "recorded version/hash: not applied", "high", {"where": str(self.state_path)})
            return
        self.consider(env, str(self.state_path))

    # ---- the fleet thread -----------------------------------------------------------

    def _main(self) -> None:
        try:
            self._restore()
        except Exception:  # noqa: BLE001 - logged; the link still sends alerts
            log.exception("fleet: restoring the stored policy failed")
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._run())
        except Exception:  # noqa: BLE001 - the link's failure must be visible, not fatal
            log.exception("fleet: link stopped")
        finally:
            self._loop = None
            loop.close()

    async def _run(self) -> None:
        self._wake = asyncio.Event()
        backoff = 0.5
        while not self._stop.is_set():
            try:
                nc = await connect(self.spec.conn, disconnected_cb=self._down,
                                   reconnected_cb=self._up, error_cb=self._err)
            except Exception as exc:  # noqa: BLE001 - retried: the broker may be down
                log.info("fleet: cannot connect to %s: %s (retrying)",
                         ",".join(self.spec.conn.servers), exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            self.connected = True
            try:
                await self._session(nc)
            finally:
                self.connected = False
                try:
                    await asyncio.wait_for(nc.close(), 3)
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass

    async def _down(self) -> None:
        self.connected = False

    async def _up(self) -> None:
        self.connected = True
        self.wake()

    async def _err(self, exc: Exception) -> None:
        log.debug("fleet: %s", exc)

    async def _sleep(self, s: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), s)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _session(self, nc: Any) -> None:
        js = nc.jetstream()
        tasks = [asyncio.ensure_future(self._status_loop(js))]
        if self.queue is not None:
            tasks.append(asyncio.ensure_future(self._send_loop(js)))
        if self.pub is not None:
            tasks.append(asyncio.ensure_future(self._policy_loop(js)))
        while not self._stop.is_set() and not nc.is_closed:
            done = [t for t in tasks if t.done()]
            for t in done:
                if t.exception() is not None:
                    log.warning("fleet: task failed: %s", t.exception())
                    for other in tasks:
                        other.cancel()
                    return
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        if self.queue is not None and self._stop.is_set():
            await self._flush_once(js, deadline=time.monotonic() + 2.0)

    async def _publish(self, js: Any, recs: list[tuple[int, str, str, bytes]]) -> list[int]:
        async def one(rec: tuple[int, str, str, bytes]) -> int | None:
            rowid, msg_id, subject, payload = rec
            try:
                await js.publish(subject, payload, timeout=5.0, headers={"Nats-Msg-Id": msg_id})
            except Exception as exc:  # noqa: BLE001 - the record stays queued, retried
                self.publish_errors += 1
                log.debug("fleet: publish %s failed: %s", subject, exc)
                return None
            return rowid

        acked = [r for r in await asyncio.gather(*(one(r) for r in recs)) if r is not None]
        return acked

    async def _flush_once(self, js: Any, deadline: float) -> None:
        assert self.queue is not None
        while time.monotonic() < deadline and len(self.queue):
            recs = self.queue.peek(SEND_BATCH)
            acked = await self._publish(js, recs)
            self.queue.delete(acked)
            self.sent += len(acked)
            if len(acked) < len(recs):
                return

    async def _send_loop(self, js: Any) -> None:
        assert self.queue is not None
        while not self._stop.is_set():
            recs = self.queue.peek(SEND_BATCH) if self.connected else []
            if not recs:
                await self._sleep(0.5)
                continue
            acked = await self._publish(js, recs)
            self.queue.delete(acked)
            self.sent += len(acked)
            if len(acked) < len(recs):
                await self._sleep(1.0)       # the broker is away: wait, keep the rest

    async def _policy_loop(self, js: Any) -> None:
        import nats.errors
        import nats.js.errors

        kv = None
        watcher = None
        while not self._stop.is_set():
            if kv is None:
                try:
                    kv = await js.key_value(self.spec.policy_bucket)
                    watcher = await kv.watch(self.spec.policy_key)
                except Exception as exc:  # noqa: BLE001 - no bucket yet: wait for `fleet init`
                    log.info("fleet: policy bucket %s: %s", self.spec.policy_bucket, exc)
                    kv = watcher = None
                    await asyncio.sleep(POLICY_POLL_S)
                    continue
            entry = None
            assert watcher is not None
            try:
                entry = await watcher.updates(timeout=POLICY_POLL_S)
            except nats.errors.TimeoutError:
                try:   # the backstop: the watch may have lost its consumer in an outage
                    entry = await kv.get(self.spec.policy_key)
                except nats.js.errors.KeyNotFoundError:
                    entry = None
                except Exception as exc:  # noqa: BLE001 - retried on the next round
                    log.debug("fleet: policy get: %s", exc)
                    kv = watcher = None
                    continue
            if entry is None or entry.value is None or getattr(entry, "operation", None):
                continue
            if entry.revision == self._last_revision:
                continue
            self._last_revision = entry.revision
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.consider, bytes(entry.value),
                                       f"{self.spec.policy_bucket}/{self.spec.policy_key}"
                                       f" revision {entry.revision}")
            await self._put_status(js)

    def status_record(self) -> dict[str, Any]:
        return {"host": self.spec.host, "policy_version": self.state.version,
                "policy_sha256": self.state.sha256, "policy_applied_at": self.state.applied_at,
                "refused": self.state.refused, "last_seen": _now(),
                "last_seen_unix": time.time(), **self._info(),
                "queued": len(self.queue) if self.queue is not None else 0}

    async def _put_status(self, js: Any) -> None:
        try:
            kv = await js.key_value(self.spec.hosts_bucket)
            await kv.put(self.spec.host, json.dumps(self.status_record()).encode())
        except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
            log.debug("fleet: status put: %s", exc)

    async def _status_loop(self, js: Any) -> None:
        while not self._stop.is_set():
            await self._put_status(js)
            await asyncio.sleep(self.spec.heartbeat_s)


__all__ = ["FleetLink", "FleetState", "connect", "ssl_context"]
