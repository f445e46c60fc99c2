"""Config defaults, YAML overrides and their errors."""
from __future__ import annotations

import pytest

from mmtune.model.config import ConfigError, TrainConfig, build_config, load_config, save_config


def test_defaults_fix_what_the_old_script_got_wrong():
    c = TrainConfig()
    assert (c.d_model, c.num_layers, c.nhead) == (256, 4, 8)
    assert c.modality_dropout == 0.0 and c.aux_weight == 0.5 and c.patience == 10
    assert (c.scheduler, c.t0, c.t_mult, c.eta_min) == ("cosine_restarts", 10, 2, 1e-6)


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    save_config(TrainConfig(d_model=64, nhead=4, lr=3e-4), path)
    cfg = load_config(path, {"epochs": 7})
    assert (cfg.d_model, cfg.nhead, cfg.lr, cfg.epochs) == (64, 4, 3e-4, 7)
    assert load_config(path) == TrainConfig(d_model=64, nhead=4, lr=3e-4)


@pytest.mark.parametrize("text, words", [
    ("d_modell: 64\n", ["unknown key", "d_modell"]),
    ("d_model: sixty\n", ["d_model", "must be int"]),
    ("use_focal: 1\n", ["use_focal", "must be bool"]),
    ("d_model: 64\nnhead: 3\n", ["nhead=3 does not divide d_model=64"]),
    ("dropout: 1.5\n", ["dropout"]),
    ("monitor: val/f2\n", ["monitor", "val/f1"]),
    ("- 1\n- 2\n", ["expected a mapping"]),
    ("d_model: [1,\n", ["not valid YAML", "line"]),
])
def test_bad_yaml_names_file_and_key(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_int_accepted_for_float_and_whole_float_for_int():
    cfg = build_config({"lr": 1, "epochs": 5.0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.epochs == 5 and isinstance(cfg.epochs, int)


def test_monitor_mode():
    assert TrainConfig(monitor="val/loss").monitor_mode == "min"
    assert TrainConfig(monitor="val/ap").monitor_mode == "max"
