"""What a report says about an experiment, as data: importance, warnings, header facts and trial tables.

Pure functions over a `tune.experiment.Experiment`: no matplotlib, no Ray. Optuna is imported only when the
study is read (`study_of`: the searcher's `study.db`, or the trials on disk) or the importance computed. `analyze` gathers everything into one `Document`, which `tune.report` renders to
HTML and Markdown and `tune.figures` draws.
"""
from __future__ import annotations

import collections
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mmtune.model.metrics import is_finite
from mmtune.model.status import TrialStatus
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import STUDY_DB, STUDY_NAME, Experiment, Trial, counts, study_storage
from mmtune.tune.space import Param, SearchSpace

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
    """Everything a report shows about one experiment, rendered alike to HTML and Markdown."""

    experiment: Experiment
    top_k: int
    importance: Importance
    warnings: list[str] = field(default_factory=list)
    final: dict[str, Any] | None = None  # final/summary.json of `mmtune finalize`, when it ran
    study: optuna.Study | None = None  # `study_of(experiment)`: what Optuna's figures draw

    @property
    def space(self) -> SearchSpace:
        return self.experiment.space

    @property
    def trials(self) -> list[Trial]:
        return self.experiment.trials

    @property
    def ranked(self) -> list[Trial]:
        return self.experiment.ranked

    @property
    def top(self) -> list[Trial]:
        """The top-k trials, best first."""
        return self.ranked[:self.top_k]

    @property
    def best(self) -> Trial | None:
        return self.ranked[0] if self.ranked else None

    @property
    def ranks(self) -> dict[str, int]:
        """Trial id -> rank (1 is best), for the ranked trials."""
        return {t.trial_id: i for i, t in enumerate(self.ranked, 1)}

    @property
    def all_trials(self) -> list[Trial]:
        """Every trial: ranked ones first, then those without a value, in start order."""
        ranked = {t.trial_id for t in self.ranked}
        return self.ranked + [t for t in self.trials if t.trial_id not in ranked]


def analyze(exp: Experiment, top_k: int = 5, final: dict[str, Any] | None = None) -> Document:
    """The document of EXP: importance and warnings computed, the top TOP_K trials picked."""
    if top_k < 1:
        raise ResultsError(f"--top-k must be >= 1, got {top_k}")
    if not exp.trials:
        raise ResultsError(f"{exp.path}: no trial has started yet; nothing to report")
    study = study_of(exp)
    imp = importance(study)
    return Document(exp, top_k, imp, collect_warnings(exp, imp), final, study)


# ---------------------------------------------------------------- the study and the importance


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines off for a while: creating an in-memory study is not news."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def in_memory(direction: Any, trials: list[Any], source: str) -> optuna.Study:
    """An in-memory study of TRIALS, its user attribute "source" saying where they came from."""
    import optuna

    with quiet_optuna():
        study = optuna.create_study(direction=direction)
    study.add_trials(trials)
    study.set_user_attr("source", source)
    return study


def study_of(exp: Experiment) -> optuna.Study:
    """The sweep's study, copied into memory: `<exp>/study.db` that the searcher kept, else built from the trials.

    A copy, so every figure sees one snapshot of a running sweep and no database stays open while drawing.
    """
    import optuna

    db = exp.path / STUDY_DB
    direction = "maximize" if exp.space.mode == "max" else "minimize"
    if db.is_file():
        try:
            with quiet_optuna():
                kept = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(exp.path))
            if kept.trials:
                return in_memory(kept.direction, kept.trials, STUDY_DB)
        except Exception as e:  # noqa: BLE001 - an older or broken study.db: the trials on disk still tell
            log.warning("%s unreadable (%s): the report's study is built from the trials on disk", db, e)
    dists = exp.space.distributions()
    return in_memory(direction, [f for t in exp.trials if (f := _frozen(t, dists)) is not None], "trials on disk")


