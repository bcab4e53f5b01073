"""Run configuration: a YAML file validated into :class:`RunConfig` before anything starts.

A config names everything :class:`~distributed_reptile.ReptileMetaRL` takes and the options of its
``learn``. User code (task callables, SB3 algorithms, generator classes, activation functions) is
referenced by import path, ``"package.module:name"``. :func:`load_config` reads the file, applies
``--set key.sub=value`` overrides and validates the whole config at once, so that a wrong key, a
wrong type or an import path that does not resolve is reported, with the field and the fix, before
Ray or any learner starts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

from distributed_reptile.config_checks import (
    CLASS_KEYS,
    ImportPath,
    Strict,
    TaskGeneratorParams,
    pydantic_problems,
    semantic_problems,
)
from distributed_reptile.imports import import_path_of, resolve_import_path
from distributed_reptile.settings import TrainerFields, TrainerSettings

if TYPE_CHECKING:
    from distributed_reptile.algorithms.base import BaseMetaAlgorithm


class ConfigError(ValueError):
    """A run config is invalid; :attr:`problems` holds one ``"field: what is wrong: fix"`` per issue.

    :param problems: the problems found, each naming its field.
    :param source: the file (or other origin) the config came from, named in the message.
    """

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid run config{where} ({len(self.problems)} problem(s)):\n{lines}")


# ---------------------------------------------------------------------- schema
class LinearMetaLR(Strict):
    """``meta_lr: {linear: [start, end]}``: linear from ``start`` (step 0) to ``end`` (last step)."""

    linear: tuple[float, float]


class LearnConfig(Strict):
    """Options of ``learn`` (``save_path`` defaults to the run folder's ``checkpoints``)."""

    reset_task_history_before_learning: bool = True
    task_seed_mode: Literal["generator", "meta_step"] = "generator"
    tb_log_name: str | None = None
    log_inner_tasks: bool = False
    inner_tb_log_root: str | None = None
    save_freq: NonNegativeInt = 0
    save_path: str | None = None
    save_prefix: str = "meta_ckpt"
    save_final: bool = True
    progress_bar: bool = False
    keep_last: PositiveInt | None = None
    time_budget_s: PositiveFloat | None = None
    eval_freq: NonNegativeInt = 0
    eval_kwargs: dict[str, Any] = Field(default_factory=dict)


class TuneSection(Strict):
    """Options of ``distributed-reptile tune`` (the search space is the top-level ``search_space``)."""

    num_samples: PositiveInt = 4
    metric: str = "ep_return_mean"
    mode: Literal["max", "min"] = "max"
    grace_period: PositiveInt = 1
    max_concurrent_trials: PositiveInt | None = None
    checkpoint_freq: NonNegativeInt = 1
    max_failures: NonNegativeInt = 2
    seed: int | None = None


class RunConfig(TrainerFields):
    """One meta-training run: the trainer's arguments, ``learn``'s options and the run's name.

    The trainer's settings are those of :class:`~distributed_reptile.settings.TrainerFields`
    (declared once, for the constructor too); the object-valued ones are import paths here.
    Build it with :meth:`from_dict` or :func:`load_config` (they run the checks that need the
    resolved classes too); :meth:`trainer_kwargs` and :meth:`learn_kwargs` give the arguments of
    the trainer and of ``learn(...)``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    algorithm: ImportPath = "distributed_reptile:ReptileMetaRL"
    tasks_generator_cls: ImportPath = "distributed_reptile:TaskGenerator"
    tasks_generator_params: dict[str, Any] = Field(default_factory=dict)
    rl_algorithm: ImportPath
    rl_algo_kwargs: dict[str, Any] = Field(default_factory=lambda: {"policy": "MlpPolicy"})
    meta_lr: float | LinearMetaLR
    meta_optimizer_cls: ImportPath = "torch.optim:Adam"
    device: str = "auto"
    verbose: int = Field(1, ge=0, le=2)
    inner_learner_cls: ImportPath = "distributed_reptile:InnerLearner"
    learn: LearnConfig = Field(default_factory=LearnConfig)
    search_space: dict[str, Any] = Field(default_factory=dict)
    tune: TuneSection = Field(default_factory=TuneSection)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> RunConfig:
        """Validate ``data`` completely: the schema, then what depends on the resolved classes.

        :param data: the config as loaded from YAML.
        :param source: where it came from (named in errors).
        :raises ConfigError: listing every problem, each with its field and fix.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                [f"the config must be a mapping of keys to values, got {type(data).__name__}"],
                source,
            )
        problems: list[str] = []
        config = None
        try:
            config = cls.model_validate(dict(data))
        except ValidationError as err:
            problems += pydantic_problems(err, cls)
        problems += semantic_problems(
            dict(data), {k: f.default for k, f in cls.model_fields.items()}
        )
        if problems or config is None:
            raise ConfigError(problems, source)
        return config

    # ------------------------------------------------------------------ outputs
    def trainer_class(self) -> type[BaseMetaAlgorithm]:
        """The trainer class (``algorithm``), e.g. :class:`~distributed_reptile.ReptileMetaRL`."""
        return resolve_import_path(self.algorithm)  # type: ignore[no-any-return]

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the trainer, with import paths resolved to objects."""
        from distributed_reptile.schedules import linear_schedule
        from distributed_reptile.tasks.generator import TaskGenerator

        gen = resolve_import_path(self.tasks_generator_cls)
        gen_params = dict(self.tasks_generator_params)
        if issubclass(gen, TaskGenerator):
            parsed = TaskGeneratorParams.model_validate(gen_params)
            gen_params = parsed.model_dump(exclude_unset=True)
            for key in ("task_callable", "revisit_weight_fn"):
                if gen_params.get(key) is not None:
                    gen_params[key] = resolve_import_path(gen_params[key])
            if gen_params.get("tasks") is not None:
                gen_params["tasks"] = resolve_import_path(gen_params["tasks"])()
        meta_lr: Any = self.meta_lr
        if isinstance(meta_lr, LinearMetaLR):
            meta_lr = linear_schedule(*meta_lr.linear)
        # the settings declared in TrainerFields pass as they are; the object-valued ones resolve
        kwargs = {name: copy.deepcopy(getattr(self, name)) for name in TrainerFields.model_fields}
        kwargs.update(
            tasks_generator_cls=gen,
            tasks_generator_params=gen_params,
            rl_algorithm=resolve_import_path(self.rl_algorithm),
            rl_algo_kwargs=_resolve_class_keys(self.rl_algo_kwargs),
            meta_lr=meta_lr,
            meta_optimizer_cls=resolve_import_path(self.meta_optimizer_cls),
            inner_learner_cls=resolve_import_path(self.inner_learner_cls),
        )
        kwargs["device"] = self.device
        missing = set(TrainerSettings.model_fields) - set(kwargs)
        assert not missing, f"RunConfig does not map the trainer settings {sorted(missing)}"
        return kwargs

    def learn_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``learn`` (without ``reset_num_timesteps``, which the caller sets).

        ``time_budget_s`` becomes a :class:`~distributed_reptile.callbacks.StopOnWallClock` callback.
        """
        from distributed_reptile.callbacks import StopOnWallClock

        kwargs = self.learn.model_dump()
        budget = kwargs.pop("time_budget_s")
        if budget is not None:
            kwargs["callback"] = [StopOnWallClock(budget, verbose=1)]
        return kwargs

    def to_yaml(self) -> str:
        """The config as YAML (import paths stay strings), loadable again with :func:`load_config`."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _resolve_class_keys(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    policy = out.get("policy")
    if isinstance(policy, str) and ":" in policy:
        out["policy"] = resolve_import_path(policy)
    for key in CLASS_KEYS:
        if isinstance(out.get(key), str):
            out[key] = resolve_import_path(out[key])
    if isinstance(out.get("policy_kwargs"), dict):
        policy_kwargs = dict(out["policy_kwargs"])
        for key in CLASS_KEYS:
            if isinstance(policy_kwargs.get(key), str):
                policy_kwargs[key] = resolve_import_path(policy_kwargs[key])
        out["policy_kwargs"] = policy_kwargs
    return out


# ---------------------------------------------------------------------- loading
def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` as (``["a", "b"]``, value parsed as a YAML scalar or flow collection).

    :param item: one ``--set`` argument.
    :raises ConfigError: when it is not ``key=value``.
    """
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError([f"--set {item!r}: write it as key=value, e.g. --set learn.save_freq=5"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError([f"--set {item!r}: the value is not valid YAML ({exc})"]) from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``key.sub=value`` override set (missing levels are created).

    :param data: the config mapping.
    :param overrides: ``--set`` arguments.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    [
                        f"--set {item!r}: {where} is {child!r}, not a mapping: set {where}=... instead"
                    ]
                )
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``--set`` overrides and validate it completely.

    :param path: the YAML file.
    :param overrides: ``key.sub=value`` items (values parsed as YAML).
    :raises ConfigError: for a missing or unreadable file and for every invalid field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [f"cannot read the config file ({exc}): check the path"], str(path)
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"the file must hold a mapping of keys to values, got {type(data).__name__}"],
            str(path),
        )
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as err:
        raise ConfigError(err.problems, str(path)) from None
    return RunConfig.from_dict(data, source=str(path))


__all__ = [
    "ConfigError",
    "ImportPath",
    "LearnConfig",
    "LinearMetaLR",
    "RunConfig",
    "TaskGeneratorParams",
    "apply_overrides",
    "import_path_of",
    "load_config",
    "parse_override",
    "resolve_import_path",
]
