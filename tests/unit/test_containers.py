"""Issue 17 item 1: container context (pure parts, runtime state reading, policy subjects).

The live side (a real podman container, its events and alerts) is
tests/kernel/test_containers_live.py."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from bastion import abi
from bastion.config import PolicyError, parse_policy
from bastion.containers import (
    STATE_MAX_BYTES, Container, ContainerResolver, Selector, StateReader, _owner_ok,
    parse_cgroup_path, read_state,
)
from bastion.errors import DecodeError
from bastion.events import ExecEvent, Proc, from_json, to_json
from bastion.outputs.ocsf import alert_to_ocsf, event_to_ocsf
from bastion.policy.compile import compile_plan, resolve
from bastion.policy.match import Matcher, TaskFacts

from test_policy_compile import DEV, FAKE, GOLDEN

H = "0123456789abcdef" * 4
H2 = "fedcba9876543210" * 4
UID = "1a2b3c4d-0000-1111-2222-333344445555"


@pytest.mark.parametrize("path,want", [
    (f"/libpod_parent/libpod-{H}", ("podman", H, "")),
    (f"/machine.slice/libpod-{H}.scope", ("podman", H, "")),
    (f"/machine.slice/libpod-{H}.scope/container/init.scope", ("podman", H, "")),
    (f"/system.slice/docker-{H}.scope", ("docker", H, "")),
    (f"/docker/{H}", ("docker", H, "")),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{H}.scope", ("containerd", H, UID)),
    (f"/kubepods/besteffort/pod{UID}/{H}", ("", H, UID)),
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{H}.scope", ("cri-o", H, UID)),
    ("/", None), ("/system.slice/ssh.service", None), ("/user.slice/user-0.slice", None),
    (f"/libpod_parent/libpod-conmon-{H}", None),      # conmon is the host-side monitor
    ("/process_api/67a50a5ebbf57190497c4900d4a8ffbf", None),  # 32 hex: not a container id
])
def test_parse_cgroup_path(path: str, want: tuple[str, str, str] | None) -> None:
    assert parse_cgroup_path(path) == want


def _tree(tmp_path: Path, files: dict[str, object]) -> StateReader:
    for rel, content in files.items():
        p = tmp_path / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content if isinstance(content, str) else json.dumps(content))
    return StateReader(str(tmp_path), require_root_owner=os.geteuid() == 0)


def test_podman_state_gives_name_and_image(tmp_path: Path) -> None:
    r = _tree(tmp_path, {
        f"/var/lib/containers/storage/overlay-containers/{H}/userdata/config.json":
            {"annotations": {"io.container.manager": "libpod"}},
        "/var/lib/containers/storage/overlay-containers/containers.json":
            [{"id": H2, "names": ["other"]},
             {"id": H, "names": ["web"], "metadata": json.dumps({"image-name": "localhost/nginx:1.25"})}],
    })
    assert read_state(r, "podman", H) == ("podman", {"name": "web", "image": "localhost/nginx:1.25"})
    assert read_state(r, "podman", H2) == ("", {})


def test_containerd_cri_annotations_give_the_pod(tmp_path: Path) -> None:
    ann = {"io.kubernetes.cri.sandbox-name": "api-7f9", "io.kubernetes.cri.sandbox-namespace": "prod",
           "io.kubernetes.cri.container-name": "api", "io.kubernetes.cri.image-name": "reg/api:2",
           "io.kubernetes.cri.sandbox-uid": UID}
    r = _tree(tmp_path, {f"/run/containerd/io.containerd.runtime.v2.task/k8s.io/{H}/config.json":
                         {"annotations": ann}})
    rt, meta = read_state(r, "", H)
    assert rt == "containerd"
    assert meta == {"pod": "api-7f9", "namespace": "prod", "name": "api", "image": "reg/api:2",
                    "pod_uid": UID}


def test_docker_state(tmp_path: Path) -> None:
    r = _tree(tmp_path, {f"/var/lib/docker/containers/{H}/config.v2.json":
                         {"Name": "/db", "Config": {"Image": "postgres:16", "Labels": None}}})
    assert read_state(r, "docker", H) == ("docker", {"name": "db", "image": "postgres:16"})


def test_state_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    """An attacker who can plant a symlink in a runtime's state tree cannot make the
    agent (root) read another file: openat2 RESOLVE_NO_SYMLINKS on every component."""
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "config.v2.json").write_text(json.dumps({"Name": "/evil"}))
    (tmp_path / "var/lib/docker/containers").mkdir(parents=True)
    (tmp_path / f"var/lib/docker/containers/{H}").symlink_to(real)
    r = StateReader(str(tmp_path), require_root_owner=False)
    assert read_state(r, "docker", H) == ("", {})          # the directory is a symlink: no state
    (tmp_path / f"var/lib/docker/containers/{H}").unlink()
    (tmp_path / f"var/lib/docker/containers/{H}").mkdir()
    (tmp_path / f"var/lib/docker/containers/{H}/config.v2.json").symlink_to(real / "config.v2.json")
    with pytest.raises(OSError) as exc:
        read_state(r, "docker", H)
    assert "config.v2.json" in str(exc.value)


def test_oversized_and_non_regular_state_is_refused(tmp_path: Path) -> None:
    d = tmp_path / f"var/lib/docker/containers/{H}"
    d.mkdir(parents=True)
    with open(d / "config.v2.json", "wb") as f:
        f.truncate(STATE_MAX_BYTES + 1)
    r = StateReader(str(tmp_path), require_root_owner=False)
    with pytest.raises(ValueError, match="more than"):
        read_state(r, "docker", H)
    (d / "config.v2.json").unlink()
    os.mkfifo(d / "config.v2.json")
    with pytest.raises(ValueError, match="not a regular file"):
        read_state(r, "docker", H)
    (d / "config.v2.json").unlink()
    (d / "config.v2.json").write_text("{nope")
    with pytest.raises(ValueError, match="not JSON"):
        read_state(r, "docker", H)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_state_not_owned_by_root_is_refused(tmp_path: Path) -> None:
    r = _tree(tmp_path, {f"/var/lib/docker/containers/{H}/config.v2.json": {"Name": "/x"}})
    os.chown(tmp_path / f"var/lib/docker/containers/{H}/config.v2.json", 1000, 1000)
    with pytest.raises(ValueError, match="not owned by root"):
        read_state(r, "docker", H)


def test_delegated_cgroup_is_not_verified(tmp_path: Path) -> None:
    """A cgroup subtree writable by someone else (delegation: rootless podman, a user's
    systemd) can hold any name; such a directory never verifies a container."""
    base = tmp_path / "cg"
    leaf = base / "user.slice" / f"libpod-{H}"
    leaf.mkdir(parents=True)
    os.chmod(base, 0o755)
    os.chmod(base / "user.slice", 0o777)
    why = _owner_ok(str(leaf), str(base))
    assert "user.slice" in why and "delegated" in why
    os.chmod(base / "user.slice", 0o755)
    if os.geteuid() == 0:          # root-owned, writable by root only: accepted
        assert _owner_ok(str(leaf), str(base)) == ""
    os.chmod(leaf, 0o775)          # group-writable: refused
    assert "delegated" in _owner_ok(str(leaf), str(base))


def test_resolver_marks_a_look_alike_cgroup_unverified(tmp_path: Path) -> None:
    """A cgroup named like a podman container with no runtime state for that id is
    reported as a container (nothing hidden) but not verified, with no metadata."""
    cg = tmp_path / "unified"
    (cg / f"libpod_parent/libpod-{H}").mkdir(parents=True)
    r = ContainerResolver(cgroup2=str(cg), state=StateReader(str(tmp_path / "empty")))
    got = dict((cid, c) for cid, c in r.inventory())
    c = got[os.stat(cg / f"libpod_parent/libpod-{H}").st_ino]
    assert c is not None and c.runtime == "podman" and c.id == H
    assert not c.verified and "no podman state" in c.why
    assert got[os.stat(cg).st_ino] is None
    assert not Selector(name="*").matches(c)
    assert not Selector(host=True).matches(c)


def test_selector() -> None:
    web = Container("podman", H, name="web", image="localhost/nginx:1.25", verified=True)
    assert Selector(image="localhost/nginx:*").matches(web)
    assert Selector(name="web", runtime="podman").matches(web)
    assert not Selector(name="web", runtime="docker").matches(web)
    assert Selector(id=H[:12]).matches(web) and not Selector(id=H2[:12]).matches(web)
    assert not Selector(image="localhost/nginx:*").matches(dataclasses.replace(web, verified=False))
    assert Selector(host=True).matches(None) and not Selector(host=True).matches(web)
    assert not Selector(image="*").matches(None)


def test_event_json_round_trip_carries_the_container() -> None:
    c = Container("containerd", H, name="api", image="reg/api:2", pod="api-7f9", namespace="prod",
                  pod_uid=UID, verified=True, cgroup=f"/kubepods/besteffort/pod{UID}/{H}")
    ev = ExecEvent(1_700_000_000_000_000_000, Proc(10, 10, 1, 0, 0, 0, 77, "sh", container=c),
                   filename="/bin/sh", argv=("sh",))
    j = to_json(ev)
    assert j["container"]["id"] == H and j["container"]["pod"] == "api-7f9"
    assert from_json(json.loads(json.dumps(j))) == ev
    j["container"] = {"runtime": "podman", "id": H, "verified": "yes"}
    with pytest.raises(DecodeError, match="verified"):
        from_json(j)
    j["container"] = {"runtime": "podman", "id": H, "admin": True}
    with pytest.raises(DecodeError, match="unknown"):
        from_json(j)


def test_ocsf_fills_the_container_object() -> None:
    c = Container("containerd", H, name="api", image="reg/api:2", pod="api-7f9", namespace="prod",
                  pod_uid=UID, verified=True)
    ev = ExecEvent(1_700_000_000_000_000_000, Proc(10, 10, 1, 0, 0, 0, 77, "sh", container=c),
                   filename="/bin/sh", argv=("sh",))
    o = event_to_ocsf(to_json(ev), hostname="h", product_version="t")
    got = o["process"]["container"]
    assert got["uid"] == H and got["runtime"] == "containerd" and got["name"] == "api"
    assert got["image"] == {"name": "reg/api", "tag": "2"} and got["pod_uuid"] == UID
    assert got["orchestrator"] == "kubernetes" and "k8s.namespace=prod" in got["labels"]
    assert "container" not in (o.get("unmapped") or {})
    alert = {"time": "2026-12-04T12:00:00Z", "id": "a1", "rule": "r", "title": "t",
             "severity": "high", "attack": [], "action": "alert",
             "process": {"pid": 10, "exe": "/bin/sh"}, "container": c.to_json()}
    a = alert_to_ocsf(alert, hostname="h", product_version="t")
    assert a["evidences"][0]["process"]["container"]["uid"] == H


# ---- policy: container / host subjects (golden) ------------------------------------------

CPOLICY = """\
version: 1
mode: enforce
default: allow
rules:
  - name: web-no-shadow
    subject: {container: {image: "localhost/nginx:*"}}
    operations: [open-read]
    objects: [/etc/shadow]
    action: deny
  - name: prod-reads-keys
    subject: {container: {namespace: prod, name: api}}
    operations: [open-read]
    objects: [/etc/ssl/private/]
    action: allow
  - name: keys
    operations: [open-read]
    objects: [/etc/ssl/private/]
    action: deny
  - name: host-no-egress
    subject: {host: true}
    operations: [connect]
    objects: [any]
    action: audit
