"""``layers(model)``: every layer ``layer=`` accepts on any jaxcam model, with its output shape, as a Table.

Works the same on a built-in model and on any adapted one (NNX, linen, Hugging Face, Equinox, a function), since
it reads only the model's tapped forward: the shapes come from ``jax.eval_shape`` with a recording tap
(:func:`jaxcam.tapped.site_shapes`), so nothing is computed and no memory is allocated for activations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..errors import ImageShapeError, InvalidArgumentError
from ..table import Table
from ..tapped import site_shapes
from .model import Model

NOT_CALLED = "not called"


def _kind(site, s, tokens) -> str:
    if site in tokens:
        return "tokens->grid"
    return "grid" if s is None or len(s.shape) == 4 else "not a grid"


def _input(model: Model, x):
    if x is None:
        return jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise ImageShapeError(f"layers(model, x): x must be a preprocessed batch (N, H, W, 3) (or a "
                              f"jax.ShapeDtypeStruct of one), got {None if shape is None else tuple(shape)}; "
                              "leave x out for the model's input size")
    return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)


def layers(model: Model, x=None) -> Table:
    """The layers of ``model`` a CAM can name, in forward order, one row each:

    - ``layer``: the name ``layer=`` takes; ``aliases``: other names for it (comma-separated);
    - ``shape``: its activation as ``h x w x K`` for input ``x`` (default: one image at the model's input size),
      or "not called" when the forward never runs it at this input (naming it raises ``LayerNotCalledError``);
    - ``kind``: "grid" (a channels-last feature map), "tokens->grid" (a ViT's tokens mapped to a grid) or "not a
      grid" (a built-in model's pooled features: not a CAM layer);
    - ``cam``: whether CAM's closed form holds there (global average pooling and a linear classifier follow it),
      i.e. whether ``method="cam"`` applies; every other method takes any layer;
    - ``default``: the layer explained when none is given.

    No compute: shapes come from ``jax.eval_shape``."""
    if not isinstance(model, Model):
        raise InvalidArgumentError(f"layers() takes a jaxcam Model (jaxcam.load_model, jaxcam.from_nnx, ...), got "
                                   f"{type(model).__name__}")
    tapped = model.tapped
    shapes = site_shapes(tapped.apply, model.params, _input(model, x), tapped.sites)
    tokens = model.token_sites
    aliases: dict[str, list[str]] = {}
    for alias, site in tapped.aliases:
        aliases.setdefault(site, []).append(alias)
    rows = []
    for site in tapped.sites:
        s = shapes.get(site)
        rows.append({"layer": site,
                     "shape": NOT_CALLED if s is None else " x ".join(str(int(d)) for d in s.shape[1:]),
                     "kind": _kind(site, s, tokens),
                     "cam": site in tapped.gap_fc_sites,
                     "default": site == tapped.default_site,
                     "aliases": ", ".join(aliases.get(site, ()))})
    return Table.from_rows(rows, ["layer", "shape", "kind", "cam", "default", "aliases"])


__all__ = ["layers"]
