"""Behaviour-rule trust is by executable inode under root-only directories, never
by name (issue 13 item 8).

Attacks kept as tests: a copy of dpkg at /tmp/.../dpkg, and a binary that
renamed itself (``prctl(PR_SET_NAME, "dkms")``, i.e. its ``comm``), each
writing /etc/ld.so.preload or loading a module, were exempt from the rules;
their children too.  The genuine /usr/bin/dpkg stays exempt."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bastion.abi import kernel_dev
from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.trust import ExeTrust, secure_file
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event, from_json
from bastion.proctable import ProcessTable

NS = 1_000_000_000
DPKG = "/usr/bin/dpkg"
HERE = os.stat("/proc/self/ns/mnt").st_ino     # this process's mount namespace


def ident(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return kernel_dev(st.st_dev), st.st_ino


class Host:
    """A process table and the default pack, fed events whose executables are real
    files of this host (their true device and inode)."""

    def __init__(self) -> None:
        self.procs = ProcessTable()
        self.engine = Engine(behavior_rules())
        self.ctx = RuleContext(self.procs)
        self.t = 1_767_225_600 * NS
        self.meta: dict[int, dict[str, Any]] = {}

    def feed(self, obj: dict[str, Any]) -> list[Finding]:
        self.t += NS // 100
        sec, ns = divmod(self.t, NS)
        obj["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns // 1000:06d}Z"
        ev: Event = from_json(obj)
        self.procs.update(ev)
        return self.engine.evaluate(ev, self.ctx)

    def proc(self, pid: int) -> dict[str, Any]:
        m = self.meta[pid]
        return {"pid": pid, "tid": pid, "ppid": m["ppid"], "uid": 0, "euid": 0, "gid": 0,
                "cgroup_id": 1, "comm": m["comm"], "start_ns": pid * 1000, "exe": m["exe"]}

    def exec(self, pid: int, exe: str, argv: list[str], ppid: int = 1,
             comm: str | None = None, mnt_ns: int = HERE, rooted: bool = False,
             env: tuple[str, ...] = (), uid: int = 0) -> list[Finding]:
        self.meta[pid] = {"ppid": ppid, "exe": exe, "comm": comm or os.path.basename(exe)[:15]}
        dev, ino = ident(exe)
        return self.feed({"type": "exec", **self.proc(pid), "filename": exe, "cwd": "/root",
                          "argv": argv, "exe_dev": dev, "exe_ino": ino, "exe_nlink": 1,
                          "mnt_ns": mnt_ns, "rooted": rooted, "env": list(env),
                          "uid": uid, "euid": uid})

    def write(self, pid: int, path: str) -> list[Finding]:
        return self.feed({"type": "open", **self.proc(pid), "path": path, "path2": "",
                          "flags": 0o1101, "mode": 0o644, "owner_uid": -1, "owner_gid": -1,
                          "dev": 1, "ino": 7})


def rule(found: list[Finding], name: str) -> list[Finding]:
    return [f for f in found if f.rule == name]


@pytest.fixture
def fake_dpkg(tmp_path: Path) -> str:
    """A copy of the real dpkg binary, named dpkg, in a user-writable place."""
    p = tmp_path / "dpkg"
    shutil.copy2(DPKG, p)
    return str(p)


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory only root can write, every parent root-only too (/run is 0755 root)."""
    d = Path(tempfile.mkdtemp(prefix="bastion-trust-", dir="/run"))
    try:
        os.chmod(d, 0o755)
        yield d
    finally:
        shutil.rmtree(d)


def installed_script(root_dir: Path, name: str) -> Path:
    """A shell script ``name`` installed in the root-only ``root_dir`` (root's, 0755)."""
    script = root_dir / name
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o755)
    return script


def test_genuine_dpkg_is_trusted() -> None:
    h = Host()
    h.exec(50, DPKG, ["dpkg", "-i", "libc.deb"])
    assert not rule(h.write(50, "/etc/ld.so.preload"), "behavior.ld_preload")


def test_copy_of_dpkg_in_tmp_is_not_trusted(fake_dpkg: str) -> None:
    h = Host()
    h.exec(51, fake_dpkg, ["dpkg"])
    got = rule(h.write(51, "/etc/ld.so.preload"), "behavior.ld_preload")
    assert got and got[0].severity == "critical"


