"""Ray Tune sweeps over meta-training runs.

Each trial runs its own trainer (the config's ``algorithm``, :class:`~distributed_reptile.ReptileMetaRL`
by default) with ``num_workers`` inner-loop
actors inside the trial's placement group (one bundle for the trial's driver, one per worker), so
concurrent trials never take each other's CPUs. Every outer step reports the step record to Tune;
checkpoints go through Tune, so a failed trial resumes exactly from its last checkpoint.

Search spaces use dotted keys into the trainer's arguments, e.g.
``{"meta_lr": "loguniform(0.05, 1.0)", "rl_algo_kwargs.learning_rate": "choice([1e-3, 3e-4])"}``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from distributed_reptile.callbacks import MetaCallback
from distributed_reptile.execution.resources import (
    InsufficientResourcesError,
    check_pool_fits,
    worker_bundle,
)
from distributed_reptile.imports import import_path_of, resolve_import_path
from distributed_reptile.records import SCALAR_KEYS, StepRecord
from distributed_reptile.settings import ExecutionSettings, tunable_settings

#: The trainer class trials build unless told otherwise.
DEFAULT_ALGORITHM = "distributed_reptile:ReptileMetaRL"

_DOMAIN_RE = re.compile(
    r"^\s*(uniform|loguniform|quniform|randint|lograndint|choice|grid_search)\((.*)\)\s*$"
)
#: Step-record keys reported to Tune (the scalar ones).
REPORTED_KEYS = SCALAR_KEYS


def parse_domain(value: Any) -> Any:
    """A Tune search domain from ``"loguniform(0.05, 1.0)"``-style text; other values pass through."""
    from ray import tune

    if not isinstance(value, str):
        return value
    match = _DOMAIN_RE.match(value)
    if not match:
        return value
    name, args_text = match.groups()
    try:
        args = ast.literal_eval(f"({args_text},)")
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"Cannot read the arguments of search domain {value!r}: {exc}") from exc
    factories: dict[str, Callable[..., Any]] = {
        "uniform": tune.uniform,
        "loguniform": tune.loguniform,
        "quniform": tune.quniform,
        "randint": tune.randint,
        "lograndint": tune.lograndint,
        "choice": tune.choice,
        "grid_search": tune.grid_search,
    }
    return factories[name](*args)


def parse_search_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """Turn every text domain of ``space`` into a Tune domain (keys stay dotted paths)."""
    return {key: parse_domain(value) for key, value in space.items()}


def apply_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each dotted key of ``overrides`` set (``a.b`` sets ``base["a"]["b"]``)."""
    out = copy.deepcopy(dict(base))
    for dotted, value in overrides.items():
        node: Any = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {} if node.get(part) is None else dict(node[part])
            node = node[part]
        node[parts[-1]] = value
    return out


class _TuneReporter(MetaCallback):
    """Reports each step record to Tune, with a checkpoint every ``checkpoint_freq`` outer steps."""

    def __init__(self, checkpoint_freq: int) -> None:
        super().__init__()
        self.checkpoint_freq = checkpoint_freq

    def _on_outer_step_end(self, record: StepRecord) -> bool:
        from ray import tune

        assert self.trainer is not None
        metrics = {k: record[k] for k in REPORTED_KEYS if k in record}
        metrics = {
            k: (v if not (isinstance(v, float) and math.isnan(v)) else None)
            for k, v in metrics.items()
        }
        is_last = self.trainer.num_outer_steps >= self.trainer.outer_steps
        if self.checkpoint_freq > 0 and (
            self.trainer.num_outer_steps % self.checkpoint_freq == 0 or is_last
        ):
            with tempfile.TemporaryDirectory() as tmp:
                self.trainer.save(Path(tmp) / "trainer")
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)
        return True


