"""RFC 5424 syslog over UDP (RFC 5426), TCP with octet-counting framing
(RFC 6587 3.4.1) or a local unix datagram socket (``/dev/log``).

Record: ``<PRI>1 TIMESTAMP HOSTNAME bastion PROCID MSGID [SD] MSG``

- PRI = facility * 8 + severity; an alert's severity maps critical -> 2 (crit),
  high -> 3 (err), medium -> 4 (warning), low -> 5 (notice), info -> 6
  (info); events are 6 (info).
- MSGID is ``alert`` for alerts and the event type (``exec``, ``connect``, ...)
  for events.
- Structured data ``[bastion@32473 ...]`` (32473 is the example enterprise
  number of RFC 5612) carries an alert's id, rule, severity, action, ATT&CK ids
  (comma-separated), pid and exe, or an event's type, pid and exe.
- MSG is the record as one JSON object (native or OCSF), without a BOM.

A record longer than a datagram (``max_msg``) is never cut mid-value (s24: an attacker's
long executable path or command line cut the structured data open and lost the JSON
message, so the SIEM's copy of every alert on that process was unparsable): structured
data values are at most :data:`SD_VALUE_MAX` characters, and the message's long strings
and lists are shortened (``...[N more]``, ``"syslog_truncated": true``) until the record
fits; the alert's id, rule, severity, time and chain anchor are never shortened.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Final, Mapping, Sequence

from bastion.outputs.base import Record
from bastion.outputs.formats import Formatter, native

FACILITIES: Final = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
SEVERITY: Final = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
SD_ID: Final = "bastion@32473"
TRANSPORTS: Final = ("udp", "tcp", "unix")
#: Characters of one structured-data value (an executable's path); the MSG has it all.
SD_VALUE_MAX: Final = 256
# shortening steps for a record longer than a datagram: each string and list at most this
# (a string's JSON-encoded length; a list has at most a quarter as many items, 16 at least)
# -- 68 keeps an identifier or a 64-hex hash whole wherever it is (OCSF nests the id)
_CAPS: Final = (1024, 256, 68)
# never shortened: what identifies the alert and anchors the chain
_KEEP: Final = frozenset({"kind", "id", "rule", "severity", "time", "chain", "attack"})


def _sd_value(v: object) -> str:
    """An RFC 5424 PARAM-VALUE: UTF-8 always (a non-UTF-8 path's undecodable bytes, held
    as surrogates, become ``\\udcXX`` text instead of failing the whole batch), ``\\ " ]``
    escaped, and control characters (a newline would forge a second record for a
    line-based receiver) written as ``\\xNN``."""
    s = str(v)
    if len(s) > SD_VALUE_MAX:
        s = f"{s[:SD_VALUE_MAX]}...[{len(s) - SD_VALUE_MAX} more]"
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return "".join(c if " " <= c and not "\x7f" <= c <= "\x9f" else f"\\x{ord(c):02x}"
                   for c in s)


def _printable(s: str, limit: int) -> str:
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in s)[:limit]
    return out or "-"


def structured_data(kind: str, data: Mapping[str, Any]) -> str:
    params: list[tuple[str, object]] = []
    if kind == "alert":
        proc = data.get("process") or {}
        params = [("id", data.get("id", "")), ("rule", data.get("rule", "")),
                  ("severity", data.get("severity", "")), ("action", data.get("action", "")),
                  ("attack", ",".join(str(a) for a in data.get("attack") or ())),
                  ("pid", proc.get("pid", "")), ("exe", proc.get("exe", ""))]
    else:
        params = [("type", data.get("type", "")), ("pid", data.get("pid", "")),
                  ("exe", data.get("exe", ""))]
    body = " ".join(f'{k}="{_sd_value(v)}"' for k, v in params)
    return f"[{SD_ID} {body}]"


def format_rfc5424(kind: str, data: Mapping[str, Any], *, facility: int, hostname: str,
                   app_name: str, procid: int, fmt: Formatter, max_msg: int = 0) -> bytes:
    """One RFC 5424 record (no transport framing)."""
    if kind == "alert":
        sev = SEVERITY.get(str(data.get("severity", "")), 4)
        msgid = "alert"
    else:
        sev = 6
        msgid = str(data.get("type", "event"))
    ts = str(data.get("time") or "-")
    header = (f"<{facility * 8 + sev}>1 {ts} {_printable(hostname, 255)} {_printable(app_name, 48)} "
              f"{procid} {_printable(msgid, 32)} {structured_data(kind, data)} ")
    rec = fmt(kind, data)
    head = header.encode("utf-8")
    raw = head + json.dumps(rec, separators=(",", ":")).encode("utf-8")
    for cap in _CAPS if max_msg and len(raw) > max_msg else ():
        short = {k: (v if k in _KEEP else _shorten(v, cap)) for k, v in rec.items()}
        short["syslog_truncated"] = True
        raw = head + json.dumps(short, separators=(",", ":")).encode("utf-8")
        if len(raw) <= max_msg:
            return raw
    if max_msg and len(raw) > max_msg:
        raw = raw[:max_msg]     # not even the shortest form fits: a tiny max_message
    return raw


def _shorten(v: Any, cap: int) -> Any:
    """``v`` with every string whose JSON form is longer than ``cap`` bytes (escapes
    counted: a control character is six) and every list longer than ``cap // 4`` items
    cut, saying how much more there was."""
    if isinstance(v, str):
        if len(v) <= cap // 6 or len(json.dumps(v)) <= cap:
            return v
        n = cap
        while n > 0 and len(json.dumps(v[:n])) > cap:
            n = n * 2 // 3
        return f"{v[:n]}...[{len(v) - n} more]"
    if isinstance(v, Mapping):
        return {k: _shorten(x, cap) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        items = max(16, cap // 4)
        out = [_shorten(x, cap) for x in v[:items]]
        return out + [f"...[{len(v) - items} more]"] if len(v) > items else out
    return v


class SyslogOutput:
    """Sends each record as one RFC 5424 message.  UDP and unix datagrams are
    cut at ``max_msg`` bytes (default 8192); TCP frames are ``LEN SP MSG``.
    A TCP connection that fails is reopened once per batch; a batch that still
    fails raises (the manager counts it)."""

    def __init__(self, name: str, *, transport: str = "udp", host: str = "127.0.0.1",
                 port: int = 514, path: str = "/dev/log", facility: str = "local0",
                 app_name: str = "bastion", hostname: str | None = None,
                 fmt: Formatter = native, max_msg: int = 8192, timeout: float = 5.0) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown syslog transport {transport!r}")
        if facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r}")
        self.name = name
        self.transport = transport
        self.address: tuple[str, int] | str = path if transport == "unix" else (host, port)
        self.facility = FACILITIES[facility]
        self.app_name = app_name
        self.hostname = hostname or socket.gethostname()
        self.fmt = fmt
        self.max_msg = max_msg
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.transport == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # a receiver whose queue stays full fails the batch, never blocks for good (s24)
            s.settimeout(self.timeout)
            try:
                s.connect(self.address)
            except OSError:
                s.close()
                raise
            return s
        assert isinstance(self.address, tuple)
        infos = socket.getaddrinfo(self.address[0], self.address[1],
                                   type=socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM)
        family, stype, proto, _, addr = infos[0]
        s = socket.socket(family, stype, proto)
        s.settimeout(self.timeout)
        try:
            s.connect(addr)
        except OSError:
            s.close()
            raise
        return s

    def _send(self, msgs: list[bytes]) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self.transport == "tcp":
            self._sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in msgs))
        else:
            for m in msgs:
                self._sock.send(m)

    def write(self, batch: Sequence[Record]) -> None:
        pid = os.getpid()
        msgs = [format_rfc5424(kind, data, facility=self.facility, hostname=self.hostname,
                               app_name=self.app_name, procid=pid, fmt=self.fmt,
                               max_msg=0 if self.transport == "tcp" else self.max_msg)
                for kind, data in batch]
        try:
            self._send(msgs)
        except OSError:
            self.close()
            if self.transport != "tcp":
                raise
            self._send(msgs)   # one reconnect; a second failure goes to the manager

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
