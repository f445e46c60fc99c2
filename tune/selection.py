"""How finalize picks its winner among the retrained configs: a variance-aware rule on plain numbers.

On a small set one config's seed-to-seed spread is as large as the gaps between configs, so the mean alone
rewards luck. The rule, best first:
  1. Configs whose every seed trained come before those with a failed or diverged seed (fewer failures first).
  2. The lower confidence bound mean - sd/sqrt(n) of the metric over a config's seeds (for a loss, the upper
     bound mean + sd/sqrt(n), lower is better) picks the leader; equal bounds: the second key's mean.
  3. The one-standard-error rule: every config whose mean is within one SE of the leader's mean (SE = the
     leader's sd/sqrt(n), as in Breiman's and glmnet's rule) ties with it; among the tied, the model with
     fewer parameters wins (cheaper to deploy), then the better mean of the second key (`tie_breaker`).
  4. The defaults (`tune.defaults`), when they contend, win unless that pick beats them beyond the noise: its
     mean ahead of theirs by more than 2 standard errors of the difference (the seed sd pooled over the configs,
     `gain`; with no config seeded twice, unless it ties with them). The gain the user is shown is this one.
The sweep's rank never decides. Plain arithmetic: importing this module imports neither Ray nor torch.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmtune.model.metrics import is_finite, mode_of, rank_key, tie_breaker
from mmtune.tune.defaults import DEFAULTS_WON

NOISE_SE = 2.0  # a difference within this many standard errors of 0 is inside the noise

if TYPE_CHECKING:
    from mmtune.model.config import TrainConfig
    from mmtune.tune.experiment import Trial


@dataclass
class Candidate:
    """One of the top-k sweep configs and its retraining runs (one per seed)."""

    rank: int  # 0-based position among the top-k: the grid's "rank"
    sweep_rank: int | None  # 1-based rank of its trial among the sweep's usable ones (shown, never used to choose)
    trial: Trial
    cfg: TrainConfig
    runs: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    num_params: int | None = None  # of the model this config builds on the data's modalities
    left_race: str | None = None  # why finalize's race stopped giving it seeds (tune/racing.py); None: it ran them all
    cut: int = 0  # its runs the time budget stopped short of the full budget (left out of its seeds)
    defaults: bool = False  # the untuned config (tune.defaults): it wins every tie

    @property
    def ok_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["ok"]]

    @property
    def failed(self) -> int:
        return len(self.runs) - len(self.ok_runs)

    def se(self, metric: str) -> float:
        """Standard error of the mean of METRIC over the successful seeds (0 for one seed, NaN for none)."""
        n = len(self.ok_runs)
        return self.std.get(metric, math.nan) / math.sqrt(n) if n else math.nan

    def bound(self, metric: str) -> float:
        """The confidence bound the rule ranks by: mean - SE for a maximized METRIC, mean + SE for a loss."""
        sign = -1.0 if mode_of(metric) == "max" else 1.0
        return self.mean.get(metric, math.nan) + sign * self.se(metric)


@dataclass
class Choice:
    """The outcome of the rule: every candidate best first (the winner first), the leader by bound, its ties."""

    ordered: list[Candidate]
    leader: Candidate
    tied: list[Candidate]  # within one SE of the leader's mean, the leader included
    reason: str
    pick: Candidate | None = None  # the rule's pick before the defaults' check (rule 4); None: the winner

    @property
    def winner(self) -> Candidate:
        return self.ordered[0]


def aggregate(runs: list[dict[str, Any]], keys: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std over RUNS of each of KEYS (non-finite values left out)."""
    mean, std = {}, {}
    for k in keys:
        vals = [float(r[k]) for r in runs if is_finite(r.get(k))]
        mean[k] = statistics.fmean(vals) if vals else math.nan
        std[k] = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else math.nan
    return mean, std


def tier(c: Candidate, metric: str) -> tuple[int, int]:
    """(0 complete, 1 some seed failed, 2 nothing usable; failed seeds): a failed seed makes a config unreliable,
    whatever its mean on the others."""
    if not c.ok_runs or not is_finite(c.mean.get(metric)):
        return 2, c.failed
    return (1 if c.failed else 0), c.failed


def by_bound(cands: list[Candidate], metric: str) -> list[Candidate]:
    """CANDS best first by tier, then the confidence bound, then the second key's mean (never the sweep rank)."""
    second = tie_breaker(metric)
    return sorted(cands, key=lambda c: (tier(c, metric), rank_key({metric: c.bound(metric),
                                                                   second: c.mean.get(second)}, metric)))


