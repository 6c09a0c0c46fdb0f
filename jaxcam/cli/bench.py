"""``jaxcam bench``: the benchmark suite against the PyTorch libraries (``benchmarks/run.py`` of a source checkout).

Every argument after ``bench`` is passed to ``benchmarks/run.py`` unchanged (``jaxcam bench --help`` shows its
help). The suite needs the source checkout (``benchmarks/`` is not installed with the package) and the ``torch``
extra (torch, torchvision, timm, grad-cam, torchcam) and rbo (the robustness baseline's RBO); without them this
command says what to install. It runs in a fresh interpreter, because the suite pins threads and configures JAX
before JAX starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from ..errors import JaxcamError, MissingDependencyError

INSTALL = "pip install -c constraints.txt -e '.[torch]'"
REQUIRED = {"torch": "torch", "torchvision": "torchvision", "pytorch_grad_cam": "grad-cam", "torchcam": "torchcam",
            "timm": "timm", "rbo": "rbo"}
# the robustness benchmark's reference RBO; its metadata pins numpy<2 (it works with numpy 2), hence --no-deps
NOT_IN_EXTRA = {"rbo": "--no-deps rbo==0.1.3"}

EXAMPLES = f"""examples:
  jaxcam bench --quick                            every workload kind, small (a few minutes on a CPU)
  jaxcam bench                                    the full suite (about half an hour on 2 CPU cores)
  jaxcam bench --only gradcam batch_sweep --models resnet50 --out /tmp/bench
  jaxcam bench --help                             the suite's own options

needs a source checkout with the torch extra: {INSTALL}
"""


class BenchmarkFailedError(JaxcamError, RuntimeError):
    """The benchmark suite ran and exited with an error."""


def add_parser(sub) -> None:
    # "+" as the only prefix character: every "-" argument (--quick, --only, --help) is passed through verbatim
    p = sub.add_parser("bench", help="benchmark suite against pytorch-grad-cam and torchcam (source checkout)",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES, prefix_chars="+", add_help=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter, usage="jaxcam bench [--quick] [ARGS ...]")
    p.add_argument("args", nargs="*", metavar="ARGS", help="arguments of benchmarks/run.py")
    p.set_defaults(func=run)


def suite_script() -> Path:
    """``benchmarks/run.py`` next to the ``jaxcam`` package of a source checkout."""
    import jaxcam

    return Path(jaxcam.__file__).resolve().parents[1] / "benchmarks" / "run.py"


def missing_dependencies() -> list[str]:
    """The distributions of the ``torch`` extra the suite needs that are not importable."""
    missing = []
    for module, dist in REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def check() -> Path:
    """The suite's script, or a :class:`MissingDependencyError` saying what is missing and how to install it."""
    script = suite_script()
    if not script.is_file():
        raise MissingDependencyError(f"the benchmark suite is not installed with the package: {script} does not "
                                     "exist; clone the source checkout and run, from its root, "
                                     f"{INSTALL} && jaxcam bench")
    missing = missing_dependencies()
    if missing:
        command = INSTALL if set(missing) - set(NOT_IN_EXTRA) else ""
        extra = [NOT_IN_EXTRA[m] for m in missing if m in NOT_IN_EXTRA]
        if extra:
            command = (command + " && " if command else "") + "pip install " + " ".join(extra)
        raise MissingDependencyError(f"the benchmark suite needs {', '.join(missing)} (the baselines it times "
                                     f"jaxcam against); install them with: {command}")
    return script


def run(args) -> None:
    script = check()
    args.resume_hint = "the units measured so far are saved: rerun with --resume to continue"
    proc = subprocess.Popen([sys.executable, str(script), *args.args])  # relative --out: from the caller's cwd
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # the suite got the same signal: let it save what it measured and exit
            continue
    if code in (130, -2):
        raise KeyboardInterrupt
    if code == 2:
        raise BenchmarkFailedError("benchmarks/run.py rejected its arguments (exit status 2, usage above; "
                                   "jaxcam bench --help lists them)")
    if code != 0:
        raise BenchmarkFailedError(f"the benchmark suite exited with status {code} (see its output above; "
                                   "units that finished are saved, rerun with --resume to continue)")
