"""Commands handed to a clean long-running daemon, read by each tool's grammar (s18).

An untrusted tree (a /tmp script, a downloaded binary, a network service's child) that
asks a *clean* daemon to run its command escapes its own provenance: the act then
happens in the daemon's tree, which carries no taint.  The channels read here:

* ``at``/``batch`` (atd runs the job later): ``echo cmd | at now + 1 minute``;
* a tmux server (``tmux send-keys -t 0 'cmd' Enter``, ``new-window 'cmd'``,
  ``run-shell``, a hook, a ``#(...)`` format, control mode ``-C`` ...);
* a screen session (``screen -S x -X stuff 'cmd\\n'``, ``-X exec``, ``-dm cmd``,
  attaching to a session);
* the service manager (``systemd-run [--user] cmd``: PID 1 or the user manager runs
  it; ``--scope`` runs it in the caller's own process and is no hand-off).

Each reader follows its tool's own option parsing (getopt-like, the tool's valued
options, tmux's command table with its aliases and unique prefixes, tmux's ``;``
separators) — never a substring of the joined line, so ``tmux ls``, ``atq``,
``screen -ls`` or ``systemd-run --scope make`` are not acts.

:func:`launder_act` answers "does this exec hand a command to a daemon?" with the
daemon and the verb (or None); the rule decides severity and response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Sequence

from bastion.detect.behavior.svcctl import _RUN_LONG_FLAGS, _RUN_LONG_VALUED, _RUN_SHORT_VALUED, \
    _Refused, _elsewhere, _parse

# the executables read here (their installed files are recognised by inode by the rule)
LAUNDER_TOOLS: Final = frozenset({"at", "batch", "tmux", "screen", "systemd-run"})


@dataclass(frozen=True)
class Handoff:
    """A command handed to a daemon."""

    daemon: str          # atd, tmux server, screen session, service manager
    how: str             # the verb or option that hands it over
    command: str         # what the daemon is asked to run (as far as argv says)

    def describe(self) -> str:
        return f"{self.how} -> {self.daemon}"


# ---- at / batch ----------------------------------------------------------------------------

# at(1) (Debian at 3.2: getopt "q:f:MmbvlrdhVct:"): options whose value is the next word
_AT_VALUED: Final = frozenset("qft")
# listing, removing, printing a job: no job is queued
_AT_NO_JOB: Final = frozenset("lrdc")


def at_act(argv: Sequence[str]) -> Handoff | None:
    """``at [-V] [-q queue] [-f file] [-mMlv] timespec``, ``batch``: a job queued for
    atd.  at reads ``argv[0]``: ``atq`` lists and ``atrm`` removes (Debian links them
    to the same file); ``-l``/``-r``/``-d``/``-c`` do likewise; ``-V`` alone prints
    the version."""
    if not argv:
        return None
    prog = argv[0].rsplit("/", 1)[-1]
    if prog in ("atq", "atrm"):
        return None
    opts, ops = _parse(argv[1:], frozenset(), _AT_VALUED)
    letters = {o[1:] for o, _ in opts}
    if letters & _AT_NO_JOB:
        return None
    if letters == {"V"} and not ops:
        return None
    src = next((v for o, v in opts if o == "-f"), "")
    queue = next((v for o, v in opts if o == "-q"), "")
    how = "batch" if prog == "batch" or "b" in letters or queue == "b" else "at"
    return Handoff("atd", how, f"job from {src}" if src else "job from stdin")


# ---- tmux ----------------------------------------------------------------------------------

# tmux 3.3a's command table (``tmux list-commands``): name -> (alias, option letters
# that take a value).  tmux takes an exact alias, an exact name, or a unique prefix of
# a name; an ambiguous prefix is refused ("ambiguous command").
TMUX_COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "attach-session": ("attach", "cft"), "bind-key": ("bind", "NT"),
    "break-pane": ("breakp", "Fnst"), "capture-pane": ("capturep", "ESbt"),
    "choose-buffer": ("", "FKOft"), "choose-client": ("", "FKOft"),
    "choose-tree": ("", "FKOft"), "clear-history": ("clearhist", "t"),
    "clear-prompt-history": ("clearphist", "T"), "clock-mode": ("", "t"),
    "command-prompt": ("", "ITpt"), "confirm-before": ("confirm", "pt"),
    "copy-mode": ("", "st"), "customize-mode": ("", "Fft"), "delete-buffer": ("deleteb", "b"),
    "detach-client": ("detach", "Est"), "display-menu": ("menu", "Tctxy"),
    "display-message": ("display", "Fcdt"), "display-popup": ("popup", "STbcdehstwxy"),
    "display-panes": ("displayp", "dt"), "find-window": ("findw", "t"),
    "has-session": ("has", "t"), "if-shell": ("if", "t"), "join-pane": ("joinp", "lst"),
    "kill-pane": ("killp", "t"), "kill-server": ("", ""), "kill-session": ("", "t"),
    "kill-window": ("killw", "t"), "last-pane": ("lastp", "t"), "last-window": ("last", "t"),
    "link-window": ("linkw", "st"), "list-buffers": ("lsb", "Ff"), "list-clients": ("lsc", "Ft"),
    "list-commands": ("lscm", "F"), "list-keys": ("lsk", "PT"), "list-panes": ("lsp", "Fft"),
    "list-sessions": ("ls", "Ff"), "list-windows": ("lsw", "Fft"),
    "load-buffer": ("loadb", "bt"), "lock-client": ("lockc", "t"), "lock-server": ("lock", ""),
    "lock-session": ("locks", "t"), "move-pane": ("movep", "lst"), "move-window": ("movew", "st"),
    "new-session": ("new", "Fcefnstxy"), "new-window": ("neww", "Fcent"),
    "next-layout": ("nextl", "t"), "next-window": ("next", "t"),
    "paste-buffer": ("pasteb", "bst"), "pipe-pane": ("pipep", "t"),
    "previous-layout": ("prevl", "t"), "previous-window": ("prev", "t"),
    "refresh-client": ("refresh", "ABCft"), "rename-session": ("rename", "t"),
    "rename-window": ("renamew", "t"), "resize-pane": ("resizep", "txy"),
    "resize-window": ("resizew", "txy"), "respawn-pane": ("respawnp", "cet"),
    "respawn-window": ("respawnw", "cet"), "rotate-window": ("rotatew", "t"),
    "run-shell": ("run", "dt"), "save-buffer": ("saveb", "b"), "select-layout": ("selectl", "t"),
    "select-pane": ("selectp", "Tt"), "select-window": ("selectw", "t"),
    "send-keys": ("send", "Nt"), "send-prefix": ("", "t"), "server-access": ("", "t"),
    "set-buffer": ("setb", "bnt"), "set-environment": ("setenv", "t"), "set-hook": ("", "t"),
    "set-option": ("set", "t"), "set-window-option": ("setw", "t"), "show-buffer": ("showb", "b"),
    "show-environment": ("showenv", "t"), "show-hooks": ("", "t"),
    "show-messages": ("showmsgs", "t"), "show-options": ("show", "t"),
    "show-prompt-history": ("showphist", "T"), "show-window-options": ("showw", "t"),
    "source-file": ("source", ""), "split-window": ("splitw", "Fcelt"),
    "start-server": ("start", ""), "suspend-client": ("suspendc", "t"),
    "swap-pane": ("swapp", "st"), "swap-window": ("swapw", "st"),
    "switch-client": ("switchc", "Tct"), "unbind-key": ("unbind", "T"),
    "unlink-window": ("unlinkw", "t"), "wait-for": ("wait", ""),
}
_TMUX_ALIASES: Final = {a: n for n, (a, _) in TMUX_COMMANDS.items() if a}
# tmux(1)'s own options: -c/-f/-L/-S/-T take a value; getopt stops at the first operand
_TMUX_GLOBAL_VALUED: Final = frozenset("cfLST")

# commands whose operand (or -e environment) is a command line the server runs
_TMUX_SPAWN: Final = frozenset({"new-session", "new-window", "split-window", "respawn-pane",
                                "respawn-window", "display-popup", "pipe-pane", "run-shell",
                                "if-shell"})
# commands that make the server type, read or write for the caller, or run a command
# on the administrator's next key, prompt answer or menu choice
_TMUX_ALWAYS: Final = frozenset({"paste-buffer", "set-environment", "source-file",
                                 "load-buffer", "save-buffer", "attach-session",
                                 "server-access", "display-menu", "confirm-before"})
# options whose value is a command line or a format the server expands (``#(...)``
# runs a shell command) at a later event
_TMUX_COMMAND_OPTIONS: Final = frozenset({
    "default-command", "default-shell", "lock-command", "command-alias", "status-left",
    "status-right", "status-format", "set-titles-string", "automatic-rename-format",
    "window-status-format", "window-status-current-format", "pane-border-format",
    "update-environment"})
# hooks (``set-hook`` or ``set-option`` of the hook's name)
_TMUX_HOOKS: Final = frozenset({
    "alert-activity", "alert-bell", "alert-silence", "client-active", "client-attached",
    "client-detached", "client-focus-in", "client-focus-out", "client-resized",
    "client-session-changed", "pane-died", "pane-exited", "pane-focus-in", "pane-focus-out",
    "pane-mode-changed", "pane-set-clipboard", "session-closed", "session-created",
    "session-renamed", "session-window-changed", "window-layout-changed", "window-linked",
    "window-pane-changed", "window-renamed", "window-resized", "window-unlinked"})


# a format that is expanded again (``#{E:@x}``, ``#{T:...}``, in a modifier list too:
# ``#{l;E:@x}``): a value built in pieces (``set @x '#'`` then ``set -a @x '(id)'``)
# becomes a ``#(...)`` shell command only then
_TMUX_REEXPAND: Final = re.compile(r"#\{(?:[^}:]*;)?[ET][:;]")


def _tmux_find(name: str) -> str | None:
    """tmux's cmd_find: an alias, an exact name, else a unique prefix (None: unknown or
    ambiguous — tmux refuses the command)."""
    if name in _TMUX_ALIASES:
        return _TMUX_ALIASES[name]
    if name in TMUX_COMMANDS:
        return name
    cands = [n for n in TMUX_COMMANDS if n.startswith(name)] if name else []
    return cands[0] if len(cands) == 1 else None


def _tmux_commands(words: Sequence[str]) -> list[list[str]]:
    """tmux's argv split into commands (cmd_parse_from_arguments): a word ending in ``;``
    ends a command (the word without it, if any, is its last argument); ``\\;`` at the
    end is a literal ``;``."""
    out: list[list[str]] = [[]]
    for w in words:
        if w.endswith(";"):
            if w.endswith("\\;"):
                out[-1].append(w[:-2] + ";")
                continue
            if len(w) > 1:
                out[-1].append(w[:-1])
            out.append([])
            continue
        out[-1].append(w)
    return [c for c in out if c]


def _tmux_args(args: Sequence[str], valued: str) -> tuple[list[tuple[str, str]], list[str]]:
    """tmux's args_parse: flags (bundled, a valued one takes the rest of its word or the
    next) until the first operand or ``--``."""
    return _parse(args, frozenset(), frozenset(valued), stop_at_first=True)


def _tmux_one(cmd: Sequence[str]) -> Handoff | None:
    name = _tmux_find(cmd[0])
    if name is None:
        return None
    opts, ops = _tmux_args(cmd[1:], TMUX_COMMANDS[name][1])
    flags = {o for o, _ in opts}
    words = [v for _, v in opts] + ops
    line = " ".join(ops)[:80]
    if any("#(" in w for w in words):
        return Handoff("tmux server", f"{name} #(...)", line)   # a format's shell command
    if any(_TMUX_REEXPAND.search(w) for w in words):
        return Handoff("tmux server", f"{name} #{{E:...}}", line)   # expanded again
    if name == "send-keys" and ops:
        return Handoff("tmux server", name, line)
    if name == "new-session" and ("-A" in flags or "-d" not in flags):
        # attached: the caller's own client types into a shell the server forks (-A:
        # into an existing session of that name)
        return Handoff("tmux server", "new-session (attached)", line or "keys typed by the caller")
    if name in _TMUX_SPAWN and (ops or "-e" in flags):
        return Handoff("tmux server", name, line or "environment " +
                       " ".join(v for o, v in opts if o == "-e"))
    if name in _TMUX_ALWAYS:
        return Handoff("tmux server", name, line)
    if name == "detach-client" and "-E" in flags:
        return Handoff("tmux server", "detach-client -E",
                       next(v for o, v in opts if o == "-E"))
    if name == "command-prompt" and "-I" in flags:
        return Handoff("tmux server", "command-prompt -I", next(v for o, v in opts if o == "-I"))
    if name in ("command-prompt", "choose-buffer", "choose-client", "choose-tree") and ops:
        return Handoff("tmux server", name, line)           # the template runs on a choice
    if name == "bind-key" and len(ops) >= 2:
        return Handoff("tmux server", name, " ".join(ops[1:])[:80])
    if name == "set-hook" and len(ops) >= 2 and "-u" not in flags:
        return Handoff("tmux server", name, " ".join(ops[1:])[:80])
    if name in ("set-option", "set-window-option") and ops and "-u" not in flags \
            and "-U" not in flags:
        opt = ops[0].partition("[")[0]
        if opt in _TMUX_COMMAND_OPTIONS or opt in _TMUX_HOOKS or opt.startswith("after-"):
            return Handoff("tmux server", f"{name} {opt}", " ".join(ops[1:])[:80])
    return None


def tmux_act(argv: Sequence[str]) -> Handoff | None:
    """``tmux [-2CDlNuvV] [-c cmd] [-f file] [-L name] [-S path] [-T feat] [command [args]
    [; command ...]]``: a command the server runs or types for the caller.  Control
    mode (``-C``) takes any command from stdin.  ``-c`` runs its command in the client
    itself (the caller's own tree): no hand-off.  An attached ``new-session`` (tmux's
    default command) has the caller type into a shell the server forks: a hand-off
    when the server is another's (a server the caller starts is its own child, but
    that cannot be told at exec: the act is read the same)."""
    opts, ops = _parse(argv[1:], frozenset(), _TMUX_GLOBAL_VALUED, stop_at_first=True)
    names = {o for o, _ in opts}
    if "-C" in names:
        return Handoff("tmux server", "control mode (-C)", "commands from stdin")
    if not ops and not names & {"-V", "-c"}:
        ops = ["new-session"]       # tmux's default command: an attached new session
    for cmd in _tmux_commands(ops):
        got = _tmux_one(cmd)
        if got is not None:
            return got
    return None


# ---- screen --------------------------------------------------------------------------------

# screen(1) options whose value follows (in the same word or the next)
_SCREEN_VALUED: Final = frozenset("cehpsStT")
# screen's commands (sent with -X / -Q) that run a program, type into a window, read or
# write a file for the caller, or run a command on a later event
_SCREEN_RUN: Final = frozenset({
    "stuff", "exec", "screen", "eval", "source", "paste", "readbuf", "readreg", "register",
    "writebuf", "at", "bind", "bindkey", "process", "backtick", "shell", "defshell", "setenv",
    "colon", "logfile", "log", "hardcopy", "hardcopydir", "bufferfile", "deflog", "chdir",
    "multiuser", "acladd", "aclchg", "addacl", "chacl"})


def screen_act(argv: Sequence[str]) -> Handoff | None:
    """``screen [-opts] [cmd [args]]``: ``-X``/``-Q`` send a command to a running
    session (those of :data:`_SCREEN_RUN`); ``-r``/``-R``/``-x`` attach to one (the
    caller then types in it); ``-d -m``/``-D -m`` with a command start it detached.
    ``-ls``/``-list``/``-wipe`` only list."""
    args = list(argv[1:])
    letters: set[str] = set()
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-") or a == "-":
            break
        i += 1
        if a in ("-ls", "-list", "-wipe", "--help", "--version"):
            return None
        if a in ("-Logfile", "-fn", "-fa", "-fA"):
            i += 1 if a == "-Logfile" else 0
            continue
        if a == "--":
            break
        for k, ch in enumerate(a[1:], start=1):
            letters.add(ch)
            if ch in _SCREEN_VALUED:
                if k + 1 == len(a):
                    i += 1
                break
            if ch == "X" or ch == "Q":
                break
        if letters & {"X", "Q"}:
            break
    rest = args[i:]
    if letters & {"X", "Q"}:
        if rest and rest[0] in _SCREEN_RUN:
            return Handoff("screen session", f"-X {rest[0]}", " ".join(rest[1:])[:80])
        return None
    if letters & {"r", "R", "x"}:
        return Handoff("screen session", "attach", "keys typed by the caller")
    if letters & {"d", "D"} and "m" in letters and rest:
        return Handoff("screen session", "-dm", " ".join(rest)[:80])
    return None


# ---- systemd-run ---------------------------------------------------------------------------

def systemd_run_act(argv: Sequence[str]) -> Handoff | None:
    """``systemd-run [--user] [opts] CMD...``: PID 1 (or the user's manager) runs CMD in a
    transient unit, outside the caller's tree.  ``--scope`` runs CMD in the caller's
    process (no hand-off); ``-H``/``-M other`` run it on another machine."""
    try:
        popts, ops = _parse(argv[1:], _RUN_LONG_VALUED, _RUN_SHORT_VALUED, stop_at_first=True,
                            long_flags=_RUN_LONG_FLAGS)
    except _Refused:
        return None
    names = {o for o, _ in popts}
    if "--scope" in names or _elsewhere(popts) or {"--help", "-h", "--version"} & names:
        return None
    if not ops:
        return None
    manager = "user manager" if "--user" in names else "service manager"
    return Handoff(manager, "systemd-run" + (" --user" if "--user" in names else ""),
                   " ".join(ops)[:80])


def launder_act(tool: str, argv: Sequence[str]) -> Handoff | None:
    """The hand-off ``argv`` performs, read by the grammar of ``tool`` (the executable's
    name: one of :data:`LAUNDER_TOOLS`)."""
    if not argv:
        return None
    if tool in ("at", "batch"):
        return at_act(argv)
    if tool == "tmux":
        return tmux_act(argv)
    if tool == "screen":
        return screen_act(argv)
    if tool == "systemd-run":
        return systemd_run_act(argv)
    return None


__all__ = ["Handoff", "LAUNDER_TOOLS", "TMUX_COMMANDS", "at_act", "tmux_act", "screen_act",
           "systemd_run_act", "launder_act"]
