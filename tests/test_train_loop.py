"""jaxcam.train.fit: same key same bits, accumulation equals the larger batch, frozen leaves untouched (linen and
NNX BatchNorm), augmentations move masks with pixels, history columns, every bad configuration one error before
any work, a non-finite loss stops naming its step, tfds mock data, evaluate_accuracy."""

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxcam
from jaxcam.models.reference_cnn import reference_model
from jaxcam.train import LOSSES, NonFiniteLossError, evaluate_accuracy, fit, pipeline
from jaxcam.train.optim import make_schedule

WIDTHS = (4, 8, 8)
QUIET = dict(progress=False)


@pytest.fixture(scope="module")
def model():
    return reference_model(0, widths=WIDTHS)


def random_data(n=16, seed=0, classes=4):
    rng = np.random.default_rng(seed)
    return {"image": rng.uniform(0, 1, (n, 48, 48, 3)).astype(np.float32), "label": rng.integers(0, classes, n)}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def test_same_key_same_bits_and_history_file(model, tmp_path):
    data = random_data()
    run = dict(steps=3, batch_size=4, augment=("flip", "crop", "noise"), **QUIET)
    a = fit(model, data, key=3, history=tmp_path / "h.csv", **run)
    b = fit(model, data, key=3, **run)
    c = fit(model, data, key=4, **run)
    assert _equal(a.model.params, b.model.params) and not _equal(a.model.params, c.model.params)
    assert not _equal(a.model.params, model.params) and a.step == 3 and a.checkpoint_dir is None
    assert a.history.columns == ["step", "loss", "accuracy", "learning_rate", "seconds_per_step"]
    assert list(a.history["step"]) == [1, 2, 3] and np.allclose(a.history["learning_rate"], 1e-3)
    with open(tmp_path / "h.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == list(a.history["loss"])


def test_accumulate_equals_one_update_on_the_larger_batch(model):
    data = random_data(n=8)
    run = dict(steps=2, augment=(), optimizer="sgd", learning_rate=0.5, key=1, **QUIET)
    big = fit(model, data, batch_size=8, **run)
    acc = fit(model, data, batch_size=2, accumulate=4, **run)
    for x, y in zip(_leaves(big.model.params), _leaves(acc.model.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(big.history["loss"], acc.history["loss"], rtol=1e-6)
    assert not _equal(big.model.params, model.params)


def test_frozen_leaves_stay_bit_identical(model):
    def head_only(path, leaf):
        return path[:2] == ("params", "head")

    out = fit(model, random_data(), steps=2, batch_size=4, optimizer="adamw", weight_decay=0.1,
              trainable=head_only, **QUIET)
    before, after = model.params["params"], out.model.params["params"]
    for stage in ("stage1", "stage2", "stage3"):
        assert _equal(before[stage], after[stage])
    assert not np.array_equal(before["head"]["kernel"], after["head"]["kernel"])


class _TinyBN(nnx.Module):
    def __init__(self, *, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(jnp.mean(jax.nn.relu(self.bn(self.conv(x))), axis=(1, 2)))


def test_nnx_batchnorm_statistics_stay_frozen():
    module = _TinyBN(rngs=nnx.Rngs(0))
    module.bn.mean[...] = jnp.full((4,), 0.1)  # non-trivial running statistics
    module.eval()
    m = jaxcam.from_nnx(module, input_size=32)
    data = {"image": np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32),
            "label": np.arange(8) % 3}
    out = fit(m, data, steps=2, batch_size=4, **QUIET).model.params
    assert np.array_equal(out["bn"]["mean"][...], m.params["bn"]["mean"][...])
    assert np.array_equal(out["bn"]["var"][...], m.params["bn"]["var"][...])
    assert not np.array_equal(out["bn"]["scale"][...], m.params["bn"]["scale"][...])
    assert not np.array_equal(out["conv"]["kernel"][...], m.params["conv"]["kernel"][...])


def test_augmentations_move_masks_and_boxes_with_pixels():
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 16, 16), bool)
    box = np.zeros((6, 4), np.int32)
    for i in range(6):
        y, x = rng.integers(0, 10, 2)
        mask[i, y:y + 5, x:x + 3] = True
        box[i] = (y, x, y + 5, x + 3)
    image = np.repeat(mask[..., None], 3, axis=-1).astype(np.float32)
    batch = {"image": jnp.asarray(image), "mask": jnp.asarray(mask), "box": jnp.asarray(box),
             "label": jnp.zeros(6, jnp.int32)}
    for name in ("flip", "crop"):
        out = jax.jit(pipeline.AUGMENTATIONS[name])(jax.random.key(1), batch)  # one compile, not one per op
        assert not np.array_equal(out["mask"], mask), name  # something moved
        np.testing.assert_array_equal(out["image"][..., 0] > 0.5, out["mask"])
        for m, b in zip(np.asarray(out["mask"]), np.asarray(out["box"])):
            ys, xs = np.nonzero(m)
            assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == tuple(b), name
    noisy = jax.jit(pipeline.noise)(jax.random.key(0), batch)["image"]
    assert 0 <= float(noisy.min()) and float(noisy.max()) <= 1 and not np.array_equal(noisy, image)


def test_schedules():
    cos = make_schedule("cosine", 0.1, 11)
    assert float(cos(0)) == pytest.approx(0.1) and 0 < float(cos(10)) < 0.003 and float(cos(11)) == 0.0
    warm = make_schedule("warmup_cosine", 0.1, 100)  # a tenth of the steps warms up
    assert float(warm(0)) == 0.0 and float(warm(10)) == pytest.approx(0.1)
    step = make_schedule("step", 1.0, 8, warmup_steps=0)
    assert [round(float(step(t)), 6) for t in (0, 3, 4, 5, 6, 7)] == [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    const = make_schedule("constant", 0.5, 10, warmup_steps=4)
    assert [float(const(t)) for t in (0, 2, 4, 9)] == [0.0, 0.25, 0.5, 0.5]


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(optimizer="adma"), jaxcam.UnknownNameError, r"'adma' for optimizer.*did you mean 'adam'.*'adamw'"),
    (dict(schedule="cosin"), jaxcam.UnknownNameError, r"'cosin' for schedule.*'warmup_cosine'"),
    (dict(loss="cross_entropi"), jaxcam.UnknownNameError, r"'cross_entropi' for loss.*did you mean 'cross_entropy'"),
    (dict(loss_options={"smoothing": 0.1}), jaxcam.UnknownNameError, r"'smoothing'.*'label_smoothing'"),
    (dict(augment=("flip", "rotate")), jaxcam.UnknownNameError, r"'rotate' for augment.*'crop', 'noise'"),
    (dict(layer="stage9"), jaxcam.UnknownLayerError, r"'stage9'.*did you mean 'stage3'"),
    (dict(data="synth:64"), jaxcam.UnknownNameError, r"'synth' for dataset spec.*'synthetic'"),
    (dict(data="tfds:"), jaxcam.InvalidArgumentError, r"tfds:NAME\[:SPLIT\]"),
    (dict(data=[1, 2]), jaxcam.InvalidArgumentError, r"data must be an ImageSource, a spec string"),
    (dict(data={"image": 1}), jaxcam.InvalidArgumentError, r"needs keys 'image' and 'label', missing \['label'\]"),
    (dict(steps=0), jaxcam.InvalidArgumentError, r"steps must be a positive int, got 0"),
    (dict(batch_size=2.0), jaxcam.InvalidArgumentError, r"batch_size must be a positive int, got 2\.0"),
    (dict(accumulate=True), jaxcam.InvalidArgumentError, r"accumulate must be a positive int, got True"),
    (dict(checkpoint_every=-1), jaxcam.InvalidArgumentError, r"checkpoint_every must be a positive int"),
    (dict(eval_every=5), jaxcam.InvalidArgumentError, r"eval_every=5 needs eval_data"),
    (dict(learning_rate=float("nan")), jaxcam.InvalidArgumentError, r"learning_rate must be a positive finite"),
    (dict(warmup_steps=10), jaxcam.InvalidArgumentError, r"warmup_steps must be an int in \[0, steps=4\)"),
    (dict(optimizer=optax.sgd(0.1), schedule="cosine"), jaxcam.InvalidArgumentError,
     r"configure the named optimizers"),
    (dict(trainable=lambda path, leaf: False), jaxcam.InvalidArgumentError, r"trainable selects no parameter"),
    (dict(key="seven"), jaxcam.InvalidArgumentError, r"key must be an int seed"),
])
def test_bad_configuration_is_one_error_before_any_work(model, monkeypatch, kwargs, error, pattern):
    monkeypatch.setattr(pipeline, "load_data", lambda *a, **k: pytest.fail("data loaded before the check"))
    kwargs = dict(kwargs)
    data = kwargs.pop("data", random_data(4))
    with pytest.raises(error, match=pattern) as info:
        fit(model, data, **{"steps": 4, **kwargs, **QUIET})
    assert "\n" not in str(info.value)


