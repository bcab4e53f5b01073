"""Command line: ``distributed-reptile demo | train | evaluate | bench``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence


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


def _merge_counts(dicts: object) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:  # type: ignore[attr-defined]
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distributed-reptile", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a short meta-training run of PPO on the CartPole family")
    demo.add_argument("--outer-steps", type=int, default=10)
    demo.add_argument("--task-batch-size", type=int, default=4)
    demo.add_argument("--inner-steps", type=int, default=1024)
    demo.add_argument("--num-workers", type=int, default=2)
    demo.add_argument("--backend", choices=["ray", "serial"], default="ray")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--ray-address", default=None, help="join this Ray cluster instead of starting one")
    demo.add_argument("--tensorboard-logs", default=None, help="folder for TensorBoard logs (default: none)")
    demo.add_argument("--save-path", default=None, help="folder for the final checkpoint (default: none)")
    demo.add_argument("--no-progress-bar", action="store_true")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
