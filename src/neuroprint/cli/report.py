"""`neuroprint report`: one self-contained HTML file from the JSON records the other commands write."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    records: Annotated[list[Path], typer.Argument(
        help="JSON record(s) of `neuroprint evaluate`, `robustness` or `ownership evaluate`; several go on "
             "one page, in order")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="HTML file to write (default: report.html next to the first record)")] = None,
) -> None:
    """Write an HTML report: tables, figures, example images and provenance, with inline CSS and images
    (nothing is fetched)."""
    html_report(records, out or records[0].parent / "report.html")


def html_report(records: list[Path], out: Path, intro: str = "") -> Path:
    """Write the HTML report of the JSON `records` to `out`, print its path and return it."""
    from neuroprint.report.build import write_report

    path = write_report(records, out, intro)
    typer.echo(f"report: {path}")
    return path
