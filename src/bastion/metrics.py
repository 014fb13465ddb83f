"""Prometheus metrics of one agent, on its own registry (never the global one).

The agent updates a :class:`Metrics` object from its loop; :meth:`Metrics.serve`
exposes the text format on a local address (``metrics: {listen: ...}`` in the
policy).  Names:

- ``bastion_events_total{type}``                     counter (rate() gives events/s)
- ``bastion_sensor_drops_total``                     counter: ring-buffer reserve failures
- ``bastion_ring_fill_ratio``                        gauge 0..1
- ``bastion_alerts_total{severity}``                 counter
- ``bastion_rule_evaluation_seconds``                histogram: rule evaluation per event
- ``bastion_enforcement_decisions_total{action}``    counter: kill, would-kill, deny, alert,
                                                     kill-skipped, ...
- ``bastion_output_{sent,dropped,errors}_total{output}``, ``bastion_output_queued{output}``
                                                     read from the OutputManager at scrape
- ``bastion_info{version}``, ``bastion_start_time_seconds``
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               make_wsgi_app)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bastion import __version__

# 1 µs .. 0.25 s: a rule pass over one event is microseconds; a slow one shows up.
#: Connections the endpoint holds at once (s24); a new one beyond drops the oldest.
MAX_CONNECTIONS = 32

RULE_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.25)

OutputStatsSource = Callable[[], Mapping[str, Mapping[str, int]]]
#: Each read or write of a scrape connection must progress within this.
CONNECTION_TIMEOUT_S = 5.0


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:   # noqa: A002 - the base's name
        pass     # a scrape per 15 s on stderr is noise


class _BoundedServer(ThreadingWSGIServer):
    """prometheus_client's threading server with at most :data:`MAX_CONNECTIONS` held:
    a new connection beyond drops the oldest (s24: any local user's idle connections each
    kept a thread and a descriptor in the agent for ever)."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._held_lock = threading.Lock()   # _held, and every shutdown/close of its sockets
        self._held: list[socket.socket] = []
        self.dropped = 0
        super().__init__(*args, **kw)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._held_lock:
            if len(self._held) >= MAX_CONNECTIONS:
                old = self._held.pop(0)
                self.dropped += 1
                try:
                    old.shutdown(socket.SHUT_RDWR)   # its thread reads EOF and ends
                except OSError:
                    pass
            self._held.append(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._held_lock:     # never closed while process_request may shut it down
            if request in self._held:
                self._held.remove(request)
            super().shutdown_request(request)


class _OutputCollector(Collector):
    def __init__(self, source: OutputStatsSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        stats = self.source()
        fams = {
            "sent": CounterMetricFamily("bastion_output_sent", "Records written by each output.",
                                        labels=["output"]),
            "dropped": CounterMetricFamily("bastion_output_dropped",
                                           "Records dropped because the output's queue was full.",
                                           labels=["output"]),
            "errors": CounterMetricFamily("bastion_output_errors", "Failed writes of each output.",
                                          labels=["output"]),
        }
        queued = GaugeMetricFamily("bastion_output_queued", "Records waiting in each output's queue.",
                                   labels=["output"])
        for name, s in stats.items():
            for key, fam in fams.items():
                fam.add_metric([name], s.get(key, 0))
            queued.add_metric([name], s.get("queued", 0))
        yield from fams.values()
        yield queued


class Metrics:
    """Counters of one agent.  Update from one thread (the agent loop); scrapes
    run in the HTTP server's threads and only read."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter("bastion_events", "Events processed, by type.", ["type"], registry=r)
        self.sensor_drops = Counter("bastion_sensor_drops",
                                    "Events lost in the kernel (ring buffer full).", registry=r)
        self.ring_fill = Gauge("bastion_ring_fill_ratio", "Fill of the fullest ring buffer (0..1).",
                               registry=r)
        self.alerts = Counter("bastion_alerts", "Alerts raised, by severity.", ["severity"], registry=r)
        self.rule_seconds = Histogram("bastion_rule_evaluation_seconds",
                                      "Time to evaluate the rules on one event.",
                                      buckets=RULE_BUCKETS, registry=r)
        self.decisions = Counter("bastion_enforcement_decisions",
                                 "Response decisions, by action taken.", ["action"], registry=r)
        info = Gauge("bastion_info", "Bastion version.", ["version"], registry=r)
        info.labels(__version__).set(1)
        Gauge("bastion_start_time_seconds", "Agent start, Unix time.", registry=r).set(time.time())
        self._drops_seen = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ---- updates (agent loop) ---------------------------------------------------------

    def count_events(self, by_type: Mapping[str, int]) -> None:
        """Add one batch's events per type (cheaper than one call per event)."""
        for t, n in by_type.items():
            if n:
                self.events.labels(t).inc(n)

    def set_sensor_drops(self, total: int) -> None:
        """The sensors' cumulative drop count; the counter follows it."""
        if total > self._drops_seen:
            self.sensor_drops.inc(total - self._drops_seen)
            self._drops_seen = total

    def set_ring_fill(self, ratio: float) -> None:
        self.ring_fill.set(ratio)

    def alert(self, severity: str, action: str) -> None:
        """One alert dict's ``severity`` and ``action`` (``kill-skipped: ...`` is
        counted as ``kill-skipped``)."""
        self.alerts.labels(severity).inc()
        self.decisions.labels(action.split(":", 1)[0].strip() or "none").inc()

    def observe_rules(self, seconds: float) -> None:
        self.rule_seconds.observe(seconds)

    def watch_outputs(self, source: OutputStatsSource) -> None:
        """Expose an OutputManager's counters (``source`` = ``manager.stats``),
        read at scrape time."""
        self.registry.register(_OutputCollector(source))

    # ---- exposition -------------------------------------------------------------------

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str = "127.0.0.1", port: int = 9469) -> int:
        """Start the HTTP endpoint (any path serves the text format); returns the
        bound port (``port=0`` picks a free one)."""
        if self._server is not None:
            raise RuntimeError("metrics endpoint already started")

        class Server(_BoundedServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        server = make_server(host, port, make_wsgi_app(self.registry), Server,
                             handler_class=_Handler)
        thread = threading.Thread(target=server.serve_forever, name="bastion-metrics",
                                  daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5)
            self._server = self._thread = None


__all__ = ["Metrics", "RULE_BUCKETS"]
