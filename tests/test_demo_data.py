"""Tests of the synthetic approach-intent data set in data/demo.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmtune.data.demo import SPLITS, T_POSE, T_TRAJ, make_demo, modality_baselines
from mmtune.data.npz import load_dataset

SHAPES = {"traj": (T_TRAJ, 4), "pose": (T_POSE, 14)}
SIZES = {"train": 1200, "val": 300, "test": 300}


def _load(path: Path) -> dict[str, dict[str, np.ndarray]]:
    return {s: dict(np.load(path / f"{s}.npz")) for s in SPLITS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0)


def test_files_keys_dtypes_shapes(demo: Path) -> None:
    for split, arrays in _load(demo).items():
        n = SIZES[split]
        expected = {"y", "groups"} | {f"{k}_{m}" for m in SHAPES for k in ("x", "mask")}
        assert set(arrays) == expected
        assert arrays["y"].dtype == np.int64 and arrays["y"].shape == (n,)
        assert arrays["groups"].dtype == np.int64 and arrays["groups"].shape == (n,)
        assert set(np.unique(arrays["y"])) <= {0, 1}
        assert 0.15 <= arrays["y"].mean() <= 0.35, (split, arrays["y"].mean())
        for m, (t, f) in SHAPES.items():
            assert arrays[f"x_{m}"].dtype == np.float32 and arrays[f"x_{m}"].shape == (n, t, f)
            assert arrays[f"mask_{m}"].dtype == np.bool_ and arrays[f"mask_{m}"].shape == (n, t)
            assert np.isfinite(arrays[f"x_{m}"]).all()


def test_written_uncompressed_and_returns_path(demo: Path) -> None:
    import zipfile

    for split in SPLITS:
        with zipfile.ZipFile(demo / f"{split}.npz") as z:
            assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())


def test_deterministic(tmp_path: Path, demo: Path) -> None:
    again, other = _load(make_demo(tmp_path / "a", seed=0)), _load(make_demo(tmp_path / "b", seed=1))
    first = _load(demo)
    for split in SPLITS:
        for key in first[split]:
            np.testing.assert_array_equal(first[split][key], again[split][key])
        assert not np.array_equal(first[split]["x_traj"], other[split]["x_traj"])


def test_groups_disjoint_and_repeated(demo: Path) -> None:
    groups = {s: set(a["groups"].tolist()) for s, a in _load(demo).items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    # Some pedestrians give several windows, which is what makes group-aware splitting matter.
    assert len(groups["train"]) < SIZES["train"]


def test_masks_sane_and_features_zero_where_masked(demo: Path) -> None:
    for arrays in _load(demo).values():
        for m in SHAPES:
            mask, x = arrays[f"mask_{m}"], arrays[f"x_{m}"]
            assert 0.02 <= 1 - mask.mean() <= 0.25, (m, 1 - mask.mean())
            assert mask.any(axis=1).all()
            assert (x[~mask] == 0).all()
            assert (np.abs(x[mask]).sum(axis=-1) > 0).mean() > 0.9


def test_difficulty_adds_missing_frames(tmp_path: Path) -> None:
    def missing(d: float) -> float:
        a = np.load(make_demo(tmp_path / str(d), 400, 50, 50, difficulty=d) / "train.npz")
        return 1 - a["mask_traj"].mean()

    assert missing(0.0) < missing(1.0)


def test_small_split_sizes(tmp_path: Path) -> None:
    arrays = _load(make_demo(tmp_path, n_train=7, n_val=1, n_test=2, seed=3))
    assert [len(arrays[s]["y"]) for s in SPLITS] == [7, 1, 2]


def test_default_generation_writes_a_loadable_set(tmp_path: Path) -> None:
    # (How long generation takes is a benchmark's question, not a test's.)
    out = tmp_path / "new" / "demo"  # parents are created
    assert make_demo(out, seed=5) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.npz" for s in SPLITS)  # no stray files
    data = load_dataset(out)
    assert {s: len(data.splits[s].y) for s in SPLITS} == SIZES
    assert data.modalities == SHAPES
    assert data.info["val"] == "val.npz"  # the written val split is used, not one carved from train
    for s in SPLITS:
        assert set(data.splits[s].y.tolist()) == {0, 1}  # both classes in every split


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_both_modalities_beat_each_alone(tmp_path: Path, seed: int) -> None:
    f1 = modality_baselines(make_demo(tmp_path, seed=seed), seed=seed)
    assert set(f1) == {"traj", "pose", "both"}
    best_single = max(f1["traj"]["val_f1"], f1["pose"]["val_f1"])
    assert f1["both"]["val_f1"] >= best_single + 0.05, f1


@pytest.mark.parametrize("kwargs", [
    {"n_train": 0}, {"n_val": -5}, {"n_test": 2.5}, {"n_train": True},
    {"difficulty": -0.1}, {"difficulty": 1.5}, {"difficulty": float("nan")}, {"difficulty": "hard"},
    {"seed": -1}, {"seed": 1.5},
])
def test_bad_args_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_demo(tmp_path, **kwargs)


@pytest.mark.parametrize("rate", [0.12, 0.4])
def test_positive_rate_sets_the_share_of_positives(tmp_path: Path, rate: float) -> None:
    arrays = _load(make_demo(tmp_path, n_train=3000, n_val=50, n_test=2000, seed=1, positive_rate=rate))
    for split in ("train", "test"):
        assert abs(arrays[split]["y"].mean() - rate) < 0.02, (split, arrays[split]["y"].mean())


def test_positive_rate_default_leaves_the_data_as_it_was(tmp_path: Path, demo: Path) -> None:
    # None is the generator as before: the same arrays, draw for draw.
    again = _load(make_demo(tmp_path, seed=0, positive_rate=None))
    np.testing.assert_array_equal(again["train"]["y"], _load(demo)["train"]["y"])


@pytest.mark.parametrize("rate", [0.0, 0.95, 1.0, -0.1, float("nan"), True, "0.1"])
def test_bad_positive_rate_raises(tmp_path: Path, rate) -> None:
    with pytest.raises(ValueError, match="positive_rate must be a number in"):
        make_demo(tmp_path, n_train=10, n_val=5, n_test=5, positive_rate=rate)


def test_cli_positive_rate(tmp_path: Path, capsys) -> None:
    from mmtune.tune.cli import run

    assert run(["data", "demo", str(tmp_path / "d"), "--n-train", "400", "--n-val", "20", "--n-test", "20",
                "--positive-rate", "0.12"]) == 0
    assert abs(np.load(tmp_path / "d/train.npz")["y"].mean() - 0.12) < 0.04
    assert run(["data", "demo", str(tmp_path / "e"), "--positive-rate", "1.5"]) == 2
    assert "positive_rate must be a number in (0, 0.91]" in capsys.readouterr().err
