"""HTML reports with inline plots (matplotlib, no external assets): gates, drift, canary, performance.

A report is a title and a list of sections (a verdict, paragraphs, tables, figures) rendered by one
Jinja2 template (``templates/report.html.j2``) with autoescaping on, so a feature name, a category
or a reason with ``<`` or ``&`` in it is shown as text, never read as markup.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Verdict:
    text: str
    passed: bool
    kind: Literal["verdict"] = "verdict"


@dataclass(frozen=True)
class Part:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Paragraph:
    parts: tuple[Part, ...]
    kind: Literal["paragraph"] = "paragraph"


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    classes: tuple[str, ...] | None = None  # a CSS class per row, on its last cell (pass / fail)
    kind: Literal["table"] = "table"


@dataclass(frozen=True)
class Figure:
    uri: str
    alt: str
    kind: Literal["figure"] = "figure"


Section = Verdict | Paragraph | Table | Figure


def verdict(text: str, passed: bool) -> Verdict:
    return Verdict(text, passed)


def strong(text: Any) -> Part:
    return Part(str(text), strong=True)


def paragraph(*parts: Any) -> Paragraph:
    """A paragraph of text; parts made with :func:`strong` are set in bold."""
    return Paragraph(tuple(p if isinstance(p, Part) else Part(str(p)) for p in parts))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> Table:
    return Table(tuple(str(h) for h in headers), tuple(tuple(_fmt(v) for v in row) for row in rows),
                 tuple(classes) if classes else None)


def img(uri: str, alt: str) -> Figure:
    return Figure(uri, alt)


def page(title: str, sections: Sequence[Section]) -> str:
    """The standalone HTML page."""
    return _template().render(title=title, sections=sections)


@functools.cache
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("loopml", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(TEMPLATE)


def figure_png(draw: Callable[[Any], None], size: tuple[float, float] = (6, 3.5)) -> str:
    """Render ``draw(ax)`` to a base64 PNG data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def checks_markdown(checks: Sequence[Any], limit: str = "threshold") -> list[str]:
    """Gate or canary checks as a markdown table (Prefect artifacts, CI job summaries): each check,
    its verdict, measured value, limit and reason."""
    lines = [f"| check | verdict | value | {limit} | reason |", "|---|---|---|---|---|"]
    for c in checks:
        reason = c.reason.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {_fmt(c.value)} | {_fmt(c.threshold)} "
                     f"| {reason} |")
    return lines
