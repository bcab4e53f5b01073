"""Meta-World ML1: one manipulation skill (e.g. ``reach-v3``, ``push-v3``), many goal positions.

Needs Meta-World and MuJoCo (``pip install "distributed-reptile[mujoco]"``); they are imported
only when a task is built, so importing this module works without them.

Tasks come from Meta-World's own ML1 benchmark, ``metaworld.ML1(env_name, seed=benchmark_seed)``:
50 train tasks and 50 test tasks, each a fixed object/goal configuration (its ``rand_vec``), the
goal hidden from the observation. ``split="train"`` picks among ``benchmark.train_tasks``,
``split="test"`` among ``benchmark.test_tasks``, task ``random_seed % 50`` unless ``task_index``
is given (so seeds ``0..49`` enumerate a split).

Train/test disjointness: Meta-World draws the two task lists from its continuous goal space with
different seeds (``benchmark_seed`` and ``benchmark_seed + 1``). That makes a shared configuration
an event of probability zero, not an impossibility, so this module also checks it when it builds a
benchmark and raises ``RuntimeError`` if any test ``rand_vec`` equals a train one.

Each episode reports ``success``: Meta-World's own success flag, 1 when the task was solved at any
step of the episode (the evaluation reports the fraction of episodes solved next to the return).

``benchmark_seed`` must be the same everywhere a task is rebuilt (Ray workers rebuild tasks from
``random_seed``): it defaults to 0, never to Meta-World's unseeded ``None``.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import EzPickle

from distributed_reptile.tasks.episode_metrics import SUCCESS, EpisodeMetrics
from distributed_reptile.tasks.families._common import check_split, mujoco_import_error

#: ML1 env used when none is named.
DEFAULT_ENV_NAME = "reach-v3"
#: Seed of ``metaworld.ML1`` (train tasks; test tasks use ``benchmark_seed + 1``).
DEFAULT_BENCHMARK_SEED = 0
#: Number of tasks in each split of an ML1 benchmark.
N_TASKS_PER_SPLIT = 50
#: Documented parameter range: a task is an index into Meta-World's own split.
TRAIN_RANGES: dict[str, Any] = {
    "task_index": (0, N_TASKS_PER_SPLIT - 1),
    "source": "ML1.train_tasks",
}
TEST_RANGES: dict[str, Any] = {"task_index": (0, N_TASKS_PER_SPLIT - 1), "source": "ML1.test_tasks"}


def _metaworld() -> Any:
    try:
        import metaworld
        import mujoco  # noqa: F401
    except ImportError as exc:
        raise mujoco_import_error(
            "The Meta-World ML1 tasks", needs="Meta-World and MuJoCo", exc=exc
        ) from exc
    return metaworld


def _rand_vec(task: Any) -> np.ndarray:
    return np.asarray(pickle.loads(task.data)["rand_vec"], dtype=np.float64)


@functools.lru_cache(maxsize=16)
def ml1_benchmark(env_name: str = DEFAULT_ENV_NAME, benchmark_seed: int = DEFAULT_BENCHMARK_SEED):
    """``metaworld.ML1(env_name, seed=benchmark_seed)``, cached, with its splits checked disjoint."""
    metaworld = _metaworld()
    if env_name not in metaworld.ML1.ENV_NAMES:
        raise ValueError(
            f"Unknown Meta-World env {env_name!r}; ML1 envs are: {', '.join(metaworld.ML1.ENV_NAMES)}."
        )
    benchmark = metaworld.ML1(env_name, seed=int(benchmark_seed))
    train = {tuple(_rand_vec(t).tolist()) for t in benchmark.train_tasks}
    test = {tuple(_rand_vec(t).tolist()) for t in benchmark.test_tasks}
    if train & test:
        raise RuntimeError(
            f"Meta-World ML1({env_name!r}, seed={benchmark_seed}) has {len(train & test)} task(s) in "
            "both its train and test splits; pick another benchmark_seed."
        )
    return benchmark


def ml1_tasks(
    env_name: str = DEFAULT_ENV_NAME,
    split: str = "train",
    benchmark_seed: int = DEFAULT_BENCHMARK_SEED,
) -> list[Any]:
    """Meta-World's ``Task`` list of ``split`` for ``env_name``."""
    benchmark = ml1_benchmark(env_name, int(benchmark_seed))
    return list(benchmark.train_tasks if check_split(split) == "train" else benchmark.test_tasks)