def _frozen(t: Trial, dists: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
    """Trial T as the searcher tells it: COMPLETE with its best value, PRUNED, FAIL or still RUNNING."""
    from optuna.trial import TrialState, create_trial

    full = t.status.usable and t.status is not TrialStatus.PRUNED and is_finite(t.best_value)
    state = (TrialState.COMPLETE if full else TrialState.PRUNED if t.status is TrialStatus.PRUNED
             else TrialState.FAIL if t.status.finished else TrialState.RUNNING)
    params = {k: v for k, v in t.params.items() if k in dists}
    try:
        frozen = create_trial(state=state, value=t.best_value if full else None, params=params,
                              distributions={k: dists[k] for k in params}, intermediate_values=t.values,
                              user_attrs={"ray_trial_id": t.trial_id, "status": t.status.value})
    except ValueError as e:  # a value outside the recorded space
        log.warning("trial %s left out of the report's study: %s", t.trial_id, e)
        return None
    if t.started is not None:  # the timeline's bars: from the first report back to the start, on to the last
        frozen.datetime_start = datetime.fromtimestamp(t.started)
        end = t.started + float(t.last_result.get("time_total_s") or 0.0)
        frozen.datetime_complete = datetime.fromtimestamp(end) if state.is_finished() else None
    return frozen


def full_budget(study: optuna.Study) -> optuna.Study:
    """STUDY restricted to its COMPLETE trials: a pruned trial's value comes from fewer epochs."""
    from optuna.trial import TrialState

    return in_memory(study.direction, study.get_trials(states=(TrialState.COMPLETE,)), study.user_attrs["source"])


def state_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by Optuna state ("COMPLETE", "PRUNED", ...), leaving out states no trial has."""
    return dict(collections.Counter(t.state.name for t in study.trials))


def importance(study: optuna.Study) -> Importance:
    """fANOVA importances from STUDY's full-budget trials, or None and the reason.

    Pruned trials are left out: their values come from fewer epochs, and mixing them in credits whatever
    made trials slow starters (e.g. small models) with importance.
    """
    import optuna

    full = full_budget(study)
    n = len(full.trials)
    if n < 2:
        return Importance(None, f"not computed: {n} full-budget trial(s) with a finite value; at least 2 needed", n)
    try:
        imp = optuna.importance.get_param_importances(full, evaluator=evaluator())
    except Exception as e:  # noqa: BLE001 - the report says why instead of failing
        return Importance(None, f"not computed: {type(e).__name__}: {e}", n)
    pruned = state_counts(study).get("PRUNED", 0)
    return Importance({k: float(v) for k, v in imp.items()},
                      f"computed from {n} full-budget trials ({pruned} pruned trial(s) left out)", n)


def evaluator() -> optuna.importance.FanovaImportanceEvaluator:
    """The seeded fANOVA evaluator (EVALUATOR), so a report's importances are the same each time it is written."""
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


# ---------------------------------------------------------------- warnings


def collect_warnings(exp: Experiment, imp: Importance) -> list[str]:
    """Everything a user should act on before trusting the result."""
    from mmtune.tune.noise import saturation_warnings

    return [*saturation_warnings(exp), *edge_warnings(exp), *failure_warnings(exp), *importance_warnings(imp),
            *progress_warnings(exp)]


def edge_warning(param: Param, value: Any) -> str | None:
    """'widen P (best V at the low/high end of [low, high])' when VALUE sits on the edge of P's range."""
    side = param.on_edge(value)
    if side is None:
        return None
    return f"widen {param.name} (best {fmt(value)} at the {side} end of [{fmt(param.low)}, {fmt(param.high)}])"


def edge_warnings(exp: Experiment) -> list[str]:
    """One warning per parameter whose best value lies on the edge of its searched range."""
    if not exp.ranked:
        return []
    best = exp.ranked[0]
    found = (edge_warning(p, best.params.get(p.name)) for p in exp.space.params)
    return [w for w in found if w]


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


def asha_rungs(space: SearchSpace) -> list[int]:
    """Epochs at which ASHA compares trials: grace_period * reduction_factor**k <= epochs."""
    rungs, k = [], 0
    while space.grace_period * space.reduction_factor ** k <= space.epochs:
        rungs.append(int(round(space.grace_period * space.reduction_factor ** k)))
        k += 1
    return rungs


# ---------------------------------------------------------------- text shared by HTML and Markdown


def fmt(v: Any) -> str:
    """A parameter value as tables show it (floats to 4 significant digits)."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_value(v: float | None) -> str:
    """A metric value to 4 decimals, or a dash when there is none."""
    return f"{v:.4f}" if is_finite(v) else "–"


def status_counts(trials: list[Trial]) -> dict[TrialStatus, int]:
    """Trials by status, in the vocabulary's order, leaving out statuses no trial has."""
    return {TrialStatus(s): n for s, n in counts(trials).items()}


def header_rows(doc: Document) -> list[tuple[str, str]]:
    """The header facts as (label, text) pairs."""
    from mmtune.tune.noise import noise

    exp, s, best = doc.experiment, doc.space, doc.best
    by_status = ", ".join(f"{n} {k.label}" for k, n in status_counts(doc.trials).items())
    return [("experiment", f"{exp.name} ({exp.path})"),
            ("search space", f"{exp.meta.get('space_file', s.source)}"
                             + (f" — {s.raw['description']}" if s.raw.get("description") else "")),
            ("metric", f"{s.metric} ({s.mode}imized; each trial's best epoch)"),
            ("state", f"{'finished' if exp.finished else 'NOT finished (running or interrupted)'}; "
                      f"{len(doc.trials)} of {s.num_samples} trials started{_wall_time(exp)}"),
            ("trials by status", by_status),
            ("best value", f"{fmt_value(best.best_value)} (trial {best.trial_id}, epoch {best.best_epoch})" if best
             else "none yet (no trial has a finite value)"),
            ("noise vs gaps", noise(exp).text),
            ("best config", best_config_text(doc)),
            ("search", f"Optuna TPE (seed {s.seed}), ASHA grace {s.grace_period}, reduction {s.reduction_factor:g}, "
                       f"{s.epochs} epochs max"),
            ("data", str(exp.meta.get("data", "?")))]


def _wall_time(exp: Experiment) -> str:
    start = exp.meta.get("started")
    if not start:
        return ""
    # An unfinished sweep may carry the end of an earlier run (before a resume): count to now instead.
    ended = exp.finished and exp.meta.get("ended")
    seconds = exp.wall_time() if exp.finished else time.time() - start
    if seconds is None or seconds < 0:  # a clock that went back says nothing useful
        return ""
    return f"; {seconds / 60:.1f} min {'wall time' if ended else 'since start'}"


def best_config_text(doc: Document) -> str:
    """Where best_config.yaml is, and whether it still names the current best trial."""
    exp_dir = doc.experiment.path
    summary_path = exp_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    path = Path(summary.get("best_config") or exp_dir / "best_config.yaml")
    if not path.is_file():
        return f"not written yet (run `mmtune export {exp_dir}`)"
    if doc.best is not None and summary.get("best_trial") not in (None, doc.best.trial_id):
        return f"{path} (stale: written for trial {summary['best_trial']}; run `mmtune export {exp_dir}`)"
    return str(path)


def trial_table(doc: Document, trials: list[Trial]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of a table of TRIALS (rank, value, epochs, status, params)."""
    space, ranks = doc.space, doc.ranks
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