def test_children_of_a_fake_dpkg_are_not_trusted(fake_dpkg: str) -> None:
    h = Host()
    h.exec(52, fake_dpkg, ["dpkg"])
    h.exec(53, "/usr/bin/cp", ["cp", "evil.so", "/etc/ld.so.preload"], ppid=52)
    assert rule(h.write(53, "/etc/ld.so.preload"), "behavior.ld_preload")


def test_renamed_comm_is_not_trusted() -> None:
    """prctl(PR_SET_NAME, "dkms"): the comm says dkms, the executable is python."""
    h = Host()
    h.exec(54, os.path.realpath("/usr/bin/python3"), ["python3", "/tmp/x.py"], comm="dpkg")
    assert rule(h.write(54, "/etc/ld.so.preload"), "behavior.ld_preload")
    h.exec(55, os.path.realpath("/usr/bin/python3"), ["python3", "/tmp/x.py"], comm="dkms")
    got = rule(h.exec(56, "/usr/bin/cp", ["modprobe", "/tmp/rk.ko"], ppid=55),
               "behavior.kernel_module_load")
    assert got and got[0].severity == "critical"


def test_secure_file_demands_root_only_chain(root_dir: Path, tmp_path: Path) -> None:
    assert secure_file(DPKG) is not None
    f = root_dir / "tool"
    shutil.copy2("/usr/bin/true", f)
    os.chmod(f, 0o755)
    assert secure_file(str(f)) is not None
    os.chmod(f, 0o775)                        # group-writable file
    assert secure_file(str(f)) is None
    os.chmod(f, 0o755)
    os.chown(f, 1000, 1000)                   # not root's
    assert secure_file(str(f)) is None
    os.chown(f, 0, 0)
    os.chmod(root_dir, 0o775)                 # a group-writable directory above it
    assert secure_file(str(f)) is None
    os.chmod(root_dir, 0o755)
    g = tmp_path / "tool"                     # /tmp is world-writable (sticky or not)
    shutil.copy2("/usr/bin/true", g)
    assert secure_file(str(g)) is None
    assert secure_file(str(root_dir / "absent")) is None
    fifo = root_dir / "fifo"
    os.mkfifo(fifo)
    assert secure_file(str(fifo)) is None


def test_trust_dirs_and_refresh(root_dir: Path) -> None:
    now = [0.0]
    t = ExeTrust((str(root_dir),), refresh_s=10, clock=lambda: now[0])
    f = root_dir / "dpkg"
    shutil.copy2("/usr/bin/true", f)
    os.chmod(f, 0o755)
    first = ident(str(f))
    assert t.is_tool(first, {"dpkg"}) == "dpkg"
    assert t.is_tool(first, {"apt"}) is None
    assert t.is_tool((0, 0), {"dpkg"}) is None
    new = root_dir / "dpkg.new"               # an upgrade: a new inode renamed over it
    shutil.copy2("/usr/bin/false", new)
    os.chmod(new, 0o755)
    os.rename(new, f)
    second = ident(str(f))
    assert second != first
    assert t.is_tool(second, {"dpkg"}) is None        # cached until the refresh
    now[0] = 11
    assert t.is_tool(second, {"dpkg"}) == "dpkg"
    assert t.is_tool(first, {"dpkg"}) is None
    assert t.is_tool(second, {"../dpkg", "/x/dpkg"}) is None


def test_trusted_script_by_inode(root_dir: Path, tmp_path: Path) -> None:
    """dkms is a shell script: the interpreter must be the installed one and argv[1]
    the installed script, both by inode."""
    script = installed_script(root_dir, "dkms")
    sh = os.path.realpath("/bin/sh")
    t = ExeTrust((str(root_dir), os.path.dirname(sh)))
    assert t.script_tool(sh, ident(sh), ("sh", str(script)), {"dkms"}, HERE) == "dkms"
    fake = tmp_path / "dkms"
    fake.write_text("#!/bin/sh\n")
    assert t.script_tool(sh, ident(sh), ("sh", str(fake)), {"dkms"}, HERE) is None
    assert t.script_tool(sh, ident(sh), ("sh", "dkms"), {"dkms"}, HERE) is None   # relative
    # an interpreter copied out of the system directory is not the installed one
    sh_copy = tmp_path / os.path.basename(sh)
    shutil.copy2(sh, sh_copy)
    assert t.script_tool(str(sh_copy), ident(str(sh_copy)), ("sh", str(script)), {"dkms"}, HERE) is None
    assert stat.S_ISREG(os.stat(script).st_mode)


