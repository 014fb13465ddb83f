"""A shell's command line read the way the shell reads it (s15-svc).

Rules asking "does this shell take its commands from stdin?" or "is it interactive?"
must not guess from the look of the words: an option's argument is not a script
(``bash -o posix``, ``sh -O extglob``, ``bash --rcfile f``, ``bash --init-file f -i``),
and a long option containing a ``c`` is not ``-c`` (``bash --norc``).  Each shell's
option table says which options take the next word; the first word that is not an
option (or the word after ``--``/``-``) is the script, or with ``-c`` the command.

Sources: bash(1) "OPTIONS" and shell.c (``-o``/``-O``/``+o``/``+O`` take the next word
even inside a cluster: ``-xo posix``; ``--rcfile``/``--init-file`` take the next word),
dash(1)/busybox ash (``-o``), zsh(1) (``-o`` takes the rest of its cluster or the next
word; ``--emulate`` the next word), mksh(1)/ksh(1) (``-o``, mksh ``-T``, ksh93 ``-R``),
fish(1) (``-c``/``-C``/``-d``/``-o``/``-f``/``-p`` take a value, ``--opt=value`` too),
csh/tcsh (no valued options besides ``-c``).
"""

from __future__ import annotations

from dataclasses import dataclass

# per shell (executable base name): short options whose value is the next word, and
# long options whose value is the next word
_SHORT_VALUED: dict[str, frozenset[str]] = {
    "bash": frozenset("oO"), "sh": frozenset("oO"), "dash": frozenset("o"),
    "ash": frozenset("o"), "busybox": frozenset("o"), "zsh": frozenset("o"),
    "ksh": frozenset("oTR"), "mksh": frozenset("oT"), "fish": frozenset("cCdofp"),
    "csh": frozenset(), "tcsh": frozenset(),
}
_LONG_VALUED: dict[str, frozenset[str]] = {
    "bash": frozenset({"--rcfile", "--init-file"}),
    "sh": frozenset({"--rcfile", "--init-file"}),
    "zsh": frozenset({"--emulate"}),
    "fish": frozenset({"--command", "--init-command", "--debug", "--debug-output",
                       "--features", "--profile", "--profile-startup"}),
}
# zsh's -o takes the rest of its cluster when there is one (``-oposixbuiltins``)
_ATTACHED = frozenset({"zsh", "fish"})
_LONG_COMMAND = frozenset({"--command"})          # fish
_LONG_INTERACTIVE = frozenset({"--interactive"})  # zsh, fish


@dataclass(frozen=True)
class ShellArgs:
    """What a shell does with its command line."""

    command: bool          # -c (or fish --command): runs a command string
    script: str | None     # the script operand, None when there is none
    stdin: bool            # takes its commands from stdin (no script, no -c; or -s)
    interactive: bool      # -i / --interactive


def parse_shell_argv(exe_base: str, argv: tuple[str, ...] | list[str]) -> ShellArgs:
    """``argv`` (argv[0] included) of the shell whose executable's base name is
    ``exe_base``.  A busybox run as ``busybox sh ...`` has its applet word skipped."""
    words = list(argv[1:])
    shell = exe_base
    if exe_base == "busybox":
        if argv and argv[0].rsplit("/", 1)[-1] == "busybox" and words:
            words = words[1:]          # ``busybox sh -i``: the applet name
    short_valued = _SHORT_VALUED.get(shell, frozenset("o"))
    long_valued = _LONG_VALUED.get(shell, frozenset())
    command = stdin_flag = interactive = False
    operands: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w in ("--", "-"):
            operands = words[i:]
            break
        if w.startswith("--"):
            name, eq, _ = w.partition("=")
            if name in _LONG_COMMAND:
                command = True
            if name in _LONG_INTERACTIVE:
                interactive = True
            if name in long_valued and not eq:
                i += 1
            continue
        if len(w) > 1 and w[0] in "-+":
            for k, ch in enumerate(w[1:], start=1):
                if w[0] == "-" and ch == "c":
                    command = True
                    if "c" in short_valued:     # fish: -c takes its command as a value
                        i += 1
                        break
                    continue
                if w[0] == "-" and ch == "s":
                    stdin_flag = True
                elif w[0] == "-" and ch == "i":
                    interactive = True
                elif ch in short_valued:
                    if shell in _ATTACHED and k + 1 < len(w):
                        break                   # the rest of the cluster is the value
                    i += 1                      # the next word is the value
            continue
        operands = words[i - 1:]
        break
    if command:
        # bash/sh: the first operand is the command string; fish: -c took it
        return ShellArgs(True, None, False, interactive)
    if stdin_flag or not operands:
        return ShellArgs(False, None, True, interactive)
    return ShellArgs(False, operands[0], False, interactive)


__all__ = ["ShellArgs", "parse_shell_argv"]
