"""The report's figures: Optuna's matplotlib plots of the sweep's study, and the learning curves Optuna lacks.

Optuna's plots draw from `Document.study` (`tune.analysis.study_of`); importance, parallel coordinates, slices
and contour from its full-budget (COMPLETE) trials only. matplotlib and Optuna are imported only when drawing.
"""
from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mmtune.tune.analysis import EVALUATOR, Document, evaluator, fmt_value, optuna_quiet, state_counts
from mmtune.tune.errors import ResultsError

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

    from mmtune.tune.experiment import Experiment

log = logging.getLogger(__name__)

CONTOUR = 4  # parameters in the contour grid at most: it grows as n², and 4 x 4 panels still read


@dataclass
class Plot:
    """One figure of the report: its file name, title and caption, and where it was saved (None: not drawn)."""

    name: str
    title: str
    caption: str
    path: Path | None = None


def require_extra() -> None:
    """matplotlib (its Agg backend) and Markdown, or a clear error naming the extra to install."""
    try:
        import markdown  # noqa: F401 - report.html is rendered from report.md
        import matplotlib
    except ImportError as e:
        raise ResultsError(f"mmtune report needs {e.name}: pip install mmtune[report]") from None
    if "matplotlib.pyplot" not in sys.modules:  # never switch the backend under someone's open figures
        matplotlib.use("Agg")


def specs(doc: Document) -> list[tuple[Plot, Callable[[], Figure | None]]]:
    """Every figure of DOC's report, in order: what it is called and shows, and how to draw it."""
    study, space, target = doc.study, doc.experiment.space, f"best {doc.experiment.space.metric}"
    contour = list(doc.importance.values or space.names)[:CONTOUR]  # the most important (else the first) ones
    k = len(contour)
    n = (f"{state_counts(study).get('COMPLETE', 0)} full-budget trials of the {len(study.trials)} in the study from "
         f"{study.user_attrs['source']}; pruned, failed and unfinished ones left out")
    return [
        (Plot("history", "Optimization history", f"Optuna's plot_optimization_history: the {target} of each "
              f"full-budget trial by trial number, and the best so far ({n})."),
         lambda: _optuna("plot_optimization_history", study, 1, target_name=target)),
        (Plot("learning_curves", "Learning curves", f"{space.metric} per epoch of every trial; the top "
              f"{doc.top_k} in colour, dashed lines at the ASHA rungs (where trials are compared and the weaker "
              "ones pruned)."), lambda: learning_curves(doc.experiment, doc.top_k)),
        (Plot("importance", "Hyperparameter importance", f"Optuna's plot_param_importances, {EVALUATOR}: the share "
              f"of the variance of the {target} explained by each parameter ({n})."),
         lambda: _optuna("plot_param_importances", study, 2, evaluator=evaluator(), target_name=target)
         if doc.importance.values else None),
        (Plot("parallel_coordinates", "Parallel coordinates", "Optuna's plot_parallel_coordinate: each line a "
              f"trial, coloured by its {target} ({n})."),
         lambda: _optuna("plot_parallel_coordinate", study, 1, (max(6.4, 1.3 * len(space.names)), 4.8),
                         target_name=target)),
        (Plot("slices", "Parameter slices", f"Optuna's plot_slice: the {target} against each parameter, darker "
              f"dots for later trials ({n})."), lambda: _optuna("plot_slice", study, 1, target_name=target)),
        (Plot("contour", "Contour", f"Optuna's plot_contour: the {target} over each pair of the {k} most important "
              f"parameters ({n})."),
         lambda: _optuna("plot_contour", study, 2, (3.2 * k, 2.8 * k), params=contour, target_name=target)),
        (Plot("timeline", "Timeline", f"Optuna's plot_timeline: when each of the {len(study.trials)} trials in the "
              f"study from {study.user_attrs['source']} ran, and its Optuna state (pruned: cut by ASHA)."),
         lambda: _optuna("plot_timeline", study, 0)),
    ]


def draw_all(doc: Document, out: Path) -> list[Plot]:
    """Draw every figure into OUT/<name>.png; one that cannot be drawn is logged and has no path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for plot, draw in specs(doc):
        try:
            fig = draw()
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
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(w, h), layout="constrained")


def empty(text: str) -> Figure:
    """A small figure that says why there is nothing to plot yet."""
    ax = _new_figure(6, 1.5).add_subplot()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="0.4")
    ax.set_axis_off()
    return ax.figure


def _optuna(name: str, study: optuna.Study, need: int, size: tuple[float, float] | None = None,
            **kwargs: Any) -> Figure:
    """Optuna's matplotlib plot NAME of STUDY (SIZE in inches, else Optuna's), or a note when fewer than NEED of
    its trials are COMPLETE."""
    if state_counts(study).get("COMPLETE", 0) < need:
        return empty(f"fewer than {need} trial(s) have run their full budget with a finite value")
    import numpy as np
    import optuna.visualization.matplotlib as plots
    from matplotlib import pyplot as plt, rc_context
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings(), optuna_quiet(), rc_context({"figure.figsize": size} if size else None):
        warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna marks every matplotlib plot experimental
        warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)  # one value: still drawn
        axes = getattr(plots, name)(study, **kwargs)  # its plt.style.use("ggplot") ends with the rc context
    fig = np.ravel(axes)[0].figure
    plt.close(fig)  # Optuna draws with pyplot: drop pyplot's reference so the figure is freed once saved
    return fig


def learning_curves(exp: Experiment, top_k: int = 5) -> Figure:
    """Metric vs epoch for every trial, the top TOP_K in colour, ASHA rungs dashed."""
    from matplotlib import colormaps

    ax, m, top, colors = _new_figure(9, 5).add_subplot(), exp.space.metric, exp.ranked[:top_k], colormaps["tab10"]
    for t in [t for t in exp.trials if t not in top]:  # the rest in grey
        x, y = list(t.values), list(t.values.values())
        ax.plot(x, y, color="0.6", lw=0.8, alpha=0.7, marker="." if len(x) == 1 else None)
    for rank, t in enumerate(top, 1):  # the best drawn on top (zorder), listed first
        ax.plot(list(t.values), list(t.values.values()), color=colors(rank - 1), lw=2, marker="o", ms=3,
                zorder=3 + 1 / rank, label=f"#{rank} {t.trial_id} ({fmt_value(t.best_value)} @ epoch {t.best_epoch})")
        ax.scatter([t.best_epoch], [t.best_value], s=70, facecolor="none", edgecolor=colors(rank - 1), zorder=4)
    for i, r in enumerate(exp.space.rungs):
        ax.axvline(r, color="k", ls="--", lw=0.9, alpha=0.6, label="ASHA rung" if i == 0 else None)
    ax.set(xlabel="epoch", ylabel=m, xlim=(0.5, exp.space.epochs + 0.5))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return ax.figure


