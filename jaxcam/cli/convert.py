"""``jaxcam convert``: convert a torchvision state dict once and store it (orbax checkpoint + manifest entry).

The conversion is :func:`jaxcam.models.loader.convert_and_save`: strict key/shape mapping, logit parity against
torchvision measured on a fixed input when torch is installed, the checkpoint written under the models directory
and recorded in its ``manifest.json`` (files' sha256, source sha256, versions, max |logit diff|). A file already
converted (same architecture and sha256, same name) is not converted again.
"""

from __future__ import annotations

import os
import time

from ..errors import JaxcamError
from .common import formatter, summary

EXAMPLES = """examples:
  jaxcam convert resnet50 resnet50-0676ba61.pth
                                  then: jaxcam explain --model resnet50 --weights resnet50-0676ba61.pth (cached)
  jaxcam convert resnet18 my_finetune.pth --name pets     then: jaxcam explain --model pets
  jaxcam convert vgg16 vgg16.npz --models-dir /data/models   (use it with JAXCAM_MODELS_DIR=/data/models)

WEIGHTS: a torchvision state dict as .pth/.pt (needs torch) or .npz ({key: array}, PyTorch layout). The models
directory is --models-dir, else $JAXCAM_MODELS_DIR, else the source checkout's models/, else ~/.cache/jaxcam/models.
"""


class ConvertArgumentError(JaxcamError, ValueError):
    """Command-line options that do not describe a valid conversion."""


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert torchvision weights once and cache them (with a parity check)",
                       description="Convert a torchvision state dict to a jaxcam model, measure its logit parity "
                       "against torchvision (when torch is installed) and store it as a verified checkpoint.",
                       epilog=EXAMPLES, formatter_class=formatter())
    p.add_argument("arch", metavar="ARCH", help="architecture (see `jaxcam models`), e.g. resnet50")
    p.add_argument("weights", metavar="WEIGHTS", help="the state dict file (.pth, .pt or .npz)")
    p.add_argument("--name", help="name of the stored model, loadable as --model NAME (default: ARCH-<sha256 "
                   "prefix>, the name --model ARCH --weights WEIGHTS looks up)")
    p.add_argument("--models-dir", metavar="DIR", help="where to store it (default: see below)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..errors import UnknownArchitectureError
    from ..models.architectures import ARCHITECTURES
    from ..models.convert import check_weights_path
    from ..models.loader import convert_and_save
    from ..models.store import check_target, read_manifest, resolve_models_dir, sha256_file

    t0 = time.perf_counter()
    if args.arch not in ARCHITECTURES:
        raise UnknownArchitectureError(args.arch, ARCHITECTURES)
    if args.name is not None:
        _check_name(args.name, ARCHITECTURES)
    digest = sha256_file(check_weights_path(args.weights))
    name = args.name if args.name is not None else f"{args.arch}-{digest[:12]}"
    root = resolve_models_dir(args.models_dir)
    _check_models_dir(root)
    check_target(name, root)
    entry = read_manifest(root)["models"].get(name)
    if entry is not None and entry.get("source_sha256") == digest and entry.get("arch") == args.arch and \
            _intact(name, entry, root):
        print(f"{args.weights} is already converted as {name!r} in {root} (same sha256); nothing to do")
        verb = "cached"
    else:
        convert_and_save(args.arch, args.weights, name, models_dir=root, source_sha256=digest)
        entry = read_manifest(root)["models"][name]
        verb = "converted"
    print(f"checkpoint: {root / entry.get('path', name)}")
    print(f"manifest:   {root / 'manifest.json'} (entry {name!r})")
    print(f"parity:     {_parity(entry)}")
    print(f"use it:     {_usage(args, name, root)}")
    summary(f"convert: {verb} {args.arch} from {args.weights} as {name!r} in {time.perf_counter() - t0:.1f} s")


def _check_name(name: str, architectures) -> None:
    """A stored model's name must be usable as ``--model NAME``: not an architecture name, and a plain name by the
    store's one validator (the API's ``convert_and_save`` and ``load_model`` use the same)."""
    from ..models.store import check_name

    if name in architectures:
        raise ConvertArgumentError(f"--name {name!r} is an architecture name; `--model {name}` would load the "
                                   "architecture, not this checkpoint: choose another name")
    check_name(name, "--name")


def _intact(name: str, entry: dict, root) -> bool:
    """Whether a recorded conversion's files are all present and unaltered (a damaged one is converted again and
    replaced; a tampered manifest entry is still an error)."""
    from ..errors import ChecksumMismatchError, MissingCheckpointFilesError
    from ..models.store import verify_files

    try:
        verify_files(name, entry, root)
    except (ChecksumMismatchError, MissingCheckpointFilesError):
        return False
    return True


def _check_models_dir(root) -> None:
    """Create the models directory and prove it writable before converting."""
    from .common import out_dir

    out_dir(str(root))


def _parity(entry: dict) -> str:
    diff = entry.get("max_abs_logit_diff")
    ref = entry.get("parity_reference", "")
    if diff is None:
        return ref or "not measured"
    return f"max |logit diff| = {diff:.3g} against {ref}"


def _usage(args, name: str, root) -> str:
    from ..models.store import resolve_models_dir

    default_root = resolve_models_dir(None)
    env = "" if os.path.abspath(root) == os.path.abspath(default_root) else f"JAXCAM_MODELS_DIR={root} "
    if args.name:
        return f"{env}jaxcam explain --model {name}"
    return f"{env}jaxcam explain --model {args.arch} --weights {args.weights}"
