"""The syslog output against a real rsyslogd on loopback.

The test starts its own rsyslogd (Debian package rsyslog) with a temporary
config — imudp and imtcp on free loopback ports, no /dev/log, its own pid and
work directory — writing every received message to a file with the
RFC 5424 template, and stops it afterwards.  It never touches a system rsyslog.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from bastion.outputs.base import OutputManager
from bastion.outputs.syslog import SyslogOutput
from support.samples import sample_alert, sample_events

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


def _free_port(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class Rsyslog:
    def __init__(self, tmp: Path) -> None:
        self.udp, self.tcp = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
        self.out = tmp / "received.log"
        work = tmp / "work"
        work.mkdir()
        conf = tmp / "rsyslog.conf"
        # Each message as RFC 5424 (RSYSLOG_SyslogProtocol23Format) plus the parsed
        # fields, so the test sees what rsyslog understood, not just the bytes.
        conf.write_text(f"""
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="127.0.0.1" port="{self.udp}")
input(type="imtcp" address="127.0.0.1" port="{self.tcp}")
template(name="fields" type="string"
  string="PRI=%pri% SEV=%syslogseverity% FAC=%syslogfacility% PROTO=%protocol-version% APP=%app-name% MSGID=%msgid% HOST=%hostname% SD=%structured-data% MSG=%msg%\\n")
*.* action(type="omfile" file="{self.out}" template="fields")
""")
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(tmp / "rsyslogd.pid")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 10
        while True:   # ready when the TCP input accepts
            try:
                socket.create_connection(("127.0.0.1", self.tcp), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = self.proc.communicate()[0] if self.proc.poll() is not None else ""
                    self.stop()
                    raise AssertionError(f"rsyslogd did not start: {out}")
                time.sleep(0.05)

    def lines(self, want: int, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.out.read_text().splitlines() if self.out.exists() else []
            if len(got) >= want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    if not os.path.exists(RSYSLOGD):
        pytest.skip("rsyslogd missing (Debian package rsyslog)")
    r = Rsyslog(tmp_path)
    try:
        yield r
    finally:
        r.stop()


FIELDS = re.compile(r"^PRI=(\d+) SEV=(\d+) FAC=(\w+) PROTO=(\d+) APP=(\S+) MSGID=(\S+) HOST=(\S+) "
                    r"SD=(.*?) MSG=(.*)$")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_rsyslog_receives_rfc5424(rsyslog: Rsyslog, transport: str) -> None:
    port = rsyslog.udp if transport == "udp" else rsyslog.tcp
    mgr = OutputManager()
    mgr.add(SyslogOutput("syslog", transport=transport, port=port, facility="local3",
                         hostname="bastion-test"), events=True)
    mgr.start()
    mgr.publish_alert(sample_alert("critical"))
    mgr.publish_alert(sample_alert("low", attack=("T1059.004",)))
    mgr.publish_event(sample_events()[0])
    stats = mgr.close(5)
    assert stats["syslog"]["sent"] == 3 and stats["syslog"]["errors"] == 0
    lines = rsyslog.lines(3)
    assert len(lines) == 3, lines
    parsed = [FIELDS.match(l) for l in lines]
    assert all(parsed), lines
    a1, a2, ev = parsed
    assert a1 and a2 and ev
    # rsyslog parsed these as RFC 5424 (protocol version 1) with our fields
    assert (a1[1], a1[2], a1[3], a1[4], a1[5], a1[6], a1[7]) == \
        (str(19 * 8 + 2), "2", "19", "1", "bastion", "alert", "bastion-test")
    assert 'attack="T1055,T1055.008,TA0004"' in a1[8] and a1[8].startswith("[bastion@32473 ")
    assert 'rule="bastion.ptrace.attach"' in a1[8]
    assert 'exe="/usr/bin/curl"' in a1[8]
    assert a2[2] == "5" and 'attack="T1059.004"' in a2[8]
    assert ev[6] == "exec" and ev[2] == "6"
    assert '"title":"ptrace ATTACH of pid 1 by' in a1[9]
