"""Checkpoints: complete, atomic, verified on load, readable without unpickling code."""

from __future__ import annotations

import json

import pytest
import torch as th
from conftest import cartpole_kwargs, weights_of
from safetensors.torch import load_file
from stable_baselines3 import PPO

from distributed_reptile import CheckpointError, ReptileMetaRL
from distributed_reptile.checkpoint import list_checkpoints, write_checkpoint


def test_checkpoint_folder_holds_everything_to_resume(tmp_path):
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=2, use_meta_optimizer=True)) as meta:
        meta.learn(save_path=str(tmp_path), save_prefix="ck")
        expected = weights_of(meta)
    folder = tmp_path / "ck_outer_2"
    names = {p.name for p in folder.iterdir()}
    assert {
        "meta_policy.safetensors",
        "meta_optimizer.pt",
        "task_source.pkl",
        "config.pkl",
        "trainer_state.json",
        "meta_algo.zip",
        "MANIFEST.json",
    } <= names
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["num_outer_steps"] == 2 and state["seed"] == 0
    assert {"torch", "ray", "stable-baselines3", "gymnasium"} <= set(state["versions"])
    weights = load_file(str(folder / "meta_policy.safetensors"))
    assert all(th.equal(weights[k], expected[k]) for k in expected)
    assert th.load(folder / "meta_optimizer.pt", weights_only=True)["state"]
    sb3 = PPO.load(folder / "meta_algo.zip")
    assert all(th.equal(sb3.policy.state_dict()[k], expected[k]) for k in expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], (
        "temporary folders left behind"
    )


def test_save_freq_and_keep_last(tmp_path):
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=4, task_batch_size=1, inner_steps=64)) as meta:
        meta.learn(save_freq=1, save_path=str(tmp_path), save_prefix="m", keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path, "m")] == ["m_outer_3", "m_outer_4"]


@pytest.fixture()
def saved(tmp_path):
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=1, task_batch_size=1, inner_steps=64)) as meta:
        meta.learn(save_path=str(tmp_path), save_prefix="m")
    return tmp_path / "m_outer_1"


def test_truncated_checkpoint_is_refused(saved):
    path = saved / "meta_policy.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="corrupted: meta_policy.safetensors"):
        ReptileMetaRL.load(saved)


def test_checkpoint_without_manifest_is_refused_as_incomplete(saved):
    (saved / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        ReptileMetaRL.load(saved)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(saved):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def crash(tmp):
        (tmp / "meta_policy.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(saved, crash)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]
    ReptileMetaRL.load(saved).close()


def test_loaded_trainer_matches_saved_weights(saved):
    with ReptileMetaRL.load(saved) as meta:
        assert meta.num_outer_steps == 1
        saved_weights = load_file(str(saved / "meta_policy.safetensors"))
        assert all(th.equal(saved_weights[k], v) for k, v in weights_of(meta).items())
