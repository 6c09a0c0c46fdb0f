"""bfloat16 compute: the network runs in bf16, the CAM arithmetic in float32, maps agree with float32 ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam._explain import _configure, _program

from .jaxprs import equations

GRADIENT = ["gradcam", "gradcam++", "layercam", "hirescam"]


def _dtypes(jaxpr, prim="conv_general_dilated"):
    """The first operand's dtype of every ``prim`` equation, sub-jaxprs included."""
    return [str(eqn.invars[0].aval.dtype) for eqn in equations(jaxpr) if eqn.primitive.name == prim]


@pytest.fixture(scope="module")
def x(resnet18):
    return resnet18.preprocess(list(jaxcam.sample_images().values()))[:, ::2, ::2]  # 112 px: fast


def test_bf16_maps_agree_with_float32(resnet18, x):
    f32 = jaxcam.explain(resnet18, x, GRADIENT, preprocessed=True)
    bf16 = jaxcam.explain(resnet18, x, GRADIENT, preprocessed=True, compute_dtype="bfloat16")
    for name in GRADIENT:
        assert bf16[name].dtype == jnp.float32 and bf16[name].shape == f32[name].shape
        a, b = np.asarray(f32[name]), np.asarray(bf16[name])
        assert np.isfinite(b).all() and b.min() >= 0 and b.max() <= 1
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99, name
        assert not np.array_equal(a, b)  # it really ran in a different precision


def test_bf16_convolutions_run_in_bf16_and_cam_arithmetic_in_float32(resnet18, x):
    cfg, _ = _configure(resnet18, "gradcam", None, compute_dtype=jnp.bfloat16)
    jaxpr = jax.make_jaxpr(_program(resnet18.tapped, cfg))(resnet18.params, x, None, jax.random.key(0))
    convs = _dtypes(jaxpr.jaxpr)
    assert convs and set(convs) == {"bfloat16"}
    assert all(str(v.aval.dtype) in ("float32", "int32") for v in jaxpr.jaxpr.outvars)
    cfg32, _ = _configure(resnet18, "gradcam", None)
    jaxpr32 = jax.make_jaxpr(_program(resnet18.tapped, cfg32))(resnet18.params, x, None, jax.random.key(0))
    assert set(_dtypes(jaxpr32.jaxpr)) == {"float32"}


def test_bf16_perturbation_method_runs_its_passes_in_bf16(resnet18, x):
    f32 = jaxcam.explain(resnet18, x[:1], "ablationcam", preprocessed=True, batch_size=128)
    bf16 = jaxcam.explain(resnet18, x[:1], "ablationcam", preprocessed=True, batch_size=128,
                          compute_dtype="bfloat16")
    assert np.corrcoef(np.ravel(f32), np.ravel(bf16))[0, 1] > 0.98


def test_unknown_compute_dtype_is_a_clear_error(resnet18, x):
    with pytest.raises(jaxcam.UnknownNameError, match="compute_dtype.*bfloat16"):
        jaxcam.explain(resnet18, x, "gradcam", preprocessed=True, compute_dtype="float16")
