"""Meta-train on a task family for several seeds, train the multi-task baselines, evaluate all.

One command gives the table of a README row: for each training seed, Reptile meta-training
(``ReptileMetaRL``, inner loops on Ray workers), then the multi-task baseline (plain PPO on a new
training task every episode, as many env steps as a meta-training run; trained as Ray
tasks that start with the meta-training and share the machine with it, so no core sits idle), then
the evaluation of the meta-inits, the random inits (the weights each meta-training run started
from) and the multi-task baselines on the same held-out tasks, budgets and seeds, through the same
kind of Ray workers. With ``--adapt-lrs``, each initialisation first gets the adaptation learning
rate that does best for it on a few tasks of the training split (never the held-out ones;
:func:`~distributed_reptile.evaluation.select_adaptation_lr`), and adapts with it. Writes ``evaluation.{json,png,md}`` and
``summary.json`` (settings, env steps, wall time of each phase) in ``--output``.

Example (2D navigation, 3 seeds)::

    python experiments/run_family.py --preset pointnav_sgd_nostd --seeds 0 1 2 \
        --outer-steps 30 --output experiments/out/pointnav
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from presets import PRESETS, get_preset, multitask_kwargs  # noqa: E402

from distributed_reptile.evaluation.cli import add_selection_arguments  # noqa: E402


def _train_multitask_remote(
    family: str,
    algo_kwargs: dict[str, Any],
    steps: int,
    seed: int,
    out: str,
    task_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    import torch as th
    from stable_baselines3 import PPO

    from distributed_reptile.baselines import train_multitask
    from distributed_reptile.weights import module_to_numpy

    th.set_num_threads(1)
    t0 = time.perf_counter()
    model = train_multitask(family, PPO, algo_kwargs, steps, seed=seed, task_params=task_params)
    model.save(out)
    return {
        "weights": module_to_numpy(model.policy),
        "seconds": time.perf_counter() - t0,
        "env_steps": int(model.num_timesteps),
        "path": out,
    }


def _versions() -> dict[str, str]:
    """The versions every number of a run depends on (Meta-World's rewards change between
    releases)."""
    from distributed_reptile.checkpoint import library_versions

    return library_versions(extra=("mujoco", "metaworld"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--outer-steps", type=int, required=True)
    parser.add_argument("--output", "--out", dest="out", required=True, help="output folder")
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="folder of the meta-training checkpoints (default: runs/experiments/<out name>)",
    )
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--backend", choices=["ray", "serial"], default="ray")
    parser.add_argument("--tasks", type=int, default=20, help="held-out tasks")
    parser.add_argument(
        "--episodes", type=int, default=10, help="evaluation episodes per task and budget"
    )
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=[0, 1, 2, 4], help="in inner rollouts"
    )
    parser.add_argument("--no-multitask", action="store_true", help="skip the multi-task baseline")
    parser.add_argument("--eval-seed", type=int, default=0)
    add_selection_arguments(parser, "the preset's inner learning rate for every initialisation")
    args = parser.parse_args(argv)

    import numpy as np
    import ray
    from stable_baselines3 import PPO

    from distributed_reptile import ReptileMetaRL, TaskGenerator
    from distributed_reptile.evaluation import (
        RunnersByStep,
        build_eval_runner,
        evaluate_inits,
        held_out_specs,
        resolve_budgets,
        save_report,
        select_adaptation_lr,
    )
    from distributed_reptile.evaluation.core import resolve_task_callable
    from distributed_reptile.ray_utils import ensure_ray
    from distributed_reptile.weights import module_to_numpy

    preset = get_preset(args.preset)
    family, make_task = resolve_task_callable(preset["family"])
    task_params: dict[str, Any] = dict(preset.get("task_params") or {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = Path(args.checkpoints or os.path.join("runs", "experiments", out.name))
    t_start = time.perf_counter()
    rollout = int(preset["rl_algo_kwargs"]["n_steps"])
    inner_steps = preset["inner_rollouts"] * rollout
    planned_steps = args.outer_steps * preset["task_batch_size"] * inner_steps
    mt_kwargs = multitask_kwargs(preset)
    mt_jobs = [
        (
            family,
            mt_kwargs,
            planned_steps,
            seed,
            str((ckpt_root / f"multitask_seed{seed}.zip").resolve()),
            task_params,
        )
        for seed in args.seeds
    ]
    mt_refs: list[Any] = []
    if args.backend == "ray":
        # Logical CPUs: the learner actors plus one per multi-task job, which run alongside.
        extra = 0 if args.no_multitask else len(args.seeds)
        ensure_ray(num_cpus=args.num_workers + extra, ray_init_kwargs={"log_to_driver": False})
        if not args.no_multitask:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            remote = ray.remote(num_cpus=1)(_train_multitask_remote)
            mt_refs = [remote.remote(*job) for job in mt_jobs]
    summary: dict[str, Any] = {
        "preset": args.preset,
        "family": family,
        "task_params": task_params,
        "versions": _versions(),
        "seeds": args.seeds,
        "outer_steps": args.outer_steps,
        "phases": {},
        "runs": [],
    }
    meta_weights, random_weights = [], []
    t_phase = time.perf_counter()
    for seed in args.seeds:
        t0 = time.perf_counter()
        with ReptileMetaRL(
            tasks_generator_cls=TaskGenerator,
            tasks_generator_params={
                "task_callable": make_task,
                "task_callable_params": task_params or None,
            },
            rl_algorithm=PPO,
            rl_algo_kwargs=preset["rl_algo_kwargs"],
            inner_steps=inner_steps,
            outer_steps=args.outer_steps,
            task_batch_size=preset["task_batch_size"],
            meta_lr=preset["meta_lr"],
            ignored_layers=preset["ignored_layers"] or None,
            num_workers=args.num_workers,
            backend=args.backend,
            seed=seed,
            verbose=1,
        ) as meta:
            random_weights.append(module_to_numpy(meta.meta_policy))
            meta.learn(save_path=str(ckpt_root / f"seed{seed}"), save_prefix="meta")
            meta_weights.append(module_to_numpy(meta.meta_policy))
            records = meta.step_records
            run = {
                "seed": seed,
                "checkpoint": str(ckpt_root / f"seed{seed}" / f"meta_outer_{meta.num_outer_steps}"),
                "env_steps": int(meta.step_totals.env_steps),  # the whole run's
                "seconds": time.perf_counter() - t0,
                "adaptation_return_first": records[0]["ep_return_mean"],
                "adaptation_return_last": float(
                    np.mean([r["ep_return_mean"] for r in records[-3:]])
                ),
                "wait_seconds": float(meta.step_totals.seconds["wait_seconds"]),
                "meta_update_seconds": float(meta.step_totals.seconds["meta_update_seconds"]),
            }
            if "log_std" in dict(meta.meta_policy.named_parameters()):
                run["log_std"] = meta.meta_policy.log_std.detach().cpu().tolist()
        summary["runs"].append(run)
        print(json.dumps(run), flush=True)
    summary["phases"]["meta_training"] = time.perf_counter() - t_phase

    inits: dict[str, list[Any]] = {"meta": meta_weights, "random": random_weights}
    if not args.no_multitask:
        t_phase = time.perf_counter()
        if args.backend == "ray":
            results = ray.get(mt_refs)
        else:
            results = [_train_multitask_remote(*job) for job in mt_jobs]
        inits["multitask"] = [r["weights"] for r in results]
        summary["multitask"] = {
            "kwargs": repr(mt_kwargs),
            "runs": [{k: v for k, v in r.items() if k != "weights"} for r in results],
            "meta_env_steps": [run["env_steps"] for run in summary["runs"]],
        }
        summary["phases"]["multitask_training_after_meta"] = time.perf_counter() - t_phase

    def make_runner(lr: float | None = None) -> Any:
        kwargs = dict(preset["rl_algo_kwargs"])
        if lr is not None:
            kwargs["learning_rate"] = lr
        return build_eval_runner(PPO, kwargs, backend=args.backend, num_workers=args.num_workers)

    env, _ = make_task(random_seed=0, **task_params)
    budgets = resolve_budgets(
        PPO(env=env, device="cpu", **preset["rl_algo_kwargs"]), rollouts=args.budgets
    )
    env.close()
    runner: Any
    if args.adapt_lrs:
        t_phase = time.perf_counter()
        selection = select_adaptation_lr(
            make_runner,
            inits,
            held_out_specs(family, args.select_tasks, task_params=task_params, split="train"),
            budgets,
            args.adapt_lrs,
            episodes=args.select_episodes,
            seed=args.eval_seed + 1,
            held_out=held_out_specs(family, args.tasks, task_params=task_params),
        )
        summary["adaptation_lr_selection"] = selection
        summary["phases"]["adaptation_lr_selection"] = time.perf_counter() - t_phase
        print(json.dumps(selection), flush=True)
        runner = RunnersByStep(make_runner, selection["chosen"])
    else:
        runner = make_runner()
    t_phase = time.perf_counter()
    try:
        specs = held_out_specs(family, args.tasks, task_params=task_params)
        report = evaluate_inits(
            runner,
            inits,
            specs,
            budgets,
            episodes=args.episodes,
            seed=args.eval_seed,
            metadata={
                "preset": args.preset,
                "preset_settings": repr(preset),
                "task_params": task_params,
                "versions": summary["versions"],
                "runs": summary["runs"],
                "adaptation_lr_selection": summary.get("adaptation_lr_selection"),
            },
        )
    finally:
        runner.close()
    summary["phases"]["evaluation"] = time.perf_counter() - t_phase
    paths = save_report(
        report,
        out,
        "evaluation",
        title=f"{family} {task_params.get('env_name', '')}: {args.preset}, seeds {args.seeds}",
    )
    summary["total_seconds"] = time.perf_counter() - t_start
    summary["outputs"] = {k: str(v) for k, v in paths.items()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(paths["md"].read_text(encoding="utf-8"))
    print(json.dumps(summary["phases"]), f"total {summary['total_seconds']:.0f}s")
    if args.backend == "ray":
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
