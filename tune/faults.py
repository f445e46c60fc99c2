"""Fault injection for tests and `bench/faults.py`: loop callbacks that fail a chosen trial once.

A fault fires at most once per trial (a marker file records it), so a retried trial continues from
its checkpoint instead of failing again. The CLI never installs these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.loop import Trainer


class InjectedFault(RuntimeError):
    """Raised by a FaultInjector."""


@dataclass
class FaultInjector:
    """Raise (or make the model diverge) at EPOCH in trials whose config matches MATCH."""

    marker_dir: str  # shared by every trial; holds one file per fault that fired
    epoch: int
    match: dict[str, Any] = field(default_factory=dict)  # config fields that select the trial
    kind: str = "raise"  # "raise" or "nan" (weights set to NaN: the next epoch's loss diverges)

    def __call__(self, record: dict[str, Any], trainer: Trainer) -> None:
        cfg = trainer.cfg.to_dict()
        if trainer.epoch != self.epoch or any(cfg.get(k) != v for k, v in self.match.items()):
            return
        marker = Path(self.marker_dir) / f"{self.kind}-{self.epoch}-{_key(self.match)}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(record.get("epoch")))
        if self.kind == "nan":
            for p in trainer.model.parameters():
                p.data.fill_(math.nan)
            return
        raise InjectedFault(f"injected fault at epoch {self.epoch} for {self.match}")


def _key(match: dict[str, Any]) -> str:
    return "_".join(f"{k}={v}" for k, v in sorted(match.items())).replace("/", "-") or "all"
