"""`mmtune train / evaluate / pretrain` through the real parser, with exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, TINY
from tune.cli import run

TINY_FLAGS = ["--d-model", "16", "--nhead", "2", "--num-layers", "1", "--ff-mult", "2", "--train-steps", "4",
              "--epochs", "2", "--patience", "0", "--device", "cpu"]


def test_train_writes_run_folder_and_evaluate_reads_it(demo_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run(["train", "--data", str(demo_dir), *TINY_FLAGS, "--batch", "16", "--weighted-sampler",
                "--class-weighted", "--use-focal", "--checkpoint-dir", str(run_dir), "--save-best-only"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch   1/2" in out and "epoch   2/2" in out and "test (best epoch)" in out
    assert {p.name for p in run_dir.iterdir()} == {"metrics.jsonl", "config.yaml", "summary.json", "best.pt"}
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["batch_size"] == 16 and cfg["class_weighted"] is True and cfg["d_model"] == 16
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run(["evaluate", "--checkpoint", str(run_dir / "best.pt"), "--data", str(demo_dir), "--split", "test",
                "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["split"] == "test"
    assert metrics["f1"] == pytest.approx(summary["test"]["f1"])


def test_config_file_then_flags(demo_dir, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**TINY, "epochs": 1, "lr": 5e-4}))
    assert run(["train", "--data", str(demo_dir), "--config", str(path), "--lr", "1e-3",
                "--checkpoint-dir", str(tmp_path / "r")]) == 0
    cfg = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert cfg["lr"] == 1e-3 and cfg["epochs"] == 1 and cfg["d_model"] == 16


@pytest.mark.parametrize("argv, words", [
    (["--d-model", "16", "--nhead", "3"], ["nhead=3 does not divide d_model=16"]),
    (["--epochs", "-1"], ["epochs=-1"]),
    (["--batch", "0"], ["batch_size=0"]),
    (["--config", "/nonexistent/c.yaml"], ["/nonexistent/c.yaml", "no such file"]),
])
def test_bad_input_exits_2_without_traceback(demo_dir, tmp_path, capsys, argv, words):
    code = run(["train", "--data", str(demo_dir), "--checkpoint-dir", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and "mmtune: error:" in err and "Traceback" not in err
    for w in words:
        assert w in err
    assert not (tmp_path / "r").exists()  # nothing written


def test_missing_data_folder_exits_2(tmp_path, capsys):
    assert run(["train", "--data", str(tmp_path / "nope"), "--epochs", "1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_debug_shows_the_traceback(demo_dir):
    proc = subprocess.run([sys.executable, "-m", "tune", "--debug", "train", "--data", str(demo_dir),
                           "--d-model", "16", "--nhead", "3"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_pretrain_then_train_with_pretrained_encoder(demo_dir, tmp_path, capsys):
    assert run(["pretrain", "--data", str(demo_dir), *TINY_FLAGS, "--checkpoint-dir", str(tmp_path / "p")]) == 0
    ckpt = tmp_path / "p" / "best.pt"
    assert run(["train", "--data", str(demo_dir), *TINY_FLAGS, "--pretrained-ckpt", str(ckpt),
                "--checkpoint-dir", str(tmp_path / "t")]) == 0
    assert f"encoder weights from {ckpt}" in capsys.readouterr().out
    code = run(["train", "--data", str(demo_dir), *TINY_FLAGS[2:], "--d-model", "32", "--pretrained-ckpt",
                str(ckpt), "--checkpoint-dir", str(tmp_path / "u")])
    err = capsys.readouterr().err
    assert code == 2 and "encoder." in err and "shape" in err
    assert run(["evaluate", "--checkpoint", str(ckpt), "--data", str(demo_dir)]) == 2


def test_every_config_field_has_a_flag():
    from dataclasses import fields

    from model.config import TrainConfig
    from tune.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions}
    assert {f.name for f in fields(TrainConfig)} <= dests