class MetaWorldML1Env(gym.Env, EzPickle):
    """One Meta-World ML1 task as a plain, picklable gymnasium env.

    Wraps the Meta-World env of task ``task_index`` of ``split`` (``self.mw_env``) and fixes what
    a plain Meta-World env lacks: ``reset(seed=...)`` seeds it (Meta-World's own ``reset`` ignores
    the seed), and pickling rebuilds the same task from the constructor arguments (a pickled
    Meta-World env comes back without its task). Steps, spaces and rewards are Meta-World's,
    including its own truncation at ``max_path_length`` (500) steps.

    This is the entry point of ``gymnasium.make("distributed_reptile/MetaWorldML1-v0", ...)``.
    """

    def __init__(
        self,
        env_name: str = DEFAULT_ENV_NAME,
        split: str = "train",
        task_index: int = 0,
        benchmark_seed: int = DEFAULT_BENCHMARK_SEED,
        render_mode: str | None = None,
    ) -> None:
        EzPickle.__init__(self, env_name, split, task_index, benchmark_seed, render_mode)
        tasks = ml1_tasks(env_name, split, benchmark_seed)
        if not 0 <= int(task_index) < len(tasks):
            raise ValueError(f"task_index must lie in [0, {len(tasks)}), got {task_index}.")
        cls = ml1_benchmark(env_name, int(benchmark_seed)).train_classes[env_name]
        self.mw_env = cls(render_mode=render_mode)
        self.mw_env.set_task(tasks[int(task_index)])
        self.env_name = env_name
        self.split = split
        self.task_index = int(task_index)
        self.benchmark_seed = int(benchmark_seed)
        self.render_mode = render_mode
        self.metadata = dict(self.mw_env.metadata)
        self.observation_space = self.mw_env.observation_space
        self.action_space = self.mw_env.action_space
        self.max_path_length = int(self.mw_env.max_path_length)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.mw_env.seed(int(seed))
        return self.mw_env.reset(options=options)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.mw_env.step(action)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> Any:
        return self.mw_env.render()

    def close(self) -> None:
        self.mw_env.close()
        super().close()


def make_ml1_env(
    env_name: str = DEFAULT_ENV_NAME,
    split: str = "train",
    task_index: int = 0,
    benchmark_seed: int = DEFAULT_BENCHMARK_SEED,
    render_mode: str | None = None,
) -> MetaWorldML1Env:
    """The env of task ``task_index`` of ``split``: a :class:`MetaWorldML1Env` (500-step horizon)."""
    return MetaWorldML1Env(env_name, split, task_index, benchmark_seed, render_mode)


def make_metaworld_ml1_task(
    random_seed: int,
    split: str = "train",
    env_name: str = DEFAULT_ENV_NAME,
    task_index: int | None = None,
    benchmark_seed: int = DEFAULT_BENCHMARK_SEED,
    max_episode_steps: int | None = None,
) -> tuple[gym.Env, dict[str, Any]]:
    """An ML1 task of ``env_name``: task ``random_seed % 50`` (or ``task_index``) of ``split``.

    :param max_episode_steps: episode length; ``None`` keeps Meta-World's (500). Longer is capped
        at it, since Meta-World refuses to step past its own horizon.
    """
    tasks = ml1_tasks(env_name, split, benchmark_seed)
    index = int(random_seed) % len(tasks) if task_index is None else int(task_index)
    raw = make_ml1_env(env_name, split, index, benchmark_seed)
    horizon = int(raw.max_path_length)
    if max_episode_steps is not None:
        horizon = min(int(max_episode_steps), horizon)
    env = EpisodeMetrics(
        gym.wrappers.TimeLimit(raw, max_episode_steps=horizon), {"success": SUCCESS}
    )
    info = {
        "family": "metaworld_ml1",
        "split": split,
        "env_name": env_name,
        "task_index": index,
        "benchmark_seed": int(benchmark_seed),
        "rand_vec": _rand_vec(tasks[index]).tolist(),
    }
    return env, info
