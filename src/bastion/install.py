"""``bastion install`` / ``bastion uninstall``: put the agent into the standard
places of a host, or under a staging root (``prefix``, DESTDIR-style: files
are written below it, their contents name the final paths).

Installed:

- ``/etc/bastion/policy.yaml``      the embedded default policy, only if absent (0600)
- ``/var/lib/bastion/``             the store (0700)
- ``/var/log/bastion/``             file outputs (0750)
- ``/etc/systemd/system/bastion.service``  the unit (:func:`render_unit`)
- ``/etc/logrotate.d/bastion``      rotation of ``/var/log/bastion/*.jsonl|*.log``

Both operations are idempotent.  Uninstall removes the unit (and its
``multi-user.target.wants`` link) and the logrotate rule when they still carry
our marker line; ``purge`` also removes the policy, the store and the logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from bastion.errors import BastionError, Location

MARKER: Final = "# Installed by 'bastion install'; removed by 'bastion uninstall'."
UNIT_NAME: Final = "bastion.service"
ETC_DIR: Final = Path("/etc/bastion")
POLICY: Final = ETC_DIR / "policy.yaml"
DATA_DIR: Final = Path("/var/lib/bastion")
LOG_DIR: Final = Path("/var/log/bastion")
RUN_DIR: Final = Path("/run/bastion")
UNIT_PATH: Final = Path("/etc/systemd/system") / UNIT_NAME
WANTS_LINK: Final = Path("/etc/systemd/system/multi-user.target.wants") / UNIT_NAME
LOGROTATE_PATH: Final = Path("/etc/logrotate.d/bastion")
DEFAULT_BIN: Final = Path("/usr/bin/bastion")

# Why these settings (docs/operations.md has the long form):
# - No mount-namespace sandboxing (ProtectSystem, ProtectHome, PrivateTmp,
#   PrivateDevices, ProtectKernelTunables/Modules/Logs, ProtectControlGroups,
#   ReadOnlyPaths, TemporaryFileSystem): the agent must see and act on the
#   host's real file system (/tmp and /home included: marks, quarantine,
#   rollback), pin BPF objects in the host's /sys/fs/bpf, mount bpffs there and
#   attach programs to the host's cgroup v2 hierarchy.  A private view would
#   put pins and marks where nobody else sees them.
# - No MemoryDenyWriteExecute: ctypes callbacks (libffi closures for the
#   libbpf print hook and the ring buffer) may need W+X pages.
# - No SystemCallFilter allow-list: bpf, perf_event_open, fanotify_*, mount
#   and pidfd_* are outside @system-service.  A deny-list of what the agent
#   never needs is used instead.
_UNIT: Final = """\
{marker}
[Unit]
Description=Bastion host intrusion prevention agent
After=local-fs.target
Wants=local-fs.target
# a security agent keeps coming back: no start-rate limit
StartLimitIntervalSec=0

[Service]
Type=exec
# the guardian holds tamper protection and restarts the agent; only
# `bastion stop --token-file F` stops both
ExecStart={bin} guardian --data-dir {data} --config {policy} -- {bin} run --keep-pins --policy {policy} --data-dir {data} --socket {run}/bastion.sock --quiet
Restart=always
# `bastion stop --token-file F` ends the guardian with status 0 (nothing else does):
# stopped, not restarted two seconds later
RestartPreventExitStatus=0
RestartSec=2s
# stopping the unit does not stop Bastion (the kernel refuses systemd's SIGTERM and
# SIGKILL; only the token does): do not hold a reboot for long on it
TimeoutStopSec=10s
KillMode=mixed
Environment=PYTHONUNBUFFERED=1
RuntimeDirectory=bastion
RuntimeDirectoryMode=0700
StateDirectory=bastion
StateDirectoryMode=0700
LogsDirectory=bastion
LogsDirectoryMode=0750
UMask=0027
OOMScoreAdjust=-900
LimitMEMLOCK=infinity
LimitNOFILE=65536

# root, but only the capabilities the agent uses: BPF programs and maps,
# tracepoints/perf events, bpffs/fanotify/cgroup attach, signals and pidfds to
# any process, /proc of any process, quarantine and rollback of any file.
CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_NET_ADMIN CAP_SYS_RESOURCE CAP_IPC_LOCK CAP_KILL CAP_SYS_PTRACE CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_CHOWN CAP_SYSLOG CAP_AUDIT_READ
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
SystemCallFilter=~@clock @cpu-emulation @module @obsolete @raw-io @reboot @swap
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK

