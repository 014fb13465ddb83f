"""The admin side of the fleet (``bastion fleet init|push|status``): the stream and
buckets, signed policy pushes, and the hosts' status records."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Coroutine, TypeVar

from bastion.errors import BastionError
from bastion.fleet.config import HOSTS_BUCKET, POLICY_BUCKET, POLICY_KEY, STREAM, ConnSpec
from bastion.fleet.link import connect
from bastion.fleet.sign import FleetPolicyError, load_private_key, sign_policy, verify_policy

T = TypeVar("T")

#: Stream limits ``fleet init`` sets: the dedup window outlasts a long broker outage's
#: backlog resend; each host+class subject keeps at most this many messages, so one
#: host flooding evicts only its own oldest alerts, never another host's.
DUPLICATE_WINDOW_S = 3600.0
MAX_MSGS_PER_SUBJECT = 100_000
MAX_MSG_SIZE = 1 * 2**20


class FleetError(BastionError):
    """The broker refused or could not be reached."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass(frozen=True)
class Pushed:
    version: int
    sha256: str
    revision: int


async def _js(conn: ConnSpec) -> tuple[Any, Any]:
    try:
        nc = await connect(conn, reconnect=False)
    except Exception as exc:  # noqa: BLE001 - said with the servers named
        raise FleetError(f"cannot connect to {', '.join(conn.servers)}: {exc}") from exc
    return nc, nc.jetstream()


async def init(conn: ConnSpec, *, prefix: str = "bastion", stream: str = STREAM,
               max_bytes: int = 10 * 2**30) -> list[str]:
    """Create (or update) the alert stream and the two buckets; idempotent."""
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig

    nc, js = await _js(conn)
    done = []
    try:
        cfg = StreamConfig(name=stream, subjects=[f"{prefix}.*.alerts.>", f"{prefix}.*.events.>"],
                           storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S,
                           max_msgs_per_subject=MAX_MSGS_PER_SUBJECT, max_bytes=max_bytes,
                           max_msg_size=MAX_MSG_SIZE, discard=DiscardPolicy.OLD)
        try:
            await js.add_stream(cfg)
        except Exception:  # noqa: BLE001 - it exists: bring its limits up to date
            await js.update_stream(cfg)
        done.append(f"stream {stream} ({prefix}.*.alerts.>, {prefix}.*.events.>)")
        await js.create_key_value(bucket=POLICY_BUCKET, history=16, max_value_size=4 * 2**20)
        done.append(f"bucket {POLICY_BUCKET}")
        await js.create_key_value(bucket=HOSTS_BUCKET, history=1, max_value_size=64 * 2**10)
        done.append(f"bucket {HOSTS_BUCKET}")
    except BastionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the broker's refusal, named
        raise FleetError(f"fleet init: {type(exc).__name__}: {exc}") from exc
    finally:
        await nc.close()
    return done


async def current_version(js: Any, bucket: str, key: str, pub: Any) -> int:
    """The version in the bucket now, counted only when it verifies with ``pub``."""
    import nats.js.errors

    try:
        kv = await js.key_value(bucket)
        entry = await kv.get(key)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.BucketNotFoundError):
        return 0
    if entry.value is None:
        return 0
    try:
        return verify_policy(bytes(entry.value), pub).version
    except FleetPolicyError:
        return 0


async def push(conn: ConnSpec, text: str, key_path: Any, *, version: int | None = None,
               bucket: str = POLICY_BUCKET, key: str = POLICY_KEY) -> Pushed:
    """Sign ``text`` (the next version unless given) and put it in the bucket."""
    sk = load_private_key(key_path)
    nc, js = await _js(conn)
    try:
        cur = await current_version(js, bucket, key, sk.public_key())
        v = version if version is not None else cur + 1
        if v <= cur:
            raise FleetError(f"version {v} is not newer than the fleet's version {cur}: agents "
                             "refuse it as a replay")
        env = sign_policy(text, v, sk)
        try:
            kv = await js.key_value(bucket)
            rev = await kv.put(key, env)
        except Exception as exc:  # noqa: BLE001 - named
            raise FleetError(f"cannot put the policy in {bucket}/{key}: {exc} "
                             "(bastion fleet init creates the bucket)") from exc
        return Pushed(version=v, sha256=verify_policy(env, sk.public_key()).sha256, revision=rev)
    finally:
        await nc.close()


async def put_raw(conn: ConnSpec, value: bytes, *, bucket: str = POLICY_BUCKET,
                  key: str = POLICY_KEY) -> int:
    """Put bytes as they are (tests: what an attacker with the fleet credentials can do)."""
    nc, js = await _js(conn)
    try:
        kv = await js.key_value(bucket)
        return int(await kv.put(key, value))
    finally:
        await nc.close()


async def hosts(conn: ConnSpec, *, bucket: str = HOSTS_BUCKET) -> list[dict[str, Any]]:
    """Every host's last status record, by host name."""
    import nats.js.errors

    nc, js = await _js(conn)
    out = []
    try:
        try:
            kv = await js.key_value(bucket)
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        except nats.js.errors.BucketNotFoundError as exc:
            raise FleetError(f"no bucket {bucket} (bastion fleet init creates it)") from exc
        for k in sorted(keys):
            try:
                e = await kv.get(k)
                rec = json.loads(bytes(e.value or b"{}"))
            except (nats.js.errors.KeyNotFoundError, ValueError):
                continue
            if isinstance(rec, dict):
                rec["host"] = k
                out.append(rec)
    finally:
        await nc.close()
    return out


__all__ = ["FleetError", "Pushed", "init", "push", "hosts", "put_raw", "run"]