def choose(cands: list[Candidate], metric: str) -> Choice:
    """Apply the rule (module docstring) to CANDS, whose runs are aggregated and num_params set."""
    ordered = by_bound(cands, metric)
    leader = ordered[0]
    se = leader.se(metric)
    tied = [c for c in ordered if tier(c, metric) == tier(leader, metric) and tier(c, metric)[0] < 2
            and abs(c.mean[metric] - leader.mean[metric]) <= se + 1e-12]
    second = tie_breaker(metric)
    # Unknown sizes sort last; then the second key; then the bound, so the pick is always a continuous key's.
    winner = min(tied or [leader], key=lambda c: (c.num_params if c.num_params is not None else math.inf,
                                                  rank_key({second: c.mean.get(second)}, second)[0],
                                                  rank_key({metric: c.bound(metric)}, metric)[0]))
    pick, reason = winner, _reason(winner, leader, tied, metric)
    if winner.defaults:
        reason = f"{DEFAULTS_WON}: the rule picks them ({reason})"
    elif (kept := _kept_defaults(winner, cands, tied, metric)) is not None:
        winner, reason = kept
    return Choice([winner, *[c for c in ordered if c is not winner]], leader, tied, reason, pick)


def _kept_defaults(pick: Candidate, cands: list[Candidate], tied: list[Candidate],
                   metric: str) -> tuple[Candidate, str] | None:
    """The defaults and why they win, when they contend and PICK does not beat them beyond the noise (rule 4)."""
    d = next((c for c in cands if c.defaults), None)
    if d is None or tier(d, metric) != tier(pick, metric) or (g := gain(pick, d, cands, metric)) is None:
        return None
    if g["inside_noise"] is False or (g["inside_noise"] is None and d not in tied):
        return None
    how = ("tied, no noise estimate" if g["se"] is None
           else f"{g['gain']:+.4f} ± {g['se']:.4f} se, within {NOISE_SE:g} se")
    return d, f"{DEFAULTS_WON}: the rule's pick, trial {pick.trial.trial_id}, is {how} ahead of them"


def _reason(winner: Candidate, leader: Candidate, tied: list[Candidate], metric: str) -> str:
    """One line saying why WINNER won."""
    what = "lower bound mean - sd/sqrt(n)" if mode_of(metric) == "max" else "upper bound mean + sd/sqrt(n)"
    others = [c for c in tied if c is not winner]
    if not others:
        return f"best {what} of {metric}"
    sizes = [c.num_params for c in others if c.num_params is not None]
    if winner.num_params is not None and sizes and winner.num_params < min(sizes):
        vs = leader.num_params if winner is not leader else min(sizes)
        return (f"tied within one SE ({len(tied)} configs): chose the smaller model ({winner.num_params:,} params "
                f"vs {vs:,})")
    return f"tied within one SE ({len(tied)} configs), same size: chose by the mean {tie_breaker(metric)}"


def rule_text(metric: str, defaults: bool = False) -> str:
    """The selection rule in words, for the summary, the config header and the report (DEFAULTS: they contend)."""
    bound = "mean - sd/sqrt(n)" if mode_of(metric) == "max" else "mean + sd/sqrt(n) (lower is better)"
    return (f"{bound} of {metric} over seeds (each run's best epoch); configs with a failed seed rank last; "
            f"configs whose mean is within one SE (the leader's sd/sqrt(n)) of the leader's tie with it, and "
            f"the smallest model (fewest parameters) of the tied wins, then the mean {tie_breaker(metric)}"
            + (f"; the defaults stay the winner unless it beats them by more than {NOISE_SE:g} se of the difference"
               if defaults else "") + "; the sweep rank never decides")


def pooled_sd(groups: list[list[float]]) -> tuple[float | None, int]:
    """The sd pooled over GROUPS (each one config's seed values) of two or more values, and its degrees of
    freedom; (None, 0) without any such group."""
    groups = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None, 0
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / dof), dof


def gain(a: Candidate, b: Candidate, cands: list[Candidate], key: str) -> dict[str, Any] | None:
    """How much better A's mean KEY is than B's (a loss: lower), with the standard error of the difference from the
    seed sd pooled over CANDS, and whether it lies inside the noise (within NOISE_SE se); None when either has no
    value."""
    values = {id(c): [float(r[key]) for r in c.ok_runs if is_finite(r.get(key))] for c in cands}
    va, vb = values[id(a)], values[id(b)]
    if not va or not vb:
        return None
    sign = 1.0 if mode_of(key) == "max" else -1.0
    diff = sign * (statistics.fmean(va) - statistics.fmean(vb))
    sd, dof = pooled_sd(list(values.values()))
    se = None if sd is None else sd * math.sqrt(1 / len(va) + 1 / len(vb))
    return {"key": key, "gain": diff, "se": se, "dof": dof, "n": [len(va), len(vb)],
            "inside_noise": None if se is None else abs(diff) <= NOISE_SE * se}