[Install]
WantedBy=multi-user.target
"""

_LOGROTATE: Final = """\
{marker}
# Bastion's file outputs (JSON lines, OCSF).  copytruncate: the agent keeps
# the file open in append mode.  Use this or the output's own max_size, not both.
{log}/*.jsonl {log}/*.log {{
    daily
    rotate 14
    maxsize 200M
    missingok
    notifempty
    compress
    delaycompress
    copytruncate
}}
"""


class InstallError(BastionError):
    """Install or uninstall could not finish."""


@dataclass(frozen=True)
class Step:
    path: Path          # the final path (without prefix)
    action: str         # created, updated, unchanged, kept, removed, absent, skipped

    def __str__(self) -> str:
        return f"{self.action:9} {self.path}"


def render_unit(bastion_bin: Path = DEFAULT_BIN) -> str:
    return _UNIT.format(marker=MARKER, bin=bastion_bin, policy=POLICY, data=DATA_DIR, run=RUN_DIR)


def render_logrotate() -> str:
    return _LOGROTATE.format(marker=MARKER, log=LOG_DIR)


def default_bin() -> Path:
    """The ``bastion`` entry point of this installation (next to the running
    interpreter, as pip installs it), else the one on PATH, else /usr/bin/bastion."""
    import sys

    beside = Path(sys.executable).parent / "bastion"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("bastion")
    return Path(found).absolute() if found else DEFAULT_BIN


def _under(prefix: Path, path: Path) -> Path:
    return prefix / path.relative_to("/")


def _write(prefix: Path, path: Path, text: str, mode: int) -> Step:
    target = _under(prefix, path)
    try:
        old = target.read_text(encoding="utf-8") if target.exists() else None
        if old == text:
            if (target.stat().st_mode & 0o7777) != mode:
                os.chmod(target, mode)
            return Step(path, "unchanged")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        raise InstallError(f"cannot write: {exc.strerror}", location=Location(str(target))) from exc
    return Step(path, "created" if old is None else "updated")


def _mkdir(prefix: Path, path: Path, mode: int) -> Step:
    target = _under(prefix, path)
    try:
        existed = target.is_dir()
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, mode)
    except OSError as exc:
        raise InstallError(f"cannot create directory: {exc.strerror}",
                           location=Location(str(target))) from exc
    return Step(path, "unchanged" if existed else "created")


def _systemd_running(prefix: Path) -> bool:
    return prefix == Path("/") and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install(prefix: Path = Path("/"), *, bastion_bin: Path | None = None) -> list[Step]:
    """Install into ``prefix``; returns what was done per path."""
    prefix = prefix.absolute()
    steps = [_mkdir(prefix, ETC_DIR, 0o755)]
    policy = _under(prefix, POLICY)
    if policy.exists():
        steps.append(Step(POLICY, "kept"))
    else:
        text = resources.files("bastion").joinpath("data/default-policy.yaml").read_text()
        steps.append(_write(prefix, POLICY, text, 0o600))
    steps.append(_mkdir(prefix, DATA_DIR, 0o700))
    steps.append(_mkdir(prefix, LOG_DIR, 0o750))
    steps.append(_write(prefix, UNIT_PATH, render_unit(bastion_bin or default_bin()), 0o644))
    steps.append(_write(prefix, LOGROTATE_PATH, render_logrotate(), 0o644))
    if _systemd_running(prefix):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    return steps


def _remove_ours(prefix: Path, path: Path) -> Step:
    target = _under(prefix, path)
    if not target.exists():
        return Step(path, "absent")
    try:
        if MARKER not in target.read_text(encoding="utf-8", errors="replace"):
            return Step(path, "kept")    # not ours (or edited away from ours): leave it
        target.unlink()
    except OSError as exc:
        raise InstallError(f"cannot remove: {exc.strerror}", location=Location(str(target))) from exc
    return Step(path, "removed")


def uninstall(prefix: Path = Path("/"), *, purge: bool = False) -> list[Step]:
    """Remove what :func:`install` wrote; ``purge`` also removes the policy,
    the store and the logs."""
    prefix = prefix.absolute()
    steps: list[Step] = []
    if _systemd_running(prefix):
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    link = _under(prefix, WANTS_LINK)
    if link.is_symlink():
        link.unlink()
        steps.append(Step(WANTS_LINK, "removed"))
    steps.append(_remove_ours(prefix, UNIT_PATH))
    steps.append(_remove_ours(prefix, LOGROTATE_PATH))
    for d in (ETC_DIR, DATA_DIR, LOG_DIR):
        target = _under(prefix, d)
        if not target.exists():
            steps.append(Step(d, "absent"))
        elif purge:
            try:
                shutil.rmtree(target)
            except OSError as exc:
                raise InstallError(f"cannot remove: {exc.strerror}",
                                   location=Location(str(target))) from exc
            steps.append(Step(d, "removed"))
        else:
            steps.append(Step(d, "kept"))
    if _systemd_running(prefix):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    return steps


__all__ = ["install", "uninstall", "render_unit", "render_logrotate", "default_bin", "Step",
           "InstallError", "UNIT_PATH", "LOGROTATE_PATH", "POLICY", "DATA_DIR", "LOG_DIR", "ETC_DIR"]
