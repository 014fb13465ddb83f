"""Commands an untrusted tree hands to a clean daemon (s18, issue 15): at/batch jobs, a
tmux server or screen session made to run or type a command, systemd-run.  Each tool's
command line is read by its grammar (:mod:`bastion.detect.behavior.launder`); the rule
stops the tree, alerts an administrator's session, leaves a clean tree alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_behavior_depth import Rec, of


def _how(argv: list[str]) -> str | None:
    from bastion.detect.behavior.launder import launder_act
    tool = argv[0].rsplit("/", 1)[-1]
    tool = "at" if tool in ("atq", "atrm") else tool
    a = launder_act(tool, argv)
    return a.how if a is not None else None


def test_at_and_batch_are_read_by_at_grammar() -> None:
    assert _how(["at", "now", "+", "1", "minute"]) == "at"
    assert _how(["at", "-m", "-q", "z", "now"]) == "at"
    assert _how(["at", "-f", "/tmp/job", "now"]) == "at"
    assert _how(["at", "-fq", "now"]) == "at"              # -f's value is "q"
    assert _how(["/usr/bin/at", "-qb", "now"]) == "batch"   # Debian's batch script
    assert _how(["at", "-b"]) == "batch"
    assert _how(["at", "-V", "now"]) == "at"
    assert _how(["at", "now", "-v"]) == "at"                # getopt permutes
    for benign in (["atq"], ["atrm", "3"], ["at", "-l"], ["at", "-r", "4"], ["at", "-d", "4"],
                   ["at", "-c", "4"], ["at", "-V"], ["at", "-q", "b", "-l"]):
        assert _how(benign) is None, benign


def test_tmux_verbs_are_read_by_its_command_table() -> None:
    t = "tmux"
    assert _how([t, "send-keys", "-t", "0", "id > /tmp/x", "Enter"]) == "send-keys"
    assert _how([t, "send", "-t0", "id", "C-m"]) == "send-keys"        # alias
    assert _how([t, "send-k", "x"]) == "send-keys"                      # unique prefix
    assert _how([t, "-S", "/tmp/s", "-L", "x", "send-keys", "x"]) == "send-keys"
    assert _how([t, "new-window", "sh -c id"]) == "new-window"
    assert _how([t, "neww", "-d", "-n", "w", "id"]) == "new-window"
    assert _how([t, "new-session", "-d", "-e", "BASH_ENV=/tmp/e"]) == "new-session"
    assert _how([t, "splitw", "-l", "5", "id"]) == "split-window"
    assert _how([t, "respawn-pane", "-k", "id"]) == "respawn-pane"
    assert _how([t, "run-shell", "id"]) == "run-shell"
    assert _how([t, "run", "-b", "id"]) == "run-shell"
    assert _how([t, "if-shell", "true", "ls"]) == "if-shell"
    assert _how([t, "pipep", "cat >> /root/.bashrc"]) == "pipe-pane"
    assert _how([t, "source-file", "/tmp/cmds"]) == "source-file"
    assert _how([t, "-C", "attach"]) == "control mode (-C)"
    assert _how([t, "-CC"]) == "control mode (-C)"
    assert _how([t, "ls", ";", "send-keys", "x"]) == "send-keys"       # a second command
    assert _how([t, "ls;", "send", "x"]) == "send-keys"                # `ls\;` in a shell
    assert _how([t, "display", "-p", "#(id)"]) == "display-message #(...)"
    assert _how([t, "set-hook", "-g", "after-new-window", "run id"]) == "set-hook"
    assert _how([t, "set", "-g", "after-new-window", "run id"]) == "set-option after-new-window"
    assert _how([t, "set", "-g", "default-command", "id"]) == "set-option default-command"
    assert _how([t, "set", "-s", "command-alias[9]", "ls=run id"]) == "set-option command-alias"
    assert _how([t, "bind", "x", "run", "id"]) == "bind-key"
    # a value built in pieces becomes #(...) when a format expands it again
    assert _how([t, "display", "-p", "#{E:@x}"]) == "display-message #{E:...}"
    assert _how([t, "display", "-p", "#{l;E:@x}"]) == "display-message #{E:...}"
    assert _how([t, "lsw", "-F", "#{T:@x}"]) == "list-windows #{E:...}"
    assert _how([t, "command-prompt", "-I", "run id"]) == "command-prompt -I"
    assert _how([t, "setenv", "-g", "LD_PRELOAD", "/tmp/x.so"]) == "set-environment"
    assert _how([t, "saveb", "/etc/cron.d/x"]) == "save-buffer"
    assert _how([t, "pasteb", "-t", "0"]) == "paste-buffer"
    assert _how([t, "detach", "-E", "id"]) == "detach-client -E"
    # an attached new session: the caller types into a shell the (clean) server forks
    assert _how([t]) == "new-session (attached)"
    assert _how([t, "-S", "/tmp/s"]) == "new-session (attached)"
    assert _how([t, "new", "-s", "work"]) == "new-session (attached)"
    assert _how([t, "new", "-A", "-d", "-s", "adm"]) == "new-session (attached)"
    for benign in ([t, "ls"], [t, "list-sessions", "-F", "#{session_name}"], [t, "has", "-t", "0"],
                   [t, "new-session", "-d"], [t, "new", "-d", "-s", "work"], [t, "-c", "id"],
                   [t, "kill-server"], [t, "set", "-g", "mouse", "on"], [t, "send-prefix"],
                   [t, "send-keys"], [t, "set-hook", "-gu", "x"],
                   [t, "capture-pane", "-p", "-t", "0"], [t, "show", "-g", "default-command"],
                   [t, "set", "-g", "@x", "#"], [t, "display", "-p", "#{@x} #{session_name}"],
                   [t, "command-prompt"],
                   [t, "-V"]):
        assert _how(benign) is None, benign


def test_screen_commands_are_read_by_its_options() -> None:
    s = "screen"
    assert _how([s, "-S", "x", "-X", "stuff", "id\n"]) == "-X stuff"
    assert _how([s, "-x", "-X", "exec", "id"]) == "-X exec"
    assert _how([s, "-p", "0", "-X", "screen", "id"]) == "-X screen"
    assert _how([s, "-r", "admin"]) == "attach"
    assert _how([s, "-x"]) == "attach"
    for benign in ([s, "-ls"], [s, "-list"], [s, "-wipe"], [s, "-S", "x", "-X", "title", "a"],
                   [s, "-S", "x", "-X", "select", "1"], [s, "-d", "admin"], [s, "-dm"],
                   [s, "-dmS", "w", "sh", "-c", "id"], [s, "-d", "-m", "id"]):
        assert _how(benign) is None, benign


def test_tmux_aliases_unknown_names_and_options_by_prefix() -> None:
    """Review s18 items 1, 2, 5.  Before: ``split-pane``/``splitp`` (tmux's default
    command-alias), any unknown name (a command-alias another set), an option by a
    prefix (``default-c``), ``copy-command``/``editor``/styles, ``-F``/``-a`` on a user
    option and ``set-buffer`` were all read as nothing."""
    t = "tmux"
    assert _how([t, "split-pane", "id"]) == "split-window"
    assert _how([t, "splitp", "-h", "id"]) == "split-window"
    assert _how([t, "choose-window", "run %%"]) == "choose-tree"
    assert _how([t, "pwn", "x"]) == "unknown command pwn"           # a command-alias?
    assert _how([t, "s", "x"]) == "unknown command s"               # ambiguous
    assert _how([t, "set", "-g", "default-c", "id"]) == "set-option default-command"
    assert _how([t, "set", "-g", "copy-command", "sh -c id"]) == "set-option copy-command"
    assert _how([t, "set", "-g", "editor", "/tmp/e"]) == "set-option editor"
    assert _how([t, "setw", "-g", "mode-style", "fg=red"]) == "set-window-option mode-style"
    assert _how([t, "set", "-g", "history-file", "/root/.bashrc"]) == "set-option history-file"
    assert _how([t, "set", "-g", "hist", "5"]) == "set-option unknown option hist"
    assert _how([t, "set", "-g", "no-such-opt", "x"]) == "set-option unknown option no-such-opt"
    assert _how([t, "set", "-g", "synchronize-panes", "on"]) == "set-option synchronize-panes"
    assert _how([t, "set", "-gF", "@x", "#{@y}"]) == "set-option @x"
    assert _how([t, "set", "-ga", "@x", "(id)"]) == "set-option @x"
    assert _how([t, "set", "-gF", "mouse", "#{@y}"]) == "set-option mouse"
    assert _how([t, "set-buffer", "id\n"]) == "set-buffer"
    assert _how([t, "setb", "-b", "x", "curl x|sh"]) == "set-buffer"
    for benign in ([t, "set", "-g", "mouse", "on"], [t, "set", "-g", "history-l", "9000"],
                   [t, "set", "-g", "base-index", "1"], [t, "setw", "-g", "mode-keys", "vi"],
                   [t, "set", "-g", "status", "off"], [t, "set", "-gu", "default-command"],
                   [t, "set", "-g", "@x", "plain"], [t, "info"], [t, "lsb"]):
        assert _how(benign) is None, benign


def test_tmux_tables_match_the_installed_tmux(tmp_path: Path) -> None:
    """The reader's command table, default aliases and option names against a private
    tmux server (``-S`` in the test's directory, ``-f /dev/null``), and tmux's own
    verdict on an option prefix (``hist`` ambiguous, ``history-l`` unique)."""
    import shutil
    import subprocess
    from bastion.detect.behavior.launder import TMUX_COMMANDS, TMUX_DEFAULT_ALIASES, \
        TMUX_OPTIONS, tmux_option
    tmux = shutil.which("tmux")
    if tmux is None or "3.3" not in subprocess.run([tmux, "-V"], capture_output=True,
                                                  text=True).stdout:
        import pytest
        pytest.skip("tmux 3.3 not installed (make deps installs it)")
    sock = str(tmp_path / "s")

    def tm(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tmux, "-S", sock, "-f", "/dev/null", *a], capture_output=True,
                              text=True, timeout=10)
    assert tm("new-session", "-d", "-s", "t", "sleep 30").returncode == 0
    try:
        got = tm("list-commands", "-F", "#{command_list_name} #{command_list_alias}").stdout
        table = {ln.split(" ")[0]: (ln.split(" ") + [""])[1] for ln in got.splitlines()}
        assert table == {n: a for n, (a, _) in TMUX_COMMANDS.items()}
        aliases = tm("show", "-sv", "command-alias").stdout.splitlines()
        assert {a.strip('"').partition("=")[0]: tuple(a.strip('"').partition("=")[2].split())
                for a in aliases} == TMUX_DEFAULT_ALIASES
        names: set[str] = set()
        for args in (["show", "-s"], ["show", "-g"], ["show", "-wg"], ["show-hooks", "-g"],
                     ["show-hooks", "-wg"], ["show-hooks", "-pg"]):
            names |= {ln.split(" ")[0].partition("[")[0] for ln in tm(*args).stdout.splitlines()}
        assert names == TMUX_OPTIONS
        for prefix in ("hist", "history-l", "statu", "mous", "default-c", "zzz"):
            ok = tm("set-option", "-g", prefix, "1").returncode == 0 or \
                "ambiguous" not in tm("set-option", "-g", prefix, "1").stderr and \
                "invalid option" not in tm("set-option", "-g", prefix, "1").stderr
            assert ok == (tmux_option(prefix) is not None), prefix
    finally:
        tm("kill-server")


def test_screen_options_follow_screen_c() -> None:
    """Review s18 item 3.  Before: ``-X`` stopped the option loop, ``-h``/``-s`` were not
    valued, ``-X`` commands outside a deny list (``-X at``-like misses, ``-X defescape``)
    and ``STY=... screen CMD`` were read as nothing, and ``screen -dmS w cmd`` (the
    caller's own backend) as a hand-off."""
    s = "screen"
    assert _how([s, "-X", "-S", "adm", "stuff", "id\n"]) == "-X stuff"     # -X goes on
    assert _how([s, "-Xr", "adm", "exec", "id"]) == "-X exec"
    assert _how([s, "-h", "100", "-X", "eval", "stuff id"]) == "-X eval"
    assert _how([s, "-S", "adm", "-X", "defescape", "^]x"]) == "-X defescape"  # not harmless
    assert _how([s, "-X", "layout", "save", "x"]) == "-X layout"
    assert _how([s, "sh", "-c", "id"]) == "new window ($STY)"            # STY=... screen CMD
    assert _how([s, "-t", "w", "id"]) == "new window ($STY)"
    assert _how([s, "-Sx", "adm", "-X", "stuff", "id"]) == "-X stuff"     # -S takes the next
    assert _how([s, "-r", "-X", "stuff", "id"]) == "-X stuff"
    assert _how([s, "-xRS", "adm"]) == "attach"
    from bastion.detect.behavior.launder import launder_act
    login = launder_act("screen", ["-screen"])            # argv[0] "-...": screen -RR
    assert login is not None and login.how == "attach"
    for benign in ([s, "-S", "adm", "-X", "title", "x"], [s, "-X", "-S", "a", "select", "1"],
                   [s, "-S", "own", "sh", "-c", "id"], [s, "-dmS", "w", "cmd"],
                   [s, "-m", "id"], [s, "-ls", "-X"], [s, "-list"], [s, "-wipe", "x"],
                   [s, "-d"], [s, "-D", "adm"], [s, "-pX", "-S", "own", "cmd"],
                   [s, "-X"], [s, "-fn"], [s]):
        assert _how(benign) is None, benign


def test_systemd_run_shell_and_run0() -> None:
    """Review s18 item 4.  Before: ``systemd-run --shell``/``-S`` (no command) and ``run0``
    were read as nothing."""
    r = "systemd-run"
    assert _how([r, "--shell"]) == "systemd-run --shell"
    assert _how([r, "-S", "--user"]) == "systemd-run --shell"
    assert _how(["run0"]) == "run0"
    assert _how(["run0", "-u", "adm", "sh", "-c", "id"]) == "run0"
    assert _how(["run0", "--setenv", "X=1", "--", "id"]) == "run0"
    for benign in ([r, "--scope", "--shell"], ["run0", "--help"], ["run0", "-V"]):
        assert _how(benign) is None, benign


def test_systemd_run_hands_any_command_to_the_manager() -> None:
    r = "systemd-run"
    assert _how([r, "--user", "sh", "-c", "id"]) == "systemd-run --user"
    assert _how([r, "-p", "User=root", "cat", "/etc/shadow"]) == "systemd-run"
    assert _how([r, "--on-active=30", "/tmp/x"]) == "systemd-run"
    assert _how([r, "--slice-inherit", "id"]) == "systemd-run"
    for benign in ([r, "--scope", "make"], [r, "-M", "box", "id"], [r, "-H", "far", "id"],
                   [r, "--help"], [r]):
        assert _how(benign) is None, benign


_INODES: dict[str, int] = {}


def _exec(r: Rec, pid: int, ppid: int, exe: str, argv: list[str]) -> None:
    """``Rec.exec`` with one inode per path (Rec numbers them by the path's length:
    /usr/bin/at and /usr/bin/cp would be one file)."""
    r.exec(pid, ppid, exe, argv)
    r.lines[-1]["exe_ino"] = _INODES.setdefault(exe, 5000 + len(_INODES))


def _open(r: Rec, pid: int, path: str, flags: int = 0o1101) -> None:
    hdr: dict[str, Any] = r._hdr(pid)
    r.lines.append({"type": "open", **hdr, "path": path, "path2": "", "flags": flags,
                    "mode": 0o644, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 7000 + pid})


CHANNELS = [("/usr/bin/at", ["at", "now", "+", "1", "minute"]),
            ("/usr/bin/at", ["/usr/bin/at", "-qb", "now"]),
            ("/usr/bin/tmux", ["tmux", "send-keys", "-t", "0", "id > /tmp/.o", "Enter"]),
            ("/usr/bin/tmux", ["tmux", "neww", "-d", "curl x|sh"]),
            ("/usr/bin/tmux", ["tmux", "run", "id"]),
            ("/usr/bin/tmux", ["tmux", "ls", ";", "source", "/tmp/c"]),
            ("/usr/bin/tmux", ["tmux", "-C", "attach"]),
            ("/usr/bin/screen", ["screen", "-S", "adm", "-X", "stuff", "id\n"]),
            ("/usr/bin/screen", ["screen", "sh", "-c", "id"]),
            ("/usr/bin/systemd-run", ["systemd-run", "--user", "sh", "-c", "id"]),
            ("/usr/bin/systemd-run", ["systemd-run", "-p", "User=root", "sh", "-c", "id"])]


def test_an_untrusted_tree_handing_commands_to_a_daemon_is_stopped(tmp_path: Path) -> None:
    """A /tmp script queues an at job, types into the administrator's tmux or screen
    session, makes the tmux server run a command, hands one to systemd-run: each a
    critical block of the script's tree.  Before: nothing (0 findings; the persistence
    rule trusts ``at``, tmux and screen were not read at all)."""
    r = Rec()
    _exec(r, 200, 100, "/usr/bin/dash", ["sh", "/tmp/x.sh"])
    for n, (exe, argv) in enumerate(CHANNELS):
        _exec(r, 201 + n, 200, exe, argv)
    found = [f for f in r.run(tmp_path) if f.severity in ("high", "critical")
             and f.rule != "behavior.exec_from_tmp"]
    assert len(found) >= len(CHANNELS), [(f.rule, f.title) for f in found]
    mine = of(found, "launder_via_daemon")
    assert len(mine) == len(CHANNELS), [f.title for f in mine]
    assert {(f.severity, f.action, f.pid) for f in mine} == {("critical", "kill-tree", 200)}
    assert {f.evidence["identity"] for f in mine} == {"installed file"}
    assert mine[0].evidence["daemon"] == "atd" and "tmp-script" in mine[0].evidence["provenance"]


def test_a_renamed_or_copied_client_is_read_by_name_and_the_at_spool_write(
        tmp_path: Path) -> None:
    """A copy of tmux in /tmp is still read (by its name, said in the evidence); the
    genuine ``at`` (setuid) writing the spool for an untrusted tree is the tree's
    persistence write (the rule trusted ``at`` whoever ran it); a direct write into the
    spool by anything else is stopped as before."""
    r = Rec()
    _exec(r, 200, 100, "/usr/bin/dash", ["sh", "/tmp/x.sh"])
    _exec(r, 201, 200, "/tmp/tmux", ["tmux", "send-keys", "id", "Enter"])
    _exec(r, 202, 200, "/usr/bin/at", ["at", "now"])
    _open(r, 202, "/var/spool/cron/atjobs/a00001019c2f1e")
    _exec(r, 203, 200, "/usr/bin/cp", ["cp", "/tmp/j", "/var/spool/cron/atjobs/a00002"])
    _open(r, 203, "/var/spool/cron/atjobs/a00002")
    _exec(r, 204, 200, "/usr/bin/crontab", ["crontab", "/tmp/c"])
    _open(r, 204, "/var/spool/cron/crontabs/root")
    found = r.run(tmp_path)
    tm = of(found, "launder_via_daemon")
    # (a /tmp binary: its own tmp-binary taint names it, no fork event in this recording)
    assert [(f.severity, f.evidence["identity"]) for f in tm if "tmux" in f.title] == \
        [("critical", "executable name")]
    cron = of(found, "persistence_cron")
    assert sorted(f.evidence["path"] for f in cron) == [
        "/var/spool/cron/atjobs/a00001019c2f1e", "/var/spool/cron/atjobs/a00002",
        "/var/spool/cron/crontabs/root"], [f.title for f in cron]
    assert {(f.severity, f.action) for f in cron} == {("critical", "kill-tree")}


def test_a_clean_tree_schedules_and_types_unseen(tmp_path: Path) -> None:
    """An administrator's clean shell: ``at now + 1 hour``, ``tmux send-keys``, ``screen
    -X stuff``, ``systemd-run``, and at's own spool write: no finding of either rule."""
    r = Rec()
    for n, (exe, argv) in enumerate(CHANNELS):
        _exec(r, 300 + n, 100, exe, argv)
    _open(r, 300, "/var/spool/cron/atjobs/a00003")
    _exec(r, 320, 100, "/usr/bin/crontab", ["crontab", "-e"])
    _open(r, 320, "/var/spool/cron/crontabs/root")
    found = r.run(tmp_path)
    assert not of(found, "launder_via_daemon"), [f.title for f in found]
    assert not of(found, "persistence_cron"), [f.title for f in found]
