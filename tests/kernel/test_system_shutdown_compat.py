"""The system's final shutdown ends Bastion cleanly, compat tier (s22).

systemd reboots by exec'ing systemd-shutdown as PID 1 once every unit has stopped; it
then SIGTERMs every process and waits up to 90 s before SIGKILL.  The guardian ignored
every SIGTERM, so each reboot of a compat host waited those 90 s, and the tamper
program reported PID 1 as "killed" (bpf_send_signal never signals the global init).
Now the guardian obeys a SIGTERM from the init process while it runs a registered
shutdown program (by inode), and the kernel neither reports nor kills that sender; any
other sender of the same program is still killed.  A stand-in plays init
(tests/support/tamper.py ``ShutdownStandIn``); a TEST instance only (test cgroup,
dead-man deadline)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.store.db import Store  # noqa: E402
from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_final_shutdown_stops_the_guardian_and_no_one_else_can(tmp_path: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        inst = T.make_instance(tmp_path, cg, cgid, deadline_s=120)
        init = T.ShutdownStandIn(tmp_path, cg)
        try:
            inst.start_guardian(*init.args(), tier="compat", agent=T.threaded_agent())
            assert inst.guardian is not None
            gpid, agent = inst.guardian.pid, inst.wait_agent()
            # the shutdown program run by anyone but init: killed, guardian unmoved
            r = inst.attack([str(init.exe), "-c", f"kill -TERM {gpid}"])
            assert r.returncode == -9, (r.returncode, r.stderr)
            inst.wait_alert("bastion.tamper.signal", lambda a: a["action"] == "killed")
            time.sleep(0.5)
            assert inst.guardian.poll() is None
            # init running it: the guardian stops the agent and ends, exit 0
            t0 = time.monotonic()
            assert init.go(gpid) == "0"
            assert inst.guardian.wait(30) == 0, inst.guardian_state()
            took = time.monotonic() - t0
            with Store.open(inst.data, readonly=True) as st:
                rules = [r.data for r in st.alerts(limit=1000)]
            shut = [x for x in rules if x["rule"] == "bastion.guard.system-shutdown"]
            assert shut and shut[0]["evidence"]["sender_pid"] == init.pid, rules
            assert not [x for x in rules if x["rule"] == "bastion.tamper.signal"
                        and x["process"]["pid"] == init.pid], "init reported as an attacker"
            assert T.proc_state(agent) == "gone", "the agent outlived the guardian"
            print(f"guardian ended {took:.2f} s after the shutdown's SIGTERM")
        finally:
            init.close()
            print("\nguardian log:\n" + "".join(inst.stderr[-40:]))
            inst.teardown()
