"""The report's figures: one function per figure, each returning a pyplot-free matplotlib Figure (or None).

pyplot is never imported: a Figure built directly holds no global state, so nothing needs closing and no
backend is switched under a caller's open figures. matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from model.status import TrialStatus
from tune.analysis import EVALUATOR, Document, Importance, asha_rungs, finite, fmt, fmt_value, status_counts
from tune.errors import ResultsError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tune.experiment import Experiment, Trial
    from tune.space import Param

log = logging.getLogger(__name__)

S = TrialStatus
STATUS_COLOR = {S.RUNNING: "#aec7e8", S.COMPLETED: "#2ca02c", S.EARLY_STOPPED: "#17becf", S.STOPPED: "#bcbd22",
                S.PRUNED: "#1f77b4", S.NAN: "#ff7f0e", S.INFEASIBLE: "#9467bd", S.FAILED: "#d62728",
                S.UNFINISHED: "#7f7f7f"}


@dataclass
class Plot:
    """One figure of the report: its file name, title and caption, and where it was saved (None: not drawn)."""

    name: str
    title: str
    caption: str
    path: Path | None = None


def require_matplotlib() -> Any:
    """matplotlib with the Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise ResultsError("mmtune report needs matplotlib: pip install mmtune[report]") from None
    if "matplotlib.pyplot" not in sys.modules:  # never switch the backend under someone's open figures
        matplotlib.use("Agg")
    return matplotlib


def specs(doc: Document) -> list[tuple[Plot, Callable[[Document], Figure | None]]]:
    """Every figure of DOC's report, in order: what it is called and shows, and how to draw it."""
    m = doc.space.metric
    exp = doc.experiment
    pruned = sum(t.status is TrialStatus.PRUNED for t in exp.ranked)
    full = (f"{len(exp.full_budget)} of {len(exp.ranked)} trials with a value; {pruned} pruned by ASHA left out, "
            "their values come from fewer epochs")
    return [
        (Plot("history", "Optimization history", f"Best-epoch {m} of each trial in start order, and the best so "
              "far."), lambda d: history(d.experiment)),
        (Plot("learning_curves", "Learning curves", f"{m} per epoch; the top {doc.top_k} in colour, dashed lines "
              "at the ASHA rungs (where trials are compared and the weaker ones pruned)."),
         lambda d: learning_curves(d.experiment, d.top_k)),
        (Plot("importance", "Hyperparameter importance", f"{EVALUATOR}: share of the variance of the best-epoch "
              f"{m} explained by each parameter."), lambda d: importance(d.importance)),
        (Plot("parallel_coordinates", "Parallel coordinates", f"Each line a full-budget trial ({full}), coloured by "
              f"its best {m}; axes scaled to the searched range (log axes for log parameters, categories by index)."),
         lambda d: parallel_coordinates(d.experiment)),
        (Plot("slices", "Parameter slices", f"Best {m} of each full-budget trial ({full}) against each parameter "
              "over its searched range; the star is the best of them."), lambda d: slices(d.experiment)),
        (Plot("status", "Trials by status", "How the trials ended (pruned (ASHA): cut at a rung by the scheduler; "
              "stopped: by a training callback)."), lambda d: status(d.experiment)),
    ]


def draw_all(doc: Document, out: Path) -> list[Plot]:
    """Draw every figure into OUT/<name>.png; one that cannot be drawn is logged and has no path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for plot, draw in specs(doc):
        try:
            fig = draw(doc)
        except Exception:  # noqa: BLE001 - one broken figure must not cost the whole report
            log.exception("figure %s could not be drawn", plot.name)
            fig = None
        if fig is not None:
            plot.path = out / f"{plot.name}.png"
            fig.savefig(plot.path, dpi=100, bbox_inches="tight")
        else:
            (out / f"{plot.name}.png").unlink(missing_ok=True)  # from an earlier report, no longer true
        plots.append(plot)
    return plots


def _new_figure(w: float, h: float) -> Figure:
    """A pyplot-free figure (no global state, nothing to close)."""
    require_matplotlib()
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(w, h), layout="constrained")


def empty(text: str) -> Figure:
    """A small figure that says why there is nothing to plot yet."""
    fig = _new_figure(6, 1.5)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="0.4")
    ax.set_axis_off()
    return fig


def _color(s: TrialStatus) -> str:
    return STATUS_COLOR.get(s, "k")


def _status_legend(ax: Any, statuses: set[TrialStatus], extra: bool = False) -> None:
    """A legend of status colours (plus the axes' own labelled artists when EXTRA)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="x" if s.failed else "o", color=_color(s), label=s.label)
               for s in TrialStatus if s in statuses]
    if extra:
        handles = ax.get_legend_handles_labels()[0] + handles
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.85)


