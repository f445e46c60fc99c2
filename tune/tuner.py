"""The Tune side of a sweep: the Tuner (trainable, Optuna searcher, ASHA, storage, callbacks) and running it."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.stopper import CombinedStopper, Stopper

from mmtune.model.metrics import is_better
from mmtune.tune import storage
from mmtune.tune.budget import EXHAUSTED, OutOfTime, expected_epochs
from mmtune.tune.console import Progress
from mmtune.tune.job import finalize_runs, time_budget
from mmtune.tune.racing import Race
from mmtune.tune.recorder import TrialRecorder
from mmtune.tune.searcher import StudySearch
from mmtune.tune.space import SearchSpace
from mmtune.tune.tracking import tracking_callbacks
from mmtune.tune.trainable import train_trial

if TYPE_CHECKING:
    from mmtune.tune.resources import Plan
    from mmtune.tune.job import Job


def build_tuner(job: Job, plan: Plan, callbacks: tuple, out: TextIO | None, *, searcher: Any = None,
                scheduler: Any = None, stopper: Any = None) -> tune.Tuner:
    """The Tuner: the space's searcher and ASHA unless others are given, durable records, progress on OUT."""
    space = job.space
    return tune.Tuner(
        make_trainable(job, plan, callbacks),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=make_searcher(space, job.loc) if searcher is None else searcher,
            scheduler=make_scheduler(space) if scheduler is None else scheduler,
            num_samples=space.num_samples, max_concurrent_trials=plan.concurrent,
            # A fresh worker per trial costs ~2-3 s of imports and data fetch; reuse pays it once.
            reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=run_config(job, out, with_time_budget(job, stopper)))


def with_time_budget(job: Job, stopper: Any) -> Any:
    """STOPPER, joined by the stopper of the search's share of the time budget when there is one."""
    limit = time_budget(job.space, job.opts.finalize_top_k, job.opts.finalize_seeds)
    if limit is None:
        return stopper
    own = TimeBudgetStopper(limit.search)
    return own if stopper is None else CombinedStopper(stopper, own)


def trial_dirname(trial: Any) -> str:
    """Short, stable trial folder names (Ray's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def make_trainable(job: Job, plan: Plan, callbacks: tuple) -> Any:
    """The trial function with the data set shared through the object store (put once, zero-copy reads)."""
    return tune.with_resources(
        tune.with_parameters(train_trial, data=job.variants, space=job.space, exp_dir=str(job.loc), callbacks=callbacks),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})


def tune_callbacks(job: Job, out: TextIO | None) -> list:
    """Tune callbacks of every sweep: result.json per trial, the durable records, the tracking asked for
    (--mlflow, --tensorboard), the progress view."""
    space = job.space
    # Finalize's runs train the full budget, a search trial on average expected_epochs of it under ASHA.
    after = (finalize_runs(space, job.opts.finalize_top_k, job.opts.finalize_seeds) * space.epochs
             / expected_epochs(space.rungs, space.reduction_factor, space.epochs))
    progress = [] if out is None else [Progress(space.num_samples, space.metric, out, rungs=space.rungs, after=after)]
    tracking = tracking_callbacks(job.loc.local, job.opts.mlflow, job.opts.tensorboard, space.rungs)
    return [JsonLoggerCallback(), TrialRecorder(job.loc, space.rungs), *tracking, *progress]


def run_config(job: Job, out: TextIO | None, stopper: Any = None) -> tune.RunConfig:
    """Storage, failure retries, checkpoint retention, callbacks; Tune's own console output off."""
    space = job.space
    return tune.RunConfig(
        name=job.name, storage_path=job.loc.ray_storage, stop=stopper,
        failure_config=tune.FailureConfig(max_failures=job.opts.max_failures),
        # The best epoch's checkpoint by the metric; Tune also keeps the latest one for resuming. Retention
        # also forces a state snapshot per checkpoint, which keeps a killed driver from forgetting trials.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                                checkpoint_score_order=space.mode),
        callbacks=tune_callbacks(job, out), verbose=0)


def make_searcher(space: SearchSpace, loc: storage.Location) -> StudySearch:
    """The space's Optuna sampler behind mmtune's StudySearch, its study in LOC's study.db; start points first."""
    return StudySearch(space, loc)


