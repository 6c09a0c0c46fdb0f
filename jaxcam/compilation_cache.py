"""JAX's persistent compilation cache for jaxcam's programs: a warm start reads compiled programs from disk.

The library never changes JAX's global configuration by itself; the ``jaxcam`` command calls
:func:`enable_compilation_cache` at start-up (``JAXCAM_COMPILATION_CACHE=off`` turns that off), and Python users call it
once if they want the same.
"""

from __future__ import annotations

import os

ENV = "JAXCAM_COMPILATION_CACHE"


def default_cache_dir() -> str | None:
    """``$JAXCAM_COMPILATION_CACHE`` if set (``off`` / ``0`` / empty: no cache), else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, then ``jaxcam/xla``."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "false", "no") else value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxcam", "xla")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Store every compiled program (however quick its compilation) under ``path`` (default
    :func:`default_cache_dir`) and read it back in later processes. Returns the directory, or None when the cache is
    switched off or the directory cannot be created (the run goes on uncached)."""
    import jax

    path = default_cache_dir() if path is None else path
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
