"""Pictures of maps: heat-map overlays on the photographs and labelled grids of them (NumPy, Pillow and matplotlib's
object API with the Agg renderer; no JAX, no pyplot state).

- :func:`colorize`: a map in [0, 1] through a colormap, RGB uint8;
- :func:`resize_map`: bilinear resize of a map;
- :func:`overlay`: the photograph with the heat map blended on top;
- :func:`png_bytes`: an RGB array as PNG file contents;
- :func:`grid_figure`: rows of images x columns of maps as one titled figure with a colour bar, PNG bytes;
- :func:`drawable_text`, :func:`plain_text`: figure text from untrusted names (file names, dataset ids) that draws
  without a warning and is never parsed as mathtext.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import InvalidArgumentError, MapError, MissingDependencyError

COMMON_CMAPS = ("inferno", "viridis", "magma", "plasma", "cividis", "turbo", "jet", "gray")  # listed first in errors


def _colormap(name: str):
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise MissingDependencyError("pictures need matplotlib: pip install matplotlib") from exc
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        from .errors import UnknownNameError

        names = [n for n in COMMON_CMAPS if n in matplotlib.colormaps]
        names += sorted(n for n in matplotlib.colormaps if not n.endswith("_r") and n not in names)
        raise UnknownNameError(name, names, "colormap (each also reversed as <name>_r)") from None


@functools.lru_cache(maxsize=16)
def _charmap(path: str) -> frozenset:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(path).get_charmap())


def _font_paths() -> tuple[str, ...]:
    """The font files matplotlib draws default text with, its fallback chain included (rcParams' font.family and
    the families it names, e.g. font.sans-serif: add a CJK font there and its glyphs are used)."""
    from matplotlib import font_manager

    props = font_manager.FontProperties()
    find = getattr(font_manager.fontManager, "_find_fonts_by_props", None)  # the fallback chain text uses
    try:
        paths = find(props) if find is not None else [font_manager.findfont(props)]
    except (ValueError, RuntimeError):  # pragma: no cover - no usable font at all
        paths = [font_manager.findfont(props)]
    return tuple(str(p) for p in paths)


def drawable_text(text) -> str:
    """``text`` with every character that the figure fonts lack written as its escape (``猫`` -> ``\\u732b``,
    a control character -> ``\\x1b``), so a CJK or emoji file name draws as readable ASCII instead of empty boxes
    and matplotlib's "Glyph ... missing from font(s)" warnings; line breaks are kept. With a font that has the
    glyphs in matplotlib's font.sans-serif list, they are drawn as they are."""
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    charmaps = [_charmap(p) for p in _font_paths()]
    return "".join(c if c == "\n" or (c.isprintable() and any(ord(c) in m for m in charmaps))
                   else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


@contextlib.contextmanager
def plain_text():
    """Figure text is drawn as written: a ``$`` in a file name never starts mathtext (``a$\\frac$.png`` would
    stop the figure with a parse error), for every text created and drawn inside the block."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float, or a ValueError when it is not a number in [0, 1] (the heat map's opacity)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"alpha (the heat map's opacity) must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"alpha (the heat map's opacity) must be in [0, 1], got {alpha}")
    return value


def check_cmap(name: str) -> str:
    """``name`` when matplotlib knows the colormap, else an :class:`~jaxcam.UnknownNameError` listing them."""
    _colormap(name)
    return name


def _image_u8(image) -> np.ndarray:
    from .data import to_rgb

    rgb = to_rgb(image)  # (H, W, 3) float in [0, 1], whatever came in
    return np.round(rgb * 255).astype(np.uint8)


def colorize(cam, cmap: str = "inferno") -> np.ndarray:
    """A map in [0, 1] (h, w) as an RGB uint8 picture through a perceptually uniform colormap (default inferno)."""
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 2:
        raise MapError(f"a map to draw must be 2-D (h, w), got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise MapError("the map holds NaN or infinite values")
    rgba = _colormap(cmap)(np.clip(cam, 0.0, 1.0))
    return np.round(rgba[..., :3] * 255).astype(np.uint8)


def resize_map(cam, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to ``hw`` (no-op when it already has that size)."""
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 2:
        raise MapError(f"a map to draw must be 2-D (h, w), got shape {cam.shape}")
    if cam.shape == tuple(hw):
        return cam
    from PIL import Image

    return np.asarray(Image.fromarray(cam, mode="F").resize((hw[1], hw[0]), Image.BILINEAR), np.float32)


def overlay(image, cam, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """The photograph with the map blended on top: ``(1 - alpha) * image + alpha * colormap(map)``, uint8 (H, W, 3).
    The map is resized to the image; ``alpha`` in [0, 1] is the heat map's opacity."""
    check_alpha(alpha)
    img = _image_u8(image)
    heat = colorize(resize_map(cam, img.shape[:2]), cmap).astype(np.float32)
    return np.round((1.0 - alpha) * img.astype(np.float32) + alpha * heat).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array as PNG file contents."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _thumbnail(image, max_side: int) -> np.ndarray:
    """The image as uint8 RGB with its longer side at most ``max_side`` pixels (aspect ratio kept)."""
    img = _image_u8(image)
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return img
    from PIL import Image

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))


