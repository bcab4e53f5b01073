"""The Reptile update against hand-computed values: plain step, schedules, ignored layers,
meta-optimizer path."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from conftest import cartpole_kwargs, weights_of

from distributed_reptile import AdaptedResult, ReptileMetaRL, linear_schedule
from distributed_reptile.schedules import ConstantSchedule, LinearSchedule, normalize_lr_schedule


def _results(meta: ReptileMetaRL, deltas: list[float]) -> list[AdaptedResult]:
    """One fake adapted result per delta: every parameter moved by that constant."""
    out = []
    for i, d in enumerate(deltas):
        weights = {
            n: (p.detach().numpy() + np.float32(d)) for n, p in meta.meta_policy.named_parameters()
        }
        out.append(
            AdaptedResult(meta_step=i, index=i, weights=weights, episode_returns=[], env_steps=0)
        )
    return out


def test_plain_step_is_phi_plus_lr_times_mean_delta():
    with ReptileMetaRL(**cartpole_kwargs(meta_lr=0.25)) as meta:
        before = weights_of(meta)
        meta.meta_update(iter(_results(meta, [1.0, 2.0, 6.0])), outer_step=0)
        after = weights_of(meta)
        for name in before:
            th.testing.assert_close(after[name], before[name] + 0.25 * 3.0, rtol=0, atol=1e-6)
        assert meta.last_update_norm == pytest.approx(
            0.25 * 3.0 * np.sqrt(sum(p.numel() for p in meta.meta_policy.parameters())), rel=1e-5
        )


def test_ignored_layers_are_left_out_of_the_update():
    with ReptileMetaRL(**cartpole_kwargs(ignored_layers=["action_net", "value_net"])) as meta:
        before = weights_of(meta)
        meta.meta_update(iter(_results(meta, [1.0])), outer_step=0)
        after = weights_of(meta)
        assert meta.ignored_params == {
            "action_net.weight",
            "action_net.bias",
            "value_net.weight",
            "value_net.bias",
        }
        for name in before:
            if name in meta.ignored_params:
                assert th.equal(after[name], before[name])
            else:
                assert not th.equal(after[name], before[name])


def test_unmatched_ignored_prefix_lists_the_available_names():
    with pytest.raises(
        ValueError, match=r"match no parameter.*mlp_extractor\.policy_net\.0\.weight"
    ):
        ReptileMetaRL(**cartpole_kwargs(ignored_layers=["log_std_typo"]))


def test_meta_optimizer_sgd_equals_the_plain_step():
    with ReptileMetaRL(**cartpole_kwargs(meta_lr=0.3)) as plain:
        plain.meta_update(iter(_results(plain, [1.0, -0.5])), outer_step=0)
        expected = weights_of(plain)
    with ReptileMetaRL(
        **cartpole_kwargs(meta_lr=0.3, use_meta_optimizer=True, meta_optimizer_cls=th.optim.SGD)
    ) as opt:
        opt.meta_update(iter(_results(opt, [1.0, -0.5])), outer_step=0)
        got = weights_of(opt)
    for name in expected:
        th.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def test_meta_optimizer_adam_keeps_state_and_respects_ignore_optimizer_params():
    kwargs = cartpole_kwargs(
        use_meta_optimizer=True,
        ignored_layers=["value_net"],
        ignore_optimizer_params=True,
        meta_optimizer_kwargs={"betas": (0.0, 0.999)},
    )
    with ReptileMetaRL(**kwargs) as meta:
        in_opt = {id(p) for g in meta.meta_optimizer.param_groups for p in g["params"]}
        names = {n for n, p in meta.meta_policy.named_parameters() if id(p) in in_opt}
        assert "value_net.weight" not in names and "action_net.weight" in names
        meta.meta_update(iter(_results(meta, [1.0])), outer_step=0)
        assert len(meta.meta_optimizer.state) == len(in_opt)
        # Adam's first step moves each parameter by ~lr in the direction of the mean delta.
        before = weights_of(meta)
        meta.meta_update(iter(_results(meta, [1.0])), outer_step=1)
        after = weights_of(meta)
        step = after["action_net.bias"] - before["action_net.bias"]
        assert th.all(step > 0)


def test_linear_schedule_reaches_its_end_at_the_last_outer_step():
    sched = linear_schedule(1.0, 0.0)
    assert isinstance(sched, LinearSchedule)
    assert [sched(s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert isinstance(normalize_lr_schedule(0.1), ConstantSchedule)
    with ReptileMetaRL(**cartpole_kwargs(outer_steps=5, meta_lr=sched)) as meta:
        assert [meta.get_meta_lr(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_callable_schedule_drives_the_optimizer_lr_only_when_it_changes():
    calls = []

    def schedule(step, total):
        calls.append((step, total))
        return 0.1 if step < 2 else 0.05

    with ReptileMetaRL(
        **cartpole_kwargs(outer_steps=4, meta_lr=schedule, use_meta_optimizer=True)
    ) as meta:
        for step in range(4):
            meta.meta_update(iter(_results(meta, [0.1])), outer_step=step)
            assert meta.meta_optimizer.param_groups[0]["lr"] == (0.1 if step < 2 else 0.05)
        assert all(total == 3 for _, total in calls)


def test_bad_meta_lr_type_is_refused():
    with pytest.raises(TypeError, match="meta_lr"):
        ReptileMetaRL(**cartpole_kwargs(meta_lr="0.1"))


def test_pointnav_config_adapts_with_sgd_and_keeps_log_std_out_of_the_meta_update():
    """The adaptation settings shipped in configs/pointnav_ppo.yaml: the inner loop runs plain SGD
    (one full-batch step per rollout), and the exploration noise never moves the meta policy."""
    from pathlib import Path

    from distributed_reptile.config import load_config

    repo = Path(__file__).resolve().parents[1]
    config = load_config(
        repo / "configs" / "pointnav_ppo.yaml",
        [
            "backend=serial",
            "num_workers=1",
            "verbose=0",
            "outer_steps=2",
            "task_batch_size=2",
            "inner_steps=400",
            "rl_algo_kwargs.n_steps=200",
            "rl_algo_kwargs.batch_size=200",
        ],
    )
    with ReptileMetaRL(**config.trainer_kwargs()) as meta:
        assert isinstance(meta.meta_algo.policy.optimizer, th.optim.SGD)
        before = weights_of(meta)
        assert th.all(before["log_std"] == -1.0)
        meta.learn()
        after = weights_of(meta)
        assert meta.step_records[-1]["outer_step"] == 2
    assert th.equal(after["log_std"], before["log_std"])
    assert any(not th.equal(after[k], before[k]) for k in before if k != "log_std")
