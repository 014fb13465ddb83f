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
LAUNDER_TOOLS: Final = frozenset({"at", "batch", "tmux", "screen", "systemd-run", "run0"})


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
# tmux 3.3a's default ``command-alias`` option (``show -s command-alias``): an exact name
# replaced by a command and its leading arguments before the table is searched
TMUX_DEFAULT_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "split-pane": ("split-window",), "splitp": ("split-window",),
    "server-info": ("show-messages", "-JT"), "info": ("show-messages", "-JT"),
    "choose-window": ("choose-tree", "-w"), "choose-session": ("choose-tree", "-s")}
# tmux(1)'s own options: -c/-f/-L/-S/-T take a value; getopt stops at the first operand
_TMUX_GLOBAL_VALUED: Final = frozenset("cfLST")

# commands whose operand (or -e environment) is a command line the server runs
_TMUX_SPAWN: Final = frozenset({"new-session", "new-window", "split-window", "respawn-pane",
                                "respawn-window", "display-popup", "pipe-pane", "run-shell",
                                "if-shell"})
# commands that make the server type, read or write for the caller, or run a command
# on the administrator's next key, prompt answer or menu choice
_TMUX_ALWAYS: Final = frozenset({"paste-buffer", "set-buffer", "set-environment", "source-file",
                                 "load-buffer", "save-buffer", "attach-session",
                                 "server-access", "display-menu", "confirm-before"})
# tmux 3.3a's option names, hooks included (``show -s``, ``show -g``, ``show -wg``,
# ``show-hooks -g/-wg/-pg`` of a fresh server): tmux's options_match takes an exact name
# or a unique prefix of one (``hist`` is ambiguous, ``history-l`` is history-limit)
TMUX_OPTIONS: Final = frozenset({
    "activity-action", "after-bind-key", "after-capture-pane", "after-copy-mode",
    "after-display-message", "after-display-panes", "after-kill-pane", "after-list-buffers",
    "after-list-clients", "after-list-keys", "after-list-panes", "after-list-sessions",
    "after-list-windows", "after-load-buffer", "after-lock-server", "after-new-session",
    "after-new-window", "after-paste-buffer", "after-pipe-pane", "after-queue",
    "after-refresh-client", "after-rename-session", "after-rename-window",
    "after-resize-pane", "after-resize-window", "after-save-buffer", "after-select-layout",
    "after-select-pane", "after-select-window", "after-send-keys", "after-set-buffer",
    "after-set-environment", "after-set-hook", "after-set-option", "after-show-environment",
    "after-show-messages", "after-show-options", "after-split-window", "after-unbind-key",
    "aggressive-resize", "alert-activity", "alert-bell", "alert-silence",
    "allow-passthrough", "allow-rename", "alternate-screen", "assume-paste-time",
    "automatic-rename", "automatic-rename-format", "backspace", "base-index", "bell-action",
    "buffer-limit", "client-active", "client-attached", "client-detached",
    "client-focus-in", "client-focus-out", "client-resized", "client-session-changed",
    "clock-mode-colour", "clock-mode-style", "command-alias", "copy-command",
    "copy-mode-current-match-style", "copy-mode-mark-style", "copy-mode-match-style",
    "cursor-colour", "cursor-style", "default-command", "default-shell", "default-size",
    "default-terminal", "destroy-unattached", "detach-on-destroy",
    "display-panes-active-colour", "display-panes-colour", "display-panes-time",
    "display-time", "editor", "escape-time", "exit-empty", "exit-unattached",
    "extended-keys", "fill-character", "focus-events", "history-file", "history-limit",
    "key-table", "lock-after-time", "lock-command", "main-pane-height", "main-pane-width",
    "message-command-style", "message-limit", "message-style", "mode-keys", "mode-style",
    "monitor-activity", "monitor-bell", "monitor-silence", "mouse", "other-pane-height",
    "other-pane-width", "pane-active-border-style", "pane-base-index", "pane-border-format",
    "pane-border-indicators", "pane-border-lines", "pane-border-status",
    "pane-border-style", "pane-colours", "pane-died", "pane-exited", "pane-focus-in",
    "pane-focus-out", "pane-mode-changed", "pane-set-clipboard", "pane-title-changed",
    "popup-border-lines", "popup-border-style", "popup-style", "prefix", "prefix2",
    "prompt-history-limit", "remain-on-exit", "remain-on-exit-format", "renumber-windows",
    "repeat-time", "scroll-on-clear", "session-closed", "session-created",
    "session-renamed", "session-window-changed", "set-clipboard", "set-titles",
    "set-titles-string", "silence-action", "status", "status-bg", "status-fg",
    "status-format", "status-interval", "status-justify", "status-keys", "status-left",
    "status-left-length", "status-left-style", "status-position", "status-right",
    "status-right-length", "status-right-style", "status-style", "synchronize-panes",
    "terminal-features", "terminal-overrides", "update-environment", "user-keys",
    "visual-activity", "visual-bell", "visual-silence", "window-active-style",
    "window-layout-changed", "window-linked", "window-pane-changed", "window-renamed",
    "window-resized", "window-size", "window-status-activity-style",
    "window-status-bell-style", "window-status-current-format",
    "window-status-current-style", "window-status-format", "window-status-last-style",
    "window-status-separator", "window-status-style", "window-style", "window-unlinked",
    "word-separators", "wrap-search", "xterm-keys"})
