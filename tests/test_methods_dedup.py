"""Perturbation methods without repeated work (issue 17): Score-CAM, SS-CAM, Faster-Score-CAM, DecomCAM and
Ablation-CAM run one pass per distinct mask (per live channel for Ablation-CAM) and give the maps of the
straightforward one-pass-per-channel computation, kept here as the oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcam
from jaxcam import targets
from jaxcam.methods import perturbation as P
from jaxcam.methods.base import Context, Inputs, largest_magnitude_positive
from jaxcam.models import Architecture, Model
from jaxcam.postprocess import minmax, resize_align_corners
from jaxcam.tapped import Forward, Replay, capture

from .toy import Toy, toy_input

BATCH = 3


# -- the oracle: one pass per channel, as before deduplication -----------------------------------------------
def _old_masked_scores(inp, ctx, maps, channels):
    def score(k):
        mask = minmax(resize_align_corners(maps[..., k], inp.image.shape[:2]), 1e-8)
        return ctx.score(ctx.forward((inp.image * mask[..., None])[None])[0], inp.cls)
    return jax.lax.map(score, channels, batch_size=ctx.batch_size)


def old_scorecam(inp, ctx):
    s = _old_masked_scores(inp, ctx, inp.acts, jnp.arange(inp.acts.shape[-1]))
    return inp.acts * jax.nn.softmax(s)[None, None]


def old_faster_scorecam(inp, ctx, top_fraction=0.1):
    k = inp.acts.shape[-1]
    _, top = jax.lax.top_k(jnp.var(inp.acts, axis=(0, 1)), max(1, int(round(k * top_fraction))))
    w = jnp.zeros(k).at[top].set(jax.nn.softmax(_old_masked_scores(inp, ctx, inp.acts, top)))
    return inp.acts * w[None, None]


def old_ablation_drops(inp, ctx):
    y = ctx.score(inp.logits, inp.cls)

    def ablated(k):
        return ctx.score(ctx.replay(inp.image[None], inp.acts.at[..., k].set(0.0)[None])[0], inp.cls)
    yk = jax.lax.map(ablated, jnp.arange(inp.acts.shape[-1]), batch_size=ctx.batch_size)
    return jnp.where(y == 0, 0.0, (y - yk) / jnp.where(y == 0, 1.0, y))


def old_ablationcam(inp, ctx):
    return inp.acts * old_ablation_drops(inp, ctx)[None, None]


def old_sscam(inp, ctx, num_samples=3, std=2.0):
    h_w, k = inp.image.shape[:2], inp.acts.shape[-1]
    up = resize_align_corners(inp.acts, h_w)
    keys = jax.random.split(inp.key, num_samples)

    def score(job):
        m = minmax(up[..., job % k] + std * jax.random.normal(keys[job // k], h_w), 1e-8)
        return ctx.score(ctx.forward((inp.image * m[..., None])[None])[0], inp.cls)
    s = jax.lax.map(score, jnp.arange(num_samples * k), batch_size=ctx.batch_size).reshape(num_samples, k)
    return inp.acts * jax.nn.softmax(s.mean(axis=0))[None, None]


def old_decomcam(inp, ctx, channels=0.5, components=4):
    h, w, k = inp.acts.shape
    n = max(1, int(round(k * channels)))
    _, top = jax.lax.top_k(jnp.mean(inp.grads, axis=(0, 1)), n)
    x = inp.acts[..., top].reshape(h * w, n)
    u, s, _ = jnp.linalg.svd(x - jnp.mean(x, axis=0, keepdims=True), full_matrices=False)
    q = min(components, min(h * w, n))
    maps = jax.vmap(largest_magnitude_positive)((u[:, :q] * s[None, :q]).T.reshape(q, h, w))
    wts = jax.nn.softmax(_old_masked_scores(inp, ctx, jnp.moveaxis(maps, 0, -1), jnp.arange(q)))
    return jnp.tensordot(wts, jax.nn.relu(maps), axes=1)


PAIRS = {
    "scorecam": (P.scorecam, old_scorecam, {}),
    "faster_scorecam": (P.faster_scorecam, old_faster_scorecam, {"top_fraction": 0.6}),
    "ablationcam": (P.ablationcam, old_ablationcam, {}),
    "sscam": (P.sscam, old_sscam, {"num_samples": 2}),
    "decomcam": (P.decomcam, old_decomcam, {"channels": 0.5, "components": 4}),
}


# -- a toy whose layer has all-zero, constant and duplicated channels by construction -------------------------
def redundant_toy(seed=0):
    """conv(3 -> 12) -> relu -> avgpool -> fc. Channels 0-4 random filters; 5, 6 copies of 0 and 1; 7-9 zero
    filters with bias -1 (all zero after ReLU); 10, 11 zero filters with bias 0.5 (constant 0.5)."""
    arch = Architecture("toy12", "toy", lambda n, rngs: Toy(n, 0.0, 12, rngs=rngs), "relu", "head.fc.kernel",
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=32)
    module = Toy(5, 0.0, 12, rngs=nnx.Rngs(seed))
    kernel = np.asarray(module.conv.kernel[...]).copy()
    bias = np.asarray(module.conv.bias[...]).copy()
    bias[:5] = np.abs(bias[:5]) + 0.1
    kernel[..., 5:7], bias[5:7] = kernel[..., 0:2], bias[0:2]
    kernel[..., 7:] = 0.0
    bias[7:10], bias[10:] = -1.0, 0.5
    module.conv.kernel[...] = jnp.asarray(kernel)
    module.conv.bias[...] = jnp.asarray(bias)
    graphdef, state = nnx.split(module)
    return Model(arch, graphdef, state, source="toy")


def _unique_count(a):
    """Distinct channel maps of (h, w, K) by brute force in numpy (bitwise, -0.0 as 0.0)."""
    flat = np.moveaxis(np.asarray(a), -1, 0).reshape(a.shape[-1], -1) + np.float32(0.0)
    return len({row.tobytes() for row in flat})


def _setup(model, x, head=None, batch_size=BATCH):
    """Inputs and Context of the model's default layer (or, with ``head``, of hand-made activations)."""
    site = model.layer_site(None)
    score = targets.resolve("logit")
    cap = capture(model.tapped.apply, model.params, x, (site,), (score,))
    acts, grads = cap.acts[site], cap.grads[score][site]
    replay = jax.tree_util.Partial(Replay(model.tapped.apply, site), model.params)
    logits = cap.logits
    if head is not None:
        acts, replay = head
        grads = acts[..., ::-1] - 0.3
        logits = jax.vmap(lambda a, xi: replay(xi[None], a[None])[0])(acts, x)
    ctx = Context(replay=replay, forward=jax.tree_util.Partial(Forward(model.tapped.apply), model.params),
                  score=score, batch_size=batch_size)
    keys = jnp.broadcast_to(jax.random.key(3), x.shape[:1])
    return Inputs(acts, grads, None, logits, cap.classes, x, keys), ctx


