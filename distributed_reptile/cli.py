"""Command line: ``distributed-reptile demo | train | evaluate | bench | tune``.

``train CONFIG.yaml`` runs one meta-training run from a YAML config (see
:mod:`distributed_reptile.config`) and writes everything it produces into one run folder: the
resolved config, TensorBoard logs, checkpoints, the per-step records and a summary. ``evaluate``,
``bench`` and ``tune`` hand their arguments to the ``cli_main(argv)`` of the module of that name.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from distributed_reptile.checkpoint import latest_checkpoint
from distributed_reptile.jsonutil import dumps, to_jsonable

#: Subcommands served by another module's ``cli_main(argv) -> int``.
DISPATCHED: dict[str, tuple[str, str]] = {
    "evaluate": ("distributed_reptile.evaluation", "evaluate meta policies on held-out tasks"),
    "bench": ("distributed_reptile.bench", "throughput and scaling benchmarks"),
    "tune": ("distributed_reptile.tune", "hyperparameter search with Ray Tune"),
}

#: Exit status for bad input (a wrong config, an unavailable subcommand), as argparse uses.
EXIT_USAGE = 2


# ---------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    from stable_baselines3 import PPO

    from distributed_reptile import ReptileMetaRL, TaskGenerator
    from distributed_reptile.tasks.families import make_cartpole_task

    t0 = time.perf_counter()
    with ReptileMetaRL(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"task_callable": make_cartpole_task},
        rl_algorithm=PPO,
        rl_algo_kwargs={"policy": "MlpPolicy", "n_steps": 256, "batch_size": 64, "n_epochs": 4},
        inner_steps=args.inner_steps,
        outer_steps=args.outer_steps,
        task_batch_size=args.task_batch_size,
        meta_lr=0.5,
        num_workers=args.num_workers,
        backend=args.backend,
        seed=args.seed,
        ray_address=args.ray_address,
        verbose=1,
        tensorboard_logs=args.tensorboard_logs,
    ) as meta:
        meta.learn(progress_bar=not args.no_progress_bar, save_path=args.save_path)
        first, last = meta.step_records[0], meta.step_records[-1]
        summary = {
            "outer_steps": meta.num_outer_steps,
            "first_step_return": first["ep_return_mean"],
            "last_step_return": last["ep_return_mean"],
            "env_steps": sum(r["env_steps"] for r in meta.step_records),
            "tasks_per_node": _merge_counts(r["tasks_per_node"] for r in meta.step_records),
            "wall_seconds": round(time.perf_counter() - t0, 2),
        }
    print(json.dumps(summary, indent=2))
    return 0


def _merge_counts(dicts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + int(v)
    return out


# ---------------------------------------------------------------------- train
def default_output_dir(name: str, now: datetime | None = None) -> Path:
    """``runs/<name>_<YYYYmmdd_HHMMSS>``, relative to the working directory."""
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return Path("runs") / f"{name}_{stamp}"


def write_step_records(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, one line per outer step."""
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(dumps(record) + "\n")


