"""What a report says about an experiment, as data (no matplotlib, no Ray; Optuna once a study is read).

`analyze` gathers the study, importance, warnings, header facts and trial tables into one `Document`, which
`tune.report` writes out and `tune.figures` draws."""
from __future__ import annotations

import collections
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mmtune.model.metrics import is_finite
from mmtune.model.status import TrialStatus
from mmtune.tune.defaults import defaults_lines
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import STUDY_DB, Experiment, Trial, counts, load_study
from mmtune.tune.noise import noise, saturation_warnings
from mmtune.tune.results import BEST_CONFIG
from mmtune.tune.space import Param

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

MIN_IMPORTANCE_TRIALS = 10  # below this the fANOVA estimate is little more than noise
BAD_SHARE = 0.25  # this share of failed ended trials means the space needs narrowing
EVALUATOR = "Optuna fANOVA (FanovaImportanceEvaluator, seed=0)"


@dataclass(frozen=True)
class Importance:
    """fANOVA importances (None when not computed), why or from what, and how many trials they rest on."""

    values: dict[str, float] | None
    note: str
    trials: int


@dataclass
class Document:
    """Everything a report shows about one experiment."""

    experiment: Experiment
    top_k: int
    importance: Importance
    warnings: list[str] = field(default_factory=list)
    study: optuna.Study | None = None  # `study_of(experiment)`: what Optuna's figures draw

    @property
    def top(self) -> list[Trial]:
        """The top-k trials, best first."""
        return self.experiment.ranked[:self.top_k]

    @property
    def all_trials(self) -> list[Trial]:
        """Every trial: ranked ones first, then those without a value, in start order."""
        ranked = self.experiment.ranked
        return ranked + [t for t in self.experiment.trials if t not in ranked]  # the same Trial objects


def analyze(exp: Experiment, top_k: int = 5) -> Document:
    """The document of EXP: study read, importance and warnings computed."""
    if not exp.trials:
        raise ResultsError(f"{exp.path}: no trial has started yet; nothing to report")
    study = study_of(exp)
    imp = importance(study)
    warned = [*saturation_warnings(exp), *edge_warnings(exp), *failure_warnings(exp), *importance_warnings(imp),
              *progress_warnings(exp)]  # everything a user should act on before trusting the result
    return Document(exp, top_k, imp, warned, study)


# ---------------------------------------------------------------- the study and the importance


@contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's INFO and WARNING lines off for a while (a new in-memory study; a plot's note on a parameter with
    one value): not news in a report."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def in_memory(direction: optuna.study.StudyDirection, trials: list[Any], source: str) -> optuna.Study:
    """An in-memory study of TRIALS, its user attribute "source" saying where they came from."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    with optuna_quiet():
        storage.create_new_study([direction], "report")
    study = optuna.Study("report", storage)
    study.add_trials(trials)
    study.set_user_attr("source", source)
    return study


def study_of(exp: Experiment) -> optuna.Study:
    """The sweep's study, copied into memory (every figure sees one snapshot of a running sweep, and no database
    stays open while drawing): `<exp>/study.db` that the searcher kept, else built from the trials on disk."""
    from optuna.study import StudyDirection

    if (exp.path / STUDY_DB).is_file():
        try:
            kept = load_study(exp.path)
            if kept.trials:
                return in_memory(kept.direction, kept.trials, STUDY_DB)
        except Exception as e:  # noqa: BLE001 - an older or broken study.db: the trials on disk still tell
            log.warning("%s unreadable (%s): the report's study is built from the trials on disk", STUDY_DB, e)
    dists, frozen = exp.space.distributions(), []
    for t in exp.trials:
        try:
            frozen.append(t.frozen(dists))
        except ValueError as e:  # a value outside the recorded space
            log.warning("trial %s left out of the report's study: %s", t.trial_id, e)
    direction = StudyDirection.MAXIMIZE if exp.space.mode == "max" else StudyDirection.MINIMIZE
    return in_memory(direction, frozen, "trials on disk")


def state_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by Optuna state ("COMPLETE", "PRUNED", ...), leaving out states no trial has."""
    return dict(collections.Counter(t.state.name for t in study.trials))


def importance(study: optuna.Study) -> Importance:
    """fANOVA importances from STUDY's full-budget trials, or None and the reason.

    Optuna's importance (like its slice, parallel-coordinate and contour plots) reads only COMPLETE trials, and the
    searcher tells ASHA's cuts PRUNED: their values come from fewer epochs, and mixed in they would credit whatever
    made trials slow starters (e.g. small models) with importance.
    """
    import optuna

    n, pruned = state_counts(study).get("COMPLETE", 0), state_counts(study).get("PRUNED", 0)
    if n < 2:
        return Importance(None, f"not computed: {n} full-budget trial(s) with a finite value; at least 2 needed", n)
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator())
    except Exception as e:  # noqa: BLE001 - the report says why instead of failing
        return Importance(None, f"not computed: {type(e).__name__}: {e}", n)
    return Importance({k: float(v) for k, v in imp.items()},
                      f"computed from {n} full-budget trials ({pruned} pruned trial(s) left out)", n)


def evaluator() -> optuna.importance.FanovaImportanceEvaluator:
    """The seeded fANOVA evaluator (EVALUATOR), so a report's importances are the same each time it is written."""
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


# ---------------------------------------------------------------- warnings


def edge_warning(param: Param, value: Any) -> str | None:
    """'widen P (best V at the low/high end of [low, high])' when VALUE sits on the edge of P's range."""
    side = param.on_edge(value)
    return side and f"widen {param.name} (best {fmt(value)} at the {side} end of [{fmt(param.low)}, {fmt(param.high)}])"


