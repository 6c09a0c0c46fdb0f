"""Model factories for the CLI's ``--model module.path:factory`` tests (``tests.user_models:tiny_cnn``).

``tiny_cnn`` is a user's model as jaxcam's protocol sees it, written without any framework: a plain function
``apply(params, x, tap)`` over a dict of arrays, turned into a ``jaxcam.Model`` by ``Tapped`` and
``Model.from_tapped``. It is small enough for every CLI command to run on 32 px images in a second or two:
conv (3->8, stride 2) -> relu -> conv (8->16, stride 2) -> relu -> global average pool -> dense (16->5).
``random_resnet18`` is a built-in model reached through a factory; the factories after it are the ways a
``--model`` spec can go wrong once its module imports.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam.models.model import Model
from jaxcam.tapped import Tapped

CLASSES = ("ant", "bee", "cat", "dog", "eel")


def _conv(x, p):
    y = jax.lax.conv_general_dilated(x, p["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"][None, None, None, :]


def tiny_apply(params, x, tap):
    """Logits (N, 5) of a preprocessed batch (N, 32, 32, 3). ``tap`` sees each block's output after its ReLU
    (``conv1``, ``conv2``: the layers a CAM can look at) and each convolution's output with its bias added
    (``bias:0``, ``bias:1``: FullGrad's sites)."""
    h = tap("conv1", jax.nn.relu(tap("bias:0", _conv(x, params["conv1"]))))
    h = tap("conv2", jax.nn.relu(tap("bias:1", _conv(h, params["conv2"]))))
    return h.mean(axis=(1, 2)) @ params["fc"]["w"] + params["fc"]["b"][None, :]


def tiny_biases(params):
    """FullGrad's effective bias per bias site: each convolution adds its own bias and nothing else."""
    return {"bias:0": params["conv1"]["b"], "bias:1": params["conv2"]["b"]}


TINY = Tapped(tiny_apply, sites=("conv1", "conv2"), default_site="conv2", aliases=(("features", "conv2"),),
              gap_fc_sites=frozenset({"conv2"}), bias_sites=("bias:0", "bias:1"), biases=tiny_biases)


def tiny_params(seed=0):
    """He-initialised weights from ``numpy.random.default_rng(seed)``, biases small and nonzero (FullGrad)."""
    rng = np.random.default_rng(seed)

    def layer(*shape):
        fan_in = int(np.prod(shape[:-1]))
        return {"w": jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), shape), jnp.float32),
                "b": jnp.asarray(rng.normal(0, 0.1, shape[-1:]), jnp.float32)}

    return {"conv1": layer(3, 3, 3, 8), "conv2": layer(3, 3, 8, 16), "fc": layer(16, len(CLASSES))}


def tiny_cnn():
    """The factory ``--model tests.user_models:tiny_cnn`` names: a ``jaxcam.Model`` of the tiny CNN."""
    return Model.from_tapped(TINY, tiny_params(), name="tiny_cnn", input_size=32, mean=(0.5, 0.5, 0.5),
                             std=(0.25, 0.25, 0.25), class_names=CLASSES, source="tests.user_models")


def random_resnet18():
    """A built-in architecture through a factory: ``jaxcam.load_model`` with deterministic random weights."""
    from jaxcam import load_model

    return load_model("resnet18", weights=None)


# -- factories that fail, one way each --------------------------------------------------------------------------
NOT_CALLABLE = 3


def broken():
    raise RuntimeError("weights file tiny.npz not found")


def not_a_model():
    return {"params": tiny_params()}


def tapped_only():
    return TINY


def needs_arguments(path, size=32):
    return tiny_cnn()
