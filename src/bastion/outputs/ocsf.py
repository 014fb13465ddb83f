"""Pure mapping of Bastion's event JSON and alert dicts to OCSF 1.x events.

Classes (OCSF 1.5.0, https://schema.ocsf.io/1.5.0/):

- Process Activity (1007): exec, fork (Launch), exit (Terminate), ptrace
  (Open; POKE*/SETREGS as Inject), set*uid (Set User ID), kill, memfd_create,
  bpf, set*gid, capset (Other, with ``activity_name`` naming the operation).
- File System Activity (1001): open (Open, or Create with O_CREAT), unlink
  (Delete), rename (Rename; ``file_result`` is the new name), chmod and chown
  (Set Security); an in-kernel ``lsm_deny`` of a path (status Failure).
- Network Activity (4001): connect (Open, outbound), accept (Open, inbound),
  listen (Listen), bind (Other).
- Detection Finding (2004): every alert; ``finding_info.attacks[]`` holds one
  entry per ATT&CK id of the alert (``T1055`` -> technique, ``T1055.001`` ->
  technique ``T1055`` + sub-technique).

Network Activity declares the ``host`` profile (``metadata.profiles``) for its
``device`` and ``actor``.  Fields with no OCSF home go to ``unmapped``.  No I/O here: the functions take
the host name and product version as arguments.
"""

from __future__ import annotations

import os
from typing import Any, Final, Mapping

from bastion.timefmt import parse_time

OCSF_VERSION: Final = "1.5.0"

PROCESS_ACTIVITY: Final = 1007
FILE_ACTIVITY: Final = 1001
NETWORK_ACTIVITY: Final = 4001
DETECTION_FINDING: Final = 2004

_CATEGORY: Final = {PROCESS_ACTIVITY: (1, "System Activity"), FILE_ACTIVITY: (1, "System Activity"),
                    NETWORK_ACTIVITY: (4, "Network Activity"), DETECTION_FINDING: (2, "Findings")}
_CLASS_NAME: Final = {PROCESS_ACTIVITY: "Process Activity", FILE_ACTIVITY: "File System Activity",
                      NETWORK_ACTIVITY: "Network Activity", DETECTION_FINDING: "Detection Finding"}
SEVERITY_ID: Final = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_SEVERITY_NAME: Final = {1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}
_O_CREAT: Final = 0o100
_INJECT_REQUESTS: Final = frozenset({"POKETEXT", "POKEDATA", "POKEUSR", "SETREGS", "SETREGSET"})
_PROC_KEYS: Final = frozenset({"type", "time", "pid", "tid", "ppid", "uid", "euid", "gid",
                               "cgroup_id", "comm", "start_ns", "exe", "truncated",
                               "container"})


def _ms(time_str: str) -> int:
    return round(parse_time(time_str) * 1000)


def _file(path: str) -> dict[str, Any]:
    name = os.path.basename(path.rstrip("/")) or path or "(unknown)"
    out: dict[str, Any] = {"name": name, "type_id": 1, "type": "Regular File"}
    if path:
        out["path"] = path
        parent = os.path.dirname(path)
        if parent:
            out["parent_folder"] = parent
    return out


def _container(c: Mapping[str, Any]) -> dict[str, Any]:
    """The OCSF container object (process.container) of a containers.Container JSON."""
    out: dict[str, Any] = {"uid": str(c.get("id", "")), "runtime": str(c.get("runtime", ""))}
    if c.get("name"):
        out["name"] = str(c["name"])
    if c.get("image"):
        name, _, tag = str(c["image"]).rpartition(":")
        out["image"] = ({"name": name, "tag": tag} if name and "/" not in tag
                        else {"name": str(c["image"])})
    if c.get("pod_uid"):
        out["pod_uuid"] = str(c["pod_uid"])
    if c.get("pod") or c.get("namespace"):
        out["orchestrator"] = "kubernetes"
        out["labels"] = [f"k8s.{k}={c[k]}" for k in ("namespace", "pod") if c.get(k)]
    return out


def _process(ev: Mapping[str, Any], cmdline: str = "", container: Any = None) -> dict[str, Any]:
    """The OCSF process object for the actor of an event JSON (or alert process)."""
    out: dict[str, Any] = {"pid": int(ev.get("pid", 0))}
    if "tid" in ev:
        out["tid"] = int(ev["tid"])
    comm = ev.get("comm") or ""
    exe = ev.get("exe") or ""
    if comm or exe:
        out["name"] = comm or os.path.basename(exe)
    if exe:
        out["file"] = _file(exe)
    if cmdline:
        out["cmd_line"] = cmdline
    if "uid" in ev:
        out["user"] = {"uid": str(ev["uid"])}
    if ev.get("ppid"):
        out["parent_process"] = {"pid": int(ev["ppid"])}
    c = container if container is not None else ev.get("container")
    if isinstance(c, Mapping):
        out["container"] = _container(c)
    return out


