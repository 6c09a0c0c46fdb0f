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
    p.add_argument("--model", default="efficientnet_lite0", metavar="NAME|MODULE:FACTORY",
                   help="architecture or converted checkpoint name (default: the embedded efficientnet_lite0), or "
                        "your own model as module.path:factory, a Python function of no arguments returning a "
                        "jaxcam.Model (e.g. my_models:build for ./my_models.py: the current directory is put on "
                        "sys.path as python -m does; importing it runs its code, so name only modules you trust)")
    p.add_argument("--weights", metavar="FILE",
                   help="torchvision state dict (.pth/.pt/.npz) for an architecture --model, converted once and cached "
                        "(not for a module:factory model, which loads its own)")
    p.add_argument("--random-weights", action="store_true",
                   help="deterministic random weights for an architecture --model (for testing; no conversion)")


def add_images_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"image files (default: scikit-image's {', '.join(SAMPLE_IMAGES)})")
    p.add_argument("--max-pixels", metavar="N",
                   help=f"refuse image files of more than N pixels before decoding them (default: ${MAX_PIXELS_ENV} "
                        f"or {DEFAULT_MAX_PIXELS:,}; a guard against decompression bombs)")


def load(args):
    """The model the arguments name. Requests the API would answer in its own terms (``weights=None``) are
    answered here in the command line's (``--weights``, ``--random-weights``); names go through the store's one
    validator inside ``load_model``; a ``module.path:factory`` is imported and called (:mod:`jaxcam.cli.factory`)."""
    from ..errors import InvalidArgumentError, closest
    from ..models.architectures import ARCHITECTURES
    from ..models.loader import EMBEDDED, NoBundledWeightsError, load_model
    from .factory import is_factory_spec, load_factory

    given = [f for f, on in (("--weights", args.weights is not None), ("--random-weights", args.random_weights)) if on]
    if len(given) == 2:
        raise InvalidArgumentError("--weights and --random-weights exclude each other: pass one of them")
    if is_factory_spec(args.model):
        if given:
            raise InvalidArgumentError(f"{given[0]} does not apply to --model {args.model!r}: a module:factory "
                                       f"model comes with its own weights; drop {given[0]} (load weights inside the "
                                       "factory)")
        return load_factory(args.model)
    if args.model not in ARCHITECTURES and given:
        near = closest(args.model, ARCHITECTURES)
        hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
        raise InvalidArgumentError(f"{given[0]} applies to an architecture --model (`jaxcam models` lists them); "
                                   f"{args.model!r} is not one{hint}: name an architecture, or drop {given[0]} to "
                                   "load a stored checkpoint")
    if args.model in ARCHITECTURES and args.model not in EMBEDDED and not given:
        raise NoBundledWeightsError(f"{args.model} has no bundled weights: pass --weights FILE (a torchvision "
                                    ".pth/.npz, converted once) or --random-weights")
    weights = None if args.random_weights else (args.weights if args.weights is not None else "default")
    return load_model(args.model, weights=weights)


def method_list(spec: list[str], error: type[Exception], keep=lambda spec: True) -> list[str]:
    """The method names ``--methods`` gives, each registered and none twice (``error`` otherwise); ``all``: every
    registered method whose spec ``keep`` accepts."""
    from ..errors import UnknownNameError
    from ..methods import METHODS

    if spec == ["all"]:  # never the methods whose required options only Python can give (BroadCAM's weights)
        return [m for m, s in METHODS.items() if keep(s) and not s.requires]
    for m in spec:
        if m not in METHODS:
            raise UnknownNameError(m, [*METHODS, "all"], "--methods")
    if len(set(spec)) != len(spec):
        raise error(f"--methods lists a method twice: {' '.join(spec)}")
    return list(spec)


