"""The ``loopml`` command line. Every error prints one clear message and exits non-zero.

One module per command group (``*_cmd``); :mod:`loopml.cli.common` holds what they share.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.text import Text

from loopml.cli import (  # noqa: F401 - registers commands
    approvals_cmd,
    audit_cmd,
    ci_cmd,
    data_cmd,
    models_cmd,
    plugins_cmd,
    project_cmd,
    registry_cmd,
    render_cmd,
    reports_cmd,
    runs_cmd,
    serve_cmd,
)
from loopml.cli.common import app, debugging, err, quiet_prefect_drain
from loopml.errors import LoopmlError


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning loopml errors into one red line and exit code 2."""
    # Ad hoc flow runs start a temporary Prefect server; its 20 s default start-up budget is too
    # tight for a fresh database on a busy small machine. An explicit setting still wins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    quiet_prefect_drain()
    try:
        # Without standalone mode, click returns a command's typer.Exit code instead of raising it.
        code = app(args=argv, standalone_mode=False, prog_name="loopml")
    except LoopmlError as exc:
        if debugging():
            err.print_exception()
        err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return exc.exit_code
    except PermissionError as exc:  # a folder or file this user may not write: say which, not a traceback
        err.print(Text.assemble(("error: ", "bold red"), f"permission denied: {exc.filename or exc} (running as "
                                f"uid {os.getuid()}): make it writable for this user or mount a writable volume "
                                "there"), soft_wrap=True)
        return 2
    except typer.Abort:
        err.print("aborted")
        return 130
    except typer.Exit as exc:  # --version, --help
        return int(getattr(exc, "exit_code", 0) or 0)
    except typer.TyperException as exc:  # usage errors: typer bundles its own click, so not click's classes
        show = getattr(exc, "show", None)
        if callable(show):
            show(file=sys.stderr)
        else:
            err.print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        return int(getattr(exc, "exit_code", 2) or 2)
    return code if isinstance(code, int) else 0


