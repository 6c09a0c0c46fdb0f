"""Bad arguments to the Python API: each is one JaxcamError subclass whose message names the argument and the fix
(issue 13's list, with its exact inputs), and unknown names suggest the closest valid one."""

import inspect

import jax
import numpy as np
import pytest

import jaxcam
import jaxcam.metrics as M
from jaxcam.errors import ClassIndexError, InvalidArgumentError, JaxcamError, UnknownNameError

from .toy import toy_input, toy_model


@pytest.fixture(scope="module")
def toy():
    return toy_model()


@pytest.fixture(scope="module")
def x():
    return toy_input(n=2)


def test_layer_of_the_wrong_type(toy, x):
    with pytest.raises(InvalidArgumentError, match=r"layer must be .* got float 3\.0; valid layers of toy: conv"):
        jaxcam.explain(toy, x, preprocessed=True, layer=3.0)
    with pytest.raises(InvalidArgumentError, match="layer must be"):
        jaxcam.explain(toy, x, preprocessed=True, layer=["relu", 1.5])


@pytest.mark.parametrize("images, match", [
    (None, "image is NoneType 'None'; pass a file path, a PIL image or an HxW"),
    (3, "image is int '3'; pass a file path"),
    (b"\x89PNG", "image is bytes"),
    ({"a": 1}, "image is dict"),
    ([], r"no images given \(empty list\)"),
])
def test_no_images(toy, images, match):
    with pytest.raises(JaxcamError, match=match):
        jaxcam.explain(toy, images)


@pytest.mark.parametrize("method", [3, None, {"gradcam"}])
def test_method_of_the_wrong_type(toy, x, method):
    with pytest.raises(InvalidArgumentError, match="method must be a method name.*valid names: gradcam"):
        jaxcam.explain(toy, x, method, preprocessed=True)


def test_method_options_for_a_method_without_options(toy, x):
    with pytest.raises(InvalidArgumentError, match=r"'gradcam' takes no options \(got 'k'\); methods with options: "
                                                   r".*faster_scorecam \(top_fraction"):
        jaxcam.explain(toy, x, "gradcam", preprocessed=True, method_options={"gradcam": {"k": 1}})
    with pytest.raises(UnknownNameError, match="did you mean 'top_fraction'"):
        jaxcam.explain(toy, x, "faster_scorecam", preprocessed=True,
                       method_options={"faster_scorecam": {"top_fractoin": 0.1}})
    with pytest.raises(InvalidArgumentError, match=r"method_options\['gradcam'\] must be a dict"):
        jaxcam.explain(toy, x, "gradcam", preprocessed=True, method_options={"gradcam": 3})


