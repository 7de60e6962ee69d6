"""Lineage as a page: the graph of what went into a model version, and the tables behind it."""

from __future__ import annotations

from typing import Any

from loopml.lineage import Impact, ModelLineage
from loopml.reports import Section, figure_png, img, page, paragraph, strong, table, verdict


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _graph(lin: ModelLineage) -> str:
    """Columns left to right: source files, dataset versions, the model (run, commit, report), aliases."""
    sources = [(f"{s.path.rsplit('/', 1)[-1]}\nsha256 {s.sha256[:12]}", d.ref) for d in lin.datasets
               for s in d.sources]
    columns = [[text for text, _ in sources] or ["(no source files recorded)"],
               [f"{d.role}: {d.ref}\n{d.rows:,} rows" for d in lin.datasets],
               [f"{lin.ref} ({lin.status})\nview {lin.feature_view}\nrun {str(lin.run_id)[:12]}\n"
                f"commit {str(lin.git_commit)[:12]}" + (" (dirty)" if lin.git_dirty else "")],
               [f"@{a}" for a in lin.aliases] or ["(no alias)"]]
    height = max(len(c) for c in columns)

    def draw(ax: Any) -> None:
        centres: list[list[tuple[float, float]]] = []
        for x, column in enumerate(columns):
            ys = [height - (i + 0.5) * height / len(column) for i in range(len(column))]
            centres.append([(x * 3.0, y) for y in ys])
            for (cx, cy), text in zip(centres[-1], column, strict=True):
                ax.text(cx, cy, text, ha="center", va="center", fontsize=7,
                        bbox={"boxstyle": "round", "facecolor": "#eef3fb" if x != 2 else "#dff0d8"})
        dataset_index = {d.ref: i for i, d in enumerate(lin.datasets)}
        for i, (_, ref) in enumerate(sources):
            if ref in dataset_index:
                ax.annotate("", centres[1][dataset_index[ref]], centres[0][i], arrowprops={"arrowstyle": "->"})
        for a in range(1, 3):
            for start in centres[a]:
                for end in centres[a + 1]:
                    if a < 2 or lin.aliases:
                        ax.annotate("", end, start, arrowprops={"arrowstyle": "->", "shrinkA": 45, "shrinkB": 30})
        ax.set_xlim(-1.5, 10.5)
        ax.set_ylim(0, height)
        ax.axis("off")

    return figure_png(draw, size=(10, 1.2 + 1.1 * height))


def lineage_html(lin: ModelLineage) -> str:
    sections: list[Section] = [
        verdict(f"{lin.ref}: {lin.status}" + (f", live as {', '.join(lin.aliases)}" if lin.aliases else ""),
                lin.status == "approved"),
        img(_graph(lin), f"lineage graph of {lin.ref}"),
        paragraph(strong("Code: "), f"commit {lin.git_commit}" + (" with uncommitted changes" if lin.git_dirty
                                                                 else ""),
                  "; training fingerprint ", str(lin.fingerprint)[:16], "; run ", str(lin.run_id)),
        table(("dataset", "version", "rows", "created", "source files (sha256)"),
              [(d.role, d.ref, f"{d.rows:,}", _when(d.created_at),
                "; ".join(f"{s.path} ({s.sha256[:12]})" for s in d.sources) or "-") for d in lin.datasets]),
        table(("gate", "passed", "value"),
              [(name, str(g.get("passed")), "-" if g.get("value") is None else f"{g['value']:.4g}")
               for name, g in lin.gates.items()]),
        paragraph(strong("Gate report: "), str(lin.validation_report)),
        table(("when", "action", "alias", "by", "reason"),
              [(_when(e.at), e.action, e.alias or "-", e.actor, e.reason) for e in lin.history]),
        table(("alias", "since", "until", "moved by"),
              [(w.alias, _when(w.since), _when(w.until) if w.until else "now", w.by) for w in lin.served]),
    ]
    return page(f"Lineage of {lin.ref}", sections)


def impact_html(impact: Impact) -> str:
    live = [m for m in impact.models if m.live]
    return page(f"Impact of {impact.dataset.ref}", [
        verdict(f"{len(impact.models)} model version(s) built on {impact.dataset.ref}, {len(live)} live", not live),
        table(("model", "status", "used as", "aliases", "live"),
              [(m.ref, m.status, m.role, ", ".join(m.aliases) or "-", "yes" if m.live else "no")
               for m in impact.models]),
        *(paragraph(a) for a in impact.advice)])