# ---------------------------------------------------------------- the figures


def history(exp: Experiment) -> Figure:
    """Best-epoch metric of each trial vs start order, with the best-so-far line; failed trials as crosses."""
    fig = _new_figure(9, 4.2)
    ax = fig.add_subplot()
    best, xs, ys = None, [], []
    better = max if exp.space.mode == "max" else min
    for i, t in enumerate(exp.trials, 1):
        if finite(t.best_value):
            ax.scatter(i, t.best_value, color=_color(t.status), s=28, zorder=3)
            best = t.best_value if best is None else better(best, t.best_value)
        elif t.status.failed:
            ax.scatter(i, 0.02, marker="x", color=_color(t.status), transform=ax.get_xaxis_transform(), zorder=3)
        if best is not None:
            xs.append(i)
            ys.append(best)
    ax.step(xs, ys, where="post", color="#d62728", lw=1.6, label=f"best so far ({exp.space.mode})")
    _status_legend(ax, {t.status for t in exp.trials}, extra=True)
    ax.set(xlabel="trial (in start order)", ylabel=f"best {exp.space.metric}", xlim=(0.3, len(exp.trials) + 0.7))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return fig


def _curve(t: Trial, metric: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["epoch"]), float(r[metric])) for r in t.history if "epoch" in r and finite(r.get(metric))]
    return [p[0] for p in pts], [p[1] for p in pts]


def learning_curves(exp: Experiment, top_k: int = 5) -> Figure:
    """Metric vs epoch for every trial, the top TOP_K in colour, ASHA rungs dashed."""
    from matplotlib import colormaps

    fig = _new_figure(9, 5)
    ax = fig.add_subplot()
    m = exp.space.metric
    top = exp.ranked[:top_k]
    top_ids = {t.trial_id for t in top}
    for t in exp.trials:
        if t.trial_id not in top_ids:
            x, y = _curve(t, m)
            ax.plot(x, y, color="0.6", lw=0.8, alpha=0.7, marker="." if len(x) == 1 else None)
    colors = colormaps["tab10"]
    for rank, t in reversed(list(enumerate(top, 1))):  # the best drawn last, on top
        x, y = _curve(t, m)
        ax.plot(x, y, color=colors(rank - 1), lw=2, marker="o", ms=3,
                label=f"#{rank} {t.trial_id} ({fmt_value(t.best_value)} @ epoch {t.best_epoch})")
        ax.scatter([t.best_epoch], [t.best_value], s=70, facecolor="none", edgecolor=colors(rank - 1), zorder=4)
    for i, r in enumerate(asha_rungs(exp.space)):
        ax.axvline(r, color="k", ls="--", lw=0.9, alpha=0.6, label="ASHA rung" if i == 0 else None)
    ax.set(xlabel="epoch", ylabel=m, xlim=(0.5, exp.space.epochs + 0.5))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i] == "ASHA rung", labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, loc="best", framealpha=0.85)
    return fig


def importance(imp: Importance) -> Figure | None:
    """Horizontal bars of the fANOVA importances (None when they could not be computed)."""
    if not imp.values:
        return None
    items = sorted(imp.values.items(), key=lambda kv: kv[1])
    fig = _new_figure(7, 0.38 * len(items) + 1.3)
    ax = fig.add_subplot()
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color="#1f77b4")
    ax.bar_label(bars, labels=[f"{v:.3f}" for _, v in items], padding=3, fontsize=8)
    ax.set(xlabel="importance (share of variance)", title=f"fANOVA (seed 0), {imp.trials} trials",
           xlim=(0, max(v for _, v in items) * 1.2 or 1))
    return fig


def _choice_index(p: Param, value: Any) -> int | None:
    for i, c in enumerate(p.choices):
        if c == value or str(c) == str(value):  # JSON may have turned a choice into another type
            return i
    return None


