"""``explain``: one compiled program per configuration: capture -> every requested method -> post-processing.

The capture runs the network once up to the first requested layer, then through the rest with ``jax.vjp`` (only
when a method needs gradients). Distinct target scores share that one forward: their cotangents are stacked and the
backward through the head is vmapped over them. Methods are per-example functions vmapped over the batch.
Static (recompiles): model, layers, methods, target functions, flags, shapes. Traced (no recompile): parameters,
images, class indices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from . import targets as targets_mod
from .errors import InvalidArgumentError, UnknownLayerError, UnknownNameError
from .keys import as_key
from .methods import METHODS, MethodSpec
from .methods.base import Context, Inputs, channel_sum, first_component
from .methods.fullgrad import fullgrad
from .methods.multipass import K_GRID, META_MEMBERS, adaptive_k, cameras, default_scales, metacam
from .imputation import PERCENTILES, road_combined_scores
from .models.model import Model
from .postprocess import minmax, postprocess
from .tapped import Forward, InDtype, Replay, Tapped, capture, identity_tap, input_gradients, replay

TRACE_COUNT = {"explain": 0}  # incremented each time a program is traced (tests count compilations with it)


def _resolve_methods(method) -> tuple[str, ...]:
    if isinstance(method, str):
        names = tuple(METHODS) if method == "all" else (method,)
    elif isinstance(method, (list, tuple)):
        names = tuple(method)
        if not names:
            raise UnknownNameError("(empty list)", METHODS, "method")
    else:
        raise InvalidArgumentError(f"method must be a method name, a list of names or 'all', got "
                                   f"{type(method).__name__} {method!r}; valid names: {', '.join(METHODS)}")
    for n in names:
        if not isinstance(n, str) or n not in METHODS:
            raise UnknownNameError(n, list(METHODS) + ["all"], "method")
    return tuple(dict.fromkeys(names))


def _resolve_layers(model: Model, layer) -> tuple[str, ...]:
    layers = [layer] if layer is None or isinstance(layer, (str, int, np.integer)) else layer
    if not isinstance(layers, (list, tuple)):
        raise InvalidArgumentError(f"layer must be a layer name, an integer stage index, None (the default layer) "
                                   f"or a list of them, got {type(layer).__name__} {layer!r}; valid layers of "
                                   f"{model.name}: {', '.join(model.valid_layers)}")
    if not layers:
        raise UnknownLayerError("(empty list)", model.valid_layers, model.name)
    for ly in layers:
        if not (ly is None or isinstance(ly, str) or (isinstance(ly, (int, np.integer)) and not isinstance(ly, bool))):
            raise InvalidArgumentError(f"layer must be a layer name or an integer stage index, got "
                                       f"{type(ly).__name__} {ly!r}; valid layers of {model.name}: "
                                       f"{', '.join(model.valid_layers)}")
    return tuple(model.layer_site(ly) for ly in layers)


def _gap_fc_ok(model: Model, sites: Sequence[str]) -> bool:
    return all(s in model.tapped.gap_fc_sites for s in sites)


def _check_gap_fc(model: Model, spec: MethodSpec, sites: Sequence[str]) -> None:
    if spec.gap_fc_only and not _gap_fc_ok(model, sites):
        bad = next(s for s in sites if not _gap_fc_ok(model, (s,)))
        raise UnknownLayerError(bad, sorted(model.tapped.gap_fc_sites),
                                f"method {spec.name!r} on {model.name} (CAM needs the layer right before "
                                "global average pooling and the classifier)")


@dataclass(frozen=True)
class Config:
    """Everything static about one explain() program: a change here compiles a new program."""

    sites: tuple[str, ...]
    methods: tuple[str, ...]
    scores: tuple
    raw: bool
    eigen_smooth: bool
    eigen_sign: str
    aug_smooth: bool
    noise_samples: int
    noise_std: float
    batch_size: int
    sequential_examples: bool
    options: tuple
    mean: tuple
    std: tuple
    compute_dtype: str = "float32"  # the network's parameters and activations; CAM arithmetic stays float32


@functools.lru_cache(maxsize=128)
def _program(tapped: Tapped, cfg: Config):
    """Build and jit the whole computation for one static configuration of one tapped model."""
    specs = [METHODS[m] for m in cfg.methods]
    sites = tuple(dict.fromkeys(cfg.sites))
    single = [(spec, s) for spec, s in zip(specs, cfg.scores) if spec.output in ("weighted", "projection", "map")]
    grad_scores = tuple(dict.fromkeys(s for spec, s in single if spec.gradients))
    hvp_scores = tuple(dict.fromkeys(s for spec, s in single if spec.hvp))
    opts = dict(cfg.options)
    # the network in the compute dtype; every tap, activation, gradient and score stays float32
    apply = tapped.apply if cfg.compute_dtype == "float32" else InDtype(tapped.apply, cfg.compute_dtype)

    def option(spec, name, default=None):
        return opts.get((spec.name, name), default)

    attention = tapped.attention_sites if any(spec.attention for spec in specs) else ()
    own = tapped.map_sites[:1] if any(spec.own_maps for spec in specs) else ()

    def capture_all(params, x, classes):
        cap = capture(apply, params, x, sites, grad_scores, classes, record=attention + own)
        hvps = {}
        for s in hvp_scores:  # ShapleyCAM: (d^2 S / dA^2) A at each site, through a replay of the rest
            hvps[s] = {}
            for site in sites:
                def grad_at(a, site=site, s=s):
                    return jax.grad(lambda a_: jnp.sum(jax.vmap(s)(replay(apply, params, x, site, a_),
                                                                    cap.classes)))(a)
                hvps[s][site] = jax.jvp(grad_at, (cap.acts[site],), (cap.acts[site],))[1]
        return cap, hvps

    def layer_raw(spec, score, params, x, keys, cap, hvps, site):
        if spec.output == "multiscale":
            scales = option(spec, "scales") or default_scales(x.shape[1])

            def capture_at(xr):
                c = capture(apply, params, xr, (site,), (score,), cap.classes)
                return c.logits, c.acts[site], c.grads[score][site]
            return cameras(x, cap.classes, capture_at, scales)
        ctx = Context(replay=jax.tree_util.Partial(Replay(apply, site), params),
                      forward=jax.tree_util.Partial(Forward(apply), params),
                      score=score, batch_size=cfg.batch_size, mean=cfg.mean, std=cfg.std)
        attn = jnp.stack([cap.acts[a] for a in attention], axis=1) if spec.attention else None  # (N, L, h, T, T)
        inputs = Inputs(cap.acts[site], cap.grads[score][site] if spec.gradients else None,
                        hvps[score][site] if spec.hvp else None, cap.logits, cap.classes, x, keys, attn,
                        cap.acts[own[0]] if spec.own_maps else None)
        kwargs = {k: opts[(spec.name, k)] for k in spec.options if (spec.name, k) in opts}
        per_example = lambda inp: spec.fn(inp, ctx, **kwargs)  # noqa: E731
        if spec.full_forwards and cfg.sequential_examples:
            # methods made of many full forwards: one image at a time, each chunked by batch_size, so the
            # forward batch stays batch_size (on CPU small batches run fastest per image; memory stays bounded)
            out = jax.lax.map(per_example, inputs)
        else:
            out = jax.vmap(per_example)(inputs)
        if spec.output == "map":
            return out
        if spec.output == "projection" or cfg.eigen_smooth:
            return jax.vmap(lambda t: first_component(t, cfg.eigen_sign))(out)
        return jax.vmap(channel_sum)(out)

    def whole_network(score, params, x, cls):
        """FullGrad, always in float32 on the unwrapped forward: one backward to the input and every bias site."""
        _, gx, gsites = input_gradients(tapped.apply, params, x, tapped.bias_sites, score, cls)
        biases = tapped.biases(params)  # traced: the parameters passed in, never constants
        gtaps = [gsites[b] for b in tapped.bias_sites]
        bias_list = [biases[b] for b in tapped.bias_sites]
        size = x.shape[1:3]
        total = jax.vmap(lambda *a: fullgrad(a[0], a[1], a[2:], bias_list, size))(x, gx, *gtaps)
        return [total] if cfg.raw else jax.vmap(minmax)(total)

    def run(params, x, classes, key):
        TRACE_COUNT["explain"] += 1
        # every example draws from the same key: a map never depends on the image's position in the batch
        keys = jnp.broadcast_to(key, x.shape[:1])
        cap, hvps = capture_all(params, x, classes)
        size = x.shape[1:3]
        result = {}
        for spec, score in zip(specs, cfg.scores):
            if spec.output == "whole_network":
                result[spec.name] = whole_network(score, params, x, cap.classes)
            elif spec.output != "ensemble":
                raws = [layer_raw(spec, score, params, x, keys, cap, hvps, site) for site in cfg.sites]
                result[spec.name] = raws if cfg.raw else jax.vmap(lambda *r: postprocess(list(r), size))(*raws)
        for spec in specs:
            if spec.output == "ensemble":
                members = option(spec, "members", META_MEMBERS)
                maps = [result[m] if not cfg.raw else jax.vmap(lambda *r: postprocess(list(r), size))(*result[m])
                        for m in members]
                k = option(spec, "k", 0.1)
                if option(spec, "adaptive", False):
                    fwd = jax.tree_util.Partial(Forward(apply), params)
                    road_fn = functools.partial(road_combined_scores, fwd, targets_mod.probability, x, cls=cap.classes,
                                                percentiles=option(spec, "percentiles", PERCENTILES),
                                                batch_size=cfg.batch_size)
                    road_of = lambda cams: road_fn(cams=cams)  # noqa: E731
                    k = jnp.stack([adaptive_k(m, road_of, option(spec, "k_grid", K_GRID)) for m in maps])
                combined = metacam(maps, k, option(spec, "delta", 1e-3))
                result[spec.name] = [combined] if cfg.raw else jax.vmap(minmax)(combined)
        return result, cap.logits, cap.classes

    def average(maps_by_variant, unflip):
        """Mean over variants of final maps (V, N, H, W), flipping back those computed on flipped inputs."""
        return jnp.stack([m[:, :, ::-1] if f else m for m, f in zip(maps_by_variant, unflip)]).mean(axis=0)

    def run_augmented(params, x, classes, key):
        """pytorch-grad-cam's aug_smooth: horizontal flip x multiply (0.9, 1, 1.1) of the normalised input; each
        final map is flipped back and the six are averaged (no renormalisation, as in the reference)."""
        variants = [(flip, f) for flip in (False, True) for f in (0.9, 1.0, 1.1)]
        xs = jnp.concatenate([(x[:, :, ::-1] if flip else x) * f for flip, f in variants])
        cs = None if classes is None else jnp.tile(classes, len(variants))
        result, logits, cls = run(params, xs, cs, key)
        n = x.shape[0]
        out = {k: average(v.reshape(len(variants), n, *v.shape[1:]), [f for f, _ in variants])
               for k, v in result.items()}
        return out, logits[:n], cls[:n]

    def run_noisy(params, x, classes, key):
        """SmoothGrad-style averaging of any method: ``noise_samples`` copies of each image with Gaussian noise of
        ``noise_std`` times the image's value range, each explained for the clean image's class; maps averaged."""
        logits = apply(params, x, identity_tap)
        cls = jnp.argmax(logits, axis=-1).astype(jnp.int32) if classes is None else classes
        k_noise, k_run = jax.random.split(key)
        s, n = cfg.noise_samples, x.shape[0]
        spread = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[None, :, None, None, None]
        noise = jax.random.normal(k_noise, (s, 1, *x.shape[1:]), x.dtype)  # the same draws for every image
        noisy = x[None] + cfg.noise_std * spread * noise
        result, _, _ = run(params, noisy.reshape(s * n, *x.shape[1:]), jnp.tile(cls, s), k_run)
        out = {k: v.reshape(s, n, *v.shape[1:]).mean(axis=0) for k, v in result.items()}
        return out, logits, cls

    if cfg.aug_smooth:
        return jax.jit(run_augmented)
    return jax.jit(run_noisy if cfg.noise_samples else run)


def explain(model: Model, images, method: str | Sequence[str] = "gradcam", targets=None, layer=None, *,
            target: str | Callable | None = None, preprocessed: bool = False, raw: bool = False,
            eigen_smooth: bool = False, eigen_sign: str = "max_abs", aug_smooth: bool = False,
            noise_samples: int = 0, noise_std: float = 0.15, key: int | jax.Array = 0, batch_size: int | None = None,
            method_options: dict | None = None, compute_dtype: str = "float32", return_logits: bool = False):
    """Class activation maps of ``images`` under ``model``.

    Args:
      images: anything :func:`jaxcam.preprocess` accepts, or (``preprocessed=True``) a model-input batch.
      method: a name in :data:`jaxcam.METHODS`, a list of names, or ``"all"``. A list returns ``{name: maps}``
        computed from one shared forward (and one batched backward for the gradient methods).
      targets: None (each image's predicted class), one class index, or one index per image.
      layer: a stage name, alias or index (default: the architecture's default CAM layer), or a list of them: the
        per-layer maps are fused as in pytorch-grad-cam (relu, mean, min-max).
      target: the target score for methods without an intrinsic one: a name in :data:`jaxcam.targets.TARGETS` or
        a function ``(logits (C,), cls) -> scalar``. Default: each method's own (``logit`` for most).
      raw: return the raw per-layer maps (before ReLU and normalisation; at feature resolution, or input resolution
        for FullGrad, CAMERAS and MetaCAM): a list with one (N, h, w) array per layer, in the order given.
      eigen_smooth: reduce weighted activations by their first principal component instead of the channel sum.
      eigen_sign: the SVD sign rule for projections ("max_abs": largest magnitude positive; "svd": LAPACK's).
      aug_smooth: average over horizontal flips x input scalings (0.9, 1, 1.1), as pytorch-grad-cam does.
      noise_samples, noise_std: average any method over this many noisy copies of each image (SmoothGrad style:
        Gaussian noise of ``noise_std`` times the image's value range), explaining the clean image's class.
      key: the PRNG key (or an int seed) for every random choice (noise averaging, SS-CAM). Traced: a new key does
        not recompile. The same key gives the same maps.
      batch_size: the chunk size of the perturbation methods' extra passes (bounds their memory). Default: 8 on
        CPU, where small batches run fastest per image, with images taken one at a time by the methods made of
        full forwards (Score-CAM and its variants); 64 on accelerators, with images batched together.
      method_options: ``{method: {option: value}}``, e.g. ``{"faster_scorecam": {"top_fraction": 0.2}}``; see each
        method's ``options`` in :data:`jaxcam.METHODS`.
      compute_dtype: "float32" (default) or "bfloat16": the network's parameters and activations in that dtype
        (faster on accelerators with bf16 units; slower on most CPUs, which emulate it), while activations,
        gradients and scores are cast to float32 before any CAM arithmetic, normalisation and resizing. FullGrad
        always runs in float32.
      return_logits: also return ``(logits, explained classes)``.

    Returns:
      (N, H, W) float32 maps in [0, 1] (a dict of them for a list of methods).
    """
    cfg, names = _configure(model, method, layer, target=target, raw=raw, eigen_smooth=eigen_smooth,
                            eigen_sign=eigen_sign, aug_smooth=aug_smooth, noise_samples=noise_samples,
                            noise_std=noise_std, batch_size=batch_size, method_options=method_options,
                            compute_dtype=compute_dtype)
    x = model.check_input(images if preprocessed else model.preprocess(images))
    classes = targets_mod.class_indices(targets, x.shape[0], model.num_classes)
    key = as_key(key)
    result, logits, cls = _program(model.tapped, cfg)(model.params, x, classes, key)
    out = {n: result[n] for n in names} if not isinstance(method, str) or method == "all" else result[names[0]]
    return (out, logits, cls) if return_logits else out


def _configure(model: Model, method, layer, *, target=None, raw: bool = False, eigen_smooth: bool = False,
               eigen_sign: str = "max_abs", aug_smooth: bool = False, noise_samples: int = 0,
               noise_std: float = 0.15, batch_size: int | None = None, method_options: dict | None = None,
               compute_dtype: str = "float32"):
    """Validate explain()'s static arguments: ``(Config, method names to return)``."""
    names = _resolve_methods(method)
    sites = _resolve_layers(model, layer)
    unavailable = unavailable_methods(model)
    if method == "all":  # every method that applies to these layers (and to this model)
        names = tuple(n for n in names if (not METHODS[n].gap_fc_only or _gap_fc_ok(model, sites))
                      and n not in unavailable)
    for n in names:
        _check_gap_fc(model, METHODS[n], sites)
    on_cpu = jax.default_backend() == "cpu"
    batch_size = (8 if on_cpu else 64) if batch_size is None else batch_size
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(noise_samples, int) or noise_samples < 0:
        raise InvalidArgumentError(f"noise_samples must be a non-negative int, got {noise_samples!r}")
    if not isinstance(noise_std, (int, float, np.floating, np.integer)) or not 0 <= float(noise_std) < float("inf"):
        raise InvalidArgumentError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if (aug_smooth or noise_samples) and raw:
        raise InvalidArgumentError("raw=True returns per-layer maps; it cannot be combined with aug_smooth or noise_samples")
    if aug_smooth and noise_samples:
        raise InvalidArgumentError("choose one of aug_smooth and noise_samples")
    if eigen_smooth and "fullgrad" in names:
        raise InvalidArgumentError("eigen_smooth is not supported for 'fullgrad' (it ignores the target layer)")
    compute_dtype = _compute_dtype(compute_dtype)
    options = _options(method_options, names)
    given = dict(options)
    if method == "all":  # methods that cannot run without an option (BroadCAM's fitted weights) unless it is given
        names = tuple(n for n in names if all((n, o) in given for o in METHODS[n].requires))
    for n in names:
        for o in METHODS[n].requires:
            if (n, o) not in given:
                raise InvalidArgumentError(f"method {n!r} needs method_options={{{n!r}: {{{o!r}: ...}}}}"
                                           + (" from jaxcam.fit_broadcam(model, images, labels, layer=...)"
                                              if n == "broadcam" else ""))
        site = getattr(given.get((n, "weights")), "site", None)
        if site is not None and site not in sites:
            raise InvalidArgumentError(f"{n} weights were fitted at layer {site!r}; explain with layer={site!r}")
    computed = _with_members(names, dict(options))
    for n in computed:
        if n in unavailable and not (n == "metacam" and ("metacam", "members") in given):
            who = f"method {n!r}" if n in names else f"metacam's members (they include {n!r})"
            raise InvalidArgumentError(f"{who} does not apply to {model.name}: {unavailable[n]}"
                                       + ("" if n in names else "; pass method_options={'metacam': {'members': "
                                          "[...]}} without it"))
    user_score = None if target is None else targets_mod.resolve(target)
    scores = tuple(targets_mod.resolve(METHODS[n].target) if (user_score is None or METHODS[n].intrinsic_target)
                   else user_score for n in computed)
    cfg = Config(sites, computed, scores, raw, eigen_smooth, eigen_sign, aug_smooth,
                 noise_samples, float(noise_std), batch_size, on_cpu, options, tuple(model.mean),
                 tuple(model.std), compute_dtype)
    return cfg, names


def unavailable_methods(model: Model) -> dict[str, str]:
    """``{method: why}`` for the methods this model cannot run whatever the layer: FullGrad without bias sites,
    and on a Vision Transformer (token layers) every method whose registry entry says why not (``on_tokens``)."""
    out = {}
    if model.tapped.biases is None:
        out["fullgrad"] = ("it needs the model's bias-carrying layers, and its tapped forward declares no bias sites "
                           "(adapters of Flax models declare them; a plain function model can pass "
                           "Tapped(bias_sites=..., biases=...))")
    if model.token_sites:
        out |= {n: f"on a Vision Transformer {spec.on_tokens}" for n, spec in METHODS.items() if spec.on_tokens}
    if not model.tapped.attention_sites:
        out |= {n: "it needs a Vision Transformer's attention probabilities, and the model's adapter declares no "
                   "attention sites (from_hf and from_linen find them on attention modules that can return them)"
                for n, spec in METHODS.items() if spec.attention}
    if not model.tapped.map_sites:
        out |= {n: "it reads the class maps a model trained with exits computes itself (jaxcam.train.ame builds one), "
                   "and this model's tapped forward declares no map sites"
                for n, spec in METHODS.items() if spec.own_maps}
    missing = sorted(set(META_MEMBERS) & out.keys())
    if missing:  # MetaCAM's default members; with members= of its own it runs (checked at configuration)
        out["metacam"] = f"its default members include {', '.join(missing)}: {out[missing[0]]}"
    return out


COMPUTE_DTYPES = ("float32", "bfloat16")


def _compute_dtype(value) -> str:
    try:
        name = jnp.dtype(value).name
    except TypeError:
        name = str(value)
    if name not in COMPUTE_DTYPES:
        raise UnknownNameError(str(value), COMPUTE_DTYPES, "compute_dtype")
    return name


def explainer(model: Model, method: str = "gradcam", layer=None, **options):
    """One method as a pure function ``fn(params, x, classes, key) -> maps (N, H, W)`` of a preprocessed batch:
    the program :func:`explain` runs, for use inside other compiled programs (metrics that re-explain perturbed
    images, parameter randomisation). ``classes`` (N,) int32, or None for the predicted classes; ``options``: the
    static keyword arguments of :func:`explain` (``target``, ``eigen_smooth``, ``batch_size``, ...) except ``raw``."""
    if not isinstance(method, str) or method == "all":
        raise InvalidArgumentError(f"explainer takes one method name, got {method!r}")
    if options.get("raw"):
        raise InvalidArgumentError("explainer returns final maps; raw=True is not supported")
    cfg, (name,) = _configure(model, method, layer, **options)
    program = _program(model.tapped, cfg)
    return Explainer(program, name)


def explain_program(model: Model, methods: Sequence[str], layer=None, **options) -> Callable:
    """The compiled program :func:`explain` runs for ``methods`` (a list) on ``model``: a pure, jitted
    ``fn(params, x, classes, key) -> ({method: maps (N, H, W)}, logits (N, C), explained classes (N,))`` of a
    preprocessed batch, for use inside other compiled programs (the robustness grid). ``options``: the static
    keyword arguments of :func:`explain` except ``raw``. Parameters are traced: another model of the same
    architecture's parameters give that model's maps."""
    if options.get("raw"):
        raise InvalidArgumentError("explain_program returns final maps; raw=True is not supported")
    cfg, _ = _configure(model, list(methods), layer, **options)
    return _program(model.tapped, cfg)


@dataclass(frozen=True)
class Explainer:
    """A compiled explain() program restricted to one method; hashable, so other programs take it as static."""

    program: Callable
    name: str

    def __call__(self, params, x, classes, key):
        return self.program(params, x, classes, key)[0][self.name]


def _options(method_options, names) -> tuple:
    options = []
    if not isinstance(method_options, (dict, type(None))):
        raise InvalidArgumentError(f"method_options must be a dict {{method: {{option: value}}}}, got "
                                   f"{type(method_options).__name__}")
    for m, opts in (method_options or {}).items():
        if m not in names:
            raise UnknownNameError(m, names, "method_options (methods requested)")
        if not isinstance(opts, dict):
            raise InvalidArgumentError(f"method_options[{m!r}] must be a dict {{option: value}}, got "
                                       f"{type(opts).__name__} {opts!r}")
        for k, v in opts.items():
            if not METHODS[m].options:
                raise InvalidArgumentError(f"method_options: method {m!r} takes no options (got {k!r}); methods "
                                           "with options: " + ", ".join(f"{n} ({', '.join(sp.options)})"
                                                                        for n, sp in METHODS.items() if sp.options))
            if k not in METHODS[m].options:
                raise UnknownNameError(k, METHODS[m].options, f"options of {m!r}")
            options.append(((m, k), tuple(v) if isinstance(v, list) else v))
    return tuple(sorted(options))


def _with_members(names: tuple[str, ...], options: dict) -> tuple[str, ...]:
    """The methods to compute: those asked for plus any ensemble's members (computed once, shared)."""
    out = [n for n in names if METHODS[n].output != "ensemble"]
    for n in names:
        if METHODS[n].output == "ensemble":
            members = options.get((n, "members"), META_MEMBERS)
            for m in members:
                if m not in METHODS or METHODS[m].output == "ensemble":
                    raise UnknownNameError(m, [k for k, s in METHODS.items() if s.output != "ensemble"],
                                           f"members of {n!r}")
            out += [m for m in members if m not in out]
    return tuple(dict.fromkeys(out + [n for n in names if METHODS[n].output == "ensemble"]))
