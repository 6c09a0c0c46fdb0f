"""jaxcam.models.inspect.layers: every layer of any model (built-in or adapted) with its shape, kind, CAM's closed
form and the default, from jax.eval_shape (no compute); unknown layers on adapted models raise UnknownLayerError
with the valid list and the closest names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.models.function_adapter import from_function
from jaxcam.models.inspect import layers
from jaxcam.models.nnx_adapter import from_nnx

from . import tiny_resnet as T
from .toy import toy_model


@pytest.fixture(scope="module")
def marked():
    return from_function(T.marked_fn, {k: tuple(map(jnp.asarray, v)) for k, v in T.weights().items()},
                         input_size=T.SIZE)


def test_a_built_in_model_lists_its_stages_with_shapes():
    table = layers(toy_model())
    assert table.columns == ["layer", "shape", "kind", "cam", "default", "aliases"]
    assert [r["layer"] for r in table.rows()] == ["conv", "relu", "avgpool"]
    rows = {r["layer"]: r for r in table.rows()}
    assert rows["relu"]["shape"] == "16 x 16 x 6" and rows["relu"]["cam"] and rows["relu"]["default"]
    assert rows["conv"]["kind"] == "grid" and not rows["conv"]["cam"]
    assert rows["avgpool"]["kind"] == "not a grid" and rows["avgpool"]["shape"] == "6"


def test_an_adapted_model_lists_its_sites_in_call_order(marked):
    table = layers(marked)
    assert list(table["layer"]) == ["stem", "block1.conv_a", "block1", "block2.conv_a", "block2"]
    assert set(table["shape"]) == {"16 x 16 x 4"} and set(table["kind"]) == {"grid"}
    assert list(table["cam"]) == [False] * 4 + [True] and list(table["default"]) == [False] * 4 + [True]


def test_shapes_follow_the_input_and_nothing_is_computed(marked):
    """A (64, 2048, 2048, 3) batch (3 GiB as float32 input alone) is described without allocating it: eval_shape
    sees only its shape."""
    table = layers(marked, jax.ShapeDtypeStruct((64, 2048, 2048, 3), jnp.float32))
    assert set(table["shape"]) == {"1024 x 1024 x 4"}
    assert layers(marked, np.zeros((1, 64, 48, 3), np.float32))["shape"][0] == "32 x 24 x 4"


def test_a_nnx_model_lists_every_submodule_call():
    model = from_nnx(T.nnx_model(), input_size=T.SIZE)
    table = layers(model)
    assert list(table["layer"]) == ["stem", "block1.conv_a", "block1.conv_b", "block1", "block2.conv_a",
                                    "block2.conv_b", "block2"]
    assert table.where(layer="block2").rows()[0]["cam"]


def test_unknown_layers_on_adapted_models_suggest_the_closest_and_list_the_valid(marked):
    with pytest.raises(jaxcam.UnknownLayerError, match=r"did you mean 'block1'.*valid layers: 'stem', "
                                                       r"'block1.conv_a', 'block1'"):
        jaxcam.explain(marked, T.images(), layer="blok1", preprocessed=True)
    with pytest.raises(jaxcam.UnknownLayerError, match="did you mean 'block2.conv_a'"):
        marked.layer_site("block2.conva")


def test_bad_arguments_are_one_clear_error(marked):
    with pytest.raises(jaxcam.ImageShapeError, match=r"\(N, H, W, 3\).*got \(32, 32, 3\)"):
        layers(marked, np.zeros((32, 32, 3), np.float32))
    with pytest.raises(jaxcam.InvalidArgumentError, match="takes a jaxcam Model"):
        layers("resnet18")
