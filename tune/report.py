"""`mmtune report`: report.md, its figures in report/*.png, and report.html, one self-contained page.

Works on a finished, running or interrupted sweep. The content comes from `tune.analysis`, the figures from
`tune.figures`; report.html is rendered from the Markdown by Python-Markdown. Heavy imports wait for a report.
"""
from __future__ import annotations

import argparse
import base64
import html
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmtune.data.io import write_text
from mmtune.tune import figures, storage
from mmtune.tune.analysis import Document, analyze, header_rows, importance_text, trial_table
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import Experiment
from mmtune.tune.leaderboard import leaderboard_rows, winner_lines

if TYPE_CHECKING:
    from mmtune.tune.experiment import Trial
    from mmtune.tune.figures import Plot

log = logging.getLogger(__name__)

FIG_DIR = "report"
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;color:#222;
 padding:0 16px;line-height:1.4}
h1{font-size:24px}h2{font-size:19px;margin-top:30px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;white-space:nowrap}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee}em{color:#555;font-size:13px}tr:has(strong) td{background:#eef6ff}
"""


@dataclass(frozen=True)
class ReportResult:
    """What `write_report` wrote, and the warnings the report lists."""

    html: Path
    markdown: Path
    warnings: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)  # the PNGs drawn, in report order


def write_report(exp_dir: str | Path, top_k: int = 5) -> ReportResult:
    """Write report.md, report/*.png and report.html (self-contained: the PNGs embedded) into EXP_DIR."""
    if top_k < 1:
        raise ResultsError(f"--top-k must be >= 1, got {top_k}")
    figures.require_extra()  # fail early and clearly when the extra is not installed
    exp = Experiment.open(exp_dir)
    doc = analyze(exp, top_k)
    plots = figures.draw_all(doc, exp.path / FIG_DIR)
    result = ReportResult(exp.path / "report.html", exp.path / "report.md", list(doc.warnings),
                          [p.path for p in plots if p.path is not None])
    text = render_markdown(doc, plots)
    write_text(text, result.markdown)  # atomic: a reader never sees half a report
    write_text(render_html(text, f"mmtune report: {exp.name}", exp.path), result.html)
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
    with storage.synced(args.experiment, checkpoints=False) as exp_dir:  # the report reads results only
        result = write_report(exp_dir, getattr(args, "top_k", 5))
    print(f"report: {result.html}")
    print(f"markdown: {result.markdown} (figures in {result.html.with_name(FIG_DIR)}/)")
    for w in result.warnings:
        print(f"warning: {w.replace('`', '')}")  # the backticks are Markdown, not part of the command
    return 0


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def render_markdown(doc: Document, plots: list[Plot]) -> str:
    """The report as Markdown, the figures of PLOTS linked from report/."""
    def trials(ts: list[Trial]) -> str:
        return table(*trial_table(doc, ts), best=0 if doc.experiment.ranked else None) if ts else \
            "No trial has a finite value yet."

    out = [f"# mmtune report: {doc.experiment.name}", "", *(f"- **{k}**: {_cell(v)}" for k, v in header_rows(doc)),
           "", f"*generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `mmtune report`*",
           *_section("Warnings", "\n".join(f"- {w}" for w in doc.warnings) or "None."),
           *_section(f"Top {doc.top_k} trials", trials(doc.top))]
    if (final := doc.experiment.final) is not None:
        out += _section("Re-evaluation (mmtune finalize)", *winner_lines(final),
                        table(*leaderboard_rows(final), best=0))
    for p in plots:
        out += _section(p.title, *[importance_text(doc)] * (p.name == "importance"), _figure(p))
    return "\n".join(out + _section(f"All trials ({len(doc.experiment.trials)})", trials(doc.all_trials))) + "\n"


def _section(title: str, *blocks: str) -> list[str]:
    return ["", f"## {title}"] + [line for b in blocks if b for line in ("", b)]


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def table(cols: list[str], rows: list[list[Any]], best: int | None = None) -> str:
    """A Markdown table; the first cell of row BEST (the best trial or config) in bold."""
    lines = ["| " + " | ".join(map(_cell, [f"**{r[0]}**", *r[1:]] if i == best else r)) + " |"
             for i, r in enumerate([cols, *rows], -1)]
    return "\n".join([lines[0], "|" + "---|" * len(cols), *lines[1:]])


def _figure(p: Plot) -> str:
    if p.path is None:  # the importance text already says why it has no figure
        return "" if p.name == "importance" else "*This figure could not be drawn (see the log).*"
    return f"![{p.title}]({FIG_DIR}/{p.path.name})\n\n*{p.caption} ({FIG_DIR}/{p.path.name})*"


def render_html(text: str, title: str, root: Path) -> str:
    """The page of Markdown TEXT (Python-Markdown, raw HTML off), each report/*.png under ROOT embedded."""
    import markdown

    conv = markdown.Markdown(extensions=["tables"], output_format="html")
    conv.preprocessors.deregister("html_block")  # text from the experiment (names, a space's description) stays text
    conv.inlinePatterns.deregister("html")
    body = re.sub(rf'src="({FIG_DIR}/[^"/]+\.png)"', lambda m: 'src="data:image/png;base64,'
                  + base64.b64encode((root / m[1]).read_bytes()).decode("ascii") + '"', conv.convert(text))
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
