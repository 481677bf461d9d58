"""`neuroprint report`: one self-contained HTML file from the JSON records of `neuroprint evaluate`,
`neuroprint robustness` and `neuroprint ownership evaluate` (any of them, one or several on one page).

The kind of a record is read from its `kind` field or, for records written before it existed, from its fields.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from neuroprint.errors import InputError
from neuroprint.io import atomic_path, read_json
from neuroprint.report.evaluation import evaluation_part
from neuroprint.report.html import Part, page
from neuroprint.report.ownership import ownership_part
from neuroprint.report.robustness import robustness_part

#: kind -> (fields that identify a record of that kind, builder of its part of the page)
KINDS: dict[str, tuple[frozenset[str], Callable[[dict[str, Any]], Part]]] = {
    "evaluation": (frozenset({"attacks", "results", "model"}), evaluation_part),
    "robustness": (frozenset({"outcomes", "config", "model"}), robustness_part),
    "ownership": (frozenset({"suspects", "auc", "source_accuracy"}), ownership_part),
}
COMMANDS = "`neuroprint evaluate`, `neuroprint robustness` or `neuroprint ownership evaluate`"


def record_kind(record: Any, source: str = "the record") -> str:
    """"evaluation", "robustness" or "ownership"; `InputError` naming `source` for anything else."""
    if isinstance(record, dict):
        if record.get("kind") in KINDS:
            return str(record["kind"])
        for kind, (fields, _) in KINDS.items():
            if fields <= set(record):
                return kind
    raise InputError(f"{source} is not a neuroprint record: expected the JSON of {COMMANDS} "
                     f"(kinds: {', '.join(KINDS)})")


def record_part(record: dict[str, Any], source: str = "the record") -> Part:
    """The part of a report page made from one record; an unknown or incomplete record raises a one-line
    `InputError` naming `source`."""
    kind = record_kind(record, source)
    try:
        return KINDS[kind][1](record)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:  # ConfigError, InputError
        problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise InputError(f"{source} is not a complete {kind} record ({problem})") from None


def report_html(parts: Sequence[Part], intro: str = "") -> str:
    """One HTML page of `parts` in order, with an optional `intro` paragraph (plain text)."""
    if not parts:
        raise InputError(f"a report needs at least one JSON record of {COMMANDS}")
    headings = [p.heading for p in parts]
    title = headings[0] if len(parts) == 1 else "neuroprint report: " + "; ".join(headings)
    return page(title, parts, intro)


def write_report(paths: Sequence[str | Path], out: str | Path, intro: str = "") -> Path:
    """Write the HTML report of the JSON records at `paths` to `out` (atomically); returns `out`. A missing,
    corrupt, unknown or incomplete record raises a one-line `InputError` naming its file."""
    html = report_html([record_part(read_json(path), str(path)) for path in paths], intro)
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out
