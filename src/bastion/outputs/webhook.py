"""HTTP(S) webhook: POST each batch as a JSON array, retrying with backoff.

Retried: connection errors, timeouts, HTTP 429 and 5xx — up to ``retries``
more attempts, sleeping ``backoff * 2**n`` seconds (capped at 30 s) between
them.  Any other answer but 2xx fails the batch at once.  A failed batch
raises, and the manager counts it; the worker goes on with the next batch.

Redirects are never followed (httpx with ``follow_redirects=False``): a
followed POST redirect drops the body (303, and 301/302 in most clients)
while the batch counts as sent, carries the ``Authorization`` header to
whatever host the receiver names, and may downgrade https to http.  A 3xx
answer fails the batch with a message naming the ``Location``: configure the
final URL.
"""

from __future__ import annotations

import json
import threading
from typing import Mapping, Sequence

import httpx

from bastion import __version__
from bastion.errors import BastionError
from bastion.outputs.base import Record
from bastion.outputs.formats import Formatter, native


class WebhookError(BastionError):
    """A webhook batch could not be delivered."""


class WebhookOutput:
    def __init__(self, name: str, url: str, *, headers: Mapping[str, str] | None = None,
                 fmt: Formatter = native, timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.5, max_batch: int = 500) -> None:
        self.name = name
        self.url = url
        self.headers = {"Content-Type": "application/json",
                        "User-Agent": f"bastion/{__version__}", **(headers or {})}
        self.fmt = fmt
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_batch = max(1, max_batch)
        self._closing = threading.Event()
        self._client = httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False)

    def _post(self, body: bytes) -> None:
        attempt = 0
        while True:
            err: Exception | str
            try:
                resp = self._client.post(self.url, content=body, headers=self.headers)
            except httpx.HTTPError as exc:
                retry, err = True, exc
            else:
                if 200 <= resp.status_code < 300:
                    return
                if resp.is_redirect:
                    raise WebhookError(
                        f"POST {self.url}: the receiver redirects ({resp.status_code}) to "
                        f"{resp.headers.get('location', '?')!r}; redirects are not followed "
                        "(the batch is not sent): configure the final URL")
                retry = resp.status_code == 429 or resp.status_code >= 500
                err = f"HTTP {resp.status_code}"
            if not retry or attempt >= self.retries or self._closing.is_set():
                raise WebhookError(f"POST {self.url} failed after {attempt + 1} attempt(s): {err}")
            self._closing.wait(min(30.0, self.backoff * 2 ** attempt))
            attempt += 1

    def write(self, batch: Sequence[Record]) -> None:
        for i in range(0, len(batch), self.max_batch):
            part = [self.fmt(kind, data) for kind, data in batch[i:i + self.max_batch]]
            self._post(json.dumps(part, separators=(",", ":")).encode("utf-8"))

    def close(self) -> None:
        self._closing.set()
        self._client.close()