def test_is_tool_answers_a_located_name_set_as_the_lazy_loop_does() -> None:
    """is_tool answers a frozenset or tuple whose names are all located this period from the
    inverse map (s24): the same first name as asking each name in the set's order,
    each located when first asked (a tool installed after its name was looked up is not
    trusted before the period ends; installed before, it is), across periods and a
    replay's newly learnt files (``_by_name`` emptied)."""
    import random

    rnd = random.Random(16)
    files: dict[str, tuple[int, int]] = {}
    clock = [0.0]
    trust = ExeTrust(dirs=("/usr/bin",), refresh_s=10.0, clock=lambda: clock[0],
                     locate=files.get)
    # the reference: the same located-once semantics, by a loop over the names
    ref: dict[str, frozenset[tuple[int, int]]] = {}
    ref_stamp = [0.0]

    def ref_is_tool(ident: tuple[int, int], names: Any) -> str | None:
        for n in names:
            if clock[0] - ref_stamp[0] >= 10.0:
                ref.clear()
                ref_stamp[0] = clock[0]
            if n not in ref:
                got = files.get(f"/usr/bin/{n}")
                ref[n] = frozenset({got}) if got is not None else frozenset()
            if ident in ref[n]:
                return n
        return None

    names = [f"t{i}" for i in range(30)]
    sets: list[Any] = [frozenset(rnd.sample(names, rnd.randrange(1, 20))) for _ in range(6)]
    sets += [tuple(rnd.sample(names, rnd.randrange(1, 20))) for _ in range(3)]   # ordered
    idents = [(1, i) for i in range(1, 12)]
    answers = set()
    for step in range(6000):
        r = rnd.random()
        if r < 0.02:    # a tool installed or replaced
            files[f"/usr/bin/{rnd.choice(names)}"] = rnd.choice(idents)
        elif r < 0.025:
            clock[0] += rnd.choice((1.0, 11.0))
        elif r < 0.027:   # what RecordedTrust.learn does
            trust._by_name.clear()
            ref.clear()
        else:
            ident, s = rnd.choice(idents), rnd.choice(sets)
            want = ref_is_tool(ident, s)
            assert trust.is_tool(ident, s) == want, step
            answers.add(want)
    assert len(answers) > 5   # tools were found, under several names, and not found


def test_a_script_s_children_cannot_make_the_agent_resolve_its_path_per_event(
        root_dir: Path) -> None:
    """Attack (found profiling the live agent, s30): a rule asking whether an event's
    actor or its parent is a trusted tool (``trusted(..., depth=1)``: the memory and
    environment readers, ptrace, the log and credential rules) asked whether the parent,
    an installed interpreter running an absolute script path, runs a trusted script --
    and resolved that path anew (realpath, a stat per directory) for every event.  The
    children of any ``sh /abs/job.sh`` reading other processes' environ in a loop cost the
    agent ~300 µs of path walks per event (55 % of its CPU under a 200 Hz reader): a flood
    the rules could not keep up with.  The path's identity is now kept for the trust's
    refresh period, like the tools' own."""
    from bastion.detect.behavior.trust import _locate_here

    script = root_dir / "job.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o755)
    asked: list[str] = []

    def locate(path: str) -> tuple[int, int] | None:
        asked.append(path)
        return _locate_here(path)

    h = Host()
    h.engine = Engine(behavior_rules(trust=ExeTrust(locate=locate)))
    sh = os.path.realpath("/bin/sh")
    h.exec(60, sh, ["sh", str(script)])
    h.exec(61, "/usr/bin/cat", ["cat"], ppid=60)
    found = []
    for k in range(200):
        found += h.feed({"type": "open", **h.proc(61), "path": f"/proc/{4000 + k}/environ",
                         "path2": "", "flags": 0, "mode": 0o400, "owner_uid": 0,
                         "owner_gid": 0, "dev": 5, "ino": 100 + k})
    # the reads are still judged (cat is no debugger, its parent runs no trusted one) ...
    assert len(rule(found, "behavior.proc_mem_access")) == 200
    # ... and the script's path was resolved once, not once per event
    assert asked.count(str(script)) == 1, asked.count(str(script))


