"""Finalize's seeds as a race: a seed is trained only for the configs that can still win.

Finalize retrains each top-k config over S seeds and picks by `tune.selection`'s rule; on a small set most of that
budget goes to configs already clearly behind after a seed or two. Racing (Maron & Moore's Hoeffding races,
Birattari et al.'s F-race for algorithm configuration) runs the seeds in rounds, round r training seed pair r of
every config still in the race. After each round a config leaves the race when
  - it has a failed seed while a config without one is still in (the rule ranks it last whatever its mean), or
  - its mean is behind the leader's (the best mean) by more than c standard errors of the difference,
    c * sd * sqrt(1/n_leader + 1/n_config), with sd the seed sd pooled over the configs' runs so far and c the
    two-sided 95 % quantile of Student's t with the pooled degrees of freedom (a pooled sd from a few runs is
    itself noisy: on the search-quality benchmark, 3 degrees of freedom gave 0.009 where the final 9 runs gave
    0.03, and a z of 2 put out the config the full grid chose); before any config has two seeds, the sweep's own
    noise estimate (`tune.noise.sweep_sd`: the fold sd under CV, a binomial approximation otherwise; both larger
    than the sd of a retrained config's value) with c = Z. With no estimate at all nobody leaves.
c >= 2 is wider than the rule's one-SE tie band, so a config that could still tie with the leader (and win by being
smaller) stays in. The race is settled when one config is left, or every seed has run. Runs may be trained ahead of
their round (tune.tuner.RacingConfigs fills idle slots so); a round is decided on the runs of rounds up to it only,
and a run of a config that has left the race, or beyond the last round, is not counted, so that who leaves, who
wins and with which seeds never hang on which run ended first. No Ray, no torch.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from mmtune.model.metrics import is_finite, mode_of
from mmtune.tune.selection import Candidate, Choice, by_bound, choose, pooled_sd

Z = 2.0  # standard errors of the difference that put a config out of the race, with the sweep's sd


@dataclass
class Race:
    """The rounds of one finalize: who is still in, the value each (config, seed) run scored, who left and why."""

    ranks: list[int]  # the candidates' ranks (tune.candidates.Candidate.rank)
    seeds: int  # seed pairs per config at most
    metric: str
    prior_sd: float | None  # the sweep's noise estimate, used until some config has two seeds
    # rank -> seed index -> the run's best-epoch value (None: it failed)
    values: dict[int, dict[int, float | None]] = field(default_factory=dict)
    out: dict[int, str] = field(default_factory=dict)  # rank -> why it left the race
    round: int = 0
    z: float = Z
    over: bool = False  # settled: the round stays at the last one

    @property
    def alive(self) -> list[int]:
        """The ranks still in the race."""
        return [r for r in self.ranks if r not in self.out]

    def counts(self, rank: int, seed_index: int) -> bool:
        """Whether a run of RANK with seed pair SEED_INDEX can still count: not when RANK has left the race, nor
        beyond the last round of a race that is over (a run trained ahead of a round that never came)."""
        return rank not in self.out and not (self.over and seed_index > self.round)

    def record(self, rank: int, seed_index: int, value: float | None) -> None:
        """The best-epoch value of RANK's run with seed pair SEED_INDEX (None or non-finite: the run failed), when
        it `counts`."""
        if not self.counts(rank, seed_index):
            return
        self.values.setdefault(rank, {})[seed_index] = float(value) if is_finite(value) else None

    def ran(self, rank: int, seed_index: int) -> bool:
        """Whether the run of RANK with seed pair SEED_INDEX is recorded (failed runs included)."""
        return seed_index in self.values.get(rank, {})

    def missing(self) -> list[tuple[int, int]]:
        """(rank, seed index) runs the current round still needs."""
        return [(r, self.round) for r in self.alive if not self.ran(r, self.round)]

    def advance(self) -> list[tuple[int, int]]:
        """Close the current round (every run of it recorded): settle who leaves, and return the next round's runs
        not yet recorded; when the race is over (one config left, or every seed ran) the round stays and this is []."""
        assert not self.missing(), "the round is not complete"
        self.settle()
        if len(self.alive) <= 1 or self.round + 1 >= self.seeds:
            self.over = True
            for r in self.ranks:
                self._drop_ahead(r)
            return []
        self.round += 1
        return self.missing()

    def settle(self) -> None:
        """Put out the configs that can no longer win (module docstring)."""
        alive = self.alive
        failed = [r for r in alive if None in self._upto(r).values()]
        if len(failed) < len(alive):
            for r in failed:
                self._leave(r, f"out after seed {self.round + 1}: a seed failed (the rule ranks it last)")
        sd, _, dof = self.sd()
        if sd is None:
            return
        ok = {r: self._ok(r) for r in self.leading()}
        if len(ok) < 2:
            return
        sign = 1.0 if mode_of(self.metric) == "max" else -1.0
        leader = next(iter(ok))
        best, c = statistics.fmean(ok[leader]), self.critical(dof)
        for r in [r for r in ok if r != leader]:
            gap, se = sign * (best - statistics.fmean(ok[r])), sd * math.sqrt(1 / len(ok[leader]) + 1 / len(ok[r]))
            if gap > c * se:
                self._leave(r, f"out after seed {self.round + 1}: {gap:.4f} behind the leader's mean "
                               f"(> {c:.2f} x se {se:.4f})")

    def leading(self) -> list[int]:
        """The ranks in the race with a run that scored, best mean first (ties: the better sweep rank)."""
        sign = 1.0 if mode_of(self.metric) == "max" else -1.0
        means = {r: statistics.fmean(ok) for r in self.alive if (ok := self._ok(r))}
        return sorted(means, key=lambda r: (-sign * means[r], self.ranks.index(r)))

    def critical(self, dof: int) -> float:
        """Standard errors that put a config out: Student's t (95 %, two-sided) for a pooled sd, Z for the prior."""
        if not dof:
            return self.z
        from scipy.stats import t  # late: scipy (scikit-learn's dependency) only when seeds are compared

        return float(t.ppf(0.975, dof))

    def sd(self) -> tuple[float | None, str, int]:
        """The seed sd pooled over the configs with two or more seeds, else the prior; where it comes from; its
        degrees of freedom (0 for the prior)."""
        groups = [v for v in (self._ok(r) for r in self.ranks) if len(v) > 1]
        pooled, dof = pooled_sd(groups)
        if pooled:
            return pooled, f"seed sd {pooled:.4f} pooled over {len(groups)} config(s), {dof} dof", dof
        if self.prior_sd is not None and self.prior_sd > 0:
            return self.prior_sd, f"the sweep's noise estimate, sd {self.prior_sd:.4f}", 0
        return None, "no noise estimate", 0

    def _upto(self, rank: int) -> dict[int, float | None]:
        """RANK's values of the rounds decided so far and the current one (not those trained ahead)."""
        return {i: v for i, v in self.values.get(rank, {}).items() if i <= self.round}

    def _ok(self, rank: int) -> list[float]:
        return [v for v in self._upto(rank).values() if v is not None]

    def _leave(self, rank: int, why: str) -> None:
        self.out[rank] = why
        self._drop_ahead(rank)

    def _drop_ahead(self, rank: int) -> None:
        """Forget RANK's runs trained ahead of the current round: that round never comes for it."""
        if rank in self.values:
            self.values[rank] = self._upto(rank)

    def to_dict(self) -> dict[str, Any]:
        """The race as JSON (searcher snapshots, finalize's summary)."""
        return {"ranks": self.ranks, "seeds": self.seeds, "metric": self.metric, "prior_sd": self.prior_sd,
                "values": {str(r): {str(i): v for i, v in vs.items()} for r, vs in self.values.items()},
                "out": {str(r): why for r, why in self.out.items()}, "round": self.round, "z": self.z,
                "over": self.over}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Race":
        """The inverse of to_dict."""
        return cls(d["ranks"], d["seeds"], d["metric"], d["prior_sd"],
                   {int(r): {int(i): v for i, v in vs.items()} for r, vs in d["values"].items()},
                   {int(r): why for r, why in d["out"].items()}, d["round"], d["z"], d.get("over", False))


def raced_choice(cands: list[Candidate], race: Race) -> Choice:
    """The rule applied to the configs left in RACE; those that left it follow, by bound, each with its reason."""
    for c in cands:
        c.left_race = race.out.get(c.rank)
    alive = [c for c in cands if c.left_race is None]
    choice = choose(alive, race.metric)
    return Choice([*choice.ordered, *by_bound([c for c in cands if c.left_race], race.metric)], choice.leader,
                  choice.tied, choice.reason, choice.pick)
