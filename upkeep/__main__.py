"""`python -m upkeep`: the console script's `main`, and its exit code kept on Ctrl-C.

CPython marks a KeyboardInterrupt that escaped an eval() of a string as unhandled even when it was
caught later (Typer evaluates each command's string annotations so, and turns the interrupt into
Exit(130), which `main` answers "aborted"); under `-m` the interpreter then kills itself with SIGINT
at exit, returncode -2 instead of 130 (adv22). The `upkeep` script and `python -c` exit 130 already."""

import os
import sys

from upkeep.cli import main

try:
    main()
except SystemExit as exc:
    if exc.code != 130:
        raise
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # the answer is out and main's cleanup has run: only the interpreter's own exit is left
