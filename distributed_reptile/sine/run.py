"""The sine-wave reproduction (Reptile paper, Figure 1) through the distributed trainer.

``python -m distributed_reptile.sine --output DIR`` meta-trains a 1-64-64-1 ReLU MLP with
:class:`~distributed_reptile.ReptileMetaRL` (the :class:`SupervisedRegressor` as ``rl_algorithm``,
inner loops on Ray workers), then evaluates on 100 unseen tasks, through the same workers: MSE on
a 50-point grid over ``[-5, 5]`` after 0 and after 32 Adam steps on each task's fixed 10-point
support set, from the meta-init and from the random init the run started from. It writes
``sine.json`` (MSE with 95% t-intervals, paired differences, wall times and where the time went),
``sine.png`` (two panels: before / after meta-training) and the final checkpoint.

The task, network, inner loop (32 Adam steps, lr 1e-3, betas (0, 0.999), batches of 10) and
evaluation are the paper's. The outer loop differs by default, to reach a lower MSE in the same
wall time: 8000 outer steps of 4 tasks, the Reptile direction applied through SGD with momentum
0.9 and a step annealed linearly from 0.7 to 0. The paper's outer loop (a constant meta step of
0.1, 2000 outer steps) is ``--outer-steps 2000 --meta-optimizer none --meta-lr 0.1 --meta-lr-end 0.1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from distributed_reptile.jsonutil import dumps, write_json
from distributed_reptile.settings import tasks_per_call_arg
from distributed_reptile.sine.env import GRID_POINTS, SUPPORT_SIZE, make_sine_task
from distributed_reptile.step_history import StepTotals


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m distributed_reptile.sine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output",
        "--out",
        dest="out",
        required=True,
        help="output folder (sine.json, sine.png, checkpoint)",
    )
    parser.add_argument("--outer-steps", type=int, default=8000, help="meta-updates")
    parser.add_argument("--task-batch-size", type=int, default=4, help="tasks per outer step")
    parser.add_argument(
        "--meta-lr", type=float, default=0.7, help="meta step size at the first outer step"
    )
    parser.add_argument(
        "--meta-lr-end",
        type=float,
        default=0.0,
        help="meta step size at the last outer step (linear schedule); "
        "equal to --meta-lr for a constant one",
    )
    parser.add_argument(
        "--meta-optimizer",
        choices=["none", "adam", "momentum"],
        default="momentum",
        help="apply the meta step with Adam or SGD with momentum (gradient: minus the "
        "mean adapted delta); none: phi += meta_lr * mean delta",
    )
    parser.add_argument(
        "--meta-momentum", type=float, default=0.9, help="momentum of --meta-optimizer momentum"
    )
    parser.add_argument(
        "--inner-updates", type=int, default=32, help="Adam steps per task in the inner loop"
    )
    parser.add_argument("--batch-size", type=int, default=10, help="points per Adam step")
    parser.add_argument(
        "--inner-lr", type=float, default=1e-3, help="Adam step size (betas 0, 0.999)"
    )
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument(
        "--eval-updates", type=int, default=32, help="Adam steps on the support set at evaluation"
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument(
        "--tasks-per-call",
        type=tasks_per_call_arg,
        default="auto",
        help="tasks per Ray actor call: an integer, auto (the batch split evenly "
        "over the workers, one call each) or guided (calls that shrink as the batch runs out)",
    )
    parser.add_argument("--backend", choices=["ray", "serial"], default="ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-train-seconds",
        type=float,
        default=None,
        help="stop meta-training after the outer step that reaches this wall time",
    )
    parser.add_argument("--no-figure", action="store_true")
    return parser


def _timing_breakdown(totals: StepTotals) -> dict[str, Any]:
    """Where the time of the outer steps went (sums over the run, means per task), from the
    trainer's running totals (``meta.step_totals``)."""
    seconds = totals.seconds
    out: dict[str, Any] = {
        "outer_steps": totals.outer_steps,
        "step_seconds": float(seconds["step_seconds"]),
        "sample_seconds": float(seconds["sample_seconds"]),
        "wait_seconds": float(seconds["wait_seconds"]),
        "meta_update_seconds": float(seconds["meta_update_seconds"]),
        "inner_learn_seconds": float(seconds["inner_seconds"]),
        "per_task_mean_seconds": {
            k: totals.task_mean_seconds(k)
            for k in ("env_build", "model_ready", "learn", "weight_fetch", "total", "round_trip")
        },
    }
    steps = max(totals.outer_steps, 1)
    out["per_outer_step_ms"] = {
        k: 1e3 * out[k] / steps
        for k in ("step_seconds", "sample_seconds", "wait_seconds", "meta_update_seconds")
    }
    rt, total = out["per_task_mean_seconds"]["round_trip"], out["per_task_mean_seconds"]["total"]
    if rt is not None and total is not None:
        out["per_task_mean_seconds"]["outside_learner"] = rt - total
    return out


