"""Building an SB3 model from keyword arguments, the same way everywhere in the package."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def build_sb3_model(
    rl_algorithm: Any,
    rl_algo_kwargs: Mapping[str, Any],
    env: Any,
    *,
    seed: int | None = None,
    device: Any = None,
    quiet_logger: bool = True,
) -> Any:
    """``rl_algorithm(env=env, policy=policy, device=device, **rest)`` from a copy of the kwargs.

    :param rl_algorithm: the SB3 algorithm class (or an SB3-like learner class).
    :param rl_algo_kwargs: its keyword arguments. They are deep-copied first (SB3 edits
        ``policy_kwargs`` in place), then ``policy`` (default ``"MlpPolicy"``) and ``device`` are
        taken out; the rest goes to the constructor as given.
    :param env: the model's env.
    :param seed: when given, ``set_random_seed(seed)`` (Python, numpy, torch) runs right before
        the constructor, so the initial weights depend on it alone. The model's own ``seed``
        argument, if any, stays in ``rl_algo_kwargs``.
    :param device: the model's device; ``None``: the kwargs' ``device``, else ``"auto"``.
    :param quiet_logger: give the model (when it has ``set_logger``) a logger that writes nothing,
        so that SB3 makes no temporary log folder.
    :return: the new model.
    """
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.utils import set_random_seed

    kwargs = copy.deepcopy(dict(rl_algo_kwargs))
    policy = kwargs.pop("policy", "MlpPolicy")
    kwargs_device = kwargs.pop("device", "auto")
    if seed is not None:
        set_random_seed(int(seed))
    model = rl_algorithm(
        env=env, policy=policy, device=kwargs_device if device is None else device, **kwargs
    )
    if quiet_logger and hasattr(model, "set_logger"):
        model.set_logger(Logger(folder=None, output_formats=[]))
    return model


__all__ = ["build_sb3_model"]
