"""The guardian judges the agent's event loop by its heartbeat, not its pid (issue 13 item 5)."""

from __future__ import annotations

from bastion.guard.guardian import HeartbeatWatch


def test_fresh_heartbeat_is_not_a_stall() -> None:
    w = HeartbeatWatch(stall_after_s=30)
    for t in range(0, 300, 2):
        assert w.observe(10, {"pid": 10, "loop_heartbeat_age_s": 0.05}, float(t)) is None
    assert w.age == 0.05


def test_old_heartbeat_while_pid_and_socket_live_is_a_stall() -> None:
    w = HeartbeatWatch(stall_after_s=30)
    assert w.observe(10, {"pid": 10, "loop_heartbeat_age_s": 0.1}, 0.0) is None
    assert w.observe(10, {"pid": 10, "loop_heartbeat_age_s": 29.0}, 29.0) is None
    why = w.observe(10, {"pid": 10, "loop_heartbeat_age_s": 31.0}, 31.0)
    assert why is not None and "no progress for 31.0s" in why


def test_starting_agent_is_not_judged() -> None:
    w = HeartbeatWatch(stall_after_s=5)
    for t in range(0, 100, 2):   # loop not running yet: None, for as long as it takes
        assert w.observe(10, {"pid": 10, "loop_heartbeat_age_s": None}, float(t)) is None


def test_never_answering_agent_is_not_judged_but_a_silent_one_is() -> None:
    w = HeartbeatWatch(stall_after_s=5)
    for t in range(0, 100, 2):   # a stand-in without a socket, or another socket path
        assert w.observe(10, None, float(t)) is None
    assert w.observe(10, {"pid": 10, "loop_heartbeat_age_s": 0.1}, 100.0) is None
    assert w.observe(10, None, 104.0) is None
    why = w.observe(10, None, 106.0)
    assert why is not None and "stopped answering" in why


def test_answer_from_another_pid_is_no_answer() -> None:
    """Someone else's agent on the socket path does not vouch for ours."""
    w = HeartbeatWatch(stall_after_s=5)
    assert w.observe(10, {"pid": 10, "loop_heartbeat_age_s": 0.1}, 0.0) is None
    assert w.observe(10, {"pid": 99, "loop_heartbeat_age_s": 0.1}, 3.0) is None
    assert w.observe(10, {"pid": 99, "loop_heartbeat_age_s": 0.1}, 6.0) is not None


def test_a_new_agent_starts_afresh() -> None:
    w = HeartbeatWatch(stall_after_s=5)
    assert w.observe(10, {"pid": 10, "loop_heartbeat_age_s": 0.1}, 0.0) is None
    assert w.observe(11, None, 100.0) is None          # restarted: not answered yet
    assert w.observe(11, None, 104.0) is None