def test_a_script_path_through_a_user_s_symlink_is_not_trusted(root_dir: Path,
                                                               tmp_path: Path) -> None:
    """s30 review: secure_file checked the directories of the real file only, so a path
    through a symlink in a directory a user owns (``/home/u/l -> /usr/sbin``) passed --
    and with the script identities kept for a refresh period (s30) a user could prime
    the cache with ``sh /home/u/l/dkms`` and then point ``l`` at their own directory:
    their script trusted as dkms for the rest of the period.  The path as written must
    be root-only too (and in its normal form)."""
    script = installed_script(root_dir, "dkms")
    user = tmp_path / "u"
    user.mkdir()
    os.chown(user, 65534, 65534)          # a directory a user owns
    (user / "l").symlink_to(root_dir)
    sh = os.path.realpath("/bin/sh")
    t = ExeTrust((str(root_dir), os.path.dirname(sh)))
    assert t.script_tool(sh, ident(sh), ("sh", str(script)), {"dkms"}, HERE) == "dkms"
    assert t.script_tool(sh, ident(sh), ("sh", f"{user}/l/dkms"), {"dkms"}, HERE) is None
    assert secure_file(f"{user}/l/dkms") is None
    # the written path in its normal form only: a ".." would be walked after the link
    assert secure_file(f"{root_dir}/../{root_dir.name}/dkms") is None
    assert secure_file(f"{root_dir}//dkms") is None
    # s30 review: POSIX keeps a leading "//" (normpath too), and the written chain's walk
    # waited for "/": any user's `python3 //usr/lib/python3.11/trace.py x.py` hung the
    # rules.  Refused, in a bounded time
    assert secure_file("/" + str(script)) is None
    t2 = ExeTrust((str(root_dir), os.path.dirname(sh)))
    assert t2.script_tool(sh, ident(sh), ("sh", "/" + str(script)), {"dkms"}, HERE) is None
    # a symlink in a root-only directory (merged /usr: /bin -> usr/bin) is root's own
    link = root_dir / "bin"
    link.symlink_to(root_dir)
    assert secure_file(f"{link}/dkms") is not None


def test_a_debugger_s_debuggee_is_not_trusted_as_a_debugger(root_dir: Path, tmp_path: Path) -> None:
    """s31: the ptrace and /proc/PID/mem rules trusted a debugger's children (depth 1),
    and a debugger's child is whatever the user started under it: ``strace -f ./inject``
    or ``gdb --args ./inject`` exempted any injector from both rules, kill included.
    The debugger itself stays exempt; its children are judged as themselves."""
    strace = root_dir / "strace"
    shutil.copy2("/bin/true", strace)          # an installed debugger, by inode
    inject = tmp_path / "inject"
    shutil.copy2("/bin/true", inject)           # the user's own program
    h = Host()
    h.engine = Engine(behavior_rules(trust=ExeTrust((str(root_dir),))))
    h.exec(70, str(strace), ["strace", "-f", str(inject)])
    h.exec(71, str(inject), [str(inject)], ppid=70)

    def ptrace(pid: int, name: str, request: int) -> list[Finding]:
        return h.feed({"type": "ptrace", **h.proc(pid), "request": request,
                       "request_name": name, "target_pid": 999, "addr": 0})

    # the debugger's own requests: exempt
    assert rule(ptrace(70, "POKEDATA", 5), "behavior.ptrace_injection") == []
    assert rule(ptrace(70, "VM_READV", -1), "behavior.proc_mem_access") == []
    # its debuggee's: judged (and the write stopped)
    poke = rule(ptrace(71, "POKEDATA", 5), "behavior.ptrace_injection")
    assert len(poke) == 1 and poke[0].action == "kill", poke
    assert len(rule(ptrace(71, "VM_READV", -1), "behavior.proc_mem_access")) == 1
    mem = rule(h.write(71, "/proc/999/mem"), "behavior.proc_mem_access")
    assert len(mem) == 1 and mem[0].action == "kill", mem


