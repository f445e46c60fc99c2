"""The defaults as a contender: the config a user gets without tuning, next to everything the sweep found.

On small noisy sets a sweep's answer can test worse than the untuned config (Schneider, Bischl & Feurer,
"Overtuning in Hyperparameter Optimization", AutoML 2025: about 10 % of HPO runs, most often on small data). So the
untuned config, TrainConfig's defaults of the searched keys under the space's fixed values, is the sweep's first
start point when it lies inside the space, and finalize retrains it next to the top-k whether or not it does; the
selection rule keeps it unless a searched config beats it beyond the noise (`tune.selection`). A space turns this
off with `defaults_contender: false`. Plain values: importing this module imports neither Ray nor torch.
"""
from __future__ import annotations

from typing import Any

from mmtune.model.config import ConfigError, TrainConfig
from mmtune.tune.space import VIRTUAL, Param, SearchSpace

DEFAULTS_ID = "defaults"  # the trial id finalize shows for the defaults when the sweep did not train them
DEFAULTS_WON = "no searched config beat the defaults beyond the noise"


def point(space: SearchSpace) -> dict[str, Any]:
    """The searched keys at TrainConfig's defaults (head_dim: the default d_model over the default nhead)."""
    base = TrainConfig()
    virtual = {"head_dim": base.d_model // base.nhead}
    assert set(virtual) == set(VIRTUAL), "every search-only parameter needs its default here"
    return {p.name: virtual[p.name] if p.name in virtual else getattr(base, p.name) for p in space.params}


def outside(space: SearchSpace, values: dict[str, Any]) -> str | None:
    """Why VALUES lie outside SPACE's ranges (the first parameter that does), or None when they lie inside."""
    for p in space.params:
        if (why := _outside(p, values[p.name])) is not None:
            return why
    return None


def _outside(p: Param, v: Any) -> str | None:
    if p.kind == "categorical":
        return None if v in p.choices else f"{p.name} {v!r} is not among the choices {list(p.choices)}"
    if not p.low <= v <= p.high:
        return f"{p.name} {v!r} is outside [{p.low:g}, {p.high:g}]"
    if p.kind == "int" and p.step and (v - p.low) % p.step:
        return f"{p.name} {v!r} is not on the grid of step {p.step} from {p.low:g}"
    return None


def why_not(space: SearchSpace) -> str | None:
    """Why the defaults do not contend in SPACE (turned off, or no valid config under its fixed values); None when
    they do."""
    if not space.defaults_contender:
        return "defaults_contender: false in the space"
    try:
        space.train_config(point(space))
    except ConfigError as e:
        return f"under the space's fixed values they are no valid config: {str(e).split(': ', 1)[-1]}"
    return None


def start_points(space: SearchSpace) -> list[dict[str, Any]]:
    """The sampler's start points: the defaults first (when they contend and lie inside the space), then the
    space's own `start`, each config once."""
    pts = [point(space)] if why_not(space) is None and outside(space, point(space)) is None else []
    for s in space.start:
        if all(space.train_config(s) != space.train_config(p) for p in pts):
            pts.append(dict(s))
    return pts


def is_defaults(space: SearchSpace, params: dict[str, Any]) -> bool:
    """Whether PARAMS (a trial's, perhaps infeasible) build the defaults' config (which SPACE must allow)."""
    try:
        return space.train_config(params) == space.train_config(point(space))
    except ConfigError:
        return False


def describe(space: SearchSpace) -> str:
    """The plan's line on the defaults: whether they start the sweep, and that finalize retrains them."""
    if (why := why_not(space)) is not None:
        return f"defaults: not a contender ({why})"
    values = point(space)
    shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
    why = outside(space, values)
    first = "the sweep's first trial" if why is None else f"not a start point ({why})"
    return (f"defaults: the untuned config ({shown}) is {first}; finalize retrains it next to the top configs "
            "and keeps it unless one of them beats it beyond the noise")


def defaults_lines(summary: dict[str, Any]) -> list[str]:
    """One line on the defaults: that they won, or the winner's gain over them (none when they did not contend)."""
    d = summary.get("defaults")
    if not d:
        return []
    gains = "; ".join(gain_text(g) for g in d["gain"].values())
    if d["won"]:
        return [f"defaults: {DEFAULTS_WON}; best_config.yaml holds the defaults"
                + (f" (the best searched config, trial {d['versus']}, over them: {gains})" if gains else "")]
    which = "" if d["trial_id"] == DEFAULTS_ID else f" (sweep trial {d['trial_id']})"
    return [f"gain over the defaults{which}: {gains or 'not measured (no run of theirs trained)'}"]


def gain_text(g: dict[str, Any]) -> str:
    """A gain over the defaults in words: KEY +x ± se, inside or beyond the noise (selection.NOISE_SE se)."""
    if g["se"] is None:
        return f"{g['key']} {g['gain']:+.4f} (one seed each: no noise estimate)"
    where = "inside" if g["inside_noise"] else "beyond"
    return f"{g['key']} {g['gain']:+.4f} ± {g['se']:.4f} se ({where} the noise)"
