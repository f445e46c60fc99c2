"""mmtune's Optuna searcher: Ray's OptunaSearch, telling Optuna the truth and keeping the study in `<exp>/study.db`.

Ray's OptunaSearch tells Optuna COMPLETE with a trial's *last* value whenever one exists: a trial ASHA cut at
a rung becomes a finished trial with a short-budget score, a diverged one a finished trial with the worst
score, and a completed one is scored by its last epoch while mmtune ranks it by its best. Here:
- every epoch is an intermediate value (as in Ray);
- a trial the scheduler stopped is PRUNED (TPE then weighs it by the step it reached);
- a trial that completed, stopped early on patience or was stopped by a loop callback is COMPLETE with its
  best epoch's value, the value mmtune ranks it by;
- a diverged, infeasible or failed trial is FAIL, its reason in the user attribute "reason";
- every Optuna trial carries Ray's trial id ("ray_trial_id") and mmtune's status ("status").
The study lives in SQLite (Optuna's RDBStorage), written by the driver only, so `optuna.load_study` and
optuna-dashboard can open it; a resume reopens the same study.
With `stop_when_converged: true` in the space, suggest returns Searcher.FINISHED once the best config's regret bound
is below the metric's noise (tune.convergence): Tune starts no more trials and lets the running ones finish.
"""
from __future__ import annotations

import logging
import pickle
import time
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mmtune.model.metrics import is_better, is_finite, rank_key, tie_breaker
from mmtune.model.status import TrialStatus
from mmtune.tune import convergence, storage
from mmtune.tune.defaults import start_points
from mmtune.tune.budget import OutOfTime
from mmtune.tune.experiment import (STUDY_DB, STUDY_NAME, Experiment, load_study, read_meta, study_storage,
                                    update_meta)
from mmtune.tune.noise import results_sd
from mmtune.tune.recorder import ended_status
from mmtune.tune.space import SearchSpace

