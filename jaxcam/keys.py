"""PRNG keys from what users pass: an int seed, a ``jax.random.key``, or a legacy ``jax.random.PRNGKey``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .errors import InvalidArgumentError


def as_key(key, name: str = "key") -> jax.Array:
    """A new-style PRNG key: an int seed (any value that fits in 64 bits) is ``jax.random.key(seed)``; a legacy
    uint32 ``PRNGKey`` of shape (2,) is wrapped; a new-style scalar key is returned as it is. Anything else raises
    :class:`~jaxcam.InvalidArgumentError` naming the argument."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not -(2 ** 63) <= int(key) < 2 ** 64:
            raise InvalidArgumentError(f"{name} must be an int seed that fits in 64 bits or a jax.random key, "
                                       f"got {key}")
        return jax.random.key(int(key) % 2 ** 64 if int(key) >= 2 ** 63 else int(key))
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    raise InvalidArgumentError(f"{name} must be an int seed or a jax.random.key(...), got {type(key).__name__} "
                               f"{key!r}"[:300])


def init_key(key) -> jax.Array:
    """A key for initialising parameters: an RBG key (XLA's RngBitGenerator) whose state is drawn from ``key``
    (an int seed or a key, as :func:`as_key`). On a CPU a network's initialiser compiles several times faster with
    it than with threefry keys (the ReferenceCNN: about 6x), which every fresh process pays. The same key gives
    the same bits on one backend (RBG streams may differ between CPU and GPU)."""
    return jax.random.wrap_key_data(jax.random.bits(as_key(key), (4,), jnp.uint32), impl="rbg")