def _unit(p: Param, value: Any) -> float | None:
    """VALUE on P's axis scaled to [0, 1] (log for log parameters, index for categories)."""
    if value is None:
        return None
    if p.kind == "categorical":
        idx = _choice_index(p, value)
        return None if idx is None else (idx / (len(p.choices) - 1) if len(p.choices) > 1 else 0.5)
    lo, hi, v = (math.log(x) for x in (p.low, p.high, value)) if p.log else (p.low, p.high, float(value))
    return min(1.0, max(0.0, (v - lo) / (hi - lo)))


def _metric_colors(exp: Experiment) -> tuple[Any, Any]:
    """A colormap where brighter is better (whatever the mode) and its normalisation over the values."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values = [t.best_value for t in exp.full_budget]
    lo, hi = min(values), max(values)
    cmap = colormaps["viridis" if exp.space.mode == "max" else "viridis_r"]
    return cmap, Normalize(lo, hi if hi > lo else lo + 1e-9)


def parallel_coordinates(exp: Experiment) -> Figure:
    """Parallel coordinates of the full-budget trials' parameters and metric, coloured by the metric."""
    if not exp.full_budget:
        return empty("no trial has run its full budget with a finite value yet")
    from matplotlib.cm import ScalarMappable

    params = list(exp.space.params)
    n = len(params) + 1
    fig = _new_figure(max(8.0, 1.15 * n), 5.2)
    ax = fig.add_subplot()
    cmap, norm = _metric_colors(exp)
    best = exp.full_budget[0]
    for t in reversed(exp.full_budget):  # worst first, so the best lines lie on top
        ys = [_unit(p, t.params.get(p.name)) for p in params] + [norm(t.best_value)]
        pts = [(x, y) for x, y in enumerate(ys) if y is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=cmap(norm(t.best_value)),
                lw=2.4 if t is best else 1.1, alpha=0.95 if t is best else 0.75)
    for x, p in enumerate(params):
        _axis_labels(ax, x, p)
    ax.vlines(n - 1, 0, 1, color="k", lw=0.8)
    _end_labels(ax, n - 1, norm.vmin, norm.vmax)
    ax.set_xticks(range(n), [p.name + (" (log)" if p.log else "") for p in params] + [f"best {exp.space.metric}"],
                  rotation=30, ha="right", fontsize=9)
    ax.set(ylim=(-0.12, 1.12), xlim=(-0.3, n - 0.7), yticks=[])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"best {exp.space.metric}", pad=0.01)
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
    ax.text(x, 1.045, fmt(high), ha="center", va="bottom", fontsize=7, bbox=box, zorder=5)
    ax.text(x, -0.045, fmt(low), ha="center", va="top", fontsize=7, bbox=box, zorder=5)


def slices(exp: Experiment) -> Figure:
    """Metric vs each parameter, one subplot per parameter."""
    params = list(exp.space.params)
    ncols = min(4, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig = _new_figure(3.3 * ncols, 2.7 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax, p in zip(axes.flat, params):
        _slice(ax, p, exp)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(f"best {exp.space.metric}")
    _status_legend(axes.flat[0], {t.status for t in exp.full_budget})
    return fig


def _slice(ax: Any, p: Param, exp: Experiment) -> None:
    """One parameter's slice: every full-budget trial, the best as a star."""
    for t in exp.full_budget:
        x = _slice_x(p, t.params.get(p.name), t.trial_id)
        if x is not None:
            ax.scatter(x, t.best_value, s=22, color=_color(t.status), alpha=0.8, zorder=2)
    best = exp.full_budget[0] if exp.full_budget else None
    if best is not None and (bx := _slice_x(p, best.params.get(p.name), "")) is not None:
        ax.scatter(bx, best.best_value, marker="*", s=180, facecolor="none", edgecolor="#d62728", lw=1.4, zorder=3)
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


def status(exp: Experiment) -> Figure:
    """Bar chart of the trials by status."""
    counts = status_counts(exp.trials)
    if not counts:
        return empty("no trial has started yet")
    fig = _new_figure(6.5, 3.2)
    ax = fig.add_subplot()
    bars = ax.bar([s.label for s in counts], list(counts.values()), color=[_color(s) for s in counts])
    ax.bar_label(bars, padding=2, fontsize=9)
    ax.set(ylabel="trials", title=f"{len(exp.trials)} of {exp.space.num_samples} planned trials started")
    ax.set_ylim(0, max(counts.values()) * 1.18)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.tick_params(axis="x", labelsize=9)
    return fig
