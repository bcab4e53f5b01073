"""Moving policy weights between torch modules and numpy arrays (what crosses process boundaries)."""

from __future__ import annotations

import warnings

import numpy as np
import torch as th

NumpyWeights = dict[str, np.ndarray]


def module_to_numpy(module: th.nn.Module) -> NumpyWeights:
    """Full state dict of ``module`` as independent numpy copies (CPU)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def parameters_to_numpy(module: th.nn.Module) -> NumpyWeights:
    """Named parameters of ``module`` as independent numpy copies (CPU)."""
    return {k: p.detach().cpu().numpy().copy() for k, p in module.named_parameters()}


def load_numpy_into_module(module: th.nn.Module, weights: NumpyWeights) -> None:
    """Copy ``weights`` (which may be read-only zero-copy views) into ``module`` in place."""
    state = module.state_dict()
    missing = [k for k in state if k not in weights]
    unexpected = [k for k in weights if k not in state]
    if missing or unexpected:
        raise ValueError(
            "Meta weights do not match the task model's policy "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]}). Build the task models with the "
            "same rl_algorithm and rl_algo_kwargs (policy, net_arch) as the meta model."
        )
    with th.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only numpy views from the object store
        for key, tensor in state.items():
            src = th.from_numpy(np.asarray(weights[key]))
            if tuple(src.shape) != tuple(tensor.shape):
                raise ValueError(
                    f"Meta weight {key!r} has shape {tuple(src.shape)}, the task policy expects "
                    f"{tuple(tensor.shape)}: task envs must have the meta policy's observation and action spaces."
                )
            tensor.copy_(src)


def non_finite_names(weights: NumpyWeights) -> list[str]:
    """Names of arrays holding a NaN or an infinity."""
    return [k for k, v in weights.items() if v.dtype.kind in "fc" and not np.isfinite(v).all()]


def nbytes(weights: NumpyWeights) -> int:
    return int(sum(v.nbytes for v in weights.values()))