def test_a_script_path_is_trusted_only_in_the_namespace_it_is_resolved_in(root_dir: Path) -> None:
    """s31: the agent resolves a trusted script's path (``sh /usr/sbin/dkms``) in its own
    mount namespace.  In one of their own (``unshare -Urm``, any user on Debian) a user
    bind-mounts their script over that path and runs ``sh /usr/sbin/dkms``: the agent
    found the genuine dkms there and trusted the user's script as dkms (here: a
    modprobe.d write, the system-hook persistence dkms is exempt from).  The same with a
    root of one's own in the agent's namespace (``unshare -Ur``, a descriptor of the
    genuine interpreter, ``chroot ~/t``, ``fexecve``: the path names ``~/t/usr/sbin/dkms``).
    A script path counts only for a process that exec'd in the agent's namespace under
    the agent's root; a record without a namespace (before ABI 3.5) counts as elsewhere."""
    script = installed_script(root_dir, "dkms")
    sh = os.path.realpath("/bin/sh")
    h = Host()
    h.engine = Engine(behavior_rules(trust=ExeTrust((str(root_dir), os.path.dirname(sh)))))
    hook = "behavior.persistence_system_hook"
    h.exec(90, sh, ["sh", str(script), "install"])
    assert rule(h.write(90, "/etc/modprobe.d/dkms.conf"), hook) == []
    for pid, other, rooted in ((91, HERE + 1, False), (92, 0, False), (93, HERE, True)):
        h.exec(pid, sh, ["sh", str(script), "install"], mnt_ns=other, rooted=rooted)
        assert len(rule(h.write(pid, "/etc/modprobe.d/dkms.conf"), hook)) == 1, (other, rooted)


def test_a_script_path_through_procfs_is_not_trusted(root_dir: Path) -> None:
    """s31 review: procfs's directories are root's, and its magic links name what the
    *agent's* process has.  ``python3 /proc/self/cwd/usr/bin/gcore`` is the genuine gcore
    to the agent (whose cwd is ``/``) and the user's ``./usr/bin/gcore`` to the user's
    interpreter: any user was trusted as a debugger (or dkms, or pip) with no namespace
    of their own.  ``/dev/fd/N/...`` likewise.  A path through procfs is refused."""
    script = installed_script(root_dir, "dkms")
    sh = os.path.realpath("/bin/sh")
    t = ExeTrust((str(root_dir), os.path.dirname(sh)))
    assert t.script_tool(sh, ident(sh), ("sh", str(script)), {"dkms"}, HERE) == "dkms"
    here = os.getcwd()
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir("/")
        for via in (f"/proc/self/cwd{script}", f"/proc/{os.getpid()}/root{script}",
                    f"/dev/fd/{fd}{script}", f"/proc/self/fd/{fd}{script}"):
            assert os.path.realpath(via) == str(script), via     # the agent's view
            assert secure_file(via) is None, via
            assert t.script_tool(sh, ident(sh), ("sh", via), {"dkms"}, HERE) is None, via
    finally:
        os.chdir(here)
        os.close(fd)


def test_only_an_interpreter_makes_an_installed_script_s_path_a_tool(root_dir: Path) -> None:
    """s31 review 2: any installed program with a tool's path as its first argument was
    that tool: ``tee /usr/sbin/dkms /etc/modprobe.d/x.conf`` wrote as dkms (the write to
    dkms fails, tee goes on), ``find /usr/sbin/dkms -exec ...`` ran its children as dkms.
    Only a shell or a script interpreter runs the script it names."""
    script = installed_script(root_dir, "dkms")
    sh, tee = os.path.realpath("/bin/sh"), os.path.realpath("/usr/bin/tee")
    t = ExeTrust((str(root_dir), os.path.dirname(sh), os.path.dirname(tee)))
    assert t.script_tool(sh, ident(sh), ("sh", str(script)), {"dkms"}, HERE) == "dkms"
    assert t.script_tool(tee, ident(tee), ("tee", str(script)), {"dkms"}, HERE) is None
    h = Host()
    h.engine = Engine(behavior_rules(trust=t))
    h.exec(95, tee, ["tee", str(script), "/etc/modprobe.d/x.conf"])
    assert len(rule(h.write(95, "/etc/modprobe.d/x.conf"), "behavior.persistence_system_hook")) == 1


