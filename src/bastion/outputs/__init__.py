"""Outputs: JSON lines, OCSF, syslog (RFC 5424) and webhooks, each behind its
own bounded queue so a slow destination never blocks the agent.

Typical use (the agent)::

    specs, metrics_spec, problems = parse_outputs(root_node, source)
    outputs = build_manager(specs)          # OutputManager, started
    outputs.publish_event(to_json(ev))      # never blocks
    outputs.publish_alert(alert)
    outputs.new_drops()                     # -> {"syslog": 12}: raise a health alert
    outputs.close(timeout=5)
"""

from __future__ import annotations

import socket

from bastion import __version__
from bastion.outputs.base import Output, OutputManager, Record
from bastion.outputs.config import MetricsSpec, OutputSpec, parse_outputs, parse_outputs_text
from bastion.outputs.formats import make_formatter
from bastion.outputs.jsonl import JsonlOutput
from bastion.outputs.syslog import SyslogOutput
from bastion.outputs.webhook import WebhookOutput


def build_output(spec: OutputSpec, *, hostname: str | None = None,
                 product_version: str = __version__) -> Output:
    host = hostname or socket.gethostname()
    fmt = make_formatter(spec.format, hostname=host, product_version=product_version)
    if spec.type in ("jsonl", "ocsf"):
        return JsonlOutput(spec.name, spec.path, fmt=fmt, max_bytes=spec.max_bytes, backups=spec.backups)
    if spec.type == "syslog":
        return SyslogOutput(spec.name, transport=spec.transport, host=spec.host, port=spec.port,
                            path=spec.socket_path, facility=spec.facility, app_name=spec.app_name,
                            hostname=host, fmt=fmt, max_msg=spec.max_message)
    if spec.type == "webhook":
        return WebhookOutput(spec.name, spec.url, headers=dict(spec.headers), fmt=fmt,
                             timeout=spec.timeout_s, retries=spec.retries, backoff=spec.backoff_s,
                             max_batch=spec.batch)
    raise ValueError(f"unknown output type {spec.type!r}")


def build_manager(specs: list[OutputSpec], *, hostname: str | None = None,
                  product_version: str = __version__, start: bool = True) -> OutputManager:
    """An OutputManager with one lane per spec (started unless ``start=False``)."""
    mgr = OutputManager()
    for spec in specs:
        mgr.add(build_output(spec, hostname=hostname, product_version=product_version),
                queue=spec.queue, events=spec.events)
    if start:
        mgr.start()
    return mgr


__all__ = ["Output", "OutputManager", "Record", "OutputSpec", "MetricsSpec", "parse_outputs",
           "parse_outputs_text", "build_output", "build_manager"]
