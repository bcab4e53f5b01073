"""``distributed-reptile evaluate CHECKPOINT [CHECKPOINT ...]``: the meta-test evaluation of checkpoints.

Several checkpoints (one per training seed) are aggregated over tasks x seeds. The comparison
inits are a random init per checkpoint (a freshly built model, seeds ``--random-seeds``) and, with
``--baseline``, multi-task policies saved by ``python -m distributed_reptile.baselines``. The
adaptation runs on a runner built from the first checkpoint's trainer (Ray workers by default).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distributed_reptile.cli_help import (
    add_debug_option,
    add_output_option,
    new_folder,
    new_parser,
    user_error,
)
from distributed_reptile.execution.registry import backend_names
from distributed_reptile.weights import NumpyWeights


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "distributed-reptile evaluate",
        "Held-out returns before and after adaptation: meta-init vs random init vs baselines. "
        "Writes evaluation.json, evaluation.md and evaluation.png into --output.",
        "distributed-reptile evaluate runs/smoke_<time>/checkpoints/meta_ckpt_outer_3 "
        "--tasks 10 --budgets 0 1 2",
    )
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="checkpoint folder(s) of meta-training runs (one per training seed)",
    )
    parser.add_argument(
        "--family",
        default=None,
        help="built-in task family (default: the checkpoint's task_callable)",
    )
    parser.add_argument(
        "--baseline",
        nargs="*",
        default=[],
        metavar="MODEL_ZIP",
        help="multi-task baseline(s) saved with SB3's .save() (one, or one per checkpoint)",
    )
    parser.add_argument(
        "--baseline-name", default="multitask", help="name of the baselines in the report"
    )
    parser.add_argument("--no-random", action="store_true", help="leave out the random init")
    parser.add_argument(
        "--random-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds of the random inits (default: 0 .. number of checkpoints - 1)",
    )
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="adaptation budgets, in --budget-unit (default: 0 1 2 4)",
    )
    parser.add_argument(
        "--budget-unit",
        choices=["rollouts", "steps"],
        default="rollouts",
        help="budgets count SB3 rollouts (n_steps env steps each, or train_freq) or env steps",
    )
    parser.add_argument("--tasks", type=int, default=20, help="held-out tasks")
    parser.add_argument("--task-seed", type=int, default=0, help="first held-out task seed")
    parser.add_argument(
        "--episodes", type=int, default=10, help="evaluation episodes per task and budget"
    )
    parser.add_argument(
        "--stochastic", action="store_true", help="sample actions in evaluation episodes"
    )
    parser.add_argument(
        "--eval-seed", type=int, default=0, help="seed of the adaptation and evaluation episodes"
    )
    add_selection_arguments(parser, "the checkpoint's inner learning rate for all")
    parser.add_argument(
        "--backend",
        choices=list(backend_names()),
        default="ray",
        help="where the adaptations run: Ray actors, or this process",
    )
    parser.add_argument(
        "--num-workers", type=int, default=2, help="Ray actors running the adaptations"
    )
    parser.add_argument(
        "--ray-address", default=None, help="join this Ray cluster instead of starting one"
    )
    add_output_option(
        parser,
        "folder of evaluation.json / .md / .png; a folder that holds an evaluation already is "
        "refused (default: evaluations/<family>_<timestamp>)",
        old_names=("--out",),
    )
    add_debug_option(parser)
    return parser


def add_selection_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--adapt-lrs``, ``--select-tasks`` and ``--select-episodes`` (the choice of adaptation
    step on training tasks; ``default`` says what adapts without ``--adapt-lrs``)."""
    parser.add_argument(
        "--adapt-lrs",
        type=float,
        nargs="+",
        default=None,
        metavar="LR",
        help="candidate adaptation learning rates: each initialisation adapts to the held-out "
        "tasks with the one that gives it the best mean return on --select-tasks tasks of the "
        f"training split (default: {default})",
    )
    parser.add_argument(
        "--select-tasks", type=int, default=6, help="training-split tasks to choose the step on"
    )
    parser.add_argument(
        "--select-episodes", type=int, default=2, help="evaluation episodes when choosing the step"
    )


def input_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line (``None``: nothing), checked before Ray starts."""
    from distributed_reptile.checkpoint_paths import checkpoint_problem

    for name in ("tasks", "episodes", "num_workers", "select_tasks", "select_episodes"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            return f"{flag} must be at least 1, got {getattr(args, name)}."
    if args.budgets is not None and any(b < 0 for b in args.budgets):
        return f"--budgets must be >= 0, got {args.budgets}."
    if args.adapt_lrs is not None:
        if any(not math.isfinite(lr) or lr <= 0 for lr in args.adapt_lrs):
            return f"--adapt-lrs must be finite numbers > 0, got {args.adapt_lrs}."
        if len(set(args.adapt_lrs)) != len(args.adapt_lrs):
            return f"--adapt-lrs repeats a value: {args.adapt_lrs}."
        if args.budgets is not None and not any(b > 0 for b in args.budgets):
            return "--adapt-lrs chooses a step by the return after adaptation: give a budget > 0."
    if args.baseline and len(args.baseline) not in (1, len(args.checkpoints)):
        return (
            f"--baseline takes one model or one per checkpoint ({len(args.checkpoints)}), "
            f"got {len(args.baseline)}."
        )
    for path in args.baseline:
        if not Path(path).expanduser().is_file():
            return f"--baseline {path}: no such file (a model saved with SB3's .save(), .zip)."
    if args.random_seeds and len(args.random_seeds) != len(args.checkpoints):
        return (
            f"--random-seeds takes one seed per checkpoint ({len(args.checkpoints)}), "
            f"got {len(args.random_seeds)}."
        )
    if args.output and (Path(args.output) / "evaluation.json").exists():
        return (
            f"--output {args.output} holds an evaluation already; give a new folder "
            "(an evaluation is never written over another)."
        )
    for folder in args.checkpoints:
        problem = checkpoint_problem(Path(folder).expanduser())
        if problem:
            return f"{folder}: {problem}"
    return None


def _short(family: str) -> str:
    """A family's name for a folder: ``pkg.mod:make_x_task`` -> ``make_x_task``."""
    return family.rsplit(":", 1)[-1].rsplit(".", 1)[-1] or "family"


