"""``bench cluster`` end to end with tiny settings: a real 3-node Ray cluster in network namespaces
(veth pairs into a bridge), both modes, the result file's fields, and nothing left running."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import psutil
import pytest
from multinode import namespace_support

from distributed_reptile.bench import build_parser, cli_main
from distributed_reptile.bench.cluster import plan
from distributed_reptile.bench.cluster_driver import MODES
from distributed_reptile.bench.common import BenchInputError, parse_choice_list, parse_int_list
from distributed_reptile.settings import tasks_per_call_arg

NO_NAMESPACES = namespace_support()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


def test_the_default_sweep_skips_what_does_not_fit_and_says_why() -> None:
    args = build_parser().parse_args(["cluster", "--max-step-gib", "12"])
    args.task_list = parse_int_list(args.tasks, "--tasks")
    args.size_list = parse_int_list(args.sizes, "--sizes")
    args.mode_list = parse_choice_list(args.modes, MODES, "--modes")
    groups, skipped = plan(args)
    assert len(groups) == 3 * 4 * 3 - 1
    (skip,) = skipped  # 1024 tasks x 10M parameters, every task's weights to the driver
    assert (skip["mode"], skip["params_target"], skip["batch"]) == ("flat", 10_000_000, 1024)
    assert "41.0 GB" in skip["reason"] and "--max-step-gib" in skip["reason"]
    args.max_work = 3e9  # B x P: a shorter run
    _, skipped = plan(args)
    assert {(s["mode"], s["batch"]) for s in skipped} == {
        ("flat", 1024), ("reduced", 1024), ("node", 1024)
    }  # fmt: skip
    assert "--max-work" in next(s for s in skipped if s["mode"] == "node")["reason"]
    assert parse_choice_list("node, flat", MODES, "--modes") == ["flat", "node"]
    with pytest.raises(BenchInputError, match="--modes takes"):
        parse_choice_list("flat,nodes", MODES, "--modes")
    parsed = build_parser().parse_args(["cluster", "--tasks-per-call", "guided"])
    assert parsed.tasks_per_call == "guided" and parsed.slow_factor == 1.0
    assert build_parser().parse_args(["cluster", "--tasks-per-call", "16"]).tasks_per_call == 16
    for bad in ("balanced", "0"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["cluster", "--tasks-per-call", bad])
    with pytest.raises(argparse.ArgumentTypeError, match="'auto' .* or 'guided'"):
        tasks_per_call_arg("balanced")


@pytest.mark.multinode
@pytest.mark.skipif(NO_NAMESPACES is not None, reason=f"needs network namespaces: {NO_NAMESPACES}")
def test_cluster_benchmark_runs_every_mode_and_leaves_nothing(tmp_path: Path) -> None:
    argv = ["cluster", "--output", str(tmp_path), "--nodes", "2", "--workers-per-node", "1"]
    argv += ["--tasks", "4,8", "--sizes", "1e4", "--sleep", "0.05", "--outer-steps", "2"]
    assert cli_main(argv) == 0
    report = json.loads((tmp_path / "cluster.json").read_text(encoding="utf-8"))
    assert (tmp_path / "cluster.png").read_bytes()[:8] == PNG_MAGIC
    assert report["benchmark"] == "cluster"
    assert report["machine"]["cpu_count_logical"] >= 1
    assert {"torch", "ray", "stable-baselines3"} <= set(report["versions"])
    assert report["settings"]["nodes"] == 2 and report["settings"]["workers"] == 2

    network = report["network"]
    per_node = network["per_node_bytes"]
    assert isinstance(per_node, bool)
    if not per_node:  # the loopback fallback says why
        assert network["fallback_reason"] and network["note"]
    assert report["skipped"] == []
    assert report["stats_bytes_per_task"] > 0

    results = report["results"]
    assert sorted((r["mode"], r["batch"]) for r in results) == [
        ("flat", 4), ("flat", 8), ("node", 4), ("node", 8), ("reduced", 4), ("reduced", 8)
    ]  # fmt: skip
    for r in results:
        assert 9_000 <= r["parameters"] <= 11_000
        assert r["tasks_per_call"] == (1 if r["mode"] == "flat" else r["batch"] // 2)
        assert r["calls"] == (r["batch"] if r["mode"] == "flat" else 2)
        assert len(r["steps"]) == 2
        assert r["driver_cpu_seconds"]["median"] > 0
        assert r["step_seconds"]["median"] >= 0.05 * r["batch"] / 2
        assert _finite(r["beyond_sleep_seconds"]["median"])
        assert r["peak_rss_bytes"]["max"] > 0
        # the task-source actor's CPU (found on the head; a few draws stay under the kernel's
        # 10 ms tick) and the driver's wait for each step's tasks
        assert all(_finite(s["source_cpu_seconds"]) for s in r["steps"])
        assert r["source_cpu_seconds"]["min"] >= 0
        assert 0 <= r["sample_seconds"]["max"] < r["step_seconds"]["max"]
        for step in r["steps"]:
            # one worker on each node, none on the head
            assert sorted(step["tasks_per_node"]) == ["node1", "node2"]
            assert sum(step["tasks_per_node"].values()) == r["batch"]
            if per_node:
                assert set(step["nodes"]) == {"node1", "node2"}
                # the tasks' weights (flat) or the partial sums (reduced, node) came in
                assert step["driver_node_in_bytes"] >= r["parameters"] * 4
        if per_node:
            assert r["driver_node_in_bytes"]["median"] > 0
            for node in r["nodes"].values():
                assert node["in_bytes"] > 0 and node["out_bytes"] > 0
    flat8 = next(r for r in results if r["mode"] == "flat" and r["batch"] == 8)
    if per_node:  # every task's float32 weights reached the driver's node
        assert flat8["driver_node_in_bytes"]["median"] >= 8 * flat8["parameters"] * 4
        # one sum per outer step instead of one per call (two calls here)
        node8, reduced8 = (
            next(r for r in results if r["mode"] == m and r["batch"] == 8)["driver_node_in_bytes"]
            for m in ("node", "reduced")
        )
        assert node8["median"] < reduced8["median"]

    assert report["weights_identical"] is True
    pairs = report["weights_check"]["pairs"]
    assert (
        sorted(tuple(p["modes"]) for p in pairs)
        == [("flat", "node")] * 2 + [("flat", "reduced")] * 2
    )
    assert set(report["settings"]["modes"]) == {"flat", "reduced", "node"}
    names = {t["name"] for t in report["targets"]}
    assert {"bytes_p10000_b4", "cpu_b1024_p10k", "cpu_b64_p10m"} <= names
    assert "source_keeps_up_b1024_p10000" in names  # not measured here (no B = 1024)
    for t in report["targets"]:
        assert t["status"] in ("PASS", "MISS", "n/a")

    assert report["cluster"]["processes_left"] == []
    assert sorted(report["cluster"]["trainers"][0]["workers_per_node"]) == ["node1", "node2"]
    assert _processes_mentioning(report["cluster"]["workdir"]) == []
    assert not Path(report["cluster"]["workdir"]).exists()
