"""Secure deletion (T1070.004, s17-wipe): the deletion tools by identity and option
table, the overwrite-in-place-then-unlink shape whatever the tool, and the look-alikes
that must stay silent (own journals and swap files, databases, editors, rm, mv,
package managers, logrotate, tmpfiles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.state import Limits
from bastion.detect.behavior.wipe import SecureDeletion, wipe_command
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.proctable import ProcessTable
from bastion.sensors.replay import read_all
from support.trust import RecordedTrust, path_ino

RULE = "behavior.secure_deletion"
W, WC, WCT, RW, RWC, RWCX = 0o1, 0o101, 0o1101, 0o2, 0o102, 0o302


class Rec:
    """exec/open/rename/unlink events as the compat sensor reports them (an unlink or a
    rename carries no inode; an open carries the caller's flags and the inode)."""

    def __init__(self) -> None:
        self.n = 0
        self.lines: list[dict[str, Any]] = []
        self.procs: dict[int, tuple[int, str]] = {}
        self.exec(1, 0, "/sbin/init", ["/sbin/init"])
        self.exec(100, 1, "/usr/bin/bash", ["bash", "/tmp/run.sh"])

    def _hdr(self, pid: int, at_s: float | None) -> dict[str, Any]:
        self.n += 1
        t = at_s if at_s is not None else self.n * 0.01
        ppid, exe = self.procs[pid]
        sec, us = divmod(int(t * 1_000_000), 1_000_000)
        mins, sec = divmod(sec, 60)
        return {"time": "2026-01-01T00:%02d:%02d.%06dZ" % (mins, sec, us),
                "pid": pid, "tid": pid, "ppid": ppid, "uid": 0, "euid": 0, "gid": 0,
                "cgroup_id": 1, "comm": exe.rsplit("/", 1)[1][:15], "start_ns": pid * 1000,
                "exe": exe}

    def exec(self, pid: int, ppid: int, exe: str, argv: list[str], cwd: str = "/tmp",
             ino: int = 0, at_s: float | None = None) -> "Rec":
        self.procs[pid] = (ppid, exe)
        self.lines.append({"type": "exec", **self._hdr(pid, at_s), "filename": exe,
                           "cwd": cwd, "argv": argv, "exe_dev": 1,
                           "exe_ino": ino or path_ino(exe), "exe_nlink": 1})
        return self

    def _file(self, pid: int, op: str, path: str, path2: str = "", flags: int = 0,
              ino: int = 0, at_s: float | None = None, **state: bool) -> "Rec":
        self.lines.append({"type": op, **self._hdr(pid, at_s), "path": path, "path2": path2,
                           "flags": flags, "mode": 0o644 if flags & 0o100 else 0,
                           "owner_uid": -1, "owner_gid": -1, "dev": 1 if ino else 0,
                           "ino": ino, **state})
        return self

    def open(self, pid: int, path: str, flags: int, ino: int,
             at_s: float | None = None, **state: bool) -> "Rec":
        """``state``: the kernel's answer of an ABI 2.10 record (``created``, ``empty``);
        none given: a record that does not say (an older object, an older replay)."""
        return self._file(pid, "open", path, flags=flags, ino=ino, at_s=at_s, **state)

    def rename(self, pid: int, old: str, new: str, at_s: float | None = None) -> "Rec":
        return self._file(pid, "rename", old, new, at_s=at_s)

    def exit(self, pid: int, at_s: float | None = None) -> "Rec":
        self.lines.append({"type": "exit", **self._hdr(pid, at_s), "exit_code": 0,
                           "signal": 0, "status": 0})
        return self

    def unlink(self, pid: int, path: str, at_s: float | None = None) -> "Rec":
        return self._file(pid, "unlink", path, at_s=at_s)

    def shred_shape(self, pid: int, path: str, ino: int) -> "Rec":
        """What coreutils shred -u does to ``path``: write-open in place, the rename
        series to shorter names of zeros in the same directory, the unlink."""
        d, name = path.rsplit("/", 1)
        self.open(pid, path, 0o401, ino)
        cur = path
        for k in range(len(name), 0, -1):
            new = f"{d}/{'0' * k}"
            self.rename(pid, cur, new)
            cur = new
        return self.unlink(pid, cur)

    def run(self, tmp: Path) -> list[Finding]:
        p = tmp / "rec.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in self.lines))
        procs, trust = ProcessTable(), RecordedTrust()
        engine = Engine(behavior_rules(trust=trust))
        ctx = RuleContext(procs)
        out: list[Finding] = []
        for ev in read_all(p):
            trust.learn(ev)
            procs.update(ev)
            out += engine.evaluate(ev, ctx)
        assert not engine.errors, engine.disabled
        return out


def wipes(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.rule == RULE]


# ---- (a) the tools by identity, their option tables ------------------------------------

@pytest.mark.parametrize("family,argv,files,how", [
    ("shred", ["shred", "-u", "v"], ["/w/v"], "overwrite and remove"),
    ("shred", ["shred", "-zun", "7", "a", "/b"], ["/w/a", "/b"], "overwrite and remove"),
    ("shred", ["shred", "-zun7", "a"], ["/w/a"], "overwrite and remove"),
    ("shred", ["shred", "--remove=wipesync", "a"], ["/w/a"],
     "overwrite and remove (wipesync)"),
    ("shred", ["shred", "--rem", "--iterations", "3", "a"], ["/w/a"], "overwrite and remove"),
    ("shred", ["shred", "-n", "-u", "a"], None, None),        # -n takes "-u": no removal
    ("shred", ["shred", "-vz", "a"], None, None),              # overwrite only
    ("shred", ["shred", "--r", "a"], None, None),              # ambiguous: shred refuses
    ("shred", ["shred", "-u", "--", "-u"], ["/w/-u"], "overwrite and remove"),
    ("wipe", ["wipe", "-rf", "d"], ["/w/d"], "overwrite and remove"),
    ("wipe", ["wipe", "-kq", "d"], None, None),                # -k keeps the files
    ("wipe", ["wipe", "-Q", "3", "-f", "x"], ["/w/x"], "overwrite and remove"),
    ("srm", ["srm", "-fllz", "x"], ["/w/x"], "overwrite and remove"),
    ("scrub", ["scrub", "-r", "-p", "dod", "x"], ["/w/x"], "overwrite and remove"),
    ("scrub", ["scrub", "-p", "dod", "x"], None, None),
    ("scrub", ["scrub", "-X", "/mnt/d"], ["/mnt/d"], "free space filled"),
    ("sfill", ["sfill", "-l", "/home"], ["/home"], "free space wiped"),
    ("srm", ["srm"], None, None),
])
def test_command_lines_by_option_table(family: str, argv: list[str], files: list[str] | None,
                                       how: str | None) -> None:
    got = wipe_command(family, argv, "/w")
    if files is None:
        assert got is None
    else:
        assert got is not None and list(got.files) == files and got.how == how


def test_shred_by_name_is_medium_and_names_the_file(tmp_path: Path) -> None:
    r = Rec()
    r.open(100, "/tmp/victim-shred.txt", WCT, 50)
    r.exec(101, 100, "/usr/bin/shred", ["shred", "-zun", "3", "victim-shred.txt"])
    r.shred_shape(101, "/tmp/victim-shred.txt", 50)
    got = wipes(r.run(tmp_path))
    assert [(f.severity, f.evidence["files"], f.evidence["by"]) for f in got] == \
        [("medium", ["/tmp/victim-shred.txt"], "identity")]      # one alert, not two
    assert got[0].attack == ("T1070.004",)


def test_installed_shred_under_another_name_by_inode(tmp_path: Path) -> None:
    """A hard link of the installed shred as /usr/local/bin/eraser is shred by inode."""
    r = Rec()
    r.exec(90, 1, "/usr/bin/shred", ["shred", "--version"], ino=4242)   # learnt: its inode
    r.exec(101, 100, "/usr/local/bin/eraser", ["eraser", "--remove", "/srv/a"], ino=4242)
    got = wipes(r.run(tmp_path))
    assert [(f.evidence["tool"], f.evidence["files"]) for f in got] == [("shred", ["/srv/a"])]


def test_shred_without_removal_is_not_secure_deletion(tmp_path: Path) -> None:
    r = Rec()
    r.open(100, "/tmp/f", WCT, 50)
    r.exec(101, 100, "/usr/bin/shred", ["shred", "-n", "2", "f"])
    r.open(101, "/tmp/f", 0o401, 50)
    assert wipes(r.run(tmp_path)) == []


# ---- (b) the shape whatever the tool ------------------------------------------------------

def test_renamed_shred_by_shape(tmp_path: Path) -> None:
    r = Rec()
    r.open(100, "/tmp/x/victim", WCT, 50)                       # the prerequisite
    r.exec(101, 100, "/tmp/x/cleaner", ["./cleaner", "-u", "victim"], cwd="/tmp/x")
    r.shred_shape(101, "/tmp/x/victim", 50)
    got = wipes(r.run(tmp_path))
    assert len(got) == 1, [f.title for f in got]
    f = got[0]
    assert f.severity == "medium" and f.evidence["by"] == "shape"
    assert f.evidence["path"] == "/tmp/x/victim" and f.evidence["unlinked"] == "/tmp/x/0"
    assert f.evidence["renames"] == 6 and "/tmp/x/victim" in f.title


def test_dd_notrunc_then_rm_by_the_next_step(tmp_path: Path) -> None:
    r = Rec()
    r.open(100, "/srv/data.db", WCT, 60)
    r.exec(102, 100, "/usr/bin/dd", ["dd", "if=/dev/urandom", "of=/srv/data.db",
                                     "conv=notrunc"])
    r.open(102, "/srv/data.db", WC, 60)
    r.exec(103, 100, "/usr/bin/rm", ["rm", "/srv/data.db"])
    r.unlink(103, "/srv/data.db")
    got = wipes(r.run(tmp_path))
    assert [(f.severity, f.evidence["path"], f.evidence["writer"], f.evidence["deleter"])
            for f in got] == [("medium", "/srv/data.db", "/usr/bin/dd", "/usr/bin/rm")]


def test_script_exec_ing_into_its_last_command(tmp_path: Path) -> None:
    """``bash -c 'echo > f; python3 -c ...'``: bash execs its last command in place, so
    the python that rewrites and unlinks f is the very process (pid, start) whose shell
    wrote it, running another program (found by the T9001 variant)."""
    r = Rec()
    r.exec(160, 100, "/usr/bin/bash", ["bash", "-c", "..."])
    r.open(160, "/srv/w5/f1", WCT, 600)
    r.exec(160, 100, "/usr/bin/python3.11", ["python3", "-c", "..."])
    r.open(160, "/srv/w5/f1", RW | 0o2000000, 600).unlink(160, "/srv/w5/f1")
    got = wipes(r.run(tmp_path))
    assert [(f.evidence["path"], f.evidence["writer"]) for f in got] == \
        [("/srv/w5/f1", "/usr/bin/python3.11")]


def test_python_overwrite_loop_then_unlink(tmp_path: Path) -> None:
    r = Rec()
    for i, name in enumerate(("a", "b", "c")):
        r.open(100, f"/home/u/{name}", WCT, 70 + i)
    r.exec(104, 100, "/usr/bin/python3", ["python3", "wipe.py"])
    for i, name in enumerate(("a", "b", "c")):
        r.open(104, f"/home/u/{name}", RW, 70 + i).unlink(104, f"/home/u/{name}")
    got = wipes(r.run(tmp_path))
    assert [f.evidence["path"] for f in got] == ["/home/u/a"]      # one finding a process


def test_history_wiped_by_a_renamed_tool_is_high(tmp_path: Path) -> None:
    """log_clearing knows shred by name only, and /root/0 is no history name: this rule
    raises it, high."""
    r = Rec()
    r.open(100, "/root/.bash_history", 0o2101, 80)                # bash appends: nothing
    r.exec(105, 100, "/dev/shm/e", ["e", "-u", "/root/.bash_history"], cwd="/root")
    r.shred_shape(105, "/root/.bash_history", 80)
    found = r.run(tmp_path)
    got = wipes(found)
    assert [(f.severity, f.evidence["path"]) for f in got] == [("high", "/root/.bash_history")]
    assert not [f for f in found if f.rule == "behavior.log_clearing"]


def test_log_wipes_stay_log_clearings_alone(tmp_path: Path) -> None:
    """shred -u of a log by name, and a renamed shred on a log (unlinked as /var/log/0):
    log_clearing raises them (high, or critical and stopped from a /tmp script); this rule
    adds nothing."""
    r = Rec()
    r.exec(106, 100, "/usr/bin/shred", ["shred", "-u", "/var/log/auth.log"])
    r.shred_shape(106, "/var/log/auth.log", 81)
    r.exec(107, 100, "/tmp/t", ["t", "-u", "/var/log/app.log"])
    r.shred_shape(107, "/var/log/app.log", 82)
    found = r.run(tmp_path)
    assert wipes(found) == []
    lc = [f for f in found if f.rule == "behavior.log_clearing"]
    assert {f.event.proc.pid for f in lc if f.event is not None} == {106, 107}
    assert all(f.severity in ("high", "critical") for f in lc)


def test_self_deleting_payload_is_high(tmp_path: Path) -> None:
    r = Rec()
    r.open(100, "/tmp/.p", WCT, 90)
    r.exec(108, 100, "/tmp/.p", ["/tmp/.p"])
    r.exec(109, 100, "/usr/bin/dd", ["dd", "if=/dev/zero", "of=/tmp/.p", "conv=notrunc"])
    r.open(109, "/tmp/.p", WC, 90)
    r.exec(110, 100, "/usr/bin/rm", ["rm", "-f", "/tmp/.p"]).unlink(110, "/tmp/.p")
    r.exec(111, 100, "/tmp/.q", ["/tmp/.q"])
    r.exec(112, 100, "/usr/bin/srm", ["srm", "/tmp/.q"])
    got = wipes(r.run(tmp_path))
    assert [(f.severity, f.evidence["by"]) for f in got] == [("high", "shape"),
                                                             ("high", "identity")]


# ---- look-alikes ---------------------------------------------------------------------------

def test_own_journal_swap_and_temp_files_are_silent(tmp_path: Path) -> None:
    r = Rec()
    r.exec(120, 100, "/usr/bin/sqlite3", ["sqlite3", "/srv/app.db"])
    r.open(120, "/srv/app.db", RWC, 200)
    r.open(120, "/srv/app.db-journal", RWC, 201)                  # created here
    r.open(120, "/srv/app.db-journal", RW, 201)
    r.unlink(120, "/srv/app.db-journal")
    r.open(120, "/srv/app.db-wal", RWC, 202)                      # another's WAL: O_RDWR|O_CREAT
    r.unlink(120, "/srv/app.db-wal")
    r.exec(121, 100, "/usr/bin/vim", ["vim", "/etc/motd"])        # swap file and backup
    r.open(121, "/etc/.motd.swp", RWCX, 203).open(121, "/etc/.motd.swp", RW, 203)
    r.rename(121, "/etc/motd", "/etc/motd~")
    r.open(121, "/etc/motd", WCT, 204)
    r.unlink(121, "/etc/motd~").unlink(121, "/etc/.motd.swp")
    r.exec(122, 100, "/usr/bin/python3", ["python3", "t.py"])     # its own file, r+b
    r.open(122, "/tmp/tmpab12", WCT, 205).open(122, "/tmp/tmpab12", RW, 205)
    r.unlink(122, "/tmp/tmpab12")
    r.exec(123, 100, "/usr/bin/flock", ["flock", "/tmp/x.lock", "true"])
    r.open(123, "/tmp/x.lock", WC, 206)                           # a lock file, maybe new
    r.exec(124, 100, "/usr/bin/rm", ["rm", "/tmp/x.lock"]).unlink(124, "/tmp/x.lock")
    assert wipes(r.run(tmp_path)) == []


def test_a_new_file_opened_creat_without_trunc_is_taken_for_an_existing_one(
        tmp_path: Path) -> None:
    """A record that does not say whether the open created the file (an object before
    ABI 2.10, an older replay): ``dd of=new conv=notrunc; rm new`` in a script is reported
    (the fallback's false alarm, said in detection.md), so that ``dd of=doc conv=notrunc;
    rm doc`` of an existing file is never taken for a creation."""
    r = Rec()
    r.exec(123, 100, "/usr/bin/dd", ["dd", "of=/tmp/new", "conv=notrunc"])
    r.open(123, "/tmp/new", WC, 206)
    r.exec(124, 100, "/usr/bin/rm", ["rm", "/tmp/new"]).unlink(124, "/tmp/new")
    assert [f.evidence["path"] for f in wipes(r.run(tmp_path))] == ["/tmp/new"]


def test_rm_mv_touch_truncate_and_append_are_silent(tmp_path: Path) -> None:
    r = Rec()
    r.open(100, "/srv/a", WCT, 300).open(100, "/srv/b", WCT, 301)
    r.exec(130, 100, "/usr/bin/rm", ["rm", "/srv/a"]).unlink(130, "/srv/a")
    r.exec(131, 100, "/usr/bin/mv", ["mv", "/srv/b", "/srv/c"]).rename(131, "/srv/b", "/srv/c")
    r.exec(132, 100, "/usr/bin/cp", ["cp", "/etc/hosts", "/srv/c"])
    r.open(132, "/srv/c", WCT, 301)
    r.open(100, "/srv/d", WCT, 302)
    r.exec(133, 100, "/usr/bin/logger", ["logger"]).open(133, "/srv/d", 0o2001, 302)
    r.exec(134, 100, "/usr/bin/rm", ["rm", "/srv/c", "/srv/d"])
    r.unlink(134, "/srv/c").unlink(134, "/srv/d")
    r.exec(135, 100, "/usr/bin/touch", ["touch", "stamp"], cwd="/src")   # a build stamp
    r.open(135, "/src/stamp", WC, 303)
    r.exec(136, 100, "/usr/bin/touch", ["touch", "stamp"], cwd="/src")
    r.open(136, "/src/stamp", WC, 303)
    r.exec(137, 100, "/usr/bin/truncate", ["truncate", "-s", "0", "stamp"], cwd="/src")
    r.open(137, "/src/stamp", WC, 303)
    r.exec(138, 100, "/usr/bin/rm", ["rm", "stamp"], cwd="/src").unlink(138, "/src/stamp")
    assert wipes(r.run(tmp_path)) == []


def test_package_managers_logrotate_and_tmpfiles_are_silent(tmp_path: Path) -> None:
    r = Rec()
    r.open(100, "/usr/lib/x/conf", WCT, 400)
    r.exec(140, 1, "/usr/bin/dpkg", ["dpkg", "-i", "x.deb"])
    r.open(140, "/usr/lib/x/conf", W, 400)                        # rewritten in place
    r.rename(140, "/usr/lib/x/conf", "/usr/lib/x/conf.dpkg-old")
    r.unlink(140, "/usr/lib/x/conf.dpkg-old")
    r.exec(141, 1, "/usr/sbin/logrotate", ["logrotate", "/etc/logrotate.conf"])
    r.open(141, "/var/log/syslog", 0o1001, 401)                   # copytruncate
    r.rename(141, "/var/log/syslog.1", "/var/log/syslog.2.gz")
    r.unlink(141, "/var/log/syslog.7.gz")
    r.exec(142, 1, "/usr/bin/systemd-tmpfiles", ["systemd-tmpfiles", "--clean"])
    r.unlink(142, "/tmp/old-file")
    r.open(100, "/src/a.o", WCT, 402)
    r.exec(143, 100, "/usr/bin/make", ["make"])
    r.exec(144, 143, "/usr/bin/ld", ["ld", "-r", "a.o"])
    r.open(144, "/src/a.o", W, 402).unlink(144, "/src/a.o")
    assert wipes(r.run(tmp_path)) == []


def test_unrelated_deleter_and_a_late_unlink_are_silent(tmp_path: Path) -> None:
    """A daemon writes its pid file (truncating: its own) and removes it at exit minutes
    later; another session removes a file a process rewrote.  (The same process
    rewriting an existing file in place and removing it has no window since
    s17-fixwipe: only the state's TTL bounds it.)"""
    r = Rec()
    r.open(100, "/run/d.pid", WCT, 500)
    r.exec(150, 1, "/usr/sbin/mydaemon", ["mydaemon"], at_s=1)
    r.open(150, "/run/d.pid", WCT, 500, at_s=1.5)
    r.unlink(150, "/run/d.pid", at_s=120)
    r.exec(151, 1, "/usr/bin/bash", ["bash"], at_s=121)
    r.exec(152, 151, "/usr/bin/rsync", ["rsync", "--inplace", "a", "/srv/m"], at_s=122)
    r.open(100, "/srv/m", WCT, 501, at_s=121.5)
    r.open(152, "/srv/m", W, 501, at_s=122.5)
    r.exec(153, 1, "/usr/bin/bash", ["bash"], at_s=123)
    r.exec(154, 153, "/usr/bin/rm", ["rm", "/srv/m"], at_s=124).unlink(154, "/srv/m", at_s=124.5)
    assert wipes(r.run(tmp_path)) == []


def test_state_is_bounded() -> None:
    from bastion.events import FileEvent, Proc
    rule = SecureDeletion(limits=Limits(max_keys=8))
    ctx = RuleContext(ProcessTable())
    for i in range(100):
        p = Proc(pid=1000 + i, tid=1000 + i, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1,
                 comm="w", start_ns=i)
        rule.evaluate(FileEvent(time_ns=i, proc=p, op="open", path=f"/srv/f{i}", flags=WCT,
                                dev=1, ino=10_000 + i), ctx)
        rule.evaluate(FileEvent(time_ns=i, proc=p, op="open", path=f"/srv/g{i}", flags=W,
                                dev=1, ino=20_000 + i), ctx)
    st = rule.stats()
    assert st["keys"] <= 8 * 10 and st["shed"] > 0     # ten bounded maps


# ---- review s17-fixwipe: each attack replayed as the reviewer did -------------------------

def test_creat_without_trunc_of_an_existing_file_is_an_overwrite(tmp_path: Path) -> None:
    """1: ``dd conv=notrunc`` (O_WRONLY|O_CREAT) of an existing file the rule never saw
    created, bash ``exec 3<>doc`` (O_RDWR|O_CREAT), O_RDONLY|O_CREAT then O_RDWR, and a
    file whose creator record lapsed (300 s): each an overwrite, not a creation."""
    r = Rec()
    r.exec(102, 100, "/usr/bin/dd", ["dd", "if=/dev/urandom", "of=/home/u/doc",
                                     "conv=notrunc"])
    r.open(102, "/home/u/doc", WC, 61).exit(102)
    r.exec(103, 100, "/usr/bin/rm", ["rm", "/home/u/doc"]).unlink(103, "/home/u/doc")
    r.open(100, "/home/u/doc2", RWC, 62)                       # exec 3<>doc2 in the script
    r.exec(104, 100, "/usr/bin/head", ["head", "-c", "9", "/dev/urandom"]).exit(104)
    r.exec(105, 100, "/usr/bin/rm", ["rm", "/home/u/doc2"]).unlink(105, "/home/u/doc2")
    r.exec(106, 100, "/usr/bin/python3", ["python3", "w.py"])
    r.open(106, "/home/u/doc3", 0o100, 63).open(106, "/home/u/doc3", RW, 63)
    r.unlink(106, "/home/u/doc3")
    r.open(100, "/home/u/doc4", WCT, 64, at_s=1)
    r.exec(107, 100, "/usr/bin/dd", ["dd", "of=/home/u/doc4", "conv=notrunc"], at_s=400)
    r.open(107, "/home/u/doc4", WC, 64, at_s=400.5).exit(107, at_s=401)
    r.exec(108, 100, "/usr/bin/rm", ["rm", "/home/u/doc4"], at_s=402)
    r.unlink(108, "/home/u/doc4", at_s=402.5)
    got = wipes(r.run(tmp_path))
    assert sorted(f.evidence["path"] for f in got) == \
        ["/home/u/doc", "/home/u/doc2", "/home/u/doc3", "/home/u/doc4"], [f.title for f in got]


def test_command_running_tools_do_not_make_a_shred_trusted(tmp_path: Path) -> None:
    """2: git's alias, make's recipe, rsync's -e each run shred under them."""
    r = Rec()
    for i, (tool, argv) in enumerate((("git", ["git", "-c", "alias.x=!shred -u s", "x"]),
                                      ("make", ["make", "-f", "-"]),
                                      ("rsync", ["rsync", "-e", "sh -c 'shred -u s'", "a:"]))):
        t, sh, sd = 110 + 3 * i, 111 + 3 * i, 112 + 3 * i
        r.exec(t, 100, f"/usr/bin/{tool}", argv)
        r.exec(sh, t, "/usr/bin/sh", ["sh", "-c", "shred -u s"])
        r.exec(sd, sh, "/usr/bin/shred", ["shred", "-u", f"/home/u/s{i}"])
    got = wipes(r.run(tmp_path))
    assert sorted(f.evidence["files"][0] for f in got) == \
        ["/home/u/s0", "/home/u/s1", "/home/u/s2"]


def test_window_runs_from_the_last_act_not_the_open(tmp_path: Path) -> None:
    """3: a long shred (renames 40 s after the open), open/sleep 31/unlink in one
    process, and a dd writing for 35 s before the next step removes the file."""
    r = Rec()
    r.exec(120, 100, "/tmp/x/cleaner", ["./cleaner", "-u", "big"], cwd="/tmp/x", at_s=1)
    r.open(120, "/tmp/x/big", 0o401, 70, at_s=1.5)
    r.rename(120, "/tmp/x/big", "/tmp/x/000", at_s=40)
    r.rename(120, "/tmp/x/000", "/tmp/x/00", at_s=40.1)
    r.unlink(120, "/tmp/x/00", at_s=40.2)
    r.exec(121, 100, "/usr/bin/python3", ["python3", "s.py"], at_s=50)
    r.open(121, "/home/u/slow", RW, 71, at_s=50.5).unlink(121, "/home/u/slow", at_s=82)
    r.exec(122, 100, "/usr/bin/dd", ["dd", "of=/home/u/big2", "conv=notrunc"], at_s=90)
    r.open(122, "/home/u/big2", W, 72, at_s=90.5).exit(122, at_s=125)
    r.exec(123, 100, "/usr/bin/rm", ["rm", "/home/u/big2"], at_s=126)
    r.unlink(123, "/home/u/big2", at_s=126.5)
    got = wipes(r.run(tmp_path))
    assert sorted(f.evidence["path"] for f in got) == \
        ["/home/u/big2", "/home/u/slow", "/tmp/x/big"], [f.title for f in got]


def test_flooding_a_writers_records_is_a_finding_not_an_eviction(tmp_path: Path) -> None:
    """4: overwrite the victim, then write-open many existing files to push its record
    out: the cap per writer raises a finding, and the victim's record stays."""
    r = Rec()
    r.exec(130, 100, "/usr/bin/python3", ["python3", "flood.py"])
    r.open(130, "/home/u/victim", RW, 80)
    for i in range(SecureDeletion.max_per_writer + 10):
        r.open(130, f"/srv/f/{i}", RW, 10_000 + i)
    r.unlink(130, "/home/u/victim")
    got = wipes(r.run(tmp_path))
    assert [f.title for f in got if "exhausted" in f.title] == \
        ["Secure deletion state exhausted by pid 130"]
    assert [f.evidence["path"] for f in got if f.evidence.get("by") == "shape"] == \
        ["/home/u/victim"]


def test_busybox_applets_by_identity(tmp_path: Path) -> None:
    """5: ``busybox shred -u f`` and the applet symlink ``shred`` -> busybox."""
    r = Rec()
    r.exec(140, 100, "/usr/bin/busybox", ["busybox", "shred", "-u", "/home/u/a"])
    r.exec(141, 100, "/usr/bin/busybox", ["shred", "-fu", "/home/u/b"])
    r.exec(142, 100, "/usr/bin/busybox", ["busybox", "shred", "/home/u/c"])   # no -u
    got = wipes(r.run(tmp_path))
    assert [(f.evidence["tool"], f.evidence["files"]) for f in got] == \
        [("shred", ["/home/u/a"]), ("shred", ["/home/u/b"])]


def test_caches_journals_images_and_fixtures_are_silent(tmp_path: Path) -> None:
    """6: a browser's cache entry doomed and deleted, sqlite's hot-journal rollback, an
    image build, a test fixture edited by a child and removed by its (interactive
    session's) parent."""
    r = Rec()
    r.exec(150, 100, "/usr/lib/firefox/firefox", ["firefox"])
    c = "/home/u/.cache/mozilla/firefox/p.default/cache2"
    r.open(150, f"{c}/entries/AB12", RW, 90).rename(150, f"{c}/entries/AB12", f"{c}/doomed/7")
    r.unlink(150, f"{c}/doomed/7")
    r.exec(151, 100, "/usr/bin/sqlite3", ["sqlite3", "/srv/app.db"])
    r.open(151, "/srv/app.db", RWC, 91).open(151, "/srv/app.db-journal", RW, 92)
    r.unlink(151, "/srv/app.db-journal")
    r.exec(152, 100, "/usr/bin/truncate", ["truncate", "-s", "1M", "img"], cwd="/srv")
    r.open(152, "/srv/img", WC, 93)
    r.exec(153, 100, "/usr/sbin/mkswap", ["mkswap", "img"], cwd="/srv")
    r.open(153, "/srv/img", RW, 93)
    r.exec(154, 100, "/usr/bin/rm", ["rm", "img"], cwd="/srv").unlink(154, "/srv/img")
    r.exec(160, 1, "/usr/bin/bash", ["-bash"])                     # a login shell
    r.exec(161, 160, "/usr/bin/python3", ["python3", "-m", "pytest"])
    r.exec(162, 161, "/usr/bin/python3", ["python3", "helper.py"])
    r.open(162, "/srv/proj/fixture.txt", RW, 94)
    r.unlink(161, "/srv/proj/fixture.txt")
    assert wipes(r.run(tmp_path)) == []


def test_shred_of_a_log_and_a_secret_names_the_secret(tmp_path: Path) -> None:
    """7: ``shred -u /var/log/x.log ~/secret``: log_clearing raises the log, this rule the
    secret (and not the log again)."""
    r = Rec()
    r.exec(170, 100, "/usr/bin/shred", ["shred", "-u", "/var/log/x.log", "/root/secret"])
    found = r.run(tmp_path)
    assert [f.evidence["files"] for f in wipes(found)] == [["/root/secret"]]


def test_wipe_minus_r_takes_no_value() -> None:
    """7: wipe 2.x's ``-R`` is recursion (a flag): ``wipe -R dir`` wipes dir."""
    got = wipe_command("wipe", ["wipe", "-R", "d"], "/w")
    assert got is not None and got.files == ("/w/d",)


def test_careful_creators_o_nofollow_are_silent(tmp_path: Path) -> None:
    """Seen in the false-alarm corpus after the O_CREAT change: the JVM's
    /tmp/hsperfdata_<user>/<pid> (O_RDWR|O_CREAT|O_NOFOLLOW, removed at exit), a sqlite
    database (same flags) moved aside and removed by the script's next steps, its
    journal.  An O_CREAT|O_NOFOLLOW open without O_TRUNC is taken for a creation
    (a program of one's own can set O_NOFOLLOW too: said in detection.md)."""
    nf = 0o400000
    r = Rec()
    r.exec(180, 100, "/usr/lib/jvm/java-17/bin/java", ["java", "-version"])
    r.open(180, "/tmp/hsperfdata_root/180", RWC | nf, 95).unlink(180, "/tmp/hsperfdata_root/180")
    r.exec(181, 100, "/usr/bin/python3", ["python3", "lookalikes.py"])
    r.open(181, "/srv/w/app.db", RWC | nf, 96).open(181, "/srv/w/app.db-journal", RWC | nf, 97)
    r.unlink(181, "/srv/w/app.db-journal").exit(181)
    r.exec(182, 100, "/usr/bin/mv", ["mv", "app.db", "app.db.bak"], cwd="/srv/w")
    r.rename(182, "/srv/w/app.db", "/srv/w/app.db.bak")
    r.exec(183, 100, "/usr/bin/rm", ["rm", "-f", "app.db.bak"], cwd="/srv/w")
    r.unlink(183, "/srv/w/app.db.bak")
    assert wipes(r.run(tmp_path)) == []


# ---- the kernel's answer (ABI 2.10, s18-created): created / empty at the open -----------

def test_a_file_the_open_created_or_found_empty_is_the_processs_own(tmp_path: Path) -> None:
    """A lock, temp or cache file made with O_CREAT|O_RDWR (no O_TRUNC, no O_EXCL, no
    lock-like name), written, rewritten and deleted by its creator, or by a script's next
    step; an existing empty file filled then removed: the kernel says the open created it
    (or found it empty), so nothing that was there is destroyed.  Before the record said
    so, each was "an existing file overwritten in place" (the false alarm)."""
    r = Rec()
    r.exec(150, 100, "/usr/bin/python3", ["python3", "cache.py"])
    r.open(150, "/var/tmp/session.cache", RWC, 500, created=True, empty=True)
    r.open(150, "/var/tmp/session.cache", RW, 500, created=False, empty=False)
    r.unlink(150, "/var/tmp/session.cache")
    r.exec(151, 100, "/usr/bin/dd", ["dd", "of=/tmp/new", "conv=notrunc"])
    r.open(151, "/tmp/new", WC, 501, created=True, empty=True)
    r.exec(152, 100, "/usr/bin/rm", ["rm", "/tmp/new"]).unlink(152, "/tmp/new")
    r.exec(153, 100, "/usr/bin/python3", ["python3", "fill.py"])
    r.open(153, "/srv/placeholder", RW, 502, created=False, empty=True)
    r.unlink(153, "/srv/placeholder")
    assert wipes(r.run(tmp_path)) == []


@pytest.mark.parametrize("path,flags", [
    ("/srv/doc.txt", RWC | 0o400000),      # O_CREAT|O_NOFOLLOW: sqlite's and the JVM's shape
    ("/srv/app.lock", WC),                 # a lock-like name (a victim renamed first)
    ("/srv/pid/LOCK", RWC),
])
def test_flags_and_names_exempt_nothing_the_kernel_described(
        tmp_path: Path, path: str, flags: int) -> None:
    """The attacker picks the flags and the name: an existing file with bytes, opened
    O_CREAT|O_NOFOLLOW or under a *.lock name, overwritten and unlinked, is a wipe once
    the kernel said the open did not create it (before: silent, taken for a new file)."""
    r = Rec()
    r.exec(154, 100, "/tmp/.w", ["/tmp/.w"])
    r.open(154, path, flags, 503, created=False, empty=False)
    r.unlink(154, path)
    assert [f.evidence["path"] for f in wipes(r.run(tmp_path))] == [path]


def test_o_excl_without_o_creat_is_no_creation(tmp_path: Path) -> None:
    """O_WRONLY|O_EXCL without O_CREAT: the kernel ignores O_EXCL and opens the existing
    file, which is overwritten in place; for a record that does not say whether the open
    created it, the flags alone must not make it the opener's (before: silent)."""
    r = Rec()
    r.exec(155, 100, "/tmp/.w", ["/tmp/.w"])
    r.open(155, "/srv/report.pdf", W | 0o200, 504)
    r.unlink(155, "/srv/report.pdf")
    r.exec(156, 100, "/tmp/.w", ["/tmp/.w"])
    r.open(156, "/srv/new.pdf", W | 0o200 | 0o100, 505)     # O_CREAT|O_EXCL: a creation
    r.unlink(156, "/srv/new.pdf")
    assert [f.evidence["path"] for f in wipes(r.run(tmp_path))] == ["/srv/report.pdf"]


def test_an_open_that_neither_created_nor_found_empty_is_an_overwrite(tmp_path: Path) -> None:
    """The same O_CREAT|O_RDWR on a file that held bytes: an overwrite in place, reported;
    O_TRUNC still empties it (the hook sensor reads i_size before the truncation)."""
    r = Rec()
    r.exec(157, 100, "/tmp/.w", ["/tmp/.w"])
    r.open(157, "/srv/ledger.csv", RWC, 506, created=False, empty=False)
    r.unlink(157, "/srv/ledger.csv")
    r.exec(158, 100, "/tmp/.w", ["/tmp/.w"])
    r.open(158, "/srv/out.csv", WCT, 507, created=False, empty=False)
    r.unlink(158, "/srv/out.csv")
    assert [f.evidence["path"] for f in wipes(r.run(tmp_path))] == ["/srv/ledger.csv"]
