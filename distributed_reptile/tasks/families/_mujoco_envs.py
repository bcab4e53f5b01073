"""HalfCheetah env classes for the velocity and direction families (imports MuJoCo).

Imported lazily by :mod:`distributed_reptile.tasks.families.halfcheetah` and by
``gymnasium.make("distributed_reptile/HalfCheetahVel-v0")``: importing this module without MuJoCo
raises an ``ImportError`` that says which extra to install.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.utils import EzPickle

from distributed_reptile.tasks.families._common import mujoco_import_error

try:
    import mujoco  # noqa: F401
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
except (ImportError, gym.error.DependencyNotInstalled) as exc:  # pragma: no cover - env-dependent
    raise mujoco_import_error("The HalfCheetah task families", exc=exc) from exc

#: Control cost weight of the meta-RL HalfCheetah tasks (MAML/ProMP: ``0.5 * 1e-1``).
CTRL_COST_WEIGHT = 0.05


class HalfCheetahVelEnv(HalfCheetahEnv):
    """HalfCheetah-v5 rewarded for running at ``target_velocity`` (forward, m/s).

    ``reward = -|x_velocity - target_velocity| - ctrl_cost_weight * ||action||^2``.
    Observations, dynamics and reset noise are HalfCheetah-v5's.

    :param target_velocity: the velocity to track.
    :param ctrl_cost_weight: weight of the squared-action cost.
    :param kwargs: passed to :class:`HalfCheetahEnv` (e.g. ``render_mode``, ``reset_noise_scale``).
    """

    def __init__(
        self,
        target_velocity: float = 1.0,
        ctrl_cost_weight: float = CTRL_COST_WEIGHT,
        **kwargs: Any,
    ) -> None:
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        EzPickle.__init__(
            self, target_velocity=target_velocity, ctrl_cost_weight=ctrl_cost_weight, **kwargs
        )
        self.target_velocity = float(target_velocity)

    def _get_rew(self, x_velocity: float, action: Any) -> tuple[float, dict[str, float]]:
        forward_reward = -abs(float(x_velocity) - self.target_velocity)
        ctrl_cost = float(self.control_cost(action))
        reward_info = {
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "target_velocity": self.target_velocity,
        }
        return forward_reward - ctrl_cost, reward_info


class HalfCheetahDirEnv(HalfCheetahEnv):
    """HalfCheetah-v5 rewarded for running forward (``direction=+1``) or backward (``-1``).

    ``reward = direction * x_velocity - ctrl_cost_weight * ||action||^2``.

    :param direction: ``+1`` (forward) or ``-1`` (backward).
    :param ctrl_cost_weight: weight of the squared-action cost.
    :param kwargs: passed to :class:`HalfCheetahEnv`.
    """

    def __init__(
        self,
        direction: int = 1,
        ctrl_cost_weight: float = CTRL_COST_WEIGHT,
        **kwargs: Any,
    ) -> None:
        if direction not in (-1, 1):
            raise ValueError(f"direction must be +1 (forward) or -1 (backward), got {direction!r}.")
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        EzPickle.__init__(self, direction=direction, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self.direction = int(direction)

    def _get_rew(self, x_velocity: float, action: Any) -> tuple[float, dict[str, float]]:
        forward_reward = self.direction * float(x_velocity)
        ctrl_cost = float(self.control_cost(action))
        reward_info = {
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "direction": self.direction,
        }
        return forward_reward - ctrl_cost, reward_info
