"""Container context: which container (runtime, id, name, image, pod) a process runs in.

Resolved from local facts only, never from the network:

1. **The cgroup**, by the event's cgroup id (cgroup v2, the id the kernel stamps on
   every record): ``open_by_handle_at`` on the cgroup2 mount turns the id into the
   directory the kernel knows (no pid race, a dead process still resolves).  When
   the v2 path names no container and a v1 hierarchy holds container cgroups the v2
   tree lacks (a runtime that uses only the v1 hierarchies), every line of
   ``/proc/<pid>/cgroup`` is read instead, for the process that started at the
   event's start time.  :func:`parse_cgroup_path` knows the names the runtimes
   give: ``libpod-<id>`` (podman), ``docker-<id>.scope`` / ``docker/<id>``,
   ``cri-containerd-<id>.scope``, ``crio-<id>``, ``kubepods…/pod<uid>/<id>``.
2. **The runtime's own state on disk** for that id: podman/CRI-O
   (``containers/storage`` ``containers.json`` and the bundle's ``config.json``),
   containerd (``/run/containerd/io.containerd.runtime.v2.task/<ns>/<id>/config.json``),
   docker (``/var/lib/docker/containers/<id>/config.v2.json``), runc
   (``/run/runc/<id>/state.json``).  Names, image and the Kubernetes pod,
   namespace and container name come from there (OCI annotations
   ``io.kubernetes.*``).

**What is trusted.**  A cgroup *name* is not an identity: anyone holding a
delegated cgroup subtree (rootless podman, a systemd user manager) can create
``libpod-<64 hex>``.  A container is ``verified`` only when (a) its cgroup
directory and every ancestor are owned by root and writable by nobody else,
and (b) the runtime state for that id exists in root-owned files reached
without a symlink (``openat2`` ``RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS``,
``O_NOFOLLOW``, regular file, size-capped).  Only verified containers carry
metadata and only they match ``container:`` selectors in policy and rule
trust; an unverified one is still reported (``verified: false`` with the
reason) so nothing is hidden.  Everything read from runtime state is
attacker-influenced (an image's labels, a pod's names): it is size-capped,
type-checked and cut to :data:`FIELD_MAX` characters, and it never decides
whether a process *is* in a container — only what it is called.

Results are cached by cgroup id (bounded LRU); the event path does a dict
lookup, the first event of a new cgroup a few small reads.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fnmatch
import json
import os
import re
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import yaml

from bastion.errors import DecodeError
from bastion.yamlparse import NodeParser

if TYPE_CHECKING:
    from bastion.events import Event, Proc

# openat2 RESOLVE_* bits (kernel ABI; bastion.kernel.openat2 is imported only when a file
# is read: importing the configuration must not load the kernel layer)
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    from bastion.kernel.openat2 import openat2 as _openat2

    return _openat2(dirfd, path, flags, resolve)


RUNTIMES: Final = ("docker", "containerd", "cri-o", "podman", "runc")
STATE_MAX_BYTES: Final = 4 << 20     # a runtime state file larger than this is refused
FIELD_MAX: Final = 256               # longest name/image/pod kept (characters)
CAP_SYS_ADMIN: Final = 21
_HEX64 = r"[0-9a-f]{64}"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# leaf component -> runtime (a conmon / pause helper is not the workload)
_LEAF: Final = (
    (re.compile(rf"^libpod-({_HEX64})(?:\.scope)?$"), "podman"),
    (re.compile(rf"^docker-({_HEX64})\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^crio-({_HEX64})(?:\.scope)?$"), "cri-o"),
)
_BARE: Final = re.compile(rf"^({_HEX64})$")
_POD: Final = re.compile(rf"pod({_UID})(?:\.slice)?$")
_RUNC_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Container:
    """The container a process runs in.  ``runtime`` and ``id`` always; the rest
    where the runtime's state says so (verified containers only)."""

    runtime: str
    id: str
    name: str = ""
    image: str = ""
    pod: str = ""            # Kubernetes pod name
    namespace: str = ""      # Kubernetes namespace
    pod_uid: str = ""
    verified: bool = False
    why: str = ""            # why not verified ("" when verified)
    privileged: bool = False  # the runtime's state says privileged (podman annotation, docker HostConfig)
    cgroup: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runtime": self.runtime, "id": self.id}
        for k in ("name", "image", "pod", "namespace", "pod_uid"):
            if v := getattr(self, k):
                out[k] = v
        out["verified"] = self.verified
        if self.why:
            out["why"] = self.why
        if self.privileged:
            out["privileged"] = True
        if self.cgroup:
            out["cgroup"] = self.cgroup
        return out

    @staticmethod
    def from_json(obj: Any) -> Container:
        if not isinstance(obj, Mapping):
            raise DecodeError(f"container must be an object, not {type(obj).__name__}")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(Container):
            if f.name not in obj:
                continue
            v = obj[f.name]
            want = bool if f.name in ("verified", "privileged") else str
            if not isinstance(v, want):
                raise DecodeError(f"container field {f.name!r} has the wrong type")
            kw[f.name] = v
        unknown = set(obj) - {f.name for f in dataclasses.fields(Container)}
        if unknown:
            raise DecodeError(f"container has unknown field(s) {sorted(unknown)}")
        if "runtime" not in kw or "id" not in kw:
            raise DecodeError("container lacks 'runtime' or 'id'")
        return Container(**kw)


