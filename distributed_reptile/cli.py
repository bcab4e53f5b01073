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
import os
import shlex
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed_reptile.checkpoint import latest_checkpoint
from distributed_reptile.cli_help import (
    DEBUG_ENV,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    HelpFormatter,
    add_debug_option,
    add_output_option,
    debug_enabled,
    new_folder,
    new_parser,
    user_error,
    user_errors,
)
from distributed_reptile.errors import RunInterruptedError
from distributed_reptile.jsonutil import dumps, to_jsonable

if TYPE_CHECKING:
    from distributed_reptile.step_history import StepTotals

#: Subcommands served by another module's ``cli_main(argv) -> int``.
DISPATCHED: dict[str, tuple[str, str]] = {
    "evaluate": ("distributed_reptile.evaluation", "evaluate meta policies on held-out tasks"),
    "bench": ("distributed_reptile.bench", "throughput and scaling benchmarks"),
    "tune": ("distributed_reptile.tune", "hyperparameter search with Ray Tune"),
}


# ---------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    from stable_baselines3 import PPO

    from distributed_reptile import ReptileMetaRL, TaskGenerator
    from distributed_reptile.tasks.families import make_cartpole_task

    if args.output and Path(args.output).exists() and any(Path(args.output).iterdir()):
        return user_error(
            "demo",
            f"--output {args.output}: the folder exists and is not empty; give a new folder.",
        )
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
        meta.learn(progress_bar=not args.no_progress_bar, save_path=args.output)
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
    """``runs/<name>_<YYYYmmdd_HHMMSS>`` relative to the working directory, with ``_2``, ``_3``...
    appended when that folder exists already (two runs started in the same second)."""
    return new_folder("runs", name, now)


