"""Seeds derived from the run seed, so results never depend on which worker ran a task."""

from __future__ import annotations

import numpy as np

_TASK_STREAM = 0x7A5C
_GENERATOR_STREAM = 0x6E11


def derive_seed(run_seed: int, *keys: int) -> int:
    """A 31-bit seed that depends only on ``run_seed`` and ``keys`` (e.g. the meta step)."""
    words = [int(run_seed) & 0xFFFFFFFFFFFFFFFF, *(int(k) & 0xFFFFFFFFFFFFFFFF for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0] >> 1)


def task_seed(run_seed: int, meta_step: int) -> int:
    """Seed of the inner learner (torch, numpy, env, action space) for task ``meta_step``."""
    return derive_seed(run_seed, _TASK_STREAM, meta_step)


def generator_seed_from_run_seed(run_seed: int) -> int:
    """Seed given to a task generator that was not given one explicitly."""
    return derive_seed(run_seed, _GENERATOR_STREAM)


def fresh_run_seed() -> int:
    """A random run seed, recorded so the run can still be reproduced."""
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0] >> 1)
