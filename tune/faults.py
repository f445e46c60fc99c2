"""Fault injection for tests and `bench/faults.py`: loop callbacks that fail a chosen trial once.

A fault fires at most once per trial (a marker file records it), so a retried trial continues from
its checkpoint instead of failing again. `kill_processes_of` SIGKILLs a private Ray runtime. The
CLI never installs these.
"""
from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.model.loop import Trainer


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
            for model in trainer.models:
                for p in model.parameters():
                    p.data.fill_(math.nan)
            return
        raise InjectedFault(f"injected fault at epoch {self.epoch} for {self.match}")


def _key(match: dict[str, Any]) -> str:
    return "_".join(f"{k}={v}" for k, v in sorted(match.items())).replace("/", "-") or "all"


def kill_processes_of(marker: str) -> int:
    """SIGKILL every process whose command line or environment mentions MARKER (a private Ray temp dir)."""
    killed = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            text = (d / "cmdline").read_bytes() + (d / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in text:
            try:
                os.kill(int(d.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def pids_with_env(name: str, value: str) -> list[int]:
    """Every process (but this one) whose environment holds NAME=VALUE: e.g. the processes of one Ray node."""
    needle = f"\0{name}={value}\0".encode()
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in b"\0" + (d / "environ").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found
