"""Building blocks of the self-contained HTML reports: page, sections, tables, figures, provenance.

A report is one HTML file with inline CSS, figures as inline PNG (`data:` URIs) and no script: nothing is
fetched from anywhere, so it opens offline, can be mailed as it is, and shows exactly what the JSON record
it came from holds. Everything here is a pure function from values to HTML text; callers decide what goes in.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --band: #f5f7fa; --accent: #2d5fa8;
        --good: #1f7a44; --good-bg: #e3f4e9; --bad: #a3262a; --bad-bg: #fbe5e5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
header { border-bottom: 2px solid var(--ink); margin-bottom: 8px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 6px; padding-top: 8px; border-top: 1px solid var(--line); }
h3 { font-size: 17px; margin: 24px 0 6px; }
h4 { font-size: 15px; margin: 18px 0 4px; }
p { margin: 6px 0 10px; max-width: 110ch; }
.muted, figcaption { color: var(--muted); font-size: 13px; }
nav ul { list-style: none; padding: 0; margin: 8px 0 14px; }
nav li { margin: 2px 0; }
h2.part { font-size: 23px; border-top: 2px solid var(--ink); margin-top: 44px; }
header + h2.part { border-top: none; margin-top: 18px; }
nav a, a { color: var(--accent); text-decoration: none; }
.intro { background: var(--band); border-left: 4px solid var(--accent); padding: 8px 14px; margin: 14px 0; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 13.5px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv { width: 100%; }
table.kv th { width: 170px; }
table.kv td { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px;
              word-break: break-all; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
table.examples td { text-align: center; vertical-align: middle; padding: 3px 5px; }
table.examples th { white-space: nowrap; }
img.px { image-rendering: pixelated; width: 84px; height: 84px; display: block; margin: 0 auto; }
.verdict { display: inline-block; margin: 1px 0; padding: 0 4px; border-radius: 3px; font-size: 12px;
           white-space: nowrap; }
.right { background: var(--good-bg); color: var(--good); }
.wrong { background: var(--bad-bg); color: var(--bad); }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 0.92em; }
"""


@dataclass(frozen=True)
class Section:
    """One titled part of a report page; `body` is HTML."""

    title: str
    body: str


@dataclass(frozen=True)
class Part:
    """The sections made from one JSON record, under a heading (e.g. "Detection on mnist")."""

    heading: str
    sections: Sequence[Section]


def page(title: str, parts: Sequence[Part], intro: str = "") -> str:
    """A complete HTML document: `title`, an optional `intro` paragraph (inline Markdown), a table of
    contents and every part's sections in order (each part under its own heading when there are several)."""
    nav, body = [], []
    for i, part in enumerate(parts, 1):
        anchors = [f"s{i}-{j}" for j in range(1, len(part.sections) + 1)]
        pairs = list(zip(anchors, part.sections, strict=True))
        links = " · ".join(f'<a href="#{a}">{esc(s.title)}</a>' for a, s in pairs)
        nav.append(f"<li><strong>{esc(part.heading)}</strong>: {links}</li>" if len(parts) > 1
                   else f"<li>{links}</li>")
        if len(parts) > 1:
            body.append(f'<h2 class="part" id="p{i}">{esc(part.heading)}</h2>')
        tag = "h3" if len(parts) > 1 else "h2"
        body += [f'<section id="{a}"><{tag}>{esc(s.title)}</{tag}>\n{s.body}\n</section>' for a, s in pairs]
    lead = f'<p class="intro">{inline_markdown(intro)}</p>' if intro else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{esc(title)}</h1>{lead}<nav><ul>{''.join(nav)}</ul></nav></header>\n"
        + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def esc(text: object) -> str:
    """`text` as HTML text (quotes escaped too, so it is safe inside attributes)."""
    return html.escape(str(text), quote=True)


_NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+)(e[-+]?\d+)?\s*%?$")


def inline_markdown(text: str) -> str:
    """Escape `text` and render the inline Markdown the tables use: **bold**, *italic* and `code`."""
    out = esc(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", out)


def markdown_html(markdown: str) -> str:
    """The Markdown the commands print (paragraphs and pipe tables, blocks separated by blank lines) as HTML:
    the first row of a pipe table is its header, its `|---|` line is dropped, numeric cells align right."""
    blocks = [b for b in re.split(r"\n\s*\n", markdown.strip()) if b.strip()]
    out = []
    for block in blocks:
        lines = [line.strip() for line in block.splitlines()]
        if all(line.startswith("|") for line in lines):
            rows = [_cells(line) for line in lines if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line)]
            out.append(table_html(rows[0], rows[1:], markdown=True))
        else:
            out.append(f"<p>{inline_markdown(' '.join(lines))}</p>")
    return "\n".join(out)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False,
               raw: bool = False, css_class: str = "") -> str:
    """An HTML table in a horizontally scrolling box. Cells are plain text (escaped), inline Markdown with
    `markdown`, or HTML as given with `raw`; cells that read as numbers align right (except in Markdown and
    key-value tables, `css_class="kv"`)."""
    def cell(value: object, tag: str) -> str:
        text = str(value)
        content = text if raw else inline_markdown(text) if markdown else esc(text)
        aligned = tag == "td" and not markdown and css_class != "kv"
        num = ' class="num"' if aligned and _NUMBER.match(text.strip()) else ""
        return f"<{tag}{num}>{content}</{tag}>"

    head = "<tr>" + "".join(cell(h, "th") for h in header) + "</tr>"
    body = "\n".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    attr = f' class="{css_class}"' if css_class else ""
    table = f"<table{attr}>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f'<div class="scroll">{table}</div>'


def figure_html(fig: Figure, caption: str, dpi: int = 100) -> str:
    """`fig` as an inline PNG with a caption (plain text); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    width, height = (round(v * dpi) for v in fig.get_size_inches())
    return (f'<figure><img src="{png_uri(buffer.getvalue())}" alt="{esc(caption)}" width="{width}" '
            f'height="{height}"><figcaption>{esc(caption)}</figcaption></figure>')


def png_uri(png: bytes | str) -> str:
    """A `data:` URI of PNG bytes (or of a PNG already base64-encoded)."""
    data = png if isinstance(png, str) else base64.b64encode(png).decode("ascii")
    return f"data:image/png;base64,{data}"


def provenance_section(record: dict[str, Any]) -> Section:
    """Where a record came from: the command line, git commit, seed, dataset, model, library versions and the
    configuration, from the fields every neuroprint JSON record carries (`provenance` holds them in ownership
    records)."""
    nested = record.get("provenance") or {}
    config = record.get("config") or {}
    model = record.get("model") or {}
    command = record.get("command")
    rows: list[tuple[str, object]] = [
        ("command", shlex.join(command) if command else "not recorded (written through the Python API)"),
        ("git commit", record.get("git") or nested.get("git") or "unknown"),
        ("seed", record.get("seed", config.get("seed", "unknown"))),
        ("dataset", record.get("dataset", config.get("dataset", "unknown"))),
    ]
    if model:
        rows.append(("model", f"{model.get('name')} ({model.get('dir')})"))
    if "seconds" in record:
        rows.append(("run time", f"{float(record['seconds']):.0f} s"))
    versions = record.get("versions") or nested.get("versions") or {}
    rows += [("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "unknown"),
             ("configuration", json.dumps(config, sort_keys=True, default=str))]
    return Section("Provenance", table_html(["field", "value"], [[k, v] for k, v in rows], css_class="kv"))
