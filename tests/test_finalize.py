"""Finalize on a real small sweep: `mmtune sweep` retrains its top-k configs with several seeds as a second Tune run
and writes the winner as best_config.yaml; `mmtune finalize` does the same on its own."""
from __future__ import annotations

import csv
import json
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmtune.data.batches import Batches
from mmtune.data.npz import load_dataset
from mmtune.model.checkpoint import load_checkpoint
from mmtune.model.config import build_config, load_config
from mmtune.model.loop import evaluate, make_objective
import yaml

from tests.conftest import SMOKE
from mmtune.tune.defaults import DEFAULTS_ID, DEFAULTS_WON, defaults_lines
from mmtune.tune import candidates, leaderboard
from mmtune.tune import finalize as fin
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import Experiment, load_trials, space_of

TOP_K, SEEDS = 2, 2


@pytest.fixture(scope="module")
def exp(ray_session, demo_dir, tmp_path_factory) -> Path:
    """`mmtune sweep` of the smoke space (4 trials) with the defaults contending, finalized at its end with the top 2
    configs and the defaults (outside the smoke space: the sweep never trained them) x 2 seeds, every seed of every
    config (no race: tests/test_racing_tune.py races)."""
    from mmtune.tune.cli import run

    storage = tmp_path_factory.mktemp("res")
    space = storage / "smoke-defaults.yaml"
    space.write_text(yaml.safe_dump({**yaml.safe_load(Path(SMOKE).read_text()), "defaults_contender": True}))
    assert run(["sweep", "--data", str(demo_dir), "--space", str(space), "--storage", str(storage), "--name",
                "fin-smoke", "--finalize-top-k", str(TOP_K), "--finalize-seeds", str(SEEDS), "--no-finalize-race"]) == 0
    return storage / "fin-smoke"


def searched(configs: list[dict]) -> list[dict]:
    """The finalized configs but the defaults."""
    return [c for c in configs if c["trial_id"] != DEFAULTS_ID]


