"""Weight transport to the Ray workers: inside the actor calls, or through the object store."""

from __future__ import annotations

import pickle

import ray

from distributed_reptile.weights import NumpyWeights

#: Meta weights up to this size travel inside the actor calls (pickled once per outer step);
#: larger ones go into the object store once and each worker reads them zero-copy. Putting a
#: small object in the store costs more than sending it twice (below Ray's 100 KiB limit for
#: arguments passed by value).
INLINE_WEIGHTS_BYTES = 64 * 1024

#: The weights as an actor-call argument: pickled bytes, or a list holding their reference (the
#: list keeps Ray from fetching them before the call starts, so the fetch is timed).
WeightsArg = bytes | list[ray.ObjectRef]


def weights_argument(meta_weights: NumpyWeights) -> WeightsArg:
    """How ``meta_weights`` go to the workers this outer step (see ``INLINE_WEIGHTS_BYTES``,
    read at each call)."""
    if sum(a.nbytes for a in meta_weights.values()) <= INLINE_WEIGHTS_BYTES:
        return pickle.dumps(meta_weights, protocol=5)
    return [ray.put(meta_weights)]


def unpack_weights(weights_arg: WeightsArg) -> NumpyWeights:
    """The weights of a :func:`weights_argument`, inside the worker (fetched from the object
    store when they went there)."""
    if isinstance(weights_arg, bytes):
        weights: NumpyWeights = pickle.loads(weights_arg)
        return weights
    stored: NumpyWeights = ray.get(weights_arg[0])
    return stored
