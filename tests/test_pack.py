"""Tests of `mmtune data pack` (data/pack.py): one-sample .npz files -> split files."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mmtune.data.npz import DataError, load_dataset
from mmtune.data.pack import pack
from mmtune.tune.cli import run

F_TRAJ, T_POSE, F_POSE = 4, 5, 3


def write_samples(folder: Path, n: int, seed: int = 0, groups: bool = True, t_min: int = 3,
                  t_max: int = 8) -> list[dict]:
    """N one-sample files in FOLDER, written in an order unlike their sorted names; returns them in name order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = rng.permutation(np.arange(100, 100 + 7 * n, 7))  # file names shuffled against the write order
    ys = np.zeros(n, np.int64)
    ys[: max(2, round(0.3 * n))] = 1
    rng.shuffle(ys)
    samples = []
    for i, k in enumerate(ids):
        t = t_max if i == 0 else int(rng.integers(t_min, t_max + 1))
        s = {"x_traj": rng.normal(size=(t, F_TRAJ)), "x_pose": rng.normal(size=(T_POSE, F_POSE)),
             "y": np.int64(ys[i])}
        if groups:
            s["group"] = np.int64(1000 + k)
        np.savez(folder / f"s{k:04d}.npz", **s)
        samples.append({"name": f"s{k:04d}.npz", **s})
    return sorted(samples, key=lambda s: s["name"])


def packed(out: Path, split: str = "train") -> dict[str, np.ndarray]:
    with np.load(out / f"{split}.npz") as z:
        return {k: z[k] for k in z.files}


def test_pack_flat_folder(tmp_path: Path) -> None:
    samples = write_samples(tmp_path / "src", 20)
    out = tmp_path / "out"
    assert pack(tmp_path / "src", out) == {"train": 20}
    a = packed(out)
    assert set(a) == {"y", "groups", "x_traj", "mask_traj", "x_pose", "mask_pose"}
    t_max = max(len(s["x_traj"]) for s in samples)
    assert a["x_traj"].shape == (20, t_max, F_TRAJ) and a["mask_traj"].shape == (20, t_max)
    assert a["x_pose"].shape == (20, T_POSE, F_POSE)
    assert a["x_traj"].dtype == np.float32 and a["mask_traj"].dtype == np.bool_
    np.testing.assert_array_equal(a["y"], [int(s["y"]) for s in samples])
    np.testing.assert_array_equal(a["groups"], [int(s["group"]) for s in samples])
    assert len({len(s["x_traj"]) for s in samples}) > 1  # lengths really vary
    for i, s in enumerate(samples):
        t = len(s["x_traj"])
        np.testing.assert_allclose(a["x_traj"][i, :t], s["x_traj"], rtol=1e-6)
        assert a["mask_traj"][i, :t].all() and not a["mask_traj"][i, t:].any()
        assert (a["x_traj"][i, t:] == 0).all()
        np.testing.assert_allclose(a["x_pose"][i], s["x_pose"], rtol=1e-6)
        assert a["mask_pose"][i].all()
    assert not list(out.glob(".*"))  # no temporary file left behind

    ds = load_dataset(out)
    assert ds.modalities == {"traj": (t_max, F_TRAJ), "pose": (T_POSE, F_POSE)}
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 20
    assert not set(ds.splits["train"].groups) & set(ds.splits["val"].groups)


def test_pack_keeps_sample_mask_and_no_groups(tmp_path: Path) -> None:
    src = tmp_path / "src"
    samples = write_samples(src, 6, groups=False)
    first = samples[0]
    mask = np.ones(len(first["x_traj"]), bool)
    mask[1] = False
    np.savez(src / first["name"], x_traj=first["x_traj"], x_pose=first["x_pose"], y=first["y"], mask_traj=mask)
    pack(src, tmp_path / "out")
    a = packed(tmp_path / "out")
    assert "groups" not in a
    t = len(first["x_traj"])
    np.testing.assert_array_equal(a["mask_traj"][0, :t], mask)
    assert not a["mask_traj"][0, t:].any()