log = logging.getLogger(__name__)


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The space's Optuna sampler, seeded with the space's seed."""
    # Model-based samplers need some random trials first; TPE's default of 10 would make a small sweep pure
    # random search. About a third of the trials, at most 10, and more than the starting points.
    startup = max(len(start_points(space)) + 2, min(10, space.num_samples // 3))
    if space.searcher == "tpe":
        return optuna.samplers.TPESampler(seed=space.seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=startup)
    if space.searcher == "gp":
        return optuna.samplers.GPSampler(seed=space.seed, n_startup_trials=startup)
    if space.searcher == "qmc":
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=space.seed)
    return optuna.samplers.RandomSampler(seed=space.seed)


class StudySearch(OutOfTime, OptunaSearch):
    """OptunaSearch that tells Optuna how each trial really ended, on a study persisted with the experiment."""

    def __init__(self, space: SearchSpace, loc: storage.Location):
        self.loc, self.rungs = loc, space.rungs  # ASHA's rungs: where a trial Tune stopped was pruned
        super().__init__(space=space.distributions(), metric=space.metric, mode=space.mode,
                         points_to_evaluate=start_points(space) or None, sampler=make_sampler(space),
                         study_name=STUDY_NAME, storage=study_storage(loc.local))
        # Stop when converged (tune.convergence): the rule's inputs, and its decision once it stopped the search.
        self.stop_rule, self.num_samples, self.dims, self.seed = (space.stop_when_converged, space.num_samples,
                                                                  space.params, space.seed)
        self.converged: dict[str, Any] | None = None  # the Decision's record once the rule said stop
        self._best: dict[str, dict[str, Any]] = {}  # Ray trial id -> its best epoch's metric, tie-breaker, fold sd
        self._checked = -1  # ended study trials when the rule last decided (convergence.due: when to again)
        self.saved: set[str] | None = None  # on a resume: the Ray trials of the state Tune restores (rebind)

    def suggest(self, trial_id: str) -> dict | None:
        if self.out_of_time:
            return Searcher.FINISHED  # the search's share of the time budget is spent (tune/budget.py)
        if self._converged():
            return Searcher.FINISHED  # Tune starts no more trials; the running ones finish
        if trial_id not in self._ot_trials and len(self._ot_trials) >= self.num_samples:
            # Every trial is Tune's already: a resume whose saved trial list was newer than Tune's trial counter
            # (see _adopt) would otherwise start one trial too many per trial the counter missed.
            return Searcher.FINISHED
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and "ray_trial_id" not in ot_trial.user_attrs:
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not is_finite(result.get(self.metric)) or trial_id not in self._ot_trials:
            return
        if is_better(result, self._best.get(trial_id), self.metric):
            keys = (self.metric, tie_breaker(self.metric), f"{self.metric}_sd")
            self._best[trial_id] = {k: result[k] for k in keys if k in result}
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Told before a driver kill that Tune's saved state never saw: the resumed trainable re-reports the
            # trial's last result (tune.trainable), which the study holds already.
            self._completed_trials.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.saw(result)
        if trial_id not in self._ot_trials or trial_id in self._completed_trials:
            return  # not ours, or told already (a resume re-reported it)
        storage_id = self._ot_trials[trial_id]._trial_id
        frozen = self._ot_study._storage.get_trial(storage_id)
        if result is not None and result.get("training_iteration") not in frozen.intermediate_values:
            self.on_trial_result(trial_id, result)  # Tune hands a trial's last result to on_trial_complete only
            frozen = self._ot_study._storage.get_trial(storage_id)
        if not frozen.state.is_finished():  # a driver killed after the tell and before Tune's save: told already
            status = TrialStatus.FAILED if error else ended_status(result or {}, self.rungs)
            tell(self._ot_study, frozen, status, error=(result or {}).get("error"))
        self._completed_trials.add(trial_id)
        storage.push(self.loc, STUDY_DB)

    # ---------------------------------------------------------------- stop when converged

    def _converged(self) -> bool:
        """Whether the search has converged (tune.convergence): decided once, with the ended trials the study
        holds, recorded in mmtune.json ("converged") and said once; never with `stop_when_converged: false`."""
        if self.converged is not None:
            return True
        if not self.stop_rule:
            return False
        ended = [t for t in self._ot_study.get_trials(deepcopy=False) if t.state.is_finished()]
        if not convergence.due(len(ended), self._checked):
            return False  # too little ended since the last decision
        self._checked = len(ended)
        usable = {t.user_attrs.get("ray_trial_id") for t in ended
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        best = sorted((r for tid, r in self._best.items() if tid in usable), key=lambda r: rank_key(r, self.metric))
        sd, source = results_sd(best, read_meta(self.loc.local), self.metric)
        full = [(t.params, t.value) for t in ended if t.state is TrialState.COMPLETE]
        try:
            decision = convergence.should_stop(full, self.dims, ended=len(ended), num_samples=self.num_samples, sd=sd,
                                               source=source, metric=self.metric, maximize=self.mode == "max",
                                               seed=self.seed)
        except Exception as e:  # noqa: BLE001 - a GP that cannot be fitted must not end the sweep: search on
            log.warning("stop_when_converged: the regret bound could not be computed (%r); the search goes on", e)
            return False
        log.debug("stop_when_converged: %s", decision.reason)
        if not decision.stop:
            return False
        self.converged = {**decision.record(), "at": time.time()}
        update_meta(self.loc, converged=self.converged)
        log.warning("%s; no new trials start, the running ones finish (stop_when_converged: false in the space "
                    "searches all num_samples)", decision.reason)
        return True

    # ---------------------------------------------------------------- resume

    def rebind(self, loc: storage.Location, saved: set[str] | None = None) -> None:
        """Point the searcher at LOC and reopen its study there: a resumed sweep's folder (or mirror) may have
        moved since the first run. SAVED: the Ray trials of the state Tune restores (None: unknown)."""
        self.loc, self.saved = loc, saved
        self._reopen()

    def __getstate__(self) -> dict[str, Any]:
        # Optuna's objects stay out of every pickle (tuner.pkl, Tune's searcher state): unpickling an RDBStorage
        # connects to the database where it was, which fails once the experiment has moved. Storage ids only.
        state = dict(self.__dict__)
        state["_ot_study"] = state["_storage"] = None
        state["_ot_trials"] = {tid: getattr(t, "_trial_id", t) for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # State pickled without the stop rule's or the budget's fields (an older experiment): the rule off, no rungs.
        self.__dict__.update({"stop_rule": False, "converged": None, "_best": {}, "_checked": -1, "rungs": [],
                              "saved": None, **state})

    def _reopen(self) -> None:
        """The study from LOC's study.db, and the Optuna trial of every Ray trial from its storage id; a convergence
        stop recorded in mmtune.json holds (a state saved before it is older), so a resume starts no new trial."""
        self.converged = self.converged or read_meta(self.loc.local).get("converged")
        self._storage = study_storage(self.loc.local)
        self._ot_study = optuna.load_study(study_name=STUDY_NAME, storage=self._storage, sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        ids = {tid: getattr(t, "_trial_id", t) for tid, t in self._ot_trials.items()}
        self._ot_trials = {tid: optuna.trial.Trial(self._ot_study, sid) for tid, sid in ids.items()}

    def save(self, checkpoint_path: str) -> None:
        """Tune's periodic searcher snapshot (the study itself is in study.db, uploaded here when remote)."""
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)
        storage.push(self.loc, STUDY_DB)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved state, with the study reopened where the experiment is now, and the trials of Tune's saved
        trial list it does not know adopted (_adopt). Study trials still running that Tune will not resume (asked
        after its last save) are settled now, so none runs forever."""
        loc, saved = self.loc, self.saved
        try:
            with open(checkpoint_path, "rb") as f:
                self.__dict__.update(pickle.load(f))
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            # Ray copies this file to the experiment folder without a rename: a driver killed mid-copy leaves it
            # cut. The study holds what matters (which Ray trial is which Optuna trial, and which ended).
            log.warning("%s is unreadable (%s); the searcher's state is rebuilt from %s", checkpoint_path, e, STUDY_DB)
            self.loc, self.saved = loc, saved
            self._rebuild()
            return
        self.loc, self.saved = loc, saved
        self._reopen()
        self._adopt(saved)
        known = {t.number for t in self._ot_trials.values()}
        reconcile(self._ot_study, Experiment.open(loc.local), skip=known)
        storage.push(self.loc, STUDY_DB)

    def _rebuild(self) -> None:
        """The Ray trial -> Optuna trial map and the told trials, from the study and the trials Tune restores (all
        of the study's, when those are unknown). None is settled now; the end of the sweep reconciles the rest."""
        self._ot_trials, self._completed_trials = {}, set()
        self._reopen()
        self._adopt(self.saved)

    def _adopt(self, ray_ids: set[str] | None) -> None:
        """Map each Ray trial of RAY_IDS (None: every one) that this state does not know to its latest study trial.

        Tune writes its trial list first, then this state and its trial counter (tune_controller.py, `save_to_dir`),
        and copies the files into the experiment folder one by one: a driver killed in between leaves a trial list
        newer than this state (seen: a trial asked for just before the kill, saved as PENDING). Tune runs that
        trial; adopted here, it is told when it ends, and it counts towards num_samples (suggest)."""
        known = set(self._ot_trials)
        for frozen in self._ot_study.get_trials(deepcopy=False):  # by number: a retry's study trial comes last
            ray_id = frozen.user_attrs.get("ray_trial_id")
            if ray_id is None or ray_id in known or (ray_ids is not None and ray_id not in ray_ids):
                continue
            self._ot_trials[ray_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            if frozen.state.is_finished():
                self._completed_trials.add(ray_id)


# Why a study trial was told FAIL when Tune's saved state never held its Ray trial (reconcile).
INTERRUPTED = "interrupted: the driver stopped before Ray saved this trial; the resumed sweep asked the searcher again"


def tell(study: optuna.Study, frozen: optuna.trial.FrozenTrial, status: TrialStatus,
         values: dict[int, float] | None = None, error: str | None = None, reason: str | None = None) -> None:
    """Tell the study trial FROZEN how it ended; a COMPLETE one gets its best intermediate value (VALUES, or those
    it has)."""
    values = frozen.intermediate_values if values is None else values
    store = study._storage  # Optuna has no public way to set an attribute of a trial by number
    store.set_trial_user_attr(frozen._trial_id, "status", status.value)
    if status is TrialStatus.PRUNED:
        study.tell(frozen.number, state=TrialState.PRUNED)
    elif status.usable and values:
        study.tell(frozen.number, _best(values, study.direction))
    else:
        why = reason or status.value
        store.set_trial_user_attr(frozen._trial_id, "reason", f"{why}: {str(error)[:300]}" if error else why)
        study.tell(frozen.number, state=TrialState.FAIL)


def reconcile(study: optuna.Study, exp: Experiment, skip: set[int] = frozenset()) -> int:
    """Make the study agree with the trials' durable records; returns how many study trials it changed.

    - A study trial still running (unless its number is in SKIP: Tune resumes those) is told what its record says, or FAIL
      ("interrupted") when the trial has no record: the driver was stopped before Tune saved it (a starting
      point is then queued again, so the resumed sweep still tries it).
    - A trial told FAIL when it ran out of retries, which a resume then retried to a final status (Tune does
      not tell the searcher about it): Optuna cannot reopen a finished trial, so its outcome is added as a new
      study trial with the same ray_trial_id and "retry_of".
    """
    views = {t.trial_id: t for t in exp.trials}
    changed = 0
    for frozen in study.get_trials(deepcopy=False):
        trial = views.get(frozen.user_attrs.get("ray_trial_id"))
        if frozen.state is TrialState.RUNNING and frozen.number not in skip:
            if trial is not None and trial.status.finished:
                tell(study, frozen, trial.status, {**frozen.intermediate_values, **trial.values},
                     trial.error or trial.last_result.get("error"))
            else:
                if "fixed_params" in frozen.system_attrs:
                    # A starting point: the restored searcher will not ask for it again, but the study's queue
                    # has moved past it. Queue it anew (whole: a kill mid-ask leaves only some params set).
                    study.enqueue_trial(frozen.system_attrs["fixed_params"])
                tell(study, frozen, TrialStatus.FAILED, {}, reason=INTERRUPTED)
            changed += 1
        elif (frozen.state is TrialState.FAIL and trial is not None and trial.status.final and not trial.status.failed
              and not _retold(study, frozen)):
            study.add_trial(trial.frozen(frozen.distributions, retry_of=frozen.number))
            changed += 1
    return changed


def reconcile_experiment(loc: storage.Location) -> None:
    """After a sweep: the experiment's study.db made to agree with its records (when it has one)."""
    if not (loc.local / STUDY_DB).is_file():
        return
    study = load_study(loc.local)
    if reconcile(study, Experiment.open(loc.local)):
        storage.push(loc, STUDY_DB)


def _retold(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> bool:
    return any(t.user_attrs.get("retry_of") == frozen.number for t in study.get_trials(deepcopy=False))


def _best(values: dict[int, float], direction: optuna.study.StudyDirection) -> float:
    pick = max if direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(values.values())
