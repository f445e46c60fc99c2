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

from mmtune.data.io import atomic_file
from mmtune.tune.errors import ResultsError

if TYPE_CHECKING:
    from mmtune.tune.analysis import Document
    from mmtune.tune.experiment import Trial
    from mmtune.tune.figures import Plot

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
    from mmtune.tune import figures
    from mmtune.tune.analysis import analyze
    from mmtune.tune.experiment import Experiment

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
    from mmtune.tune import storage

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
    from mmtune.tune.finalize import FINAL_DIR

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


# ---------------------------------------------------------------- the content, once for both formats


@dataclass(frozen=True)
class Table:
    """A table of the report; row BEST (if any) is the best trial or config."""

    cols: list[str]
    rows: list[list[Any]]
    best: int | None = None


def sections(doc: Document, plots: list[Plot]) -> list[tuple[str, list[Any]]]:
    """The report after its header: (title, blocks) per section, rendered alike to HTML and Markdown; a block is
    a paragraph (str), a list (the warnings), a Table or a figure (Plot)."""
    from mmtune.tune.analysis import importance_text, trial_table

    def trials(ts: list[Trial]) -> list[Any]:
        return [Table(*trial_table(doc, ts), 0 if doc.best else None)] if ts else ["No trial has a finite value yet."]

    out = [("Warnings", [doc.warnings] if doc.warnings else ["None."]), (f"Top {doc.top_k} trials", trials(doc.top))]
    if doc.final is not None:
        from mmtune.tune.finalize import leaderboard_rows

        out.append(("Re-evaluation (mmtune finalize)", [_final_text(doc), Table(*leaderboard_rows(doc.final), 0)]))
    out += [(p.title, [importance_text(doc)] * (p.name == "importance") + [p]) for p in plots]
    return out + [(f"All trials ({len(doc.trials)})", trials(doc.all_trials))]


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;color:#222;
 padding:0 16px;line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}
table.head td{white-space:normal}table.head td:first-child{font-weight:600;background:#fafafa}
.scroll{overflow-x:auto}ul.warn{background:#fff6d6;border:1px solid #e8c95a;padding:8px 30px;border-radius:4px}
tr.best td{background:#eef6ff;font-weight:600}
figure{margin:10px 0 20px}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555;margin-top:4px}.muted{color:#777;font-size:13px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def render_html(doc: Document, plots: list[Plot]) -> str:
    """The whole self-contained HTML page (the PNGs of PLOTS embedded)."""
    from mmtune.tune.analysis import header_rows

    name = _e(doc.experiment.name)
    head = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in header_rows(doc))
    body = [f"<h2>{_e(title)}</h2>" + "".join(map(_html_block, blocks)) for title, blocks in sections(doc, plots)]
    return "\n".join([f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mmtune report: {name}"
                      f"</title><style>{CSS}</style></head><body>", f"<h1>mmtune report: {name}</h1>",
                      f"<p class='muted'>generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>mmtune report"
                      f"</code></p>", f"<table class='head'>{head}</table>", *body, "</body></html>"])


def _html_block(b: Any) -> str:
    """One block as HTML."""
    if isinstance(b, str):
        return f"<p>{_e(b)}</p>"
    if isinstance(b, list):
        return "<ul class='warn'>" + "".join(f"<li>{_e(w)}</li>" for w in b) + "</ul>"
    if isinstance(b, Table):
        rows = "".join(f"<tr class='{'best' if i == b.best else ''}'>" + "".join(f"<td>{_e(c)}</td>" for c in r)
                       + "</tr>" for i, r in enumerate(b.rows))
        head = "".join(f"<th>{_e(c).replace('_', '_<wbr>')}</th>" for c in b.cols)
        return f"<div class='scroll'><table><tr>{head}</tr>{rows}</table></div>"
    if b.path is None:  # the importance text already says why it has no figure
        return "" if b.name == "importance" else "<p class='muted'>This figure could not be drawn (see the log).</p>"
    data = base64.b64encode(b.path.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{_e(b.title)}' src='data:image/png;base64,{data}'><figcaption>{_e(b.caption)} "
            f"<span class='muted'>({_e(FIG_DIR)}/{_e(b.path.name)})</span></figcaption></figure>")


# ---------------------------------------------------------------- Markdown


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document, plots: list[Plot]) -> str:
    """The report as Markdown, with the figures of PLOTS linked from report/."""
    from mmtune.tune.analysis import header_rows

    lines = [f"# mmtune report: {doc.experiment.name}", ""] + [f"- **{k}**: {_md_cell(v)}" for k, v in header_rows(doc)]
    for title, blocks in sections(doc, plots):
        lines += ["", f"## {title}"]
        for b in blocks:
            lines += [""] + _md_block(b)
    return "\n".join(lines) + "\n"


def _md_block(b: Any) -> list[str]:
    """One block as Markdown lines."""
    if isinstance(b, str):
        return [b]
    if isinstance(b, list):
        return [f"- {w}" for w in b]
    if isinstance(b, Table):
        rows = ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in [b.cols, *b.rows]]
        return rows[:1] + ["|" + "---|" * len(b.cols)] + rows[1:]
    return [] if b.path is None else [f"![{b.title}]({FIG_DIR}/{b.path.name})", "", f"*{b.caption}*"]
