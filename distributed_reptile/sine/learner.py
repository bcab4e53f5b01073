"""SupervisedRegressor: a small SB3-like supervised learner, usable as the trainer's ``rl_algorithm``.

It offers what :class:`~distributed_reptile.ReptileMetaRL` and
:class:`~distributed_reptile.InnerLearner` call on an SB3 model (``learn``, ``predict``,
``set_env``, ``get_env``, ``set_random_seed``, ``save``, ``policy``, ``num_timesteps``), so the
sine-wave regression of the Reptile paper runs through the same trainer, task generator and Ray
workers as the RL families. ``learn(n)`` takes ``ceil(n / batch_size)`` Adam steps on batches the
task env provides (:meth:`~distributed_reptile.sine.env.SineTaskEnv.training_batch`); a
"timestep" is one training point.

The network is a ReLU MLP whose weights live in a torch module (``policy``: what the trainer
copies, averages and checkpoints). Its forward and backward passes and the Adam update run in
NumPy, on one flat copy of the weights that is written back at the end of ``learn``: for a
1-64-64-1 network and 10 points per batch, a step costs a few tens of microseconds there against a
few hundred through torch's autograd and optimizer, and on tasks this small that per-step overhead
is most of an inner loop. ``tests/test_sine.py`` checks
the gradients and the Adam step against torch's.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from torch import nn


class MlpRegressorPolicy(nn.Module):
    """``in -> hidden... -> out`` with ReLU between layers (torch storage of the weights).

    :param in_dim: input size.
    :param out_dim: output size.
    :param net_arch: hidden layer sizes.
    """

    def __init__(
        self, in_dim: int = 1, out_dim: int = 1, net_arch: Sequence[int] = (64, 64)
    ) -> None:
        super().__init__()
        sizes = [in_dim, *net_arch, out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: th.Tensor) -> th.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = th.relu(x)
        return x

    def numpy_params(self) -> list[np.ndarray]:
        """``[W0, b0, W1, b1, ...]`` as NumPy views sharing memory with the parameters."""
        return [p.data.numpy() for p in self.parameters()]


def mlp_forward_backward(
    params: list[np.ndarray], x: np.ndarray, y: np.ndarray, grads: list[np.ndarray] | None = None
) -> tuple[float, list[np.ndarray]]:
    """Mean squared error of the ReLU MLP ``params`` on ``(x, y)`` and its gradients (same order),
    written into ``grads`` when given (e.g. views of one flat gradient buffer)."""
    n_layers = len(params) // 2
    acts = [x]
    h = x
    for i in range(n_layers):
        h = h @ params[2 * i].T
        h += params[2 * i + 1]
        if i < n_layers - 1:
            np.maximum(h, 0.0, out=h)
        acts.append(h)
    diff = acts[-1] - y
    loss = float(np.vdot(diff, diff)) / diff.size
    delta = (2.0 / diff.size) * diff
    ones = np.ones((1, len(delta)), dtype=delta.dtype)  # bias gradients as one small matmul
    if grads is None:
        grads = [np.empty_like(p) for p in params]
    for i in range(n_layers - 1, -1, -1):
        np.matmul(delta.T, acts[i], out=grads[2 * i])
        np.matmul(ones, delta, out=grads[2 * i + 1].reshape(1, -1))
        if i > 0:
            delta = delta @ params[2 * i]
            delta *= acts[i] > 0
    return loss, grads


class NumpyAdam:
    """Adam (as ``torch.optim.Adam``, no weight decay) updating one NumPy array in place.

    :param param: the (flat) array to update.
    :param lr: step size.
    :param betas: ``(beta1, beta2)``.
    :param eps: denominator term.
    """

    def __init__(
        self, param: np.ndarray, lr: float, betas: tuple[float, float], eps: float = 1e-8
    ) -> None:
        self.param = param
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.m = np.zeros_like(param)
        self.v = np.zeros_like(param)
        self._tmp = np.zeros_like(param)
        self.t = 0

    def reset(self) -> None:
        """Forget the moments (a fresh optimizer)."""
        self.t = 0
        self.m.fill(0.0)
        self.v.fill(0.0)

    def step(self, grad: np.ndarray) -> None:
        """One Adam step with gradient ``grad`` (same shape as the parameter)."""
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1.0 - b1**self.t
        bc2_sqrt = math.sqrt(1.0 - b2**self.t)
        m, v, tmp = self.m, self.v, self._tmp
        m *= b1
        np.multiply(grad, 1.0 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / bc2_sqrt
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr / bc1
        self.param -= tmp


class SupervisedRegressor:
    """Regression on the batches of a task env, with the SB3 surface the trainer uses.

    :param policy: ``"MlpRegressor"`` (the only architecture).
    :param env: the task env (an env with ``training_batch(rng, n) -> (x, y)``).
    :param learning_rate: Adam step size.
    :param betas: Adam's ``(beta1, beta2)``; ``(0, 0.999)`` as in the Reptile paper.
    :param batch_size: training points per Adam step.
    :param net_arch: hidden layer sizes.
    :param device: only ``"cpu"`` / ``"auto"`` (the arithmetic runs in NumPy).
    :param seed: seed of the data sampling.
    :param verbose: unused; accepted for SB3 compatibility.
    """

    def __init__(
        self,
        policy: str = "MlpRegressor",
        env: Any = None,
        learning_rate: float = 1e-3,
        betas: tuple[float, float] = (0.0, 0.999),
        batch_size: int = 10,
        net_arch: Sequence[int] = (64, 64),
        device: str | th.device = "cpu",
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        if policy != "MlpRegressor":
            raise ValueError(
                f"SupervisedRegressor supports policy='MlpRegressor' only, got {policy!r}."
            )
        if str(device) not in ("cpu", "auto"):
            raise ValueError(
                f"SupervisedRegressor runs on the CPU; pass device='cpu', got {device!r}."
            )
        if env is None:
            raise ValueError(
                "SupervisedRegressor needs an env (a task with training_batch(rng, n))."
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        self.init_kwargs = {
            "learning_rate": learning_rate,
            "betas": tuple(betas),
            "batch_size": batch_size,
            "net_arch": tuple(net_arch),
        }
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.device = th.device("cpu")
        self.verbose = verbose
        self.env = env
        self.observation_space = env.observation_space
        self.action_space = env.action_space
        in_dim = int(np.prod(self.observation_space.shape))
        out_dim = int(np.prod(self.action_space.shape))
        self.policy = MlpRegressorPolicy(in_dim, out_dim, net_arch)
        # learn() works on one flat copy of the weights (one array for Adam to update), with
        # per-layer views of it and of a flat gradient buffer, and writes the result back.
        n_params = sum(p.numel() for p in self.policy.parameters())
        self._flat = np.zeros(n_params, dtype=np.float32)
        self._flat_grad = np.zeros(n_params, dtype=np.float32)
        shapes = [tuple(p.shape) for p in self.policy.parameters()]
        self._work = _views(self._flat, shapes)
        self._grads = _views(self._flat_grad, shapes)
        self.optimizer = NumpyAdam(self._flat, learning_rate, (betas[0], betas[1]))
        self.num_timesteps = 0
        self._n_updates = 0
        self.ep_info_buffer: deque[dict[str, float]] = deque(maxlen=100)
        self._rng = np.random.default_rng(seed)
        if seed is not None:
            self.set_random_seed(seed)

    # ---------------------------------------------------------------- SB3 surface
    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 1,
        tb_log_name: str = "SupervisedRegressor",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SupervisedRegressor:
        """Take ``ceil(total_timesteps / batch_size)`` Adam steps on the env's training batches.

        With ``reset_num_timesteps`` (the inner loop's fresh start) the Adam moments and the
        loss buffer start anew. ``ep_info_buffer`` holds ``{"r": -loss}`` per step (the trainer
        reports it as the adaptation return).
        """
        if reset_num_timesteps:
            self.num_timesteps = 0
            self.optimizer.reset()
            self.ep_info_buffer.clear()
        params = self.policy.numpy_params()
        for work, param in zip(self._work, params, strict=True):
            work[...] = param
        for _ in range(math.ceil(int(total_timesteps) / self.batch_size)):
            x, y = self.env.training_batch(self._rng, self.batch_size)
            loss, _ = mlp_forward_backward(self._work, x, y, self._grads)
            self.optimizer.step(self._flat_grad)
            self.ep_info_buffer.append({"r": -loss, "l": len(x)})
            self.num_timesteps += len(x)
            self._n_updates += 1
        for work, param in zip(self._work, params, strict=True):
            param[...] = work
        return self

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """The regression output for ``observation`` (a batch or one input)."""
        obs = np.asarray(observation, dtype=np.float32)
        single = obs.ndim == len(self.observation_space.shape)
        x = obs.reshape(1, -1) if single else obs.reshape(obs.shape[0], -1)
        params = self.policy.numpy_params()
        h = x
        for i in range(len(params) // 2):
            h = h @ params[2 * i].T + params[2 * i + 1]
            if i < len(params) // 2 - 1:
                h = np.maximum(h, 0.0)
        out = h.astype(np.float32)
        return (out[0] if single else out), None

    def set_env(self, env: Any, force_reset: bool = True) -> None:
        self.env = env

    def get_env(self) -> Any:
        return self.env

    def set_random_seed(self, seed: int | None = None) -> None:
        """Seed the batch sampling (the only randomness of ``learn``; torch draws none)."""
        if seed is None:
            return
        self._rng = np.random.default_rng(int(seed))

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy"], []

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the weights and constructor arguments (``torch.save``); read with :meth:`load`."""
        th.save({"init_kwargs": self.init_kwargs, "policy": self.policy.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: Any, **overrides: Any) -> SupervisedRegressor:
        """A learner on ``env`` with the weights saved at ``path``."""
        saved = th.load(path, weights_only=True)
        kwargs = {**saved["init_kwargs"], **overrides}
        model = cls(env=env, **kwargs)
        model.policy.load_state_dict(saved["policy"])
        return model


def _views(flat: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Consecutive views of ``flat`` with the given shapes."""
    out, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return out


__all__ = ["MlpRegressorPolicy", "NumpyAdam", "SupervisedRegressor", "mlp_forward_backward"]
