"""``jaxcam layers``: every layer ``--layer`` accepts for one model, with its output shape, the default marked.

Works on any model the other commands take: a built-in architecture (traced on its abstract module, so no weights
are needed or allocated), a converted checkpoint, or a ``module.path:factory`` model. The shapes come from
``jax.eval_shape`` through :func:`jaxcam.tapped.site_shapes` at the model's input size (batch of one): no
compute. A layer the model declares but its forward never runs is listed as such (naming it would raise
``LayerNotCalledError``); a site whose activation is not an ``(h, w, channels)`` grid is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

from .common import add_model_args, formatter, load
from .info import _shape, text_table

EXAMPLES = """examples:
  jaxcam layers                                   the embedded efficientnet_lite0's layers
  jaxcam layers --model resnet50                  an architecture's layers (no weights needed)
  jaxcam layers --model my_models:build           your own model's layers (./my_models.py, build() -> jaxcam.Model)
  jaxcam layers --model resnet18 --markdown       as a markdown table

notes: default = the layer explained when --layer is not given; cam = CAM's closed form holds there (a global
average pool and a linear classifier follow it), so --method cam works; any layer takes every other method.
"""

CAM_NOTE = "cam"
NOT_CALLED = "not called by the forward"


def add_parser(sub) -> None:
    p = sub.add_parser("layers", help="list the layers --layer accepts for a model, with output shapes",
                       description="Every layer of a model that --layer can name (name, other names, index), its "
                                   "output shape at the model's input size, the default layer and where CAM's "
                                   "closed form holds. Shapes come from jax.eval_shape: nothing is computed.",
                       epilog=EXAMPLES, formatter_class=formatter())
    add_model_args(p)
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Layer:
    """One row: the site's ``name``, its ``index`` (what an integer ``--layer`` names), its ``aliases``, its output
    ``shape`` without the batch axis (None when the forward never runs it) and its notes."""

    index: int
    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...] | None
    default: bool
    cam: bool

    @property
    def notes(self) -> str:
        notes = ["default"] if self.default else []
        notes += [CAM_NOTE] if self.cam else []
        if self.shape is None:
            notes.append(NOT_CALLED)
        elif len(self.shape) != 3:
            notes.append("not an (h, w, channels) grid")
        return ", ".join(notes)

    @property
    def output(self) -> str:
        return "-" if self.shape is None else _shape(self.shape)


@dataclass(frozen=True)
class Listing:
    """What ``jaxcam layers`` prints about one model."""

    name: str
    source: str
    input_size: int
    layers: tuple[Layer, ...]


def describe(tapped, params, *, name: str, source: str, input_size: int, stage_names=None) -> Listing:
    """The layers of a tapped model (:class:`jaxcam.tapped.Tapped`) at a ``(1, input_size, input_size, 3)`` input.
    ``params`` may be concrete or abstract (``jax.ShapeDtypeStruct`` leaves): only shapes are evaluated.
    ``stage_names``: the names integer layers index (a built-in model's stages, classifier included); default the
    sites."""
    import jax
    import jax.numpy as jnp

    from ..tapped import site_shapes

    x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    shapes = site_shapes(tapped.apply, params, x, tapped.sites)
    order = list(stage_names or tapped.sites)
    aliases: dict[str, list[str]] = {}
    for alias, site in tapped.aliases:
        aliases.setdefault(site, []).append(alias)
    default = tapped.site(tapped.default_site)
    rows = tuple(Layer(order.index(s) if s in order else i, s, tuple(aliases.get(s, ())),
                       tuple(shapes[s].shape[1:]) if s in shapes else None, s == default, s in tapped.gap_fc_sites)
                 for i, s in enumerate(tapped.sites))
    return Listing(name, source, input_size, rows)


def listing(args) -> Listing:
    """The listing for the command's ``--model``: an architecture named without weights is traced on its abstract
    module (nothing allocated); anything else is loaded as the other commands load it."""
    from ..models.architectures import ARCHITECTURES

    if args.model in ARCHITECTURES and args.weights is None and not args.random_weights:
        return _abstract(args.model)
    model = load(args)
    return describe(model.tapped, model.params, name=model.name, source=model.source, input_size=model.input_size,
                    stage_names=model.stage_names)


def _abstract(arch_name: str) -> Listing:
    """A built-in architecture's listing from its abstract module: the same tapped forward a loaded model gets."""
    from flax import nnx

    from ..models import get_architecture
    from ..models.convert import abstract_model
    from ..models.model import _stages_tapped

    arch = get_architecture(arch_name)
    graphdef, state = abstract_model(arch)
    module = nnx.merge(graphdef, state)
    stages = tuple(n for n, _ in module.stages())
    aliases = dict(module.layer_aliases())
    tapped = _stages_tapped(graphdef, module, stages, aliases, aliases.get(arch.default_layer, arch.default_layer))
    return describe(tapped, state, name=arch.name, source="architecture; shapes only, no weights loaded",
                    input_size=arch.input_size, stage_names=stages)


def run(args) -> None:
    info = listing(args)
    if args.markdown:
        print(markdown(info))
        return
    n = len(info.layers)
    print(f"{info.name} ({info.source}): {n} layer{'' if n == 1 else 's'}, output shapes (h x w x channels) at a "
          f"{info.input_size}x{info.input_size} input")
    rows = [(r.index, r.name, ", ".join(r.aliases) or "-", r.output, r.notes) for r in info.layers]
    print(text_table(("#", "layer", "also named", "output", "notes"), rows))


def markdown(info: Listing) -> str:
    """The listing as a markdown table; names are escaped (a user's layer name may hold ``|`` or a backtick)."""
    from ..table import escape_markdown

    size = f"{info.input_size}x{info.input_size}"
    lines = [f"| # | layer | also named | output at {size} | notes |", "|---|---|---|---|---|"]
    for r in info.layers:
        also = escape_markdown(", ".join(r.aliases)) or "-"
        lines.append(f"| {r.index} | {escape_markdown(r.name)} | {also} | {r.output} | {r.notes} |")
    return "\n".join(lines)