def rows(exp_dir: Path) -> list[dict]:
    with open(exp_dir / "final" / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def summary(exp_dir: Path) -> dict:
    return json.loads((exp_dir / "final" / "summary.json").read_text())


def test_leaderboard_has_mean_and_std_of_the_top_configs(exp):
    lb = rows(exp)
    assert len(lb) == TOP_K + 1  # and the defaults
    for col in ("val/f1 mean", "val/f1 std", "val/auroc mean", "val/loss std", "sweep best val/f1", "lr"):
        assert col in lb[0], col
    assert all(r["n_seeds"] == str(SEEDS) and r["failed_seeds"] == "0" for r in lb)
    # The top-k of the sweep by each trial's best epoch, nothing else.
    space = space_of(exp)
    best = sorted((t.best_value for t in load_trials(exp, space) if t.best_value is not None), reverse=True)
    top = [r for r in lb if r["trial_id"] != DEFAULTS_ID]
    assert sorted(float(r["sweep best val/f1"]) for r in top) == sorted(best[:TOP_K])
    assert {r["sweep_rank"] for r in top} == {"1", "2"}
    d, = [r for r in lb if r["trial_id"] == DEFAULTS_ID]
    assert d["defaults"] == "True" and d["sweep_rank"] == "" and d["sweep best val/f1"] == ""


def test_every_config_trained_with_every_seed_in_final(exp):
    runs = Experiment.open(exp / "final")  # the finalize sweep is an experiment of its own
    space = space_of(exp)
    s = summary(exp)
    # A config's first seed is its sweep trial when that trained the full budget: taken, not trained again.
    taken = [r for c in s["configs"] for r in c["runs"] if r["from_sweep"]]
    n = TOP_K + 1  # and the defaults
    assert len(runs.trials) == n * SEEDS - len(taken) == n * SEEDS - s["from_sweep"] and runs.finished
    sweep = {t.trial_id: t for t in load_trials(exp, space)}
    for c in searched(s["configs"]):
        first = next(r for r in c["runs"] if r["seed"] == s["seeds"][0])
        full = sweep[c["trial_id"]].status.value in ("completed", "early_stopped")
        assert first["from_sweep"] == full and (first["path"] == str(sweep[c["trial_id"]].path)) == full
    for t in runs.trials:
        assert t.status.value in ("completed", "early_stopped")
        assert t.epochs == space.epochs  # patience 0 and no scheduler: the full budget
        assert [r["epoch"] for r in t.history] == list(range(1, space.epochs + 1))
    assert s["seeds"] == list(range(SEEDS)) and s["top_k"] == n and s["metric"] == "val/f1"
    # Seed i sets the split seed too; the demo set has val.npz, so only the initialization could vary.
    assert s["split_seeds"] == list(range(SEEDS)) and "val.npz" in s["holdout"]["how"]
    assert sorted(t.params["split_seed"] for t in runs.trials) == sorted(
        r["split_seed"] for c in s["configs"] for r in c["runs"] if not r["from_sweep"])
    assert all(t.params["split_seed"] == t.params["seed"] for t in runs.trials)
    for c in s["configs"]:
        assert [r["seed"] for r in c["runs"]] == s["seeds"]
        # Each run trained exactly its config with its seed.
        mine = [t for t in runs.trials if all(t.params.get(k) == v for k, v in c["params"].items())]
        retrained = [r["seed"] for r in c["runs"] if not r["from_sweep"]]
        assert sorted(t.params["seed"] for t in mine) == retrained
        assert {r["best_epoch"] for r in c["runs"] if not r["from_sweep"]} <= {t.best_epoch for t in mine}


def test_winner_follows_the_selection_rule(exp):
    lb = rows(exp)
    s = summary(exp)
    assert lb[0]["final_rank"] == "1" and s["winner"]["trial_id"] == lb[0]["trial_id"]
    runs = s["winner"]["runs"]
    mean = sum(r["val/f1"] for r in runs) / SEEDS
    assert s["winner"]["mean"]["val/f1"] == pytest.approx(mean)
    assert s["winner"]["bound"] == pytest.approx(mean - s["winner"]["std"]["val/f1"] / math.sqrt(SEEDS))
    leader = next(c for c in s["configs"] if c["trial_id"] == s["leader"])
    assert leader["bound"] == max(c["bound"] for c in s["configs"])
    # The tie set is every config within one SE of the leader's mean; its smallest model wins (tests/test_selection.py
    # builds ties on purpose: whether this small sweep ties is up to its numbers).
    tied = [c for c in s["configs"] if c["failed_seeds"] == leader["failed_seeds"]
            and abs(c["mean"]["val/f1"] - leader["mean"]["val/f1"]) <= leader["se"] + 1e-12]
    assert sorted(s["tied"]) == sorted(c["trial_id"] for c in tied)
    assert s["winner"]["trial_id"] in s["tied"] or s["winner"]["defaults"]  # the defaults win untied (rule 4)
    smallest = min(c["num_params"] for c in tied)
    gain = s["defaults"]["gain"]["val/f1"]  # the rule's pick over the defaults
    if s["winner"]["defaults"]:  # the pick did not beat them beyond the noise, or was them
        assert s["defaults"]["won"] and s["choice"].startswith(DEFAULTS_WON)
        assert s["choice"].startswith(f"{DEFAULTS_WON}: the rule picks them") or gain["inside_noise"] is not False
    else:
        assert s["winner"]["num_params"] == smallest and not s["defaults"]["won"] and gain["inside_noise"] is False
        assert ("tied within one SE" in s["choice"]) == (len(tied) > 1), s["choice"]
    assert all(int(r["num_params"]) > 0 and r["val/f1 bound"] != "" for r in lb)


def test_sweep_writes_the_finalized_winner_as_best_config(exp, capsys):
    s, export_summary = summary(exp), json.loads((exp / "summary.json").read_text())
    cfg = load_config(exp / "best_config.yaml")
    assert not (exp / "final" / "best_config.yaml").exists()  # written once, where it is deployed from
    assert cfg == replace(space_of(exp).train_config(s["winner"]["params"]), seed=0, split_seed=0)
    head = (exp / "best_config.yaml").read_text().split("\n", 3)
    assert "Finalized winner" in head[0] and "Chosen by: " + s["choice"] in head[1]
    trial = load_config(exp / "best_trial_config.yaml")
    assert trial == space_of(exp).train_config(export_summary["best_params"])
    assert export_summary["best_config_from"] == "finalize" and export_summary["finalized_winner"] == \
        s["winner"]["trial_id"]


def test_export_after_finalize_leaves_best_config_alone(exp, tmp_path):
    from mmtune.tune.cli import run

    copy = tmp_path / exp.name
    shutil.copytree(exp, copy)
    (copy / "best_trial_config.yaml").unlink()
    before = (copy / "best_config.yaml").read_bytes()
    assert run(["export", str(copy)]) == 0
    assert (copy / "best_config.yaml").read_bytes() == before and (copy / "best_trial_config.yaml").is_file()
    assert json.loads((copy / "summary.json").read_text())["best_config_from"] == "finalize"
    shutil.rmtree(copy / "final")  # no finalize result: export writes the best trial's config as best_config
    assert run(["export", str(copy)]) == 0
    assert load_config(copy / "best_config.yaml") == load_config(copy / "best_trial_config.yaml")
    assert "No finalize run" in (copy / "best_config.yaml").read_text()


def test_finalize_top_k_0_skips_it_and_best_config_is_the_best_trial(ray_session, demo_dir, tmp_path, capsys):
    from mmtune.tune.cli import run

    assert run(["sweep", "--data", str(demo_dir), "--space", SMOKE, "--storage", str(tmp_path), "--name", "skip",
                "--num-samples", "2", "--epochs", "1", "--finalize-top-k", "0"]) == 0
    exp_dir = tmp_path / "skip"
    assert not (exp_dir / "final").exists() and "finalizing was skipped" in capsys.readouterr().out
    assert load_config(exp_dir / "best_config.yaml") == load_config(exp_dir / "best_trial_config.yaml")
    assert Experiment.open(exp_dir).meta["options"]["finalize_top_k"] == 0  # a resume skips it too


def test_seeds_vary_the_split_seed_from_the_sweeps_own():
    from mmtune.tune.space import load_space

    space = load_space(SMOKE)
    assert candidates.seeds_for(space, 3) == [(0, 0), (1, 1), (2, 2)]
    moved = replace(space, fixed={**space.fixed, "seed": 7, "split_seed": 3})
    assert candidates.seeds_for(moved, 2) == [(7, 3), (8, 4)]


def test_best_config_is_the_winners_config(exp):
    s = summary(exp)
    cfg = load_config(exp / "best_config.yaml")
    expected = space_of(exp).train_config(s["winner"]["params"])
    assert cfg.seed == 0 and cfg.split_seed == 0 and cfg == expected
    assert cfg.epochs == space_of(exp).epochs


def test_test_metrics_present(exp):
    lb = rows(exp)
    assert all(math.isfinite(float(r["test/f1 mean"])) and r["test/auroc std"] != "" for r in lb)
    assert all("test/ap" in run for c in summary(exp)["configs"] for run in c["runs"])


def test_winner_checkpoints_hold_the_best_epoch_weights(exp, demo_dir):
    s = summary(exp)
    data = None
    for run in s["winner"]["runs"]:
        path = exp / "final" / "winner" / f"seed_{run['seed']}.pt"
        assert str(path) in s["winner"]["checkpoints"]
        state = load_checkpoint(path)
        assert state["weights"] == "best" and state["best_epoch"] == run["best_epoch"]
        cfg = build_config(state["config"])
        assert cfg.seed == run["seed"]
        # The reported val metrics are those of these weights.
        data = data or load_dataset(demo_dir, cfg.val_fraction, cfg.split_seed, stats=state["stats"])
        objective = make_objective(cfg, data)
        model = objective.build({m: tuple(v) for m, v in state["modalities"].items()})
        model.load_state_dict(state["model"])
        val = evaluate(model, objective, Batches(data.splits["val"], torch.device("cpu")))
        assert val["f1"] == pytest.approx(run["val/f1"], abs=1e-6)


def test_leaderboard_table_lists_the_winner_first(exp):
    s = summary(exp)
    lines = leaderboard.leaderboard_table(s).splitlines()
    assert len(lines) == 1 + TOP_K + 1  # and the defaults
    assert "val/f1 mean ± std" in lines[0] and "LCB" in lines[0] and "params" in lines[0]
    assert s["winner"]["trial_id"] in lines[1] and "±" in lines[1]


def test_report_shows_the_re_evaluation(exp, tmp_path):
    from mmtune.tune.report import write_report

    copy = tmp_path / exp.name
    shutil.copytree(exp, copy)
    s = summary(copy)
    html = write_report(copy).html.read_text()
    md = (copy / "report.md").read_text()
    for text in (html, md):
        w = s["winner"]
        assert "Re-evaluation (mmtune finalize)" in text
        assert f"winner: {leaderboard.who(w['trial_id'], w['sweep_rank'], w['defaults'])}" in text
        assert defaults_lines(s)[0].replace("|", "\\|") in text
        for c in s["configs"]:
            assert c["trial_id"] in text and f"{c['mean']['val/f1']:.4f} ± {c['std']['val/f1']:.4f}" in text
    shutil.rmtree(copy / "final")
    assert "Re-evaluation" not in write_report(copy).html.read_text()  # no finalize run, no section


@pytest.mark.parametrize("top_k, seeds", [(0, 2), (2, 0), (-1, -1)])
def test_bad_counts_raise_before_anything_runs(tmp_path, top_k, seeds):
    with pytest.raises(ResultsError, match=">= 1"):
        fin.finalize(tmp_path, top_k=top_k, seeds=seeds)
    assert list(tmp_path.iterdir()) == []


def test_not_an_experiment_or_no_usable_trial_raises(exp, tmp_path):
    with pytest.raises(ResultsError, match="not an mmtune experiment"):
        fin.finalize(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(exp / "mmtune.json", empty / "mmtune.json")  # the experiment, none of its trials
    with pytest.raises(ResultsError, match="no trial of the experiment has a finite val/f1"):
        fin.finalize(empty)
    assert not (empty / "final").exists()


def test_cli_parser_and_bad_flag(exp):
    from mmtune.tune.cli import build_parser
    from mmtune.tune.commands import HANDLERS

    args = build_parser().parse_args(["finalize", str(exp), "--top-k", "0", "--seeds", "4"])
    assert (args.top_k, args.seeds, args.address, args.num_cpus) == (0, 4, None, None)
    with pytest.raises(ResultsError, match="--top-k 0"):
        HANDLERS[args.cmd](args)


def test_select_top_uses_what_exists_and_skips_duplicates(exp, caplog):
    space = space_of(exp)
    trials = load_trials(exp, space)
    usable = [t for t in trials if t.best_value is not None]
    top = max(t.best_value for t in usable) + 1
    clone = replace(usable[0], trial_id="clone", best_value=top, best_result={**usable[0].best_result, "val/f1": top})
    with caplog.at_level(logging.WARNING, logger="mmtune.tune.finalize"):
        picked = candidates.select_top([*trials, clone], space, 10)
    assert picked[0].trial.trial_id == "clone" and len(picked) == len(usable)  # the original is a duplicate
    assert [c.rank for c in picked] == list(range(len(picked)))
    assert "only" in caplog.text and "--top-k 10" in caplog.text


def test_finalize_command_end_to_end(exp, tmp_path, capsys):
    from mmtune.tune.cli import run

    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    assert run(["finalize", str(copy), "--top-k", "1", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert str(copy / "best_config.yaml") in out and "winner: " in out and "the defaults" in out
    assert [r["defaults"] for r in rows(copy)].count("True") == 1 and len(rows(copy)) == 2  # the top one, the defaults
    assert "Finalized winner" in (copy / "best_config.yaml").read_text()
    assert run(["finalize", str(copy), "--top-k", "0"]) == 2


def test_each_split_seed_gets_its_own_split_unless_val_npz_fixes_it(demo_dir, tmp_path):
    """What the trial workers receive: one data object per split_seed a run can set (finalize's seeds)."""
    import shutil

    from mmtune.tune.job import load_variants
    from mmtune.tune.space import load_space

    space = load_space(SMOKE)
    fixed = load_variants(demo_dir, space.validation, space, (1, 2))
    assert sorted(fixed) == [0, 1, 2] and fixed[0] is fixed[1] is fixed[2]  # val.npz: one split, stored once
    no_val = tmp_path / "no_val"
    shutil.copytree(demo_dir, no_val)
    (no_val / "val.npz").unlink()
    split = load_variants(no_val, space.validation, space, (1, 2))
    held_out = [tuple(d.splits["val"].y[:50]) + (len(d.splits["val"]),) for d in split.values()]
    stats = [d.stats[next(iter(d.stats))]["mean"][0] for d in split.values()]
    assert len(set(held_out)) == 3 and len(set(stats)) == 3  # another holdout, standardized on its own train part


def test_summary_after_finalize_takes_the_noise_from_the_seeds(exp):
    """`mmtune sweep` re-exports after finalizing: summary.json's noise is the finalized configs' seed spread."""
    s = json.loads((exp / "summary.json").read_text())
    assert s["best_config_from"] == "finalize" and s["noise"]["source"].startswith("finalize")
    assert isinstance(s["warnings"], list) and len(s["noise"]["gaps"]) == min(5, len(Experiment.open(exp).ranked) - 1)


def test_a_seed_taken_from_the_sweep_is_what_a_retrain_gives(exp, demo):
    """Finalize takes a config's sweep trial as its first seed instead of retraining it: the retrain (same config,
    seed and split) gives the same numbers, so nothing is lost by not running it."""
    from mmtune.model.loop import fit

    s, space = summary(exp), space_of(exp)
    taken = [(c, r) for c in s["configs"] for r in c["runs"] if r["from_sweep"]]
    assert taken, "the smoke sweep's top configs include one that trained its full budget"
    c, run = taken[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (1 CPU per trial)
    try:
        result, _ = fit(space.train_config(c["params"]), demo)
    finally:
        torch.set_num_threads(threads)
    assert result.best_epoch == run["best_epoch"]
    for key in ("val/f1", "val/loss", "val/auroc"):
        assert result.best_metrics[key] == pytest.approx(run[key], abs=1e-9), key


def test_the_defaults_contend_and_the_gain_over_them_is_reported(exp):
    s, export_summary = summary(exp), json.loads((exp / "summary.json").read_text())
    d = next(c for c in s["configs"] if c["defaults"])
    space = space_of(exp)
    # The untuned config under the smoke space's fixed values, trained by finalize with every seed.
    assert d["trial_id"] == DEFAULTS_ID and space.train_config(d["params"]).d_model == 256
    assert [r["seed"] for r in d["runs"]] == s["seeds"] and not any(r["from_sweep"] for r in d["runs"])
    entry = s["defaults"]
    rival = next(c for c in s["configs"] if c["trial_id"] == entry["versus"])  # the config they beat or lost to
    if entry["won"]:  # the rule's pick, named in the reason, or (the rule picked the defaults) the best by bound
        assert f"trial {rival['trial_id']}" in s["choice"] or rival is searched(s["configs"])[0]
    else:
        assert rival["trial_id"] == s["winner"]["trial_id"]
    assert not rival["defaults"] and set(entry["gain"]) == {"val/f1", "test/f1"}
    for key, g in entry["gain"].items():
        assert g["gain"] == pytest.approx(rival["mean"][key] - d["mean"][key])
        assert g["inside_noise"] == (abs(g["gain"]) <= 2 * g["se"])
    line, = defaults_lines(s)
    assert export_summary["defaults_line"] == line and export_summary["defaults"] == entry
    assert line.startswith("defaults: no searched config" if entry["won"] else "gain over the defaults")
