"""``distributed-reptile evaluate CHECKPOINT [CHECKPOINT ...]``: the meta-test evaluation of checkpoints.

Several checkpoints (one per training seed) are aggregated over tasks x seeds. The comparison
inits are a random init per checkpoint (a freshly built model, seeds ``--random-seeds``) and, with
``--baseline``, multi-task policies saved by ``python -m distributed_reptile.baselines``. The
adaptation runs on a runner built from the first checkpoint's trainer (Ray workers by default).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distributed_reptile.execution.registry import backend_names
from distributed_reptile.weights import NumpyWeights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distributed-reptile evaluate",
        description="Held-out returns before and after adaptation: meta-init vs random init vs baselines.",
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
    parser.add_argument("--baseline-name", default="multitask")
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
        help="adaptation budgets (default 0 1 2 4 rollouts)",
    )
    parser.add_argument("--budget-unit", choices=["rollouts", "steps"], default="rollouts")
    parser.add_argument("--tasks", type=int, default=20, help="held-out tasks")
    parser.add_argument("--task-seed", type=int, default=0, help="first held-out task seed")
    parser.add_argument(
        "--episodes", type=int, default=10, help="evaluation episodes per task and budget"
    )
    parser.add_argument(
        "--stochastic", action="store_true", help="sample actions in evaluation episodes"
    )
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--backend", choices=list(backend_names()), default="ray")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--ray-address", default=None, help="join this Ray cluster instead of starting one"
    )
    parser.add_argument(
        "--out", default="evaluation", help="folder of evaluation.json / .png / .md"
    )
    return parser


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
    from distributed_reptile.algorithms.base import load_trainer
    from distributed_reptile.evaluation.core import (
        evaluate_inits,
        held_out_specs,
        random_init_weights,
        resolve_budgets,
        resolve_task_callable,
    )
    from distributed_reptile.evaluation.report import save_report
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
    from distributed_reptile.checkpoint import CheckpointError

    try:
        meta = load_trainer(folders[0], **overrides)
    except CheckpointError as err:
        print(f"distributed-reptile evaluate: {err}", file=sys.stderr)
        return 2
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
        report = evaluate_inits(
            meta.runner,
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
            },
        )
    finally:
        meta.close()
    report["metadata"]["wall_seconds"] = time.perf_counter() - t0
    paths = save_report(
        report, args.out, "evaluation", title=f"{family}: {len(folders)} meta-init(s)"
    )
    print(paths["md"].read_text(encoding="utf-8"))
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
