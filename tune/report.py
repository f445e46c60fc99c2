"""`mmtune report`: an HTML + Markdown report of an experiment (figures, importance, warnings), read from disk.

Works on a finished, running or interrupted sweep: trials that have not ended show as "unfinished". The
content comes from `tune.analysis` (one `Document`), the figures from `tune.figures`; this module renders
the document to both formats and holds the command. matplotlib and Optuna are imported only when a report
is written, so the CLI stays quick to start.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.io import atomic_file
from tune.errors import ResultsError

if TYPE_CHECKING:
    from tune.analysis import Document
    from tune.experiment import Trial
    from tune.figures import Plot

log = logging.getLogger(__name__)

FIG_DIR = "report"


@dataclass(frozen=True)
class ReportResult:
    """What `write_report` wrote, and the warnings the report lists."""

    html: Path
    markdown: Path
    warnings: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)  # the PNGs drawn, in report order


# ---------------------------------------------------------------- public API


def write_report(exp_dir: str | Path, top_k: int = 5) -> ReportResult:
    """Write report.html (self-contained, images embedded as base64 PNG), report.md and report/*.png into EXP_DIR."""
    if top_k < 1:
        raise ResultsError(f"--top-k must be >= 1, got {top_k}")
    from tune import figures
    from tune.analysis import analyze
    from tune.experiment import Experiment

    figures.require_matplotlib()  # fail early and clearly when the extra is not installed
    exp = Experiment.open(exp_dir)
    doc = analyze(exp, top_k, final=_final_summary(exp.path))
    plots = figures.draw_all(doc, exp.path / FIG_DIR)
    result = ReportResult(exp.path / "report.html", exp.path / "report.md", list(doc.warnings),
                          [p.path for p in plots if p.path is not None])
    with atomic_file(result.html) as f:  # a reader never sees half a report
        f.write(render_html(doc, plots))
    with atomic_file(result.markdown) as f:
        f.write(render_markdown(doc, plots))
    log.info("report of %s: %d trials, %d figures, %d warnings", exp.name, len(exp.trials), len(result.figures),
             len(result.warnings))
    return result


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `report` sub-command: `mmtune report results/<exp> [--top-k K]`."""
    r = sub.add_parser("report", help="HTML + Markdown report of an experiment (figures, importance, warnings)")
    r.add_argument("experiment", help="results/<experiment> (finished, running or interrupted)")
    r.add_argument("--top-k", type=_positive_int, default=5, help="trials to highlight and tabulate (default 5)")
    r.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of ARGS.experiment and print where it is and its warnings."""
    from tune import storage

    with storage.synced(args.experiment, checkpoints=False) as exp_dir:  # the report reads results only
        result = write_report(exp_dir, getattr(args, "top_k", 5))
    print(f"report: {result.html}")
    print(f"markdown: {result.markdown} (figures in {result.html.with_name(FIG_DIR)}/)")
    for w in result.warnings:
        print(f"warning: {w.replace('`', '')}")  # the backticks are Markdown, not part of the command
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _final_summary(exp_dir: Path) -> dict[str, Any] | None:
    """The summary `mmtune finalize` wrote, or None (not run, or unreadable: said in the log)."""
    from tune.finalize import FINAL_DIR

    path = exp_dir / FINAL_DIR / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s left out of the report: %s", path, e)
        return None


def _final_text(doc: Document) -> str:
    """What the re-evaluation did and which config won."""
    f = doc.final or {}
    w = f.get("winner", {})
    return (f"The top {f.get('top_k')} configs retrained with seeds {f.get('seeds')} at the full budget "
            f"({f.get('epochs')} epochs) and ranked by {f.get('selection', '')}. Winner: sweep trial "
            f"{w.get('trial_id')}, config {f.get('best_config')}.")


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;color:#222;
 padding:0 16px;line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}td.l,th.l{text-align:left}
table.head td{text-align:left;white-space:normal}table.head td:first-child{font-weight:600;background:#fafafa}
.scroll{overflow-x:auto}.warn{background:#fff6d6;border:1px solid #e8c95a;padding:8px 14px;border-radius:4px}
.ok{background:#eaf6ea;border:1px solid #9fd19f;padding:8px 14px;border-radius:4px}
tr.best td{background:#eef6ff;font-weight:600}
figure{margin:10px 0 20px}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555;margin-top:4px}.muted{color:#777;font-size:13px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def render_html(doc: Document, plots: list[Plot]) -> str:
    """The whole self-contained HTML page (the PNGs of PLOTS embedded)."""
    from tune.analysis import header_rows

    name = _e(doc.experiment.name)
    head = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in header_rows(doc))
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mmtune report: {name}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>mmtune report: {name}</h1>",
             f"<p class='muted'>generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>mmtune report</code></p>",
             f"<table class='head'>{head}</table>", _html_warnings(doc), f"<h2>Top {doc.top_k} trials</h2>",
             _html_table(doc, doc.top), _html_final(doc), *[_html_figure(doc, p) for p in plots],
             f"<h2>All trials ({len(doc.trials)})</h2>", _html_table(doc, doc.all_trials), "</body></html>"]
    return "\n".join(parts)


def _html_warnings(doc: Document) -> str:
    if not doc.warnings:
        return "<h2>Warnings</h2><div class='ok'>None.</div>"
    items = "".join(f"<li>{_e(w)}</li>" for w in doc.warnings)
    return f"<h2>Warnings</h2><div class='warn'><ul>{items}</ul></div>"


def _html_table(doc: Document, trials: list[Trial]) -> str:
    from tune.analysis import trial_table

    if not trials:
        return "<p class='muted'>No trial has a finite value yet.</p>"
    cols, rows = trial_table(doc, trials)
    head = "".join(f"<th class='{'l' if c in ('trial', 'status') else ''}'>{_e(c).replace('_', '_<wbr>')}</th>"
                   for c in cols)
    body = []
    for t, row in zip(trials, rows):
        cells = "".join(f"<td class='{'l' if i in (1, 5) else ''}'>{_e(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr class='{'best' if t is doc.best else ''}'>{cells}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _html_final(doc: Document) -> str:
    if doc.final is None:
        return ""
    from tune.finalize import leaderboard_rows

    cols, rows = leaderboard_rows(doc.final)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr class='{}'>{}</tr>".format("best" if i == 0 else "", "".join(f"<td>{_e(c)}</td>" for c in r))
                   for i, r in enumerate(rows))
    return (f"<h2>Re-evaluation (mmtune finalize)</h2><p>{_e(_final_text(doc))}</p>"
            f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>")


def _html_figure(doc: Document, p: Plot) -> str:
    from tune.analysis import importance_text

    extra = ""
    if p.name == "importance":
        extra = f"<p>{_e(importance_text(doc))}</p>"
        if doc.importance.values:
            rows = "".join(f"<tr><td class='l'>{_e(k)}</td><td>{v:.3f}</td></tr>"
                           for k, v in doc.importance.values.items())
            extra += f"<table><tr><th class='l'>parameter</th><th>importance</th></tr>{rows}</table>"
    if p.path is None:  # the importance text already says why it has no figure
        why = "" if p.name == "importance" else "<p class='muted'>This figure could not be drawn (see the log).</p>"
        return f"<h2>{_e(p.title)}</h2>{extra}{why}"
    data = base64.b64encode(p.path.read_bytes()).decode("ascii")
    return (f"<h2>{_e(p.title)}</h2>{extra}<figure><img alt='{_e(p.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(p.caption)} <span class='muted'>({_e(FIG_DIR)}/{_e(p.path.name)})</span>"
            "</figcaption></figure>")


# ---------------------------------------------------------------- Markdown


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(cols: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]


def render_markdown(doc: Document, plots: list[Plot]) -> str:
    """The report as Markdown, with the figures of PLOTS linked from report/."""
    from tune.analysis import header_rows, importance_text, trial_table

    lines = [f"# mmtune report: {doc.experiment.name}", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in header_rows(doc)]
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in doc.warnings] or ["None."])
    lines += ["", f"## Top {doc.top_k} trials", ""]
    lines += _md_table(*trial_table(doc, doc.top)) if doc.top else ["No trial has a finite value yet."]
    if doc.final is not None:
        from tune.finalize import leaderboard_rows

        lines += ["", "## Re-evaluation (mmtune finalize)", "", _final_text(doc), ""]
        lines += _md_table(*leaderboard_rows(doc.final))
    for p in plots:
        lines += ["", f"## {p.title}", ""]
        if p.name == "importance":
            lines += [importance_text(doc), ""]
            if doc.importance.values:
                lines += _md_table(["parameter", "importance"],
                                   [[k, f"{v:.3f}"] for k, v in doc.importance.values.items()])
                lines += [""]
        if p.path is not None:
            lines += [f"![{p.title}]({FIG_DIR}/{p.path.name})", "", f"*{p.caption}*"]
    lines += ["", f"## All trials ({len(doc.trials)})", ""]
    lines += _md_table(*trial_table(doc, doc.all_trials))
    return "\n".join(lines) + "\n"