def meta_trainable(
    config: dict[str, Any],
    base_kwargs: dict[str, Any],
    learn_kwargs: dict[str, Any],
    checkpoint_freq: int = 1,
    algorithm: str = DEFAULT_ALGORITHM,
) -> None:
    """Tune function trainable: one meta-training run of the trainer class at ``algorithm``
    (an import path) with ``config``'s dotted overrides applied."""
    from ray import tune

    trainer_cls = resolve_import_path(algorithm)
    kwargs = apply_overrides(base_kwargs, config)
    kwargs["backend"] = "ray"
    # The trial's actors live in its placement group: a scheduling strategy of their own would
    # take them out of it.
    kwargs["worker_resources"] = {
        k: v
        for k, v in dict(kwargs.get("worker_resources") or {}).items()
        if k != "scheduling_strategy"
    }
    checkpoint = tune.get_checkpoint()
    learn = dict(learn_kwargs)
    learn["callback"] = [*list(learn.get("callback") or []), _TuneReporter(checkpoint_freq)]
    if checkpoint is None:
        meta = trainer_cls(**kwargs)
    else:
        with checkpoint.as_directory() as folder:
            meta = trainer_cls.load(Path(folder) / "trainer", **kwargs)
        learn["reset_num_timesteps"] = False
    with meta:
        meta.learn(**learn)


#: CPUs of each trial's own driver (its bundle in the trial's placement group).
DRIVER_CPUS = 0.5


def trial_resources(
    num_workers: int,
    worker_resources: Mapping[str, Any] | None = None,
    driver_cpus: float = DRIVER_CPUS,
) -> Any:
    """The placement group of one trial: a bundle for its driver and one per inner-loop worker."""
    from ray.tune import PlacementGroupFactory

    worker = worker_bundle(worker_resources)
    return PlacementGroupFactory(
        [{"CPU": driver_cpus}] + [dict(worker) for _ in range(num_workers)]
    )


def check_trial_fits(num_workers: int, worker_resources: Mapping[str, Any] | None) -> None:
    """Refuse a sweep whose one trial needs more than the Ray cluster has in all (Tune would
    otherwise wait for it forever, printing only its own resource warnings)."""
    import ray

    check_pool_fits(num_workers, worker_resources, ray.cluster_resources(), DRIVER_CPUS)