def run_summary(
    records: Sequence[Mapping[str, Any]],
    wall_seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``summary.json`` holds, computed from the step records of the whole run.

    :param records: the trainer's ``step_records`` (a resumed run's include the earlier steps).
    :param wall_seconds: duration of this command.
    :param extra: more entries (paths, seed...).
    """
    tasks_per_node = _merge_counts(r.get("tasks_per_node", {}) for r in records)
    summary: dict[str, Any] = {
        "outer_steps": len(records),
        "env_steps": int(sum(int(r.get("env_steps", 0)) for r in records)),
        "wall_seconds": round(wall_seconds, 3),
        "tasks_per_node": tasks_per_node,
        "num_nodes": len(tasks_per_node),
        "final_mean_return": records[-1].get("ep_return_mean") if records else None,
    }
    summary.update(extra or {})
    return to_jsonable(summary)  # type: ignore[no-any-return]


def _resume_problem(folder: Path, outer_steps: int) -> str | None:
    """What is wrong with resuming ``folder`` up to ``outer_steps`` (``None``: nothing), checked
    before a run folder is made or Ray starts."""
    from distributed_reptile.checkpoint import (
        CheckpointError,
        latest_checkpoint,
        read_trainer_state,
    )

    if (folder / "checkpoints").is_dir():
        last = latest_checkpoint(folder / "checkpoints", "meta_ckpt")
        hint = f"its last checkpoint is {last}" if last else "it holds no complete checkpoint"
        return f"this is a run folder, not a checkpoint: {hint}."
    try:
        state = read_trainer_state(folder)
    except CheckpointError as err:
        last = latest_checkpoint(folder.parent, folder.name.rsplit("_outer_", 1)[0])
        intact = f" The last complete checkpoint beside it is {last}." if last else ""
        return f"{err}{intact}"
    done = int(state.get("num_outer_steps", 0))
    if done >= outer_steps:
        return (
            f"the checkpoint has already done {done} outer steps and the config asks for "
            f"{outer_steps}: nothing is left to run. Train further with --set outer_steps={done * 2}."
        )
    return None


def _train(args: argparse.Namespace) -> int:
    from distributed_reptile.config import ConfigError, load_config

    t0 = time.perf_counter()
    try:
        config = load_config(Path(args.config).expanduser(), args.overrides)
    except ConfigError as err:
        print(f"distributed-reptile train: {err}", file=sys.stderr)
        return EXIT_USAGE
    # '~' reaches us unexpanded from `ray job submit` (it quotes the entrypoint's arguments)
    resume = Path(args.resume).expanduser() if args.resume is not None else None
    if resume is not None and not resume.is_dir():
        print(
            f"distributed-reptile train: --resume {args.resume}: no such checkpoint folder "
            "(give a folder such as <run>/checkpoints/meta_ckpt_outer_10)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if resume is not None:
        problem = _resume_problem(resume, config.outer_steps)
        if problem:
            print(f"distributed-reptile train: --resume {args.resume}: {problem}", file=sys.stderr)
            return EXIT_USAGE

    out = Path(args.output).expanduser() if args.output else default_output_dir(config.name)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    kwargs = config.trainer_kwargs()
    kwargs["tensorboard_logs"] = config.tensorboard_logs or str(out / "tb")
    if args.ray_address is not None:
        kwargs["ray_address"] = args.ray_address
    learn_kwargs = config.learn_kwargs()
    if args.time_budget is not None:
        from distributed_reptile.callbacks import StopOnWallClock

        if not args.time_budget > 0:
            print(
                "distributed-reptile train: --time-budget must be a positive number of seconds",
                file=sys.stderr,
            )
            return EXIT_USAGE
        learn_kwargs["callback"] = [StopOnWallClock(args.time_budget, verbose=1)]
    save_path = learn_kwargs.get("save_path")
    learn_kwargs["save_path"] = (
        str(Path(save_path).expanduser()) if save_path else str(out / "checkpoints")
    )
    trainer_cls = config.trainer_class()
    print(f"distributed-reptile train: run folder {out}", flush=True)

    from distributed_reptile.algorithms.base import BaseMetaAlgorithm
    from distributed_reptile.execution.resources import InsufficientResourcesError

    try:
        if resume is not None:
            # the class the checkpoint records; a config that names `algorithm` must agree with it
            named = "algorithm" in config.model_fields_set
            trainer = (trainer_cls if named else BaseMetaAlgorithm).load(resume, **kwargs)
        else:
            trainer = trainer_cls(**kwargs)
    except InsufficientResourcesError as err:
        print(f"distributed-reptile train: {err}", file=sys.stderr)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing ran: leave no empty run folder
        return EXIT_USAGE
    try:
        from distributed_reptile.imports import import_path_of

        resolved = config.model_copy(
            update={"seed": trainer.seed, "algorithm": import_path_of(type(trainer))}
        )
        (out / "config.yaml").write_text(resolved.to_yaml(), encoding="utf-8")
        try:
            trainer.learn(reset_num_timesteps=resume is None, **learn_kwargs)
        finally:
            # written even when the run fails part-way: the steps done so far
            write_step_records(out / "step_records.jsonl", trainer.step_records)
            last = latest_checkpoint(learn_kwargs["save_path"], learn_kwargs["save_prefix"])
            summary = run_summary(
                trainer.step_records,
                time.perf_counter() - t0,
                {
                    "seed": trainer.seed,
                    "completed": trainer.num_outer_steps >= trainer.outer_steps,
                    "target_outer_steps": trainer.outer_steps,
                    "resumed_from": str(resume.resolve()) if resume is not None else None,
                    "run_dir": str(out),
                    "last_checkpoint": str(last) if last is not None else None,
                },
            )
            (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    finally:
        trainer.close()
    print(json.dumps(summary, indent=2))
    return 0


# ---------------------------------------------------------------------- dispatch
def run_module_cli(module_name: str, argv: Sequence[str], command: str | None = None) -> int:
    """Import ``module_name`` and return its ``cli_main(list(argv))``.

    :param module_name: the module that implements the subcommand.
    :param argv: the arguments after the subcommand.
    :param command: the subcommand's name, for messages.
    :return: the module's exit status, or 2 (with a message on stderr) when the module or its
        ``cli_main`` cannot be imported.
    """
    command = command or module_name
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(
            f"distributed-reptile {command}: not available: cannot import {module_name} ({exc}). "
            "Install the package with its extras (pip install -e '.[test]') or update to a version "
            "that ships this command.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    cli_main = getattr(module, "cli_main", None)
    if not callable(cli_main):
        print(
            f"distributed-reptile {command}: not available: {module_name} has no cli_main(argv).",
            file=sys.stderr,
        )
        return EXIT_USAGE
    result = cli_main(list(argv))
    return int(result or 0)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distributed-reptile",
        description="Reptile meta-learning for Stable-Baselines3 with inner loops on Ray. "
        "`train CONFIG.yaml` runs a meta-training run from a YAML config into one run folder "
        "(config.yaml, tb/, checkpoints/, step_records.jsonl, summary.json); see configs/ and "
        "docs/cluster.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a short meta-training run of PPO on the CartPole family")
    demo.add_argument("--outer-steps", type=int, default=10)
    demo.add_argument("--task-batch-size", type=int, default=4)
    demo.add_argument("--inner-steps", type=int, default=1024)
    demo.add_argument("--num-workers", type=int, default=2)
    demo.add_argument("--backend", choices=["ray", "serial"], default="ray")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--ray-address", default=None, help="join this Ray cluster instead of starting one"
    )
    demo.add_argument(
        "--tensorboard-logs", default=None, help="folder for TensorBoard logs (default: none)"
    )
    demo.add_argument(
        "--save-path", default=None, help="folder for the final checkpoint (default: none)"
    )
    demo.add_argument("--no-progress-bar", action="store_true")
    demo.set_defaults(func=_demo)

    train = sub.add_parser(
        "train",
        help="meta-train from a YAML config",
        description="Meta-train from a YAML config. The run folder gets config.yaml (resolved), "
        "tb/ (TensorBoard), checkpoints/, step_records.jsonl and summary.json.",
    )
    train.add_argument("config", help="the run's YAML config (see configs/)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, nested with dots (learn.save_freq=5); the value is read as YAML",
    )
    train.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="continue from this checkpoint folder up to the config's outer_steps",
    )
    train.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="run folder (default: runs/<name>_<timestamp> in the working directory)",
    )
    train.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (default: the config's ray_address, else RAY_ADDRESS, else a "
        "local instance on 127.0.0.1)",
    )
    train.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop cleanly after the first outer step that ends this long after training started "
        "(the final checkpoint is still written); same as the config key learn.time_budget_s",
    )
    train.set_defaults(func=_train)

    for command, (module_name, text) in DISPATCHED.items():
        p = sub.add_parser(command, help=f"{text} ({module_name})", add_help=False)
        p.add_argument("argv", nargs=argparse.REMAINDER, help=f"arguments of {module_name}")
        p.set_defaults(func=None, module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # argparse's REMAINDER refuses a leading option (``evaluate --help``): route these first.
    if args_list and args_list[0] in DISPATCHED:
        command = args_list[0]
        return run_module_cli(DISPATCHED[command][0], args_list[1:], command)
    args = build_parser().parse_args(args_list)
    if args.func is None:
        return run_module_cli(args.module, args.argv, args.command)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