@dataclass(frozen=True, slots=True)
class Selector:
    """``container: {image: GLOB, name: GLOB, id: PREFIX, runtime: NAME, pod: GLOB,
    namespace: GLOB}`` (every given key must match) or ``host: true`` (no container).
    A container selector matches verified containers only: a cgroup that merely
    looks like a container never gets a container's rules."""

    host: bool = False
    image: str = ""
    name: str = ""
    id: str = ""
    runtime: str = ""
    pod: str = ""
    namespace: str = ""

    KEYS: ClassVar[tuple[str, ...]] = ("image", "name", "id", "runtime", "pod", "namespace")

    def matches(self, c: Container | None) -> bool:
        if self.host:
            return c is None
        if c is None or not c.verified:
            return False
        for key in ("image", "name", "pod", "namespace"):
            pat = getattr(self, key)
            if pat and not fnmatch.fnmatchcase(getattr(c, key), pat):
                return False
        if self.id and not (len(self.id) >= 12 and c.id.startswith(self.id)):
            return False
        return not self.runtime or self.runtime == c.runtime

    def describe(self) -> str:
        if self.host:
            return "host"
        return "container " + ", ".join(f"{k}={getattr(self, k)}" for k in self.KEYS
                                        if getattr(self, k))


def parse_selector(p: NodeParser, key: str, node: yaml.Node, what: str) -> Selector | None:
    """``container: {image: .., name: ..}`` or ``host: true`` from YAML; problems go to
    ``p`` with file:line:col."""
    if key == "host":
        v = p.scalar(node, f"{what}.host")
        if v is None:
            return None
        if v.lower() not in ("true", "yes", "on"):
            p.err(node, f"{what}.host must be true (to select processes outside every container), "
                        f"not {v!r}")
            return None
        return Selector(host=True)
    got: dict[str, str] = {}

    def field_(k: str) -> Callable[[yaml.Node], None]:
        def take(n: yaml.Node) -> None:
            v = p.scalar(n, f"{what}.container.{k}")
            if v is None:
                return
            if not v or len(v) > FIELD_MAX or "\0" in v:
                p.err(n, f"{what}.container.{k} must be 1..{FIELD_MAX} characters")
            elif k == "id" and not re.fullmatch(r"[0-9a-f]{12,64}", v):
                p.err(n, f"{what}.container.id {v!r} must be 12 to 64 lowercase hex digits "
                         "(a prefix of the container id)")
            elif k == "runtime" and v not in RUNTIMES:
                p.err(n, f"{what}.container.runtime {v!r} is not one of {', '.join(RUNTIMES)}")
            else:
                got[k] = v
        return take

    if not isinstance(node, yaml.MappingNode) or not node.value:
        p.err(node, f"{what}.container must be a non-empty mapping of "
                    f"{', '.join(Selector.KEYS)}")
        return None
    before = len(p.problems)
    p.mapping(node, f"{what}.container", {k: field_(k) for k in Selector.KEYS})
    if len(p.problems) != before or not got:
        return None
    return Selector(image=got.get("image", ""), name=got.get("name", ""), id=got.get("id", ""),
                    runtime=got.get("runtime", ""), pod=got.get("pod", ""),
                    namespace=got.get("namespace", ""))