# options whose value is a plain number, flag, key or choice: nothing the server runs,
# expands, types or writes.  Any other option set from an untrusted tree is read as a
# hand-off (commands: default-command, lock-command, copy-command, editor, command-alias;
# formats: *-format, status-left/right, set-titles-string; styles; hooks; files:
# history-file; what the administrator types: synchronize-panes, key-table, user-keys ...)
TMUX_PLAIN_OPTIONS: Final = frozenset({
    "activity-action", "aggressive-resize", "allow-rename", "alternate-screen",
    "assume-paste-time", "automatic-rename", "base-index", "bell-action", "buffer-limit",
    "clock-mode-colour", "clock-mode-style", "destroy-unattached", "detach-on-destroy",
    "display-panes-active-colour", "display-panes-colour", "display-panes-time",
    "display-time", "escape-time", "exit-empty", "exit-unattached", "focus-events",
    "history-limit", "main-pane-height", "main-pane-width", "message-limit",
    "mode-keys", "monitor-activity", "monitor-bell", "monitor-silence", "mouse",
    "other-pane-height", "other-pane-width", "pane-base-index", "pane-border-indicators",
    "pane-border-lines", "pane-border-status", "popup-border-lines", "prefix", "prefix2",
    "prompt-history-limit", "remain-on-exit", "renumber-windows", "repeat-time",
    "scroll-on-clear", "set-clipboard", "set-titles", "silence-action", "status",
    "status-interval", "status-justify", "status-keys", "status-left-length",
    "status-position", "status-right-length", "visual-activity", "visual-bell",
    "visual-silence", "window-size", "wrap-search", "xterm-keys"})


def tmux_option(name: str) -> str | None:
    """tmux's options_match: ``name`` (its ``[index]`` dropped) as an exact option name
    or a unique prefix of one; a user option (``@...``) as itself; None: unknown or
    ambiguous."""
    name = name.partition("[")[0]
    if name.startswith("@") or name in TMUX_OPTIONS:
        return name
    cands = [n for n in TMUX_OPTIONS if n.startswith(name)] if name else []
    return cands[0] if len(cands) == 1 else None


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
    if cmd[0] in TMUX_DEFAULT_ALIASES:
        cmd = [*TMUX_DEFAULT_ALIASES[cmd[0]], *cmd[1:]]
    name = _tmux_find(cmd[0])
    if name is None:
        # tmux refuses an unknown or ambiguous name unless a ``command-alias`` (set by
        # anyone with the socket: the administrator's config, an earlier command) names
        # it, and then it is whatever the alias says: nothing benign is lost by reading
        # it as a hand-off
        return Handoff("tmux server", f"unknown command {cmd[0][:40]}", " ".join(cmd)[:80])
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
        # any option but a plain value's: a command, a format the server expands, a
        # hook, a style, a file; an unknown or ambiguous name (tmux refuses it, nothing
        # lost); a user option given a format (-F) or built in pieces (-a)
        opt = tmux_option(ops[0])
        if opt is None:
            return Handoff("tmux server", f"{name} unknown option {ops[0][:40]}",
                           " ".join(ops[1:])[:80])
        if opt.startswith("@") and not flags & {"-F", "-a"}:
            return None
        if opt not in TMUX_PLAIN_OPTIONS or "-F" in flags:
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

# screen's commands (sent with -X / -Q) known to be harmless: they select, name,
# list, resize, detach or end windows and sessions, or show a message.  Any other
# command (stuff, exec, screen, eval, source, paste, readbuf, bind, at, backtick,
# logfile, hardcopy, multiuser, acladd, a misspelling screen itself refuses ...) is read
# as a hand-off: an allowlist, since screen has ~150 commands and many run or type.
SCREEN_HARMLESS: Final = frozenset({
    "title", "select", "quit", "detach", "info", "windows", "number", "next", "prev",
    "other", "kill", "focus", "only", "split", "remove", "fit", "redisplay", "clear",
    "echo", "wall", "version", "time", "lastmsg", "sessionname", "displays", "dinfo",
    "help", "license", "msgwait", "msgminwait", "monitor", "silence", "width", "height"})
# screen's single-letter flags that take nothing
_SCREEN_FLAGS: Final = frozenset("aABiLOqU46")


