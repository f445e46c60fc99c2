"""bench/tasks.py (issue 21's many-task harness): its analysis over tasks on hand-made results (fast), and its smoke
path end to end on one tiny task (slow): data, the default flow and `mmtune compare`, one file per task, kept."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from bench import tasks


def _result(name: str, gain: float, se: float, setting: dict | None = None) -> dict:
    """A task's record as run_task writes it, with a paired gain of GAIN +- SE."""
    return {"task": name, "gain": {"mean": gain, "se": se}, "verdict": "x", "validation": {"folds": 5},
            "data": {"splits": {"train": [270, 33], "test": [2000, 230]}}, "sweep_wall_s": 600.0,
            "compare_wall_s": 300.0, "load_avg": {"start": 2.0, "end": 2.5},
            "arms": {"defaults": {"test_f1": [0.5, 0.52], "wall_s": [60.0, 62.0]},
                     "winner": {"test_f1": [0.55, 0.56], "wall_s": [10.0, 11.0]}},
            "setting": setting or {"smoke": False, "seeds": 3, "num_samples": 12}}


def test_analysis_counts_overtuning_and_bootstraps_over_tasks() -> None:
    gains = [0.05, 0.03, -0.01, 0.04, 0.06, 0.05, -0.03, 0.04]
    ses = [0.01, 0.01, 0.01, 0.02, 0.01, 0.01, 0.01, 0.01]  # task 2: -0.01 within 2 se; task 6: -0.03 beyond
    results = [_result(f"t{i}", g, s) for i, (g, s) in enumerate(zip(gains, ses))]
    a = tasks.analyse(results, [r["task"] for r in results])
    assert a["overtuned"] == ["t6"] and a["targets"] == {"gain_interval_above_0": True, "no_overtuning": False}
    assert a["mean_gain"] == pytest.approx(np.mean(gains)) and a["complete"]
    x = np.array(gains)
    means = x[np.random.default_rng(0).integers(0, 8, (10_000, 8))].mean(axis=1)
    assert a["gain_ci95"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    assert a["gain_ci95"] == tasks.analyse(results, a["tasks_planned"])["gain_ci95"]  # fixed seed: the same interval
    md = tasks.markdown({"analysis": a, "results": results, "setting": {"smoke": False}})
    assert md.count("\n| t") == 8 and "(overtuned)" in md and "1 of 8 tasks: t6" in md
    assert "Target, the interval above 0: **met**." in md and "Target, 0 of 8: **missed**." in md
    assert "| 5-fold CV |" in md and "| 9.8 |" in md  # the sweep as a multiple of one default training (600 / 61)


def test_a_partial_run_says_so_and_a_kept_file_of_another_setting_stops_the_run(tmp_path) -> None:
    a = tasks.analyse([_result("t0", -0.01, 0.02)], ["t0", "t1"])
    assert not a["complete"] and a["targets"]["gain_interval_above_0"] is False
    assert "(so far: 1 of 2 tasks; not yet shown)" in tasks.markdown({"analysis": a, "results": [_result("t0", 0, 1)],
                                                                      "setting": {"smoke": True}})
    out = tmp_path / "out"
    (out / "tasks").mkdir(parents=True)
    name = tasks.SMOKE_TASKS[0].name
    (out / "tasks" / f"{name}.json").write_text(json.dumps(_result(name, 0.0, 0.1, {"smoke": True, "seeds": 3,
                                                                                     "num_samples": 2})))
    with pytest.raises(SystemExit, match="seeds.: 3.*this run asks.*seeds.: 2"):
        tasks.main(["--smoke", "--out", str(out), "--keep", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()  # stopped before anything ran


def test_every_size_and_task_is_well_formed() -> None:
    assert len(tasks.TASKS) >= 8 and len({t.name for t in tasks.TASKS}) == len(tasks.TASKS)
    small = tasks.SIZES["small"]
    assert small["n_train"] == 270 and small["n_val"] == 0 and 0.10 <= small["positive_rate"] <= 0.15
    assert all(s["n_test"] >= 2000 for s in tasks.SIZES.values())
    assert {t.size for t in tasks.SMOKE_TASKS} == set(tasks.SMOKE_SIZES)


@pytest.mark.slow
def test_tasks_smoke_keeps_one_file_per_task_and_skips_finished_ones(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # each sweep starts its own local Ray, as a user's does
    out, keep = tmp_path / "out", tmp_path / "work"
    name = tasks.SMOKE_TASKS[0].name  # the small task (no val.npz) only: the medium one runs the same code
    args = ["--smoke", "--only", name, "--out", str(out), "--keep", str(keep)]
    s = tasks.main(args)
    (r,) = s["results"]
    assert r["task"] == name and r["setting"]["smoke"] and r["setting"]["seeds"] == 2
    assert "val" not in r["data"]["splits"] and not (keep / name / "data" / name / "val.npz").exists()
    train_n, train_pos = r["data"]["splits"]["train"]
    assert train_n == tasks.SMOKE_SIZES["small"]["n_train"] and 0.08 < train_pos / train_n < 0.22
    assert r["validation"]["folds"] == 5  # no val.npz and few positives: cv auto chose 5 folds
    # The paired comparison is the one `mmtune compare` wrote into the experiment.
    exp = keep / name / "results" / name
    stored = json.loads((exp / "compare" / "summary.json").read_text())
    assert r["paired"] == stored["paired"] and len(r["paired"]) == 2 and r["verdict"] == stored["verdict"]
    for p in r["paired"]:
        assert p["gain"] == pytest.approx(p["winner"] - p["defaults"])
    assert (exp / "final" / "summary.json").is_file() and r["sweep_wall_s"] > 0 and r["compare_wall_s"] > 0
    assert s["analysis"]["tasks_done"] == [name] and not s["analysis"]["complete"]
    table = (out / "table.md").read_text()
    assert f"| {name} |" in table and "so far: 1 of 2 tasks" in table and "SMOKE RUN" in table
    kept = (out / "tasks" / f"{name}.json").read_text()
    again = tasks.main(args)  # the task is on file: nothing runs again, nothing changes
    assert (out / "tasks" / f"{name}.json").read_text() == kept and again["results"] == s["results"]
    assert json.loads((exp / "compare" / "summary.json").read_text()) == stored
    # The recipe-epoch rules on the kept experiment: each rule's recipe tested from one run per seed.
    from bench import recipe_epochs

    rec = recipe_epochs.main(["--keep", str(keep), "--seeds", "2", "--out", str(out)])
    (t,) = rec["results"]
    cfg = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert t["epochs"]["argmax"] == cfg["epochs"] and t["epochs"]["cycle_end"] == 1  # t0 1: cycles end at 1, 3
    assert [len(c) for c in t["curves"]] == [max(t["epochs"].values())] * 2
    assert t["test_f1"]["argmax"] == [c[cfg["epochs"] - 1] for c in t["curves"]]
    assert (out / "recipe" / f"{name}.json").is_file() and "argmax" in (out / "recipe_table.md").read_text()


def test_recipe_epoch_rules_on_plain_curves() -> None:
    from bench import recipe_epochs as re_

    assert re_.cycle_end(4, 2, 12) == 12 and re_.cycle_end(4, 2, 11) == 4 and re_.cycle_end(10, 2, 5) == 5
    zigzag = [[0.5, 0.6, 0.55, 0.9, 0.5, 0.7, 0.75, 0.72, 0.6], [0.5, 0.6, 0.55, 0.9, 0.5, 0.7, 0.75, 0.72, 0.6, 0.6]]
    assert [max(range(len(c)), key=c.__getitem__) + 1 for c in zigzag] == [4, 4]  # the raw argmax: a lone peak
    assert re_.smoothed_argmax(zigzag, 1.0) == 7  # it averages away (0.65); epochs 6-8 hold up (0.72 at 7)
    assert re_.smoothed_argmax([[0.3, 0.2, 0.1]], -1.0) == 3  # a loss: the lowest smoothed value
