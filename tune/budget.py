"""A sweep's time budget: '90m' read as seconds, and its split between the search and finalize. Pure arithmetic.

The budget bounds the whole default flow. Finalize's share is reserved before the search starts, in proportion to
the training each part can do at most: finalize's top-k x seeds full-budget runs against the search's trials, each
counted by the epochs it is expected to train under ASHA (all trials train to the first rung, 1/eta of them on to
the next, ...). Each share is counted down by a Tune stopper (`tune.tuner.TimeBudgetStopper`) as Ray's own
TimeoutStopper counts: only the time between the controller's checks, and Tune pickles the stopper with its state,
so a resumed sweep goes on with what was left. Unlike Ray's `time_budget_s`, whose `stop_all` ends running trials
without telling Tune's callbacks or searcher (they would stay unrecorded), it ends each trial at its next epoch as
ASHA does, marks that result with EXHAUSTED so the searcher starts no new trial, and never kills one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)([smhd]))")


EXHAUSTED = "time_budget_exhausted"  # set on the result at which the time budget ended a trial


class OutOfTime:
    """Mixed into a Tune searcher: after a trial ended on a result marked EXHAUSTED it suggests no new trial."""

    out_of_time = False

    def saw(self, result: dict | None) -> None:
        """Note RESULT (a trial's last result) ending the time budget."""
        if result and result.get(EXHAUSTED):
            self.out_of_time = True


class DurationError(ValueError):
    """A duration that cannot be read; the message says how to write one."""


def parse_duration(value: Any, where: str) -> float:
    """Seconds of VALUE: a number of seconds, or text such as '90m', '1.5h', '1h30m', '45s' (WHERE names it)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(f"{_DURATION.pattern}+", value.strip()):
        seconds = sum(float(n) * UNITS[u] for n, u in _DURATION.findall(value.strip()))
    else:
        raise DurationError(f"{where}: {value!r} is not a duration; write e.g. 90m, 1.5h, 1h30m or 3600 (seconds)")
    if not math.isfinite(seconds) or seconds <= 0:
        raise DurationError(f"{where}: {value!r} must be a positive duration")
    return seconds


def words(seconds: float) -> str:
    """SECONDS as '1h30m', '12m', '45s'."""
    s = round(seconds)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def expected_epochs(rungs: list[int], reduction_factor: float, epochs: int) -> float:
    """Epochs a trial trains on average under ASHA at RUNGS: all to the first rung, 1/eta of them on to the next."""
    if not rungs:
        return float(epochs)
    ends = [*rungs[1:], epochs]
    legs = zip(rungs, ends)
    return rungs[0] + sum((end - start) / reduction_factor ** (i + 1) for i, (start, end) in enumerate(legs))


@dataclass(frozen=True)
class TimeBudget:
    """The whole flow's budget and its two shares, in seconds, and why they are so."""

    total: float
    search: float
    finalize: float
    why: str

    def describe(self) -> str:
        """The plan's line."""
        if not self.finalize:
            return f"time budget {words(self.total)} for the search ({self.why})"
        return (f"time budget {words(self.total)}: search {words(self.search)}, finalize {words(self.finalize)} "
                f"reserved ({self.why})")


def split(total: float, num_samples: int, rungs: list[int], reduction_factor: float, epochs: int,
          finalize_runs: int) -> TimeBudget:
    """TOTAL seconds split between NUM_SAMPLES trials under ASHA and FINALIZE_RUNS full-budget runs."""
    search = num_samples * expected_epochs(rungs, reduction_factor, epochs) / epochs
    if not finalize_runs:
        return TimeBudget(total, total, 0.0, "no finalize")
    share = search / (search + finalize_runs)
    why = (f"finalize trains at most {finalize_runs} full-budget runs against the search's ~{search:.1f} full "
           "trials' worth under ASHA")
    return TimeBudget(total, total * share, total * (1 - share), why)