def _grid_labels(maps: Mapping[str, Sequence], rows: int, titles, row_labels) -> tuple[dict, list]:
    """Validate the grid's shape and fill in default panel titles (the column name) and row labels (none)."""
    if not maps:
        raise MapError("grid_figure needs at least one column of maps")
    for col, stack in maps.items():
        if len(stack) != rows:
            raise MapError(f"column {col!r} holds {len(stack)} maps for {rows} images; give one map per image")
    titles = dict(titles or {})
    for col in maps:
        given = titles.get(col)
        if given is None:
            titles[col] = [str(col)] * rows
        elif len(given) != rows:
            raise InvalidArgumentError(f"column {col!r} has {len(given)} titles for {rows} images")
    labels = list(row_labels) if row_labels is not None else [""] * rows
    if len(labels) != rows:
        raise InvalidArgumentError(f"got {len(labels)} row labels for {rows} images")
    return titles, labels


def grid_figure(images: Sequence, maps: Mapping[str, Sequence], titles: Mapping[str, Sequence[str]] | None = None,
                row_labels: Sequence[str] | None = None, alpha: float = 0.5, cmap: str = "inferno", *,
                panel_inches: float = 2.2, dpi: int = 100, max_side: int = 256) -> bytes:
    """A grid of overlays as PNG file contents: one row per image, one column per entry of ``maps``.

    Args:
      images: R images (anything :func:`jaxcam.to_rgb` accepts), one per row.
      maps: ``{column: R maps in [0, 1]}`` (an (R, h, w) array or a list of (h, w) maps), drawn over the images in
        insertion order; each map is resized to its image.
      titles: ``{column: R panel titles}`` (default: the column name on every panel).
      row_labels: R labels written left of each row (default: none). Titles and labels are drawn as written
        (no mathtext), characters the font lacks as escapes (:func:`drawable_text`).
      alpha, cmap: the heat map's opacity and colormap, as in :func:`overlay`; one colour bar shows the scale.
      panel_inches, dpi: the size of one panel and the resolution; images are shrunk to ``max_side`` pixels first.

    Raises:
      MapError: a map that is not 2-D or holds NaN/inf, or a column without one map per image.
      ValueError: ``alpha`` outside [0, 1], or titles/labels whose count is not R.
      UnknownNameError: an unknown colormap.
    """
    images = list(images)
    titles, labels = _grid_labels(maps, len(images), titles, row_labels)
    alpha = check_alpha(alpha)
    colormap = _colormap(cmap)
    thumbs = [_thumbnail(im, max_side) for im in images]
    aspect = float(np.median([t.shape[0] / t.shape[1] for t in thumbs]))  # panel height / width
    with plain_text():
        return _draw_grid(thumbs, maps, titles, labels, alpha, cmap, colormap, aspect, panel_inches, dpi)


def _draw_grid(thumbs, maps, titles, labels, alpha, cmap, colormap, aspect, panel_inches, dpi) -> bytes:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    rows, cols = len(thumbs), len(maps)
    fig = Figure(figsize=(cols * panel_inches + 1.0, rows * (panel_inches * aspect + 0.3) + 0.2), dpi=dpi,
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for c, (col, stack) in enumerate(maps.items()):
        for r, thumb in enumerate(thumbs):
            ax = axes[r, c]
            ax.imshow(overlay(thumb, np.asarray(stack[r]), alpha, cmap))
            ax.set_title(drawable_text(titles[col][r]), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and labels[r]:
                ax.set_ylabel(drawable_text(labels[r]), fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormap), ax=axes, shrink=min(1.0, 0.9 / rows ** 0.25),
                 label="map value")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
