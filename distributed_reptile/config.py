"""Run configuration: a YAML file validated into :class:`RunConfig` before anything starts.

A config names everything :class:`~distributed_reptile.ReptileMetaRL` takes and the options of its
``learn``. User code (task callables, SB3 algorithms, generator classes, activation functions) is
referenced by import path, ``"package.module:name"``. :func:`load_config` reads the file, applies
``--set key.sub=value`` overrides and validates the whole config at once, so that a wrong key, a
wrong type or an import path that does not resolve is reported, with the field and the fix, before
Ray or any learner starts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
)

if TYPE_CHECKING:
    from distributed_reptile.algorithms.base import BaseMetaAlgorithm

#: Keys of ``rl_algo_kwargs`` (and of its ``policy_kwargs``) whose string values are import paths.
CLASS_KEYS = (
    "activation_fn",
    "features_extractor_class",
    "optimizer_class",
    "replay_buffer_class",
    "rollout_buffer_class",
)


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


# ---------------------------------------------------------------------- import paths
def resolve_import_path(path: str) -> Any:
    """The object that ``"package.module:name"`` (``name`` may be dotted) refers to.

    :param path: the import path.
    :raises ValueError: with the cause and the fix when it does not resolve.
    """
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(
            f"{path!r} is not an import path: write it as 'package.module:name' "
            "(e.g. 'stable_baselines3:PPO')"
        )
    module_name, attr = path.split(":")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path: write it as 'package.module:name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {path!r} ({exc}): check the module path") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"cannot import {path!r} (module {module_name!r} has no attribute {attr!r}): "
                "check the name after ':'"
            ) from None
    return obj


def import_path_of(obj: Any) -> str:
    """The ``"module:qualname"`` import path of a class or function."""
    return f"{obj.__module__}:{obj.__qualname__}"


def _check_import_path(path: str) -> str:
    resolve_import_path(path)
    return path


#: A string that must resolve with :func:`resolve_import_path`.
ImportPath = Annotated[str, AfterValidator(_check_import_path)]


# ---------------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LinearMetaLR(_Strict):
    """``meta_lr: {linear: [start, end]}``: linear from ``start`` (step 0) to ``end`` (last step)."""

    linear: tuple[float, float]


class TaskGeneratorParams(_Strict):
    """Arguments of :class:`~distributed_reptile.TaskGenerator` (``tasks_generator_params``).

    ``task_callable`` and ``revisit_weight_fn`` are import paths; ``tasks`` is the import path of a
    function without arguments that returns the static list of ``(env, info)`` pairs.
    """

    task_callable: ImportPath | None = None
    task_callable_params: dict[str, Any] = Field(default_factory=dict)
    tasks: ImportPath | None = None
    revisit_ratio: float = Field(0.15, ge=0.0, le=1.0)
    revisit_start: NonNegativeInt = 1
    sampling_method: Literal["cyclic", "random", "weighted"] = "random"
    sampling_weights: list[float] | None = None
    generator_seed: int | None = None
    revisit_weight_fn: ImportPath | None = None
    history: bool = True


class LearnConfig(_Strict):
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


class TuneSection(_Strict):
    """Options of ``distributed-reptile tune`` (the search space is the top-level ``search_space``)."""

    num_samples: PositiveInt = 4
    metric: str = "ep_return_mean"
    mode: Literal["max", "min"] = "max"
    grace_period: PositiveInt = 1
    max_concurrent_trials: PositiveInt | None = None
    checkpoint_freq: NonNegativeInt = 1
    max_failures: NonNegativeInt = 2
    seed: int | None = None


class RunConfig(_Strict):
    """One meta-training run: the trainer's arguments, ``learn``'s options and the run's name.

    Build it with :meth:`from_dict` or :func:`load_config` (they run the checks that need the
    resolved classes too); :meth:`trainer_kwargs` and :meth:`learn_kwargs` give the arguments of
    ``ReptileMetaRL(...)`` and ``learn(...)``.
    """

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    algorithm: ImportPath = "distributed_reptile:ReptileMetaRL"
    tasks_generator_cls: ImportPath = "distributed_reptile:TaskGenerator"
    tasks_generator_params: dict[str, Any] = Field(default_factory=dict)
    rl_algorithm: ImportPath
    rl_algo_kwargs: dict[str, Any] = Field(default_factory=lambda: {"policy": "MlpPolicy"})
    inner_steps: PositiveInt
    outer_steps: PositiveInt
    meta_lr: float | LinearMetaLR
    use_meta_optimizer: bool = False
    meta_optimizer_cls: ImportPath = "torch.optim:Adam"
    meta_optimizer_kwargs: dict[str, Any] = Field(default_factory=dict)
    task_batch_size: PositiveInt = 1
    inner_loop_params: dict[str, Any] = Field(default_factory=dict)
    ignored_layers: list[str] | None = None
    ignore_optimizer_params: bool = False
    verbose: int = Field(1, ge=0, le=2)
    device: str = "auto"
    tensorboard_logs: str | None = None
    num_workers: PositiveInt = 1
    backend: Literal["ray", "serial"] = "ray"
    seed: int | None = None
    ray_address: str | None = None
    worker_resources: dict[str, Any] = Field(default_factory=dict)
    reuse_models: bool = True
    on_nonfinite: Literal["raise", "skip"] = "raise"
    max_worker_restarts: int = Field(3, ge=-1)
    max_task_retries: int = Field(3, ge=-1)
    task_retries: NonNegativeInt = 2
    task_timeout_s: PositiveFloat | None = None
    tasks_per_call: PositiveInt | Literal["auto"] = 1
    connect_timeout_s: PositiveFloat | None = 30.0
    ray_init_kwargs: dict[str, Any] = Field(default_factory=dict)
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
            problems += _pydantic_problems(err, cls)
        problems += _semantic_problems(dict(data))
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
        return {
            "tasks_generator_cls": gen,
            "tasks_generator_params": gen_params,
            "rl_algorithm": resolve_import_path(self.rl_algorithm),
            "rl_algo_kwargs": _resolve_class_keys(self.rl_algo_kwargs),
            "inner_steps": self.inner_steps,
            "outer_steps": self.outer_steps,
            "meta_lr": meta_lr,
            "use_meta_optimizer": self.use_meta_optimizer,
            "meta_optimizer_cls": resolve_import_path(self.meta_optimizer_cls),
            "meta_optimizer_kwargs": dict(self.meta_optimizer_kwargs),
            "task_batch_size": self.task_batch_size,
            "inner_loop_params": dict(self.inner_loop_params),
            "ignored_layers": list(self.ignored_layers)
            if self.ignored_layers is not None
            else None,
            "ignore_optimizer_params": self.ignore_optimizer_params,
            "verbose": self.verbose,
            "device": self.device,
            "tensorboard_logs": self.tensorboard_logs,
            "num_workers": self.num_workers,
            "backend": self.backend,
            "seed": self.seed,
            "ray_address": self.ray_address,
            "worker_resources": dict(self.worker_resources),
            "reuse_models": self.reuse_models,
            "on_nonfinite": self.on_nonfinite,
            "max_worker_restarts": self.max_worker_restarts,
            "max_task_retries": self.max_task_retries,
            "task_retries": self.task_retries,
            "task_timeout_s": self.task_timeout_s,
            "tasks_per_call": self.tasks_per_call,
            "connect_timeout_s": self.connect_timeout_s,
            "ray_init_kwargs": dict(self.ray_init_kwargs),
            "inner_learner_cls": resolve_import_path(self.inner_learner_cls),
        }

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


# ---------------------------------------------------------------------- checks
def _resolved(data: Mapping[str, Any], key: str) -> Any:
    """The object behind ``data[key]`` (or the field's default), ``None`` when it does not resolve
    (the schema check already reports that)."""
    path = data.get(key, RunConfig.model_fields[key].default)
    try:
        return resolve_import_path(path)
    except ValueError:
        return None


def _semantic_problems(data: Mapping[str, Any]) -> list[str]:
    """Checks that need the resolved classes: arguments against signatures, kinds of classes."""
    from distributed_reptile.algorithms.base import SB3_METHODS, BaseMetaAlgorithm, is_sb3_like
    from distributed_reptile.inner.learner import InnerLearner
    from distributed_reptile.tasks.generator import TaskGenerator

    problems: list[str] = []
    algo = _resolved(data, "rl_algorithm") if "rl_algorithm" in data else None
    if algo is not None:
        if not is_sb3_like(algo):
            problems.append(
                f"rl_algorithm: {data['rl_algorithm']!r} is not a Stable-Baselines3 algorithm class: "
                "use e.g. 'stable_baselines3:PPO' or 'sb3_contrib:TRPO' (or a class with SB3's "
                f"{', '.join(SB3_METHODS)} methods)"
            )
        elif isinstance(data.get("rl_algo_kwargs", {}), dict):
            problems += _rl_algo_kwargs_problems(algo, data.get("rl_algo_kwargs", {}))
    kinds: list[tuple[str, type | None, str]] = [
        (
            "algorithm",
            BaseMetaAlgorithm,
            "use 'distributed_reptile:ReptileMetaRL' or your own BaseMetaAlgorithm subclass",
        ),
        (
            "inner_learner_cls",
            InnerLearner,
            "use 'distributed_reptile:InnerLearner' or your own InnerLearner subclass",
        ),
        ("meta_optimizer_cls", None, "use a torch optimizer class such as 'torch.optim:Adam'"),
        (
            "tasks_generator_cls",
            None,
            "use 'distributed_reptile:TaskGenerator' or a class with get_task() and reset_history()",
        ),
    ]
    for key, base, fix in kinds:
        obj = _resolved(data, key)
        if obj is None:
            continue
        if not inspect.isclass(obj) or (base is not None and not issubclass(obj, base)):
            what = f"a {base.__name__} subclass" if base is not None else "a class"
            problems.append(f"{key}: {data.get(key)!r} is not {what}: {fix}")
    gen = _resolved(data, "tasks_generator_cls")
    params = data.get("tasks_generator_params", {})
    if inspect.isclass(gen) and isinstance(params, dict):
        if issubclass(gen, TaskGenerator):
            problems += _task_generator_problems(params)
        else:
            problems += _signature_problems(
                gen, params, "tasks_generator_params", f"{data.get('tasks_generator_cls')} takes"
            )
    return problems


def _task_generator_problems(params: dict[str, Any]) -> list[str]:
    try:
        parsed = TaskGeneratorParams.model_validate(params)
    except ValidationError as err:
        return _pydantic_problems(err, TaskGeneratorParams, prefix="tasks_generator_params")
    problems: list[str] = []
    if (parsed.tasks is None) == (parsed.task_callable is None):
        problems.append(
            "tasks_generator_params: give exactly one of task_callable (import path of a function "
            "random_seed -> (env, info), e.g. 'distributed_reptile.tasks.families:make_cartpole_task') "
            "or tasks"
        )
    if parsed.task_callable is not None:
        func = resolve_import_path(parsed.task_callable)
        if not callable(func):
            problems.append(
                f"tasks_generator_params.task_callable: {parsed.task_callable!r} is not callable: "
                "name a function random_seed -> (env, info)"
            )
        else:
            problems += _signature_problems(
                func,
                parsed.task_callable_params,
                "tasks_generator_params.task_callable_params",
                f"{parsed.task_callable} takes",
            )
    for key in ("tasks", "revisit_weight_fn"):
        value = getattr(parsed, key)
        if value is not None and not callable(resolve_import_path(value)):
            problems.append(
                f"tasks_generator_params.{key}: {value!r} is not callable: name a function"
            )
    return problems


def _rl_algo_kwargs_problems(algo: type, kwargs: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if "env" in kwargs:
        problems.append(
            "rl_algo_kwargs.env: the trainer gives each task its own env: remove this key"
        )
    rest = {k: v for k, v in kwargs.items() if k != "env"}
    problems += _signature_problems(algo, rest, "rl_algo_kwargs", f"{algo.__name__} takes")
    policy = kwargs.get("policy", "MlpPolicy")
    if isinstance(policy, str) and ":" in policy:
        problems += _import_problem("rl_algo_kwargs.policy", policy)
    elif (
        isinstance(policy, str)
        and hasattr(algo, "policy_aliases")  # an SB3-like learner without aliases checks its own
        and policy not in algo.policy_aliases
    ):
        known = ", ".join(sorted(getattr(algo, "policy_aliases", {})))
        problems.append(
            f"rl_algo_kwargs.policy: {algo.__name__} has no policy {policy!r}: use one of {known} "
            "or the import path of a policy class"
        )
    for key in CLASS_KEYS:
        if isinstance(kwargs.get(key), str):
            problems += _import_problem(f"rl_algo_kwargs.{key}", kwargs[key])
    policy_kwargs = kwargs.get("policy_kwargs")
    if policy_kwargs is not None and not isinstance(policy_kwargs, dict):
        problems.append("rl_algo_kwargs.policy_kwargs: must be a mapping of the policy's arguments")
    elif policy_kwargs:
        for key in CLASS_KEYS:
            if isinstance(policy_kwargs.get(key), str):
                problems += _import_problem(
                    f"rl_algo_kwargs.policy_kwargs.{key}", policy_kwargs[key]
                )
    return problems


def _import_problem(field: str, path: str) -> list[str]:
    try:
        resolve_import_path(path)
    except ValueError as exc:
        return [f"{field}: {exc}"]
    return []


def _signature_problems(
    func: Callable[..., Any], kwargs: Mapping[str, Any], field: str, what: str
) -> list[str]:
    """Keys of ``kwargs`` that ``func`` does not accept by name (nothing if it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    names = [n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY]
    names = [n for n in names if n != "self"]
    problems = []
    for key in kwargs:
        if key not in names:
            problems.append(
                f"{field}.{key}: unknown argument ({what} no argument {key!r}){_did_you_mean(key, names)}"
            )
    return problems


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f": did you mean {close[0]!r}?" if close else ": remove it or check its spelling"


def _pydantic_problems(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    problems = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        # a union (meta_lr: float | {linear: ...}) reports one error per member: name the field once
        if loc and loc[0] == "meta_lr":
            msg = "meta_lr: must be a number or {linear: [start, end]}"
            if msg not in problems:
                problems.append(msg)
            continue
        field = ".".join(
            ([prefix] if prefix else []) + [p for p in loc if not p.startswith("function-")]
        )
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = list(parent.model_fields) if parent is not None else []
            problems.append(f"{field}: unknown key{_did_you_mean(loc[-1], known)}")
        elif e["type"] == "missing":
            problems.append(f"{field}: missing: this key is required")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = "" if e["type"] == "value_error" else f" (got {e.get('input')!r})"
            problems.append(f"{field}: {msg}{got}")
    return problems


def _model_at(model: type[BaseModel], loc: Sequence[str]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            return None
        current = field.annotation
    return current if inspect.isclass(current) and issubclass(current, BaseModel) else None


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
    import copy

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
