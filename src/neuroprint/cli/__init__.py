"""The `neuroprint` command line, one module per command group: `models` (list, train, attack), `evaluation`
(evaluate, robustness, demo), `report` (HTML from JSON records), `guard` (fit, score, serve) and `ownership`
(generate, verify, evaluate).

Every `NeuroprintError` (bad names, bad values, missing or corrupt files) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import sys

import typer

from neuroprint.cli import evaluation, guard, models, ownership, report
from neuroprint.errors import NeuroprintError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Detect adversarial inputs with neural fingerprints; evaluate detectors honestly.")
app.command("list")(models.list_registered)
for command in (models.train, models.attack, evaluation.evaluate, evaluation.robustness, guard.fit, guard.score,
                guard.serve, evaluation.demo, report.report):
    app.command()(command)
app.add_typer(ownership.ownership_app, name="ownership")


def main() -> None:
    """Console entry point: run the app, turning neuroprint errors into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except NeuroprintError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise
    finally:
        if (distributed := sys.modules.get("neuroprint.distributed")) is not None:
            distributed.close()  # leave a torchrun job's process group, if one was joined