def test_labels_outside_the_model_are_refused(model):
    with pytest.raises(jaxcam.ClassIndexError, match=r"label 6 but the model has 4 classes"):
        fit(model, random_data(8, classes=7) | {"label": np.arange(8) % 7}, steps=1, **QUIET)


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(model, tmp_path):
    """An item flagged in the data (an extra key, passed through to the loss) makes the loss NaN; the stream says
    in which step it is first read, so the error's step is known in advance."""
    data = random_data(16)
    stream = pipeline.Stream(16, 4, jax.random.fold_in(jax.random.key(5), 0))  # fit's data order for key=5
    flagged = int(stream.indices(2)[0])  # read in the third step, not before (one epoch is 4 steps)
    data["poison"] = np.arange(16) == flagged

    def poisoned(params, batch, key, ctx):
        loss, aux = LOSSES["cross_entropy"].fn(params, batch, key, ctx)
        return jnp.where(jnp.any(batch["poison"]), jnp.nan, loss), aux

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3; the last good checkpoint, step 2 in .* is "
                                                 r"kept") as info:
        fit(model, data, steps=6, batch_size=4, key=5, loss=poisoned, checkpoint_dir=tmp_path, checkpoint_every=1,
            **QUIET)
    assert "\n" not in str(info.value)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [1, 2]