def _base(class_uid: int, activity_id: int, activity_name: str, time_ms: int,
          severity_id: int, *, hostname: str, product_version: str) -> dict[str, Any]:
    cat_uid, cat_name = _CATEGORY[class_uid]
    return {
        "class_uid": class_uid,
        "class_name": _CLASS_NAME[class_uid],
        "category_uid": cat_uid,
        "category_name": cat_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{_CLASS_NAME[class_uid]}: {activity_name}",
        "time": time_ms,
        "severity_id": severity_id,
        "severity": _SEVERITY_NAME.get(severity_id, "Other"),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Bastion", "vendor_name": "Bastion", "version": product_version},
        },
        "device": {"type_id": 0, "hostname": hostname, "os": {"name": "Linux", "type_id": 200}},
    }


def _unmapped(ev: Mapping[str, Any], used: frozenset[str]) -> dict[str, Any] | None:
    rest = {k: v for k, v in ev.items() if k not in _PROC_KEYS and k not in used}
    for k in ("euid", "gid", "cgroup_id", "start_ns"):
        if k in ev:
            rest[k] = ev[k]
    if ev.get("truncated"):
        rest["truncated"] = True
    return rest or None


def _process_activity(ev: Mapping[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """actor = who did it, process = what it was done to (OCSF's reading)."""
    t = ev["type"]
    me = _process(ev)
    used: set[str] = set()
    actor: dict[str, Any] | None = me
    target = me
    if t == "exec":       # the parent launched the new image
        target = _process(ev, " ".join(str(a) for a in ev.get("argv") or []))
        if ev.get("cwd"):
            target["working_directory"] = ev["cwd"]
        actor = {"pid": int(ev["ppid"])} if ev.get("ppid") else None
        used |= {"argv", "cwd"}
    elif t == "fork":     # the event's process made a child
        target = {"pid": int(ev.get("child_pid", 0)), "parent_process": {"pid": int(ev["pid"])}}
        if ev.get("exe"):
            target["file"] = _file(str(ev["exe"]))
        used.add("child_pid")
    elif t == "exit":
        base["exit_code"] = int(ev.get("exit_code", 0))
        used.add("exit_code")
    elif t in ("ptrace", "kill"):
        target = {"pid": int(ev.get("target_tgid") or ev.get("target_pid") or 0)}
    if actor is not None:
        base["actor"] = {"process": actor}
    base["process"] = target
    if (u := _unmapped(ev, frozenset(used))) is not None:
        base["unmapped"] = u
    return base


def _process_activity_id(ev: Mapping[str, Any]) -> tuple[int, str]:
    t = ev["type"]
    if t in ("exec", "fork"):
        return 1, "Launch"
    if t == "exit":
        return 2, "Terminate"
    if t == "ptrace":
        return (4, "Inject") if ev.get("request_name") in _INJECT_REQUESTS else (3, "Open")
    if t in ("setuid", "setreuid", "setresuid"):
        return 5, "Set User ID"
    return 99, {"kill": "Signal", "memfd_create": "Memfd Create", "bpf": "BPF"}.get(t, t.capitalize())


def event_to_ocsf(ev: Mapping[str, Any], *, hostname: str, product_version: str) -> dict[str, Any]:
    """One event (its JSON form) -> one OCSF event dict."""
    t = str(ev["type"])
    time_ms = _ms(str(ev["time"]))
    kw: dict[str, Any] = {"hostname": hostname, "product_version": product_version}
    if t in ("open", "unlink", "rename", "chmod", "chown", "utimes") \
            or (t == "lsm_deny" and ev.get("path")):
        if t == "open":
            aid, aname = (1, "Create") if int(ev.get("flags", 0)) & _O_CREAT else (14, "Open")
        elif t == "lsm_deny":
            aid, aname = (14, "Open") if ev.get("hook") == "file_open" else (99, "Exec")
        else:
            aid, aname = {"unlink": (4, "Delete"), "rename": (5, "Rename"),
                          "chmod": (7, "Set Security"), "chown": (7, "Set Security"),
                          "utimes": (6, "Set Attributes")}[t]
        out = _base(FILE_ACTIVITY, aid, aname, time_ms, 1, **kw)
        out["actor"] = {"process": _process(ev)}
        out["file"] = _file(str(ev.get("path", "")))
        if t == "rename":
            out["file_result"] = _file(str(ev.get("path2", "")))
        if t == "lsm_deny":
            out["status_id"], out["status"] = 2, "Failure"
            out["severity_id"], out["severity"] = 4, "High"
        if (u := _unmapped(ev, frozenset({"path", "path2"}))) is not None:
            out["unmapped"] = u
        return out
    if t in ("connect", "bind", "listen", "accept"):
        aid, aname = {"connect": (1, "Open"), "accept": (1, "Open"), "listen": (7, "Listen"),
                      "bind": (99, "Bind")}[t]
        out = _base(NETWORK_ACTIVITY, aid, aname, time_ms, 1, **kw)
        out["metadata"]["profiles"] = ["host"]   # device and actor come from the host profile
        out["actor"] = {"process": _process(ev)}
        src: dict[str, Any] = {}
        dst: dict[str, Any] = {}
        if ev.get("saddr"):
            src["ip"] = ev["saddr"]
        if ev.get("sport"):
            src["port"] = int(ev["sport"])
        if ev.get("daddr"):
            dst["ip"] = ev["daddr"]
        if ev.get("dport"):
            dst["port"] = int(ev["dport"])
        if src:
            out["src_endpoint"] = src
        if dst:
            out["dst_endpoint"] = dst
        direction = {"connect": (2, "Outbound"), "accept": (1, "Inbound")}.get(t, (0, "Unknown"))
        conn: dict[str, Any] = {"direction_id": direction[0], "direction": direction[1]}
        if ev.get("protocol"):
            conn["protocol_name"] = ev["protocol"]
        fam = {"inet": 4, "inet6": 6}.get(str(ev.get("family", "")))
        if fam:
            conn["protocol_ver_id"] = fam
        out["connection_info"] = conn
        if (u := _unmapped(ev, frozenset({"saddr", "sport", "daddr", "dport", "protocol"}))) is not None:
            out["unmapped"] = u
        return out
    aid, aname = _process_activity_id(ev)
    return _process_activity(ev, _base(PROCESS_ACTIVITY, aid, aname, time_ms, 1, **kw))


def _attack(tid: str) -> dict[str, Any]:
    tid = tid.strip()
    if "." in tid:
        parent = tid.split(".", 1)[0]
        return {"technique": {"uid": parent}, "sub_technique": {"uid": tid}}
    if tid.startswith("TA"):
        return {"tactic": {"uid": tid}}
    return {"technique": {"uid": tid}}


def alert_to_ocsf(alert: Mapping[str, Any], *, hostname: str, product_version: str) -> dict[str, Any]:
    """One alert dict (:meth:`bastion.respond.dispatch.Dispatcher.dispatch`) ->
    an OCSF Detection Finding."""
    sev = SEVERITY_ID.get(str(alert.get("severity", "")), 99)
    out = _base(DETECTION_FINDING, 1, "Create", _ms(str(alert["time"])), sev,
                hostname=hostname, product_version=product_version)
    if sev == 99:
        out["severity"] = str(alert.get("severity", "Other"))
    info: dict[str, Any] = {
        "uid": str(alert["id"]),
        "title": str(alert.get("title", "")),
        "analytic": {"type_id": 1, "type": "Rule", "name": str(alert.get("rule", "")),
                     "uid": str(alert.get("rule", ""))},
        "types": [str(alert.get("rule", ""))],
        "product": {"name": "Bastion", "vendor_name": "Bastion", "version": product_version},
    }
    attacks = [_attack(str(a)) for a in alert.get("attack") or ()]
    if attacks:
        info["attacks"] = attacks
    out["finding_info"] = info
    out["message"] = str(alert.get("title", ""))
    out["is_alert"] = True
    proc = alert.get("process") or {}
    evidence: dict[str, Any] = {}
    if proc:
        evidence["process"] = _process(proc, str(proc.get("cmdline", "")), alert.get("container"))
    ev = alert.get("event")
    if isinstance(ev, Mapping):
        if ev.get("path"):
            evidence["file"] = _file(str(ev["path"]))
        if ev.get("daddr"):
            evidence["dst_endpoint"] = {"ip": ev["daddr"], **({"port": int(ev["dport"])} if ev.get("dport") else {})}
    if evidence:
        out["evidences"] = [evidence]
    unmapped = {k: v for k, v in alert.items()
                if k not in ("time", "id", "title", "severity", "rule", "attack", "process")}
    unmapped["attack"] = list(alert.get("attack") or ())
    out["unmapped"] = unmapped
    return out


def to_ocsf(kind: str, data: Mapping[str, Any], *, hostname: str, product_version: str) -> dict[str, Any]:
    if kind == "alert":
        return alert_to_ocsf(data, hostname=hostname, product_version=product_version)
    return event_to_ocsf(data, hostname=hostname, product_version=product_version)


__all__ = ["OCSF_VERSION", "event_to_ocsf", "alert_to_ocsf", "to_ocsf", "SEVERITY_ID",
           "PROCESS_ACTIVITY", "FILE_ACTIVITY", "NETWORK_ACTIVITY", "DETECTION_FINDING"]