def hand_acts(x, model):
    """(N, h, w, 14) activations: 4 distinct random maps, 3 copies, 3 all-zero maps, one of -0.0, two of 0.5
    and one of 0.25 (7 distinct maps), with a linear head over them (replay ignores the image)."""
    site = model.layer_site(None)
    base = capture(model.tapped.apply, model.params, x, (site,)).acts[site][..., :4]
    n, h, w, _ = base.shape
    full = lambda v: jnp.full((n, h, w, 1), v, jnp.float32)  # noqa: E731
    acts = jnp.concatenate([base, base[..., [0, 1, 0]], full(0.0), full(0.0), full(0.0), full(-0.0),
                            full(0.5), full(0.5), full(0.25)], axis=-1)
    wts = jnp.asarray(np.random.default_rng(1).normal(size=(14, 5)).astype(np.float32))
    head = jax.tree_util.Partial(lambda xb, a: jnp.mean(a, axis=(1, 2)) @ wts)
    return acts, head


def _run(fn, inp, ctx, sequential, **kw):
    per = lambda i: fn(i, ctx, **kw)  # noqa: E731
    return jax.jit(lambda i: jax.lax.map(per, i) if sequential else jax.vmap(per)(i))(inp)


@pytest.fixture(scope="module")
def toy():
    return redundant_toy()


@pytest.fixture(scope="module")
def x():
    return toy_input(3, seed=2)


def _both(new, old, inp, ctx, sequential, **kw):
    """The deduplicated method and the oracle on every example, in one program (one compilation)."""
    def over(fn):
        per = lambda i: fn(i, ctx, **kw)  # noqa: E731
        return lambda i: jax.lax.map(per, i) if sequential else jax.vmap(per)(i)
    return jax.jit(lambda i: (over(new)(i), over(old)(i)))(inp)


@pytest.mark.parametrize("name, sequential", [(n, True) for n in PAIRS] + [("scorecam", False), ("ablationcam", False)],
                         ids=[f"{n}-lax_map" for n in PAIRS] + ["scorecam-vmap", "ablationcam-vmap"])
