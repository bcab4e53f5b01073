"""A custom first-order method trains, checkpoints, resumes, is evaluated and tuned as itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_same_weights, cartpole_kwargs, weights_of
from custom_meta import ReturnWeightedReptile

from distributed_reptile import BaseMetaAlgorithm, CheckpointError, ReptileMetaRL, load_trainer
from distributed_reptile.checkpoint import recorded_class
from distributed_reptile.cli import main

REPO = Path(__file__).resolve().parents[1]
CUSTOM = "custom_meta:ReturnWeightedReptile"


def _run(cls: type, **overrides) -> dict:
    with cls(**cartpole_kwargs(**overrides)) as meta:
        meta.learn()
        return weights_of(meta)


def test_its_update_differs_from_reptiles_and_is_the_same_on_ray(ray_session):
    custom = _run(ReturnWeightedReptile)
    reptile = _run(ReptileMetaRL)
    assert any(not (custom[k] == reptile[k]).all() for k in custom)
    assert_same_weights(custom, _run(ReturnWeightedReptile, backend="ray", num_workers=2))


def test_a_checkpoint_loads_and_resumes_as_its_own_class(tmp_path):
    uninterrupted = _run(ReturnWeightedReptile)
    with ReturnWeightedReptile(**cartpole_kwargs()) as meta:
        meta.learn(outer_steps=1, save_path=str(tmp_path))
    folder = tmp_path / "meta_ckpt_outer_1"
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["algorithm_class"] == CUSTOM
    for loader in (load_trainer, BaseMetaAlgorithm.load, ReturnWeightedReptile.load):
        with loader(folder, outer_steps=3) as resumed:
            assert type(resumed) is ReturnWeightedReptile
    with load_trainer(folder, outer_steps=3) as resumed:
        resumed.learn(reset_num_timesteps=False)
        assert_same_weights(weights_of(resumed), uninterrupted)
    with pytest.raises(CheckpointError, match="not a ReptileMetaRL"):
        ReptileMetaRL.load(folder)


def test_a_class_that_cannot_be_imported_is_refused_clearly():
    with pytest.raises(CheckpointError, match="cannot be imported here.*PYTHONPATH"):
        recorded_class({"algorithm_class": "no_such_pkg.meta:MyMeta"}, BaseMetaAlgorithm)
    with pytest.raises(CheckpointError, match="load it with MyMeta.load"):
        recorded_class({"algorithm_class": "MyMeta"}, ReptileMetaRL)


def _config(tmp_path: Path) -> Path:
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data.update(algorithm=CUSTOM, backend="serial", verbose=0, outer_steps=2)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_resume_and_evaluate_commands_use_the_custom_class(tmp_path):
    config = _config(tmp_path)
    assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "meta_ckpt_outer_2"
    # a config that does not name the algorithm resumes the checkpoint's own class
    plain = yaml.safe_load(config.read_text())
    del plain["algorithm"]
    plain["outer_steps"] = 3
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    rc = main(
        [
            "train",
            str(tmp_path / "plain.yaml"),
            "--resume",
            str(ckpt),
            "--output",
            str(tmp_path / "resumed"),
        ]
    )
    assert rc == 0
    resolved = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())
    assert resolved["algorithm"] == CUSTOM
    last = tmp_path / "resumed" / "checkpoints" / "meta_ckpt_outer_3"
    assert json.loads((last / "trainer_state.json").read_text())["algorithm_class"] == CUSTOM
    out = tmp_path / "eval"
    args = ["evaluate", str(last), "--backend", "serial", "--tasks", "2", "--episodes", "1"]
    assert main([*args, "--budgets", "0", "1", "--out", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["metadata"]["algorithm"] == CUSTOM


def test_tune_trials_build_the_configured_class(tmp_path, ray_session):
    from distributed_reptile.tune import best_checkpoint, run_sweep

    kwargs = cartpole_kwargs(backend="ray", num_workers=1, outer_steps=1, task_batch_size=2)
    results = run_sweep(
        kwargs,
        {"meta_lr": "grid_search([0.5])"},
        storage_path=str(tmp_path),
        num_samples=1,
        algorithm=CUSTOM,
    )
    assert not results.errors
    folder = best_checkpoint(results, "ep_return_mean", "max")
    assert json.loads((folder / "trainer_state.json").read_text())["algorithm_class"] == CUSTOM
    with load_trainer(folder, backend="serial") as meta:
        assert type(meta) is ReturnWeightedReptile
