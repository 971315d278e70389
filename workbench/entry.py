"""The `wb` command's entry point: loads the CLI under a handler, so a Ctrl-C, SIGTERM or
SIGHUP that comes while Python imports typer, rich and wb's command modules is wb's one line
and exit status 130, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from workbench.interrupts import stop_on_termination

        stop_on_termination()
        from workbench.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("wb: error: interrupted\n")
        sys.exit(130)
    cli_main()
