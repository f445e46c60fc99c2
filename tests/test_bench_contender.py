"""bench/contender_effect.py's choice of the config shipped without the contender, and its analysis (no training: the
compare it runs is tests/test_compare.py's)."""
from __future__ import annotations

import json

import pytest

from bench.contender_effect import analyse, markdown, searched_pick
from mmtune.tune.experiment import FINAL_DIR, SUMMARY


def write_summary(exp, won: bool) -> None:
    (exp / FINAL_DIR).mkdir(parents=True)
    configs = [{"trial_id": "defaults", "params": {"d_model": 256}}, {"trial_id": "aa", "params": {"d_model": 32}},
               {"trial_id": "bb", "params": {"d_model": 16}}]
    (exp / FINAL_DIR / SUMMARY).write_text(json.dumps({"configs": configs, "defaults": {"won": won, "versus": "bb"}}))


def test_no_pick_when_the_defaults_did_not_contend(tmp_path):
    (tmp_path / FINAL_DIR).mkdir()
    (tmp_path / FINAL_DIR / SUMMARY).write_text(json.dumps({"configs": [], "defaults": None}))
    assert searched_pick(tmp_path) is None


@pytest.mark.parametrize("won", [True, False])
def test_the_config_without_the_contender_is_the_rules_searched_pick(tmp_path, won):
    write_summary(tmp_path, won)
    pick = searched_pick(tmp_path)
    if won:  # the searched config the defaults were kept over (summary's defaults.versus)
        assert (pick["trial_id"], pick["params"]) == ("bb", {"d_model": 16})
    else:  # a searched config won: the contender changed nothing
        assert pick is None


def test_a_task_a_searched_config_won_counts_as_no_effect_and_the_flow_without_is_paired_with_plain_train():
    gain = {"mean": -0.04, "se": 0.01}
    # t1 kept the defaults: compare's "defaults" arm here is the searched pick, its "winner" the defaults' recipe
    results = [{"task": "t1", "defaults_won": True, "searched_pick": "bb", "gain": gain, "verdict": "v",
                "paired": [{"seed": 0, "defaults": 0.50, "winner": 0.46}, {"seed": 1, "defaults": 0.54,
                                                                        "winner": 0.50}]},
               {"task": "t2", "defaults_won": False, "gain": None}]
    # bench/tasks.py's files: "defaults" is plain `mmtune train`, "winner" the flow's best_config.yaml
    tasks = {"t1": {"paired": [{"seed": 0, "defaults": 0.40, "winner": 0.46}, {"seed": 1, "defaults": 0.42,
                                                                             "winner": 0.50}]},
             "t2": {"paired": [{"seed": 0, "defaults": 0.30, "winner": 0.20}, {"seed": 1, "defaults": 0.30,
                                                                             "winner": 0.22}]}}
    a = analyse(results, tasks)
    assert a["tasks"] == 2 and a["defaults_won"] == 1 and a["mean"] == pytest.approx(-0.02)
    assert a["ci95"][0] == pytest.approx(-0.04) and a["ci95"][1] == pytest.approx(0.0)
    w = a["flow_without_contender"]
    assert w["per_task"]["t1"]["mean"] == pytest.approx(0.11)  # the pick (0.50, 0.54) minus plain (0.40, 0.42)
    assert w["per_task"]["t2"]["mean"] == pytest.approx(-0.09)  # the flow's own (0.20, 0.22) minus plain
    assert w["mean"] == pytest.approx(0.01) and w["overtuned"] == ["t2"]  # t2: -0.09, se 0.01
    table = markdown(results, a)
    assert "| t1 | yes | bb | 0.520 | 0.480 | -0.040 ± 0.010 | v |" in table and "| t2 | no |" in table
    assert "worse than plain by more than 2 se in 1." in table
