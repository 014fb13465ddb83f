"""The outputs:/metrics: sections: a full example, defaults, and every error
reported with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bastion.outputs import build_manager
from bastion.outputs.config import (MetricsSpec, parse_metrics_section, parse_outputs,
                                    parse_outputs_section, parse_outputs_text)

GOOD = """\
version: 1
outputs:
  - type: jsonl
    path: /var/log/bastion/events.jsonl
    max_size: 100MiB
    backups: 3
  - type: ocsf
    name: ocsf-file
    path: "-"
    events: false
    queue: 500
  - type: syslog
    transport: tcp
    address: "[::1]:6514"
    facility: auth
    format: ocsf
  - type: syslog
    transport: unix
    path: /dev/log
  - type: webhook
    url: https://collector.example/in
    headers: {Authorization: Bearer x}
    timeout: 2s
    retries: 5
    backoff: 250ms
metrics:
  listen: 127.0.0.1:9470
"""


def test_full_example() -> None:
    specs, metrics, problems = parse_outputs_text(GOOD, "p.yaml")
    assert problems == []
    assert metrics == MetricsSpec("127.0.0.1", 9470)
    j, o, s, u, w = specs
    assert (j.name, j.path, j.max_bytes, j.backups, j.events, j.format) == \
        ("jsonl", Path("/var/log/bastion/events.jsonl"), 100 * 2**20, 3, True, "native")
    assert (o.name, o.path, o.events, o.queue, o.format) == ("ocsf-file", None, False, 500, "ocsf")
    assert (s.name, s.transport, s.host, s.port, s.facility, s.format, s.events) == \
        ("syslog", "tcp", "::1", 6514, "auth", "ocsf", False)
    assert (u.name, u.transport, u.socket_path) == ("syslog-3", "unix", "/dev/log")
    assert (w.url, w.headers, w.timeout_s, w.retries, w.backoff_s) == \
        ("https://collector.example/in", (("Authorization", "Bearer x"),), 2.0, 5, 0.25)
    assert str(j.location) == "p.yaml:3:5"


def test_sections_from_nodes() -> None:
    root = yaml.compose(GOOD, Loader=yaml.SafeLoader)
    nodes = {k.value: v for k, v in root.value}
    specs, problems = parse_outputs_section(nodes["outputs"], "p.yaml")
    assert len(specs) == 5 and problems == []
    m, problems = parse_metrics_section(nodes["metrics"], "p.yaml")
    assert m == MetricsSpec("127.0.0.1", 9470) and problems == []
    assert parse_outputs(root, "p.yaml")[0] == specs


def test_defaults_and_absent_sections() -> None:
    specs, metrics, problems = parse_outputs_text("version: 1\n", "p.yaml")
    assert (specs, metrics, problems) == ([], None, [])
    specs, metrics, problems = parse_outputs_text(
        "outputs:\n  - {type: syslog}\nmetrics: {}\n", "p.yaml")
    assert problems == [] and metrics == MetricsSpec("127.0.0.1", 9469)
    assert (specs[0].host, specs[0].port, specs[0].transport, specs[0].queue) == \
        ("127.0.0.1", 514, "udp", 10_000)


@pytest.mark.parametrize("text,errors", [
    ("outputs: {type: jsonl}\n", ["p.yaml:1:10: outputs must be a list"]),
    ("outputs:\n  - type: kafka\n", ["p.yaml:2:11: outputs[0].type: 'kafka' is not one of jsonl, ocsf, syslog, webhook"]),
    ("outputs:\n  - path: /x\n", ["p.yaml:2:5: outputs[0] lacks 'type'"]),
    ("outputs:\n  - type: jsonl\n", ["p.yaml:2:5: outputs[0] (jsonl) needs 'path'"]),
    ("outputs:\n  - type: jsonl\n    path: rel.jsonl\n", ["p.yaml:3:11: outputs[0] (jsonl).path must be absolute"]),
    ("outputs:\n  - type: jsonl\n    path: /x\n    colour: red\n",
     ["p.yaml:4:5: unknown key 'colour' in outputs[0] (jsonl)"]),
    ("outputs:\n  - type: jsonl\n    path: /x\n    events: maybe\n",
     ["p.yaml:4:13: outputs[0] (jsonl).events must be true or false"]),
    ("outputs:\n  - type: jsonl\n    path: /x\n    queue: 0\n",
     ["p.yaml:4:12: outputs[0] (jsonl).queue must be 1..10000000"]),
    ("outputs:\n  - type: jsonl\n    path: /x\n    max_size: lots\n",
     ["p.yaml:4:15: outputs[0] (jsonl).max_size: 'lots' is not a size"]),
    ("outputs:\n  - type: syslog\n    address: host:99999\n",
     ["p.yaml:3:14: outputs[0] (syslog).address 'host:99999': port '99999' is not 1..65535"]),
    ("outputs:\n  - type: syslog\n    transport: sctp\n",
     ["p.yaml:3:16: outputs[0] (syslog).transport: 'sctp' is not one of udp, tcp, unix"]),
    ("outputs:\n  - type: syslog\n    facility: local9\n",
     ["p.yaml:3:15: outputs[0] (syslog).facility: 'local9' is not one of"]),
    ("outputs:\n  - type: syslog\n    path: /dev/log\n",
     ["p.yaml:3:11: outputs[0] (syslog): 'path' is for transport unix"]),
    ("outputs:\n  - type: webhook\n", ["p.yaml:2:5: outputs[0] (webhook) needs 'url'"]),
    ("outputs:\n  - type: webhook\n    url: ftp://x/\n",
     ["p.yaml:3:10: outputs[0] (webhook).url 'ftp://x/' must be an http:// or https:// URL"]),
    ("outputs:\n  - type: webhook\n    url: http://x/\n    timeout: soon\n",
     ["p.yaml:4:14: outputs[0] (webhook).timeout: 'soon' is not a duration"]),
    ("outputs:\n  - type: ocsf\n    path: /x\n    format: native\n",
     ["p.yaml:4:5: unknown key 'format' in outputs[0] (ocsf)"]),
    ("outputs:\n  - {type: jsonl, path: /a, name: x}\n  - {type: jsonl, path: /b, name: x}\n",
     ["p.yaml:3:35: outputs[1] (jsonl).name 'x' is used by another output"]),
    ("metrics:\n  listen: 0.0.0.0:http\n",
     ["p.yaml:2:11: metrics.listen '0.0.0.0:http': port 'http' is not 1..65535"]),
    ("metrics:\n  listen: metrics.example:9469\n",
     ["p.yaml:2:11: metrics.listen 'metrics.example:9469': the host must be an IP address or localhost"]),
    ("metrics:\n  port: 1\n", ["p.yaml:2:3: unknown key 'port' in metrics"]),
    ("outputs: [\n", ["p.yaml:2:1: invalid YAML"]),
])
def test_errors_name_file_line_col(text: str, errors: list[str]) -> None:
    _, _, problems = parse_outputs_text(text, "p.yaml")
    got = [str(p) for p in problems]
    assert len(got) == len(errors), got
    for g, want in zip(got, errors):
        assert g.startswith(want), g


def test_all_problems_are_collected() -> None:
    text = "outputs:\n  - type: kafka\n  - type: webhook\nmetrics:\n  listen: x:y\n"
    _, _, problems = parse_outputs_text(text, "p.yaml")
    assert [str(p.location) for p in problems] == ["p.yaml:2:11", "p.yaml:3:5", "p.yaml:5:11"]


def test_build_manager_from_specs(tmp_path: Path) -> None:
    text = f"outputs:\n  - type: jsonl\n    path: {tmp_path}/a.jsonl\n  - type: ocsf\n    path: {tmp_path}/b.jsonl\n"
    specs, _, problems = parse_outputs_text(text, "p.yaml")
    assert problems == []
    mgr = build_manager(specs, hostname="h")
    assert mgr.names == ["jsonl", "ocsf"]
    mgr.publish_alert({"time": "2026-11-26T00:00:00.000000Z", "id": "x", "rule": "r", "title": "t",
                       "severity": "low", "attack": ["T1059"], "action": "alert", "process": {}})
    mgr.close(5)
    assert '"rule":"r"' in (tmp_path / "a.jsonl").read_text()
    assert '"class_uid":2004' in (tmp_path / "b.jsonl").read_text()