def test_custom_transformation_and_extra_aux_columns(model):
    def ce_with_margin(params, batch, key, ctx):
        loss, aux = LOSSES["cross_entropy"].fn(params, batch, key, ctx)
        return loss, {**aux, "margin": 1.0 - loss}

    out = fit(model, random_data(8), steps=2, batch_size=4, optimizer=optax.sgd(0.1), loss=ce_with_margin,
              augment=pipeline.noise, **QUIET)  # one function (key, batch) -> batch is an augmentation too
    assert out.history.columns == ["step", "loss", "accuracy", "learning_rate", "seconds_per_step", "margin"]
    assert all(math.isnan(v) for v in out.history["learning_rate"])  # the rate lives inside the transformation
    np.testing.assert_allclose(out.history["margin"], 1.0 - out.history["loss"], rtol=1e-6)


def test_synthetic_source_with_masks_eval_and_evaluate_accuracy(model):
    from jaxcam.synthetic import synthetic_source

    def mask_share(params, batch, key, ctx):
        loss, aux = LOSSES["cross_entropy"].fn(params, batch, key, ctx)
        return loss, {**aux, "mask_share": jnp.mean(batch["mask"])}

    source = synthetic_source(8)  # evaluated on its own items: one drawing program for both
    out = fit(model, source, steps=4, batch_size=4, loss=mask_share, eval_data=source, eval_every=2, **QUIET)
    assert out.history.columns[-2:] == ["mask_share", "eval_accuracy"]
    assert np.all((out.history["mask_share"] > 0) & (out.history["mask_share"] < 0.5))
    ev = out.history["eval_accuracy"]
    assert math.isnan(ev[0]) and math.isnan(ev[2]) and not math.isnan(ev[1])
    assert ev[3] == evaluate_accuracy(out.model, source, batch_size=3)  # the padded last batch counts right
    items = source.arrays()
    logits = out.model(out.model.preprocess(list(items["image"])))
    assert ev[3] == np.mean(np.argmax(logits, -1) == items["label"])


def test_tfds_mock_data_two_steps(model):
    """tfds.testing.mock_data: random examples with a real dataset's features (beans: 3 classes), no download."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        out = fit(model, "tfds:beans:train", steps=2, batch_size=3, **QUIET)
    assert out.step == 2 and np.isfinite(out.history["loss"]).all()
    assert not _equal(out.model.params, model.params)