"""
INVENTORY = [
    (1, None),                                              # the cgroup v2 root (host)
    (5000, None),                                           # a host service
    (9000, Container("podman", H, name="web", image="localhost/nginx:1.25", verified=True)),
    (9001, Container("podman", H2, verified=False, why="no podman state")),  # a look-alike
    (9002, Container("containerd", H2, name="api", pod="api-7f9", namespace="prod", verified=True)),
    (9003, Container("containerd", H, name="api", pod="api-1", namespace="dev", verified=True)),
]
CFAKE = dataclasses.replace(FAKE, cgroups=lambda: list(INVENTORY))
SHADOW, KEY, KEY_PARENTS = (DEV, 300), (DEV, 312), [(DEV, 311), (DEV, 310)]


def _cplan():  # type: ignore[no-untyped-def]
    return compile_plan(resolve(parse_policy(CPOLICY, "c.yaml").hips, CFAKE))


def test_golden_container_subjects() -> None:
    plan = _cplan()
    m = Matcher(plan)
    decisions = {}
    A = abi.HipsOp
    for cg in (1, 5000, 9000, 9001, 9002, 9003):
        t = TaskFacts(exe=(DEV, 999), cgroup_id=cg)
        for q, d in (("read-shadow", m.decide_file(t, A.OPEN_READ, SHADOW, [])),
                     ("read-key", m.decide_file(t, A.OPEN_READ, KEY, KEY_PARENTS)),
                     ("connect", m.decide_net(t, A.CONNECT, "192.0.2.1", 443))):
            decisions[f"cgroup {cg} {q}"] = [d.action.name.lower(), d.rule_id]
    got = {"plan": plan.to_json(), "decisions": decisions}
    path = GOLDEN / "hips_containers.json"
    if os.environ.get("BASTION_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(path.read_text())
    # what the golden file says, in words:
    assert decisions["cgroup 9000 read-shadow"] == ["deny", 1]      # the nginx image
    assert decisions["cgroup 9002 read-key"] == ["allow", 2]        # prod/api beats everyone's deny
    assert decisions["cgroup 9003 read-key"] == ["deny", 3]         # dev/api does not
    # the look-alike cgroup gets no container rule (never loosened) and counts as host
    assert decisions["cgroup 9001 read-key"] == ["deny", 3]
    assert decisions["cgroup 9001 connect"] == ["audit", 4]
    assert decisions["cgroup 5000 connect"] == ["audit", 4]
    assert decisions["cgroup 9000 connect"] == ["allow", 0]


def test_container_subject_errors_name_the_place() -> None:
    bad = CPOLICY.replace('{image: "localhost/nginx:*"}', "{imag: x}").replace(
        "{host: true}", "{host: false}").replace("name: api}", "name: api, id: ZZZ}")
    with pytest.raises(PolicyError) as exc:
        parse_policy(bad, "c.yaml")
    msg = str(exc.value)
    assert "c.yaml:6:27: unknown key 'imag' in subject.container" in msg
    assert "c.yaml:11:59: subject.container.id 'ZZZ' must be 12 to 64 lowercase hex digits" in msg
    assert "c.yaml:20:21: subject.host must be true" in msg


# ---- behaviour-rule trust ---------------------------------------------------------------

def test_rule_trust_selects_verified_containers_and_the_host() -> None:
    from bastion.detect.behavior import behavior_rules, parse_behavior, rule_names
    from bastion.detect.engine import Engine, RuleContext
    from bastion.events import FileEvent
    from bastion.proctable import ProcessTable

    cfg = parse_behavior(
        "behavior:\n  rules:\n    behavior.container_release_agent:\n"
        "      trust: [{container: {name: 'cgroup-admin'}}]\n", "b.yaml", rule_names())
    rules = behavior_rules(cfg)
    eng, ctx = Engine(rules), RuleContext(ProcessTable())

    def write_release_agent(c: Container) -> list[str]:
        ev = FileEvent(1, Proc(5, 5, 1, 0, 0, 0, 9000, "sh", exe="/bin/sh", container=c),
                       op="open", path="/sys/fs/cgroup/x/release_agent", flags=0o1)
        return [f.rule for f in eng.evaluate(ev, ctx)]

    admin = Container("podman", H, name="cgroup-admin", verified=True)
    assert "behavior.container_release_agent" not in write_release_agent(admin)
    # the same name on an unverified (look-alike) container is not trusted
    assert "behavior.container_release_agent" in write_release_agent(
        dataclasses.replace(admin, verified=False, why="no podman state"))
    assert "behavior.container_release_agent" in write_release_agent(
        dataclasses.replace(admin, name="web"))


def test_rule_trust_errors_name_the_place() -> None:
    from bastion.detect.behavior import parse_behavior, rule_names
    from bastion.detect.behavior.config import BehaviorConfigError

    with pytest.raises(BehaviorConfigError) as exc:
        parse_behavior("behavior:\n  rules:\n    behavior.container_privileged:\n"
                       "      trust: [{container: {runtime: lxc}}, {host: no}, {exe: /x}]\n",
                       "b.yaml", rule_names())
    msg = str(exc.value)
    assert "b.yaml:4:37: behavior.rules.behavior.container_privileged.trust.container.runtime 'lxc'" in msg
    assert "b.yaml:4:51: behavior.rules.behavior.container_privileged.trust.host must be true" in msg
    assert "b.yaml:4:56: behavior.rules.behavior.container_privileged.trust entries are" in msg


def test_v1_fallback_only_when_a_v1_hierarchy_has_containers_v2_lacks(tmp_path: Path) -> None:
    """Reading /proc/<pid>/cgroup for every new process costs ~80 µs on a loaded host:
    done only while some v1 hierarchy holds a container cgroup absent from v2."""
    v1, v2 = tmp_path / "cg", tmp_path / "cg" / "unified"
    (v1 / "memory" / "libpod_parent" / f"libpod-{H}").mkdir(parents=True)
    (v2 / "libpod_parent" / f"libpod-{H}").mkdir(parents=True)
    r = ContainerResolver(cgroup2=str(v2), cgroup_v1=str(v1))
    assert not r._v1_only_containers(now=0.0)          # podman here: in both trees
    (v1 / "memory" / "docker" / H2).mkdir(parents=True)
    assert not r._v1_only_containers(now=5.0)          # cached for v1_check_s
    assert r._v1_only_containers(now=11.0)             # a v1-only container appeared
    assert r.stats()["v1_fallback"] is True
