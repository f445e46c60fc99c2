"""Installed from a wheel, mmtune lives under one namespace and ships its search spaces.

A wheel is built from the repository, installed into a fresh venv, and run from a folder holding a user package
named `data` (as most ML projects have): `mmtune sweep` with the shipped default space works there, and the user's
`data` is imported unharmed. The fresh venv borrows the test venv's dependencies (torch, Ray, ...) through a .pth
line, so no network is needed; mmtune itself comes only from the wheel.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

SOURCES = ("pyproject.toml", "README.md", "tune", "model", "data", "search_spaces")


def build_wheel(out: Path) -> Path:
    """A wheel of the repository's package (built from a copy: the checkout is left clean)."""
    src = out / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        copy = shutil.copytree if path.is_dir() else shutil.copy
        copy(path, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if path.is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    return next((out / "dist").glob("mmtune-*.whl"))


def fresh_venv(path: Path, wheel: Path) -> Path:
    """A new venv holding the wheel, with this venv's dependencies visible (not its editable mmtune)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    # A path added by a .pth line is not scanned for .pth files, so this venv's editable finder stays off.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (target / "zz_dependencies.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return path / "bin"


@pytest.mark.slow
def test_wheel_installs_under_mmtune_and_leaves_a_users_data_package_alone(tmp_path, demo_dir, subprocess_env):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "mmtune/search_spaces/default.yaml" in names and "mmtune/tune/cli.py" in names
    assert not any(n.startswith(("tune/", "model/", "data/")) for n in names), "top-level packages would shadow"
    bin_dir = fresh_venv(tmp_path / "venv", wheel)

    project = tmp_path / "project"  # a user's project with its own `data` package, the current folder
    (project / "data").mkdir(parents=True)
    (project / "data" / "__init__.py").write_text("OWNER = 'user'\n")
    env = {**subprocess_env, "PYTHONPATH": ""}
    sweep = subprocess.run(
        [str(bin_dir / "mmtune"), "sweep", "--data", str(demo_dir), "--num-samples", "1", "--epochs", "1",
         "--finalize-top-k", "0", "--cv", "0", "--storage", str(tmp_path / "results"), "--name", "pkg",
         "--num-cpus", "1"],  # --cv 0: the wheel is under test, not cross-validation (5x the training)
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    meta = json.loads((tmp_path / "results" / "pkg" / "mmtune.json").read_text())
    assert meta["space_file"].endswith("mmtune/search_spaces/default.yaml")  # the shipped space, from the wheel
    assert str(tmp_path / "venv") in meta["space_file"]

    check = ("import data, mmtune.data.npz as npz, mmtune.tune.cli; "
             "print(data.OWNER, npz.__file__, mmtune.tune.cli.__file__)")
    out = subprocess.run([str(bin_dir / "python"), "-c", check], cwd=project, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    owner, npz_file, cli_file = out.stdout.split()
    assert owner == "user"  # the user's package, not mmtune's
    assert npz_file.startswith(str(tmp_path / "venv")) and cli_file.startswith(str(tmp_path / "venv"))
