"""packaging/: the DaemonSet gives the agent what it needs (issue 17.4).

Checked against the agent's own sources of truth: the pseudo-filesystems every
entry point needs (``bastion.kernel.bpffs.PSEUDO_FILESYSTEMS``), the capability
bounding set of the systemd unit (``bastion.install``), the data dir and the
control socket's directory (``bastion.paths``), and the Containerfile's notes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bastion import install, paths
from bastion.kernel.bpffs import PSEUDO_FILESYSTEMS

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging"


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((PKG / "daemonset.yaml").read_text()) if d]


def _daemonset() -> dict[str, Any]:
    ds = [d for d in _docs() if d["kind"] == "DaemonSet"]
    assert len(ds) == 1
    return ds[0]


def _unit_caps() -> set[str]:
    text = install._UNIT   # what `bastion install` writes
    m = re.search(r"^CapabilityBoundingSet=(.+)$", text, re.M)
    assert m, "the systemd unit names no capability bounding set"
    return set(m.group(1).split())


def _mounts() -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    spec = _daemonset()["spec"]["template"]["spec"]
    [agent] = spec["containers"]
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    return spec, mounts, vols


def test_every_pseudo_filesystem_is_the_hosts() -> None:
    _, mounts, vols = _mounts()
    for fs in PSEUDO_FILESYSTEMS:
        m = mounts.get(str(fs.path))
        assert m is not None, f"{fs.name} ({fs.path}) is not mounted: needed for {fs.needed_for}"
        assert vols[m["name"]]["hostPath"]["path"] == str(fs.path), fs.name
        assert not m.get("readOnly"), f"{fs.name} must be writable (pins, attach)"
    # pins made in the pod must be the host's (and outlive the pod): bidirectional
    assert mounts["/sys/fs/bpf"].get("mountPropagation") == "Bidirectional"
    assert vols[mounts["/sys/kernel/btf"]["name"]]["hostPath"]["path"] == "/sys/kernel/btf"


def test_state_and_sockets_live_on_the_host() -> None:
    _, mounts, vols = _mounts()
    for where in (paths.DEFAULT_DATA_DIR, paths.DEFAULT_SOCKET.parent):
        m = mounts.get(str(where))
        assert m is not None, f"{where} is not a host mount"
        assert vols[m["name"]]["hostPath"]["path"] == str(where)


def test_capabilities_are_the_units_and_nothing_else() -> None:
    spec, _, _ = _mounts()
    sc = spec["containers"][0]["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = {f"CAP_{c}" for c in sc["capabilities"]["add"]}
    assert added == _unit_caps()
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsUser"] == 0
    # the runtime's default seccomp profile refuses bpf(2) and fanotify_init(2)
    assert sc["seccompProfile"]["type"] == "Unconfined"
    assert spec["hostPID"] is True
    assert spec["automountServiceAccountToken"] is False


def test_containerfile_documents_the_same_needs() -> None:
    text = (PKG / "Containerfile").read_text()
    for cap in _unit_caps():
        assert cap in text, f"Containerfile does not document {cap}"
    for fs in PSEUDO_FILESYSTEMS:
        assert str(fs.path) in text, f"Containerfile does not document {fs.path}"
    assert "hostPID" in text and "seccomp" in text
    assert "BASTION_BPF_DIR=/usr/lib/bastion/bpf" in text


def test_the_configmap_policy_parses_and_the_fleet_host_is_the_node(tmp_path: Path,
                                                                     monkeypatch: Any) -> None:
    from bastion.config import parse_policy

    [cm] = [d for d in _docs() if d["kind"] == "ConfigMap"]
    text = cm["data"]["policy.yaml"]
    for name in ("host.creds", "ca.pem", "policy.pub"):   # the Secret's files, here
        text = text.replace(f"/etc/bastion/fleet/{name}", str(tmp_path / name))
    from bastion.fleet.sign import keygen

    (tmp_path / "host.creds").write_text("x")
    (tmp_path / "ca.pem").write_text("x")
    keygen(tmp_path / "policy")
    monkeypatch.setenv("BASTION_FLEET_HOST", "node-7")
    cfg = parse_policy(text, "configmap")
    assert cfg.fleet is not None and cfg.fleet.host == "node-7"
    env = _daemonset()["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "BASTION_FLEET_HOST", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in env
    parse_policy((PKG / "container-policy.yaml").read_text(), "container-policy.yaml")
