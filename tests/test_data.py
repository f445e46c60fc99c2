"""Tests of the npz data set loader in data/npz.py and the `mmtune data check` command."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mmtune.data.npz import DataError, load_dataset, summarize
from mmtune.tune.cli import run

T_TRAJ, F_TRAJ = 12, 4
T_POSE, F_POSE = 6, 3
TRAJ_LOC, TRAJ_SCALE = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 1.0, 2.0, 3.0])
GARBAGE = 99.0  # written into masked steps: must never reach the statistics or the output


def make_split(n: int, seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    """A valid split of N samples: groups of 2 sharing a label, 30% positive groups, masked tails."""
    rng = np.random.default_rng(seed)
    n_groups = n // 2
    group_y = np.zeros(n_groups, np.int32)
    group_y[: round(0.3 * n_groups)] = 1
    rng.shuffle(group_y)
    y = np.repeat(group_y, 2)
    groups = np.repeat(np.arange(n_groups, dtype=np.int32) + 1000 * seed, 2)

    x_traj = rng.normal(TRAJ_LOC + shift, TRAJ_SCALE, (n, T_TRAJ, F_TRAJ))
    lengths = rng.integers(T_TRAJ // 2, T_TRAJ + 1, n)
    mask_traj = np.arange(T_TRAJ)[None, :] < lengths[:, None]
    x_traj[~mask_traj] = GARBAGE

    x_pose = rng.normal(-1.0, 0.5, (n, T_POSE, F_POSE))
    mask_pose = rng.random((n, T_POSE)) > 0.1
    mask_pose[:, 0] = True
    x_pose[~mask_pose] = GARBAGE
    return {"y": y, "groups": groups, "x_traj": x_traj, "mask_traj": mask_traj,
            "x_pose": x_pose, "mask_pose": mask_pose}


def write_set(root: Path, val: bool = True, test: bool = True, val_shift: float = 0.0) -> Path:
    """A valid data set at ROOT: train 40, val 20, test 20 samples."""
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "train.npz", **make_split(40, seed=1))
    if val:
        np.savez(root / "val.npz", **make_split(20, seed=2, shift=val_shift))
    if test:
        np.savez(root / "test.npz", **make_split(20, seed=3))
    return root


def raw(root: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(root / f"{split}.npz") as z:
        return {k: z[k] for k in z.files}


def edit(root: Path, split: str, **changes) -> None:
    """Rewrite ROOT/SPLIT.npz with CHANGES applied (a value of None deletes the key)."""
    arrays = raw(root, split)
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v(arrays) if callable(v) else v
    np.savez(root / f"{split}.npz", **arrays)


# --- bad inputs -------------------------------------------------------------------------------------------------

def _missing_folder(root: Path) -> Path:
    shutil.rmtree(root)
    return root / "no_such_folder"


def _truncate(root: Path) -> None:
    data = (root / "train.npz").read_bytes()
    (root / "train.npz").write_bytes(data[: len(data) // 2])


def _npy_as_npz(root: Path) -> None:
    with open(root / "train.npz", "wb") as f:  # a file handle: np.save would append .npy to a name
        np.save(f, np.zeros((40, T_TRAJ, F_TRAJ)))


def _object_array(root: Path) -> None:
    obj = np.array([np.zeros(3), np.zeros(4)], dtype=object)
    edit(root, "train", x_traj=obj)


def _empty_train(root: Path) -> None:
    edit(root, "train", **{k: (lambda a, k=k: a[k][:0]) for k in raw(root, "train")})


Case = Callable[[Path], "Path | None"]
BAD: list = [
    # (id, corrupt(root) -> path to load or None for root, substrings the message must contain)
    ("missing_folder", _missing_folder, ["no_such_folder"]),
    ("no_train_npz", lambda r: (r / "train.npz").unlink(), ["train.npz"]),
    ("missing_y", lambda r: edit(r, "train", y=None), ["train.npz", "'y'"]),
    ("y_contains_2", lambda r: edit(r, "train", y=lambda a: np.where(np.arange(40) == 5, 2, a["y"])),
     ["train.npz", "'y'", "2"]),
    ("y_strings", lambda r: edit(r, "train", y=lambda a: a["y"].astype(str)), ["train.npz", "'y'"]),
    ("y_2d", lambda r: edit(r, "train", y=lambda a: a["y"][:, None]), ["train.npz", "'y'"]),
    ("train_single_class", lambda r: edit(r, "train", y=lambda a: np.zeros_like(a["y"])),
     ["train.npz", "'y'", "single class"]),
    ("val_single_class", lambda r: edit(r, "val", y=lambda a: np.ones_like(a["y"])),
     ["val.npz", "'y'", "single class"]),
    ("x_rows_n_minus_1", lambda r: edit(r, "train", x_traj=lambda a: a["x_traj"][:-1]), ["train.npz", "x_traj"]),
    ("nan_in_x", lambda r: edit(r, "train", x_traj=lambda a: np.where(np.arange(F_TRAJ) == 1, np.nan, a["x_traj"])),
     ["train.npz", "x_traj", "NaN"]),
    ("inf_in_val_x", lambda r: edit(r, "val", x_pose=lambda a: np.where(a["x_pose"] > 0, np.inf, a["x_pose"])),
     ["val.npz", "x_pose", "Inf"]),
    ("nan_in_test_x", lambda r: edit(r, "test", x_traj=lambda a: np.full_like(a["x_traj"], np.nan)),
     ["test.npz", "x_traj"]),
    ("val_lacks_modality", lambda r: edit(r, "val", x_pose=None, mask_pose=None), ["val.npz", "pose"]),
    ("val_feature_count", lambda r: edit(r, "val", x_pose=lambda a: a["x_pose"][:, :, :2]),
     ["val.npz", "x_pose", "features"]),
    ("val_step_count", lambda r: edit(r, "val", x_pose=lambda a: a["x_pose"][:, :-1],
                                      mask_pose=lambda a: a["mask_pose"][:, :-1]), ["val.npz", "x_pose", "steps"]),
    ("x_2d", lambda r: edit(r, "train", x_traj=lambda a: a["x_traj"][:, :, 0]), ["train.npz", "x_traj"]),
    ("x_complex", lambda r: edit(r, "train", x_traj=lambda a: a["x_traj"].astype(complex)), ["train.npz", "x_traj"]),
    ("no_modality", lambda r: edit(r, "train", x_traj=None, mask_traj=None, x_pose=None, mask_pose=None),
     ["train.npz", "x_<name>"]),
    ("object_array", _object_array, ["train.npz", "pickle"]),
    ("empty_split", _empty_train, ["train.npz", "empty"]),
    ("truncated", _truncate, ["train.npz"]),
    ("text_file", lambda r: (r / "train.npz").write_text("y,x\n0,1.5\n"), ["train.npz"]),
    ("random_bytes", lambda r: (r / "train.npz").write_bytes(np.random.default_rng(0).bytes(300)), ["train.npz"]),
    ("zero_bytes", lambda r: (r / "train.npz").write_bytes(b""), ["train.npz"]),
    pytest.param("npy_as_npz", _npy_as_npz, ["train.npz"], id="npy_as_npz"),
    ("mask_wrong_shape", lambda r: edit(r, "train", mask_traj=lambda a: a["mask_traj"][:, :-1]),
     ["train.npz", "mask_traj"]),
    ("mask_not_boolean", lambda r: edit(r, "train", mask_traj=lambda a: a["mask_traj"] * 0.5),
     ["train.npz", "mask_traj"]),
    ("mask_without_x", lambda r: edit(r, "train", mask_foo=lambda a: a["mask_traj"]), ["train.npz", "mask_foo"]),
    ("groups_wrong_shape", lambda r: edit(r, "train", groups=lambda a: a["groups"][:-1]), ["train.npz", "groups"]),
    ("groups_float", lambda r: edit(r, "train", groups=lambda a: a["groups"].astype(float)),
     ["train.npz", "groups"]),
    ("unexpected_key", lambda r: edit(r, "train", labels=lambda a: a["y"]), ["train.npz", "labels"]),
]
BAD = [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in BAD]


def _prepare(tmp_path: Path, corrupt: Case) -> Path:
    root = write_set(tmp_path / "ds")
    path = corrupt(root)
    return path if isinstance(path, Path) else root


@pytest.mark.parametrize("name, corrupt, expected", BAD)
def test_bad_input_raises_data_error(tmp_path: Path, name: str, corrupt: Case, expected: list[str]) -> None:
    path = _prepare(tmp_path, corrupt)
    with pytest.raises(DataError) as e:
        load_dataset(path)
    for s in expected:
        assert s in str(e.value), (name, s, str(e.value))


@pytest.mark.parametrize("name, corrupt, expected", BAD)
def test_bad_input_cli_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, name: str, corrupt: Case,
                              expected: list[str]) -> None:
    path = _prepare(tmp_path, corrupt)
    assert run(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmtune: error:"), err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert expected[0] in err


def test_object_array_message_names_pickle(tmp_path: Path) -> None:
    path = _prepare(tmp_path, _object_array)
    with pytest.raises(DataError, match=r"(?i)object|pickle"):
        load_dataset(path)


def test_text_file_is_not_reported_as_pickled_array(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    (root / "train.npz").write_text("y,x\n0,1.5\n")
    with pytest.raises(DataError) as e:
        load_dataset(root)
    assert "object" not in str(e.value) and "pickled" not in str(e.value), str(e.value)


def test_stats_with_wrong_channel_count_is_data_error(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    stats = {"traj": {"mean": [0.0] * (F_TRAJ + 1), "std": [1.0] * (F_TRAJ + 1)},
             "pose": {"mean": [0.0] * F_POSE, "std": [1.0] * F_POSE}}
    with pytest.raises(DataError, match="traj"):
        load_dataset(root, stats=stats)


def test_stats_with_other_modalities_is_data_error(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    with pytest.raises(DataError, match="traj"):
        load_dataset(root, stats={"traj": {"mean": [0.0] * F_TRAJ, "std": [1.0] * F_TRAJ}})


# --- accepted inputs --------------------------------------------------------------------------------------------

def test_float_labels_accepted(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    for split in ("train", "val", "test"):
        edit(root, split, y=lambda a: a["y"].astype(np.float64))
    ds = load_dataset(root)
    assert ds.splits["train"].y.dtype == np.int64
    np.testing.assert_array_equal(ds.splits["train"].y, raw(root, "train")["y"].astype(np.int64))
    assert set(np.unique(ds.splits["val"].y)) == {0, 1}


def test_single_class_test_split_accepted(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    edit(root, "test", y=lambda a: np.zeros_like(a["y"]))
    assert load_dataset(root).splits["test"].y.sum() == 0


def test_dtypes(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    edit(root, "train", mask_traj=lambda a: a["mask_traj"].astype(np.uint8), y=lambda a: a["y"].astype(np.int32))
    ds = load_dataset(root)
    for split in ds.splits.values():
        assert split.y.dtype == np.int64
        assert split.groups.dtype == np.int64
        for m in ("traj", "pose"):
            assert split.x[m].dtype == np.float32
            assert split.mask[m].dtype == np.bool_
    np.testing.assert_array_equal(ds.splits["train"].mask["traj"], raw(root, "train")["mask_traj"])
    assert ds.modalities == {"traj": (T_TRAJ, F_TRAJ), "pose": (T_POSE, F_POSE)}


def _val_groups(root: Path, seed: int, fraction: float = 0.25) -> np.ndarray:
    return np.unique(load_dataset(root, val_fraction=fraction, split_seed=seed).splits["val"].groups)


def test_val_made_from_train_stratified_by_groups(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds", val=False)
    src = raw(root, "train")
    ds = load_dataset(root, val_fraction=0.25, split_seed=3)
    train, val = ds.splits["train"], ds.splits["val"]
    assert set(ds.splits) == {"train", "val", "test"}
    assert len(train) + len(val) == 40 and 0 < len(val) < 40
    assert set(np.unique(val.y)) == {0, 1}
    assert abs(val.y.mean() - src["y"].mean()) <= 0.15
    assert not set(train.groups) & set(val.groups)
    assert set(train.groups) | set(val.groups) == set(src["groups"].tolist())
    # every row kept its own label: a group's label in the split matches the source
    label_of = dict(zip(src["groups"].tolist(), src["y"].tolist()))
    assert all(label_of[g] == y for g, y in zip(val.groups.tolist(), val.y.tolist()))
    info = ds.info["val"]
    assert isinstance(info, dict) and info["fraction"] == 0.25 and info["seed"] == 3
    assert info["n_val"] == len(val)

    np.testing.assert_array_equal(_val_groups(root, 3), np.unique(val.groups))
    for other in (0, 1, 2, 4):
        assert not np.array_equal(_val_groups(root, other), np.unique(val.groups)), other


def test_val_made_from_train_without_groups(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds", val=False)
    edit(root, "train", groups=None)
    ds = load_dataset(root, val_fraction=0.2, split_seed=0)
    val = ds.splits["val"]
    assert val.groups is None
    assert set(np.unique(val.y)) == {0, 1}
    assert abs(val.y.mean() - raw(root, "train")["y"].mean()) <= 0.15
    assert len(val) + len(ds.splits["train"]) == 40


def _standardized(a: dict[str, np.ndarray], m: str, mean, std) -> np.ndarray:
    x = (a[f"x_{m}"] - np.asarray(mean)) / np.asarray(std)
    return np.where(a[f"mask_{m}"][..., None], x, 0.0)


def test_standardized_with_train_statistics(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds", val_shift=5.0)
    ds = load_dataset(root)
    src = raw(root, "train")
    for m in ("traj", "pose"):
        x, mask = ds.splits["train"].x[m], ds.splits["train"].mask[m]
        valid = x[mask]
        np.testing.assert_allclose(valid.mean(0), 0.0, atol=1e-3)
        np.testing.assert_allclose(valid.std(0), 1.0, atol=1e-2)
        assert (x[~mask] == 0).all() and (~mask).any()
        raw_valid = src[f"x_{m}"][src[f"mask_{m}"]]
        np.testing.assert_allclose(ds.stats[m]["mean"], raw_valid.mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ds.stats[m]["std"], raw_valid.std(0), rtol=1e-4)
    # val keeps train's statistics: shifted by +5 it is NOT re-centred to 0
    val_src = raw(root, "val")
    val = ds.splits["val"]
    np.testing.assert_allclose(val.x["traj"], _standardized(val_src, "traj", ds.stats["traj"]["mean"],
                                                            ds.stats["traj"]["std"]), atol=1e-4)
    assert (val.x["traj"][val.mask["traj"]].mean(0) > 1.0).all()
    assert (val.x["traj"][~val.mask["traj"]] == 0).all()


def test_given_stats_replace_train_statistics(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    stats = {"traj": {"mean": [0.0] * F_TRAJ, "std": [2.0] * F_TRAJ},
             "pose": {"mean": [1.0] * F_POSE, "std": [1.0] * F_POSE}}
    ds = load_dataset(root, stats=stats)
    assert ds.stats == stats
    for split in ("train", "val", "test"):
        src = raw(root, split)
        for m in ("traj", "pose"):
            np.testing.assert_allclose(ds.splits[split].x[m],
                                       _standardized(src, m, stats[m]["mean"], stats[m]["std"]), atol=1e-5)


def test_summarize(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds")
    info = summarize(load_dataset(root))
    assert info["modalities"] == {"traj": {"steps": T_TRAJ, "features": F_TRAJ},
                                  "pose": {"steps": T_POSE, "features": F_POSE}}
    assert info["val_split"] == "val.npz"
    assert set(info["splits"]) == {"train", "val", "test"}
    for split, n in (("train", 40), ("val", 20), ("test", 20)):
        src, got = raw(root, split), info["splits"][split]
        assert got["samples"] == n
        assert got["positives"] == int(src["y"].sum()) == round(0.3 * n)
        assert got["positive_rate"] == pytest.approx(src["y"].mean(), abs=1e-4)
        assert got["groups"] == n // 2
        for m in ("traj", "pose"):
            assert got["masked_fraction"][m] == pytest.approx(1 - src[f"mask_{m}"].mean(), abs=1e-4)
            assert got["masked_fraction"][m] > 0


def test_summarize_records_val_made_from_train(tmp_path: Path) -> None:
    root = write_set(tmp_path / "ds", val=False, test=False)
    info = summarize(load_dataset(root, val_fraction=0.3, split_seed=7))
    assert set(info["splits"]) == {"train", "val"}
    assert info["val_split"]["fraction"] == 0.3 and info["val_split"]["seed"] == 7
    assert info["splits"]["train"]["samples"] + info["splits"]["val"]["samples"] == 40
    assert info["splits"]["train"]["positives"] + info["splits"]["val"]["positives"] == 12


def test_cli_check_valid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_set(tmp_path / "ds")
    assert run(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out
    assert re.search(r"train\s+40 samples, 12 positive", out), out
    assert re.search(r"val\s+20 samples, 6 positive", out), out
    assert re.search(r"test\s+20 samples, 6 positive", out), out
    assert f"modality traj: {T_TRAJ} steps x {F_TRAJ} features" in out


def test_cli_check_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_set(tmp_path / "ds", val=False)
    assert run(["data", "check", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["splits"]) == {"train", "val", "test"}
    assert info["splits"]["test"]["samples"] == 20
    assert info["splits"]["train"]["samples"] + info["splits"]["val"]["samples"] == 40
    assert info["val_split"]["made_from"] == "train.npz"
