"""The benchmark suite end to end with tiny budgets: each benchmark runs through ``cli_main`` and
writes a result file with the expected structure, finite positive figures, and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from distributed_reptile.bench import cli_main
from distributed_reptile.bench.breakdown import task_rows
from distributed_reptile.bench.scaling import scaling_targets, summarize_groups
from distributed_reptile.bench.workload import ppo_parameter_count, width_for_parameters

TINY_PPO = ["--inner-steps", "64", "--n-steps", "32", "--batch-size", "32", "--n-epochs", "1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_bench(name: str, out: Path, *args: str) -> dict[str, Any]:
    """Run one benchmark into ``out``; check the common parts of its result and return it."""
    assert cli_main([name, "--out-dir", str(out), *args]) == 0
    report = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert report["benchmark"] == name
    assert report["machine"]["cpu_count_logical"] >= 1
    assert isinstance(report["machine"]["cpu_model"], str) and report["machine"]["cpu_model"]
    assert {"torch", "ray", "stable-baselines3", "gymnasium", "numpy"} <= set(report["versions"])
    assert isinstance(report["settings"], dict) and report["settings"]
    assert 0.0 <= report["cpu"]["machine_busy_fraction"] <= 1.0
    for target in report["targets"]:
        assert target["status"] in ("PASS", "MISS", "n/a")
        assert target["op"] in ("<=", ">=")
    return report


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_scaling_times_every_implementation_side_by_side(ray_session, tmp_path):
    report = run_bench(
        "scaling", tmp_path, "--workers", "1", "--tasks", "2", "--outer-steps", "1",
        "--implementations", "serial,ray,ray_flat,pool,ray_remote", *TINY_PPO,
    )  # fmt: skip
    (group,) = report["groups"]
    assert set(group["implementations"]) == {"serial", "ray", "ray_flat", "pool", "ray_remote"}
    for label, entry in group["implementations"].items():
        assert entry["workers"] == 1
        assert entry["env_steps_per_outer_step"] == [2 * 64]  # every implementation did the work
        assert len(entry["step_seconds"]) == 1
        for key in (
            "tasks_per_second",
            "env_steps_per_second",
            "speedup_vs_serial",
            "parallel_efficiency",
            "throughput_vs_pool",
            "cpu_seconds_per_task",
            "busy_cores",
        ):
            assert positive(entry[key]), (label, key, entry[key])
        assert entry["construct_seconds"] >= 0
        if label != "ray_remote":  # worker pids of the plain ray.remote calls are not known
            assert len(entry["worker_nice"]) == 1 and isinstance(entry["worker_nice"][0], int)
    targets = {t["name"]: t for t in report["targets"]}
    assert set(targets) == {"ray2_vs_flat", "ray2_vs_serial", "ray2_vs_pool"}
    assert all(t["status"] == "n/a" for t in targets.values())  # no 2-worker group in this run


def test_scaling_speedup_compares_with_serial_and_pool_of_the_same_group():
    def entry(seconds: float, workers: int) -> dict[str, Any]:
        return {
            "workers": workers,
            "construct_seconds": 1.0,
            "warmup_seconds": 1.0,
            "step_seconds": [seconds],
            "env_steps_per_outer_step": [8 * 2048],
            "seconds_per_outer_step": {"median": seconds},
        }

    groups = [
        {
            "workers": 2,
            "implementations": {
                "serial": entry(8.0, 1),
                "ray": entry(4.2, 2),
                "pool": entry(4.0, 2),
            },
        }
    ]
    rows = summarize_groups(groups, tasks=8, inner_steps=2048)
    ray = groups[0]["implementations"]["ray"]
    assert ray["tasks_per_second"] == pytest.approx(8 / 4.2)
    assert ray["env_steps_per_second"] == pytest.approx(8 * 2048 / 4.2)
    assert ray["speedup_vs_serial"] == pytest.approx(8.0 / 4.2)
    assert ray["parallel_efficiency"] == pytest.approx(8.0 / 4.2 / 2)
    assert ray["throughput_vs_pool"] == pytest.approx(4.0 / 4.2)
    assert len(rows) == 3
    status = {t.name: t.status for t in scaling_targets(groups)}
    assert status == {"ray2_vs_flat": "n/a", "ray2_vs_serial": "MISS", "ray2_vs_pool": "MISS"}
    groups[0]["implementations"]["ray"] = entry(3.9, 2)
    groups[0]["implementations"]["ray_flat"] = entry(4.1, 2)  # every task's weights: slower
    summarize_groups(groups, tasks=8, inner_steps=2048)
    assert {t.name: t.status for t in scaling_targets(groups)} == {
        "ray2_vs_flat": "PASS",
        "ray2_vs_serial": "PASS",
        "ray2_vs_pool": "PASS",
    }
    groups[0]["implementations"]["ray_flat"] = entry(3.7, 2)  # partial sums 5% slower: a miss
    assert {t.name: t.status for t in scaling_targets(groups)}["ray2_vs_flat"] == "MISS"


def test_overhead_measures_noop_and_sleeping_actors(ray_session, tmp_path):
    report = run_bench(
        "overhead",
        tmp_path,
        "--workers",
        "1",
        "--tasks",
        "4",
        "--outer-steps",
        "3",
        "--actors",
        "2",
        "--sleep",
        "0.05",
        "--sleep-outer-steps",
        "2",
    )
    res = report["results"]
    for label in ("noop_serial", "noop_ray", "sleep_ray"):
        assert res[label]["step_seconds"]["n"] >= 2
        assert positive(res[label]["per_task_amortized_seconds"]["median"])
        assert positive(res[label]["per_task_amortized_seconds"]["p90"])
    assert positive(res["noop_ray"]["task_overhead_seconds"]["median"])
    assert res["sleep_ray"]["distinct_workers_used"] == 2  # one task on each simulated actor
    assert res["sleep_ray"]["step_seconds"]["min"] >= 0.05  # no step is shorter than the sleep
    assert math.isfinite(res["sleep_ray"]["beyond_sleep_seconds"]["median"])
    assert all(t["status"] in ("PASS", "MISS") for t in report["targets"])


def test_weights_reports_time_and_driver_memory_per_policy_size(ray_session, tmp_path):
    report = run_bench(
        "weights",
        tmp_path,
        "--sizes",
        "2e3,2e4",
        "--workers",
        "1",
        "--tasks",
        "3",
        "--outer-steps",
        "2",
    )
    sizes = report["results"]
    assert [r["target_parameters"] for r in sizes] == [2000, 20000]
    for r in sizes:
        assert abs(r["parameters"] - r["target_parameters"]) <= 0.05 * r["target_parameters"]
        assert r["copy_bytes"] == 4 * r["parameters"]  # float32 policy, no buffers
        for key in ("step_seconds", "broadcast_seconds", "meta_update_seconds", "to_numpy_seconds"):
            assert positive(r[key]["median"]), key
        assert r["samples"] > 0
        assert math.isfinite(r["private_peak_copies"]) and math.isfinite(r["rss_peak_copies"])
    assert all(t["status"] == "n/a" for t in report["targets"])  # no policy of 5M parameters here


def test_breakdown_splits_task_time_and_samples_every_worker(ray_session, tmp_path):
    report = run_bench(
        "breakdown", tmp_path, "--workers", "2", "--tasks", "3", "--outer-steps", "1", *TINY_PPO
    )
    res = report["results"]
    assert len(res["tasks"]) == 3
    for key in ("weight_fetch", "env_build", "model_ready", "learn", "total", "round_trip"):
        assert positive(res["components"][key]["median"]), key
    for task in res["tasks"]:
        parts = task["queue_wait"] + task["dispatch_transfer"]
        assert parts == pytest.approx(task["queue_plus_transfer"], abs=1e-9)
        assert task["round_trip"] >= task["total"]
    worker_pids = {w["pid"] for w in res["worker_info"]}
    memory = res["memory"]
    assert {m["pid"] for label, m in memory.items() if label.startswith("worker")} == worker_pids
    assert all(positive(m["peak_rss_bytes"]) for m in memory.values())
    (target,) = report["targets"]
    assert positive(target["value"])


def test_bad_options_exit_with_a_message_naming_the_option(tmp_path, capsys):
    assert cli_main(["scaling", "--workers", "0", "--out-dir", str(tmp_path)]) == 2
    assert "--workers" in capsys.readouterr().err
    assert cli_main(["breakdown", "--inner-steps", "0", "--out-dir", str(tmp_path)]) == 2
    assert "--inner-steps" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_policy_width_matches_the_requested_parameter_count():
    for target in (10_000, 100_000, 1_000_000, 10_000_000):
        width = width_for_parameters(target)
        assert abs(ppo_parameter_count(width) - target) / target < 0.01
        assert abs(ppo_parameter_count(width) - target) <= abs(
            ppo_parameter_count(width + 1) - target
        )


def test_first_task_on_each_worker_sets_the_transfer_estimate():
    def timing(total: float, round_trip: float) -> dict[str, float]:
        return {
            "weight_fetch": 0.001,
            "env_build": 0.0,
            "model_ready": 0.0,
            "learn": total,
            "total": total,
            "round_trip": round_trip,
        }

    record = {
        "outer_step": 1,
        "task_pids": [1, 2, 1],
        "task_timings": [timing(1.0, 1.011), timing(1.0, 1.021), timing(1.0, 2.051)],
    }
    rows = task_rows([record], workers=2)
    assert [r["first_on_worker"] for r in rows] == [True, True, False]
    assert rows[0]["queue_wait"] == 0.0 and rows[1]["queue_wait"] == 0.0
    assert rows[2]["dispatch_transfer"] == pytest.approx(0.015)  # median of 0.010 and 0.020
    assert rows[2]["queue_wait"] == pytest.approx(1.05 - 0.015)
