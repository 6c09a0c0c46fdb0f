"""``Model``: an architecture's parameters plus its ordered, named stages, split into pure functions.

The NNX module never leaves this file: a ``Model`` holds the module's graph definition and its parameter state,
and every computation is a pure function ``(params, x) -> y`` over a contiguous range of stages, merged inside
(so ``jax.jit``/``jax.vmap``/``jax.vjp`` apply directly). ``split(layer)`` returns ``(features_fn, head_fn)`` as
``jax.tree_util.Partial`` objects: callables of ``x`` alone that are also pytrees whose leaves are the parameters,
so passing them into a jitted function traces the parameters instead of baking them in as constants.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass
from functools import cached_property, partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..data import imagenet_classes, preprocess
from ..errors import (ClassIndexError, ImageDtypeError, ImageShapeError, InvalidArgumentError, NonFiniteImageError,
                      UnknownLayerError)
from ..tapped import Tapped
from .architectures import Architecture, get_architecture


@dataclass(frozen=True)
class StageRange:
    """Stages ``[start, stop)`` of one architecture as a pure, hashable function ``(params, x) -> y``."""

    graphdef: nnx.GraphDef
    start: int
    stop: int

    def __call__(self, params, x):
        return _run_stages(self, params, x)


@partial(jax.jit, static_argnums=0)
def _run_stages(rng: StageRange, params, x):
    module = nnx.merge(rng.graphdef, params)
    for _, fn in module.stages()[rng.start:rng.stop]:
        x = fn(x)
    return x


@dataclass(frozen=True)
class Jitted:
    """A hashable ``(params, x) -> y`` run through one ``jax.jit`` (eager calls compile once per shape)."""

    fn: object

    def __call__(self, params, x):
        return _run_jitted(self.fn, params, x)


@partial(jax.jit, static_argnums=0)
def _run_jitted(fn, params, x):
    return fn(params, x)


@dataclass(frozen=True)
class Predictions:
    """Top-k predictions: ``classes`` and ``probs`` are (N, k) arrays, ``names`` an N-list of k-lists."""

    classes: np.ndarray
    probs: np.ndarray
    names: list

    def __str__(self):
        rows = []
        for i, (cs, ps, ns) in enumerate(zip(self.classes, self.probs, self.names)):
            rows.append(f"image {i}: " + ", ".join(f"{n} ({c}) {p:.3f}" for c, p, n in zip(cs, ps, ns)))
        return "\n".join(rows)


class Model:
    """A classifier as pure functions over named stages. Build with :func:`jaxcam.load_model`."""

    def __init__(self, arch: Architecture | str, graphdef: nnx.GraphDef, params: nnx.State, *,
                 source: str = "unknown"):
        self.arch = get_architecture(arch) if isinstance(arch, str) else arch
        self.graphdef = graphdef
        # device arrays once, so neither jitted nor eager calls copy host weights again
        self.params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
        self.source = source
        module = nnx.merge(graphdef, params)
        self.stage_names: tuple[str, ...] = tuple(name for name, _ in module.stages())
        self.layer_aliases: dict[str, str] = dict(module.layer_aliases())
        self.num_classes = int(module.stages()[-1][1].out_features)  # every architecture ends in its classifier
        self.tapped = _stages_tapped(graphdef, module, self.stage_names, self.layer_aliases,
                                     self.canonical_layer(self.arch.default_layer))
        self._name, self._mean, self._std = self.arch.name, tuple(self.arch.mean), tuple(self.arch.std)
        self._input_size = int(self.arch.input_size)
        self.class_names = imagenet_classes() if self.num_classes == 1000 else None

    @classmethod
    def from_tapped(cls, tapped: Tapped, params, *, name: str = "model", num_classes: int | None = None,
                    input_size: int = 224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=None,
                    source: str = "user model") -> Model:
        """Any model jaxcam can explain: a :class:`~jaxcam.tapped.Tapped` forward (built by an adapter such as
        :func:`jaxcam.from_linen`) and its parameters, with the preprocessing ``jaxcam.preprocess`` applies to
        images (``input_size`` square, ``(rgb - mean) / std``, NHWC) and optional class names. ``num_classes``
        is read from the output's shape when None. The result is taken by :func:`jaxcam.explain`,
        :func:`jaxcam.evaluate`, ``jaxcam.robustness.run``, the metrics and the CLI."""
        self = cls.__new__(cls)
        self.arch, self.graphdef, self.tapped, self.source = None, None, tapped, source
        self.params = jax.tree.map(lambda a: jnp.asarray(a) if hasattr(a, "dtype") else a, params)
        self._name, self._mean, self._std, self._input_size = str(name), tuple(mean), tuple(std), int(input_size)
        self.stage_names = (*tapped.sites, "output")  # the output, like a built-in's classifier, is not a site
        self.layer_aliases = dict(tapped.aliases)
        if num_classes is None:
            x = jax.ShapeDtypeStruct((1, self._input_size, self._input_size, 3), jnp.float32)
            out = jax.eval_shape(tapped.forward, self.params, x)
            num_classes = int(out.shape[-1])
        self.num_classes = int(num_classes)
        if class_names is not None and len(class_names) != self.num_classes:
            raise ClassIndexError(f"{len(class_names)} class names for a model with {self.num_classes} classes")
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        return self

    def with_params(self, params, *, source: str | None = None) -> Model:
        """The same model with other parameters (same structure): what parameter randomisation and fine-tuning
        produce. Compiled programs are shared: parameters are traced, never constants."""
        new = copy.copy(self)
        new.__dict__.pop("forward_fn", None)  # a cached Partial over the old parameters
        new.params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) if self.arch is not None else jnp.asarray(a),
                                  params)
        new.source = self.source if source is None else source
        return new

    # -- naming ---------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def default_layer(self) -> str:
        """The canonical stage name of this architecture's default CAM layer."""
        if self.arch is None:
            return self.tapped.default_site
        return self.canonical_layer(self.arch.default_layer)

    @property
    def valid_layers(self) -> tuple[str, ...]:
        return self.stage_names + tuple(self.layer_aliases)

    def canonical_layer(self, layer: str | int | None) -> str:
        """Resolve a stage name, alias, (negative) index or None (the default layer) to a stage name."""
        return self.stage_names[self.layer_index(layer)]

    @property
    def mean(self) -> tuple[float, float, float]:
        """The input normalisation's per-channel mean (RGB in [0, 1])."""
        return self._mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self._std

    @property
    def input_size(self) -> int:
        return self._input_size

    def layer_site(self, layer: str | int | None) -> str:
        """The tapped-forward site a ``layer=`` value names (a stage name, alias, index or None), refusing the
        classifier output, which is not a feature map."""
        name = self.stage_names[self.layer_index(layer)]
        if name not in self.tapped.sites:
            raise UnknownLayerError(name, self.tapped.sites, f"{self.name} (the classifier output is not a feature map)")
        return name

    def layer_index(self, layer: str | int | None) -> int:
        if layer is None:
            layer = self.arch.default_layer if self.arch is not None else self.tapped.default_site
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            n = len(self.stage_names)
            if -n <= layer < n:
                return int(layer) % n
            raise UnknownLayerError(layer, self.valid_layers, f"{self.name} (index out of range 0..{n - 1})")
        name = self.layer_aliases.get(layer, layer) if isinstance(layer, str) else layer
        try:
            return self.stage_names.index(name)
        except ValueError:
            why = dict(getattr(self.tapped.apply, "refused", ()) or ()).get(name)  # an adapter's reason
            if why:
                raise UnknownLayerError(layer, self.valid_layers, f"{self.name}: it cannot be explained, {why}"
                                        ) from None
            raise UnknownLayerError(layer, self.valid_layers, self.name) from None

    @property
    def token_sites(self) -> frozenset:
        """The layers whose activation an adapter maps from a ViT's token sequence to a grid (empty for CNNs)."""
        for holder in (self.tapped, self.tapped.apply):
            sites = getattr(holder, "token_sites", None)
            if sites:
                return frozenset(sites)
        return frozenset()

    # -- pure functions -------------------------------------------------------------------------------------
    def _builtin_only(self, what: str) -> None:
        if self.graphdef is None:
            raise InvalidArgumentError(f"{what} needs one of jaxcam's built-in models (named stages); {self.name} is "
                                       "a tapped forward: use jaxcam.tapped.capture / replay, or explain() itself")

    def stage_range(self, start: int, stop: int) -> StageRange:
        self._builtin_only("stage_range()")
        return StageRange(self.graphdef, start, stop)

    def split(self, layer: str | int | None = None):
        """``(features_fn, head_fn)``: ``features_fn(x)`` runs up to and including ``layer``; ``head_fn(a)`` runs
        the rest, so ``head_fn(features_fn(x)) == model(x)``. Both are pure ``jax.tree_util.Partial`` pytrees."""
        i = self.layer_index(layer) + 1
        return (jax.tree_util.Partial(self.stage_range(0, i), self.params),
                jax.tree_util.Partial(self.stage_range(i, len(self.stage_names)), self.params))

    @cached_property
    def forward_fn(self):
        """The whole network as a pure, jitted ``jax.tree_util.Partial`` of ``x`` (its leaves are the parameters)."""
        return jax.tree_util.Partial(Jitted(self.tapped.plain), self.params)

    def module(self) -> nnx.Module:
        """A fresh NNX module with these parameters (for inspection or fine-tuning)."""
        self._builtin_only("module()")
        return nnx.merge(self.graphdef, self.params)

    # -- eager entry points (validated) ---------------------------------------------------------------------
    def check_input(self, x) -> jax.Array:
        """Validate a preprocessed batch: (N, H, W, 3), floating, finite. Returns it as a float32 jax array."""
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4 or shape[-1] != 3:
            raise ImageShapeError(f"{self.name} expects a preprocessed batch of shape (N, H, W, 3) (NHWC), got "
                                  f"{None if shape is None else tuple(shape)}; use model.preprocess(images)")
        if shape[0] == 0 or min(shape[1:3]) < 32:
            raise ImageShapeError(f"{self.name} needs a non-empty batch of images of at least 32x32 pixels, "
                                  f"got shape {tuple(shape)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ImageDtypeError(f"{self.name} expects a floating-point batch, got dtype {x.dtype}; "
                                  "use model.preprocess(images)")
        x = jnp.asarray(x, jnp.float32)
        if not bool(jnp.isfinite(x).all()):
            raise NonFiniteImageError(f"the input batch of shape {tuple(shape)} holds NaN or infinite values")
        return x

    def __call__(self, x) -> jax.Array:
        """Logits (N, num_classes) of a preprocessed batch (N, H, W, 3)."""
        return self.forward_fn(self.check_input(x))

    def preprocess(self, images, resize_mode: str = "stretch", *, max_pixels: int | None = None) -> jax.Array:
        """Images (paths, PIL images, arrays; see :mod:`jaxcam.data`) to this model's normalised input.
        ``max_pixels``: the decoding cap for image files (default ``$JAXCAM_MAX_PIXELS`` or 150 megapixels)."""
        return jnp.asarray(preprocess(images, size=self.input_size, mean=self.mean, std=self.std,
                                      resize_mode=resize_mode, max_pixels=max_pixels))

    def predict(self, images, k: int = 5, *, preprocessed: bool = False) -> Predictions:
        """Top-``k`` classes, softmax probabilities and class names of ``images``."""
        if not 1 <= k <= self.num_classes:
            raise ClassIndexError(f"k must be in [1, {self.num_classes}], got {k}")
        x = images if preprocessed else self.preprocess(images)
        probs = jax.nn.softmax(self(x), axis=-1)
        top_p, top_c = jax.lax.top_k(probs, k)
        top_c = np.asarray(top_c)
        labels = self.class_names or tuple(f"class {i}" for i in range(self.num_classes))
        return Predictions(top_c, np.asarray(top_p), [[labels[c] for c in row] for row in top_c])

    def __repr__(self):
        n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.params))
        return (f"Model({self.name!r}, {n / 1e6:.1f}M parameters, {len(self.stage_names)} stages, "
                f"default layer {self.default_layer!r}, source={self.source!r})")


def _stages_tapped(graphdef, module, stage_names, aliases, default_site) -> Tapped:
    """The :class:`~jaxcam.tapped.Tapped` of a built-in model: a site after every stage but the classifier, CAM's
    closed form at the stage before global average pooling, FullGrad's sites at every bias-carrying layer."""
    from .taps import StageBiases, StagesApply, bias_sites

    gap = frozenset({stage_names[-3]}) if len(stage_names) >= 3 and stage_names[-2] == "avgpool" else frozenset()
    return Tapped(StagesApply(graphdef), tuple(stage_names[:-1]), default_site,
                  tuple((a, t) for a, t in aliases.items() if t in stage_names[:-1]), gap, bias_sites(module),
                  StageBiases(graphdef))


def split(model: Model, layer: str | int | None = None):
    """``split(model, layer) -> (features_fn, head_fn)`` with ``head_fn(features_fn(x)) == model(x)``."""
    return model.split(layer)
