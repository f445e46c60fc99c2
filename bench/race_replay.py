"""Replay finalize's race (mmtune/tune/racing.py) on a finalize run that trained every seed of every config.

A run is deterministic given its config and seeds (tests/test_finalize.py: a retrain repeats a sweep trial number
for number), so the race would have seen exactly these values in this order: replaying it on the full grid tells
which config the race picks and how many runs it trains, with no training. Used by bench/search_quality.py.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable


def replay(exp: Path, test_f1: Callable[[str], float]) -> dict[str, Any]:
    """The race over EXP's full finalize grid: the runs it trains, its pick, and the full rule's pick, with the test F1
    of each (TEST_F1 of a run's best checkpoint, averaged over all its seeds, so both picks are scored alike)."""
    from mmtune.model.metrics import tie_breaker
    from mmtune.tune.experiment import Experiment
    from mmtune.tune.noise import sweep_sd
    from mmtune.tune.racing import Race, raced_choice
    from mmtune.tune.selection import Candidate, aggregate

    final = json.loads((exp / "final/summary.json").read_text())
    metric, configs = final["metric"], final["configs"]
    runs = {c["rank"]: sorted(c["runs"], key=lambda r: r["seed"]) for c in configs}
    race = Race(sorted(runs), len(final["seeds"]), metric, sweep_sd(Experiment.open(exp))[0])
    todo = race.missing()
    while todo:
        for rank, i in todo:
            run = runs[rank][i]
            race.record(rank, i, run.get(metric) if run["ok"] else None)
        todo = race.advance()
    cands = []
    for c in configs:
        given = [r for r in runs[c["rank"]][:len(race.values[c["rank"]])] if r["ok"]]
        # The rule reads the runs, their aggregates and the size only: no trial or config needed.
        cand = Candidate(c["rank"], c["sweep_rank"], None, None,  # type: ignore[arg-type]
                         runs=given, num_params=c["num_params"])
        cand.mean, cand.std = aggregate(given, [metric, tie_breaker(metric)])
        cands.append(cand)
    pick = raced_choice(cands, race).winner.rank
    full = configs[0]["rank"]  # the summary lists the winner first
    test = {c["rank"]: statistics.fmean(test_f1(r["checkpoint"]) for r in c["runs"] if r.get("checkpoint"))
            for c in configs if c["rank"] in (full, pick)}
    return {"runs_full": sum(len(r) for r in runs.values()), "runs_raced": sum(len(v) for v in race.values.values()),
            "out": {str(k): v for k, v in race.out.items()}, "pick_full": full, "pick_raced": pick,
            "same_pick": pick == full, "test_f1_full": test[full], "test_f1_raced": test[pick],
            "sd": race.sd()[0], "dof": race.sd()[2]}
