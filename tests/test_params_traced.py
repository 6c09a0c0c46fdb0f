"""Parameters are traced, never compiled in as constants: a program built for one model, called with another
model's parameters, gives exactly that other model's maps, for every method in METHODS.

Parameter-randomisation sanity checks call programs exactly this way; FullGrad once carried its effective biases
in the static configuration, so such a call mixed the two models (off by up to 0.68 on the toy model below).
"""

import jax
import numpy as np
import pytest

import jaxcam

from .toy import toy_input, toy_model


def _randomised(model, seed):
    """The toy model with every parameter (biases too, which start at zero) drawn from N(0, 0.5)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32), model.params)
    return jaxcam.Model(model.arch, model.graphdef, params, source=f"toy, seed {seed}")


@pytest.fixture(scope="module")
def models():
    m1, m2 = _randomised(toy_model(), 0), _randomised(toy_model(), 1)
    # the two models must differ in every kind of parameter the methods read, biases included
    for a, b in zip(jax.tree.leaves(m1.params), jax.tree.leaves(m2.params)):
        assert not np.allclose(np.asarray(a), np.asarray(b))
    return m1, m2


@pytest.mark.parametrize("method", [m for m, s in jaxcam.METHODS.items()
                                    if not s.attention and not s.own_maps])  # AD-CAM: test_vit
def test_explainer_takes_other_models_parameters(models, method):
    m1, m2 = models
    x = toy_input(n=2)
    key = jax.random.key(3)
    # a method with a required option (BroadCAM's weights, fitted on the first model) gets it; the weights are
    # the method's data, the same for both calls, while the model's parameters must follow the call
    required = {"broadcam": lambda: {"weights": jaxcam.fit_broadcam(m1, toy_input(n=6, seed=4),
                                                                    labels=[0, 1, 2, 3, 4, 0])},
                "sycam": lambda: {"expression": "mean(G) + softmax(S) * D"}}
    opts = {"method_options": {method: required[method]()}} if jaxcam.METHODS[method].requires else {}
    fn = jaxcam.explainer(m1, method, batch_size=16, **opts)
    got = np.asarray(fn(m2.params, x, None, key))
    want = np.asarray(jaxcam.explain(m2, x, method, preprocessed=True, key=key, batch_size=16, **opts))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=method)
    # and it is not simply the first model's map (the test can fail)
    own = np.asarray(jaxcam.explain(m1, x, method, preprocessed=True, key=key, batch_size=16, **opts))
    assert np.abs(own - want).max() > 1e-3, method


def test_fullgrad_biases_follow_the_parameters_on_resnet18():
    """Two random ResNet-18s (BatchNorm effective biases): FullGrad through one program equals each model's own."""
    m1 = jaxcam.load_model("resnet18", weights=None, seed=0)
    m2 = jaxcam.load_model("resnet18", weights=None, seed=1)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    fn = jaxcam.explainer(m1, "fullgrad")
    got = np.asarray(fn(m2.params, x, None, jax.random.key(0)))
    want = np.asarray(jaxcam.explain(m2, x, "fullgrad", preprocessed=True))
    np.testing.assert_allclose(got, want, atol=1e-6)
