"""The ``jaxcam`` command: a thin layer over the public API (no maths here).

Each subcommand lives in its own module of this package and registers itself with ``add_parser(subparsers)``.
Errors print as one line ``jaxcam: error: ...`` with exit code 2 (a traceback only with ``--debug``); an
interrupted run exits with 130 and says how to resume.
"""

from __future__ import annotations

import argparse
import sys

from ..compilation_cache import enable_compilation_cache
from ..data import max_pixels_scope
from ..errors import JaxcamError
from . import ablate, bench, convert, evaluate, explain, info, layers, predict, robustness

EXAMPLES = """examples:
  jaxcam explain                                  Grad-CAM of the embedded model on scikit-image's sample photos
  jaxcam explain cat.jpg --method all --target top5 --out runs/cat
  jaxcam robustness --noises gaussian --severities 1 3 5 --out runs/rob
  jaxcam evaluate --metrics deletion_auc road_combined --out runs/eval
  jaxcam ablate cat.jpg --method gradcam --how inpaint --out runs/ablate   CAM regions vs random regions
  jaxcam convert resnet50 resnet50-0676ba61.pth
  jaxcam models | jaxcam methods | jaxcam bench --quick

Compiled programs are cached under ~/.cache/jaxcam/xla (JAXCAM_COMPILATION_CACHE=DIR moves it, =off disables it),
so a second run starts in seconds.
"""

SUBCOMMANDS = (explain, robustness, evaluate, ablate, convert, info, layers, predict, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxcam", description="Class Activation Maps and their evaluation, in JAX.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    enable_compilation_cache()
    try:
        with max_pixels_scope(getattr(args, "max_pixels", None)):  # --max-pixels reaches every image a command reads
            args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = getattr(args, "resume_hint", None)
        print("jaxcam: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    except (JaxcamError, OSError, ValueError, IndexError, KeyError) as exc:
        if args.debug:
            raise
        print(f"jaxcam: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith("'"):
        text = f"unknown name {text}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
