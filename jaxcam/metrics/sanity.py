"""Model-parameter randomisation sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018;
code adebayoj/sanity_checks_saliency; Quantus ``MPRT``).

A map that explains the model must change when the model's learned parameters are destroyed. Cascading
randomisation re-initialises the network from the top (the classifier) down, one stage more at each step, and
compares each step's maps with the trained model's maps; independent randomisation re-initialises one stage at a
time with the rest trained. A method passes when the similarity falls towards 0; a method whose maps stay similar
(edge detectors, Guided Backprop in the paper) fails.

For CAMs the position of the randomised stage relative to the CAM layer matters: stages **above** the layer change
the gradients G (and the head), stages **at or below** it change the activations A. Every row says which
(``relative_to_layer``), so both regimes can be reported.

Cost: (number of steps + 1) explain calls, each for the whole batch of images. Parameters are traced arguments of
jaxcam's compiled programs, so a randomised model (same structure, new values) reuses the compiled program: one
compilation for the whole check (FullGrad, whose bias layout is static, is the exception).
"""

from __future__ import annotations

import functools
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InvalidArgumentError, UnknownLayerError, UnknownNameError
from ..keys import as_key
from ..models.model import Model
from ..table import Table
from .. import targets as targets_mod
from .similarity import SIMILARITIES, resolve

ORDERS = ("top_down", "bottom_up")
INITS = ("flax", "torch")
DEFAULT_SIMILARITIES = ("spearman", "spearman_abs", "ssim", "hog_pearson")
COLUMNS = ("image", "target", "method", "mode", "step", "stage", "relative_to_layer", "layer", "similarity", "value")


# -- parameters, by stage -----------------------------------------------------------------------------------------

def _key_name(k):
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)  # pragma: no cover - every jax key type has one of the above