def parse_cgroup_path(path: str) -> tuple[str, str, str] | None:
    """(runtime, id, pod uid) named by a cgroup path, or None.  Pure.  The nearest
    component that names a container counts (a container's own sub-cgroups, e.g.
    systemd inside it, belong to it).  A bare 64-hex component is a container of
    runtime ``""`` (the runtime state decides which, or that it is none)."""
    parts = [p for p in path.split("/") if p]
    pod = ""
    for p in parts:
        if m := _POD.search(p):
            pod = m.group(1).replace("_", "-")
    for i in range(len(parts) - 1, -1, -1):
        comp = parts[i]
        for rx, runtime in _LEAF:
            if m := rx.match(comp):
                return runtime, m.group(1), pod
        if m := _BARE.match(comp):
            parent = parts[i - 1] if i else ""
            return ("docker" if parent == "docker" else ""), m.group(1), pod
    return None


def _cut(v: Any) -> str:
    return v[:FIELD_MAX] if isinstance(v, str) else ""


class StateReader:
    """Reads runtime state files without following any symlink, root-owned only,
    size-capped.  ``root`` prefixes every path (tests point it at a fake tree)."""

    def __init__(self, root: str = "/", *, require_root_owner: bool = True) -> None:
        self.root = root.rstrip("/") or ""
        self.require_root_owner = require_root_owner

    def read_json(self, path: str) -> Any:
        """The JSON document at ``path``; OSError / ValueError name what is wrong."""
        full = self.root + path
        fd = openat2(-100, full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                     RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{full}: not a regular file")
            if self.require_root_owner and (st.st_uid != 0 or st.st_mode & 0o002):
                raise ValueError(f"{full}: not owned by root (uid {st.st_uid}) or world-writable")
            if st.st_size > STATE_MAX_BYTES:
                raise ValueError(f"{full}: {st.st_size} bytes, more than {STATE_MAX_BYTES}")
            chunks, left = [], STATE_MAX_BYTES + 1
            while left > 0:
                b = os.read(fd, min(left, 1 << 16))
                if not b:
                    break
                chunks.append(b)
                left -= len(b)
            data = b"".join(chunks)
            if len(data) > STATE_MAX_BYTES:
                raise ValueError(f"{full}: grew past {STATE_MAX_BYTES} bytes while read")
        finally:
            os.close(fd)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{full}: not JSON ({exc})") from None

    def exists_dir(self, path: str) -> bool:
        try:
            fd = openat2(-100, self.root + path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                         RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            return not self.require_root_owner or st.st_uid == 0
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        try:
            fd = openat2(-100, self.root + path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                         RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError:
            return []
        try:
            return os.listdir(fd)[:256]
        finally:
            os.close(fd)


_STORAGE: Final = ("/var/lib/containers/storage", "/run/containers/storage")
_CONTAINERD_TASKS: Final = ("/run/containerd/io.containerd.runtime.v2.task",
                            "/run/containerd/io.containerd.runtime.v1.linux")


def _annotations(doc: Any) -> dict[str, str]:
    ann = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(ann, dict):
        return {}
    return {k: v for k, v in list(ann.items())[:512] if isinstance(k, str) and isinstance(v, str)}


def _k8s(ann: Mapping[str, str]) -> dict[str, str]:
    """Kubernetes names from OCI annotations (containerd CRI and CRI-O spellings)."""
    def first(*keys: str) -> str:
        return next((_cut(ann[k]) for k in keys if k in ann), "")
    return {"pod": first("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
            "namespace": first("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"),
            "name": first("io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
            "image": first("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"),
            "pod_uid": first("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")}


def read_state(reader: StateReader, runtime: str, cid: str) -> tuple[str, dict[str, str]]:
    """(runtime, metadata) from the runtime's state for ``cid``; runtime ``""`` when no
    runtime knows the id.  Raises ValueError for a state file that exists but is bad."""
    meta: dict[str, str] = {}
    if runtime in ("podman", "cri-o", ""):
        for base in _STORAGE:
            ud = f"{base}/overlay-containers/{cid}/userdata"
            if not reader.exists_dir(ud):
                continue
            try:
                ann = _annotations(reader.read_json(f"{ud}/config.json"))
            except FileNotFoundError:
                ann = {}
            rt = runtime or ("podman" if ann.get("io.container.manager") == "libpod" else "cri-o")
            if ann.get("io.podman.annotations.privileged", "").upper() == "TRUE":
                meta["privileged"] = "true"
            meta.update({k: v for k, v in _k8s(ann).items() if v})
            try:
                listing = reader.read_json(f"{_STORAGE[0]}/overlay-containers/containers.json")
            except FileNotFoundError:
                listing = []
            for entry in listing if isinstance(listing, list) else []:
                if isinstance(entry, dict) and entry.get("id") == cid:
                    names = entry.get("names")
                    if isinstance(names, list) and names and "name" not in meta:
                        meta["name"] = _cut(names[0])
                    md = entry.get("metadata")
                    try:
                        mdd = json.loads(md) if isinstance(md, str) and len(md) < 65536 else {}
                    except ValueError:
                        mdd = {}
                    if isinstance(mdd, dict) and mdd.get("image-name") and "image" not in meta:
                        meta["image"] = _cut(mdd["image-name"])
                    break
            return rt, meta
    if runtime in ("containerd", ""):
        for base in _CONTAINERD_TASKS:
            for ns in reader.listdir(base):
                if not _RUNC_ID.match(ns):
                    continue
                bundle = f"{base}/{ns}/{cid}"
                if reader.exists_dir(bundle):
                    try:
                        meta.update({k: v for k, v in
                                     _k8s(_annotations(reader.read_json(f"{bundle}/config.json"))).items() if v})
                    except FileNotFoundError:
                        pass
                    return "containerd", meta
    if runtime in ("docker", ""):
        d = f"/var/lib/docker/containers/{cid}"
        if reader.exists_dir(d):
            doc = reader.read_json(f"{d}/config.v2.json")
            if isinstance(doc, dict):
                meta["name"] = _cut(doc.get("Name", "")).lstrip("/")
                cfg = doc.get("Config")
                if isinstance(cfg, dict):
                    meta["image"] = _cut(cfg.get("Image", ""))
                    labels = cfg.get("Labels")
                    if isinstance(labels, dict):
                        meta.update({k: v for k, v in _k8s(
                            {k: v for k, v in labels.items() if isinstance(v, str)}).items() if v})
            try:
                hc = reader.read_json(f"{d}/hostconfig.json")
            except FileNotFoundError:
                hc = {}
            if isinstance(hc, dict) and hc.get("Privileged") is True:
                meta["privileged"] = "true"
            return "docker", meta
    if _RUNC_ID.match(cid) and reader.exists_dir(f"/run/runc/{cid}"):
        doc = reader.read_json(f"/run/runc/{cid}/state.json")
        if not isinstance(doc, dict) or doc.get("id") != cid:
            raise ValueError(f"/run/runc/{cid}/state.json: does not describe {cid}")
        return runtime or "runc", meta
    return "", meta


def _owner_ok(path: str, stop: str) -> str:
    """"" when ``path`` and every ancestor down to ``stop`` are root-owned and
    writable by root only; else the first offender."""
    p = path
    while True:
        try:
            st = os.lstat(p)
        except OSError as exc:
            return f"{p}: {exc.strerror}"
        if st.st_uid != 0 or st.st_mode & 0o022:
            return f"{p}: owned by uid {st.st_uid}, mode {st.st_mode & 0o777:o} (delegated cgroup)"
        if p.rstrip("/") == stop.rstrip("/") or p in ("/", ""):
            return ""
        p = os.path.dirname(p.rstrip("/"))


class _Handles:
    """cgroup id -> v2 path through ``open_by_handle_at`` (kernfs handle type 0xfe)."""

    def __init__(self, mount: str) -> None:
        self.mount = mount
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._mfd = -1

    def path(self, cgroup_id: int) -> str | None:
        if self._mfd < 0:
            try:
                self._mfd = os.open(self.mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
        raw = struct.pack("=IiQ", 8, 0xFE, cgroup_id)
        buf = ctypes.create_string_buffer(raw, len(raw))
        fd = int(self._libc.open_by_handle_at(self._mfd, buf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        if fd < 0:
            return None
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._mfd >= 0:
            os.close(self._mfd)
            self._mfd = -1


def _same_process(pid: int, start_ns: int) -> bool:
    """Is ``pid`` still the process that started at ``start_ns`` (tick tolerance)?"""
    from bastion.procstat import TICK_NS, read_stat

    try:
        st = read_stat(pid, Path("/proc"))
    except (OSError, ValueError, IndexError):
        return False
    return not start_ns or abs(st.start_ns - start_ns) < TICK_NS


def _proc_cgroups(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            raw = f.read(65536)
    except OSError:
        return []
    return [line.split(b":", 2)[2].decode("utf-8", "replace")
            for line in raw.splitlines() if line.count(b":") >= 2]


class ContainerResolver:
    """cgroup id (+ pid as a fallback) -> :class:`Container` or None, cached."""

    def __init__(self, *, cgroup2: str = "/sys/fs/cgroup/unified", cgroup_v1: str = "/sys/fs/cgroup",
                 state: StateReader | None = None, max_entries: int = 4096) -> None:
        self.cgroup2 = cgroup2
        self.cgroup_v1 = cgroup_v1
        self.state = state or StateReader()
        self.max_entries = max_entries
        self._by_cgroup: OrderedDict[int, Container | None] = OrderedDict()
        self._by_proc: OrderedDict[tuple[int, int], Container | None] = OrderedDict()
        self._handles = _Handles(cgroup2)
        self.lookups = 0
        self.misses = 0
        self.generation = 0          # grows with every newly seen verified container
        self.v1_check_s = 10.0
        self._v1_checked = -1e18
        self._v1_only = False
        self.errors: dict[str, int] = {}

    def close(self) -> None:
        self._handles.close()

    def _put(self, cache: OrderedDict[Any, Container | None], key: Any, c: Container | None) -> None:
        cache[key] = c
        while len(cache) > self.max_entries:
            cache.popitem(last=False)

    def for_proc(self, proc: Proc) -> Container | None:
        self.lookups += 1
        cid = proc.cgroup_id
        if cid in self._by_cgroup:
            self._by_cgroup.move_to_end(cid)
            c = self._by_cgroup[cid]
        else:
            self.misses += 1
            c = self._resolve_v2(cid, proc.pid)
            self._put(self._by_cgroup, cid, c)
        if c is not None or not self._v1_only_containers():
            return c
        # the v2 cgroup names no container, and some v1 hierarchy holds a container
        # cgroup the v2 tree lacks (a runtime that uses the v1 hierarchies only)
        key = (proc.pid, proc.start_ns)
        if key in self._by_proc:
            self._by_proc.move_to_end(key)
            return self._by_proc[key]
        if not _same_process(proc.pid, proc.start_ns):
            return None      # gone, or the pid is another process's now: nothing to read
        c = self._resolve_paths(_proc_cgroups(proc.pid), self.cgroup_v1, proc.pid, v1=True)
        self._put(self._by_proc, key, c)
        return c

    def _v1_only_containers(self, now: float | None = None) -> bool:
        """Does a v1 hierarchy hold a cgroup naming a container that the v2 tree does not
        have?  Checked every :attr:`v1_check_s` (a bounded walk); while none does, the
        per-process read of ``/proc/<pid>/cgroup`` (~80 µs per new process on a loaded
        host, bench/bench_containers.py) is skipped."""
        t = time.monotonic() if now is None else now
        if t - self._v1_checked < self.v1_check_s:
            return self._v1_only
        self._v1_checked = t
        found = False
        try:
            hiers = [h for h in os.listdir(self.cgroup_v1)
                     if os.path.join(self.cgroup_v1, h).rstrip("/") != self.cgroup2.rstrip("/")]
        except OSError:
            hiers = []
        budget = 4096
        for h in sorted(hiers):
            base = os.path.join(self.cgroup_v1, h)
            if os.path.islink(base) or not os.path.isdir(base):
                continue
            stack = [("", 0)]
            while stack and budget > 0 and not found:
                rel, depth = stack.pop()
                budget -= 1
                if rel and parse_cgroup_path(rel) is not None:
                    found = not os.path.isdir(self.cgroup2 + rel)
                    continue
                if depth >= 6:
                    continue
                try:
                    for e in os.scandir(base + rel):
                        if e.is_dir(follow_symlinks=False):
                            stack.append((f"{rel}/{e.name}", depth + 1))
                except OSError:
                    continue
            if found:
                break
        self._v1_only = found
        return found

    def _resolve_v2(self, cgroup_id: int, pid: int) -> Container | None:
        path = self._handles.path(cgroup_id) if cgroup_id else None
        if path is None:
            return None
        rel = path[len(self.cgroup2):] if path.startswith(self.cgroup2) else path
        c = self._resolve_paths([rel or "/"], self.cgroup2, pid, v1=False)
        if c is not None and c.verified:
            self.generation += 1     # the agent re-resolves container:/host: subjects
        return c

    def _resolve_paths(self, paths: list[str], mount: str, pid: int, *, v1: bool) -> Container | None:
        for rel in paths:
            parsed = parse_cgroup_path(rel)
            if parsed is None:
                continue
            runtime, cid, pod_uid = parsed
            full = self._find_dir(mount, rel, v1)
            why = _owner_ok(full, mount) if full else f"cgroup {rel} not found under {mount}"
            try:
                found, meta = read_state(self.state, runtime, cid)
            except (OSError, ValueError) as exc:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                found, meta = "", {}
                why = why or f"runtime state unreadable: {exc}"
            if not found:
                if not runtime:
                    continue      # a bare hex name no runtime knows: not a container
                why = why or f"no {runtime} state for {cid[:12]}"
            verified = not why
            return Container(
                runtime=found or runtime, id=cid,
                pod_uid=meta.get("pod_uid") or pod_uid,
                **({k: meta[k] for k in ("name", "image", "pod", "namespace") if k in meta}
                   if verified else {}),
                verified=verified, why=why,
                privileged=verified and meta.get("privileged") == "true", cgroup=rel)
        return None

    def _find_dir(self, mount: str, rel: str, v1: bool) -> str:
        if not v1:
            return mount + rel
        try:
            hier = os.listdir(mount)
        except OSError:
            return ""
        for h in sorted(hier):
            if h == "unified":
                continue
            cand = f"{mount}/{h}{rel}"
            if os.path.isdir(cand) and not os.path.islink(f"{mount}/{h}"):
                return cand
        return ""

    def enrich(self, ev: Event) -> Event:
        """The event with ``proc.container`` filled (the same object for host processes).

        The actor record is filled in place: every decoded event has its own ``Proc``
        and enrichment runs before the event is stored, published or evaluated, so no
        one has seen it yet — two ``dataclasses.replace`` calls cost 7-12 µs per
        container event here, the in-place fill 0.3 µs (bench/bench_containers.py)."""
        if ev.proc.container is not None:
            return ev
        c = self.for_proc(ev.proc)
        if c is not None:
            object.__setattr__(ev.proc, "container", c)
        return ev

    def inventory(self, *, max_dirs: int = 65536) -> list[tuple[int, Container | None]]:
        """Every cgroup v2 directory now, as (cgroup id, its container or None for
        the host).  For policy subjects (``container:`` / ``host:``); bounded, never
        follows a symlink."""
        out: list[tuple[int, Container | None]] = []
        stack = [(self.cgroup2, "")]
        while stack and len(out) < max_dirs:
            full, rel = stack.pop()
            try:
                st = os.lstat(full)
                entries = list(os.scandir(full))
            except OSError:
                continue
            # every directory on its own: two cgroups named after the same container id
            # (the real one and a look-alike in a delegated subtree) are verified apart
            c = (self._resolve_paths([rel], self.cgroup2, 0, v1=False)
                 if parse_cgroup_path(rel or "/") is not None else None)
            out.append((st.st_ino, c))
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append((e.path, f"{rel}/{e.name}"))
        return sorted(out, key=lambda x: x[0])

    def stats(self) -> dict[str, Any]:
        return {"lookups": self.lookups, "misses": self.misses, "cached": len(self._by_cgroup),
                "v1_fallback": self._v1_only, "errors": dict(self.errors)}


__all__ = ["Container", "ContainerResolver", "Selector", "parse_selector", "StateReader", "parse_cgroup_path",
           "read_state", "RUNTIMES", "STATE_MAX_BYTES", "FIELD_MAX"]