def test_a_root_owned_link_into_a_user_s_tree_is_no_root_only_path(root_dir: Path) -> None:
    """s31 review 2: only the path as written and the real path were checked, not the
    links on the way.  An administrator's ``/opt/app -> /srv/app/current`` with
    ``current`` a deploy user's link: the user points it at their own directory when the
    interpreter opens the script and at the genuine one when the agent looks.  Every
    directory a look-up passes through, link targets included, must be root-only."""
    script = installed_script(root_dir, "dkms")
    user = root_dir / "u"                            # in a root-only tree: only its owner
    user.mkdir()                                     # makes it the user's
    os.chown(user, 65534, 65534)
    (user / "current").symlink_to(root_dir)          # the user's link, now at the genuine dir
    admin = root_dir / "opt"
    admin.mkdir()
    (admin / "app").symlink_to(user / "current")    # root's link into the user's tree
    via = f"{admin}/app/dkms"
    assert os.path.realpath(via) == str(script)
    assert secure_file(str(script)) is not None
    assert secure_file(via) is None
    # root's own links stay: a relative one, and one through root's directories only
    (admin / "rel").symlink_to("..")
    assert secure_file(f"{admin}/rel/dkms") is not None
    (admin / "abs").symlink_to(root_dir)
    assert secure_file(f"{admin}/abs/dkms") is not None


def test_a_script_run_with_the_user_s_code_at_hand_is_not_the_tool(root_dir: Path) -> None:
    """s31 review 3: a genuine interpreter runs the user's code before or instead of the
    script when its environment says so (``BASH_ENV``, an exported ``BASH_FUNC_cat%%``,
    ``PYTHONPATH``), or from the user's own start-up files when it is not root's
    (python's ``usercustomize``, ``~/.zshenv``); and busybox's argv[1] names an applet
    (``busybox /usr/sbin/dkms`` runs no script).  None of them is the tool."""
    script = installed_script(root_dir, "dkms")
    if not os.path.exists("/bin/busybox"):
        pytest.skip("needs /bin/busybox (make deps installs busybox-static)")
    sh, bb = os.path.realpath("/bin/sh"), os.path.realpath("/bin/busybox")
    t = ExeTrust((str(root_dir), os.path.dirname(sh), os.path.dirname(bb)))
    h = Host()
    h.engine = Engine(behavior_rules(trust=t))
    hook = "behavior.persistence_system_hook"
    h.exec(100, sh, ["sh", str(script)])
    assert rule(h.write(100, "/etc/modprobe.d/x.conf"), hook) == []
    for pid, kw in ((101, {"env": ("BASH_FUNC_cat%%=() { id; }",)}),
                    (102, {"env": ("BASH_ENV=/home/u/.x",)}), (103, {"uid": 1000})):
        h.exec(pid, sh, ["sh", str(script)], **kw)       # type: ignore[arg-type]
        assert len(rule(h.write(pid, "/etc/modprobe.d/x.conf"), hook)) == 1, kw
    assert t.script_tool(bb, ident(bb), ("sh", str(script)), {"dkms"}, HERE) == "dkms"
    assert t.script_tool(bb, ident(bb), ("busybox", str(script)), {"dkms"}, HERE) is None


def test_a_user_s_pip_is_still_an_installer(root_dir: Path) -> None:
    """s31 review 4: with script trust root's only, a user's ``python3 /usr/bin/pip
    install --user x`` was no installer, and running ``x`` within the window was killed as
    a download run.  A user's pip counts as an installer as a venv's does (the
    installers' exemption only); the other script tools stay root's."""
    from bastion.detect.behavior.base import package_installer, trusted_as

    pip = root_dir / "pip"
    pip.write_text("#!/usr/bin/python3\n")
    os.chmod(pip, 0o755)
    py = os.path.realpath("/usr/bin/python3")
    t = ExeTrust((str(root_dir), os.path.dirname(py)))
    h = Host()
    h.engine = Engine(behavior_rules(trust=t))
    h.exec(110, py, ["python3", str(pip), "install", "--user", "x"], uid=1000)
    ev = from_json({"type": "exit", **h.proc(110), "time": "2026-01-01T00:00:00Z"})
    assert package_installer(ev, h.ctx, t) == "pip"
    entry = h.procs.get(110)
    assert entry is not None and trusted_as(entry, {"pip"}, t) is None
