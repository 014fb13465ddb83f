"""OCSF mapping validated against the OCSF schema.

The schema: OCSF 1.5.0 as shipped by the PyPI package ``pydantic-ocsf``
(``ocsf/schemas/v1_5_0.json``, the schema repository's own JSON; its pydantic
models are generated from it).  The models check required attributes, types
and enum ids; they accept unknown keys (``extra="allow"``), so
:func:`_no_extras` walks the validated model and fails on any attribute the
schema does not define — a misspelt key cannot pass.
"""

from __future__ import annotations

import json
from typing import Any

import importlib

import pydantic
import pytest

from bastion.outputs import ocsf
from bastion.outputs.ocsf import OCSF_VERSION, alert_to_ocsf, event_to_ocsf
from support.samples import sample_alert, sample_events

# pydantic-ocsf (dev dependency): fail, never skip, when it is missing
events_mod = importlib.import_module(f"ocsf.v{OCSF_VERSION.replace('.', '_')}.events")
objects_mod = importlib.import_module(f"ocsf.v{OCSF_VERSION.replace('.', '_')}.objects")

CLASSES = {
    ocsf.PROCESS_ACTIVITY: events_mod.ProcessActivity,
    ocsf.FILE_ACTIVITY: events_mod.FileActivity,
    ocsf.NETWORK_ACTIVITY: events_mod.NetworkActivity,
    ocsf.DETECTION_FINDING: events_mod.DetectionFinding,
}
PROFILES = {"host": {"device": objects_mod.Device, "actor": objects_mod.Actor}}
KW = {"hostname": "host1", "product_version": "0.1.0"}


def _no_extras(model: Any, path: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(model, pydantic.BaseModel):
        extra = model.__pydantic_extra__ or {}
        # `unmapped` is OCSF's own bag for attributes without a home
        out += [f"{path}.{k}" for k in extra]
        for name in type(model).model_fields:
            if name == "unmapped":
                continue
            out += _no_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, v in enumerate(model):
            out += _no_extras(v, f"{path}[{i}]")
    return out


def validate(obj: dict[str, Any]) -> Any:
    json.dumps(obj)  # JSON-ready
    body = dict(obj)
    # Profile attributes (OCSF "host" profile: device, actor) are not in the class
    # models: check them against their object models when the profile is declared.
    for profile in obj["metadata"].get("profiles", []):
        for attr, cls in PROFILES[profile].items():
            if attr in body:
                sub = cls.model_validate(body.pop(attr))
                assert _no_extras(sub) == [], f"{attr}: attributes not in OCSF {OCSF_VERSION}"
    model = CLASSES[obj["class_uid"]].model_validate(body)
    assert _no_extras(model) == [], f"attributes not in OCSF {OCSF_VERSION}"
    assert obj["type_uid"] == obj["class_uid"] * 100 + obj["activity_id"]
    assert obj["metadata"]["version"] == OCSF_VERSION
    return model


@pytest.mark.parametrize("ev", sample_events(), ids=lambda e: f"{e['type']}")
def test_every_event_type_maps_to_a_valid_ocsf_event(ev: dict[str, Any]) -> None:
    out = event_to_ocsf(ev, **KW)
    validate(out)
    assert out["time"] == 1_795_000_000_000 + 0  # ms epoch (the samples are µs apart)
    assert out["device"]["hostname"] == "host1"


def test_the_four_classes_and_activities() -> None:
    by_type: dict[str, tuple[int, int]] = {}
    for ev in sample_events():
        o = event_to_ocsf(ev, **KW)
        by_type.setdefault(ev["type"] + ("+creat" if ev.get("flags", 0) & 0o100 else ""),
                           (o["class_uid"], o["activity_id"]))
    assert by_type["exec"] == (1007, 1) and by_type["exit"] == (1007, 2)
    assert by_type["setuid"] == (1007, 5) and by_type["ptrace"] == (1007, 3)
    assert by_type["open"] == (1001, 14) and by_type["open+creat"] == (1001, 1)
    assert by_type["unlink"] == (1001, 4) and by_type["rename"] == (1001, 5)
    assert by_type["utimes"] == (1001, 6)   # Set Attributes (s23)
    assert by_type["connect"] == (4001, 1) and by_type["listen"] == (4001, 7)


def test_exec_fields() -> None:
    o = event_to_ocsf(sample_events()[0], **KW)
    assert o["process"]["cmd_line"] == "curl -s http://x/y"
    assert o["process"]["file"]["path"] == "/usr/bin/curl"
    assert o["process"]["user"]["uid"] == "1001"
    assert o["actor"]["process"]["pid"] == 1000


def test_connect_endpoints() -> None:
    o = event_to_ocsf(sample_events()[9], **KW)
    assert o["dst_endpoint"] == {"ip": "93.184.216.34", "port": 443}
    assert o["connection_info"]["direction_id"] == 2


@pytest.mark.parametrize("severity,sid", [("info", 1), ("low", 2), ("medium", 3), ("high", 4),
                                          ("critical", 5)])
def test_alert_is_a_valid_detection_finding_with_attack_ids(severity: str, sid: int) -> None:
    out = alert_to_ocsf(sample_alert(severity), **KW)
    model = validate(out)
    assert out["class_uid"] == 2004 and out["severity_id"] == sid
    attacks = out["finding_info"]["attacks"]
    assert attacks[0]["technique"]["uid"] == "T1055"
    assert attacks[1]["sub_technique"]["uid"] == "T1055.008"
    assert attacks[2]["tactic"]["uid"] == "TA0004"
    assert model.finding_info.uid == "0123456789abcdef0123456789abcdef"
    assert out["unmapped"]["attack"] == ["T1055", "T1055.008", "TA0004"]
    assert out["evidences"][0]["process"]["cmd_line"] == "curl -s http://x/y"


def test_alert_without_event_or_attack() -> None:
    a = sample_alert("medium", attack=())
    del a["event"]
    out = alert_to_ocsf(a, **KW)
    validate(out)
    assert "attacks" not in out["finding_info"]


def test_the_validator_catches_mistakes() -> None:
    good = event_to_ocsf(sample_events()[3], **KW)
    bad = json.loads(json.dumps(good))
    bad["file"]["pathh"] = "/x"
    with pytest.raises(AssertionError):
        validate(bad)
    bad = json.loads(json.dumps(good))
    del bad["file"]["name"]
    with pytest.raises(pydantic.ValidationError):
        validate(bad)
    bad = json.loads(json.dumps(good))
    bad["activity_id"] = 42
    with pytest.raises(pydantic.ValidationError):
        validate(bad)