class FixedConfigs(OutOfTime, Searcher):
    """Suggests the given configs in order, each once, then finishes (Ray's BasicVariantGenerator needs every
    key of a point to be in the Tuner's param_space, which a sweep does not set)."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self.configs, self.given = [dict(c) for c in configs], 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.given >= len(self.configs) or self.out_of_time:
            return Searcher.FINISHED
        self.given += 1
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn (the configs are fixed) but whether the time budget is spent."""
        self.saw(result)

    def save(self, checkpoint_path: str) -> None:
        """Tune's periodic searcher snapshot: which configs were handed out."""
        Path(checkpoint_path).write_text(json.dumps({"configs": self.configs, "given": self.given}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.configs, self.given = state["configs"], state["given"]


class RacingConfigs(OutOfTime, Searcher):
    """Finalize's runs as a race (tune.racing): the current round's runs, then, once they have all ended, the next
    round's for the configs still in it; finished when the race is settled. While a round's last runs train, a free
    slot starts a next-round seed of the configs that lead so far (`speculative`) instead of idling."""

    def __init__(self, race: Race, configs: dict[int, dict[str, Any]], pairs: list[tuple[int, int]]):
        super().__init__()
        self.race, self.configs, self.pairs = race, configs, pairs
        self.running: dict[str, tuple[int, int]] = {}  # trial id -> (rank, seed index)
        self.best: dict[str, dict] = {}  # trial id -> its best result so far, by the one ranking

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.out_of_time or self.race.over:
            return Searcher.FINISHED
        while True:
            busy = set(self.running.values())
            if todo := [m for m in self.race.missing() if m not in busy]:
                return self._start(trial_id, todo[0])
            if self.race.missing():  # the round's last runs are still training: the next round depends on them
                ahead = self.speculative()
                return None if ahead is None else self._start(trial_id, ahead)
            round_ = self.race.round
            self.race.advance()
            if self.race.round == round_:  # settled: one config left, or every seed ran
                return Searcher.FINISHED

    def speculative(self) -> tuple[int, int] | None:
        """The next round's run of the best config (by mean so far) whose current round has ended and whose next
        seed has not started: the configs ahead are the likeliest to stay in the race, and a slot left free would
        idle until the round's slowest run (often the defaults' large model) ends. None when there is none."""
        nxt, busy = self.race.round + 1, set(self.running.values())
        if nxt >= self.race.seeds:
            return None
        done = [r for r in self.race.leading() if self.race.ran(r, self.race.round)]
        return next(((r, nxt) for r in done if not self.race.ran(r, nxt) and (r, nxt) not in busy), None)

    def unneeded(self, trial_id: str) -> bool:
        """TRIAL_ID is a run trained ahead that the race will not count: its config left, or the race is settled."""
        return trial_id in self.running and not self.race.counts(*self.running[trial_id])

    def _start(self, trial_id: str, run: tuple[int, int]) -> dict[str, Any]:
        self.running[trial_id] = run
        seed, split_seed = self.pairs[run[1]]
        return {**self.configs[run[0]], "seed": seed, "split_seed": split_seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if is_better(result, self.best.get(trial_id), self.race.metric):
            self.best[trial_id] = dict(result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.saw(result)
        if trial_id not in self.running:
            return
        if result and not error:
            self.on_trial_result(trial_id, result)
        rank, i = self.running.pop(trial_id)
        self.race.record(rank, i, None if error else self.best.get(trial_id, {}).get(self.race.metric))

    def save(self, checkpoint_path: str) -> None:
        """Tune's periodic searcher snapshot: the race, and the runs in flight."""
        Path(checkpoint_path).write_text(json.dumps({
            "race": self.race.to_dict(), "configs": {str(r): c for r, c in self.configs.items()},
            "pairs": self.pairs, "running": self.running}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.race, self.pairs = Race.from_dict(state["race"]), [tuple(p) for p in state["pairs"]]
        self.configs = {int(r): c for r, c in state["configs"].items()}
        self.running = {t: tuple(v) for t, v in state["running"].items()}


class RaceScheduler(FIFOScheduler):
    """FIFO, but a run trained ahead stops at its next epoch once its race (SEARCHER's) will not count it, instead
    of holding a slot, and finalize's end, until it has trained every epoch."""

    def __init__(self, searcher: RacingConfigs):
        super().__init__()
        self.searcher = searcher

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self.STOP if self.searcher.unneeded(trial.trial_id) else self.CONTINUE


class TimeBudgetStopper(Stopper):
    """Ends every trial at its next reported epoch once SECONDS have passed (tune/budget.py says why this way)."""

    def __init__(self, seconds: float):
        self.left, self._last = seconds, None

    def _tick(self) -> None:
        now = time.time()
        if self._last is not None:
            self.left -= now - self._last
        self._last = now

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._tick()
        if self.left > 0:
            return False
        result[EXHAUSTED] = True  # the searchers read it and start no new trial
        return True

    def stop_all(self) -> bool:
        self._tick()  # the controller asks every step: the clock runs on
        return False

    def __setstate__(self, state: dict) -> None:
        state["_last"] = None  # a resumed sweep: the time the driver was down is not counted
        self.__dict__.update(state)


def make_scheduler(space: SearchSpace) -> TrialScheduler:
    """ASHA on epochs (max_t: the epoch budget) at the space's rungs; first come, first served when it has none."""
    if not space.rungs:
        return FIFOScheduler()  # ASHA could stop a trial only where its budget ends anyway
    return ASHAScheduler(time_attr="training_iteration", max_t=space.epochs, grace_period=space.grace_period,
                         reduction_factor=space.reduction_factor, brackets=space.brackets)

