"""Where the time of a sine outer step goes, and what batching tasks per actor call would save.

The sine tasks are tiny (32 Adam steps of a 1-64-64-1 MLP, a few milliseconds), so Ray's cost per
actor call is visible. This benchmark runs the same sine meta-training (same seed, same tasks)
with three runners and prints the median outer-step time and its parts:

* ``serial``: every inner loop in the driver;
* ``ray``: the library's ``RayRunner`` (one actor call per task, two queued per actor);
* ``ray_auto``: the same with ``tasks_per_call="auto"``: each actor gets one call per outer step
  holding its share of the batch (contiguous chunks), so the per-call cost is paid once per
  worker and step instead of once per task.

Variants are interleaved and repeated, because the machine is shared. Usage::

    python experiments/sine_overhead.py --outer-steps 300 --repeats 2 --output experiments/out/sine_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray

from distributed_reptile import ReptileMetaRL, TaskGenerator
from distributed_reptile.sine import SupervisedRegressor, make_sine_task


def run_variant(
    variant: str, outer_steps: int, seed: int, task_batch_size: int = 5
) -> dict[str, Any]:
    backend = "serial" if variant == "serial" else "ray"
    with ReptileMetaRL(
        tasks_generator_cls=TaskGenerator,
        tasks_generator_params={"task_callable": make_sine_task, "history": False},
        rl_algorithm=SupervisedRegressor,
        rl_algo_kwargs={"policy": "MlpRegressor", "device": "cpu"},
        inner_steps=320,
        outer_steps=outer_steps,
        task_batch_size=task_batch_size,
        meta_lr=0.1,
        num_workers=2,
        backend=backend,
        seed=seed,
        tasks_per_call="auto" if variant == "ray_auto" else 1,
    ) as meta:
        t0 = time.perf_counter()
        meta.learn()
        wall = time.perf_counter() - t0
        records = meta.step_records[5:]  # leave out the warm-up steps
        weights_norm = float(
            sum(float((p.detach() ** 2).sum()) for p in meta.meta_policy.parameters())
        )
    tasks = [t for r in records for t in r["task_timings"]]

    def med(values: list[float]) -> float:
        return 1e3 * statistics.median(values)

    return {
        "variant": variant,
        "wall_seconds": wall,
        "outer_steps": outer_steps,
        "tasks_per_second": outer_steps * task_batch_size / wall,
        "median_ms": {
            "outer_step": med([r["step_seconds"] for r in records]),
            "sample_tasks": med([r["sample_seconds"] for r in records]),
            "wait_results": med([r["wait_seconds"] for r in records]),
            "meta_update": med([r["meta_update_seconds"] for r in records]),
            "task_learn": med([t["learn"] for t in tasks]),
            "task_total_in_learner": med([t["total"] for t in tasks]),
        },
        "final_weights_sq_norm": weights_norm,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outer-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--task-batch-size", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["serial", "ray", "ray_auto"])
    parser.add_argument(
        "--output", "--out", dest="out", default=None, help="JSON file of the figures"
    )
    args = parser.parse_args(argv)
    from distributed_reptile.ray_utils import ensure_ray

    ensure_ray(num_cpus=2, ray_init_kwargs={"log_to_driver": False})
    results = []
    for rep in range(args.repeats):
        for variant in args.variants:
            res = run_variant(
                variant, args.outer_steps, seed=0, task_batch_size=args.task_batch_size
            )
            res["task_batch_size"] = args.task_batch_size
            res["repeat"] = rep
            results.append(res)
            print(json.dumps(res), flush=True)
    ray.shutdown()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
