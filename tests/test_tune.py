"""Ray Tune sweeps: trials run their own workers in placement groups, report every outer step,
checkpoint through Tune, and the best checkpoint loads into a trainer."""

from __future__ import annotations

import functools
import time

import pytest
from conftest import cartpole_kwargs
from ray import tune

from distributed_reptile import InnerLearner, ReptileMetaRL
from distributed_reptile.tune import (
    apply_overrides,
    best_checkpoint,
    parse_domain,
    results_table,
    run_sweep,
    trial_resources,
)


def test_text_domains_and_dotted_overrides():
    assert isinstance(parse_domain("loguniform(0.05, 1.0)"), tune.search.sample.Float)
    assert parse_domain("choice([2, 4])").categories == [2, 4]
    assert parse_domain(0.3) == 0.3
    with pytest.raises(ValueError, match="arguments"):
        parse_domain("uniform(0.1, oops)")
    base = {"meta_lr": 1.0, "rl_algo_kwargs": {"policy": "MlpPolicy", "n_steps": 64}}
    out = apply_overrides(base, {"meta_lr": 0.2, "rl_algo_kwargs.learning_rate": 1e-3})
    assert out["rl_algo_kwargs"] == {"policy": "MlpPolicy", "n_steps": 64, "learning_rate": 1e-3}
    assert base["rl_algo_kwargs"] == {"policy": "MlpPolicy", "n_steps": 64}  # untouched


def test_trial_placement_group_has_a_bundle_per_worker():
    pgf = trial_resources(3, {"num_cpus": 1, "num_gpus": 0.25})
    assert pgf.bundles == [{"CPU": 0.5}] + [{"CPU": 1.0, "GPU": 0.25}] * 3


def test_two_trial_sweep_reports_every_step_and_best_checkpoint_loads(tmp_path, ray_session):
    kwargs = cartpole_kwargs(
        backend="ray", num_workers=1, outer_steps=2, task_batch_size=2, inner_steps=64
    )
    t0 = time.perf_counter()
    results = run_sweep(
        kwargs,
        {"meta_lr": "grid_search([0.1, 1.0])"},
        storage_path=str(tmp_path),
        name="sweep",
        num_samples=1,
        metric="ep_return_mean",
        mode="max",
        grace_period=2,
    )
    wall = time.perf_counter() - t0
    assert len(results) == 2 and not results.errors
    for result in results:
        history = result.metrics_dataframe
        assert list(history["outer_step"]) == [1, 2]
        assert result.checkpoint is not None
    table = results_table(results, "ep_return_mean", "max", ["meta_lr"])
    assert "meta_lr" in table and table.count("OK") == 2
    print(f"\n{table}\nsweep wall time: {wall:.1f}s")
    folder = best_checkpoint(results, "ep_return_mean", "max")
    with ReptileMetaRL.load(folder, backend="serial") as meta:
        assert meta.num_outer_steps == 2
        assert meta.current_meta_lr in (0.1, 1.0)


def test_unknown_search_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not trainer settings"):
        run_sweep(cartpole_kwargs(), {"learning_rat": "uniform(0, 1)"}, storage_path=str(tmp_path))


class FailOnceLearner(InnerLearner):
    """Raises in the inner loop of meta step 4 the first time (a marker file remembers)."""

    def __init__(self, *args, marker: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marker = marker

    def run(self, job, meta_weights):
        import os

        if job.spec.meta_step == 4 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError("transient failure")
        return super().run(job, meta_weights)


def test_failed_trial_resumes_from_its_tune_checkpoint_exactly(tmp_path, ray_session):
    from conftest import assert_same_weights, weights_of

    marker = tmp_path / "failed_once"
    learner_cls = functools.partial(FailOnceLearner, marker=str(marker))
    kwargs = cartpole_kwargs(num_workers=1, outer_steps=3, task_batch_size=2, inner_steps=64)
    results = run_sweep(
        {**kwargs, "inner_learner_cls": learner_cls},
        {"meta_lr": 0.5},
        storage_path=str(tmp_path / "tune"),
        num_samples=1,
        max_failures=1,
    )
    assert marker.exists(), "the failure never happened"
    assert not results.errors
    with ReptileMetaRL(**kwargs) as undisturbed:
        undisturbed.learn()
        expected = weights_of(undisturbed)
    with ReptileMetaRL.load(
        best_checkpoint(results, "ep_return_mean", "max"), backend="serial"
    ) as resumed:
        assert resumed.num_outer_steps == 3
        assert_same_weights(expected, weights_of(resumed))


def test_tune_command_sweeps_a_config_and_prints_the_table(tmp_path, ray_session, capsys):
    import json

    from distributed_reptile.cli import main

    status = main(
        [
            "tune",
            "configs/smoke.yaml",
            "--set",
            "num_workers=1",
            "--set",
            "outer_steps=2",
            "--set",
            "task_batch_size=2",
            "--set",
            "search_space.meta_lr=choice([0.5, 1.0])",
            "--set",
            "tune.grace_period=2",
            "--num-samples",
            "2",
            "--output",
            str(tmp_path / "sweep"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "meta_lr" in out and out.count("OK") == 2
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    with ReptileMetaRL.load(best["checkpoint"], backend="serial") as meta:
        assert meta.num_outer_steps == 2


def test_tune_command_without_search_space_exits_2(capsys):
    from distributed_reptile.tune import cli_main

    assert cli_main(["configs/smoke.yaml"]) == 2
    assert "no search_space" in capsys.readouterr().err
