"""One tiny residual CNN written four ways from the same weights, for the adapter tests: as a flax.nnx module, as
an Equinox module, as a plain function with ``checkpoint_name`` markers, and as a hand-written split (the
reference every adapter's maps are compared with).

    stem: conv 3x3 (3->4, stride 2) + bias, relu                                          32 px -> 16 px
    block1, block2: h -> relu(h + conv_b(relu(conv_a(h))))   (convs 3x3, 4->4, + bias)
    head: global average pool, dense 4->5

Sites compared: ``block1`` (between the blocks) and ``block2.conv_a`` (inside the second residual block: the rest
of the network needs the skip input ``block1`` besides the activation). Five convolutions in the forward.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxcam.methods import METHODS
from jaxcam.methods.base import Context, Inputs, channel_sum, first_component
from jaxcam.targets import resolve

SIZE, CLASSES = 32, 5
BETWEEN, INSIDE = "block1", "block2.conv_a"


def weights(seed=0):
    """``{name: (kernel HWIO, bias)}`` and the dense layer, He-scaled, biases nonzero."""
    rng = np.random.default_rng(seed)

    def conv(cin, cout):
        return (rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32),
                rng.normal(0, 0.1, cout).astype(np.float32))

    w = {"stem": conv(3, 4)}
    for b in ("block1", "block2"):
        w[f"{b}.conv_a"], w[f"{b}.conv_b"] = conv(4, 4), conv(4, 4)
    w["head"] = (rng.normal(0, 0.5, (4, CLASSES)).astype(np.float32), rng.normal(0, 0.1, CLASSES).astype(np.float32))
    return w


def images(n=2, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32))


# -- the plain function (checkpoint_name markers) and the hand split -------------------------------------------------
def _conv(x, kb, stride=1):
    k, b = kb
    y = jax.lax.conv_general_dilated(x, k, (stride, stride), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + b.reshape(1, 1, 1, -1)


def marked_fn(params, x):
    """The network as a plain ``fn(params, x) -> logits`` with markers at every layer the tests name."""
    h = checkpoint_name(jax.nn.relu(_conv(x, params["stem"], 2)), "stem")
    for b in ("block1", "block2"):
        inner = checkpoint_name(_conv(h, params[f"{b}.conv_a"]), f"{b}.conv_a")
        h = checkpoint_name(jax.nn.relu(h + _conv(jax.nn.relu(inner), params[f"{b}.conv_b"])), b)
    return h.mean(axis=(1, 2)) @ params["head"][0] + params["head"][1][None]


def tapped_fn(params, x, tap):
    """The same network taking the tap directly."""
    h = tap("stem", jax.nn.relu(_conv(x, params["stem"], 2)))
    for b in ("block1", "block2"):
        inner = tap(f"{b}.conv_a", _conv(h, params[f"{b}.conv_a"]))
        h = tap(b, jax.nn.relu(h + _conv(jax.nn.relu(inner), params[f"{b}.conv_b"])))
    return h.mean(axis=(1, 2)) @ params["head"][0] + params["head"][1][None]


def split(params, site):
    """``(features(x) -> (a, skip), head(a, skip) -> logits)``, written out by hand for the two sites."""
    def block(h, b):
        return jax.nn.relu(h + _conv(jax.nn.relu(_conv(h, params[f"{b}.conv_a"])), params[f"{b}.conv_b"]))

    def pool_fc(h):
        return h.mean(axis=(1, 2)) @ params["head"][0] + params["head"][1][None]

    def stem_block1(x):
        return block(jax.nn.relu(_conv(x, params["stem"], 2)), "block1")

    if site == BETWEEN:
        return (lambda x: (stem_block1(x), None)), (lambda a, skip: pool_fc(block(a, "block2")))
    assert site == INSIDE
    def features(x):
        skip = stem_block1(x)
        return _conv(skip, params["block2.conv_a"]), skip

    def head(a, skip):
        return pool_fc(jax.nn.relu(skip + _conv(jax.nn.relu(a), params["block2.conv_b"])))
    return features, head


def reference_raw(params, x, site, methods, key=jax.random.PRNGKey(0)):
    """``{method: raw (N, h, w) maps}`` from the hand split: activations, gradients (and ShapleyCAM's
    Hessian-vector product) computed by hand, then each registry method per example (vmapped) and its channel
    reduction. One compiled program for all ``methods``."""
    return _reference(params, x, key, site, tuple(methods))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _reference(params, x, key, site, methods):
    features, head = split(params, site)
    a, skip = features(x)
    logits = head(a, skip)
    cls = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    keys = jnp.broadcast_to(key, x.shape[:1])
    out = {}
    for method in methods:
        spec = METHODS[method]
        score = resolve(spec.target)

        def total(a_, score=score):
            return jnp.sum(jax.vmap(score)(head(a_, skip), cls))

        grads = jax.grad(total)(a)
        hvp = jax.jvp(jax.grad(total), (a,), (a,))[1] if spec.hvp else jnp.zeros_like(a)
        sk = jnp.zeros_like(a) if skip is None else skip

        def one(a_i, g_i, h_i, l_i, c_i, x_i, k_i, s_i, spec=spec, score=score):
            def replay(xs, acts):  # the head on this example's skip input
                return head(acts, None if skip is None else jnp.broadcast_to(s_i, acts.shape))
            ctx = Context(replay=replay, forward=None, score=score, batch_size=8)
            m = spec.fn(Inputs(a_i, g_i, h_i if spec.hvp else None, l_i, c_i, x_i, k_i), ctx)
            if spec.output == "map":
                return m
            return first_component(m) if spec.output == "projection" else channel_sum(m)

        out[method] = jax.vmap(one)(a, grads, hvp, logits, cls, x, keys, sk)
    return out


def ablation_weights(params, x, site):
    """Ablation-CAM's channel weights ``(y - y_k) / y`` (N, K) by hand: channel k of the site zeroed, the rest of
    the network (skip path included) run by hand."""
    features, head = split(params, site)
    a, skip = features(x)
    logits = head(a, skip)
    cls = jnp.argmax(logits, axis=-1)
    y = jnp.take_along_axis(logits, cls[:, None], 1)[:, 0]
    yk = jnp.stack([jnp.take_along_axis(head(a.at[..., k].set(0.0), skip), cls[:, None], 1)[:, 0]
                    for k in range(a.shape[-1])], axis=1)
    return (y[:, None] - yk) / y[:, None], a


# -- flax.nnx ------------------------------------------------------------------------------------------------------
def nnx_model(seed=0):
    from flax import nnx

    w = weights(seed)
    zeros = nnx.initializers.zeros  # the weights are set below; no random initialisation to run

    def conv(name, stride=1):
        c = nnx.Conv(w[name][0].shape[2], w[name][0].shape[3], (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                     kernel_init=zeros, rngs=nnx.Rngs(0))
        c.kernel[...], c.bias[...] = jnp.asarray(w[name][0]), jnp.asarray(w[name][1])
        return c

    class Block(nnx.Module):
        def __init__(self, b):
            self.conv_a, self.conv_b = conv(f"{b}.conv_a"), conv(f"{b}.conv_b")

        def __call__(self, h):
            return jax.nn.relu(h + self.conv_b(jax.nn.relu(self.conv_a(h))))

    class TinyResNet(nnx.Module):
        def __init__(self):
            self.stem = conv("stem", 2)
            self.block1, self.block2 = Block("block1"), Block("block2")
            self.head = nnx.Linear(4, CLASSES, kernel_init=zeros, rngs=nnx.Rngs(0))
            self.head.kernel[...], self.head.bias[...] = jnp.asarray(w["head"][0]), jnp.asarray(w["head"][1])

        def __call__(self, x):
            h = self.block2(self.block1(jax.nn.relu(self.stem(x))))
            return self.head(h.mean(axis=(1, 2)))

    return TinyResNet()


# -- Equinox -------------------------------------------------------------------------------------------------------
def equinox_model(seed=0):
    import equinox as eqx

    w = weights(seed)

    def conv(name, stride=1):
        k, b = w[name]
        c = eqx.nn.Conv2d(k.shape[2], k.shape[3], 3, stride=stride, padding=1, key=jax.random.PRNGKey(0))
        return eqx.tree_at(lambda c: (c.weight, c.bias), c,
                           (jnp.asarray(k.transpose(3, 2, 0, 1)), jnp.asarray(b.reshape(-1, 1, 1))))

    class Block(eqx.Module):
        conv_a: eqx.nn.Conv2d
        conv_b: eqx.nn.Conv2d

        def __call__(self, h):
            return jax.nn.relu(h + self.conv_b(jax.nn.relu(self.conv_a(h))))

    class TinyResNet(eqx.Module):
        stem: eqx.nn.Conv2d
        block1: Block
        block2: Block
        head: eqx.nn.Linear

        def __call__(self, x):  # one example, channels-first (3, H, W)
            h = self.block2(self.block1(jax.nn.relu(self.stem(x))))
            return self.head(h.mean(axis=(1, 2)))

    head = eqx.nn.Linear(4, CLASSES, key=jax.random.PRNGKey(0))
    head = eqx.tree_at(lambda h: (h.weight, h.bias), head, (jnp.asarray(w["head"][0].T), jnp.asarray(w["head"][1])))
    return TinyResNet(conv("stem", 2), Block(conv("block1.conv_a"), conv("block1.conv_b")),
                      Block(conv("block2.conv_a"), conv("block2.conv_b")), head)


def check_against_hand_split(model, params) -> None:
    """Every gradient method's raw map equals the hand split's (to 1e-5 of its scale), Ablation-CAM the hand-computed
    ablation and Score-CAM runs, at the layer between blocks and the one inside the residual block: the check each
    adapter's tests run on its own rendering of this network."""
    import jaxcam
    from jaxcam.methods import gradient_methods

    x = images()
    out = jaxcam.explain(model, x, gradient_methods() + ["ablationcam", "scorecam"], layer=[BETWEEN, INSIDE],
                         raw=True, preprocessed=True)
    for i, site in enumerate((BETWEEN, INSIDE)):
        refs = reference_raw(params, x, site, gradient_methods())
        for name in gradient_methods():
            ref = np.asarray(refs[name])
            err = np.abs(np.asarray(out[name][i]) - ref).max()
            assert err <= 1e-5 * max(1.0, np.abs(ref).max()), (site, name, err)
        weights, a = ablation_weights(params, x, site)
        ref = np.asarray((a * weights[:, None, None]).sum(-1))  # (y - y_k) / y cancels: float32 noise ~1e-6
        np.testing.assert_allclose(out["ablationcam"][i], ref, rtol=0, atol=2e-5 * np.abs(ref).max())
        assert np.isfinite(np.asarray(out["scorecam"][i])).all() and np.ptp(np.asarray(out["scorecam"][i])) > 0
