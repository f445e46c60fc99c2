"""`mmtune report`: an HTML + Markdown report of an experiment (figures, importance, warnings), read from disk.

Works on a finished, running or interrupted sweep: it reads what `load_trials` finds and shows trials that
have not ended as "unfinished". matplotlib, Optuna and Ray are imported only when a report is written.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tune.errors import ResultsError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tune.results import Trial
    from tune.space import Param, SearchSpace

log = logging.getLogger(__name__)

FIG_DIR = "report"
FINISHED = ("completed", "early_stopped", "stopped")  # ended on their own or by ASHA; values are usable
BAD = ("failed", "nan", "infeasible")
STATUS_ORDER = ("completed", "early_stopped", "stopped", "unfinished", "nan", "infeasible", "failed")
STATUS_COLOR = {"completed": "#2ca02c", "early_stopped": "#17becf", "stopped": "#1f77b4", "unfinished": "#7f7f7f",
                "nan": "#ff7f0e", "infeasible": "#9467bd", "failed": "#d62728"}
STATUS_LABEL = {"stopped": "stopped (ASHA)", "early_stopped": "early stopped"}
MIN_IMPORTANCE_TRIALS = 10  # below this the fANOVA estimate is little more than noise
BAD_SHARE = 0.25
EVALUATOR = "Optuna fANOVA (FanovaImportanceEvaluator, seed=0)"


@dataclass
class Plot:
    """One figure of the report: its file, title and caption."""

    name: str
    title: str
    caption: str
    path: Path | None = None


@dataclass
class Ctx:
    """Everything read from the experiment folder, and what the report derives from it."""

    exp_dir: Path
    space: SearchSpace
    trials: list[Trial]  # in start order
    meta: dict[str, Any]
    top_k: int
    ranked: list[Trial] = field(default_factory=list)  # trials with a finite value, best first
    importance: dict[str, float] | None = None
    importance_note: str = ""
    importance_trials: int = 0
    warnings: list[str] = field(default_factory=list)
    figures: list[Plot] = field(default_factory=list)
    final: dict[str, Any] | None = None  # final/summary.json of `mmtune finalize`, when it ran

    @property
    def best(self) -> Trial | None:
        return self.ranked[0] if self.ranked else None

    @property
    def finished(self) -> bool:
        return bool(self.meta.get("finished"))


# ---------------------------------------------------------------- public API


def write_report(exp_dir: str | Path, top_k: int = 5) -> Path:
    """Write report.html (self-contained, images embedded as base64 PNG), report.md and report/*.png into EXP_DIR; return the html path."""
    if top_k < 1:
        raise ResultsError(f"--top-k must be >= 1, got {top_k}")
    _matplotlib()  # fail early and clearly when the extra is not installed
    ctx = _load(Path(exp_dir).resolve(), top_k)
    ctx.importance, ctx.importance_note, ctx.importance_trials = _importance(ctx)
    ctx.warnings = _warnings(ctx)
    _draw_figures(ctx)
    html_path = ctx.exp_dir / "report.html"
    _write_text(html_path, _html(ctx))
    _write_text(ctx.exp_dir / "report.md", _markdown(ctx))
    log.info("report of %s: %d trials, %d figures, %d warnings", ctx.exp_dir.name, len(ctx.trials),
             sum(f.path is not None for f in ctx.figures), len(ctx.warnings))
    return html_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `report` sub-command: `mmtune report results/<exp> [--top-k K]`."""
    r = sub.add_parser("report", help="HTML + Markdown report of an experiment (figures, importance, warnings)")
    r.add_argument("experiment", help="results/<experiment> (finished, running or interrupted)")
    r.add_argument("--top-k", type=_positive_int, default=5, help="trials to highlight and tabulate (default 5)")
    r.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of ARGS.experiment and print where it is."""
    from tune import storage

    with storage.synced(args.experiment, checkpoints=False) as exp_dir:  # the report reads results only
        path = write_report(exp_dir, getattr(args, "top_k", 5))
    print(f"report: {path}")
    print(f"markdown: {path.with_name('report.md')} (figures in {path.with_name(FIG_DIR)}/)")
    warnings = _read_warnings(path.with_name("report.md"))
    for w in warnings:
        print(f"warning: {w}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _read_warnings(md: Path) -> list[str]:
    """The warning lines of a written report.md (so the CLI prints what the report says)."""
    lines = md.read_text().splitlines()
    start = lines.index("## Warnings") if "## Warnings" in lines else len(lines)
    out = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("- "):
            out.append(line[2:].replace("`", ""))
    return out


# ---------------------------------------------------------------- reading


def _matplotlib() -> Any:
    """matplotlib with the Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise ResultsError("mmtune report needs matplotlib: pip install mmtune[report]") from None
    if "matplotlib.pyplot" not in sys.modules:  # never switch the backend under someone's open figures
        matplotlib.use("Agg")
    return matplotlib


def _load(exp_dir: Path, top_k: int) -> Ctx:
    """The experiment's space, metadata and trials (in start order), ranked by best value."""
    from tune.results import load_trials, space_of
    from tune.runner import read_meta

    space = space_of(exp_dir)
    trials = load_trials(exp_dir, space)
    if not trials:
        raise ResultsError(f"{exp_dir}: no trial has started yet; nothing to report")
    trials.sort(key=_start_key)
    ctx = Ctx(exp_dir, space, trials, read_meta(exp_dir), top_k)
    ctx.ranked = _rank(trials, space.mode)
    ctx.final = _final_summary(exp_dir)
    return ctx


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


def _start_time(t: Trial) -> float | None:
    """When the trial started: its first report's timestamp minus the time it had run by then."""
    if not t.history or "timestamp" not in t.history[0]:
        return None
    first = t.history[0]
    return float(first["timestamp"]) - float(first.get("time_total_s") or 0.0)


def _start_key(t: Trial) -> tuple[float, float, str]:
    """Sort key: start time; trials that reported nothing yet go last, by folder age."""
    start = _start_time(t)
    return (start if start is not None else math.inf, t.path.stat().st_mtime, t.trial_id)


def _rank(trials: list[Trial], mode: str) -> list[Trial]:
    """Trials with a finite best value, best first (ties: the earlier trial)."""
    scored = [t for t in trials if _finite(t.best_value)]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(scored, key=lambda t: sign * t.best_value)  # stable: start order breaks ties


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _counts(trials: list[Trial]) -> dict[str, int]:
    """Trials by status, in a fixed order."""
    counts = {s: sum(t.status == s for t in trials) for s in STATUS_ORDER}
    for t in trials:  # a status this report does not know yet still shows
        counts.setdefault(t.status, sum(u.status == t.status for u in trials))
    return {s: n for s, n in counts.items() if n}


# ---------------------------------------------------------------- importance and warnings


def _importance(ctx: Ctx) -> tuple[dict[str, float] | None, str, int]:
    """fANOVA importances from the finished trials, or None and the reason."""
    import optuna

    dists = ctx.space.distributions()
    frozen = []
    for t in ctx.trials:
        if t.status not in FINISHED or not _finite(t.best_value):
            continue
        params = {k: v for k, v in t.params.items() if k in dists}
        try:
            frozen.append(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                    value=float(t.best_value)))
        except ValueError as e:  # a value outside the recorded space
            log.warning("trial %s left out of the importance estimate: %s", t.trial_id, e)
    if len(frozen) < 2:
        why = f"not computed: {len(frozen)} finished trial(s) with a finite value; at least 2 needed"
        return None, why, len(frozen)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if ctx.space.mode == "max" else "minimize")
        study.add_trials(frozen)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as e:  # noqa: BLE001 - the report says why instead of failing
        return None, f"not computed: {type(e).__name__}: {e}", len(frozen)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: float(v) for k, v in imp.items()}, f"computed from {len(frozen)} finished trials", len(frozen)


def _warnings(ctx: Ctx) -> list[str]:
    """Everything a user should act on before trusting the result."""
    return [*_edge_warnings(ctx), *_failure_warnings(ctx), *_importance_warnings(ctx), *_progress_warnings(ctx)]


def edge_warning(param: Param, value: Any) -> str | None:
    """'widen P (best V at the low/high end of [low, high])' when VALUE sits on the edge of P's range."""
    side = param.on_edge(value)
    if side is None:
        return None
    return f"widen {param.name} (best {_fmt(value)} at the {side} end of [{_fmt(param.low)}, {_fmt(param.high)}])"


def _edge_warnings(ctx: Ctx) -> list[str]:
    if ctx.best is None:
        return []
    found = (edge_warning(p, ctx.best.params.get(p.name)) for p in ctx.space.params)
    return [w for w in found if w]


def _failure_warnings(ctx: Ctx) -> list[str]:
    ended = [t for t in ctx.trials if t.status != "unfinished"]
    bad = [t for t in ended if t.status in BAD]
    if not ended or len(bad) / len(ended) < BAD_SHARE:
        return []
    kinds = ", ".join(f"{n} {s}" for s, n in _counts(bad).items())
    return [f"{len(bad)} of {len(ended)} ended trials ({len(bad) / len(ended):.0%}) failed, diverged or were "
            f"infeasible ({kinds}); see the error column of trials.csv and narrow the space"]


def _importance_warnings(ctx: Ctx) -> list[str]:
    n = ctx.importance_trials
    if n >= MIN_IMPORTANCE_TRIALS:
        return []
    return [f"only {n} finished trial(s) with a finite value: the importance estimate needs about "
            f"{MIN_IMPORTANCE_TRIALS} or more, so treat it as rough"]


def _progress_warnings(ctx: Ctx) -> list[str]:
    if ctx.finished:
        return []
    running = sum(t.status == "unfinished" for t in ctx.trials)
    return [f"the sweep is not finished ({len(ctx.trials)} of {ctx.space.num_samples} trials started, {running} "
            f"unfinished): it is still running or was interrupted (continue it with `mmtune resume {ctx.exp_dir}`)"]


# ---------------------------------------------------------------- figures


def _draw_figures(ctx: Ctx) -> None:
    """Draw every figure into EXP_DIR/report/; a figure that cannot be drawn is logged and left out."""
    out = ctx.exp_dir / FIG_DIR
    out.mkdir(exist_ok=True)
    m = ctx.space.metric
    specs: list[tuple[str, str, str, Callable[[Ctx], Figure | None]]] = [
        ("history", "Optimization history", f"Best-epoch {m} of each trial in start order, and the best so far.",
         _fig_history),
        ("learning_curves", "Learning curves", f"{m} per epoch; the top {ctx.top_k} in colour, dashed lines at "
         "the ASHA rungs (where trials are compared and the weaker ones stopped).", _fig_curves),
        ("importance", "Hyperparameter importance", f"{EVALUATOR}: share of the variance of the best-epoch {m} "
         "explained by each parameter.", _fig_importance),
        ("parallel_coordinates", "Parallel coordinates", f"Each line a trial, coloured by its best {m}; axes "
         "scaled to the searched range (log axes for log parameters, categories by index).", _fig_parallel),
        ("slices", "Parameter slices", f"Best {m} against each parameter over its searched range; the star is "
         "the best trial.", _fig_slices),
        ("status", "Trials by status", "How the trials ended (stopped (ASHA): cut at a rung by the scheduler).",
         _fig_status),
    ]
    for name, title, caption, draw in specs:
        ctx.figures.append(_save(out, Plot(name, title, caption), draw, ctx))
    for stale in set(s[0] for s in specs) - {f.name for f in ctx.figures if f.path}:
        (out / f"{stale}.png").unlink(missing_ok=True)  # from an earlier report, no longer true


def _save(out: Path, plot: Plot, draw: Callable[[Ctx], Figure | None], ctx: Ctx) -> Plot:
    try:
        fig = draw(ctx)
    except Exception:  # noqa: BLE001 - one broken figure must not cost the whole report
        log.exception("figure %s could not be drawn", plot.name)
        return plot
    if fig is not None:
        plot.path = out / f"{plot.name}.png"
        fig.savefig(plot.path, dpi=100, bbox_inches="tight")
    return plot


def _new_figure(w: float, h: float) -> Figure:
    """A pyplot-free figure (no global state, nothing to close)."""
    _matplotlib()
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(w, h), layout="constrained")


def _fig_history(ctx: Ctx) -> Figure:
    """Best-epoch metric of each trial vs start order, with the best-so-far line."""
    fig = _new_figure(9, 4.2)
    ax = fig.add_subplot()
    best, xs, ys = None, [], []
    better = max if ctx.space.mode == "max" else min
    for i, t in enumerate(ctx.trials, 1):
        if _finite(t.best_value):
            ax.scatter(i, t.best_value, color=STATUS_COLOR.get(t.status, "k"), s=28, zorder=3)
            best = t.best_value if best is None else better(best, t.best_value)
        elif t.status in BAD:
            ax.scatter(i, 0.02, marker="x", color=STATUS_COLOR[t.status], transform=ax.get_xaxis_transform(), zorder=3)
        if best is not None:
            xs.append(i)
            ys.append(best)
    ax.step(xs, ys, where="post", color="#d62728", lw=1.6, label=f"best so far ({ctx.space.mode})")
    _status_legend(ax, {t.status for t in ctx.trials}, extra=True)
    ax.set(xlabel="trial (in start order)", ylabel=f"best {ctx.space.metric}", xlim=(0.3, len(ctx.trials) + 0.7))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return fig


def _status_legend(ax: Any, statuses: set[str], extra: bool = False) -> None:
    """A legend of status colours (plus the axes' own labelled artists when EXTRA)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="x" if s in BAD else "o", color=STATUS_COLOR.get(s, "k"),
                      label=STATUS_LABEL.get(s, s)) for s in STATUS_ORDER if s in statuses]
    if extra:
        handles = ax.get_legend_handles_labels()[0] + handles
    ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)


def _curve(t: Trial, metric: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["epoch"]), float(r[metric])) for r in t.history if "epoch" in r and _finite(r.get(metric))]
    return [p[0] for p in pts], [p[1] for p in pts]


def asha_rungs(space: SearchSpace) -> list[int]:
    """Epochs at which ASHA compares trials: grace_period * reduction_factor**k <= epochs."""
    rungs, k = [], 0
    while space.grace_period * space.reduction_factor ** k <= space.epochs:
        rungs.append(int(round(space.grace_period * space.reduction_factor ** k)))
        k += 1
    return rungs


def _fig_curves(ctx: Ctx) -> Figure:
    """Metric vs epoch for every trial, the top k in colour, ASHA rungs dashed."""
    from matplotlib import colormaps

    fig = _new_figure(9, 5)
    ax = fig.add_subplot()
    m = ctx.space.metric
    top = ctx.ranked[:ctx.top_k]
    for t in ctx.trials:
        if t not in top:
            x, y = _curve(t, m)
            ax.plot(x, y, color="0.6", lw=0.8, alpha=0.7, marker="." if len(x) == 1 else None)
    colors = colormaps["tab10"]
    for rank, t in reversed(list(enumerate(top, 1))):  # the best drawn last, on top
        x, y = _curve(t, m)
        ax.plot(x, y, color=colors(rank - 1), lw=2, marker="o", ms=3,
                label=f"#{rank} {t.trial_id} ({_value(t.best_value)} @ epoch {t.best_epoch})")
        ax.scatter([t.best_epoch], [t.best_value], s=70, facecolor="none", edgecolor=colors(rank - 1), zorder=4)
    for i, r in enumerate(asha_rungs(ctx.space)):
        ax.axvline(r, color="k", ls="--", lw=0.9, alpha=0.6, label="ASHA rung" if i == 0 else None)
    ax.set(xlabel="epoch", ylabel=m, xlim=(0.5, ctx.space.epochs + 0.5))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i] == "ASHA rung", labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="best", framealpha=0.85)
    return fig


def _unit(p: Param, value: Any) -> float | None:
    """VALUE on P's axis scaled to [0, 1] (log for log parameters, index for categories)."""
    if value is None:
        return None
    if p.kind == "categorical":
        idx = _choice_index(p, value)
        return None if idx is None else (idx / (len(p.choices) - 1) if len(p.choices) > 1 else 0.5)
    lo, hi, v = (math.log(x) for x in (p.low, p.high, value)) if p.log else (p.low, p.high, float(value))
    return min(1.0, max(0.0, (v - lo) / (hi - lo)))


def _choice_index(p: Param, value: Any) -> int | None:
    for i, c in enumerate(p.choices):
        if c == value or str(c) == str(value):
            return i
    return None


def _metric_colors(ctx: Ctx) -> tuple[Any, Any]:
    """A colormap where brighter is better (whatever the mode) and its normalisation over the values."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values = [t.best_value for t in ctx.ranked]
    lo, hi = min(values), max(values)
    cmap = colormaps["viridis" if ctx.space.mode == "max" else "viridis_r"]
    return cmap, Normalize(lo, hi if hi > lo else lo + 1e-9)


def _fig_parallel(ctx: Ctx) -> Figure | None:
    """Parallel coordinates of the searched parameters and the metric, coloured by the metric."""
    if not ctx.ranked:
        return _empty("no trial has a finite value yet")
    from matplotlib.cm import ScalarMappable

    params = list(ctx.space.params)
    n = len(params) + 1
    fig = _new_figure(max(8.0, 1.15 * n), 5.2)
    ax = fig.add_subplot()
    cmap, norm = _metric_colors(ctx)
    for t in reversed(ctx.ranked):  # worst first, so the best lines lie on top
        ys = [_unit(p, t.params.get(p.name)) for p in params] + [norm(t.best_value)]
        pts = [(x, y) for x, y in enumerate(ys) if y is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=cmap(norm(t.best_value)),
                lw=2.4 if t is ctx.best else 1.1, alpha=0.95 if t is ctx.best else 0.75)
    for x, p in enumerate(params):
        _axis_labels(ax, x, p)
    ax.vlines(n - 1, 0, 1, color="k", lw=0.8)
    _end_labels(ax, n - 1, norm.vmin, norm.vmax)
    ax.set_xticks(range(n), [p.name + (" (log)" if p.log else "") for p in params] + [f"best {ctx.space.metric}"],
                  rotation=30, ha="right", fontsize=9)
    ax.set(ylim=(-0.12, 1.12), xlim=(-0.3, n - 0.7), yticks=[])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {ctx.space.metric}", pad=0.01)
    return fig


def _axis_labels(ax: Any, x: int, p: Param) -> None:
    """One vertical axis with its range (or its categories) written beside it."""
    ax.vlines(x, 0, 1, color="k", lw=0.8)
    if p.kind == "categorical":
        for c in p.choices:
            ax.text(x + 0.04, _unit(p, c), str(c), fontsize=7, va="center", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
        return
    _end_labels(ax, x, p.low, p.high)


def _end_labels(ax: Any, x: float, low: float, high: float) -> None:
    """The range of one axis, written above and below it on a white patch."""
    box = dict(boxstyle="round,pad=0.15", fc="white", ec="0.8", lw=0.5)
    ax.text(x, 1.045, _fmt(high), ha="center", va="bottom", fontsize=7, bbox=box, zorder=5)
    ax.text(x, -0.045, _fmt(low), ha="center", va="top", fontsize=7, bbox=box, zorder=5)


def _fig_slices(ctx: Ctx) -> Figure:
    """Metric vs each parameter, one subplot per parameter."""
    params = list(ctx.space.params)
    ncols = min(4, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig = _new_figure(3.3 * ncols, 2.7 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, p in zip(axes.flat, params):
        _slice(ax, p, ctx)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(f"best {ctx.space.metric}")
    _status_legend(axes.flat[0], {t.status for t in ctx.ranked})
    return fig


def _slice(ax: Any, p: Param, ctx: Ctx) -> None:
    """One parameter's slice: every trial with a value, the best as a star."""
    for t in ctx.ranked:
        x = _slice_x(p, t.params.get(p.name), t.trial_id)
        if x is not None:
            ax.scatter(x, t.best_value, s=22, color=STATUS_COLOR.get(t.status, "k"), alpha=0.8, zorder=2)
    if ctx.best is not None and (bx := _slice_x(p, ctx.best.params.get(p.name), "")) is not None:
        ax.scatter(bx, ctx.best.best_value, marker="*", s=180, facecolor="none", edgecolor="#d62728", lw=1.4, zorder=3)
    if p.kind == "categorical":
        ax.set_xticks(range(len(p.choices)), [str(c) for c in p.choices])
        ax.set_xlim(-0.5, len(p.choices) - 0.5)
    else:
        if p.log:
            ax.set_xscale("log")
        pad = 0 if p.log else 0.03 * (p.high - p.low)
        ax.set_xlim(p.low / 1.1 if p.log else p.low - pad, p.high * 1.1 if p.log else p.high + pad)
        for edge in (p.low, p.high):
            ax.axvline(edge, color="0.7", lw=0.8, ls=":")
        if p.kind == "int" and not p.log:
            ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(p.name + (" (log)" if p.log else ""), fontsize=10)
    ax.grid(alpha=0.3)


def _slice_x(p: Param, value: Any, key: str) -> float | None:
    """Where VALUE goes on P's slice axis; categories are spread a little (deterministically) to show overlaps."""
    if value is None:
        return None
    if p.kind != "categorical":
        return float(value)
    idx = _choice_index(p, value)
    jitter = (sum(map(ord, key)) % 17 - 8) / 40 if key else 0.0
    return None if idx is None else idx + jitter


def _fig_status(ctx: Ctx) -> Figure:
    """Bar chart of the trials by status."""
    counts = _counts(ctx.trials)
    fig = _new_figure(6.5, 3.2)
    ax = fig.add_subplot()
    names = list(counts)
    bars = ax.bar([STATUS_LABEL.get(s, s) for s in names], [counts[s] for s in names],
                  color=[STATUS_COLOR.get(s, "k") for s in names])
    ax.bar_label(bars, padding=2, fontsize=9)
    ax.set(ylabel="trials", title=f"{len(ctx.trials)} of {ctx.space.num_samples} planned trials started")
    ax.set_ylim(0, max(counts.values()) * 1.18)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(axis="x", labelsize=9)
    return fig


def _fig_importance(ctx: Ctx) -> Figure | None:
    """Horizontal bars of the fANOVA importances (None when they could not be computed)."""
    if not ctx.importance:
        return None
    items = sorted(ctx.importance.items(), key=lambda kv: kv[1])
    fig = _new_figure(7, 0.38 * len(items) + 1.3)
    ax = fig.add_subplot()
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
    ax.bar_label(bars, labels=[f"{v:.3f}" for _, v in items], padding=3, fontsize=8)
    ax.set(xlabel="importance (share of variance)", title=f"fANOVA (seed 0), {ctx.importance_trials} trials",
           xlim=(0, max(v for _, v in items) * 1.2 or 1))
    return fig


def _empty(text: str) -> Figure:
    """A small figure that says why there is nothing to plot yet."""
    fig = _new_figure(6, 1.5)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="0.4")
    ax.set_axis_off()
    return fig


# ---------------------------------------------------------------- text


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _value(v: float | None) -> str:
    return f"{v:.4f}" if _finite(v) else "–"


def _header_rows(ctx: Ctx) -> list[tuple[str, str]]:
    """The header facts as (label, text) pairs, shared by HTML and Markdown."""
    s, best = ctx.space, ctx.best
    counts = ", ".join(f"{n} {STATUS_LABEL.get(k, k)}" for k, n in _counts(ctx.trials).items())
    rows = [("experiment", f"{ctx.exp_dir.name} ({ctx.exp_dir})"),
            ("search space", f"{ctx.meta.get('space_file', s.source)}"
                             + (f" — {s.raw['description']}" if s.raw.get("description") else "")),
            ("metric", f"{s.metric} ({s.mode}imized; each trial's best epoch)"),
            ("state", f"{'finished' if ctx.finished else 'NOT finished (running or interrupted)'}; "
                      f"{len(ctx.trials)} of {s.num_samples} trials started{_wall_time(ctx)}"),
            ("trials by status", counts),
            ("best value", f"{_value(best.best_value)} (trial {best.trial_id}, epoch {best.best_epoch})" if best
             else "none yet (no trial has a finite value)"),
            ("best config", _best_config(ctx)),
            ("search", f"Optuna TPE (seed {s.seed}), ASHA grace {s.grace_period}, reduction {s.reduction_factor:g}, "
                       f"{s.epochs} epochs max"),
            ("data", str(ctx.meta.get("data", "?")))]
    return rows


def _wall_time(ctx: Ctx) -> str:
    start = ctx.meta.get("started")
    if not start:
        return ""
    end = ctx.meta.get("ended") if ctx.finished else None
    minutes = ((end or time.time()) - start) / 60
    return f"; {minutes:.1f} min {'wall time' if end else 'since start'}" if minutes >= 0 else ""


def _best_config(ctx: Ctx) -> str:
    """Where best_config.yaml is, and whether it still names the current best trial."""
    summary_path = ctx.exp_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    path = Path(summary.get("best_config") or ctx.exp_dir / "best_config.yaml")
    if not path.is_file():
        return f"not written yet (run `mmtune export {ctx.exp_dir}`)"
    if ctx.best is not None and summary.get("best_trial") not in (None, ctx.best.trial_id):
        return f"{path} (stale: written for trial {summary['best_trial']}; run `mmtune export {ctx.exp_dir}`)"
    return str(path)


def _table(ctx: Ctx, trials: list[Trial], ranks: dict[str, int]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of a trial table (shared by HTML and Markdown)."""
    cols = ["rank", "trial", f"best {ctx.space.metric}", "best epoch", "epochs run", "status", *ctx.space.names]
    rows = [[str(ranks.get(t.trial_id, "–")), t.trial_id, _value(t.best_value),
             "–" if t.best_epoch is None else str(t.best_epoch), str(t.epochs), STATUS_LABEL.get(t.status, t.status),
             *[_fmt(t.params.get(n)) for n in ctx.space.names]] for t in trials]
    return cols, rows


def _ranks(ctx: Ctx) -> dict[str, int]:
    return {t.trial_id: i for i, t in enumerate(ctx.ranked, 1)}


def _all_trials(ctx: Ctx) -> list[Trial]:
    """Every trial: ranked ones first, then those without a value, in start order."""
    return ctx.ranked + [t for t in ctx.trials if t not in ctx.ranked]


def _importance_text(ctx: Ctx) -> str:
    base = (f"Evaluator: {EVALUATOR}, on an in-memory Optuna study of the finished trials (completed, early "
            f"stopped, stopped by ASHA) with a finite value; {ctx.importance_note}.")
    if ctx.importance:
        base += (" Values are each trial's best epoch, and ASHA-stopped trials ran fewer epochs, so settings "
                 "that learn fast can look more important than they are.")
    return base


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


def _html(ctx: Ctx) -> str:
    """The whole self-contained HTML page."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mmtune report: "
             f"{_e(ctx.exp_dir.name)}</title><style>{CSS}</style></head><body>",
             f"<h1>mmtune report: {_e(ctx.exp_dir.name)}</h1>",
             f"<p class='muted'>generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by <code>mmtune report</code></p>",
             _html_header(ctx), _html_warnings(ctx), f"<h2>Top {ctx.top_k} trials</h2>",
             _html_table(ctx, ctx.ranked[:ctx.top_k]), _html_final(ctx), *[_html_figure(ctx, f) for f in ctx.figures],
             f"<h2>All trials ({len(ctx.trials)})</h2>", _html_table(ctx, _all_trials(ctx)), "</body></html>"]
    return "\n".join(parts)


def _html_header(ctx: Ctx) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in _header_rows(ctx))
    return f"<table class='head'>{rows}</table>"


def _html_warnings(ctx: Ctx) -> str:
    if not ctx.warnings:
        return "<h2>Warnings</h2><div class='ok'>None.</div>"
    items = "".join(f"<li>{_e(w)}</li>" for w in ctx.warnings)
    return f"<h2>Warnings</h2><div class='warn'><ul>{items}</ul></div>"


def _html_table(ctx: Ctx, trials: list[Trial]) -> str:
    if not trials:
        return "<p class='muted'>No trial has a finite value yet.</p>"
    cols, rows = _table(ctx, trials, _ranks(ctx))
    head = "".join(f"<th class='{'l' if c in ('trial', 'status') else ''}'>{_e(c).replace('_', '_<wbr>')}</th>"
                   for c in cols)
    body = []
    for t, row in zip(trials, rows):
        cells = "".join(f"<td class='{'l' if i in (1, 5) else ''}'>{_e(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr class='{'best' if t is ctx.best else ''}'>{cells}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _final_text(ctx: Ctx) -> str:
    """What the re-evaluation did and which config won."""
    f = ctx.final or {}
    w = f.get("winner", {})
    return (f"The top {f.get('top_k')} configs retrained with seeds {f.get('seeds')} at the full budget "
            f"({f.get('epochs')} epochs) and ranked by {f.get('selection', '')}. Winner: sweep trial "
            f"{w.get('trial_id')}, config {f.get('best_config')}.")


def _html_final(ctx: Ctx) -> str:
    if ctx.final is None:
        return ""
    from tune.finalize import leaderboard_rows

    cols, rows = leaderboard_rows(ctx.final)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr class='{}'>{}</tr>".format("best" if i == 0 else "", "".join(f"<td>{_e(c)}</td>" for c in r))
                   for i, r in enumerate(rows))
    return (f"<h2>Re-evaluation (mmtune finalize)</h2><p>{_e(_final_text(ctx))}</p>"
            f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>")


def _html_figure(ctx: Ctx, f: Plot) -> str:
    extra = f"<p>{_e(_importance_text(ctx))}</p>" + _html_importance_table(ctx) if f.name == "importance" else ""
    if f.path is None:
        why = "" if f.name == "importance" else "<p class='muted'>This figure could not be drawn (see the log).</p>"
        return f"<h2>{_e(f.title)}</h2>{extra}{why}"
    data = base64.b64encode(f.path.read_bytes()).decode("ascii")
    return (f"<h2>{_e(f.title)}</h2>{extra}<figure><img alt='{_e(f.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(f.caption)} <span class='muted'>({_e(FIG_DIR)}/{_e(f.path.name)})</span>"
            "</figcaption></figure>")


def _html_importance_table(ctx: Ctx) -> str:
    if not ctx.importance:
        return ""
    rows = "".join(f"<tr><td class='l'>{_e(k)}</td><td>{v:.3f}</td></tr>" for k, v in ctx.importance.items())
    return f"<table><tr><th class='l'>parameter</th><th>importance</th></tr>{rows}</table>"


# ---------------------------------------------------------------- Markdown


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]


def _markdown(ctx: Ctx) -> str:
    """The report as Markdown, with the figures linked from report/."""
    lines = [f"# mmtune report: {ctx.exp_dir.name}", ""]
    lines += [f"- **{k}**: {_md_cell(v)}" for k, v in _header_rows(ctx)]
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in ctx.warnings] or ["None."])
    lines += ["", f"## Top {ctx.top_k} trials", ""]
    top = ctx.ranked[:ctx.top_k]
    lines += _md_table(*_table(ctx, top, _ranks(ctx))) if top else ["No trial has a finite value yet."]
    if ctx.final is not None:
        from tune.finalize import leaderboard_rows

        lines += ["", "## Re-evaluation (mmtune finalize)", "", _final_text(ctx), ""]
        lines += _md_table(*leaderboard_rows(ctx.final))
    for f in ctx.figures:
        lines += ["", f"## {f.title}", ""]
        if f.name == "importance":
            lines += [_importance_text(ctx), ""]
            if ctx.importance:
                lines += _md_table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in ctx.importance.items()])
                lines += [""]
        if f.path is not None:
            lines += [f"![{f.title}]({FIG_DIR}/{f.path.name})", "", f"*{f.caption}*"]
    lines += ["", f"## All trials ({len(ctx.trials)})", ""]
    lines += _md_table(*_table(ctx, _all_trials(ctx), _ranks(ctx)))
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    """Write atomically, so a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
