"""Issue 15.1-15.3 on Debian's stock kernel (lsm tier, inside the test VM): the
attacks of tests/kernel/test_visibility.py run here unchanged, through the sensor
the assembly picks for this tier — the hook sensor (lsm_events.bpf.o): secret
reads checked in security_file_open against the shared ``sens_inodes`` set, exec
context from the shared tp_btf builder.  This checks that the 6.1 verifier takes
the sensitive-set walk and the bounded environment scan in that object, and that
the fields come out the same as from the tracepoint sensor."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)

from kernel.test_visibility import (  # noqa: E402,F401
    event_source, recorded, test_a_chosen_mtime_set_by_any_program_is_seen,
    test_decoded_payload_piped_into_shell, test_execveat_memfd,
    test_process_vm_readv_of_another_process_is_seen_and_judged,
    test_hard_link_is_caught_by_inode, test_key_hunt_and_subtree, test_loader_env_read_in_the_kernel,
    test_other_process_environ, test_plain_reads_stay_in_the_kernel,
    test_script_in_shm_reports_the_script, test_shadow_reads_by_cat_and_python,
)


def test_tier_is_lsm() -> None:
    from bastion.enforce.tiers import probe

    assert probe().tier == "lsm"


def test_the_hook_sensor_recorded(event_source: str) -> None:  # noqa: F811
    # the attacks above ran through the hook sensor, not the tracepoint one
    assert event_source == "hooks"
