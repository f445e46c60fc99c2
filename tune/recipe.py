"""The deployable recipe: the one function that writes a `best_config.yaml`, with one rule for its epochs.

Export (the best trial) and finalize (the winner over seeds) both write through `write_recipe`; the run's
`Validation` decides what is deployed: a holdout config as it trained, or a CV config as a recipe that trains one
model on all the training data for the median best epoch of the runs that estimated it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from mmtune.data.io import write_text
from mmtune.data.validation import Validation
from mmtune.model.config import TrainConfig
from mmtune.tune.space import SearchSpace


def recipe_config(space: SearchSpace, validation: Validation, params: dict[str, Any], best_epochs: list[int],
                  seeds: tuple[int, int] | None = None) -> tuple[TrainConfig, str]:
    """The config to deploy for PARAMS, estimated by runs whose best epochs were BEST_EPOCHS (SEEDS: the training
    and split seed to record), and the header lines that say what it trains."""
    cfg = space.train_config(params)
    if seeds is not None:
        cfg = replace(cfg, seed=seeds[0], split_seed=seeds[1])
    epochs = validation.recipe_epochs(best_epochs, space.epochs)
    if epochs is None:
        return cfg, ""
    note = (f"# Trained by this recipe: one model on all of train.npz + val.npz for exactly {epochs} epochs, the "
            f"median best epoch of {len(best_epochs)} run(s)' fold-mean curves (cv 0, val_fraction 0, patience 0); "
            "test.npz, if present, is evaluated once at the end.\n")
    return replace(cfg, cv=0, val_fraction=0.0, patience=0, epochs=epochs), note


def write_recipe(path: Path, header: str, space: SearchSpace, validation: Validation, params: dict[str, Any],
                 best_epochs: list[int], seeds: tuple[int, int] | None = None) -> TrainConfig:
    """Write the recipe of PARAMS to PATH under HEADER (comment lines), readable by `mmtune train --config`."""
    cfg, note = recipe_config(space, validation, params, best_epochs, seeds)
    write_text(header + note + yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)
    return cfg
