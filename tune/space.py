"""Search spaces: a YAML file -> checked parameters, Optuna distributions and training configs."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmtune.data.validation import Validation
from mmtune.model.config import FIELD_TYPES, MONITOR_CHOICES, ConfigError, TrainConfig, build_config, coerce, read_yaml
from mmtune.model.metrics import mode_of
from mmtune.tune.budget import DurationError, parse_duration

if TYPE_CHECKING:
    import optuna


class SpaceError(ConfigError):
    """A search space that cannot run; the message names the file, the key and the fix."""


# Search-only parameters that are not config fields: d_model = nhead * head_dim, so any pair is valid.
VIRTUAL = {"head_dim": int}
TOP_KEYS = {"metric", "mode", "num_samples", "seed", "epochs", "asha", "fixed", "params", "start", "description",
            "searcher", "cv", "time_budget", "stop_when_converged", "defaults_contender"}
SEARCHERS = ("tpe", "gp", "qmc", "random")  # Optuna's TPESampler, GPSampler, QMCSampler, RandomSampler
ASHA_KEYS = {"grace_period", "reduction_factor", "brackets"}
PARAM_KEYS = {"type", "low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched parameter."""

    name: str
    kind: str  # "float", "int" or "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution of this parameter."""
        import optuna  # late: reading a space (status, export, report) needs no sampler

        if self.kind == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=self.step or 1)
        return optuna.distributions.CategoricalDistribution(self.choices)

    def values(self) -> list | None:
        """Every value this parameter can take, when that is a small finite set."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and (self.high - self.low) / (self.step or 1) <= 64:
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))
        return None

    def on_edge(self, value: Any) -> str | None:
        """'low'/'high' when VALUE sits in the outer 5 % of a numeric range (log-aware), else None."""
        if self.kind == "categorical" or value is None:
            return None
        lo, hi, v = (math.log(x) for x in (self.low, self.high, value)) if self.log else (self.low, self.high, value)
        span = hi - lo
        return "low" if v <= lo + 0.05 * span else "high" if v >= hi - 0.05 * span else None


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file."""

    source: str
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    metric: str = "val/f1"
    mode: str = "max"
    num_samples: int = 20
    seed: int = 0  # the sampler's seed
    searcher: str = "tpe"  # one of SEARCHERS: the Optuna sampler that proposes trials
    epochs: int = 30  # ASHA's max_t, and every trial's epoch budget
    grace_period: int = 2
    reduction_factor: float = 3.0
    brackets: int = 1
    start: tuple[dict[str, Any], ...] = ()
    cv: int | str = 0  # validation of every trial: 0 holdout, K >= 2 K-fold CV, "auto" (resolved from the data)
    time_budget: float | None = None  # seconds for search + finalize (tune/budget.py); None: unbounded
    stop_when_converged: bool = False  # the searcher ends the search once it has converged (tune/convergence.py)
    defaults_contender: bool = True  # the untuned config starts the sweep and finalize retrains it (tune/defaults.py)
    raw: dict[str, Any] = field(default_factory=dict)  # the file as read, for the record

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def validation(self) -> Validation:
        """How every trial is validated; a `cv: auto` not yet resolved (`data.validation.resolve`) checks like a
        holdout."""
        folds = self.cv if isinstance(self.cv, int) else 0
        return Validation(folds, self.split_seed, float(self.fixed.get("val_fraction", TrainConfig.val_fraction)))

    @property
    def split_seed(self) -> int:
        """The split_seed of the fixed values (or the default): the split that planning and checks read."""
        return int(self.fixed.get("split_seed", TrainConfig.split_seed))

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions keyed by parameter name."""
        return {p.name: p.distribution() for p in self.params}

    def train_config(self, params: dict[str, Any]) -> TrainConfig:
        """The full training config of one trial: defaults, fixed overrides, sampled PARAMS."""
        values = {**self.fixed, **{k: v for k, v in params.items() if k not in VIRTUAL}}
        if "head_dim" in params:
            values["d_model"] = int(values.get("nhead", TrainConfig.nhead)) * int(params["head_dim"])
        values.update(epochs=self.epochs, monitor=self.metric, cv=self.validation.folds)
        return build_config(values, source=f"{self.source} (trial)")

    def with_overrides(self, **kw: Any) -> "SearchSpace":
        """A copy with command-line overrides (None values ignored), checked again; an epochs override moves ASHA's
        grace period with it (`scaled_grace`), so the rungs keep their place in the budget."""
        kw = {k: v for k, v in kw.items() if v is not None}
        epochs = kw.get("epochs", self.epochs)
        if epochs != self.epochs and epochs >= 1 and "grace_period" not in kw:
            kw["grace_period"] = scaled_grace(self.grace_period, self.epochs, epochs)
        space = replace(self, **kw)
        _check_settings(space)
        return space

    @property
    def rungs(self) -> list[int]:
        """The epochs at which ASHA compares trials and stops the weaker ones; [] means no early stopping."""
        return rung_epochs(self.grace_period, self.reduction_factor, self.epochs)

    def early_stopping(self) -> str:
        """Where ASHA may stop trials, in words for the plan, saying so when an epochs override moved the rungs."""
        file_epochs, file_grace = self._file_budget()
        moved = (f" (the file's first rung at epoch {file_grace} of {file_epochs}, scaled for --epochs {self.epochs})"
                 if self.epochs != file_epochs and self.grace_period != file_grace else "")
        if self.rungs:
            return (f"ASHA stops trials outside the best 1/{self.reduction_factor:g} at "
                    f"epoch{'s' * (len(self.rungs) > 1)} {', '.join(map(str, self.rungs))} of {self.epochs}{moved}")
        if self.epochs != file_epochs:
            return (f"none: --epochs {self.epochs} leaves no ASHA rung below the budget (the file's first rung at "
                    f"epoch {file_grace} of {file_epochs})")
        return (f"none: asha.grace_period {self.grace_period} = epochs {self.epochs} leaves no ASHA rung below "
                "the budget")

    def _file_budget(self) -> tuple[int, int]:
        """(epochs, asha.grace_period) as the file set them (its defaults where it left them out)."""
        if not self.raw:  # built in code, not read from a file
            return self.epochs, self.grace_period
        asha = self.raw.get("asha") or {}
        return self.raw.get("epochs", SearchSpace.epochs), asha.get("grace_period", SearchSpace.grace_period)


def shipped_spaces() -> dict[str, Path]:
    """The search spaces installed with mmtune, by name (`default`, `smoke`, ...)."""
    from importlib.resources import files

    folder = files("mmtune.search_spaces")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def space_file(name_or_path: str | Path) -> Path:
    """A search-space file: a path that exists, or the name of a shipped space (`default` is default.yaml)."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path  # a path (a missing one fails in load_space, naming it)
    shipped = shipped_spaces()
    if str(name_or_path) not in shipped:
        raise SpaceError(f"--space {name_or_path}: no such file, and not a shipped space ({', '.join(sorted(shipped))}); "
                         "give a YAML path or one of those names")
    return shipped[str(name_or_path)]


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search-space YAML (a path, or a shipped space's name); every problem is a SpaceError naming
    file and key."""
    path = space_file(path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise SpaceError(str(e)) from None
    return parse_space(raw, str(path))


def parse_space(raw: dict[str, Any], src: str) -> SearchSpace:
    """Check a search space given as a mapping; SRC names it in errors."""
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SpaceError(f"{src}: unknown key {sorted(unknown)[0]!r}; allowed top-level keys: {sorted(TOP_KEYS)}")
    params = raw.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise SpaceError(f"{src}: key 'params' must map parameter names to their ranges (at least one)")
    metric = _typed(src, "metric", raw.get("metric", "val/f1"), str)
    if metric not in MONITOR_CHOICES:
        raise SpaceError(f"{src}: key 'metric': {metric!r} is never reported; use one of {', '.join(MONITOR_CHOICES)}")
    mode = _typed(src, "mode", raw.get("mode", mode_of(metric)), str)
    if mode != mode_of(metric):
        raise SpaceError(f"{src}: key 'mode': {metric} is to be {mode_of(metric)}imized, not {mode!r}")
    asha = raw.get("asha") or {}
    if not isinstance(asha, dict) or set(asha) - ASHA_KEYS:
        raise SpaceError(f"{src}: key 'asha' takes only {sorted(ASHA_KEYS)}")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError(f"{src}: key 'fixed' must map config fields to values")
    fixed = {k: _checked(src, f"fixed.{k}", k, v) for k, v in fixed.items()}
    for k in ("epochs", "monitor", "cv"):
        if k in fixed:
            raise SpaceError(f"{src}: key 'fixed.{k}': set it with the top-level key "
                             f"'{'metric' if k == 'monitor' else k}' instead")
    space = SearchSpace(
        source=src, params=tuple(_param(src, n, spec) for n, spec in params.items()), fixed=fixed,
        metric=metric, mode=mode,
        num_samples=_typed(src, "num_samples", raw.get("num_samples", 20), int),
        seed=_typed(src, "seed", raw.get("seed", 0), int),
        searcher=_typed(src, "searcher", raw.get("searcher", "tpe"), str),
        epochs=_typed(src, "epochs", raw.get("epochs", 30), int),
        grace_period=_typed(src, "asha.grace_period", asha.get("grace_period", 2), int),
        reduction_factor=float(_typed(src, "asha.reduction_factor", asha.get("reduction_factor", 3), (int, float))),
        brackets=_typed(src, "asha.brackets", asha.get("brackets", 1), int),
        start=tuple(_start_points(src, raw.get("start") or [], params)), cv=raw.get("cv", 0),
        time_budget=_duration(src, raw.get("time_budget")),
        stop_when_converged=_flag(src, "stop_when_converged",
                                  raw.get("stop_when_converged", SearchSpace.stop_when_converged)),
        defaults_contender=_flag(src, "defaults_contender",
                                 raw.get("defaults_contender", SearchSpace.defaults_contender)), raw=raw)
    _check_settings(space)
    _check_combinations(space)
    return space


def _duration(src: str, value: Any) -> float | None:
    """The time_budget key in seconds (None when absent)."""
    try:
        return None if value is None else parse_duration(value, f"{src}: key 'time_budget'")
    except DurationError as e:
        raise SpaceError(str(e)) from None


def _flag(src: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpaceError(f"{src}: key {key!r} must be true or false, got {value!r}")
    return value


def _typed(src: str, key: str, value: Any, kind: type | tuple) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise SpaceError(f"{src}: key {key!r} must be {name}, got {value!r}")
    return value


def _checked(src: str, key: str, name: str, value: Any) -> Any:
    """VALUE checked against config field NAME, errors naming KEY in SRC."""
    if name in VIRTUAL:
        return _typed(src, key, value, VIRTUAL[name])
    try:
        return coerce(name, value, source=f"{src}: key {key!r}")
    except ConfigError as e:
        raise SpaceError(str(e)) from None


def _param(src: str, name: str, spec: Any) -> Param:
    key = f"params.{name}"
    if name == "cv":
        raise SpaceError(f"{src}: key {key!r}: the validation scheme is not searched; set the top-level key 'cv'")
    if name not in FIELD_TYPES and name not in VIRTUAL:
        raise SpaceError(f"{src}: key {key!r}: {name!r} is not a config field; known: "
                         f"{', '.join([*FIELD_TYPES, *VIRTUAL])}")
    if not isinstance(spec, dict) or set(spec) - PARAM_KEYS or "type" not in spec:
        raise SpaceError(f"{src}: key {key!r} must be a mapping with 'type' (float, int, categorical) and "
                         f"its settings ({', '.join(sorted(PARAM_KEYS - {'type'}))})")
    kind = spec["type"]
    field_type = VIRTUAL.get(name) or FIELD_TYPES[name]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{src}: key '{key}.choices' must be a non-empty list")
        return Param(name, kind, choices=tuple(_checked(src, f"{key}.choices", name, c) for c in choices))
    if kind not in ("float", "int"):
        raise SpaceError(f"{src}: key '{key}.type' must be float, int or categorical, got {kind!r}")
    if field_type is not float and kind == "float" or field_type not in (int, float):
        raise SpaceError(f"{src}: key '{key}.type': {name} is {field_type.__name__}; use "
                         f"{'int or categorical' if field_type is int else 'categorical'}")
    low, high = spec.get("low"), spec.get("high")
    for k, v in (("low", low), ("high", high)):
        _typed(src, f"{key}.{k}", v, (int, float))
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise SpaceError(f"{src}: key '{key}.log' must be true or false, got {log!r}")
    if low >= high:
        raise SpaceError(f"{src}: key '{key}': low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SpaceError(f"{src}: key '{key}': log scale needs low > 0, got {low}")
    if step is not None and (kind != "int" or not isinstance(step, int) or step < 1 or log):
        raise SpaceError(f"{src}: key '{key}.step' must be a positive int, for int parameters without log")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(f"{src}: key '{key}': int bounds must be whole numbers")
    for bound in (low, high):
        _checked(src, key, name, int(bound) if kind == "int" else float(bound))
    return Param(name, kind, float(low), float(high), log, step)


def _start_points(src: str, start: Any, params: dict) -> list[dict[str, Any]]:
    if not isinstance(start, list):
        raise SpaceError(f"{src}: key 'start' must be a list of parameter mappings")
    points = []
    for i, point in enumerate(start):
        if not isinstance(point, dict) or set(point) != set(params):
            missing = sorted(set(params) - set(point or {}))
            extra = sorted(set(point or {}) - set(params))
            raise SpaceError(f"{src}: key 'start[{i}]' must give every searched parameter once "
                             f"(missing {missing}, not searched {extra})")
        points.append({k: _checked(src, f"start[{i}].{k}", k, v) for k, v in point.items()})
    return points


def scaled_grace(grace_period: int, epochs: int, new_epochs: int) -> int:
    """GRACE_PERIOD of an EPOCHS budget moved in proportion to NEW_EPOCHS (rounded half up), within [1, NEW_EPOCHS]."""
    return min(new_epochs, max(1, math.floor(grace_period * new_epochs / epochs + 0.5)))


def rung_epochs(grace_period: int, reduction_factor: float, epochs: int) -> list[int]:
    """The epochs at which ASHA (max_t = EPOCHS) can stop a trial, computed as Ray's AsyncHyperBandScheduler does.

    Its milestones are grace_period * reduction_factor**k (bracket s starts at k = s, so brackets add none); a
    trial meets one at the first whole epoch >= it. One at EPOCHS stops nothing: the trial's budget ends there.
    """
    rungs: list[int] = []
    k = 0
    while (epoch := math.ceil(grace_period * reduction_factor ** k)) < epochs:
        if epoch not in rungs:  # milestones less than an epoch apart meet a trial at the same epoch
            rungs.append(epoch)
        k += 1
    return rungs


def _check_settings(s: SearchSpace) -> None:
    rules = [(s.num_samples >= 1, "num_samples", "must be >= 1"), (s.epochs >= 1, "epochs", "must be >= 1"),
             (s.searcher in SEARCHERS, "searcher", f"must be one of {', '.join(SEARCHERS)}, not {s.searcher!r}"),
             (1 <= s.grace_period <= s.epochs, "asha.grace_period",
              f"must be in [1, epochs={s.epochs}], not {s.grace_period}: the first epoch at which ASHA may stop a "
              "trial; lower it or raise epochs (grace_period = epochs turns early stopping off)"),
             (s.reduction_factor > 1, "asha.reduction_factor", "must be > 1"),
             (s.brackets >= 1, "asha.brackets", "must be >= 1"),
             (s.cv == "auto" or (isinstance(s.cv, int) and not isinstance(s.cv, bool) and (s.cv == 0 or s.cv >= 2)),
              "cv", f"must be 0 (holdout), a fold count K >= 2 or 'auto', not {s.cv!r}")]
    for ok, key, what in rules:
        if not ok:
            raise SpaceError(f"{s.source}: key {key!r} {what}")


def _check_combinations(s: SearchSpace) -> None:
    """Every combination of the architecture parameters must build, so no trial is born infeasible."""
    arch = [p for p in s.params if p.name in ("d_model", "nhead", "head_dim")]
    if "head_dim" in s.names and "d_model" in s.names:
        raise SpaceError(f"{s.source}: key 'params.head_dim': search head_dim or d_model, not both "
                         "(d_model = nhead * head_dim)")
    grids = [p.values() or [p.low, p.high] for p in arch]
    for combo in itertools.product(*grids):
        params = dict(zip([p.name for p in arch], combo))
        try:
            s.train_config(params)
        except ConfigError as e:
            raise SpaceError(f"{s.source}: key 'params' allows an impossible combination {params}: "
                             f"{str(e).split(': ', 1)[-1]}. Make every nhead choice divide every d_model choice, "
                             "or search head_dim instead of d_model") from None
    for p in s.params:
        if p.name in ("d_model", "nhead", "head_dim"):
            continue
        for v in p.values() or [p.low, p.high]:
            try:
                s.train_config({p.name: int(v) if p.kind == "int" else v})
            except ConfigError as e:
                raise SpaceError(f"{s.source}: key 'params.{p.name}' allows {v!r}: "
                                 f"{str(e).split(': ', 1)[-1]}") from None
    for i, point in enumerate(s.start):
        try:
            s.train_config(point)
        except ConfigError as e:
            raise SpaceError(f"{s.source}: key 'start[{i}]': {str(e).split(': ', 1)[-1]}") from None
