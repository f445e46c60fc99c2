"""How a run or a sweep trial ends: one closed vocabulary, used by the loop, the sweep, its files and reports."""
from __future__ import annotations

from enum import StrEnum

STATUS_KEY = "trial_status"  # the result key under which a sweep trial reports its status every epoch


class TrialStatus(StrEnum):
    """The fate of a training run or sweep trial; the value is what files and tables show."""

    RUNNING = "running"  # still training (reported with every epoch but the last)
    COMPLETED = "completed"  # trained the whole epoch budget
    EARLY_STOPPED = "early_stopped"  # patience ran out: no improvement of the monitored metric
    STOPPED = "stopped"  # a loop callback asked to stop
    PRUNED = "pruned"  # the scheduler (ASHA) stopped it at a rung, with fewer epochs than the others
    NAN = "nan"  # the training loss diverged (NaN/Inf)
    INFEASIBLE = "infeasible"  # the sampled combination of settings cannot build a model
    FAILED = "failed"  # raised and ran out of retries; a resume retries it
    UNFINISHED = "unfinished"  # no final record: still running, or the sweep was interrupted

    @property
    def finished(self) -> bool:
        """Ended (for good or as failed): it will not report again in this run of the sweep."""
        return self not in (TrialStatus.RUNNING, TrialStatus.UNFINISHED)

    @property
    def final(self) -> bool:
        """Ended for good: a resume keeps it as it is (a failed trial is retried instead)."""
        return self.finished and self is not TrialStatus.FAILED

    @property
    def usable(self) -> bool:
        """Its metric values are real results that may be ranked (it trained and did not diverge)."""
        return self in (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED, TrialStatus.STOPPED, TrialStatus.PRUNED)

    @property
    def failed(self) -> bool:
        """It produced no usable result: an error, a diverged loss or an impossible config."""
        return self in (TrialStatus.FAILED, TrialStatus.NAN, TrialStatus.INFEASIBLE)

    @property
    def label(self) -> str:
        """The word for tables and legends."""
        return {TrialStatus.PRUNED: "pruned (ASHA)", TrialStatus.EARLY_STOPPED: "early stopped"}.get(self, self.value)