@pytest.mark.parametrize("targets, match", [
    (2 ** 70, r"class index 1180591620717411303424 out of range \[0, 5\) \(the model has 5 classes"),
    (-1, r"class index -1 out of range \[0, 5\)"),
    (5, r"class index 5 out of range \[0, 5\)"),
    (1.5, r"targets must be None, a class index in \[0, 5\) or one such index per image, got 1.5 \(float\)"),
    ([[1, 2]], r"got an array of shape \(1, 2\)"),
    ([1, 2, 3], "got 3 class indices for 2 images"),
])
def test_bad_targets(toy, x, targets, match):
    with pytest.raises(ClassIndexError, match=match):
        jaxcam.explain(toy, x, preprocessed=True, targets=targets)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"noise_samples": -1}, "noise_samples must be a non-negative int"),
    ({"noise_samples": 2, "noise_std": -1.0}, "noise_std must be a finite number >= 0"),
    ({"key": "a"}, "key must be an int seed or a jax.random.key"),
    ({"key": 2 ** 70}, "key must be an int seed that fits in 64 bits"),
    ({"raw": True, "aug_smooth": True}, "cannot be combined with aug_smooth"),
])
def test_bad_explain_options(toy, x, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        jaxcam.explain(toy, x, preprocessed=True, **kwargs)


def test_legacy_prng_key_is_accepted(toy, x):
    a = jaxcam.explain(toy, x, "gradcam", preprocessed=True, key=jax.random.PRNGKey(0))
    b = jaxcam.explain(toy, x, "gradcam", preprocessed=True, key=jax.random.wrap_key_data(jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_localisation_without_ground_truth(toy, x):
    with pytest.raises(InvalidArgumentError, match=r"pointing_game, iou need ground truth: pass masks= or boxes="):
        jaxcam.evaluate(toy, x, "gradcam", ["pointing_game", "iou", "sparseness"], preprocessed=True)


@pytest.mark.parametrize("call, match", [
    (lambda m, x, c: M.deletion_insertion(m, x, c, steps=0), "steps must be a positive int, got 0"),
    (lambda m, x, c: M.road(m, x, c, which="both"), "unknown name 'both' for ROAD variant"),
    (lambda m, x, c: M.road(m, x, c, percentiles=[]), "percentiles must be a non-empty sequence"),
    (lambda m, x, c: M.entropy(c, channels=0), "channels must be >= 1"),
    (lambda m, x, c: M.sensitivity(m, x, radius=0), "radius must be > 0"),
    (lambda m, x, c: M.relative_confidence_drop(m, x, c, fraction=2.0), r"fraction must be in \(0, 1\]"),
])
def test_bad_metric_arguments(toy, x, call, match):
    cams = np.random.default_rng(0).uniform(size=(2, 32, 32)).astype(np.float32)
    with pytest.raises(JaxcamError, match=match):
        call(toy, x, cams)


@pytest.mark.parametrize("call, suggestion", [
    (lambda m, x: jaxcam.explain(m, x, "gradcm", preprocessed=True), "did you mean 'gradcam'"),
    (lambda m, x: jaxcam.explain(m, x, preprocessed=True, layer="rleu"), "did you mean 'relu'"),
    (lambda m, x: jaxcam.evaluate(m, x, "gradcam", ["deletion_aucc"], preprocessed=True),
     "did you mean 'deletion_auc'"),
    (lambda m, x: jaxcam.load_model("resnet19", weights=None), "did you mean 'resnet18'"),
    (lambda m, x: jaxcam.noise.noise_id("gausian"), "did you mean 'gaussian'"),
    (lambda m, x: jaxcam.explain(m, x, preprocessed=True, target="logitt"), "did you mean 'logit'"),
])
def test_unknown_names_suggest_the_closest(toy, x, call, suggestion):
    with pytest.raises(UnknownNameError, match=suggestion):
        call(toy, x)


def test_no_suggestion_when_nothing_is_close():
    err = UnknownNameError("zzzzzz", ["gradcam", "layercam"], "method")
    assert "did you mean" not in str(err) and "valid names: 'gradcam', 'layercam'" in str(err)


def test_every_metric_name_is_a_function_with_the_documented_signature(toy, x):
    """``jaxcam.metrics.<name>`` for every METRICS entry, called as its ``needs`` says, equals evaluate()'s value."""
    first = {"model": ["model", "x", "cams", "targets"], "method": ["model", "x", "method", "targets"],
             "masks": ["cams", "masks"], "maps": ["cams"]}
    for name, spec in jaxcam.METRICS.items():
        fn = getattr(M, name)
        params = list(inspect.signature(fn).parameters)
        assert params[:len(first[spec.needs])] == first[spec.needs], (name, params)
    maps = jaxcam.explain(toy, x, "gradcam", preprocessed=True)
    table = jaxcam.evaluate(toy, x, "gradcam", ["road_combined", "deletion_auc", "sparseness"], preprocessed=True)
    for name, value in [("road_combined", M.road_combined(toy, x, maps)),
                        ("deletion_auc", M.deletion_auc(toy, x, maps)), ("sparseness", M.sparseness(maps))]:
        np.testing.assert_allclose(table.where(metric=name)["value"], np.asarray(value), atol=1e-6, err_msg=name)