def screen_act(argv: Sequence[str]) -> Handoff | None:
    """screen.c's option loop, mirrored: in one ``-word`` the letters are read in turn;
    ``-p``/``-c``/``-e`` take the rest of the word (or the next word); ``-S`` (unless a
    session is already named), ``-t``/``-T``/``-s``/``-h`` take the next word and the
    word's letters go on; ``-r``/``-R``/``-x`` take the next word if it does not start
    with ``-`` (and no session is named), ``-d``/``-D`` likewise but only when it is the
    last word; ``-f``/``-l`` read one sub-letter (``-ls``/``-list``/``-wipe``: listing,
    no act); ``-X``/``-Q`` do not end the options.  Then, as screen decides:

    * ``-X``/``-Q CMD``: CMD sent to a running session: a hand-off unless CMD is one of
      :data:`SCREEN_HARMLESS`;
    * ``-r``/``-R``/``-x``: attaching to a session (the caller then types in it);
    * ``-d``/``-D`` without ``-m``: detaching a session: nothing;
    * no ``-S`` and no ``-m`` with a command: inside a session (``$STY`` set) screen sends
      the command to that session as a new window.  The exec record carries no
      environment, so this is read as the hand-off it is when ``$STY`` names another's
      session (an untrusted tree starting an attached screen of its own with a command
      is not a case a script has);
    * otherwise (``-S name``, ``-m``, ``-dm``): a new session whose backend the caller
      forks itself, so it stays in the caller's tree: no hand-off."""
    words = list(argv[1:])
    n = len(words)
    i = 0
    sock = False
    cmd = detach = mflag = False
    attach = bool(argv) and argv[0].startswith("-")     # a login screen: screen -RR
    while i < n:
        w = words[i]
        i += 1
        if not w.startswith("-"):
            i -= 1
            break
        if w == "--":
            break
        if w in ("--version", "--help"):
            return None
        j = 1
        while j < len(w):
            ch = w[j]
            if ch in "pce":
                if j + 1 == len(w):
                    if i >= n:
                        return None        # usage error
                    i += 1
                break                      # the rest of the word is the value
            if ch in "fl":
                sub = w[j + 1] if j + 1 < len(w) else ""
                if ch == "l" and sub in ("s", "i"):
                    return None            # -ls, -list: listing
                if sub not in ("", "n", "0", "y", "1", "a"):
                    return None            # usage error
                j += 3 if sub else 1       # screen's pointer skips one more letter
                continue
            if ch in "htTs" or ch == "S" and not sock:
                if i >= n:
                    return None
                i += 1
                sock = sock or ch == "S"
            elif ch in "rRx":
                attach = True
                if i < n and not words[i].startswith("-") and not sock:
                    i += 1
                    sock = True
            elif ch in "dD":
                detach = True
                if i == n - 1 and not words[i].startswith("-") and not sock:
                    i += 1
                    sock = True
            elif ch == "w":
                return None                # -wipe: listing
            elif ch in "XQ":
                cmd = True
            elif ch == "m":
                mflag = True
            elif ch == "v":
                return None
            elif ch not in _SCREEN_FLAGS and ch != "S":
                return None                # unknown option: usage error
            j += 1
    rest = words[i:]
    if cmd:
        if not rest or rest[0] in SCREEN_HARMLESS:
            return None
        return Handoff("screen session", f"-X {rest[0][:40]}", " ".join(rest[1:])[:80])
    if attach:
        return Handoff("screen session", "attach", "keys typed by the caller")
    if detach and not mflag:
        return None
    if not sock and not mflag and rest:
        return Handoff("screen session", "new window ($STY)", " ".join(rest)[:80])
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
    manager = "user manager" if "--user" in names else "service manager"
    if not ops and names & {"--shell", "-S"}:
        # ``--shell``: the manager runs the caller's shell in a unit on its terminal
        return Handoff(manager, "systemd-run --shell", "an interactive shell")
    if not ops:
        return None
    return Handoff(manager, "systemd-run" + (" --user" if "--user" in names else ""),
                   " ".join(ops)[:80])


# run0(1) (systemd 256): options whose value is the next word (long: --opt VALUE or =)
_RUN0_LONG_VALUED: Final = frozenset({
    "--unit", "--property", "--description", "--slice", "--user", "--group", "--nice",
    "--chdir", "--setenv", "--background", "--machine", "--shell-prompt-prefix"})
_RUN0_LONG_FLAGS: Final = frozenset({"--help", "--version", "--no-ask-password",
                                     "--slice-inherit", "--pty", "--pipe"})


def run0_act(argv: Sequence[str]) -> Handoff | None:
    """``run0 [opts] [CMD...]``: the service manager runs CMD (or, without one, a
    shell) as a transient service: always a hand-off but for ``--help``/``--version``."""
    try:
        popts, ops = _parse(argv[1:], _RUN0_LONG_VALUED, frozenset("ugDp"),
                            stop_at_first=True, long_flags=_RUN0_LONG_FLAGS)
    except _Refused:
        return None
    names = {o for o, _ in popts}
    if {"--help", "-h", "--version", "-V"} & names or _elsewhere(popts):
        return None
    return Handoff("service manager", "run0", " ".join(ops)[:80] or "an interactive shell")


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
    if tool == "run0":
        return run0_act(argv)
    return None


__all__ = ["Handoff", "LAUNDER_TOOLS", "TMUX_COMMANDS", "at_act", "tmux_act", "screen_act",
           "systemd_run_act", "run0_act", "launder_act", "tmux_option", "TMUX_OPTIONS",
           "TMUX_PLAIN_OPTIONS", "TMUX_DEFAULT_ALIASES", "SCREEN_HARMLESS"]
