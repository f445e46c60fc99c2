"""`mmtune compare` (tune/compare.py): the defaults and a sweep's best_config.yaml retrained over the same seeds, paired
on test F1, in a fake experiment on tiny data (real training, tiny models; the defaults capped by a baseline config)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import yaml

from mmtune.data.demo import make_demo
from mmtune.data.npz import DataError
from mmtune.model.config import ConfigError
from mmtune.tune import compare as cmp
from mmtune.tune.cli import run
from mmtune.tune.errors import SweepInterrupted
from tests.conftest import TINY
from tests.fake_experiment import write_experiment

BASELINE = {"epochs": 2, "device": "cpu"}  # the defaults' model, two epochs: cheap enough for the fast tier
SMALL_BASELINE = {**BASELINE, "d_model": 32, "num_layers": 1}  # where the defaults' width is not what is tested
WINNER = {**TINY, "epochs": 2}


def _setup(root: Path, data: Path | None = None, baseline: dict = SMALL_BASELINE) -> tuple[Path, Path]:
    """A fake experiment on DATA (default: a new tiny demo set) with a tiny best_config.yaml, and a BASELINE file."""
    data = data or make_demo(root / "data", n_train=120, n_val=40, n_test=200, seed=0)
    exp = write_experiment(root / "results", [], data=str(data))
    (exp / "best_config.yaml").write_text(yaml.safe_dump(WINNER))
    (root / "baseline.yaml").write_text(yaml.safe_dump(baseline))
    return exp, root / "baseline.yaml"


def _run_files(exp: Path) -> dict[str, float]:
    """The mtime of every file of every compare run, by path."""
    return {str(p): p.stat().st_mtime_ns for p in (exp / "compare").glob("*/seed*/*")}


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, str]:
    """One compare of 2 seeds: the experiment, the baseline file, the summary and the progress text."""
    exp, base = _setup(tmp_path_factory.mktemp("cmp"), baseline=BASELINE)
    out = io.StringIO()
    summary = cmp.compare(exp, seeds=2, out=out, baseline_config=base)
    return exp, base, summary, out.getvalue()


def test_pairs_every_seed_and_the_gain_is_winner_minus_defaults(compared) -> None:
    exp, _, s, progress = compared
    assert s["seeds"] == [0, 1] and [p["seed"] for p in s["paired"]] == [0, 1]
    for p, d, w in zip(s["paired"], s["arms"]["defaults"]["runs"], s["arms"]["winner"]["runs"]):
        run_d = json.loads((exp / "compare/defaults" / f"seed{p['seed']}" / "summary.json").read_text())
        run_w = json.loads((exp / "compare/winner" / f"seed{p['seed']}" / "summary.json").read_text())
        assert p["defaults"] == d["test_f1"] == run_d["test"]["f1"]
        assert p["winner"] == w["test_f1"] == run_w["test"]["f1"]
        assert p["gain"] == pytest.approx(p["winner"] - p["defaults"])
        assert run_d["seed"] == run_w["seed"] == p["seed"]  # only the training seed differs between a pair's runs
    gains = [p["gain"] for p in s["paired"]]
    g = s["gain"]
    assert g["mean"] == pytest.approx(sum(gains) / 2) and g["se"] == pytest.approx(abs(gains[0] - gains[1]) / 2)
    assert g["ci95"] == pytest.approx([g["mean"] - 12.706 * g["se"], g["mean"] + 12.706 * g["se"]], abs=1e-3)
    assert s["verdict"] == cmp.verdict(g["mean"], g["se"])
    assert s["test"] == {"samples": 200, "positives": s["test"]["positives"]} and s["test"]["positives"] > 0
    assert s["arms"]["defaults"]["wall_x_defaults"] == 1.0 and s["arms"]["winner"]["wall_x_defaults"] > 0
    assert json.loads((exp / "compare/summary.json").read_text()) == json.loads(json.dumps(s))
    # Both arms trained as asked: the defaults' model (256 wide) capped at 2 epochs, the winner's tiny one.
    assert yaml.safe_load((exp / "compare/defaults/seed0/config.yaml").read_text())["d_model"] == 256
    assert yaml.safe_load((exp / "compare/winner/seed1/config.yaml").read_text())["d_model"] == 16
    assert progress.count(": training -> ") == 4 and "kept" not in progress


def test_table_has_one_row_per_seed_and_the_verdict(compared) -> None:
    lines = cmp.table_lines(compared[2])
    rows = [ln.split() for ln in lines if ln.split() and ln.split()[0] in ("0", "1")]
    assert [r[0] for r in rows] == ["0", "1"]
    for r, p in zip(rows, compared[2]["paired"]):
        assert float(r[3]) == pytest.approx(p["gain"], abs=1e-4)
    assert any(ln.startswith("verdict: ") and compared[2]["verdict"] in ln for ln in lines)
    assert any("95 % t interval" in ln for ln in lines)


def test_rerun_keeps_finished_runs(compared, capsys) -> None:
    exp, base, summary, _ = compared
    before = _run_files(exp)
    assert run(["compare", str(exp), "--seeds", "2", "--baseline-config", str(base)]) == 0
    out = capsys.readouterr().out
    assert out.count("kept from an earlier compare") == 4 and "training ->" not in out
    assert _run_files(exp) == before  # nothing trained again
    assert "verdict: " + summary["verdict"] in out


def test_a_changed_config_is_trained_again(tmp_path: Path, compared) -> None:
    exp, base = _setup(tmp_path, Path(json.loads((compared[0] / "mmtune.json").read_text())["data"]))
    cmp.compare(exp, seeds=2, baseline_config=base)
    before = _run_files(exp)
    (exp / "best_config.yaml").write_text(yaml.safe_dump({**WINNER, "epochs": 1}))
    out = io.StringIO()
    s = cmp.compare(exp, seeds=2, out=out, baseline_config=base)
    assert out.getvalue().count("kept from an earlier compare") == 2  # the defaults' runs
    assert out.getvalue().count("sweep's config, seed 0: training") == 1
    assert all(r["epochs_run"] == 1 for r in s["arms"]["winner"]["runs"])
    after = _run_files(exp)
    assert all(after[p] == t for p, t in before.items() if "/defaults/" in p)


def test_missing_test_split_is_an_error_before_training(tmp_path: Path) -> None:
    exp, base = _setup(tmp_path)
    (tmp_path / "data/test.npz").unlink()
    with pytest.raises(DataError, match=r"test\.npz: missing.*--data"):
        cmp.compare(exp, seeds=2, baseline_config=base)
    assert not (exp / "compare").exists()


@pytest.mark.parametrize("seeds, config, words", [
    (1, WINNER, "at least 2 seeds"),
    (2, {**WINNER, "cv": 3}, "cv 3 trains 3 fold models"),
])
def test_bad_requests_fail_before_training(tmp_path: Path, seeds: int, config: dict, words: str) -> None:
    exp, base = _setup(tmp_path)
    (exp / "best_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=words):
        cmp.compare(exp, seeds=seeds, baseline_config=base)
    assert not (exp / "compare").exists()


def test_ctrl_c_keeps_finished_runs_and_says_how_to_continue(tmp_path: Path, monkeypatch, capsys) -> None:
    exp, base = _setup(tmp_path)
    real, calls = cmp.train_run, []

    def stop_on_second(*args, **kwargs):  # a Ctrl-C while the second run trains
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cmp, "train_run", stop_on_second)
    assert run(["compare", str(exp), "--seeds", "2", "--baseline-config", str(base)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and f"Continue: mmtune compare {exp}" in err and "--baseline-config" in err
    assert (exp / "compare/defaults/seed0/timing.json").is_file() and not (exp / "compare/summary.json").exists()
    monkeypatch.setattr(cmp, "train_run", real)
    s = cmp.compare(exp, seeds=2, baseline_config=base)  # the command it printed: only the missing runs train
    assert len(s["paired"]) == 2 and math.isfinite(s["gain"]["mean"])
    (exp / "compare/winner/seed1/timing.json").unlink()  # that run counts as unfinished again
    calls[:] = [None]  # its training is the second call: stopped
    monkeypatch.setattr(cmp, "train_run", stop_on_second)
    with pytest.raises(SweepInterrupted, match="Continue: mmtune compare"):  # the API: the same, as an exception
        cmp.compare(exp, seeds=2, baseline_config=base, out=io.StringIO())


def test_verdict() -> None:
    assert cmp.verdict(0.02, 0.01) == "inside the noise"
    assert cmp.verdict(0.021, 0.01) == "the sweep's config is better"
    assert cmp.verdict(-0.05, 0.01) == "the defaults are better"
    assert cmp.verdict(0.0, 0.0) == "inside the noise"
