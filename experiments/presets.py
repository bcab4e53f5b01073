"""Named meta-training settings for the experiments (one dict per setting, read top to bottom).

Each preset gives the inner learner (PPO keyword arguments, the same for meta-training, for the
adaptation at evaluation time and for every initialisation), the Reptile outer loop, and the
keyword arguments of the multi-task baseline (plain PPO with its usual optimizer, same
architecture). ``ignored_layers=["log_std"]`` keeps the exploration noise out of the meta update.
"""

from __future__ import annotations

import copy
from typing import Any

import torch as th

from distributed_reptile import linear_schedule

NET = {"net_arch": [64, 64]}


def _ppo(n_steps: int, batch_size: int, n_epochs: int, lr: float, **extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "policy": "MlpPolicy",
        "n_steps": n_steps,
        "batch_size": batch_size,
        "n_epochs": n_epochs,
        "learning_rate": lr,
        "policy_kwargs": dict(NET),
    }
    policy_kwargs = extra.pop("policy_kwargs", {})
    kwargs["policy_kwargs"].update(policy_kwargs)
    kwargs.update(extra)
    return kwargs


def _ml1(env_name: str) -> dict[str, Any]:
    """Meta-World ML1 ``env_name`` (its 50 train / 50 test tasks, 500-step episodes, rewards of 0-10
    per step): the HalfCheetah recipe's shape (one full-batch step per rollout of 4 episodes, two
    rollouts per task, fixed exploration noise kept out of the meta update, plain averaging) with
    Adam (betas (0, 0.999)) instead of SGD: Adam's step does not shrink when the global gradient
    clipping is driven by the value loss of returns in the hundreds."""
    return {
        "family": "metaworld_ml1",
        "task_params": {"env_name": env_name},
        "rl_algo_kwargs": _ppo(
            2000,
            2000,
            1,
            1e-3,
            policy_kwargs={"log_std_init": -1.0, "optimizer_kwargs": {"betas": (0.0, 0.999)}},
        ),
        "inner_rollouts": 2,
        "task_batch_size": 8,
        "meta_lr": 1.0,
        "ignored_layers": ["log_std"],
    }


def _halfcheetah(family: str, rollouts: int) -> dict[str, Any]:
    """HalfCheetah (velocity or direction), point navigation's best recipe carried over: plain SGD
    0.1, one full-batch policy-gradient step per rollout of 2,000 steps = 10 episodes (MAML uses 20
    trajectories of 200 steps and one step), ``rollouts`` rollouts per task, small fixed exploration
    noise kept out of the meta update, plain averaging."""
    return {
        "family": family,
        "rl_algo_kwargs": _ppo(
            2000,
            2000,
            1,
            0.1,
            max_grad_norm=10.0,
            vf_coef=0.05,
            policy_kwargs={"optimizer_class": th.optim.SGD, "log_std_init": -1.0},
        ),
        "inner_rollouts": rollouts,
        "task_batch_size": 8,
        "meta_lr": 1.0,
        "ignored_layers": ["log_std"],
    }