def test_same_maps_as_one_pass_per_channel(name, sequential, toy, x):
    # hand-made activations: the toy's own maps plus copies, all-zero, -0.0 and constant channels
    new, old, kw = PAIRS[name]
    inp, ctx = _setup(toy, x, hand_acts(x, toy))
    got, want = _both(new, old, inp, ctx, sequential, **kw)
    assert np.isfinite(np.asarray(got)).all() and np.abs(np.asarray(want)).max() > 0
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-6, err_msg=name)


def test_the_toy_layer_has_the_repeats_it_is_built_with(toy, x):
    acts = capture(toy.tapped.apply, toy.params, x, ("relu",)).acts["relu"]
    for a in np.asarray(acts):
        assert np.all(a[..., 7:10] == 0) and np.all(a[..., 10:] == 0.5)
        assert np.array_equal(a[..., 5:7], a[..., 0:2])
    counts = np.asarray(P.scorecam_forward_count(toy, x))
    assert counts.tolist() == [_unique_count(a) for a in np.asarray(acts)] == [7, 7, 7]


def test_distinct_maps_groups_exactly():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4, 6)).astype(np.float32)
    a[..., 3] = a[..., 1]
    a[..., 4] = 0.0
    a[..., 5] = -0.0
    b = a.copy()
    b[0, 0, 3] = np.nextafter(a[0, 0, 1], np.float32(np.inf))  # one ulp apart: not the same map
    for arr, reps in ((a, [0, 1, 2, 1, 4, 4]), (b, [0, 1, 2, 3, 4, 4])):
        first, slot, u = (np.asarray(v) for v in jax.jit(P.distinct_maps)(jnp.asarray(arr)))
        assert int(u) == len(set(reps))
        assert first[:u].tolist() == sorted(set(reps))   # representatives first, lowest index, channel order
        assert first[slot].tolist() == reps
        assert sorted(first.tolist()) == list(range(6))


def test_a_fingerprint_collision_never_merges_different_maps(monkeypatch):
    # every channel gets the same fingerprint (constants zero): only the exact comparison separates them
    monkeypatch.setattr(P, "_GOLDEN", 0)
    monkeypatch.setattr(P, "_MIX", 0)
    a = np.random.default_rng(1).normal(size=(3, 3, 5)).astype(np.float32)
    a[..., 2] = a[..., 0]
    first, slot, u = (np.asarray(v) for v in P.distinct_maps(jnp.asarray(a)))
    assert first[slot].tolist() == [0, 1, 0, 3, 4] and int(u) == 4


def _counting(fn, log):
    """``fn`` that adds the size of each batch it is called on to ``log`` (a list) from inside the program."""
    def wrapped(*args):
        jax.debug.callback(lambda v: log.append(int(np.asarray(v).size)), args[-1][:, 0, 0, 0])
        return fn(*args)
    return jax.tree_util.Partial(wrapped)


def test_only_distinct_masks_and_live_channels_cost_a_pass(toy, x):
    inp, plain = _setup(toy, x, hand_acts(x, toy))
    forwards, replays = [], []
    ctx = Context(replay=_counting(plain.replay, replays), forward=_counting(plain.forward, forwards),
                  score=plain.score, batch_size=BATCH)
    # replay's counted argument is its activations' first channel: all that matters is one entry per pass
    jax.block_until_ready(_run(P.scorecam, inp, ctx, True))
    assert sum(forwards) == 3 * 9  # 7 distinct masks of 14 channels, in chunks of 3: 3 chunks per image
    jax.block_until_ready(_run(P.ablationcam, inp, ctx, True))
    assert sum(replays) == 3 * 12  # 10 channels not all zero: 4 chunks of 3 per image
    forwards.clear()
    jax.block_until_ready(_run(P.sscam, inp, ctx, True, num_samples=2))
    assert sum(forwards) == 3 * 15  # 2 draws x 7 distinct maps = 14 jobs: 5 chunks per image


def test_explain_on_the_redundant_toy_matches_the_oracle(toy, x):
    maps = jaxcam.explain(toy, x, ["scorecam", "ablationcam"], preprocessed=True, raw=True, batch_size=BATCH)
    inp, ctx = _setup(toy, x)
    want = jax.jit(lambda i: [jax.lax.map(lambda e: old(e, ctx).sum(axis=-1), i)
                              for old in (old_scorecam, old_ablationcam)])(inp)
    for name, w in zip(("scorecam", "ablationcam"), want):
        assert np.abs(np.asarray(w)).max() > 0
        np.testing.assert_allclose(np.asarray(maps[name][0]), np.asarray(w), atol=1e-6, rtol=1e-6, err_msg=name)
