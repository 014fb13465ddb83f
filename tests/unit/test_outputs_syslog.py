"""RFC 5424 records: header, PRI, MSGID, structured data escaping, and the three
transports against local sockets (rsyslog itself: tests/e2e/test_syslog_rsyslog.py)."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest

from bastion.outputs.syslog import FACILITIES, SyslogOutput, format_rfc5424
from bastion.outputs.formats import native
from support.samples import sample_alert, sample_events

# RFC 5424 section 6: HEADER SP STRUCTURED-DATA [SP MSG]
RFC5424 = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    r"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    r"(?P<sd>-|(?:\[[^ =\]\"]+(?: [^ =\]\"]+=\"(?:[^\"\\\]]|\\.)*\")*\])+)(?: (?P<msg>.*))?$", re.S)


def _fmt(kind: str, data: dict, **kw: object) -> str:  # type: ignore[type-arg]
    args = {"facility": FACILITIES["local0"], "hostname": "h1", "app_name": "bastion",
            "procid": 77, "fmt": native, **kw}
    return format_rfc5424(kind, data, **args).decode()  # type: ignore[arg-type]


@pytest.mark.parametrize("sev,code", [("critical", 2), ("high", 3), ("medium", 4), ("low", 5), ("info", 6)])
def test_alert_record(sev: str, code: int) -> None:
    rec = _fmt("alert", sample_alert(sev))
    m = RFC5424.match(rec)
    assert m, rec
    assert int(m["pri"]) == 16 * 8 + code
    assert m["msgid"] == "alert" and m["host"] == "h1" and m["procid"] == "77"
    assert 'attack="T1055,T1055.008,TA0004"' in m["sd"]
    assert m["sd"].startswith("[bastion@32473 ")
    assert 'rule="bastion.ptrace.attach"' in m["sd"]
    assert json.loads(m["msg"])["title"] == sample_alert()["title"]


def test_sd_values_are_escaped() -> None:
    rec = _fmt("alert", sample_alert(process={"pid": 1, "exe": 'a"b]c\\d'}))
    m = RFC5424.match(rec)
    assert m and r'exe="a\"b\]c\\d"' in m["sd"]


def test_event_record_and_truncation() -> None:
    ev = sample_events()[0]
    m = RFC5424.match(_fmt("event", ev))
    assert m and m["msgid"] == "exec" and int(m["pri"]) == 16 * 8 + 6
    assert len(_fmt("event", ev, max_msg=200).encode()) == 200


def test_udp() -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    out = SyslogOutput("s", transport="udp", port=srv.getsockname()[1], hostname="h1")
    out.write([("alert", sample_alert()), ("event", sample_events()[9])])
    out.close()
    got = [srv.recv(65535).decode() for _ in range(2)]
    srv.close()
    assert RFC5424.match(got[0])["msgid"] == "alert"  # type: ignore[index]
    assert RFC5424.match(got[1])["msgid"] == "connect"  # type: ignore[index]


def test_tcp_octet_counting_and_reconnect() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(5)
    received: list[bytes] = []

    def serve(n_conns: int) -> None:
        for _ in range(n_conns):
            c, _ = srv.accept()
            c.settimeout(5)
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            received.append(data)
            c.close()

    t = threading.Thread(target=serve, args=(2,))
    t.start()
    out = SyslogOutput("s", transport="tcp", port=srv.getsockname()[1], hostname="h1")
    out.write([("alert", sample_alert()), ("alert", sample_alert("low"))])
    out.close()                   # the server sees EOF; the next write reconnects
    out.write([("event", sample_events()[0])])
    out.close()
    t.join(5)
    srv.close()
    msgs = []
    for data in received:
        while data:
            length, _, rest = data.partition(b" ")
            n = int(length)
            msgs.append(rest[:n].decode())
            data = rest[n:]
    assert [RFC5424.match(m)["msgid"] for m in msgs] == ["alert", "alert", "exec"]  # type: ignore[index]


def test_unix_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(5)
    out = SyslogOutput("s", transport="unix", path=path, hostname="h1")
    out.write([("alert", sample_alert())])
    out.close()
    assert RFC5424.match(srv.recv(65535).decode())
    srv.close()


def test_unreachable_raises() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                     # nothing listens there
    out = SyslogOutput("s", transport="tcp", port=port, timeout=1)
    with pytest.raises(OSError):
        out.write([("alert", sample_alert())])


def test_non_utf8_path_and_newlines_neither_drop_the_batch_nor_forge_records() -> None:
    """An attacker names a file with undecodable bytes and a newline: the record is still
    sent (with the bytes escaped), its structured data holds no line break, and the other
    records of the batch are sent too."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    out = SyslogOutput("s", transport="udp", host="127.0.0.1", port=rx.getsockname()[1])
    bad = sample_alert()
    bad["process"] = {**bad["process"], "exe": "/tmp/\udcff\udcfe\n<13>1 - forged - - - - evil"}
    try:
        out.write([("alert", bad), ("alert", sample_alert("low"))])
        got = [rx.recv(65536) for _ in range(2)]
    finally:
        out.close()
        rx.close()
    first = got[0].decode("utf-8")
    sd = first[first.index("[bastion@32473"):first.index("] ") + 1]
    assert "\n" not in sd and "\\x0a" in sd and "\\\\udcff" in sd, sd
    assert b"\n" not in got[0].split(b"] ", 1)[0]
    assert b'severity="low"' in got[1]