PRESETS: dict[str, dict[str, Any]] = {
    # The FACTS.md setting, smaller: Adam 3e-4, 10 epochs, everything (log_std included) averaged.
    "pointnav_adam3e-4": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(512, 64, 10, 3e-4),
        "inner_rollouts": 4,
        "task_batch_size": 5,
        "meta_lr": 1.0,
        "ignored_layers": [],
    },
    # Same, log_std kept out of the meta update.
    "pointnav_adam3e-4_nostd": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(512, 64, 10, 3e-4),
        "inner_rollouts": 4,
        "task_batch_size": 5,
        "meta_lr": 1.0,
        "ignored_layers": ["log_std"],
    },
    # An inner optimizer chosen for adaptation: Adam without momentum (Reptile's few-shot setting)
    # and a ten times larger step, log_std out of the meta update, annealed meta step.
    "pointnav_adam3e-3_nostd": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(
            500, 100, 5, 3e-3, policy_kwargs={"optimizer_kwargs": {"betas": (0.0, 0.999)}}
        ),
        "inner_rollouts": 2,
        "task_batch_size": 8,
        "meta_lr": linear_schedule(1.0, 0.1),
        "ignored_layers": ["log_std"],
    },
    # Plain SGD with a large step, one full-batch policy-gradient step per rollout (MAML's 2D nav
    # recipe: one step, 20 episodes); gradient norm clipped so the value loss cannot blow up.
    "pointnav_sgd_nostd": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(
            1000,
            1000,
            1,
            0.1,
            max_grad_norm=10.0,
            vf_coef=0.05,
            policy_kwargs={"optimizer_class": th.optim.SGD, "optimizer_kwargs": {}},
        ),
        "inner_rollouts": 2,
        "task_batch_size": 8,
        "meta_lr": linear_schedule(1.0, 0.1),
        "ignored_layers": ["log_std"],
    },
    # A strong inner loop (four SGD policy-gradient steps) so that each adapted policy really
    # moves towards its goal, a smaller fixed exploration noise, plain averaging (meta_lr 1).
    "pointnav_sgd4_ls-1": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(
            1000,
            1000,
            1,
            0.03,
            max_grad_norm=10.0,
            vf_coef=0.05,
            policy_kwargs={"optimizer_class": th.optim.SGD, "log_std_init": -1.0},
        ),
        "inner_rollouts": 4,
        "task_batch_size": 8,
        "meta_lr": 1.0,
        "ignored_layers": ["log_std"],
    },
    # A stronger inner loop still: SGD 0.1 (one full-batch step per rollout) for eight rollouts
    # during meta-training, so that each task is nearly solved before the weights are averaged.
    "pointnav_sgd8_lr0.1_ls-1": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(
            1000,
            1000,
            1,
            0.1,
            max_grad_norm=10.0,
            vf_coef=0.05,
            policy_kwargs={"optimizer_class": th.optim.SGD, "log_std_init": -1.0},
        ),
        "inner_rollouts": 8,
        "task_batch_size": 8,
        "meta_lr": 1.0,
        "ignored_layers": ["log_std"],
    },
    "pointnav_sgd4_lr0.1_ls-1": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(
            1000,
            1000,
            1,
            0.1,
            max_grad_norm=10.0,
            vf_coef=0.05,
            policy_kwargs={"optimizer_class": th.optim.SGD, "log_std_init": -1.0},
        ),
        "inner_rollouts": 4,
        "task_batch_size": 8,
        "meta_lr": 1.0,
        "ignored_layers": ["log_std"],
    },
    # Adam without momentum, five epochs per rollout, small fixed noise, four rollouts, averaging.
    "pointnav_adam1e-3_ls-2": {
        "family": "pointnav",
        "rl_algo_kwargs": _ppo(
            500,
            100,
            5,
            1e-3,
            policy_kwargs={"log_std_init": -2.0, "optimizer_kwargs": {"betas": (0.0, 0.999)}},
        ),
        "inner_rollouts": 4,
        "task_batch_size": 8,
        "meta_lr": 1.0,
        "ignored_layers": ["log_std"],
    },
    # HalfCheetah velocity, point navigation's best recipe carried over (see _halfcheetah).
    "halfcheetah_vel_sgd2_lr0.1_ls-1": _halfcheetah("halfcheetah_vel", 2),
    # The same with four rollouts per task during meta-training (point navigation adapted only
    # once each task's inner loop took several large steps).
    "halfcheetah_vel_sgd4_lr0.1_ls-1": _halfcheetah("halfcheetah_vel", 4),
    # HalfCheetah direction (forward or backward), the same recipe.
    "halfcheetah_dir_sgd2_lr0.1_ls-1": _halfcheetah("halfcheetah_dir", 2),
    # Meta-World ML1 reach-v3 and push-v3 (see _ml1).
    "ml1_reach_adam1e-3_ls-1": _ml1("reach-v3"),
    "ml1_push_adam1e-3_ls-1": _ml1("push-v3"),
    # CartPole with random physics, the FACTS.md setting (smaller): PPO with Adam 3e-4, 10 epochs,
    # four rollouts per task, five tasks per step, plain averaging.
    "cartpole_adam3e-4": {
        "family": "cartpole",
        "rl_algo_kwargs": _ppo(512, 64, 10, 3e-4),
        "inner_rollouts": 4,
        "task_batch_size": 5,
        "meta_lr": 1.0,
        "ignored_layers": [],
    },
}

#: Multi-task baseline: plain PPO with SB3's usual optimizer (Adam 3e-4), the preset's architecture.
MULTITASK_PPO: dict[str, Any] = {
    "n_steps": 512,
    "batch_size": 64,
    "n_epochs": 10,
    "learning_rate": 3e-4,
}


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name``."""
    if name not in PRESETS:
        raise KeyError(f"Unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def multitask_kwargs(preset: dict[str, Any]) -> dict[str, Any]:
    """The multi-task baseline's PPO keyword arguments: the preset's architecture (net_arch,
    log_std_init), SB3's usual Adam optimizer, unless the preset names its own."""
    if "multitask_kwargs" in preset:
        return copy.deepcopy(preset["multitask_kwargs"])
    policy_kwargs = {
        k: v
        for k, v in preset["rl_algo_kwargs"].get("policy_kwargs", {}).items()
        if k not in ("optimizer_class", "optimizer_kwargs")
    }
    return {"policy": "MlpPolicy", **MULTITASK_PPO, "policy_kwargs": policy_kwargs}