def _leaf_paths(params) -> tuple[list, object, tuple[str, ...]]:
    """(leaves, treedef, dotted paths such as ``layer1.0.conv1.kernel``) of a parameter state."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = []
    for kp, _ in flat:
        parts = [_key_name(k) for k in kp]
        if parts and parts[-1] == "value" and isinstance(kp[-1], jax.tree_util.GetAttrKey):
            parts = parts[:-1]  # nnx.Variable's payload
        paths.append(".".join(str(p) for p in parts))
    return [leaf for _, leaf in flat], treedef, tuple(paths)


def _used_inputs(jaxpr) -> set[int]:
    """Positions of ``jaxpr``'s inputs that its equations (or outputs) read. Calls of sub-programs whose inputs align
    with the call's (jit, custom_jvp/vjp) are followed, so a parameter passed to a compiled stage but unused there
    does not count; any other higher-order primitive counts all its inputs as used (conservative)."""
    position = {id(v): j for j, v in enumerate(jaxpr.invars)}
    used = set()
    for eqn in jaxpr.eqns:
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        inner = getattr(sub, "jaxpr", sub)
        if inner is not None and hasattr(inner, "invars") and len(inner.invars) == len(eqn.invars):
            reads = [eqn.invars[k] for k in _used_inputs(inner)]
        else:
            reads = eqn.invars
        used |= {position[id(v)] for v in reads if id(v) in position}
    used |= {position[id(v)] for v in jaxpr.outvars if id(v) in position}
    return used


@functools.lru_cache(maxsize=32)
def _stage_usage(tapped, treedef, shapes: tuple, size: int, n_stages: int) -> tuple[tuple[int, ...], ...]:
    """For each stage (every site of the tapped forward, then the output), the indices of the parameter leaves
    that first reach it: the forward is traced once on abstract values (nothing is computed), with every site's
    activation and the output as results, and dead-code elimination towards each result in turn gives exactly
    the parameters it reads; each parameter belongs to the first stage that reads it. Works on any model jaxcam
    can explain, whatever its framework, and is exact where naming conventions would guess."""
    from jax.interpreters.partial_eval import dce_jaxpr

    params = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in shapes])
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

    def run(p, v):
        seen = {}

        def tap(site, a):
            seen.setdefault(site, a)
            return a
        out = tapped.apply(p, v, tap)
        return [seen[s] for s in tapped.sites] + [out]

    closed = jax.make_jaxpr(run)(params, x)
    n_out = len(tapped.sites) + 1
    assert n_out == n_stages, (n_out, n_stages)  # Model keeps stage_names = sites + the output stage
    out, before = [], set()
    for k in range(n_out):
        _, used_inputs = dce_jaxpr(closed.jaxpr, [i == k for i in range(n_out)])
        used = {j for j, u in enumerate(used_inputs) if u and j < len(shapes)}
        out.append(tuple(sorted(used - before)))
        before |= used
    return tuple(out)


def _usage(model: Model) -> tuple[tuple[int, ...], ...]:
    leaves, treedef, _ = _leaf_paths(model.params)
    shapes = tuple((tuple(leaf.shape), jnp.dtype(leaf.dtype)) for leaf in leaves)
    return _stage_usage(model.tapped, treedef, shapes, int(model.input_size), len(model.stage_names))


def stage_parameters(model: Model) -> dict[str, tuple[str, ...]]:
    """``{stage: parameter paths}`` for the stages that hold parameters, in network order (running statistics of
    BatchNorm count as parameters here). Stages without any (ReLU, pooling) are absent: randomisation skips them."""
    _, _, paths = _leaf_paths(model.params)
    return {name: tuple(paths[j] for j in used) for name, used in zip(model.stage_names, _usage(model)) if used}


def _resolve_stages(model: Model, stages) -> list[int]:
    with_params = stage_parameters(model)
    if isinstance(stages, str) and stages == "all":
        return [model.stage_names.index(s) for s in with_params]
    items = [stages] if isinstance(stages, (str, int, np.integer)) else list(stages)
    out = []
    for s in items:
        i = model.layer_index(s)  # UnknownLayerError listing every stage and alias
        if model.stage_names[i] not in with_params:
            raise UnknownLayerError(s, list(with_params), f"{model.name}: stage {model.stage_names[i]!r} has no "
                                    "parameters to randomise; choose among the stages with parameters")
        out.append(i)
    return sorted(set(out))


# -- re-initialisation ----------------------------------------------------------------------------------------------

def _rule(path: str, paths, init: str, reset_batch_stats: bool) -> str:
    """How one parameter is re-initialised (see :func:`randomise`)."""
    leaf = path.rpartition(".")[2]
    if leaf == "kernel":
        return "lecun_normal" if init == "flax" else "torch_uniform"
    if leaf == "bias":
        return "torch_uniform_bias" if init == "torch" and _sibling_kernel(path) in paths else "zeros"
    if leaf == "scale":
        return "ones"
    if leaf in ("mean", "var"):
        return ("zeros" if leaf == "mean" else "ones") if reset_batch_stats else "keep"
    return "matched_normal"  # a leaf named otherwise (a user model's "w", Equinox's "weight"): see randomise()


def _sibling_kernel(path: str) -> str:
    prefix = path.rpartition(".")[0]
    return f"{prefix}.kernel" if prefix else "kernel"


def _fan_in(shape: tuple[int, ...]) -> int:
    """Fan-in of a kernel: everything but the last (output) axis, for HWIO convolutions and (in, out) linears."""
    return int(np.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def _path_key(key, path: str):
    return jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF)


_CHUNK = 1 << 16  # values are drawn in fixed-size chunks: one small compiled program per distribution


@functools.partial(jax.jit, static_argnums=2)
def _chunk(key, index, kind: str):
    k = jax.random.fold_in(key, index)
    if kind == "truncated_normal":
        return jax.random.truncated_normal(k, -2.0, 2.0, (_CHUNK,), jnp.float32)
    return jax.random.uniform(k, (_CHUNK,), jnp.float32, -1.0, 1.0)


def _draw(key, path: str, shape: tuple[int, ...], rule: str, fan_in: int) -> np.ndarray:
    """One parameter's new value. Random rules draw chunk ``c`` of the parameter from
    ``fold_in(fold_in(key, crc32(path)), c)``, so a value depends on nothing but the key and the path; the chunks
    keep the compiled programs shape-independent (drawing per shape costs about a second of XLA compilation
    each on CPU)."""
    if rule == "zeros":
        return np.zeros(shape, np.float32)
    if rule == "ones":
        return np.ones(shape, np.float32)
    n = int(np.prod(shape))
    kind = "truncated_normal" if rule == "lecun_normal" else "uniform"
    k = _path_key(key, path)
    parts = [_chunk(k, c, kind) for c in range(-(-n // _CHUNK))]
    flat = np.concatenate([np.asarray(p) for p in parts])[:n]
    if rule == "lecun_normal":  # flax's lecun_normal: truncated normal on [-2, 2], variance 1 / fan_in
        scale = np.sqrt(1.0 / fan_in) / 0.87962566103423978
    else:  # PyTorch's reset_parameters for conv/linear weights (kaiming_uniform, a=sqrt(5)) and biases
        scale = 1.0 / np.sqrt(fan_in)
    return (flat * np.float32(scale)).astype(np.float32).reshape(shape)


def _fresh(model: Model, leaf_ids: Sequence[int], key, init: str, reset_batch_stats: bool) -> dict[int, jax.Array]:
    """Re-initialised values for the given leaves (``keep`` leaves are left out)."""
    if init not in INITS:
        raise UnknownNameError(init, INITS, "init")
    leaves, _, paths = _leaf_paths(model.params)
    index = {p: j for j, p in enumerate(paths)}
    key = as_key(key)
    out = {}
    for j in leaf_ids:
        rule = _rule(paths[j], index, init, reset_batch_stats)
        if rule == "keep":
            continue
        # a PyTorch-style bias is bounded by its layer's kernel fan-in
        fan_from = index[_sibling_kernel(paths[j])] if rule == "torch_uniform_bias" else j
        if rule == "matched_normal":  # N(mean, std) of the leaf itself: constants (a norm's ones) stay as they are
            v = np.asarray(leaves[j], np.float32)
            unit = _draw(key, paths[j], tuple(v.shape), "lecun_normal", 1)  # truncated normal, variance 1
            out[j] = jnp.asarray((float(v.mean()) + float(v.std()) * unit).astype(np.float32))
            continue
        fan = _fan_in(tuple(leaves[fan_from].shape))
        out[j] = jnp.asarray(_draw(key, paths[j], tuple(leaves[j].shape), rule, fan))
    return out


def _replace(model: Model, values: Mapping[int, jax.Array], source: str) -> Model:
    leaves, treedef, _ = _leaf_paths(model.params)
    new = [values.get(j, leaf) for j, leaf in enumerate(leaves)]
    return model.with_params(jax.tree_util.tree_unflatten(treedef, new), source=source)


def _stage_label(model: Model, idx: Sequence[int]) -> str:
    return "+".join(model.stage_names[i] for i in idx)


def randomise(model: Model, stages, key: int | jax.Array = 0, *, init: str = "flax",
              reset_batch_stats: bool = True) -> Model:
    """A copy of ``model`` whose parameters in ``stages`` are re-initialised; every other array is the same object.

    ``stages``: a stage name, alias or index, a list of them, or ``"all"`` (every stage with parameters; see
    :func:`stage_parameters`). Unknown names raise :class:`~jaxcam.UnknownLayerError` listing the valid ones, and
    so does a stage without parameters (ReLU, pooling).

    Each parameter is drawn with its own key, ``fold_in(key, crc32(path))`` (path such as
    ``layer4.1.conv2.kernel``), so the result depends only on ``key`` and the parameter, never on which other stages
    are randomised or in what order: cascading steps reuse the same random values for stages already randomised.

    ``init="flax"`` (default) uses the initialisers jaxcam's NNX layers are built with (flax's defaults; NNX does not
    keep them on the module, and jaxcam's architectures pass none of their own): convolution and linear kernels
    LeCun normal (normal truncated at 2 standard deviations, variance 1 / fan_in, fan_in = kh * kw * c_in / groups
    or in_features), their biases zero. ``init="torch"`` uses PyTorch's ``reset_parameters`` as Quantus' MPRT does:
    kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)). The distributions are exactly those; the random streams
    are jaxcam's own (drawn in fixed-size chunks so no per-shape program is compiled), not flax's or torch's.

    BatchNorm (either init): scale 1, bias 0, and, with ``reset_batch_stats=True`` (default), running mean 0 and
    variance 1: the layer's initial state, which makes it (almost) the identity. This is what PyTorch's
    ``BatchNorm.reset_parameters`` (hence Quantus) does, and it is the consistent choice: running statistics
    estimated for the trained layer below are meaningless once that layer is random. ``reset_batch_stats=False``
    keeps them, as Adebayo et al.'s TensorFlow code did (it re-initialised trainable variables only).
    A parameter whose name is none of Flax's (``kernel``, ``bias``, ``scale``, ``mean``, ``var``), as in a model
    written as a plain function or in Equinox, is redrawn from a (truncated) normal with its own mean and standard
    deviation: random, at the trained scale, and a constant leaf (a normalisation's ones) is left as it is.
    """
    idx = _resolve_stages(model, stages)
    usage = _usage(model)
    leaf_ids = sorted({j for i in idx for j in usage[i]})
    values = _fresh(model, leaf_ids, key, init, reset_batch_stats)
    return _replace(model, values, f"{model.source}; randomised {_stage_label(model, idx)} (init={init})")


# -- the checks -----------------------------------------------------------------------------------------------------

def _resolve_similarities(similarities) -> tuple[tuple[str, Callable], ...]:
    if isinstance(similarities, (str,)) or callable(similarities):
        similarities = [similarities]
    items = list(similarities.items()) if isinstance(similarities, Mapping) else [
        (s if isinstance(s, str) else _fn_name(s), s) for s in similarities]
    if not items:
        raise UnknownNameError("(empty list)", SIMILARITIES, "similarity")
    return tuple((name, resolve(s)) for name, s in items)


def _fn_name(fn) -> str:
    if isinstance(fn, functools.partial):
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"{_fn_name(fn.func)}({args})"
    return getattr(fn, "__name__", repr(fn))


@functools.lru_cache(maxsize=64)
def _comparer(fns: tuple[Callable, ...]):
    """One compiled program: (N, H, W) x (N, H, W) -> (S, N), every similarity vmapped over the images."""
    return jax.jit(lambda a, b: jnp.stack([jax.vmap(f)(a, b) for f in fns]))


def _groups(model: Model, stages, order: str) -> list[tuple[int, ...]]:
    if order not in ORDERS:
        raise UnknownNameError(order, ORDERS, "order")
    if stages is None:
        groups = [(i,) for i in _resolve_stages(model, "all")]
    else:
        items = [stages] if isinstance(stages, (str, int, np.integer)) else list(stages)
        groups = [tuple(_resolve_stages(model, g)) for g in items]
        if not groups:
            raise UnknownLayerError("(empty list)", list(stage_parameters(model)), f"{model.name} stages")
    groups.sort(key=lambda g: (g[0], g[-1]))
    return groups[::-1] if order == "top_down" else groups


def _relative(group: Sequence[int], cam: Sequence[int]) -> str:
    if set(group) & set(cam):
        return "at"
    if min(group) > max(cam):
        return "above"
    if max(group) < min(cam):
        return "below"
    return "spanning"  # stages on both sides of the CAM layer(s), none of them at one


def _maps(model, x, names, custom, classes, layer, key, explain_kwargs) -> dict:
    """Maps of every method for the given classes, as {name: (N, H, W)}."""
    from .._explain import explain  # here, not at import time: _explain imports jaxcam.metrics

    out = {}
    if names:
        request = "all" if names == ["all"] else names
        result = explain(model, x, request, classes, layer, preprocessed=True, key=key, **explain_kwargs)
        for n, m in result.items():
            out[n] = m[0] if isinstance(m, list) else m
    for n, fn in custom:
        out[n] = jnp.asarray(fn(model, x, classes))
    return out


def _randomisation(mode, model, images, method, *, order, stages, similarities, targets, layer, key, init,
                   reset_batch_stats, preprocessed, explain_kwargs) -> Table:
    if "return_logits" in explain_kwargs:
        raise InvalidArgumentError("return_logits cannot be passed through to explain() here (the table holds the targets)")
    methods = [method] if isinstance(method, str) or callable(method) else list(method)
    if not methods:
        raise UnknownNameError("(empty list)", ["gradcam", "..."], "method")
    names = [m for m in methods if isinstance(m, str)]
    custom = [(_fn_name(m), m) for m in methods if not isinstance(m, str)]
    if "all" in names and len(names) > 1:
        raise InvalidArgumentError("method='all' cannot be combined with other method names")
    sims = _resolve_similarities(similarities)
    layers = [layer] if layer is None or isinstance(layer, (str, int, np.integer)) else list(layer)
    cam_idx = tuple(model.layer_index(ly) for ly in layers)
    if explain_kwargs.get("raw") and len(cam_idx) > 1:
        raise InvalidArgumentError("raw=True with several layers gives one map per layer; pick one layer for sanity checks")
    groups = _groups(model, stages, order)
    x = model.check_input(images if preprocessed else model.preprocess(images))
    classes = targets_mod.class_indices(targets, x.shape[0], model.num_classes)
    key = as_key(key)

    if classes is None:  # the original model's predictions, fixed for every step (and one explain program)
        classes = jnp.argmax(model.forward_fn(x), axis=-1).astype(jnp.int32)
    maps0 = _maps(model, x, names, custom, classes, layer, key, explain_kwargs)
    usage = _usage(model)
    fresh = _fresh(model, sorted({j for g in groups for i in g for j in usage[i]}), key, init, reset_batch_stats)
    compare = _comparer(tuple(f for _, f in sims))
    layer_label = "+".join(model.stage_names[i] for i in cam_idx)

    steps = [(0, "none", "none", maps0)]
    for s, group in enumerate(groups, 1):
        chosen = groups[:s] if mode == "cascading" else [group]
        ids = {j for g in chosen for i in g for j in usage[i]}
        label = _stage_label(model, group)
        randomised = _replace(model, {j: v for j, v in fresh.items() if j in ids},
                              f"{model.source}; {mode} randomisation step {s} ({label})")
        maps_s = _maps(randomised, x, names, custom, classes, layer, key, explain_kwargs)
        steps.append((s, label, _relative(group, cam_idx), maps_s))

    n = x.shape[0]
    sim_names = [name for name, _ in sims]
    cls_host = np.asarray(classes)
    cols = {c: [] for c in COLUMNS}
    for step, label, rel, maps in steps:
        for m in maps0:
            values = np.asarray(compare(maps0[m], maps[m]))  # (S, N)
            k = len(sim_names) * n
            cols["image"].append(np.tile(np.arange(n), len(sim_names)))
            cols["target"].append(np.tile(cls_host, len(sim_names)))
            cols["method"].append(np.full(k, m, object))
            cols["mode"].append(np.full(k, mode, object))
            cols["step"].append(np.full(k, step))
            cols["stage"].append(np.full(k, label, object))
            cols["relative_to_layer"].append(np.full(k, rel, object))
            cols["layer"].append(np.full(k, layer_label, object))
            cols["similarity"].append(np.repeat(np.asarray(sim_names, object), n))
            cols["value"].append(values.reshape(-1).astype(np.float64))
    table = Table({c: np.concatenate(v) for c, v in cols.items()})
    if np.isnan(table["value"]).any():
        warnings.warn(f"{mode} randomisation: some similarities are NaN (non-finite maps?)", RuntimeWarning,
                      stacklevel=3)
    return table


_SHARED_DOC = """
    Args:
      model: the trained :class:`~jaxcam.Model`.
      images: anything :func:`jaxcam.preprocess` accepts, or (``preprocessed=True``) a model-input batch. All images
        go through each explain call as one batch (no loop over images).
      method: a name in :data:`jaxcam.METHODS`, ``"all"``, a callable ``fn(model, x, classes) -> (N, H, W) maps``
        (any explainer, or a model-independent baseline), or a list of these: one explain call per step serves
        every named method.
      order: ``"top_down"`` (from the classifier down, as Adebayo et al.) or ``"bottom_up"``.
      stages: the randomisation steps: None (every stage with parameters, one per step; see
        :func:`stage_parameters`) or a list whose items are a stage (name, alias or index) or a list of stages
        randomised together in one step. Steps are visited in network order according to ``order``.
      similarities: names in :data:`jaxcam.metrics.SIMILARITIES` and/or per-example callables ``f(a, b) -> scalar``
        (e.g. ``functools.partial(hog_pearson, pixels_per_cell=(8, 8))`` for maps smaller than 48 x 48), or a
        ``{name: function}`` mapping. The defaults are Adebayo et al.'s four: ``spearman`` (rank correlation of the
        maps), ``spearman_abs`` (of their absolute values; identical for jaxcam's [0, 1] maps, different for signed
        ``raw=True`` maps, where it ignores the sign), ``ssim`` and ``hog_pearson``.
      targets: None (each image's class as predicted by the ORIGINAL model, kept for every step) or class indices.
      layer: the CAM layer(s), as for :func:`jaxcam.explain`.
      key: PRNG key or int seed for the re-initialisation (see :func:`randomise`); explain receives the same key
        (noise averaging, SS-CAM), identical at every step, so only the parameters differ between steps.
      init, reset_batch_stats: see :func:`randomise`.
      explain_kwargs: passed to :func:`jaxcam.explain` (``preprocessed``, ``target``, ``method_options``,
        ``raw``, ``batch_size``, ...).

    Returns:
      A tidy :class:`~jaxcam.table.Table`, one row per image x step x method x similarity, with columns ``image``
      (index in the batch), ``target`` (class explained), ``method``, ``mode`` ("cascading" / "independent"),
      ``step`` (0 = the trained model compared with itself, then 1, 2, ...), ``stage`` (the stage(s) randomised at
      this step, "+"-joined; "none" at step 0), ``relative_to_layer`` ("above": changes the gradients and the head;
      "below" or "at": changes the activations; "spanning": a group with stages on both sides; "none" at
      step 0), ``layer`` (the CAM layer), ``similarity`` and ``value``. Step 0 is 1 for every measure except that a
      constant map gives the correlations' ``constant_value`` (0).
"""


def cascading_randomisation(model: Model, images, method: str | Callable | Sequence = "gradcam", *,
                            order: str = "top_down", stages=None,
                            similarities=DEFAULT_SIMILARITIES, targets=None, layer=None,
                            key: int | jax.Array = 0, init: str = "flax", reset_batch_stats: bool = True,
                            preprocessed: bool = False, **explain_kwargs) -> Table:
    """Cascading model-parameter randomisation (Adebayo et al. 2018, Sec. 3.1; Quantus ``MPRT``): step ``s``
    re-initialises the first ``s`` stages in ``order`` (cumulatively, from the classifier down by default), explains
    the same images for the same classes, and compares each map with the trained model's map.
    """
    return _randomisation("cascading", model, images, method, order=order, stages=stages,
                          similarities=similarities, targets=targets, layer=layer, key=key, init=init,
                          reset_batch_stats=reset_batch_stats, preprocessed=preprocessed,
                          explain_kwargs=explain_kwargs)


def independent_randomisation(model: Model, images, method: str | Callable | Sequence = "gradcam", *,
                              order: str = "top_down", stages=None,
                              similarities=DEFAULT_SIMILARITIES, targets=None, layer=None,
                              key: int | jax.Array = 0, init: str = "flax", reset_batch_stats: bool = True,
                              preprocessed: bool = False, **explain_kwargs) -> Table:
    """Independent (one stage at a time) model-parameter randomisation (Adebayo et al. 2018): step ``s``
    re-initialises only the ``s``-th stage in ``order``, the rest trained, and compares the maps with the trained
    model's. The random values of a stage are those cascading randomisation uses for it with the same key.
    """
    return _randomisation("independent", model, images, method, order=order, stages=stages,
                          similarities=similarities, targets=targets, layer=layer, key=key, init=init,
                          reset_batch_stats=reset_batch_stats, preprocessed=preprocessed,
                          explain_kwargs=explain_kwargs)


cascading_randomisation.__doc__ += _SHARED_DOC
independent_randomisation.__doc__ += _SHARED_DOC

__all__ = ["COLUMNS", "DEFAULT_SIMILARITIES", "INITS", "ORDERS", "cascading_randomisation",
           "independent_randomisation", "randomise", "stage_parameters"]
