"""Metrics: a registry per agent, the bastion_* names, and the HTTP endpoint."""

from __future__ import annotations

import urllib.request

from bastion.metrics import Metrics
from bastion.outputs.base import OutputManager


def test_two_agents_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()            # would raise "Duplicated timeseries" on a shared one
    a.count_events({"exec": 3})
    assert b"bastion_events_total" in a.text()
    assert b'bastion_events_total{type="exec"} 3.0' in a.text()
    assert b'bastion_events_total{type="exec"}' not in b.text()


def test_names_and_values() -> None:
    m = Metrics()
    m.count_events({"exec": 2, "open": 5, "exit": 0})
    m.count_events({"exec": 1})
    m.set_sensor_drops(10)
    m.set_sensor_drops(10)
    m.set_sensor_drops(15)
    m.set_ring_fill(0.25)
    m.alert("high", "kill")
    m.alert("high", "kill-skipped: pid reused")
    m.alert("low", "alert")
    m.observe_rules(3e-6)
    mgr = OutputManager()
    m.watch_outputs(mgr.stats)
    text = m.text().decode()
    for line in [
        'bastion_events_total{type="exec"} 3.0', 'bastion_events_total{type="open"} 5.0',
        "bastion_sensor_drops_total 15.0", "bastion_ring_fill_ratio 0.25",
        'bastion_alerts_total{severity="high"} 2.0',
        'bastion_enforcement_decisions_total{action="kill-skipped"} 1.0',
        'bastion_enforcement_decisions_total{action="kill"} 1.0',
        'bastion_rule_evaluation_seconds_bucket{le="5e-06"} 1.0',
        "bastion_rule_evaluation_seconds_count 1.0",
    ]:
        assert line in text, line
    assert 'type="exit"' not in text


def test_output_stats_are_read_at_scrape_time() -> None:
    class Stuck:
        name = "stuck"

        def write(self, batch: object) -> None:
            raise OSError("down")

        def close(self) -> None:
            pass

    mgr = OutputManager()
    mgr.add(Stuck(), queue=2)            # not started: everything past 2 drops
    m = Metrics()
    m.watch_outputs(mgr.stats)
    for _ in range(5):
        mgr.publish_alert({})
    text = m.text().decode()
    assert 'bastion_output_dropped_total{output="stuck"} 3.0' in text
    assert 'bastion_output_queued{output="stuck"} 2.0' in text


def test_http_endpoint_on_loopback() -> None:
    m = Metrics()
    m.alert("critical", "kill")
    port = m.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain")
        assert 'bastion_alerts_total{severity="critical"} 1.0' in body
        assert "bastion_info{" in body
    finally:
        m.close()
