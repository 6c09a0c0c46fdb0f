"""``jaxcam methods`` and ``jaxcam models``: what the registries hold, as text or markdown tables.

:func:`layers_markdown` is the "which layer" table (architecture, default CAM layer, its output shape, the other
named layers worth trying); it is computed from each architecture's abstract module (shapes only, no weights are
allocated), so it always matches the code.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from .common import formatter

METHODS_EXAMPLES = """examples:
  jaxcam methods                 name, family, passes per image, paper and parity of every method
  jaxcam methods --markdown      the same as the README's markdown table
"""

MODELS_EXAMPLES = """examples:
  jaxcam models                  architectures, default CAM layers and input sizes
  jaxcam models --stages         also every stage name and layer alias (what --layer accepts)
  jaxcam models --params         also the parameter counts
  jaxcam models --markdown       the "which layer" table: default layer, its output shape, other layers
  jaxcam layers --model NAME     every layer of one model with its output shape (also module:factory models)
"""


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the CAM methods: family, cost, paper, parity",
                       epilog=METHODS_EXAMPLES, formatter_class=formatter())
    p.add_argument("--markdown", action="store_true", help="print a markdown table (as in the README)")
    p.set_defaults(func=run_methods)
    p = sub.add_parser("models", help="list architectures, default CAM layers and (with --stages) every layer name",
                       epilog=MODELS_EXAMPLES, formatter_class=formatter())
    p.add_argument("--stages", action="store_true", help="also list every stage name and layer alias")
    p.add_argument("--params", action="store_true", help="also count each architecture's parameters")
    p.add_argument("--markdown", action="store_true",
                   help="print the which-layer markdown table (default layer, output shape at the input size, "
                        "other named layers)")
    p.set_defaults(func=run_models)


# -- methods ---------------------------------------------------------------------------------------------------
def methods_rows() -> list[tuple[str, ...]]:
    """One row per registered method: name, family, passes per image, paper, parity."""
    from ..methods import METHODS

    return [(n, s.family, s.cost, s.paper, s.parity) for n, s in METHODS.items()]


def run_methods(args) -> None:
    from ..methods import markdown_table

    if args.markdown:
        print(markdown_table())
        return
    print(text_table(("method", "family", "passes per image", "paper", "parity"), methods_rows()))


# -- models ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchInfo:
    """What the abstract module of one architecture tells: stage names, aliases, output shapes, parameters."""

    name: str
    stages: tuple[str, ...]
    aliases: dict
    shapes: dict  # stage name -> output shape (h, w, c) at the architecture's input size (batch of one)
    parameters: int
    input_size: int

    @property
    def default_stage(self) -> str:
        from ..models import ARCHITECTURES

        layer = ARCHITECTURES[self.name].default_layer
        return self.aliases.get(layer, layer)


@functools.cache
def arch_info(name: str) -> ArchInfo:
    """Stage names, aliases, per-stage output shapes and the parameter count of an architecture, traced on its
    abstract module (no weights allocated; a fraction of a second to a few seconds per architecture, cached)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..models import get_architecture
    from ..models.convert import abstract_model

    arch = get_architecture(name)
    graphdef, state = abstract_model(arch)
    module = nnx.merge(graphdef, state)
    stages = tuple(n for n, _ in module.stages())
    params = sum(int(v.size) for v in jax.tree.leaves(nnx.state(module, nnx.Param)))

    def every_stage(state, x):
        outs = {}
        for stage, fn in nnx.merge(graphdef, state).stages():
            x = fn(x)
            outs[stage] = x
        return outs

    size = arch.input_size
    shapes = jax.eval_shape(every_stage, state, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    return ArchInfo(name, stages, dict(module.layer_aliases()), {k: tuple(v.shape[1:]) for k, v in shapes.items()},
                    params, size)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def layers_markdown(names: Sequence[str] | None = None) -> str:
    """The "which layer" markdown table: per architecture its default CAM layer (and the stage it names), that
    layer's output shape (h x w x channels) for the architecture's input size (224 x 224), and the other named
    layers (aliases) with their shapes. ``names``: the architectures (default: all of :data:`jaxcam.ARCHITECTURES`)."""
    from ..models import ARCHITECTURES

    sizes = sorted({ARCHITECTURES[n].input_size for n in (names or ARCHITECTURES)})
    at = f"{sizes[0]}x{sizes[0]}" if len(sizes) == 1 else "the input size"
    rows = [f"| architecture | default CAM layer | its output at {at} | other named layers |", "|---|---|---|---|"]
    for name in names or ARCHITECTURES:
        info = arch_info(name)
        layer, stage = ARCHITECTURES[name].default_layer, info.default_stage
        default = f"`{layer}`" + (f" (= `{stage}`)" if stage != layer else "")
        others = ", ".join(f"`{alias}` {_shape(info.shapes[target])}" for alias, target in info.aliases.items()
                           if alias != layer and target != stage) or "-"
        rows.append(f"| `{name}` | {default} | {_shape(info.shapes[stage])} | {others} |")
    return "\n".join(rows)


def _param_count(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def run_models(args) -> None:
    from ..models import ARCHITECTURES

    if args.markdown:
        print(layers_markdown())
        return
    header = ["name", "family", "default layer", "input"] + (["parameters"] if args.params else [])
    rows = []
    for name, arch in ARCHITECTURES.items():
        row = [name, arch.family, arch.default_layer, f"{arch.input_size}x{arch.input_size}"]
        if args.params:
            row.append(_param_count(arch_info(name).parameters))
        rows.append(row)
    print(text_table(header, rows))
    if args.stages:
        for name in ARCHITECTURES:
            print(f"\n{name}\n{_stages_text(arch_info(name))}")


def _stages_text(info: ArchInfo) -> str:
    """The indented stage and alias listing of one architecture (``--stages``)."""
    shapes = ", ".join(f"{s} {_shape(info.shapes[s])}" for s in info.stages)
    aliases = ", ".join(f"{a} = {t}" for a, t in info.aliases.items()) or "none"
    return f"  default stage: {info.default_stage}\n  stages: {shapes}\n  aliases: {aliases}"


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned plain-text columns separated by two spaces, with a dashed rule under the header."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