def _mse_summary(meta_mse: np.ndarray, random_mse: np.ndarray, budgets: Any) -> dict[str, Any]:
    from distributed_reptile.evaluation import summarize

    report = summarize(
        {"meta": meta_mse[None], "random": random_mse[None]}, budgets, reference="meta"
    )
    names = ["before_adaptation", "after_adaptation"]
    out: dict[str, Any] = {}
    for init in ("meta", "random"):
        out[init] = {
            names[b]: {
                k: report["inits"][init]["budgets"][b][k]
                for k in ("mean", "ci_low", "ci_high", "half_width", "n")
            }
            for b in range(2)
        }
    out["meta_minus_random"] = {
        names[b]: {
            k: report["paired"]["meta - random"][b][k]
            for k in ("mean", "ci_low", "ci_high", "half_width", "excludes_zero")
        }
        for b in range(2)
    }
    return out


def _plot(
    path: Path,
    task_seed: int,
    inits: dict[str, Any],
    eval_updates: int,
    batch_size: int,
    mse: dict[str, Any],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distributed_reptile.sine.learner import SupervisedRegressor
    from distributed_reptile.weights import load_numpy_into_module

    env, _ = make_sine_task(task_seed, split="test")
    xs = np.linspace(-5, 5, 200, dtype=np.float32).reshape(-1, 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    titles = {
        "random": "before meta-training (random init)",
        "meta": "after meta-training (meta-init)",
    }
    for ax, name in zip(axes, ("random", "meta"), strict=True):
        model = SupervisedRegressor(env=env, **inits["kwargs"])
        load_numpy_into_module(model.policy, inits[name])
        ax.plot(xs[:, 0], env.function(xs)[:, 0], color="black", label="true function")
        ax.plot(xs[:, 0], model.predict(xs)[0][:, 0], linestyle="--", label="after 0 steps")
        model.set_random_seed(0)
        model.learn(eval_updates * batch_size)
        ax.plot(xs[:, 0], model.predict(xs)[0][:, 0], label=f"after {eval_updates} steps")
        assert env.support_x is not None
        ax.scatter(
            env.support_x[:, 0],
            env.function(env.support_x)[:, 0],
            color="red",
            zorder=3,
            label=f"{SUPPORT_SIZE} support points",
        )
        after = mse[name]["after_adaptation"]
        ax.set_title(
            f"{titles[name]}\nmean MSE over tasks after {eval_updates} steps: {after['mean']:.2f}"
        )
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("y")
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Meta-train, evaluate on unseen tasks, write the JSON, the figure and a checkpoint."""
    t_start = time.perf_counter()
    args = build_parser().parse_args(argv)
    from distributed_reptile import ReptileMetaRL, StopOnWallClock, TaskGenerator, linear_schedule
    from distributed_reptile.evaluation import adaptation_returns, held_out_specs, resolve_budgets
    from distributed_reptile.sine.learner import SupervisedRegressor
    from distributed_reptile.weights import module_to_numpy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    learner_kwargs = {
        "learning_rate": args.inner_lr,
        "betas": (0.0, 0.999),
        "batch_size": args.batch_size,
        "net_arch": (64, 64),
    }
    constant = args.meta_lr_end is None or args.meta_lr_end == args.meta_lr
    meta_lr: Any = args.meta_lr if constant else linear_schedule(args.meta_lr, args.meta_lr_end)
    callbacks = [StopOnWallClock(args.max_train_seconds)] if args.max_train_seconds else []
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    with ReptileMetaRL(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"task_callable": make_sine_task, "history": False},
        rl_algorithm=SupervisedRegressor,  # type: ignore[arg-type]  # SB3-like, not a BaseAlgorithm
        rl_algo_kwargs={"policy": "MlpRegressor", "device": "cpu", **learner_kwargs},
        inner_steps=args.inner_updates * args.batch_size,
        outer_steps=args.outer_steps,
        task_batch_size=args.task_batch_size,
        meta_lr=meta_lr,
        use_meta_optimizer=args.meta_optimizer != "none",
        meta_optimizer_cls=th.optim.SGD if args.meta_optimizer == "momentum" else th.optim.Adam,
        meta_optimizer_kwargs={"momentum": args.meta_momentum}
        if args.meta_optimizer == "momentum"
        else None,
        num_workers=args.num_workers,
        tasks_per_call=args.tasks_per_call,
        backend=args.backend,
        seed=args.seed,
        ray_init_kwargs={"log_to_driver": False},
    ) as meta:
        phases["startup"] = time.perf_counter() - t0
        random_init = module_to_numpy(meta.meta_policy)
        t0 = time.perf_counter()
        meta.learn(
            callback=callbacks, save_path=str(out / "checkpoint"), save_prefix="sine", keep_last=1
        )
        phases["meta_training"] = time.perf_counter() - t0
        meta_init = module_to_numpy(meta.meta_policy)
        totals, last_records = meta.step_totals, meta.step_records[-50:]

        t0 = time.perf_counter()
        specs = held_out_specs(make_sine_task, args.eval_tasks)
        budgets = resolve_budgets(
            meta.meta_algo, env_steps=[0, args.eval_updates * args.batch_size]
        )
        returns = {
            name: adaptation_returns(
                meta.runner, weights, specs, budgets, episodes=1, seed=args.seed
            )[0]
            for name, weights in (("meta", meta_init), ("random", random_init))
        }
        phases["evaluation"] = time.perf_counter() - t0
        outer_done = meta.num_outer_steps

    mse_tasks = {name: -r / GRID_POINTS for name, r in returns.items()}
    mse = _mse_summary(mse_tasks["meta"], mse_tasks["random"], budgets)
    if not args.no_figure:
        t0 = time.perf_counter()
        _plot(
            out / "sine.png",
            specs[0].random_seed or 0,
            {"meta": meta_init, "random": random_init, "kwargs": learner_kwargs},
            args.eval_updates,
            args.batch_size,
            mse,
        )
        phases["figure"] = time.perf_counter() - t0
    wall = time.perf_counter() - t_start
    report = {
        "protocol": {
            "tasks": "y = a sin(x + b), a ~ U[0.1, 5], b ~ U[0, 2 pi], x ~ U[-5, 5]",
            "network": "1-64-64-1 ReLU MLP",
            "inner_loop": f"{args.inner_updates} Adam steps (lr {args.inner_lr}, betas (0, 0.999)) on "
            f"batches of {args.batch_size} fresh points",
            "meta_lr": args.meta_lr if constant else [args.meta_lr, args.meta_lr_end],
            "meta_optimizer": args.meta_optimizer,
            "task_batch_size": args.task_batch_size,
            "outer_steps": outer_done,
            "evaluation": f"MSE on a {GRID_POINTS}-point grid of {args.eval_tasks} unseen tasks after 0 and "
            f"{args.eval_updates} Adam steps on one fixed {SUPPORT_SIZE}-point support set",
            "backend": args.backend,
            "num_workers": args.num_workers,
            "tasks_per_call": args.tasks_per_call,
            "seed": args.seed,
        },
        "mse": mse,
        "mse_per_task": {k: v.tolist() for k, v in mse_tasks.items()},
        "wall_seconds": wall,
        "phases_seconds": phases,
        "timing": _timing_breakdown(totals),
        "train_loss_last_steps": float(-np.mean([r["ep_return_mean"] for r in last_records])),
        "outputs": {
            "json": str(out / "sine.json"),
            "figure": None if args.no_figure else str(out / "sine.png"),
            "checkpoint": str(out / "checkpoint" / f"sine_outer_{outer_done}"),
        },
    }
    write_json(out / "sine.json", report)
    after, before = mse["meta"]["after_adaptation"], mse["random"]["after_adaptation"]
    print(
        dumps(
            {
                "outer_steps": outer_done,
                "meta_init_mse_after": round(after["mean"], 3),
                "random_init_mse_after": round(before["mean"], 3),
                "meta_init_mse_before": round(mse["meta"]["before_adaptation"]["mean"], 3),
                "random_init_mse_before": round(mse["random"]["before_adaptation"]["mean"], 3),
                "wall_seconds": round(wall, 1),
                "phases_seconds": {k: round(v, 1) for k, v in phases.items()},
                "json": str(out / "sine.json"),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