def for_model(methods, spec: list[str], model) -> list[str]:
    """``methods`` resolved from ``--methods all``, less those this model cannot run at any layer (FullGrad or
    CAMERAS on a ViT, AD-CAM without attention); methods named one by one are left for the library to refuse."""
    from .._explain import unavailable_methods

    if spec != ["all"]:
        return list(methods)
    unavailable = unavailable_methods(model)
    return [m for m in methods if m not in unavailable]


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
        _remove_empty(created)
        raise OutputDirError(f"cannot create output directory {quote(path)}: {exc.strerror or exc}") from None
    if not os.path.isdir(path):
        raise OutputDirError(f"output path {quote(path)} exists and is not a directory: choose another --out")
    probe = os.path.join(path, f".jaxcam-write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        _remove_empty(created)
        raise OutputDirError(f"output directory {quote(path)} is not writable: {exc.strerror or exc}") from None
    return created


def _remove_empty(created: list[str]) -> None:
    """Remove the directories a command created, deepest first, stopping at the first that is not empty (rmdir
    never removes content, so nothing anyone wrote is lost)."""
    for d in created:
        try:
            os.rmdir(d)
        except OSError:
            return


@contextlib.contextmanager
def output_directory(path: str):
    """``with output_directory(args.out) as out:`` - :func:`out_dir`, and when the block fails (an error or an
    interrupt) before writing anything, the directories it created are removed again, so a typo leaves no empty
    ``runs/...`` behind. A directory that existed before is never touched; one holding any file is kept."""
    created = _make_out_dir(path)
    try:
        yield path
    except BaseException:
        _remove_empty(created)
        raise


def quote(path) -> str:
    """``path`` as a shell word (``'my runs/report.html'``), for every path or command a message suggests."""
    return shlex.quote(os.fspath(path))


NAME_MAX = 255  # bytes in one file name on ext4, XFS, btrfs, ZFS and APFS (os.pathconf may say less)
PATH_MAX = 4096  # bytes in a whole path on Linux
TEMP_SUFFIX = len(".tmp-") + 10  # atomic_write's temporary file is the name plus ".tmp-<pid>"
HASH_CHARS = 8  # hex digits of sha256 that keep shortened or repaired names apart


def _unsafe(ch: str) -> bool:
    """A character a file name must not hold: a path separator, NUL or another control or format character (a
    right-to-left override could disguise the name), or a lone surrogate (bytes that are not UTF-8)."""
    return ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Cs")


def _fit(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``limit`` bytes (whole characters only)."""
    return text.encode("utf-8")[:max(limit, 0)].decode("utf-8", "ignore")


def name_max(folder: str | None = None) -> int:
    """The longest file name, in bytes, that ``folder``'s file system takes (:data:`NAME_MAX` at most)."""
    try:
        return min(NAME_MAX, os.pathconf(folder or ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def file_stems(names, longest_suffix: str | int, folder: str | None = None) -> list[str]:
    """A safe, unique file-name stem for each name (an image's name, a dataset id), checked before any work.

    A stem is the name itself when it is one: every stem plus ``longest_suffix`` (the longest text appended to it,
    e.g. ``_gradcam++_999-<40-character class>.png``, or its length in bytes) and atomic_write's temporary suffix
    fits ``folder``'s NAME_MAX (255 bytes). Otherwise it is made one deterministically: characters a file system
    refuses (``/``, NUL, control characters) become ``_``, a name too long is cut at a character boundary, and
    either way ``~`` and the first 8 hex digits of the name's sha256 are appended, so different names never meet
    in one file. Names equal but for letter case get the hash as well (macOS and Windows would merge them).
    Callers record the name -> stem mapping in their outputs.
    """
    import hashlib

    suffix = longest_suffix if isinstance(longest_suffix, int) else len(longest_suffix.encode("utf-8"))
    budget = name_max(folder) - suffix - TEMP_SUFFIX
    if budget < HASH_CHARS + 2:
        raise OutputDirError(f"output file names would not fit the file system's {name_max(folder)}-byte limit "
                             f"(their fixed part alone takes {suffix} bytes): use shorter names")
    stems, seen = [], set()
    for i, name in enumerate(map(str, names)):
        clean = "".join("_" if _unsafe(c) else c for c in name) or "_"
        raw = name.encode("utf-8", "surrogatepass")
        stem = clean if clean == name and len(raw) <= budget else ""
        salt = 0
        while not stem or stem.casefold() in seen:
            digest = hashlib.sha256(raw + (b"#%d" % salt if salt else b"")).hexdigest()[:HASH_CHARS]
            stem, salt = f"{_fit(clean, budget - HASH_CHARS - 1)}~{digest}", salt + 1
        seen.add(stem.casefold())
        stems.append(stem)
    return stems


def display_name(name) -> str:
    """``name`` as text every output can hold: a file name's bytes that are not UTF-8 (which Python carries as lone
    surrogates) are written as escapes (``\\xff``), where writing the report or a CSV would otherwise fail."""
    name = str(name)
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates no file name produces
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def check_output_paths(folder: str, file_names) -> None:
    """Raise :class:`OutputDirError` before any work when a path in ``folder`` would be too long to create."""
    longest = max(file_names, key=lambda f: len(f.encode("utf-8", "surrogatepass")), default=None)
    if longest is None:
        return
    path = os.path.join(os.path.abspath(folder), longest)
    if len(os.fsencode(path)) + TEMP_SUFFIX >= PATH_MAX:
        raise OutputDirError(f"output directory {quote(folder)} is too deep: {len(os.fsencode(path))}-byte paths "
                             f"in it pass the system's {PATH_MAX}-byte limit; choose a shorter --out")
    if len(longest.encode("utf-8", "surrogatepass")) + TEMP_SUFFIX > name_max(folder):
        raise OutputDirError(f"output file name {longest!r} passes the {name_max(folder)}-byte file-name limit of "
                             f"{quote(folder)}")


def summary(line: str) -> None:
    """The one-line summary every command ends with."""
    print(line, file=sys.stdout, flush=True)
