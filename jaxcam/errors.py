"""Typed errors raised by jaxcam.

Every error names the argument or file at fault and, where there is a closed set of valid choices, lists them.
All inherit from :class:`JaxcamError`, so ``except jaxcam.JaxcamError`` catches anything jaxcam raises on bad
input. Each also inherits from the matching built-in (``ValueError``, ``KeyError``-free ``LookupError``,
``OSError``) so code written against the built-ins keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class JaxcamError(Exception):
    """Base class of every error jaxcam raises on bad input or bad files."""


def _listing(names: Iterable[str], limit: int = 60) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names) - limit} more)"
    return shown


def closest(name: object, valid: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to ``name`` (case-insensitive; at most ``n``, best first), for "did you mean"."""
    valid = [str(v) for v in valid]
    lower = {v.lower(): v for v in valid}
    hits = difflib.get_close_matches(str(name).lower(), list(lower), n=n, cutoff=0.6)
    return [lower[h] for h in hits]


class UnknownNameError(JaxcamError, ValueError):
    """A name (architecture, layer, method, ...) that is not one of the valid choices.

    The message lists the valid names and, when some are close to the one given, suggests them first
    ("did you mean 'gradcam'?"); ``suggestions`` holds them."""

    kind = "name"

    def __init__(self, name: object, valid: Iterable[str], context: str = ""):
        self.name = name
        self.valid = tuple(valid)
        self.suggestions = tuple(closest(name, self.valid)) if isinstance(name, str) else ()
        where = f" for {context}" if context else ""
        hint = f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?" if self.suggestions else ""
        listed = _listing(self.valid) if self.valid else "none"
        super().__init__(f"unknown {self.kind} {name!r}{where}{hint}; valid {self.kind}s: {listed}")


class UnknownArchitectureError(UnknownNameError):
    kind = "architecture"


class UnknownLayerError(UnknownNameError):
    kind = "layer"


class ImageError(JaxcamError, ValueError):
    """An image that cannot be used: wrong rank, shape, dtype, range or values."""


class ImageShapeError(ImageError):
    pass


class ImageDtypeError(ImageError):
    pass


class NonFiniteImageError(ImageError):
    pass


class ImageFileError(ImageError, OSError):
    """A path that does not exist, is not a file, or does not decode as an image."""


class CheckpointError(JaxcamError, OSError):
    """A converted checkpoint that is missing, incomplete, altered or unreadable."""


class ChecksumMismatchError(CheckpointError):
    pass


class MissingCheckpointFilesError(CheckpointError):
    pass


class StateDictError(JaxcamError, ValueError):
    """A source state dict whose keys or shapes do not match the architecture.

    Attributes ``missing``, ``unexpected`` and ``mismatched`` hold every offending key (nothing is skipped).
    """

    def __init__(self, arch: str, missing=(), unexpected=(), mismatched=()):
        self.arch = arch
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)  # (key, expected_shape, got_shape)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_listing(self.missing, 40)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_listing(self.unexpected, 40)}")
        if self.mismatched:
            mm = "; ".join(f"{k!r} expected {tuple(e)} got {tuple(g)}" for k, e, g in self.mismatched[:40])
            parts.append(f"{len(self.mismatched)} mis-shaped key(s): {mm}")
        super().__init__(f"state dict does not match architecture {arch!r}: " + "; ".join(parts))


class ClassIndexError(JaxcamError, IndexError):
    """A class index outside ``[0, num_classes)``."""


class MissingDependencyError(JaxcamError, ImportError):
    """An optional dependency (for example torch, for reading .pth files) is not installed."""


class MapError(JaxcamError, ValueError):
    """Saliency maps that cannot be evaluated: wrong shape or rank, or NaN/inf values (named by image index)."""


class MaskError(JaxcamError, ValueError):
    """Ground-truth masks or boxes that cannot be used: wrong shape, or empty (a box entirely outside the image)."""


class InvalidArgumentError(JaxcamError, ValueError, TypeError):
    """An argument whose type or value cannot be used (``steps=0``, ``chunk=0``, ``layer=3.0``, ...); the message
    names the argument, what it got and what it accepts. Both a ``ValueError`` and a ``TypeError``, so code written
    against either built-in keeps catching it."""


class ImageTooLargeError(ImageFileError):
    """An image whose pixel count exceeds the decoding cap (a decompression bomb, or a photo larger than
    ``max_pixels``); the message names the file, its size and how to raise the cap."""


class NonFiniteParametersError(CheckpointError, ValueError):
    """Weights holding NaN or infinite values (refused at conversion and at loading); names the parameters."""


class InvalidNameError(JaxcamError, ValueError):
    """A name that would leave its folder (``..``, a path separator, an absolute path) or is otherwise unusable as
    a file or directory name (a model store entry, an output file)."""


class CorruptFileError(JaxcamError, OSError):
    """A file jaxcam wrote or reads (``.npz``, ``run.json``, ``manifest.json``, ...) that is empty, truncated,
    of another format, or holds objects jaxcam never unpickles; the message names the file."""


class EmptySourceError(JaxcamError, ValueError):
    """An image source with no items (an empty folder, an empty list, a shard or range that selects nothing)."""


class LayerNotCalledError(UnknownLayerError):
    """A layer the model defines but its forward never runs (an unused submodule, a branch not taken), so it has
    no activation to explain; the message lists the layers the forward does run."""