def test_a_long_hostile_exe_and_argv_still_give_one_well_formed_parsable_record() -> None:
    """s24: an attacker's 4 KiB executable path of newlines and a 20 KiB command line made
    the record longer than a datagram (8 KiB): it was cut mid-value, the structured data
    unterminated and the JSON message gone -- the SIEM's copy of every alert on that
    process unparsable (the remote copy anchors the alert chain)."""
    exe = "/tmp/" + "\n" * 4000
    alert = sample_alert("critical", process={"pid": 4242, "exe": exe, "cmdline": "A" * 20000})
    alert["event"] = {"type": "exec", "argv": ["x" * 50] * 2000, "exe": exe}
    alert["chain"] = {"length": 7, "head": "ab" * 32}
    raw = _fmt("alert", alert, max_msg=8192)
    assert len(raw.encode()) <= 8192
    m = RFC5424.match(raw)
    assert m, raw[:300]
    msg = json.loads(m["msg"])
    assert msg["id"] == alert["id"] and msg["rule"] == alert["rule"]
    assert msg["severity"] == "critical" and msg["process"]["pid"] == 4242
    assert msg["chain"] == alert["chain"] and msg["syslog_truncated"] is True
    assert msg["process"]["exe"].startswith("/tmp/\n")
    assert 'rule="bastion.ptrace.attach"' in m["sd"] and 'pid="4242"' in m["sd"]


def test_a_unix_receiver_that_stops_reading_fails_the_batch_in_time(tmp_path: Path) -> None:
    """s24: the unix transport had no timeout: a syslog daemon whose queue is full (any
    local user can flood world-writable /dev/log) left the output's worker blocked in
    send() for good -- every later record dropped, and the stop waited on it."""
    path = tmp_path / "log.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(path))                       # never reads
    out = SyslogOutput("s", transport="unix", path=str(path), hostname="h", timeout=0.5)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            out.write([("alert", sample_alert())] * 2000)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    t.join(timeout=5.0)
    try:
        assert not t.is_alive(), "the output's write is still blocked"
        assert errors and isinstance(errors[0], TimeoutError)
    finally:
        srv.close()
        out.close()


def test_a_shortened_ocsf_record_keeps_its_ids() -> None:
    """(the OCSF finding's uid is nested: identifiers up to 64 characters are never cut)"""
    from bastion.outputs.formats import make_formatter

    exe = "/tmp/" + "\x01" * 4000
    alert = sample_alert("critical", process={"pid": 4242, "exe": exe, "cmdline": "\x02" * 9000})
    alert["event"] = {"type": "exec", "argv": ["\x03" * 60] * 300, "exe": exe, "path": exe}
    alert["chain"] = {"length": 7, "head": "ab" * 32}
    ocsf = make_formatter("ocsf", hostname="h1", product_version="0")
    raw = _fmt("alert", alert, max_msg=8192, fmt=ocsf)
    assert len(raw.encode()) <= 8192
    m = RFC5424.match(raw)
    assert m, raw[:300]
    msg = json.loads(m["msg"])
    assert msg["finding_info"]["uid"] == alert["id"]
    assert msg["unmapped"]["chain"] == alert["chain"] and msg["syslog_truncated"] is True
