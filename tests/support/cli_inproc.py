"""One interpreter running `bastion` commands in turn, for the VM's administrator tests:
each command is the console script's ``main()`` with its own ``sys.argv``, its fds 1 and 2
captured (click, logging and any child alike), its exit status kept; a command that
raises prints its traceback there, as the real ``bastion`` would.  Under TCG a fresh
``bastion`` costs 8-16 s of interpreter start-up; the commands themselves are what the
tests look at.  Protocol: one JSON list of argv per line on stdin; one JSON object
``{"rc", "stdout", "stderr"}`` per line on the fd named by the first argument."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback


def _run(argv: list[str]) -> dict[str, object]:
    from bastion.cli.main import main

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        rc: object = 0
        try:
            sys.argv = ["bastion", *argv]
            main()
        except SystemExit as exc:
            rc = exc.code
        except BaseException:  # noqa: BLE001 - what the console script would show
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        code = rc if isinstance(rc, int) else (0 if rc is None else 1)
        return {"rc": code, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def serve() -> None:
    reply = os.fdopen(int(sys.argv[1]), "w")
    for line in sys.stdin:
        reply.write(json.dumps(_run(json.loads(line))) + "\n")
        reply.flush()


if __name__ == "__main__":
    serve()