def _checkpoint_weights(folder: Path) -> NumpyWeights:
    from safetensors.numpy import load_file

    path = folder / "meta_policy.safetensors"
    if not path.exists():
        raise FileNotFoundError(
            f"{folder} is not a checkpoint folder (no meta_policy.safetensors)."
        )
    return dict(load_file(str(path)))


def _check_same_keys(name: str, weights: NumpyWeights, reference: NumpyWeights) -> None:
    if weights.keys() != reference.keys() or any(
        weights[k].shape != reference[k].shape for k in reference
    ):
        raise ValueError(
            f"{name} does not have the meta policy's architecture (parameter names or shapes differ): "
            "train it with the same rl_algorithm and policy_kwargs as the meta-training run."
        )


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation of ``argv`` (without the ``evaluate`` word); write JSON, PNG, Markdown."""
    args = build_parser().parse_args(argv)
    problem = input_problem(args)
    if problem:
        return user_error("evaluate", problem)
    from distributed_reptile.algorithms.base import load_trainer
    from distributed_reptile.evaluation.core import (
        evaluate_inits,
        held_out_specs,
        random_init_weights,
        resolve_budgets,
        resolve_task_callable,
    )
    from distributed_reptile.evaluation.report import save_report
    from distributed_reptile.evaluation.select import (
        RunnersByStep,
        adaptation_runner,
        select_adaptation_lr,
    )
    from distributed_reptile.imports import import_path_of
    from distributed_reptile.weights import module_to_numpy

    t0 = time.perf_counter()
    folders = [Path(c) for c in args.checkpoints]
    overrides: dict[str, Any] = {
        "backend": args.backend,
        "num_workers": args.num_workers,
        "verbose": 0,
        "tensorboard_logs": None,
    }
    if args.ray_address:
        overrides["ray_address"] = args.ray_address
    meta = load_trainer(folders[0], **overrides)
    runner: Any = None
    try:
        reference = module_to_numpy(meta.meta_policy)
        meta_weights = [reference]
        for folder in folders[1:]:
            weights = _checkpoint_weights(folder)
            _check_same_keys(str(folder), weights, reference)
            meta_weights.append(weights)
        gen_params = meta.tasks_generator_params
        family_arg: Any = args.family or gen_params.get("task_callable")
        if family_arg is None:
            raise SystemExit("The checkpoint's task generator has no task_callable: pass --family.")
        family, _ = resolve_task_callable(family_arg)
        task_params = None if args.family else gen_params.get("task_callable_params")
        specs = held_out_specs(family_arg, args.tasks, seed=args.task_seed, task_params=task_params)
        budgets = resolve_budgets(
            meta.meta_algo,
            rollouts=args.budgets if args.budget_unit == "rollouts" else None,
            env_steps=args.budgets if args.budget_unit == "steps" else None,
        )
        inits: dict[str, list[NumpyWeights]] = {"meta": meta_weights}
        if not args.no_random:
            seeds = args.random_seeds if args.random_seeds else list(range(len(folders)))
            env = specs[0].build_env()
            try:
                inits["random"] = [
                    random_init_weights(meta.rl_algorithm, meta.rl_algo_kwargs, env, s)
                    for s in seeds
                ]
            finally:
                env.close()
        if args.baseline:
            baselines = []
            for path in args.baseline:
                model = meta.rl_algorithm.load(path, device="cpu")
                weights = module_to_numpy(model.policy)
                _check_same_keys(path, weights, reference)
                baselines.append(weights)
            inits[args.baseline_name] = baselines
        selection = None
        if not args.adapt_lrs:
            runner = meta.runner  # the trainer's own workers
        else:
            meta.close_runner()  # new workers per step, the trainer's stopped: no more than asked

            def make_runner(lr: float) -> Any:
                return adaptation_runner(meta, learning_rate=lr)

            train_specs = held_out_specs(
                family_arg,
                args.select_tasks,
                seed=args.task_seed,
                task_params=task_params,
                split="train",
            )
            selection = select_adaptation_lr(
                make_runner,
                inits,
                train_specs,
                budgets,
                args.adapt_lrs,
                episodes=args.select_episodes,
                deterministic=not args.stochastic,
                seed=args.eval_seed + 1,
                held_out=specs,
            )
            runner = RunnersByStep(make_runner, selection["chosen"])
        report = evaluate_inits(
            runner,
            inits,
            specs,
            budgets,
            episodes=args.episodes,
            deterministic=not args.stochastic,
            seed=args.eval_seed,
            metadata={
                "family": family,
                "algorithm": import_path_of(type(meta)),
                "checkpoints": [str(f) for f in folders],
                "baselines": list(args.baseline),
                "backend": args.backend,
                "num_workers": args.num_workers,
                "adaptation_lr_selection": selection,
            },
        )
    finally:
        if isinstance(runner, RunnersByStep):
            runner.close()
        meta.close()
    report["metadata"]["wall_seconds"] = time.perf_counter() - t0
    out = Path(args.output) if args.output else new_folder("evaluations", _short(family))
    paths = save_report(report, out, "evaluation", title=f"{family}: {len(folders)} meta-init(s)")
    print(paths["md"].read_text(encoding="utf-8"))
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
