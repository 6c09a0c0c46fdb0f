"""What every subcommand shares: model and image arguments, the output directory, progress and the summary line."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import unicodedata

from ..data import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, SAMPLE_IMAGES
from ..errors import JaxcamError


class OutputDirError(JaxcamError, OSError):
    """The output directory cannot be created or written to."""


def formatter():
    return argparse.RawDescriptionHelpFormatter


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_lite0",
                   help="architecture or converted checkpoint name (default: the embedded efficientnet_lite0)")
    p.add_argument("--weights", help="torchvision state dict (.pth/.pt/.npz), converted once and cached")
    p.add_argument("--random-weights", action="store_true",
                   help="deterministic random weights (for testing; no download, no conversion)")


def add_images_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"image files (default: scikit-image's {', '.join(SAMPLE_IMAGES)})")
    p.add_argument("--max-pixels", metavar="N",
                   help=f"refuse image files of more than N pixels before decoding them (default: ${MAX_PIXELS_ENV} "
                        f"or {DEFAULT_MAX_PIXELS:,}; a guard against decompression bombs)")


def load(args):
    """The model the arguments name."""
    from ..models.loader import load_model

    weights = None if args.random_weights else (args.weights or "default")
    return load_model(args.model, weights=weights)


def method_list(spec: list[str], error: type[Exception], keep=lambda spec: True) -> list[str]:
    """The method names ``--methods`` gives, each registered and none twice (``error`` otherwise); ``all``: every
    registered method whose spec ``keep`` accepts."""
    from ..errors import UnknownNameError
    from ..methods import METHODS

    if spec == ["all"]:
        return [m for m, s in METHODS.items() if keep(s)]
    for m in spec:
        if m not in METHODS:
            raise UnknownNameError(m, [*METHODS, "all"], "--methods")
    if len(set(spec)) != len(spec):
        raise error(f"--methods lists a method twice: {' '.join(spec)}")
    return list(spec)


def read_images(paths) -> tuple[list[str], list]:
    """``(names, images)``: the files given (each checked to be a non-empty regular file, so a typo, a directory or
    a symlink loop is one clear line before any model is loaded), or scikit-image's sample photographs when none
    are."""
    from ..data import check_image_path, sample_images

    if not paths:
        samples = sample_images()
        return list(samples), list(samples.values())
    for path in paths:
        check_image_path(path)
    names, seen = [], {}
    for path in paths:  # unique, readable names for output files
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names, list(paths)


def out_dir(path: str) -> str:
    """Create ``path`` if needed and prove it writable before any work starts; files already there are kept.
    :func:`output_directory` does the same and also removes what it created when the command then fails."""
    _make_out_dir(path)
    return path


def _make_out_dir(path: str) -> list[str]:
    """Create ``path`` (and missing parents), prove it writable; returns the directories created, deepest first."""
    created, head = [], os.path.abspath(path)
    while head and not os.path.lexists(head):
        created.append(head)
        head = os.path.dirname(head) if os.path.dirname(head) != head else ""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    if not os.path.isdir(path):
        raise OutputDirError(f"output path {path} exists and is not a directory")
    probe = os.path.join(path, f".jaxcam-write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise OutputDirError(f"output directory {path} is not writable: {exc.strerror or exc}") from None
    return path


def summary(line: str) -> None:
    """The one-line summary every command ends with."""
    print(line, file=sys.stdout, flush=True)
