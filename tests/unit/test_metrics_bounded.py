"""s24 review: the metrics endpoint (``metrics: {listen: ...}``, 127.0.0.1 by default) was
prometheus_client's ``start_http_server``: a thread per connection, no timeout, no bound.
Any local user could open connections that never send a request and keep each one's
thread and descriptor in the agent for ever: thousands of threads (each stack two
mappings of ``vm.max_map_count``) and descriptors (``LimitNOFILE``) -- past them the agent
cannot open a pidfd to kill, a file to probe, a thread to read off its loop.

Now at most ``MAX_CONNECTIONS`` are held (a new one drops the oldest), each read with a
timeout; a scrape still answers under the flood."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from typing import Iterator

import pytest

from bastion import metrics
from bastion.metrics import Metrics


@pytest.fixture
def endpoint() -> Iterator[int]:
    m = Metrics()
    port = m.serve("127.0.0.1", 0)
    try:
        yield port
    finally:
        m.close()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_idle_connections_do_not_pile_up_threads_or_descriptors(endpoint: int) -> None:
    threads0, fds0 = threading.active_count(), _fds()
    idle = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", endpoint))
            s.sendall(b"GET /")          # a request line never finished
            idle.append(s)
        time.sleep(0.5)
        grown = threading.active_count() - threads0
        server_fds = _fds() - fds0 - len(idle)     # the accepted ends, the server's side
        assert grown <= metrics.MAX_CONNECTIONS + 2, f"{grown} threads for 100 idle clients"
        assert server_fds <= metrics.MAX_CONNECTIONS + 2, f"{server_fds} descriptors held"
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint}/metrics", timeout=3) as r:
            assert r.status == 200 and b"bastion_info" in r.read()
    finally:
        for s in idle:
            s.close()