def write_step_records(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, one line per outer step (``train`` no longer calls this: the
    trainer appends each step's line as it goes, see ``learn(step_records_path=...)``)."""
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(dumps(record) + "\n")


def run_summary(
    totals: StepTotals | Sequence[Mapping[str, Any]],
    wall_seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``summary.json`` holds, from the running totals of the whole run.

    Outer steps, env steps, tasks and ``train_seconds`` (the outer steps' own seconds) count the
    whole run, a resumed run's earlier steps included. ``tasks_per_node`` and ``num_nodes``
    describe this command's session only (its cluster: a resumed run runs on a new Ray instance
    whose node ids differ); ``sessions`` lists every session's steps and nodes, oldest first.

    :param totals: the trainer's ``step_totals`` (or whole step records, taken as one session).
    :param wall_seconds: duration of this command.
    :param extra: more entries (paths, seed...).
    """
    from distributed_reptile.step_history import StepTotals

    if not isinstance(totals, StepTotals):
        totals = StepTotals.of_records(totals)
    current = totals.current
    tasks_per_node = dict(current.tasks_per_node) if current is not None else {}
    summary: dict[str, Any] = {
        "outer_steps": totals.outer_steps,
        "env_steps": totals.env_steps,
        "tasks": totals.tasks,
        "wall_seconds": round(wall_seconds, 3),
        "train_seconds": round(totals.seconds.get("step_seconds", 0.0), 3),
        "tasks_per_node": tasks_per_node,
        "num_nodes": len(tasks_per_node),
        "sessions": [
            {
                "first_outer_step": s.first_outer_step,
                "outer_steps": s.outer_steps,
                "num_nodes": s.num_nodes,
                "tasks_per_node": _merge_counts([s.tasks_per_node]),
            }
            for s in totals.sessions
        ],
        "final_mean_return": totals.last_ep_return_mean if totals.outer_steps else None,
    }
    summary.update(extra or {})
    return to_jsonable(summary)  # type: ignore[no-any-return]


def _resume_problem(folder: Path, outer_steps: int) -> str | None:
    """What is wrong with resuming ``folder`` up to ``outer_steps`` (``None``: nothing), checked
    before a run folder is made or Ray starts."""
    from distributed_reptile.checkpoint_paths import checked_state

    problem, state = checked_state(folder)
    if problem:
        return problem
    done = int(state.get("num_outer_steps", 0))
    if done >= outer_steps:
        return (
            f"the checkpoint has already done {done} outer steps and the config asks for "
            f"{outer_steps}: nothing is left to run. Train further with --set outer_steps={done * 2}."
        )
    return None


def _train(args: argparse.Namespace) -> int:
    from distributed_reptile.config import load_config

    t0 = time.perf_counter()
    config = load_config(Path(args.config).expanduser(), args.overrides)
    # '~' reaches us unexpanded from `ray job submit` (it quotes the entrypoint's arguments)
    resume = Path(args.resume).expanduser() if args.resume is not None else None
    if resume is not None:
        problem = _resume_problem(resume, config.outer_steps)
        if problem:
            return user_error("train", f"--resume {args.resume}: {problem}")
    if args.output:
        out = Path(args.output).expanduser().absolute()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            return user_error(
                "train",
                f"--output {args.output}: {out} exists and is not an empty folder; a run never "
                "writes over another. Give a new folder, or leave --output out "
                "(runs/<name>_<time> is made for each run).",
            )
    else:
        out = default_output_dir(config.name).absolute()
    kwargs = config.trainer_kwargs()
    kwargs["tensorboard_logs"] = config.tensorboard_logs or str(out / "tb")
    if args.ray_address is not None:
        kwargs["ray_address"] = args.ray_address
    learn_kwargs = config.learn_kwargs()
    if args.time_budget is not None:
        from distributed_reptile.callbacks import StopOnWallClock

        if not args.time_budget > 0:
            return user_error("train", "--time-budget must be a positive number of seconds")
        learn_kwargs["callback"] = [StopOnWallClock(args.time_budget, verbose=1)]
    save_path = learn_kwargs.get("save_path")
    learn_kwargs["save_path"] = (
        str(Path(save_path).expanduser()) if save_path else str(out / "checkpoints")
    )
    trainer_cls = config.trainer_class()
    print(f"distributed-reptile train: run folder {out}", flush=True)

    from distributed_reptile.algorithms.base import BaseMetaAlgorithm

    # Nothing is written before the trainer stands (Ray started, workers placed): a run that
    # cannot start leaves no run folder behind.
    if resume is not None:
        # the class the checkpoint records; a config that names `algorithm` must agree with it
        named = "algorithm" in config.model_fields_set
        trainer = (trainer_cls if named else BaseMetaAlgorithm).load(resume, **kwargs)
        done = trainer.num_outer_steps
        print(
            f"distributed-reptile train: resuming {resume} at outer step {done} of "
            f"{trainer.outer_steps}: {trainer.outer_steps - done} outer steps to run",
            flush=True,
        )
    else:
        trainer = trainer_cls(**kwargs)
    interrupted = False
    try:
        from distributed_reptile.imports import import_path_of

        out.mkdir(parents=True, exist_ok=True)
        resolved = config.model_copy(
            update={"seed": trainer.seed, "algorithm": import_path_of(type(trainer))}
        )
        (out / "config.yaml").write_text(resolved.to_yaml(), encoding="utf-8")
        try:
            trainer.learn(
                reset_num_timesteps=resume is None,
                step_records_path=out / "step_records.jsonl",  # a line as each step is made
                **learn_kwargs,
            )
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # written even when the run fails part-way: the steps done so far
            last = latest_checkpoint(learn_kwargs["save_path"], learn_kwargs["save_prefix"])
            summary = run_summary(
                trainer.step_totals,
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
    if interrupted:
        print(
            f"distributed-reptile train: interrupted after {trainer.num_outer_steps} of "
            f"{trainer.outer_steps} outer steps. " + _resume_hint(args, last),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(json.dumps(summary, indent=2))
    return 0


def _resume_hint(args: argparse.Namespace, last: Path | None) -> str:
    """How to go on from the last checkpoint, as a command line."""
    if last is None:
        return "No checkpoint was written (set learn.save_freq to write them)."
    sets = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)
    return (
        f"Last checkpoint: {last}. Resume with: distributed-reptile train "
        f"{shlex.quote(args.config)}{sets} --resume {shlex.quote(str(last))}"
    )


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
    parser = new_parser(
        "distributed-reptile",
        "Reptile meta-learning for Stable-Baselines3 with inner loops on Ray. "
        "`train CONFIG.yaml` runs a meta-training run from a YAML config into one run folder "
        "(config.yaml, tb/, checkpoints/, step_records.jsonl, summary.json); see configs/ and "
        "docs/cluster.md.",
        "distributed-reptile train configs/smoke.yaml",
    )
    add_debug_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="a short meta-training run of PPO on the CartPole family",
        description="A short meta-training run: PPO on the CartPole family (random pole "
        "lengths, pole masses and gravity), on a local Ray instance on 127.0.0.1 that it starts and stops.",
        epilog="example:\n  distributed-reptile demo --outer-steps 5 --num-workers 2",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--outer-steps", type=int, default=10, help="meta-updates")
    demo.add_argument("--task-batch-size", type=int, default=4, help="tasks per outer step")
    demo.add_argument("--inner-steps", type=int, default=1024, help="env steps of each inner loop")
    demo.add_argument(
        "--num-workers", type=int, default=2, help="Ray actors running the inner loops"
    )
    demo.add_argument(
        "--backend",
        choices=["ray", "serial"],
        default="ray",
        help="where the inner loops run: Ray actors, or this process",
    )
    demo.add_argument("--seed", type=int, default=0, help="run seed")
    demo.add_argument(
        "--ray-address", default=None, help="join this Ray cluster instead of starting one"
    )
    demo.add_argument(
        "--tensorboard-logs", default=None, help="folder for TensorBoard logs (default: none)"
    )
    add_output_option(
        demo,
        "folder for the demo's final checkpoint (default: nothing is saved)",
        old_names=("--save-path",),
    )
    demo.add_argument("--no-progress-bar", action="store_true", help="hide the progress bar")
    add_debug_option(demo)
    demo.set_defaults(func=_demo)

    train = sub.add_parser(
        "train",
        help="meta-train from a YAML config",
        description="Meta-train from a YAML config. The run folder gets config.yaml (resolved), "
        "tb/ (TensorBoard), checkpoints/, step_records.jsonl and summary.json.",
        epilog="examples:\n"
        "  distributed-reptile train configs/smoke.yaml --set num_workers=auto\n"
        "  distributed-reptile train configs/smoke.yaml --set outer_steps=6 \\\n"
        "      --resume runs/smoke_20260101_120000/checkpoints/meta_ckpt_outer_3",
        formatter_class=HelpFormatter,
    )
    train.add_argument("config", help="the run's YAML config (see configs/)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, nested with dots (learn.save_freq=5); the value is read as "
        "YAML; repeat for several",
    )
    train.add_argument(
        "--resume",
        default=None,
        metavar="CKPT",
        help="continue from this checkpoint folder up to the config's outer_steps",
    )
    add_output_option(
        train,
        "run folder, new or empty (default: runs/<name>_<timestamp> in the working directory)",
        old_names=("--out", "--out-dir", "--save-path"),
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
    add_debug_option(train)
    train.set_defaults(func=_train)

    for command, (module_name, text) in DISPATCHED.items():
        p = sub.add_parser(
            command,
            help=f"{text} (`distributed-reptile {command} --help`)",
            add_help=False,
        )
        p.add_argument("argv", nargs=argparse.REMAINDER, help=f"arguments of {module_name}")
        p.set_defaults(func=None, module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``distributed-reptile`` command: a user's mistake is one line and exit 2, Ctrl-C one
    line and exit 130; tracebacks are for bugs (``--debug`` shows them for the rest too)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args_list[:1]:
        os.environ[DEBUG_ENV] = "1"
        args_list = args_list[1:]
    command = args_list[0] if args_list else "distributed-reptile"
    try:
        # argparse's REMAINDER refuses a leading option (``evaluate --help``): route these first.
        if command in DISPATCHED:
            return run_module_cli(DISPATCHED[command][0], args_list[1:], command)
        args = build_parser().parse_args(args_list)
        if getattr(args, "debug", False):
            os.environ[DEBUG_ENV] = "1"
        if args.func is None:
            return run_module_cli(args.module, args.argv, args.command)
        return int(args.func(args))
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"distributed-reptile {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except user_errors() as err:
        if debug_enabled():
            raise
        return user_error(command, err)
    except RunInterruptedError as err:
        # a process the run needs was lost: what, when, and how to resume, in one message
        if debug_enabled():
            raise
        print(f"distributed-reptile {command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
