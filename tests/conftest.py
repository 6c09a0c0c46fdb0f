import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# the CLI enables JAX's persistent compilation cache; tests calling it in-process must not write to ~/.cache
os.environ.setdefault("JAXCAM_COMPILATION_CACHE", "off")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.fixture(scope="session")
def resnet18():
    import jaxcam

    return jaxcam.load_model("resnet18", weights=None)


@pytest.fixture(scope="session")
def embedded():
    import jaxcam

    return jaxcam.load_model()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop every compiled program (JAX's caches and jaxcam's own program caches).

    The whole suite runs in one process and compiles thousands of XLA programs; each keeps memory mappings for its
    machine code, and near the Linux limit on mappings per process (vm.max_map_count, 65530) XLA's CPU compiler
    crashed (a segmentation fault in backend_compile, reproducibly in the last test modules, never when they run
    alone). Programs are not shared across modules, so releasing them costs only recompilation where a later
    module reuses one."""
    yield
    import functools

    import jaxcam

    jax.clear_caches()
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("jaxcam"):
            for value in list(vars(module).values()):
                if isinstance(value, functools._lru_cache_wrapper):
                    value.cache_clear()
    for cache in (getattr(jaxcam.metrics.road, "_PROGRAMS", None),):
        if isinstance(cache, dict):
            cache.clear()
