"""`mmtune train / evaluate / pretrain` through the real parser, with exit codes."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import yaml

from mmtune.model.config import TrainConfig
from tests.conftest import REPO, TINY
from mmtune.tune.cli import build_parser, config_overrides, run

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
    proc = subprocess.run([sys.executable, "-m", "mmtune.tune", "--debug", "train", "--data", str(demo_dir),
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


CONFIG_FIELDS = [(f.name, typing.get_type_hints(TrainConfig)[f.name]) for f in dataclasses.fields(TrainConfig)]
FLAG_VALUES = {int: ("7", 7), float: ("0.125", 0.125), str: ("some-value", "some-value")}


@pytest.mark.parametrize("cmd", ["train", "pretrain"])
@pytest.mark.parametrize("name, kind", CONFIG_FIELDS, ids=[n for n, _ in CONFIG_FIELDS])
def test_every_config_field_has_a_typed_flag(cmd, name, kind):
    flag = "--" + name.replace("_", "-")
    parse = build_parser().parse_args
    if kind is bool:
        given = {True: parse([cmd, "--data", "x", flag]), False: parse([cmd, "--data", "x", "--no-" + flag[2:]])}
    else:
        text, value = FLAG_VALUES[kind]
        given = {value: parse([cmd, "--data", "x", flag, text])}
    for value, args in given.items():
        assert getattr(args, name) == value and type(getattr(args, name)) is kind
        assert config_overrides(args) == {name: value}  # the flag, and only it, overrides the config


@pytest.mark.parametrize("cmd", ["train", "pretrain"])
def test_config_flags_not_given_override_nothing(cmd):
    args = build_parser().parse_args([cmd, "--data", "x"])
    assert all(getattr(args, name) is None for name, _ in CONFIG_FIELDS)
    assert config_overrides(args) == {}


def test_config_flags_are_listed_in_help(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, kind in CONFIG_FIELDS:
        flag = "--" + name.replace("_", "-")
        assert (f"{flag}, --no-{flag[2:]}" if kind is bool else f"{flag} {kind.__name__.upper()}") in out, flag


def test_wrongly_typed_flag_value_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--data", "x", "--epochs", "three"])
    assert e.value.code == 2 and "--epochs" in capsys.readouterr().err
