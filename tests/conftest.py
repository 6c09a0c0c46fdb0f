import os

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
