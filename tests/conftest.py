"""Test layers and the CI rule: under CI=true a skipped kernel/e2e/vm test fails.

Each directory is one layer: tests/unit (no kernel), tests/kernel (root, real
BPF on the host kernel), tests/e2e (the agent as a process), tests/vm (BPF-LSM
tier, run inside the test VM by vm/run.sh).  The marker is applied from the
directory so a test cannot sit in the wrong layer.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

_LAYERS = ("unit", "kernel", "e2e", "vm")
_MUST_RUN = {"kernel", "e2e", "vm"}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove what SIGKILLed sessions left (tests/support/stale.py): empty test cgroups,
    native copies and test pins whose owner is dead, never a live session's; what was
    removed (or kept: busy) is said in the header."""
    if os.geteuid() != 0:
        return
    from bastion.kernel.bpffs import cgroup2_root
    from support.stale import sweep

    session.config.stash[_SWEPT] = sweep(cgroup_root=cgroup2_root()).lines()


_SWEPT = pytest.StashKey[list[str]]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash.get(_SWEPT, [])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(item.config.rootpath).parts
        for layer in _LAYERS:
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))
                break


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    layers = {m.name for m in item.iter_markers()} & _MUST_RUN
    if layers and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"CI=true: a {'/'.join(sorted(layers))} test may not skip ({reason})"


@pytest.fixture(scope="session", autouse=True)
def _native_libraries_root_only() -> Iterator[None]:
    """The compiled helpers (``make native``) load only from a path root alone can
    change (:func:`bastion.kernel._ffi.trusted_file`).  A checkout cloned under
    /tmp (sticky, world-writable) is not one: the agent would run the Python
    listener and say so.  So that the tests exercise what production runs
    wherever the checkout is, the session copies them to a root-only directory
    under /run and points ``BASTION_NATIVE_DIR`` at it (removed at the end)."""
    from bastion.errors import BastionError
    from bastion.kernel._ffi import trusted_file

    lib_dir = Path(__file__).resolve().parents[1] / "build" / "lib"
    libs = sorted(lib_dir.glob("*.so")) if lib_dir.is_dir() else []
    if os.geteuid() != 0 or "BASTION_NATIVE_DIR" in os.environ or not libs:
        yield
        return
    try:
        for lib in libs:
            trusted_file(lib)
    except BastionError:
        pass
    else:
        yield
        return
    from support.stale import owner_tag

    copy = Path(tempfile.mkdtemp(prefix=f"bastion-native-{owner_tag()}-", dir="/run"))
    try:
        for lib in libs:
            shutil.copy2(lib, copy / lib.name)
        os.environ["BASTION_NATIVE_DIR"] = str(copy)
        yield
    finally:
        os.environ.pop("BASTION_NATIVE_DIR", None)
        shutil.rmtree(copy)


@pytest.fixture(scope="session", autouse=True)
def _tracepoint_detach_without_grace_periods(request: pytest.FixtureRequest) -> Iterator[None]:
    """Root sessions with kernel, e2e or vm tests hold a disabled perf event on every
    syscall tracepoint our objects attach to (tests/support/tpkeeper.py), so a detach does not
    wait for RCU grace periods one after the other: a compat sensor closes in ~0.2 s
    instead of ~2 s (s28: 318 s of an 830 s host layer).  What the tests observe is
    unchanged.  A keeper that cannot start is a warning, never a failure."""
    layers = {m.name for item in request.session.items for m in item.iter_markers()}
    if os.geteuid() != 0 or not layers & _MUST_RUN:
        yield
        return
    from bastion.kernel.libbpf import BpfObject

    names: set[str] = set()
    for obj_path in sorted((Path(__file__).resolve().parents[1] / "build" / "bpf").glob("*.bpf.o")):
        with BpfObject.open(obj_path) as obj:
            for prog in obj.programs():
                # syscall tracepoints only (the compat sensor's ~70): another one
                # (task/task_rename) is what an integrity test watches being patched in
                for prefix in ("tracepoint/syscalls/", "tp/syscalls/"):
                    if prog.section_name.startswith(prefix):
                        names.add("syscalls/" + prog.section_name[len(prefix):])
    keeper = None
    try:
        keeper = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", sys.executable,
             str(Path(__file__).with_name("support") / "tpkeeper.py"), *sorted(names)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert keeper.stdout is not None
        ready = (keeper.stdout.readline().strip()
                 if select.select([keeper.stdout], [], [], 60)[0] else "no answer in 60 s")
        if not ready.startswith("ready "):
            warnings.warn(f"tpkeeper did not start ({ready!r}, exit {keeper.poll()}): "
                          "tracepoint detaches wait for grace periods", stacklevel=1)
        yield
    finally:
        if keeper is not None:
            if keeper.stdin is not None:
                keeper.stdin.close()
            try:
                keeper.wait(60)
            except subprocess.TimeoutExpired:
                keeper.kill()
                keeper.wait()
