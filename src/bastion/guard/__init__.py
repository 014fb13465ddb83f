"""Tamper protection: the agent, its files and its BPF objects against a hostile root.

- :mod:`.protect`  — the protected set (paths -> inode keys with flags)
- :mod:`.identity` — the agent/guardian identity (tgid + start + exe inode)
- :mod:`.token`    — the maintenance token (scrypt hash, rate limit, window)
- :mod:`.kernel`   — the tamper BPF objects (lsm: refuse; compat: kill the sender), pinned
- :mod:`.guardian` — the supervisor that holds protection and restarts the agent

docs/tamper.md has the attack x tier table.
"""
