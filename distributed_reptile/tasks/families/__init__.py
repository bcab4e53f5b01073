"""Built-in meta-RL task families: ``make_<family>_task(random_seed, split="train", ...)``.

Each ``make_*_task`` returns ``(env, info)`` and can be passed as ``task_callable`` to
:class:`~distributed_reptile.tasks.TaskGenerator`; ``split="test"`` draws held-out tasks, disjoint
from ``"train"`` (each module's docstring says how), except for the two-task HalfCheetah direction
family. :data:`FAMILIES` maps a family name to its function, :func:`held_out_tasks` builds test tasks
for evaluation, and importing this package registers the ``distributed_reptile/...`` gymnasium ids
(:mod:`~distributed_reptile.tasks.families.registration`).

The HalfCheetah and Meta-World families need ``pip install "distributed-reptile[mujoco]"``; their
functions import MuJoCo only when called, and ``HalfCheetahVelEnv`` / ``HalfCheetahDirEnv`` are
loaded on first access.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from distributed_reptile.tasks.families.cartpole import CartPolePhysicsEnv, make_cartpole_task
from distributed_reptile.tasks.families.halfcheetah import (
    make_halfcheetah_dir_task,
    make_halfcheetah_vel_task,
)
from distributed_reptile.tasks.families.metaworld_ml1 import make_metaworld_ml1_task
from distributed_reptile.tasks.families.pendulum import PendulumPhysicsEnv, make_pendulum_task
from distributed_reptile.tasks.families.pointnav import PointNavEnv, make_pointnav_task
from distributed_reptile.tasks.families.registration import ENV_SPECS, register_families
from distributed_reptile.tasks.spec import TaskCallable

#: Family name -> ``make_<family>_task``.
FAMILIES: dict[str, TaskCallable] = {
    "cartpole": make_cartpole_task,
    "pendulum": make_pendulum_task,
    "pointnav": make_pointnav_task,
    "halfcheetah_vel": make_halfcheetah_vel_task,
    "halfcheetah_dir": make_halfcheetah_dir_task,
    "metaworld_ml1": make_metaworld_ml1_task,
}
#: Families that need the ``mujoco`` extra.
MUJOCO_FAMILIES = ("halfcheetah_vel", "halfcheetah_dir", "metaworld_ml1")

_LAZY_ENV_CLASSES = ("HalfCheetahVelEnv", "HalfCheetahDirEnv")


def held_out_seeds(n: int, seed: int = 0) -> list[int]:
    """The ``n`` seeds :func:`held_out_tasks` uses: ``seed, seed + 1, ..., seed + n - 1``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    return [int(seed) + i for i in range(n)]


def held_out_tasks(
    family: str, n: int, seed: int = 0, **params: Any
) -> list[tuple[gym.Env, dict[str, Any]]]:
    """``n`` test-split tasks of ``family``, as ``(env, info)`` pairs, for evaluation.

    Task ``i`` is ``FAMILIES[family](random_seed=seed + i, split="test", **params)``, so the same
    arguments always give the same tasks, and a static
    ``TaskGenerator(tasks=held_out_tasks(...))`` can evaluate on them. For ``"metaworld_ml1"``,
    ``seed=0, n=50`` is exactly Meta-World's test split.

    :param params: extra arguments of the family's function (e.g. ``env_name="push-v3"``).
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown task family {family!r}: use one of {', '.join(FAMILIES)}.")
    make = FAMILIES[family]
    return [make(random_seed=s, split="test", **params) for s in held_out_seeds(n, seed)]


def __getattr__(name: str) -> Any:
    if name in _LAZY_ENV_CLASSES:
        from distributed_reptile.tasks.families import halfcheetah

        return getattr(halfcheetah._envs(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_families()

# HalfCheetahVelEnv / HalfCheetahDirEnv are left out of __all__ so that a star import works
# without MuJoCo; access them as attributes.
__all__ = [
    "ENV_SPECS",
    "FAMILIES",
    "MUJOCO_FAMILIES",
    "CartPolePhysicsEnv",
    "PendulumPhysicsEnv",
    "PointNavEnv",
    "held_out_seeds",
    "held_out_tasks",
    "make_cartpole_task",
    "make_halfcheetah_dir_task",
    "make_halfcheetah_vel_task",
    "make_metaworld_ml1_task",
    "make_pendulum_task",
    "make_pointnav_task",
    "register_families",
]
