"""Policy documents: the embedded default, and every error with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.config import PolicyError, load_policy, parse_policy
from bastion.sensors.bpf import EVENT_CLASSES


def test_embedded_default() -> None:
    p = load_policy(None)
    assert p.events.classes == tuple(EVENT_CLASSES)
    assert p.events.poll_interval_s == pytest.approx(0.02)
    assert p.store.max_age_s == 7 * 86400 and p.store.max_bytes == 2 * 2**30


def test_values() -> None:
    p = parse_policy("version: 1\nevents: {classes: [exec, exec, net], poll_interval: 5ms}\n"
                     "store: {max_age: 2h, max_events: 2000, max_bytes: 10MiB}\n", "p.yaml")
    assert p.events.classes == ("exec", "net")
    assert p.events.poll_interval_s == pytest.approx(0.005)
    assert (p.store.max_age_s, p.store.max_events, p.store.max_bytes) == (7200, 2000, 10 * 2**20)


@pytest.mark.parametrize("text,expected", [
    ("version: 1\nbogus: 1\n", ["p.yaml:2:1: unknown key 'bogus' in the policy"]),
    ("version: 3\n", ["p.yaml:1:10: policy version 3 is not supported"]),
    ("events: {}\n", ["p.yaml:1:1: the policy lacks 'version: 1'"]),
    ("version: 1\nevents:\n  classes: exec\n", ["p.yaml:3:12: events.classes must be a list"]),
    ("version: 1\nstore:\n  max_bytes: 12 parsecs\n  max_events: -4\n",
     ["p.yaml:3:14: store.max_bytes: '12 parsecs' is not a size",
      "p.yaml:4:15: store.max_events must be at least 1000"]),
    ("version: 1\nevents: [\n", ["p.yaml:3:1: invalid YAML"]),
    ("", ["p.yaml: empty policy document"]),
    ("- a\n- b\n", ["p.yaml:1:1: the policy must be a mapping"]),
])
def test_errors_are_collected_with_locations(text: str, expected: list[str]) -> None:
    with pytest.raises(PolicyError) as ei:
        parse_policy(text, "p.yaml")
    got = [str(p) for p in ei.value.problems]
    assert len(got) == len(expected), got
    for g, e in zip(got, expected):
        assert g.startswith(e), (g, e)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="nope.yaml: cannot read policy"):
        load_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="bin.yaml: policy is not UTF-8"):
        load_policy(bad)


def test_importing_the_configuration_does_not_load_libbpf() -> None:
    import subprocess
    import sys

    code = ("import sys, bastion.config; "
            "print(sorted(m for m in sys.modules if m.startswith('bastion.kernel')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
