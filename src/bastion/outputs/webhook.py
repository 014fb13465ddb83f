"""HTTP(S) webhook: POST each batch as a JSON array, retrying with backoff.

Retried: connection errors, timeouts, HTTP 429 and 5xx — up to ``retries``
more attempts, sleeping ``backoff * 2**n`` seconds (capped at 30 s) between
them.  Any other HTTP error (4xx) fails the batch at once.  A failed batch
raises, and the manager counts it; the worker goes on with the next batch.
Only the standard library is used (``urllib.request``).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Mapping, Sequence

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

    def _post(self, body: bytes) -> None:
        attempt = 0
        while True:
            req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError as exc:
                retry = exc.code == 429 or exc.code >= 500
                err: Exception = exc
            except (urllib.error.URLError, OSError) as exc:
                retry, err = True, exc
            if not retry or attempt >= self.retries or self._closing.is_set():
                raise WebhookError(f"POST {self.url} failed after {attempt + 1} attempt(s): {err}") from err
            self._closing.wait(min(30.0, self.backoff * 2 ** attempt))
            attempt += 1

    def write(self, batch: Sequence[Record]) -> None:
        for i in range(0, len(batch), self.max_batch):
            part = [self.fmt(kind, data) for kind, data in batch[i:i + self.max_batch]]
            self._post(json.dumps(part, separators=(",", ":")).encode("utf-8"))

    def close(self) -> None:
        self._closing.set()