def edge_warnings(exp: Experiment) -> list[str]:
    """One warning per parameter whose best value lies on the edge of its searched range."""
    best = exp.ranked[0].params if exp.ranked else None
    return [w for p in exp.space.params if best and (w := edge_warning(p, best.get(p.name)))]


def failure_warnings(exp: Experiment) -> list[str]:
    """A warning when at least BAD_SHARE of the ended trials failed, diverged or were infeasible."""
    ended = [t for t in exp.trials if t.status.finished]
    bad = [t for t in ended if t.status.failed]
    if not ended or len(bad) / len(ended) < BAD_SHARE:
        return []
    kinds = ", ".join(f"{n} {s}" for s, n in counts(bad).items())
    return [f"{len(bad)} of {len(ended)} ended trials ({len(bad) / len(ended):.0%}) failed, diverged or were "
            f"infeasible ({kinds}); see the error column of trials.csv and narrow the space"]


def importance_warnings(imp: Importance) -> list[str]:
    """A warning when the importance rests on fewer than MIN_IMPORTANCE_TRIALS trials."""
    if imp.trials >= MIN_IMPORTANCE_TRIALS:
        return []
    return [f"only {imp.trials} full-budget trial(s) with a finite value: the importance estimate needs about "
            f"{MIN_IMPORTANCE_TRIALS} or more, so treat it as rough"]


def progress_warnings(exp: Experiment) -> list[str]:
    """A warning when the sweep is still running or was interrupted."""
    if exp.finished:
        return []
    running = sum(not t.status.finished for t in exp.trials)
    return [f"the sweep is not finished ({len(exp.trials)} of {exp.space.num_samples} trials started, {running} "
            f"unfinished): it is still running or was interrupted (continue it with `mmtune resume {exp.path}`)"]


# ---------------------------------------------------------------- text


def fmt(v: Any) -> str:
    """A parameter value as tables show it (floats to 4 significant digits)."""
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def fmt_value(v: float | None) -> str:
    """A metric value to 4 decimals, or a dash when there is none."""
    return f"{v:.4f}" if is_finite(v) else "–"


def header_rows(doc: Document) -> list[tuple[str, str]]:
    """The header facts as (label, text) pairs."""
    exp, best = doc.experiment, doc.experiment.ranked[:1]
    s = exp.space
    by_status = ", ".join(f"{n} {TrialStatus(k).label}" for k, n in counts(exp.trials).items())
    seconds = exp.wall_time()
    return [("experiment", f"{exp.name} ({exp.path})"),
            ("search space", exp.meta.get("space_file", s.source)
             + (f" — {s.raw['description']}" if s.raw.get("description") else "")),
            ("metric", f"{s.metric} ({s.mode}imized; each trial's best epoch)"),
            ("state", f"{'finished' if exp.finished else 'NOT finished (running or interrupted)'}; "
                      f"{len(exp.trials)} of {s.num_samples} trials started"
                      + (f"; {seconds / 60:.1f} min {'wall time' if exp.finished else 'since start'}"
                         if seconds is not None and seconds >= 0 else "")),
            ("trials by status", by_status),
            ("best value", f"{fmt_value(best[0].best_value)} (trial {best[0].trial_id}, epoch {best[0].best_epoch})"
             if best else "none yet (no trial has a finite value)"),
            ("noise vs gaps", noise(exp).text),
            ("best config", best_config_text(exp)),
            *[("versus the defaults", line) for line in defaults_lines(exp.final or {})],
            ("search", f"Optuna {s.searcher} (seed {s.seed}), ASHA grace {s.grace_period}, reduction "
                       f"{s.reduction_factor:g}, {s.epochs} epochs max"),
            ("data", str(exp.meta.get("data", "?")))]


def best_config_text(exp: Experiment) -> str:
    """Where best_config.yaml is, and whether it still names the current best trial."""
    summary = exp.summary
    path = summary.get("best_config") or str(exp.path / BEST_CONFIG)
    if not Path(path).is_file():
        return f"not written yet (run `mmtune export {exp.path}`)"
    if exp.ranked and summary.get("best_trial") not in (None, exp.ranked[0].trial_id):
        return f"{path} (stale: written for trial {summary['best_trial']}; run `mmtune export {exp.path}`)"
    return path


def trial_table(doc: Document, trials: list[Trial]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of a table of TRIALS (rank, value, epochs, status, params)."""
    space, ranks = doc.experiment.space, {t.trial_id: i for i, t in enumerate(doc.experiment.ranked, 1)}
    cols = ["rank", "trial", f"best {space.metric}", "best epoch", "epochs run", "status", *space.names]
    rows = [[str(ranks.get(t.trial_id, "–")), t.trial_id, fmt_value(t.best_value),
             "–" if t.best_epoch is None else str(t.best_epoch), str(t.epochs), t.status.label,
             *[fmt(t.params.get(n)) for n in space.names]] for t in trials]
    return cols, rows


def importance_text(doc: Document) -> str:
    """How the importance was estimated, and how to read it."""
    return (f"Evaluator: {EVALUATOR}, on the full-budget trials of the sweep's Optuna study (from "
            f"{doc.study.user_attrs['source'] if doc.study else STUDY_DB}: COMPLETE, i.e. completed, early stopped "
            f"or stopped, not pruned by ASHA), each scored by its best epoch; "
            f"{doc.importance.note}. Pruned trials ran fewer epochs: mixed in, they would make whatever learns "
            "fast look important.")