def run_sweep(
    trainer_kwargs: dict[str, Any],
    search_space: Mapping[str, Any],
    storage_path: str,
    name: str = "meta_sweep",
    num_samples: int = 4,
    metric: str = "ep_return_mean",
    mode: str = "max",
    learn_kwargs: dict[str, Any] | None = None,
    grace_period: int = 1,
    max_concurrent_trials: int | None = None,
    checkpoint_freq: int = 1,
    max_failures: int = 2,
    seed: int | None = None,
    algorithm: str | type = DEFAULT_ALGORITHM,
) -> Any:
    """Run an ASHA sweep; return Tune's ``ResultGrid``.

    :param trainer_kwargs: trainer arguments shared by all trials (``num_workers`` and
        ``worker_resources`` size each trial's placement group).
    :param search_space: dotted keys into ``trainer_kwargs`` mapped to Tune domains or text domains.
    :param storage_path: folder of Tune's results and checkpoints (nothing is written elsewhere).
    :param name: experiment name (a folder in ``storage_path``).
    :param num_samples: trials to sample.
    :param metric: step-record key that ASHA ranks trials on.
    :param mode: ``"max"`` or ``"min"``.
    :param learn_kwargs: extra ``learn`` arguments.
    :param grace_period: outer steps before ASHA may stop a trial.
    :param max_concurrent_trials: cap on trials running at once.
    :param checkpoint_freq: outer steps between Tune checkpoints.
    :param max_failures: retries of a failed trial, each resumed from its last checkpoint.
    :param seed: seed of the search algorithm's sampling.
    :param algorithm: the trainer class of the trials, or its import path.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from distributed_reptile.execution import open_backend

    if metric not in REPORTED_KEYS:
        raise ValueError(
            f"metric must be one of the reported step-record keys {REPORTED_KEYS}, got {metric!r}."
        )
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
    settings = tunable_settings()
    unknown = [k for k in search_space if k.split(".")[0] not in settings]
    if unknown:
        raise ValueError(
            f"search_space keys {unknown} are not trainer settings (dotted paths into them); "
            f"the settings are {settings}."
        )
    algorithm_path = algorithm if isinstance(algorithm, str) else import_path_of(algorithm)
    resolve_import_path(algorithm_path)  # refuse a class that cannot be imported, before Ray
    ray_backend = open_backend(
        "ray",
        ExecutionSettings(
            ray_address=trainer_kwargs.get("ray_address"),
            ray_init_kwargs=dict(trainer_kwargs.get("ray_init_kwargs") or {}),
            connect_timeout_s=trainer_kwargs.get("connect_timeout_s", 30.0),
        ),
    )
    try:
        num_workers = int(trainer_kwargs.get("num_workers", 1))
        try:
            check_trial_fits(num_workers, trainer_kwargs.get("worker_resources"))
        except InsufficientResourcesError as err:
            if getattr(ray_backend, "mode", None) == "started":
                raise
            warnings.warn(f"{err} Waiting for the cluster to grow.", RuntimeWarning, stacklevel=2)
        outer_steps = int(trainer_kwargs["outer_steps"])
        trainable = tune.with_parameters(
            meta_trainable,
            base_kwargs=trainer_kwargs,
            learn_kwargs=dict(learn_kwargs or {}),
            checkpoint_freq=checkpoint_freq,
            algorithm=algorithm_path,
        )
        trainable = tune.with_resources(
            trainable,
            trial_resources(
                int(trainer_kwargs.get("num_workers", 1)), trainer_kwargs.get("worker_resources")
            ),
        )
        scheduler = ASHAScheduler(
            time_attr="outer_step", max_t=outer_steps, grace_period=max(1, grace_period)
        )
        param_space = parse_search_space(search_space)
        if seed is not None:
            from ray.tune.search import BasicVariantGenerator

            search_alg: Any = BasicVariantGenerator(random_state=seed)
        else:
            search_alg = None
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=max_concurrent_trials,
                search_alg=search_alg,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(Path(storage_path).resolve()),
                failure_config=tune.FailureConfig(max_failures=max_failures),
                verbose=0,
            ),
        )
        return tuner.fit()
    finally:
        ray_backend.close()


def results_table(results: Any, metric: str, mode: str, search_keys: list[str]) -> str:
    """A plain-text table of the trials: hyperparameters, last and best metric, steps, status."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        values = history[metric].dropna() if history is not None and metric in history else []
        best = (max(values) if mode == "max" else min(values)) if len(values) else float("nan")
        config = result.config or {}
        rows.append(
            [str(result.path).rsplit("/", 1)[-1][:28]]
            + [_fmt(config.get(k)) for k in search_keys]
            + [
                _fmt(result.metrics.get(metric)),
                _fmt(best),
                str(result.metrics.get("outer_step", "")),
                "ERROR" if result.error else ("OK" if len(values) else "NO RESULT"),
            ]
        )
    header = ["trial", *search_keys, f"last {metric}", f"best {metric}", "outer steps", "status"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _reported(result: Any, metric: str) -> bool:
    """Whether a trial reported ``metric`` at least once."""
    history = result.metrics_dataframe
    return history is not None and metric in history and bool(history[metric].notna().any())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def best_checkpoint(results: Any, metric: str, mode: str) -> Path:
    """The trainer checkpoint folder of the best trial (load it with ``distributed_reptile.load_trainer``)."""
    best = results.get_best_result(metric=metric, mode=mode, scope="all")
    if best.checkpoint is None:
        raise RuntimeError("The best trial has no checkpoint; set checkpoint_freq > 0.")
    return Path(best.checkpoint.path) / "trainer"


def build_parser() -> argparse.ArgumentParser:
    """The ``distributed-reptile tune`` command line."""
    from distributed_reptile.cli_help import add_debug_option, add_output_option, new_parser

    parser = new_parser(
        "distributed-reptile tune",
        "Sweep a config's search_space with Ray Tune (ASHA on the tune.metric step-record key). "
        "Writes Tune's results, results.txt and best.json into --output.",
        'distributed-reptile tune configs/smoke.yaml --set num_workers=1 --set "search_space.meta_lr=loguniform(0.05, 1.0)" --num-samples 2',
    )
    parser.add_argument(
        "config", help="YAML config with a search_space (and optionally a tune section)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, nested with dots (search_space.meta_lr=loguniform(0.05, 1.0)); "
        "the value is read as YAML; repeat for several",
    )
    add_output_option(
        parser,
        "results folder, new or empty (default: runs/tune_<name>_<timestamp>)",
        old_names=("--out", "--out-dir"),
    )
    parser.add_argument(
        "--num-samples", type=int, default=None, help="trials to sample (default: tune.num_samples)"
    )
    add_debug_option(parser)
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    """``distributed-reptile tune CONFIG.yaml``: an ASHA sweep over the config's ``search_space``.

    Writes Tune's results and checkpoints to the output folder, prints the results table, and
    saves it with the best trial's checkpoint path in ``best.json``.
    """
    import json
    import sys
    import time

    from distributed_reptile.cli_help import new_folder, user_error
    from distributed_reptile.config import ConfigError, load_config

    args = build_parser().parse_args(argv)
    try:
        config = load_config(Path(args.config).expanduser(), args.overrides)
    except ConfigError as err:
        print(f"distributed-reptile tune: {err}", file=sys.stderr)
        return 2
    if not config.search_space:
        print(
            "distributed-reptile tune: the config has no search_space; add e.g.\n"
            "search_space:\n  meta_lr: loguniform(0.05, 1.0)",
            file=sys.stderr,
        )
        return 2
    if config.num_workers == "auto":
        return user_error(
            "tune",
            "num_workers: auto is for a single run; a sweep needs a number per trial "
            "(--set num_workers=1 runs trials side by side).",
        )
    if args.output:
        out = Path(args.output).expanduser().absolute()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            return user_error(
                "tune",
                f"--output {args.output}: {out} exists and is not an empty folder; give a new one.",
            )
    else:
        out = new_folder("runs", f"tune_{config.name}").absolute()
    out.mkdir(parents=True, exist_ok=True)
    learn = config.learn_kwargs()
    for key in ("save_freq", "save_path", "save_final", "keep_last", "progress_bar"):
        learn.pop(key, None)  # checkpoints go through Tune
    opts = config.tune
    t0 = time.perf_counter()
    try:
        results = run_sweep(
            config.trainer_kwargs(),
            config.search_space,
            storage_path=str(out),
            name=config.name,
            num_samples=args.num_samples or opts.num_samples,
            metric=opts.metric,
            mode=opts.mode,
            learn_kwargs={**learn, "save_final": False},
            grace_period=opts.grace_period,
            max_concurrent_trials=opts.max_concurrent_trials,
            checkpoint_freq=opts.checkpoint_freq,
            max_failures=opts.max_failures,
            seed=opts.seed,
            algorithm=config.algorithm,
        )
    except InsufficientResourcesError as err:
        print(f"distributed-reptile tune: {err}", file=sys.stderr)
        if not any(out.iterdir()):
            out.rmdir()
        return 2
    wall = time.perf_counter() - t0
    table = results_table(results, opts.metric, opts.mode, list(config.search_space))
    print(table)
    (out / "results.txt").write_text(table + "\n", encoding="utf-8")
    best: dict[str, Any] = {"wall_seconds": round(wall, 1), "errors": len(results.errors)}
    if not any(_reported(r, opts.metric) for r in results):
        (out / "best.json").write_text(json.dumps(best, indent=2), encoding="utf-8")
        print(
            f"distributed-reptile tune: no trial reported {opts.metric} (interrupted, or every "
            f"trial failed before its first outer step); nothing to choose from. Results in {out}.",
            file=sys.stderr,
        )
        return 1
    if len(results.errors) < len(results):
        best["checkpoint"] = str(best_checkpoint(results, opts.metric, opts.mode))
        best["config"] = results.get_best_result(
            metric=opts.metric, mode=opts.mode, scope="all"
        ).config
    (out / "best.json").write_text(json.dumps(best, indent=2, default=str), encoding="utf-8")
    print(
        f"best trial checkpoint: {best.get('checkpoint')}  (sweep took {wall:.1f}s; results in {out})"
    )
    return 0 if not results.errors else 1