def test_pack_split_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    train = write_samples(src / "train", 12, seed=1, t_max=8)
    val = write_samples(src / "val", 6, seed=2, t_max=8)
    out = tmp_path / "out"
    assert run(["data", "pack", str(src), str(out)]) == 0
    assert "18" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["train.npz", "val.npz"]
    np.testing.assert_array_equal(packed(out, "train")["y"], [int(s["y"]) for s in train])
    np.testing.assert_array_equal(packed(out, "val")["y"], [int(s["y"]) for s in val])
    np.testing.assert_array_equal(packed(out, "val")["groups"], [int(s["group"]) for s in val])
    ds = load_dataset(out)
    assert ds.info["val"] == "val.npz"
    assert (len(ds.splits["train"]), len(ds.splits["val"])) == (12, 6)


def test_pack_split_folders_of_different_lengths_load(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_samples(src / "train", 12, seed=1, t_max=8)
    write_samples(src / "val", 6, seed=2, t_max=6)
    pack(src, tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    assert ds.splits["val"].x["traj"].shape[1] == ds.splits["train"].x["traj"].shape[1]


def _sample(src: Path, name: str, **arrays) -> None:
    np.savez(src / name, **arrays)


def _rewrite(index: int, **changes) -> Callable[[Path], None]:
    """Rewrite the sample file at INDEX (in name order) with CHANGES (None deletes a key)."""
    def corrupt(src: Path) -> None:
        path = sorted(src.glob("*.npz"))[index]
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        for k, v in changes.items():
            if v is None:
                arrays.pop(k)
            else:
                arrays[k] = v
        np.savez(path, **arrays)
    return corrupt


def _empty(src: Path) -> None:
    for f in src.glob("*.npz"):
        f.unlink()


BAD = [
    pytest.param(_rewrite(0, y=None), ["'y'"], id="missing_y"),
    pytest.param(_rewrite(0, y=np.array([0, 1])), ["'y'"], id="y_not_scalar"),
    pytest.param(_rewrite(0, x_traj=np.zeros((2, 3, F_TRAJ))), ["x_traj"], id="x_3d"),
    pytest.param(_rewrite(0, x_pose=np.zeros(T_POSE)), ["x_pose"], id="x_1d"),
    pytest.param(_rewrite(-1, x_traj=np.zeros((4, F_TRAJ + 1))), ["x_traj", "feature"], id="feature_counts"),
    pytest.param(_rewrite(-1, x_pose=None), ["x_pose"], id="later_lacks_modality"),
    pytest.param(_rewrite(0, x_pose=None), ["x_pose"],
                 id="first_lacks_modality"),
    pytest.param(_rewrite(0, mask_traj=np.ones(2, bool)), ["mask_traj"], id="sample_mask_wrong_length"),
    pytest.param(_rewrite(0, x_traj=None, x_pose=None), ["x_<name>"], id="no_modality"),
    pytest.param(lambda src: (src / "s9999.npz").write_text("not npz"), ["s9999.npz"], id="unreadable_sample"),
    pytest.param(_empty, ["no .npz"], id="empty_folder"),
    pytest.param(lambda src: src.rename(src.with_name("gone")), ["src"], id="missing_folder"),
]


@pytest.mark.parametrize("corrupt, expected", BAD)
def test_pack_errors(tmp_path: Path, corrupt: Callable[[Path], None], expected: list[str]) -> None:
    src = tmp_path / "src"
    write_samples(src, 6)
    corrupt(src)
    with pytest.raises(DataError) as e:
        pack(src, tmp_path / "out")
    for s in expected:
        assert s in str(e.value), (s, str(e.value))
    assert not (tmp_path / "out" / "train.npz").exists()


@pytest.mark.parametrize("corrupt, expected", BAD)
def test_pack_errors_cli_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, corrupt: Callable[[Path], None],
                                expected: list[str]) -> None:
    src = tmp_path / "src"
    write_samples(src, 6)
    corrupt(src)
    assert run(["data", "pack", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmtune: error:") and "Traceback" not in err, err
    assert expected[0] in err
