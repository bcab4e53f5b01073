"""Checks of a run config: pydantic's errors as one line per field with its fix, and the checks
that need the resolved classes (arguments against signatures, kinds of classes)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
)

from distributed_reptile.imports import resolve_import_path
from distributed_reptile.settings import SB3_METHODS, is_sb3_like

#: Keys of ``rl_algo_kwargs`` (and of its ``policy_kwargs``) whose string values are import paths.
CLASS_KEYS = (
    "activation_fn",
    "features_extractor_class",
    "optimizer_class",
    "replay_buffer_class",
    "rollout_buffer_class",
)


def _check_import_path(path: str) -> str:
    resolve_import_path(path)
    return path


#: A string that must resolve with :func:`resolve_import_path`.
ImportPath = Annotated[str, AfterValidator(_check_import_path)]


class Strict(BaseModel):
    """A model that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid")


class TaskGeneratorParams(Strict):
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
    #: the most past tasks kept for revisits (``null``: all); as ``TaskGenerator``'s default
    history_size: PositiveInt | None = 10_000


# ---------------------------------------------------------------------- checks
def _resolved(data: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> Any:
    """The object behind ``data[key]`` (or the field's default), ``None`` when it does not resolve
    (the schema check already reports that)."""
    path = data.get(key, defaults.get(key))
    try:
        return resolve_import_path(path)
    except ValueError:
        return None


def semantic_problems(data: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Checks that need the resolved classes: arguments against signatures, kinds of classes."""
    from distributed_reptile.algorithms.base import BaseMetaAlgorithm
    from distributed_reptile.inner.learner import InnerLearner
    from distributed_reptile.tasks.generator import TaskGenerator

    problems: list[str] = []
    algo = _resolved(data, "rl_algorithm", defaults) if "rl_algorithm" in data else None
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
        obj = _resolved(data, key, defaults)
        if obj is None:
            continue
        if not inspect.isclass(obj) or (base is not None and not issubclass(obj, base)):
            what = f"a {base.__name__} subclass" if base is not None else "a class"
            problems.append(f"{key}: {data.get(key)!r} is not {what}: {fix}")
    gen = _resolved(data, "tasks_generator_cls", defaults)
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
        return pydantic_problems(err, TaskGeneratorParams, prefix="tasks_generator_params")
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
                f"{field}.{key}: unknown argument ({what} no argument {key!r}){did_you_mean(key, names)}"
            )
    return problems


def did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f": did you mean {close[0]!r}?" if close else ": remove it or check its spelling"


def pydantic_problems(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
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
            problems.append(f"{field}: unknown key{did_you_mean(loc[-1], known)}")
        elif e["type"] == "missing":
            problems.append(f"{field}: missing: this key is required")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            msg = (
                msg.removeprefix(f"{loc[-1]} ") if loc else msg
            )  # the settings' own checks name it
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
